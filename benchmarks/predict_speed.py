"""Predict speed: `tbclf predict` (.onnx and .ckpt, 1 and 2 processes) against a bare loop on the
same files in the same run, and the peak memory of each.

Data, generated into a temp folder: --n dev-sized PNGs (512x512 RGB, like the dev set's) and
--n-full full-size 16-bit PNGs (12-bit values, --full-size). Model: MobileNetV2 at the configs'
224x224 (untrained weights: the speed is the same), as best.ckpt and its ONNX export.

Rows, per data set:
  bare 1 process    decode + prepare (InputSpec.prepare) + ONNX Runtime in one loop, no framework
  bare 2 processes  the same, decoding in a pool of --workers processes while ORT runs
  tbclf ...         `python -m tbclf predict` as a user runs it; images/s of its predict loop
                    (the bar's elapsed time: process start-up and the final merge excluded,
                    loader warm-up included, as in the bare rows; wall time is shown)
Peak memory is the proportional set size (PSS: shared pages split among the processes that
share them) summed over the command's process tree (main, loader workers, DDP ranks), polled
every 0.2 s from /proc. --grow K adds one run of the .onnx row on K times the images: memory
must not grow with the number of images.

    python benchmarks/predict_speed.py                 # 2,000 + 100 images (~15 min on 2 cores)
    python benchmarks/predict_speed.py --n 300 --n-full 30 --out benchmarks/results/predict.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loader_speed import _xray_like as xray_like  # noqa: E402  (one synthetic X-ray)

from tbclf import export  # noqa: E402
from tbclf.data.spec import InputSpec  # noqa: E402
from tbclf.io import atomic_write_text  # noqa: E402

# Lightning's bar (tbclf counts images): "| 960/2000 [00:12<00:13, 78.3img/s]"
BAR = re.compile(r"\|\s*(\d+)/(\d+) \[((?:\d+:)?\d+:\d+)<[^\]]*?([\d.]+)img/s")


def seconds(clock: str) -> int:
    """tqdm's elapsed time, "MM:SS" or "H:MM:SS", in seconds."""
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total


# --------------------------------------------------------------------------- data and model


def make_images(folder: Path, n: int, size: tuple[int, int], sixteen: bool) -> Path:
    """n PNGs (a few distinct images repeated: PNG decoding time depends on size, not content)."""
    folder.mkdir(parents=True, exist_ok=True)
    distinct = []
    for seed in range(min(n, 8)):
        if sixteen:
            distinct.append(cv2.imencode(".png", xray_like(*size, seed, bits=12))[1])
        else:
            gray = xray_like(*size, seed, bits=8).astype(np.uint8)
            distinct.append(cv2.imencode(".png", cv2.merge([gray, gray, gray]))[1])
    for i in range(n):
        (folder / f"img_{i:06d}.png").write_bytes(distinct[i % len(distinct)].tobytes())
    return folder


def make_model(folder: Path) -> dict[str, Path]:
    import pytorch_lightning as pl

    from tbclf.models.classifiers import TimmClassifier

    torch.manual_seed(0)
    spec = {"image_size": 224, "preprocessing": "clahe"}
    model = TimmClassifier(pretrained=False, scheduler="none", input_spec=spec)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "best.ckpt"
    cls = type(model)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": {
                **model.hparams,
                "_class_path": f"{cls.__module__}.{cls.__name__}",
            },
            "pytorch-lightning_version": pl.__version__,
        },
        ckpt,
    )
    onnx_path, _ = export.export_onnx(model, folder / "model.onnx")
    return {"ckpt": ckpt, "onnx": onnx_path}


# --------------------------------------------------------------------------- memory


def _pss(pid: str) -> int:
    """Proportional set size: shared pages (forked workers) split among their sharers."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _tree_rss(root: int) -> int:
    """Memory of `root` and all its descendants (summed PSS), from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            rss[int(entry)] = _pss(entry)
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


class PeakRSS:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(self.pid))
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self.thread.join()
        return self.peak


# --------------------------------------------------------------------------- the runs


_SPEC: InputSpec | None = None


def _prepare(path: str) -> np.ndarray:
    assert _SPEC is not None
    return _SPEC.prepare(path).numpy()


def _init(spec: InputSpec) -> None:
    global _SPEC
    _SPEC = spec
    cv2.setNumThreads(1)


def bare(onnx_path: Path, paths: list[str], workers: int, batch: int) -> dict[str, float]:
    """Decode + prepare + ORT without a framework; decoding in a pool when workers > 0."""
    from tbclf.inference import OnnxPredictor

    predictor = OnnxPredictor(onnx_path, threads=1)
    _init(predictor.spec)
    start = time.perf_counter()
    if workers:
        with Pool(workers, initializer=_init, initargs=(predictor.spec,)) as pool:
            images = pool.imap(_prepare, paths, chunksize=8)
            _score(predictor, images, batch)
    else:
        _score(predictor, map(_prepare, paths), batch)
    seconds = time.perf_counter() - start
    return {"img_s": len(paths) / seconds, "wall": seconds}


