"""The real CLI, as a user runs it: fit, predict, resume, print_config, DDP, bad input."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
from cli_helpers import CONFIGS, make_learnable, run_cli, small_run_args

pytestmark = pytest.mark.slow


def _ok(proc) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    make_learnable(base / "data")
    return base


@pytest.fixture(scope="module")
def cnn_run(workspace: Path) -> Path:
    """One simple-CNN fit shared by the tests that need a trained checkpoint."""
    proc = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "simple_cnn.yaml"),
            *small_run_args(workspace / "data", epochs=2),
        ],
        cwd=workspace,
    )
    _ok(proc)
    return workspace / "runs" / "simple_cnn" / "version_0"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_help_lists_commands(tmp_path: Path) -> None:
    proc = run_cli(["--help"], cwd=tmp_path)
    _ok(proc)
    for word in ("fit", "predict", "eda", "report", "explain"):
        assert word in proc.stdout


def test_fit_writes_run_folder(cnn_run: Path) -> None:
    ckpts = cnn_run / "checkpoints"
    assert (ckpts / "best.ckpt").is_file() and (ckpts / "last.ckpt").is_file()
    assert (cnn_run / "config.yaml").is_file()
    assert (cnn_run / "hparams.yaml").is_file()
    assert list(cnn_run.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert (cnn_run / "split.json").is_file()
    ckpt = torch.load(ckpts / "best.ckpt", map_location="cpu", weights_only=False)
    assert "threshold" in ckpt["state_dict"]
    assert 0.0 <= float(ckpt["state_dict"]["threshold"]) <= 1.0
    assert ckpt["callbacks"], "callback state (early stopping, checkpoint) must be saved"


def test_predict_from_best(cnn_run: Path, workspace: Path) -> None:
    data = workspace / "data"
    args = [
        "predict",
        "--config",
        str(CONFIGS / "simple_cnn.yaml"),
        *small_run_args(data),
        "--data.predict_root",
        str(data / "sa"),
        "--ckpt_path",
        str(cnn_run / "checkpoints" / "best.ckpt"),
    ]
    proc = run_cli(args, cwd=workspace)
    _ok(proc)
    out = cnn_run / "predictions.csv"
    rows = _read_csv(out)
    assert len(rows) == 24
    assert set(rows[0]) >= {"ID", "LABEL", "DECISION"}
    assert len({r["ID"] for r in rows}) == 24
    for row in rows:
        assert 0.0 <= float(row["LABEL"]) <= 1.0
        assert row["DECISION"] in ("0", "1")
    before = out.read_bytes()
    again = run_cli(args, cwd=workspace)
    assert again.returncode != 0
    assert "overwrite" in again.stderr and "predictions.csv" in again.stderr
    assert out.read_bytes() == before, "an existing predictions.csv must not be touched"
    _ok(run_cli([*args, "--writer.overwrite", "true"], cwd=workspace))


def test_predict_without_config_uses_checkpoint(
    cnn_run: Path, workspace: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sub.csv"
    proc = run_cli(
        [
            "predict",
            "--ckpt_path",
            str(cnn_run / "checkpoints" / "best.ckpt"),
            "--data.predict_root",
            str(workspace / "data" / "sb"),
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--data.num_workers",
            "0",
            "--writer.output",
            str(out),
        ],
        cwd=workspace,
    )
    _ok(proc)
    assert len(_read_csv(out)) == 24


def test_resume_from_last(workspace: Path, tmp_path: Path) -> None:
    data = workspace / "data"
    base = ["fit", "--config", str(CONFIGS / "simple_cnn.yaml")]
    _ok(run_cli([*base, *small_run_args(data, epochs=1)], cwd=tmp_path))
    # The 1-epoch run finished: training it further is the explicit --extend.
    extend = ["--ckpt_path", "runs/simple_cnn/version_0/checkpoints/last.ckpt", "--extend", "true"]
    _ok(run_cli([*base, *small_run_args(data, epochs=3), *extend], cwd=tmp_path))
    run = tmp_path / "runs" / "simple_cnn"
    assert sorted(p.name for p in run.iterdir()) == ["version_0"], "resume must reuse the run"
    last = torch.load(
        run / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert last["epoch"] == 2
    assert (run / "version_0" / "config.yaml").is_file()
    assert (run / "version_0" / "config.fit.yaml").is_file()


def test_print_config(tmp_path: Path) -> None:
    proc = run_cli(
        ["fit", "--config", str(CONFIGS / "mobilenet.yaml"), "--print_config"], cwd=tmp_path
    )
    _ok(proc)
    assert "tbclf.models.TimmClassifier" in proc.stdout
    assert "mobilenetv2_100" in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_unknown_key_is_named(tmp_path: Path) -> None:
    proc = run_cli(
        ["fit", "--config", str(CONFIGS / "mobilenet.yaml"), "--data.imagesize", "64"], cwd=tmp_path
    )
    assert proc.returncode != 0
    assert "imagesize" in proc.stderr


def test_mobilenet_offline_weights_fit_and_predict(workspace: Path, tmp_path: Path) -> None:
    from tbclf.models.backbone import offline_mobilenetv2_weights

    data = workspace / "data"
    proc = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "mobilenet.yaml"),
            *small_run_args(data, image_size=64, epochs=2),
            "--model.init_args.weights",
            str(offline_mobilenetv2_weights()),
            "--model.init_args.freeze_epochs",
            "1",
        ],
        cwd=tmp_path,
    )
    _ok(proc)
    run = tmp_path / "runs" / "mobilenet" / "version_0"
    proc = run_cli(
        [
            "predict",
            "--ckpt_path",
            "best",
            "--config",
            str(CONFIGS / "mobilenet.yaml"),
            *small_run_args(data, image_size=64),
            "--model.init_args.weights",
            str(offline_mobilenetv2_weights()),
            "--data.predict_root",
            str(data / "sb"),
        ],
        cwd=tmp_path,
    )
    _ok(proc)
    rows = _read_csv(run / "predictions.csv")
    assert len(rows) == 24
    assert all(0.0 <= float(r["LABEL"]) <= 1.0 for r in rows)


def test_checkpoint_of_other_model_is_refused(
    cnn_run: Path, workspace: Path, tmp_path: Path
) -> None:
    from tbclf.models.backbone import offline_mobilenetv2_weights

    ckpt = torch.load(cnn_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    ckpt.pop("hyper_parameters", None)  # force the config's model, as an old checkpoint would
    foreign = tmp_path / "foreign.ckpt"
    torch.save(ckpt, foreign)
    proc = run_cli(
        [
            "predict",
            "--config",
            str(CONFIGS / "mobilenet.yaml"),
            *small_run_args(workspace / "data"),
            "--model.init_args.weights",
            str(offline_mobilenetv2_weights()),
            "--data.predict_root",
            str(workspace / "data" / "sa"),
            "--writer.output",
            str(tmp_path / "p.csv"),
            "--ckpt_path",
            str(foreign),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "foreign.ckpt" in proc.stderr and "does not fit" in proc.stderr
    assert not (tmp_path / "p.csv").exists()


def test_empty_predict_folder(cnn_run: Path, workspace: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(
        [
            "predict",
            "--ckpt_path",
            str(cnn_run / "checkpoints" / "best.ckpt"),
            "--data.predict_root",
            str(empty),
            "--data.num_workers",
            "0",
            "--writer.output",
            str(tmp_path / "p.csv"),
        ],
        cwd=workspace,
    )
    assert proc.returncode != 0
    assert str(empty) in proc.stderr


def _probe_env() -> dict[str, str]:
    """PYTHONPATH with tests/ first, so every DDP rank can import tests/ddp_probe.py."""
    tests = str(Path(__file__).resolve().parent)
    return {"PYTHONPATH": os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)}


def _probes(folder: Path, fn: str) -> list[dict]:
    found = [json.loads((folder / f"{fn}-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(p["world_size"] == 2 for p in found)
    return found


def test_ddp_two_cpu_processes(workspace: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    callback = json.dumps({"class_path": "ddp_probe.DDPProbe", "init_args": {"out": str(probe)}})
    # 11 validation and 11 test images: DistributedSampler pads each with one repeat.
    ddp = [
        "--trainer.strategy", "ddp", "--trainer.devices", "2",
        "--data.val_fraction", "0.23", "--data.test_fraction", "0.23",
    ]  # fmt: skip
    proc = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "simple_cnn.yaml"),
            *small_run_args(workspace / "data", epochs=2),
            *ddp,
            "--trainer.callbacks+",
            callback,
        ],
        cwd=tmp_path,
        env=_probe_env(),
    )
    _ok(proc)
    runs = tmp_path / "runs" / "simple_cnn"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0"], "all ranks share one run"
    last = torch.load(
        runs / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert last["epoch"] == 1
    # Each of the 2 processes sees half the training set (DistributedSampler), batch 8.
    split = json.loads((runs / "version_0" / "split.json").read_text())
    n_train = len(split["splits"]["train"])
    assert last["global_step"] == 2 * math.ceil(math.ceil(n_train / 2) / 8)

    # Validation: both ranks hold the whole validation set, each image exactly once, although
    # the sampler padded an odd-sized set with a repeat.
    val_ids = sorted(str(Path(p).with_suffix("")) for p in split["splits"]["val"])
    assert len(val_ids) % 2 == 1, "the test needs an odd validation set to see the padding"
    fit = _probes(tmp_path / "probe", "fit")
    for rank in fit:
        assert len(rank["val"]) == 2
        for epoch in rank["val"]:
            assert len(epoch) == len(set(epoch)) and sorted(epoch) == val_ids
    # The two ranks draw different augmentation streams (same image, same point in training).
    assert fit[0]["augmented"] != fit[1]["augmented"]
    # Each rank's random state is in the checkpoint, for an exact resume on two processes.
    assert len(last["callbacks"]["RNGStateCallback"]["ranks"]) == 2

    # test under DDP finishes (it crashed after the test loop) and writes the report, with
    # every test image exactly once.
    proc = run_cli(
        [
            "test",
            "--config",
            str(CONFIGS / "simple_cnn.yaml"),
            *small_run_args(workspace / "data"),
            *ddp,
            "--ckpt_path",
            str(runs / "version_0" / "checkpoints" / "best.ckpt"),
            "--trainer.callbacks+",
            callback,
        ],
        cwd=tmp_path,
        env=_probe_env(),
        timeout=300,
    )
    _ok(proc)
    test_ids = sorted(str(Path(p).with_suffix("")) for p in split["splits"]["test"])
    assert len(test_ids) % 2 == 1
    for rank in _probes(tmp_path / "probe", "test"):
        (epoch,) = rank["test"]
        assert len(epoch) == len(set(epoch)) and sorted(epoch) == test_ids
    (metrics_json,) = (runs / "version_0").glob("**/report/metrics.json")  # one report
    report = metrics_json.parent
    assert json.loads((report / "metrics.json").read_text())["n"] == len(test_ids)
    assert sorted(r["ID"] for r in _read_csv(report / "predictions.csv")) == test_ids
