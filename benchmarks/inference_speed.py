"""CPU inference speed: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8, side by side.

For each run folder (its checkpoint, and the model.onnx / model.int8.onnx `tbclf export`
wrote there, exported into a temp folder when absent), on 1 and 2 threads, at the model's input
size (224x224 for the shipped configs):
  - batch-1 latency, p50 and p99 over --calls calls (after a warm-up);
  - batch-32 throughput (images/s, median of --reps batches);
  - end to end per image on real files: decode + crop + fit + CLAHE (InputSpec.prepare) and
    the ORT fp32 batch-1 call.

    python benchmarks/inference_speed.py --run runs/mobilenet/version_0 \
        --run runs/simple_cnn/version_0 --out benchmarks/results/inference_speed.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tbclf import export  # noqa: E402
from tbclf.errors import ConfigError  # noqa: E402
from tbclf.io import atomic_write_text  # noqa: E402
from tbclf.models.loading import load_classifier  # noqa: E402


def latencies(fn, x: np.ndarray, calls: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        fn(x)
    out = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        fn(x)
        out[i] = time.perf_counter() - start
    return out


def throughput(fn, x: np.ndarray, reps: int) -> float:
    fn(x)
    times = latencies(fn, x, reps, warmup=0)
    return len(x) / float(np.median(times))


def model_files(run_dir: Path, tmp: Path) -> dict[str, Path | None]:
    """checkpoint, fp32 and int8 ONNX of a run (exported to tmp when the run has none)."""
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    fp32, int8 = run_dir / "model.onnx", run_dir / "model.int8.onnx"
    model = load_classifier(ckpt)
    if not fp32.is_file():
        fp32 = tmp / f"{run_dir.parent.name}.onnx"
        export.export_onnx(model, fp32, run=export.training_run(ckpt))
    if not int8.is_file():
        int8 = tmp / f"{run_dir.parent.name}.int8.onnx"
        try:
            _, result = export.export_int8(fp32, int8, run_dir)
            print(f"{run_dir}: INT8 AUROC change {result.change:+.4f}")
        except ConfigError as error:
            print(f"{run_dir}: {error}")
            int8 = None
    return {"ckpt": ckpt, "fp32": fp32, "int8": int8}


def bench_run(run_dir: Path, args, tmp: Path) -> list[dict]:
    files = model_files(run_dir, tmp)
    model = load_classifier(files["ckpt"])
    spec = model.input_spec
    size = spec.image_size
    rng = np.random.default_rng(0)
    x1 = rng.random((1, 1, size, size), dtype=np.float32)
    x32 = rng.random((32, 1, size, size), dtype=np.float32)
    name = run_dir.parent.name
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)

        def eager(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        backends = {"PyTorch eager": eager}
        for kind in ("fp32", "int8"):
            if files[kind] is None:
                continue
            session = export.ort_session(files[kind], threads)
            backends[f"ORT {kind}"] = lambda x, s=session: s.run(None, {export.INPUT_NAME: x})
        for backend, fn in backends.items():
            lat = latencies(fn, x1, args.calls) * 1000
            rows.append(
                {
                    "model": name,
                    "threads": threads,
                    "backend": backend,
                    "p50": float(np.percentile(lat, 50)),
                    "p99": float(np.percentile(lat, 99)),
                    "ips": throughput(fn, x32, args.reps),
                    "size": size,
                }
            )
            print(rows[-1], flush=True)
    rows_e2e = end_to_end(run_dir, files["fp32"], spec, args.images)
    return rows + rows_e2e


def end_to_end(run_dir: Path, fp32: Path, spec, n_images: int) -> list[dict]:
    split = export.run_split(run_dir)
    paths = [r.path for r in export._spread(split.get("test", []), n_images)]
    session = export.ort_session(fp32, 1)
    torch.set_num_threads(1)
    prep, total = [], []
    for path in paths:
        start = time.perf_counter()
        image = spec.prepare(path).numpy()[None]
        mid = time.perf_counter()
        session.run(None, {export.INPUT_NAME: image})
        end = time.perf_counter()
        prep.append(mid - start)
        total.append(end - start)
    return [
        {
            "model": run_dir.parent.name,
            "e2e": True,
            "n": len(paths),
            "prep_ms": 1000 * float(np.median(prep)),
            "total_ms": 1000 * float(np.median(total)),
            "total_p99": 1000 * float(np.percentile(total, 99)),
        }
    ]


def table(rows: list[dict], load_before, load_after, args) -> str:
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}; "
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"(1 min). batch-1: {args.calls} calls; batch-32: median of {args.reps}.",
        "",
        "| model | threads | backend | batch-1 p50 (ms) | batch-1 p99 (ms) | batch-32 (img/s) "
        "| p50 vs eager |",
        "|---|---|---|---|---|---|---|",
    ]
    eager = {
        (r["model"], r["threads"]): r["p50"] for r in rows if r.get("backend") == "PyTorch eager"
    }
    for r in rows:
        if r.get("e2e"):
            continue
        ratio = eager[(r["model"], r["threads"])] / r["p50"]
        lines.append(
            f"| {r['model']} ({r['size']}px) | {r['threads']} | {r['backend']} | {r['p50']:.2f} "
            f"| {r['p99']:.2f} | {r['ips']:.0f} | {ratio:.1f}x |"
        )
    lines += [
        "",
        "End to end per image (real test-split files, 1 thread): read + decode + crop + fit + "
        "CLAHE (`InputSpec.prepare`), then ORT fp32 batch 1.",
        "",
        "| model | images | prepare p50 (ms) | total p50 (ms) | total p99 (ms) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("e2e"):
            lines.append(
                f"| {r['model']} | {r['n']} | {r['prep_ms']:.1f} | {r['total_ms']:.1f} "
                f"| {r['total_p99']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="run folder (repeatable)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--images", type=int, default=40, help="files for the end-to-end time")
    parser.add_argument("--out", type=str, default=None, help="also write the tables here")
    args = parser.parse_args()
    if args.calls < 200:
        parser.error("--calls: p99 needs at least 200 calls")
    load_before = os.getloadavg()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tbclf-bench-") as tmp:
        for run in args.run:
            rows += bench_run(Path(run), args, Path(tmp))
    text = table(rows, load_before, os.getloadavg(), args)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
