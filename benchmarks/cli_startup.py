"""How long the CLI takes to answer `--help` and `--version`, as a ratio to importing torch.

The ratio, not the seconds, is the figure: it holds on a loaded machine, where both slow down
together. Target: `tbclf --help` and `tbclf --version` under 2 s, i.e. well under one torch
import. Run from the repository root: `python benchmarks/cli_startup.py --repeat 5`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "python -m tbclf --help": [sys.executable, "-m", "tbclf", "--help"],
    "python -m tbclf --version": [sys.executable, "-m", "tbclf", "--version"],
    "python -m tbclf fit --help": [sys.executable, "-m", "tbclf", "fit", "--help"],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (median)")
    args = parser.parse_args()
    # Interleaved, so a change in the machine's load hits every command alike.
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    torch_s = statistics.median(times['python -c "import torch"'])
    print("| command | median s | ratio to `import torch` |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.2f} | {median / torch_s:.2f} |")


if __name__ == "__main__":
    main()
