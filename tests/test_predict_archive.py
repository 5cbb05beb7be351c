"""Predict at archive scale through the real CLI: one path for .ckpt and .onnx, 1 vs 2 DDP
processes, and a SIGKILL mid-run followed by a rerun that resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import run_cli
from predict_helpers import tiny_models, write_images

from tbclf.evaluation.operating_point import KEY as OPERATING_POINT_KEY
from tbclf.io import read_output_csv

pytestmark = pytest.mark.slow

QUIET = ["--trainer.enable_progress_bar", "false"]


def _ok(proc) -> None:
    assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("archive")
    tiny_models(base / "model")
    write_images(base / "images", 31)  # odd: DistributedSampler pads rank 1 with a repeat
    return base


def _predict(base: Path, model: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    which = ["--ckpt_path", str(base / "model" / "best.ckpt")]
    if model == "onnx":
        which = ["--model", str(base / "model" / "model.onnx")]
    else:
        which += ["--trainer.accelerator", "cpu"]
    args = ["predict", *which, "--data.predict_root", str(base / "images")]
    args += ["--data.batch_size", "4", "--writer.output", str(out), *QUIET, *extra]
    return run_cli(args, cwd=base)


def test_one_and_two_processes_and_both_model_kinds_write_the_same(base: Path) -> None:
    outs = {
        "ckpt-1": base / "ckpt1" / "predictions.csv",
        "ckpt-2": base / "ckpt2" / "predictions.csv",
        "onnx-2": base / "onnx2" / "predictions.csv",
    }
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    _ok(_predict(base, "ckpt", outs["ckpt-1"], "--data.num_workers", "1"))
    _ok(_predict(base, "ckpt", outs["ckpt-2"], "--data.num_workers", "0", *ddp))
    _ok(_predict(base, "onnx", outs["onnx-2"], "--data.num_workers", "0", *ddp))
    tables = {name: read_output_csv(path) for name, path in outs.items()}
    expected_ids = [f"img_{i:03d}" for i in range(31)]
    for name, (header, rows) in tables.items():
        assert header == ["ID", "LABEL", "DECISION"], name
        assert [r["ID"] for r in rows] == expected_ids, name  # each image once, in list order
    one, two = tables["ckpt-1"][1], tables["ckpt-2"][1]
    for a, b in zip(one, two, strict=True):
        assert abs(float(a["LABEL"]) - float(b["LABEL"])) <= 1e-6
        assert a["DECISION"] == b["DECISION"]
    onnx = tables["onnx-2"][1]
    gaps = [abs(float(a["LABEL"]) - float(b["LABEL"])) for a, b in zip(one, onnx, strict=True)]
    assert max(gaps) <= 1e-4
    assert len({r["LABEL"] for r in one}) > 5  # the images do get different scores
    sidecars = {n: json.loads(p.with_suffix(".json").read_text()) for n, p in outs.items()}
    for name, side in sidecars.items():
        assert side["n"] == 31 and side["unreadable"] == [] and side["left_out"] == [], name
        assert side[OPERATING_POINT_KEY]["threshold"] == pytest.approx(0.5)
    shared = set(sidecars["ckpt-1"]) & set(sidecars["onnx-2"])
    assert set(sidecars["ckpt-1"]) - shared == set()
    assert set(sidecars["onnx-2"]) - shared == {"model"}  # the ONNX file's own description
    for key in ("decision_rule", "model_class", "input_spec", "tbclf_version", "tta"):
        assert sidecars["onnx-2"][key] == sidecars["ckpt-1"][key], key
    for out in outs.values():
        assert not (out.parent / "predictions.csv.parts").exists(), "parts are merged and gone"


def test_killed_run_resumes_to_the_uninterrupted_file(base: Path) -> None:
    images = base / "many"
    write_images(images, 400, seed=1)
    model = base / "model" / "model.onnx"

    def args(out: Path) -> list[str]:
        return [
            "predict", "--model", str(model), "--data.predict_root", str(images),
            "--data.batch_size", "1", "--data.num_workers", "0", "--writer.part_rows", "4",
            "--writer.output", str(out), *QUIET,
        ]  # fmt: skip

    whole = base / "whole" / "predictions.csv"
    _ok(run_cli(args(whole), cwd=base))

    out = base / "killed" / "predictions.csv"
    parts = out.parent / "predictions.csv.parts"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TBCLF_RUN_VERSION", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tbclf", *args(out)], cwd=base, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(parts.glob("*.csv"))) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    assert not out.exists() and not out.with_suffix(".json").exists()
    kept = sum(len(read_output_csv(p)[1]) for p in parts.glob("*.csv"))
    assert 8 <= kept < 400

    again = run_cli(args(out), cwd=base)
    _ok(again)
    assert "resuming:" in again.stdout
    resumed = int(again.stdout.split("resuming: ")[1].split()[0])
    assert resumed == kept
    assert out.read_bytes() == whole.read_bytes()
    side, side_whole = (json.loads(p.with_suffix(".json").read_text()) for p in (out, whole))
    assert side == side_whole
    assert not parts.exists()
