"""The run folder is the source of truth: test/predict inputs and the test split come from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import CONFIGS, make_learnable, run_cli, small_run_args

from tbclf.data.spec import PIXEL_FIELDS
from tbclf.io import read_output_csv
from tbclf.models.loading import load_classifier

pytestmark = pytest.mark.slow


def _ok(proc) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(workspace, run folder) of a 48-px CLAHE simple-CNN fit, temperature-scaled."""
    base = tmp_path_factory.mktemp("runfolder")
    make_learnable(base / "data")
    _ok(
        run_cli(
            [
                "fit",
                "--config",
                str(CONFIGS / "simple_cnn.yaml"),
                *small_run_args(base / "data"),
                "--model.init_args.calibrate",
                "true",
            ],  # fmt: skip
            cwd=base,
        )
    )
    return base, base / "runs" / "simple_cnn" / "version_0"


def _latest_stage(run_dir: Path, stage: str = "test") -> Path:
    return sorted(run_dir.glob(f"{stage}-*"), key=lambda p: p.stat().st_mtime_ns)[-1]


def _test(base: Path, run_dir: Path, *extra: str):
    return run_cli(
        [
            "test",
            "--config",
            str(CONFIGS / "simple_cnn.yaml"),
            *small_run_args(base / "data"),
            "--ckpt_path",
            str(run_dir / "checkpoints" / "best.ckpt"),
            *extra,
        ],
        cwd=base,
    )


def test_the_model_takes_its_spec_from_the_data_module_once(run) -> None:
    _, run_dir = run
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["init_args"]["input_spec"] is None, "no spec from the CLI"
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu",
                      weights_only=False)  # fmt: skip
    for spec in (hparams["input_spec"], ckpt["hyper_parameters"]["input_spec"]):
        assert {k: spec[k] for k in PIXEL_FIELDS} == {k: config["data"][k] for k in PIXEL_FIELDS}
    assert hparams["input_spec"]["image_size"] == 48


def test_test_scores_the_runs_own_split(run) -> None:
    base, run_dir = run
    _ok(_test(base, run_dir))
    stage = _latest_stage(run_dir)
    trained = json.loads((run_dir / "split.json").read_text())["splits"]
    tested = json.loads((stage / "split.test.json").read_text())["splits"]
    assert tested == trained
    config = yaml.safe_load((stage / "config.test.yaml").read_text())
    assert config["data"]["split_file"] == str(run_dir / "split.json")


def test_another_seed_at_test_time_is_refused(run) -> None:
    base, run_dir = run
    proc = _test(base, run_dir, "--data.seed", "7", "--data.cache_dir", str(base / "c7"))
    assert proc.returncode != 0
    assert "data.seed=7" in proc.stderr and "split.json" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The run's own seed, given explicitly, is fine.
    _ok(_test(base, run_dir, "--data.seed", "42"))


def test_pixel_options_at_test_time_follow_the_model(run) -> None:
    base, run_dir = run
    _ok(_test(base, run_dir))
    plain = json.loads((_latest_stage(run_dir) / "report" / "metrics.json").read_text())
    proc = _test(base, run_dir, "--data.image_size", "64", "--data.preprocessing", "none")
    _ok(proc)
    stage = _latest_stage(run_dir)
    assert "data.image_size=64 differs from the model's 48" in proc.stderr
    assert "data.preprocessing='none' differs from the model's 'clahe'" in proc.stderr
    config = yaml.safe_load((stage / "config.test.yaml").read_text())
    assert (config["data"]["image_size"], config["data"]["preprocessing"]) == (48, "clahe")
    changed = json.loads((stage / "report" / "metrics.json").read_text())
    assert changed["metrics"] == plain["metrics"]


