"""A run's life through the real CLI: Ctrl-C, resume, extend, and later stages that take what
the run recorded (data.root included) from its folder."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import CONFIGS, make_learnable, run_cli, small_run_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tbclf.engine.lifecycle import INTERRUPT_ENV

pytestmark = pytest.mark.slow

CONFIG = str(CONFIGS / "simple_cnn.yaml")
EPOCHS = 3


def _ok(proc) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )


def _fit_args(data: Path) -> list[str]:
    return ["fit", "--config", CONFIG, *small_run_args(data, epochs=EPOCHS)]


def _lrs(run_dir: Path) -> list[float]:
    """The learning rate logged at each epoch, over all of the run's event files."""
    by_step: dict[int, float] = {}
    for events_file in sorted(run_dir.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(events_file))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag.startswith("lr-"):
                by_step.update({e.step: e.value for e in events.Scalars(tag)})
    return [by_step[s] for s in sorted(by_step)]


def _epochs(run_dir: Path) -> int:
    last = run_dir / "checkpoints" / "last.ckpt"
    return torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace whose runs/simple_cnn/version_0 is an uninterrupted 3-epoch fit."""
    base = tmp_path_factory.mktemp("lifecycle")
    make_learnable(base / "data")
    proc = run_cli(_fit_args(base / "data"), cwd=base)
    _ok(proc)
    return base


def _runs(ws: Path) -> list[str]:
    return sorted(p.name for p in (ws / "runs" / "simple_cnn").iterdir())


def test_ctrl_c_in_the_first_epoch_removes_the_run_and_says_so(ws: Path) -> None:
    before = _runs(ws)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TBCLF_RUN_VERSION", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tbclf", *_fit_args(ws / "data")],
        cwd=ws,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    new = ws / "runs" / "simple_cnn" / f"version_{len(before)}"
    deadline = time.monotonic() + 120
    while not new.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert new.is_dir(), "the fit never claimed its run folder"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not new.exists() and _runs(ws) == before
    assert f"Removed runs/simple_cnn/{new.name}" in stderr, stderr[-2000:]
    assert "before its first checkpoint" in stderr and "Start again with:" in stderr


def test_ctrl_c_after_a_checkpoint_keeps_the_run_and_its_resume_command_finishes_it(
    ws: Path,
) -> None:
    full = ws / "runs" / "simple_cnn" / "version_0"
    version = f"version_{len(_runs(ws))}"
    stopped = run_cli(_fit_args(ws / "data"), cwd=ws, env={INTERRUPT_ENV: "2"})
    assert stopped.returncode != 0
    run_dir = ws / "runs" / "simple_cnn" / version
    assert _epochs(run_dir) == 2
    failed = (run_dir / "failed.txt").read_text()
    assert failed.startswith(f"interrupted (Ctrl-C) in epoch 3 of {EPOCHS}")
    # The message ends with the exact command that resumes this run, and it does.
    command = stopped.stderr.strip().splitlines()[-1].strip()
    assert command.startswith("python -m tbclf fit ") and command in failed
    assert command.endswith(f"--ckpt_path runs/simple_cnn/{version}/checkpoints/last.ckpt")
    resumed = run_cli(shlex.split(command)[3:], cwd=ws)
    _ok(resumed)
    assert version in _runs(ws) and len(_runs(ws)) == int(version.split("_")[1]) + 1
    assert not (run_dir / "failed.txt").exists(), "a successful resume clears failed.txt"
    assert json.loads((run_dir / "finished.json").read_text())["epochs"] == EPOCHS
    assert _epochs(run_dir) == _epochs(full) == EPOCHS
    assert _lrs(run_dir) == pytest.approx(_lrs(full))
    assert len(_lrs(full)) == EPOCHS


def test_last_resumes_the_newest_stopped_run_with_what_it_recorded(ws: Path) -> None:
    """A finished run newer than the stopped one is never resumed; the stopped run's own
    options (data.root, epochs, image size) come from its folder, not the shipped config."""
    stopped_version = f"version_{len(_runs(ws))}"
    stopped = run_cli(_fit_args(ws / "data"), cwd=ws, env={INTERRUPT_ENV: "1"})
    assert stopped.returncode != 0
    _ok(run_cli(_fit_args(ws / "data"), cwd=ws))  # a newer run that finishes
    newest = _runs(ws)[-1]
    resumed = run_cli(["fit", "--config", CONFIG, "--ckpt_path", "last"], cwd=ws)
    _ok(resumed)
    run_dir = ws / "runs" / "simple_cnn" / stopped_version
    assert f"runs/simple_cnn/{stopped_version}/checkpoints/last.ckpt" in resumed.stderr
    assert _runs(ws)[-1] == newest, "resume makes no new run"
    assert _epochs(run_dir) == EPOCHS
    assert _lrs(run_dir) == pytest.approx(_lrs(ws / "runs" / "simple_cnn" / "version_0"))
    assert f"data.root={ws / 'data'}" in resumed.stderr

    # Every run has finished now: nothing to resume, and the answer lists what it saw.
    nothing = run_cli(["fit", "--config", CONFIG, "--ckpt_path", "last"], cwd=ws)
    assert nothing.returncode == 2
    assert "no stopped run to resume" in nothing.stderr
    assert f"runs/simple_cnn/{stopped_version}: finished ({EPOCHS} epochs)" in nothing.stderr
    assert "Traceback" not in nothing.stderr


def test_a_finished_run_trains_further_only_with_extend(ws: Path, tmp_path: Path) -> None:
    source = ws / "runs" / "simple_cnn" / "version_0"
    runs = tmp_path / "runs" / "simple_cnn"
    runs.mkdir(parents=True)
    run_dir = runs / "version_0"
    shutil.copytree(source, run_dir)
    last = ["--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]
    refused = run_cli(["fit", "--config", CONFIG, *last, "--trainer.max_epochs", "5"], cwd=tmp_path)
    assert refused.returncode == 2
    assert "is finished (3 epochs)" in refused.stderr and "--extend true" in refused.stderr
    extended = run_cli(
        ["fit", "--config", CONFIG, *last, "--extend", "true", "--trainer.max_epochs", "5"],
        cwd=tmp_path,
    )
    _ok(extended)
    assert _epochs(run_dir) == 5
    lrs = _lrs(run_dir)
    assert lrs[:EPOCHS] == pytest.approx(_lrs(source))
    # Epochs 4 and 5 follow a 5-epoch cosine from where the run was (lr 0.001 in the config).
    assert lrs[EPOCHS:] == pytest.approx(
        [0.001 * (1 + math.cos(math.pi * e / 5)) / 2 for e in (3, 4)], rel=1e-4
    )


def test_test_and_predict_from_a_checkpoint_need_no_data_root(ws: Path, tmp_path: Path) -> None:
    run_dir = ws / "runs" / "simple_cnn" / "version_0"
    best = str(run_dir / "checkpoints" / "best.ckpt")
    tested = run_cli(["test", "--ckpt_path", best], cwd=ws)
    _ok(tested)
    assert tested.stdout.strip().splitlines()[-1].startswith(f"test done: run folder {run_dir}/")
    stage = sorted(run_dir.glob("test-*"), key=lambda p: p.stat().st_mtime_ns)[-1]
    assert (stage / "report" / "metrics.json").is_file()
    out = tmp_path / "p.csv"
    predicted = run_cli(
        ["predict", "--ckpt_path", best, "--data.predict_root", str(ws / "data" / "sa"),
         "--writer.output", str(out)],
        cwd=ws,
    )  # fmt: skip
    _ok(predicted)
    assert len(out.read_text().splitlines()) == 1 + 24
    assert (
        predicted.stdout.strip().splitlines()[-1].startswith(f"predict done: run folder {run_dir}")
    )
    assert str(out) in predicted.stdout.strip().splitlines()[-1]
    # A predict refused (its output exists) leaves no stage folder behind.
    stages = sorted(run_dir.glob("predict-*"))
    refused = run_cli(
        ["predict", "--ckpt_path", best, "--data.predict_root", str(ws / "data" / "sa"),
         "--writer.output", str(out)],
        cwd=ws,
    )  # fmt: skip
    assert refused.returncode == 2 and "overwrite" in refused.stderr
    assert sorted(run_dir.glob("predict-*")) == stages
    # `report` on the CSV that `test` wrote uses the run's threshold, not an inferred one.
    csv = stage / "report" / "predictions.csv"
    reported = run_cli(["report", "--predictions", str(csv), "--out", str(tmp_path / "r")], cwd=ws)
    _ok(reported)
    tested_metrics = json.loads((stage / "report" / "metrics.json").read_text())
    again = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert again["threshold"] == tested_metrics["threshold"]
    assert "inferred" not in json.dumps(again.get("threshold_info"))

    # An explicit root that differs wins, with a warning; a root that is gone is named.
    copy = tmp_path / "moved"
    shutil.copytree(ws / "data", copy)
    other = run_cli(["test", "--ckpt_path", best, "--data.root", str(copy)], cwd=ws)
    assert f"data.root='{copy}' differs from '{ws / 'data'}' recorded in" in other.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(ws / "runs", elsewhere / "runs")
    (elsewhere / "runs" / "simple_cnn" / "version_0" / "config.yaml").write_text(
        (run_dir / "config.yaml").read_text().replace(str(ws / "data"), str(tmp_path / "gone"))
    )
    gone = run_cli(
        ["test", "--ckpt_path", "runs/simple_cnn/version_0/checkpoints/best.ckpt"],
        cwd=elsewhere,
    )
    assert gone.returncode == 2
    assert f"data root {tmp_path / 'gone'}" in gone.stderr and "--data.root" in gone.stderr
