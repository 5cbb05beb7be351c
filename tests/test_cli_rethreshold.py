"""`tbclf rethreshold`: a checkpoint copy whose operating point is chosen on a new site."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import make_learnable

from tbclf import export
from tbclf.commands import run_command
from tbclf.data.layouts import discover
from tbclf.data.spec import InputSpec
from tbclf.engine.ensemble import record_batches
from tbclf.engine.provenance import operating_point_of
from tbclf.engine.scoring import score_loader
from tbclf.errors import ConfigError
from tbclf.evaluation import calibration as cal
from tbclf.evaluation.operating_point import KEY, LEGACY_CHECKPOINT_KEY
from tbclf.evaluation.threshold import pick_threshold
from tbclf.models import SimpleCNNClassifier
from tbclf.models.loading import load_classifier


def checkpoint(path, threshold: float = 0.9):
    torch.manual_seed(0)
    spec = InputSpec.from_options({"image_size": 32, "preprocessing": "none"}).to_dict()
    model = SimpleCNNClassifier(
        channels=[4, 8], kernel_sizes=[3, 3], head=[8], image_size=32, input_spec=spec
    )
    model.threshold.fill_(threshold)
    hparams = {**model.hparams, "_class_path": "tbclf.models.SimpleCNNClassifier"}
    torch.save({"hyper_parameters": hparams, "state_dict": model.state_dict()}, path)
    return path


def test_the_copy_takes_the_sites_threshold_and_says_where_it_came_from(tmp_path, capsys):
    site = make_learnable(tmp_path / "site", n_per_class=6, size=40, seed=3)
    src = checkpoint(tmp_path / "model.ckpt")
    before = src.read_bytes()
    out = tmp_path / "site.ckpt"
    result = run_command("rethreshold", ["--ckpt_path", str(src), "--val_root", str(site),
                                         "--out", str(out)])  # fmt: skip
    model = load_classifier(src)
    scores = score_loader(model, record_batches([model], discover(site), 8))
    expected = pick_threshold(scores["prob"], scores["label"], "sensitivity", 0.9)
    assert result["threshold"] == pytest.approx(expected) and result["old_threshold"] == (
        pytest.approx(0.9)
    )
    assert src.read_bytes() == before  # the original is never touched
    copy = load_classifier(out)
    assert float(copy.threshold) == pytest.approx(expected)
    assert float(copy.temperature) == 1.0  # no --calibrate: the temperature stays
    info = operating_point_of(copy, str(out)).to_dict()
    assert info["source"] == "site validation" and info["n_tb"] == 12 and info["checkpoint"]
    assert "chosen again on 12 TB and 12 healthy" in info["description"]
    assert "fewer than 20 images" in capsys.readouterr().out
    # The exported model carries the new operating point and its origin.
    onnx_path = run_command("export", ["--ckpt_path", str(out), "--out",
                                       str(tmp_path / "m.onnx")])["onnx"]  # fmt: skip
    meta = export.read_metadata(onnx.load(onnx_path))
    point = export.metadata_operating_point(meta, str(onnx_path))
    assert point.threshold == pytest.approx(expected) and point.source == "site validation"
    assert json.loads(meta[export.META_OPERATING_POINT])["n_tb"] == 12  # under one key
    assert export.META_THRESHOLD not in meta and export.META_THRESHOLD_SOURCE not in meta
    # The original still says its threshold came from its run's validation split.
    assert operating_point_of(load_classifier(src)).source == "validation"


def test_calibrate_refits_the_temperature_on_the_site(tmp_path):
    site = make_learnable(tmp_path / "site", n_per_class=6, size=40, seed=4)
    src = checkpoint(tmp_path / "model.ckpt")
    out = tmp_path / "site.ckpt"
    result = run_command("rethreshold", ["--ckpt_path", str(src), "--val_root", str(site),
                                         "--out", str(out), "--calibrate", "true"])  # fmt: skip
    model = load_classifier(src)
    scores = score_loader(model, record_batches([model], discover(site), 8))
    temperature = cal.fit_temperature(scores["logit"], scores["label"])
    assert result["temperature"] == pytest.approx(temperature)
    assert float(load_classifier(out).temperature) == pytest.approx(temperature)
    assert cal.nll(scores["logit"], scores["label"], temperature) <= cal.nll(
        scores["logit"], scores["label"]
    )


def test_bad_requests_are_refused_and_nothing_is_overwritten(tmp_path):
    site = make_learnable(tmp_path / "site", n_per_class=2, size=40)
    src = checkpoint(tmp_path / "model.ckpt")
    base = ["--ckpt_path", str(src), "--val_root", str(site)]
    with pytest.raises(ConfigError, match="is the input checkpoint"):
        run_command("rethreshold", [*base, "--out", str(src)])
    mine = tmp_path / "mine.ckpt"
    mine.write_bytes(b"mine")
    with pytest.raises(ConfigError, match="already exists"):
        run_command("rethreshold", [*base, "--out", str(mine)])
    assert mine.read_bytes() == b"mine"
    for tb in site.glob("*/tb/*"):
        tb.unlink()
    with pytest.raises(ConfigError, match="needs both"):
        run_command("rethreshold", [*base, "--out", str(tmp_path / "x.ckpt")])
    assert not (tmp_path / "x.ckpt").exists()


@pytest.mark.parametrize("key", [KEY, LEGACY_CHECKPOINT_KEY])
def test_lightning_restores_and_saves_the_record_and_a_new_validation_forgets_it(key):
    model = SimpleCNNClassifier(channels=[4], kernel_sizes=[3], head=[4], image_size=32)
    record = {"source": "site validation", "n_tb": 3, "description": "x", "bad": [1]}
    if key == KEY:  # the record; the older files' key holds the origin alone
        record.update(threshold=0.3, strategy="sensitivity", target_sensitivity=0.9)
    state = {"threshold": torch.tensor(0.3), "temperature": torch.tensor(1.5)}
    model.on_load_checkpoint({key: record, "state_dict": state})
    point = model.recorded_operating_point
    assert (point.source, point.details, point.description) == (
        "site validation",
        {"n_tb": 3},
        "x",  # the list is not a plain value: dropped
    )
    assert (point.threshold, point.temperature) == (pytest.approx(0.3), 1.5)
    saved = {"hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(saved)
    assert saved[KEY]["n_tb"] == 3 and LEGACY_CHECKPOINT_KEY not in saved
    model._collected["val"] = [{"id": ["a", "b"], "source": ["", ""], "view": ["", ""],
                                "logit": np.array([0.1, 2.0], np.float32), "index": None,
                                "label": np.array([0.0, 1.0], np.float32)}]  # fmt: skip
    model._epoch_end("val")
    assert model.recorded_operating_point is None  # this run's validation chose it again
    assert model.operating_point().source == "validation"
