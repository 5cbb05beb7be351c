"""Bad days for the real CLI: SIGKILL during fit and predict, two runs started at once.

The kills land deterministically: a run prints Lightning's progress bar to its stdout, one line
per step, and the test sends SIGKILL (to the run's own process group) as soon as it reads an
early step of the chosen epoch, so the epoch before is complete and checkpointed and the
current one is not.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import CONFIGS, make_learnable, run_cli, small_run_args

from tbclf.engine.rundir import claim_version

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EPOCHS = 4
KILL_EPOCH = 2
PROGRESS = re.compile(r"^Epoch (\d+):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")
PREDICTING = re.compile(r"^Predicting DataLoader 0:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    )


def _fit_args(data: Path, epochs: int = EPOCHS) -> list[str]:
    # Batches of 4 make 12 training steps per epoch: the kill at step 1 has 10 steps of margin.
    return [
        "fit", "--config", str(CONFIGS / "simple_cnn.yaml"),
        *small_run_args(data, epochs=epochs),
        "--data.batch_size", "4",
        "--trainer.enable_progress_bar", "true",
        "--early_stopping.patience", "100",
    ]  # fmt: skip


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TBCLF_RUN_VERSION", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tbclf", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(log, "w"),  # noqa: SIM115 - the child holds it; closed when it exits
        text=True,
        start_new_session=True,  # its own process group: the kill reaches anything it forked
    )


def _kill_when(proc: subprocess.Popen, pattern: re.Pattern, wanted, log: Path) -> re.Match:
    """SIGKILL the run's process group at the first stdout line where wanted(match) holds."""
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            match = pattern.match(line.strip())
            if match and wanted(match):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                assert proc.returncode == -signal.SIGKILL
                return match
        proc.wait(timeout=60)
        pytest.fail(
            f"the run ended (exit {proc.returncode}) before the kill point:\n"
            f"{log.read_text()[-4000:]}"
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    raise AssertionError("unreachable")


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


def _final_scalars(run: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in ("val/auroc", "val/loss")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("faults_cli")
    return make_learnable(base / "data", n_per_class=24)


def _kill_and_resume(data: Path, base: Path, extra: tuple[str, ...] = ()) -> dict:
    """An uninterrupted fit, and the same fit SIGKILLed in epoch 2 then resumed from last."""
    full_dir, killed_dir = base / "uninterrupted", base / "killed"
    full_dir.mkdir()
    killed_dir.mkdir()
    args = [*_fit_args(data), *extra]
    _ok(run_cli(args, cwd=full_dir))

    proc = _start(args, killed_dir, base / "killed.log")
    match = _kill_when(
        proc,
        PROGRESS,
        lambda m: int(m[1]) == KILL_EPOCH and 1 <= int(m[2]) <= 2,
        base / "killed.log",
    )
    run = killed_dir / "runs" / "simple_cnn" / "version_0"
    at_kill = _load(run / "checkpoints" / "last.ckpt")
    temps_at_kill = _temp_files(run)
    resumed = run_cli([*args, "--ckpt_path", "last"], cwd=killed_dir)
    return {
        "full": full_dir / "runs" / "simple_cnn" / "version_0",
        "run": run,
        "steps_per_epoch": int(match[3]),
        "at_kill": at_kill,
        "temps_at_kill": temps_at_kill,
        "resumed": resumed,
    }


@pytest.fixture(scope="module")
def killed_and_resumed(data: Path, tmp_path_factory) -> dict:
    return _kill_and_resume(data, tmp_path_factory.mktemp("kill_fit"))


# --------------------------------------------------------------------------- fit + SIGKILL


def test_fit_killed_mid_epoch_resumes_from_last_and_finishes(killed_and_resumed: dict) -> None:
    k = killed_and_resumed
    steps = k["steps_per_epoch"]
    # The interrupted epoch left no trace: last.ckpt is the end of the epoch before it.
    late = "the kill was meant for step 1-2 of the epoch; the run got further (box overloaded?)"
    assert k["at_kill"]["epoch"] == KILL_EPOCH - 1, late
    assert k["at_kill"]["global_step"] == KILL_EPOCH * steps, late
    assert k["temps_at_kill"] == []

    _ok(k["resumed"])
    run, full = k["run"], k["full"]
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"], "resume reuses the run"
    a, b = _load(full / "checkpoints" / "last.ckpt"), _load(run / "checkpoints" / "last.ckpt")
    assert (a["epoch"], a["global_step"]) == (EPOCHS - 1, EPOCHS * steps)
    assert (b["epoch"], b["global_step"]) == (a["epoch"], a["global_step"])
    split = json.loads((run / "split.json").read_text())["splits"]
    assert split == json.loads((full / "split.json").read_text())["splits"]
    assert set(a["state_dict"]) == set(b["state_dict"])
    # Resume is exact (test_resumed_fit_is_bit_exact), so the final metrics are the same too.
    assert _final_scalars(run) == _final_scalars(full)


def _assert_same_weights(k: dict) -> None:
    _ok(k["resumed"])
    a = _load(k["full"] / "checkpoints" / "last.ckpt")["state_dict"]
    b = _load(k["run"] / "checkpoints" / "last.ckpt")["state_dict"]
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)}/{len(a)} tensors differ, e.g. {different[:3]}"


