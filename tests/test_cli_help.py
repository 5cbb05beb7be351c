"""Help and argument errors as a user meets them: the answer first and short."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli_helpers import CONFIGS, REPO, run_cli

import tbclf


def test_help_and_version_start_without_torch() -> None:
    """`tbclf --help` and `--version` import nothing heavy (the speed is in benchmarks/)."""
    code = (
        "import sys\n"
        "from tbclf.cli import cli_main\n"
        "cli_main(['--help']); cli_main(['--version'])\n"
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'cv2', 'timm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "commands:" in proc.stdout and "fit" in proc.stdout
    assert proc.stdout.strip().endswith(f"tbclf {tbclf.__version__}")


def test_an_option_typo_gives_three_lines_with_the_suggestion(tmp_path: Path) -> None:
    proc = run_cli(
        ["fit", "--config", str(CONFIGS / "simple_cnn.yaml"), "--data.rot", "/x"], cwd=tmp_path
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) <= 3, proc.stderr
    assert lines[0] == "error: unrecognized arguments: --data.rot /x"
    assert "--data.root" in lines[1].split(":", 1)[1].split(",")[0]
    assert "tbclf fit --help" in lines[-1]
    assert not (tmp_path / "runs").exists()


def test_fit_help_leads_with_the_common_options_and_the_configs_values(tmp_path: Path) -> None:
    proc = run_cli(
        ["fit", "--config", str(CONFIGS / "mobilenet.yaml"), "--help"], cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    head = proc.stdout.split("All options")[0]
    common = ["--data.root", "--model.init_args.weights", "--trainer.max_epochs"]
    common += ["--data.image_size", "--seed_everything", "--ckpt_path", "--extend"]
    for option in common:
        assert option in head
    assert "--trainer.max_epochs        epochs to train (now 15)" in head
    assert "images per step (now 16)" in head
    assert "usage: tbclf" in proc.stdout.split("All options")[1], "Lightning's full list follows"
