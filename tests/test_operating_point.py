"""The operating point: one typed record, one dict form, one key in checkpoints, sidecars and
ONNX metadata; files written before it still load."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from tbclf import export
from tbclf.data.spec import InputSpec
from tbclf.engine.predictions import write_predictions
from tbclf.engine.provenance import model_record
from tbclf.errors import ConfigError
from tbclf.evaluation.operating_point import (
    KEY,
    LEGACY_CHECKPOINT_KEY,
    OperatingPoint,
    choose_operating_point,
)
from tbclf.evaluation.report import read_sidecar
from tbclf.evaluation.threshold import pick_threshold
from tbclf.inference import OnnxPredictor
from tbclf.models import SimpleCNNClassifier
from tbclf.models.loading import load_classifier

SITE = OperatingPoint(
    threshold=0.3125,  # exact in float32, as the model's buffer keeps it
    strategy="youden",
    target_sensitivity=None,
    source="site validation",
    description="chosen again on 5 TB and 6 healthy images",
    temperature=1.5,
    details={"n_tb": 5, "n_healthy": 6, "val_root": "site/"},
)


def _model(point: OperatingPoint | None = None) -> SimpleCNNClassifier:
    torch.manual_seed(0)
    spec = InputSpec.from_options({"image_size": 32, "preprocessing": "none"}).to_dict()
    model = SimpleCNNClassifier(
        channels=[4], kernel_sizes=[3], head=[4], image_size=32, input_spec=spec
    ).eval()
    if point is not None:
        model.threshold.fill_(point.threshold)
        model.temperature.fill_(point.temperature)
        model.recorded_operating_point = point
    return model


def _save(model: SimpleCNNClassifier, path, legacy: dict | None = None):
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)  # the class path and the record, as Lightning saves
    if legacy is not None:  # as a file from before the record
        del checkpoint[KEY]
        checkpoint[LEGACY_CHECKPOINT_KEY] = legacy
    torch.save(checkpoint, path)
    return path


def test_dict_form_round_trips_and_untrusted_values_are_refused():
    assert OperatingPoint.from_dict(SITE.to_dict()) == SITE
    assert json.loads(json.dumps(SITE.to_dict())) == SITE.to_dict()
    for bad in ({"threshold": "high"}, {"threshold": 1.5}, [0.5], {"threshold": float("nan")}):
        with pytest.raises(ConfigError, match="where"):
            OperatingPoint.from_dict(bad, "where")
    kept = OperatingPoint.from_dict({**SITE.to_dict(), "code": ["x"], "n": float("inf")})
    assert kept == SITE  # only plain, finite values are kept from a file


def test_choose_operating_point_is_pick_threshold_with_its_record():
    probs, labels = np.linspace(0.05, 0.95, 19), np.r_[np.zeros(9), np.ones(10)]
    point = choose_operating_point(probs, labels, "sensitivity", 0.8, source="validation",
                                   temperature=2.0, split_file="s.json")  # fmt: skip
    assert point.threshold == pick_threshold(probs, labels, "sensitivity", 0.8)
    assert (point.strategy, point.target_sensitivity, point.temperature) == ("sensitivity", 0.8, 2)
    assert point.details == {"split_file": "s.json"} and point.source == "validation"


def test_round_trip_through_checkpoint_sidecar_and_onnx(tmp_path):
    ckpt = _save(_model(SITE), tmp_path / "site.ckpt")
    raw = torch.load(ckpt, weights_only=True)
    assert raw[KEY] == SITE.to_dict() and LEGACY_CHECKPOINT_KEY not in raw  # one key
    loaded = load_classifier(ckpt)
    assert loaded.operating_point() == SITE

    csv = tmp_path / "predictions.csv"
    write_predictions(csv, [("a", 0.5, 1, None)], model_record(loaded, str(ckpt), tta=False))
    sidecar = json.loads(csv.with_suffix(".json").read_text())
    assert "threshold" not in sidecar and "threshold_source" not in sidecar  # one key
    assert read_sidecar(csv)[KEY] == SITE.with_details(checkpoint=str(ckpt))

    path, _ = export.export_onnx(loaded, tmp_path / "m.onnx")
    meta = export.read_metadata(onnx.load(path))
    assert json.loads(meta[export.META_OPERATING_POINT]) == SITE.to_dict()
    assert export.META_THRESHOLD not in meta and "temperature" not in meta[export.META_MODEL]
    predictor = OnnxPredictor(path)
    assert predictor.operating_point == SITE and predictor.threshold == SITE.threshold


def test_files_from_before_the_record_still_load(tmp_path):
    legacy_origin = {"source": "site validation", "n_tb": 5, "description": "old re-pick"}
    ckpt = _save(_model(SITE), tmp_path / "old.ckpt", legacy=legacy_origin)
    point = load_classifier(ckpt).operating_point()
    assert (point.threshold, point.temperature, point.source) == (0.3125, 1.5, "site validation")
    assert point.details == {"n_tb": 5} and point.description == "old re-pick"
    # A plain old checkpoint: chosen on its run's validation split, with its model's strategy.
    plain = load_classifier(_save(_model(), tmp_path / "plain.ckpt", legacy={}))
    assert plain.operating_point().source == "validation"
    assert plain.operating_point().strategy == "sensitivity"

    csv = tmp_path / "old.csv"
    write_predictions(csv, [("a", 0.5, 1, None)], None)
    old_sidecar = {"threshold": 0.25, "temperature": 2.0, "threshold_source": legacy_origin}
    csv.with_suffix(".json").write_text(json.dumps(old_sidecar))
    old = read_sidecar(csv)[KEY]
    assert (old.threshold, old.temperature, old.description) == (0.25, 2.0, "old re-pick")

    path, _ = export.export_onnx(load_classifier(ckpt), tmp_path / "m.onnx")
    proto = onnx.load(path)
    meta = export.read_metadata(proto)
    model_meta = {**json.loads(meta[export.META_MODEL]), "temperature": 1.5}
    keep = [p for p in proto.metadata_props if p.key not in (export.META_OPERATING_POINT,
                                                             export.META_MODEL)]  # fmt: skip
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    old_meta = {
        export.META_THRESHOLD: "0.3125",
        export.META_MODEL: json.dumps(model_meta),
        export.META_THRESHOLD_SOURCE: json.dumps(legacy_origin),
    }
    for key, value in old_meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, tmp_path / "old.onnx")
    point = OnnxPredictor(tmp_path / "old.onnx").operating_point
    assert (point.threshold, point.temperature, point.source) == (0.3125, 1.5, "site validation")