def _score(predictor, images, batch: int) -> None:
    chunk = []
    for image in images:
        chunk.append(image)
        if len(chunk) == batch:
            predictor.probabilities(np.stack(chunk), batch)
            chunk = []
    if chunk:
        predictor.probabilities(np.stack(chunk), batch)


def tbclf_predict(args: list[str], n: int, out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("TBCLF_RUN_VERSION", None)
    cmd = [sys.executable, "-m", "tbclf", "predict", *args, "--writer.output", str(out)]
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out.parent)
        meter = PeakRSS(proc.pid)
        code = proc.wait()
    peak = meter.stop()
    wall = time.perf_counter() - start
    text = out.with_suffix(".log").read_text(errors="replace")
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    bars = BAR.findall(text.replace("\r", "\n"))
    if not bars:
        raise SystemExit(f"no progress bar in the output of {' '.join(cmd)}")
    # The loop's elapsed time (1 s resolution) from the bar's last line, as the bare rows
    # count theirs: from the first image asked for to the last one scored, warm-up included
    # (the bar's own rate is a moving average of the last batches).
    loop = max(seconds(bars[-1][2]), 1)
    return {"img_s": n / loop, "wall": wall, "rss_mb": peak / 2**20}


def run_set(name: str, folder: Path, model: dict[str, Path], a: argparse.Namespace) -> list[list]:
    paths = sorted(str(p) for p in folder.glob("*.png"))
    n = len(paths)
    rows = []
    for label, workers in (
        ("bare loop, 1 process", 0),
        (f"bare, {a.workers} decoding processes", a.workers),
    ):
        r = bare(model["onnx"], paths, workers, a.batch)
        rows.append([name, label, f"{r['img_s']:.1f}", f"{r['wall']:.0f}", ""])
        print(rows[-1], flush=True)
    common = ["--data.predict_root", str(folder), "--data.batch_size", str(a.batch)]
    runs = {
        f"tbclf .onnx, 1 process, {a.workers} workers": [
            "--model", str(model["onnx"]), "--data.num_workers", str(a.workers),
        ],
        "tbclf .onnx, 2 processes (DDP), 1 worker each": [
            "--model", str(model["onnx"]), "--data.num_workers", "1",
            "--trainer.devices", "2", "--trainer.strategy", "ddp",
        ],
        f"tbclf .ckpt, 1 process, {a.workers} workers": [
            "--ckpt_path", str(model["ckpt"]), "--trainer.accelerator", "cpu",
            "--data.num_workers", str(a.workers),
        ],
        "tbclf .ckpt, 2 processes (DDP), 1 worker each": [
            "--ckpt_path", str(model["ckpt"]), "--trainer.accelerator", "cpu",
            "--data.num_workers", "1", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        ],
    }  # fmt: skip
    for i, (label, extra) in enumerate(runs.items()):
        out = folder.parent / f"{name.split()[0]}-{i}" / "predictions.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        r = tbclf_predict([*common, *extra], n, out)
        rows.append([name, label, f"{r['img_s']:.1f}", f"{r['wall']:.0f}", f"{r['rss_mb']:.0f}"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="dev-sized 512x512 PNGs")
    parser.add_argument("--n-full", type=int, default=100, help="full-size 16-bit PNGs")
    parser.add_argument("--full-size", type=int, nargs=2, default=(2500, 2048))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--grow", type=int, default=0, help="also K x --n images (memory)")
    parser.add_argument("--out", type=Path, default=None, help="write the table here too")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tbclf-predict-speed-", dir="/tmp") as tmp:
        base = Path(tmp)
        model = make_model(base / "model")
        sets = {f"{a.n} x 512x512 8-bit": make_images(base / "dev", a.n, (512, 512), False)}
        if a.n_full:
            h, w = a.full_size
            sets[f"{a.n_full} x {w}x{h} 16-bit"] = make_images(
                base / "full", a.n_full, (h, w), True
            )
        rows = [row for name, folder in sets.items() for row in run_set(name, folder, model, a)]
        if a.grow:
            n = a.n * a.grow
            folder = make_images(base / "grow", n, (512, 512), False)
            out = base / "grow-out" / "predictions.csv"
            out.parent.mkdir()
            args = ["--data.predict_root", str(folder), "--data.batch_size", str(a.batch)]
            args += ["--model", str(model["onnx"]), "--data.num_workers", str(a.workers)]
            r = tbclf_predict(args, n, out)
            label = f"tbclf .onnx, 1 process, {a.workers} workers"
            rows.append([f"{n} x 512x512 8-bit", label, f"{r['img_s']:.1f}", f"{r['wall']:.0f}",
                         f"{r['rss_mb']:.0f}"])  # fmt: skip
    when = datetime.date.today().isoformat()
    header = (
        "| images | pipeline | images/s | wall s | peak memory MiB (PSS) |\n|---|---|---|---|---|\n"
    )
    table = header + "".join("| " + " | ".join(r) + " |\n" for r in rows)
    info = (
        f"{when}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, batch {a.batch}, MobileNetV2 224x224 (CLAHE)"
    )
    text = f"{info}\n\n{table}"
    print(text)
    if a.out is not None:
        atomic_write_text(a.out, text)


if __name__ == "__main__":
    main()