def test_predict_follows_the_model_whatever_the_options(run, tmp_path: Path) -> None:
    base, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    common = [
        "predict",
        "--ckpt_path",
        str(ckpt),
        "--data.predict_root",
        str(base / "data" / "sa"),
        "--data.num_workers",
        "0",
        "--data.cache_dir",
        str(tmp_path / "cache"),
    ]
    plain = run_cli([*common, "--writer.output", str(tmp_path / "a.csv")], cwd=base)
    _ok(plain)
    assert "differs from the model" not in plain.stderr, "warn only about options the user set"
    proc = run_cli(
        [
            *common,
            "--data.image_size",
            "96",
            "--data.preprocessing",
            "equalize",
            "--writer.output",
            str(tmp_path / "b.csv"),
        ],
        cwd=base,
    )
    _ok(proc)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    # The Python API gives the same numbers: the loader and the spec's pipeline.
    model = load_classifier(ckpt)
    _, rows = read_output_csv(tmp_path / "a.csv")
    paths = {p.stem: p for p in (base / "data" / "sa").rglob("*.png")}
    for row in rows[:6]:
        image = model.input_spec.prepare(paths[Path(row["ID"]).name])
        with torch.no_grad():
            prob = model.predict_proba(image[None]).item()
        assert prob == pytest.approx(float(row["LABEL"]), abs=1e-5)


def test_later_stages_keep_their_logs_apart(run) -> None:
    base, run_dir = run
    _ok(_test(base, run_dir))
    _ok(_test(base, run_dir))
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1, "one training curve per run"
    stages = sorted(run_dir.glob("test-*"))
    assert len(stages) >= 2
    for stage in stages:
        assert list(stage.glob("events.out.tfevents.*"))
        assert (stage / "report" / "report.md").is_file()
    # The run is temperature-scaled: the report gives calibration before and after it.
    metrics = json.loads((stages[-1] / "report" / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["temperature"] != 1.0 and set(cal["before_temperature"]) == {"brier", "ece"}
    assert cal["before_temperature"]["brier"] != cal["brier"]
    assert "before it: Brier" in (stages[-1] / "report" / "report.md").read_text()


def test_a_crafted_checkpoint_never_runs_code(run, tmp_path: Path) -> None:
    base, run_dir = run
    marker = tmp_path / "pwned"
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["payload"] = _Marker(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    for command in (
        ["predict", "--data.predict_root", str(base / "data" / "sa")],
        ["explain", "--images", str(base / "data" / "sa"), "--out", str(tmp_path / "x")],
    ):
        proc = run_cli([*command, "--ckpt_path", str(evil)], cwd=tmp_path)
        assert proc.returncode != 0
        assert "cannot be loaded safely" in proc.stderr
        assert not marker.exists()


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_predict_with_tta_averages_the_views_and_records_it(run, tmp_path: Path) -> None:
    from tbclf.models.tta import tta_probs

    base, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    out = tmp_path / "tta.csv"
    proc = run_cli(
        ["predict", "--ckpt_path", str(ckpt), "--data.predict_root", str(base / "data" / "sb"),
         "--data.num_workers", "0", "--data.cache_dir", str(tmp_path / "cache"), "--tta", "true",
         "--writer.output", str(out)],
        cwd=base,
    )  # fmt: skip
    _ok(proc)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    model = load_classifier(ckpt)
    # The run's fitted temperature is in the checkpoint and in the predictions' record.
    assert model.hparams.calibrate is True and float(model.temperature) != 1.0
    assert sidecar["tta"] is True
    assert sidecar["operating_point"]["temperature"] == pytest.approx(float(model.temperature))
    _, rows = read_output_csv(out)
    paths = {p.stem: p for p in (base / "data" / "sb").rglob("*.png")}
    for row in rows[:4]:
        image = model.input_spec.prepare(paths[Path(row["ID"]).name])
        expected = pytest.approx(float(row["LABEL"]), abs=1e-5)
        assert model.predict_proba(image[None], tta=True).item() == expected
        raw = tta_probs(model, image[None])  # the views' mean, then the temperature
        calibrated = torch.sigmoid(torch.logit(raw) / model.temperature)
        assert calibrated.item() == expected