def test_resumed_fit_is_bit_exact(killed_and_resumed: dict) -> None:
    _assert_same_weights(killed_and_resumed)


def test_resumed_fit_with_loader_workers_is_bit_exact(data: Path, tmp_path: Path) -> None:
    """Augmentation in two worker processes (persistent validation workers too)."""
    k = _kill_and_resume(data, tmp_path, ("--data.num_workers", "2"))
    assert k["at_kill"]["epoch"] == KILL_EPOCH - 1, "the kill landed late (box overloaded?)"
    _assert_same_weights(k)


# --------------------------------------------------------------------------- predict + SIGKILL


def _predict_args(data: Path, ckpt: Path, out: Path) -> list[str]:
    return [
        "predict", "--config", str(CONFIGS / "simple_cnn.yaml"),
        *small_run_args(data),
        "--data.batch_size", "1",  # one step per image: a long loop to land the kill in
        "--trainer.enable_progress_bar", "true",
        "--data.predict_root", str(data),
        "--ckpt_path", str(ckpt),
        "--writer.output", str(out),
    ]  # fmt: skip


def test_predict_killed_mid_way_leaves_no_partial_csv(
    data: Path, killed_and_resumed: dict, tmp_path: Path
) -> None:
    ckpt = killed_and_resumed["full"] / "checkpoints" / "best.ckpt"
    out = tmp_path / "out" / "predictions.csv"
    mid_way = lambda m: 1 <= int(m[1]) <= int(m[2]) // 2  # noqa: E731

    # A fresh output: the kill leaves no CSV, only complete parts (a temporary file inside
    # the parts folder at most), and a rerun finishes from them.
    parts = out.parent / "predictions.csv.parts"
    proc = _start(_predict_args(data, ckpt, out), tmp_path, tmp_path / "p1.log")
    _kill_when(proc, PREDICTING, mid_way, tmp_path / "p1.log")
    assert not out.exists()
    assert [p for p in _temp_files(out.parent) if p.parent != parts] == []
    _ok(run_cli(_predict_args(data, ckpt, out), cwd=tmp_path))
    assert not parts.exists()
    first = out.read_bytes()
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 96 and len({r["ID"] for r in rows}) == 96

    # Overwriting: the kill leaves the earlier file byte for byte.
    args = [*_predict_args(data, ckpt, out), "--writer.overwrite", "true"]
    proc = _start(args, tmp_path, tmp_path / "p2.log")
    _kill_when(proc, PREDICTING, mid_way, tmp_path / "p2.log")
    assert out.read_bytes() == first
    assert [p for p in _temp_files(out.parent) if p.parent != parts] == []


# --------------------------------------------------------------------------- concurrent runs


def test_two_fits_started_at_once_get_their_own_complete_run_folders(
    data: Path, tmp_path: Path
) -> None:
    args = [*_fit_args(data, epochs=1), "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TBCLF_RUN_VERSION", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tbclf", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-4000:]
    base = tmp_path / "runs" / "simple_cnn"
    assert sorted(p.name for p in base.iterdir()) == ["version_0", "version_1"]
    states = []
    for run in sorted(base.iterdir()):
        for name in ("config.yaml", "hparams.yaml", "split.json"):
            assert (run / name).is_file(), f"{run.name} has no {name}"
        assert list(run.glob("events.out.tfevents.*")), f"{run.name} has no event file"
        assert not list(run.glob("config.*.yaml")), f"{run.name}: another run wrote its config"
        last = _load(run / "checkpoints" / "last.ckpt")
        _load(run / "checkpoints" / "best.ckpt")
        assert last["epoch"] == 0
        states.append(last["state_dict"])
    # Same seed, same data: two undisturbed runs end with the same weights.
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert _temp_files(tmp_path) == []


def _claim(args: tuple[str, str, multiprocessing.synchronize.Barrier]) -> int:
    save_dir, name, barrier = args
    barrier.wait()
    return claim_version(save_dir, name)


def test_version_claims_racing_in_many_processes_never_collide(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    n = 8
    barrier = ctx.Manager().Barrier(n)
    with ctx.Pool(n) as pool:
        versions = pool.map(_claim, [(str(tmp_path), "race", barrier)] * n)
    assert sorted(versions) == list(range(n))
