from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import make_learnable

from tbclf.commands.ensemble import main as ensemble_main
from tbclf.data.spec import InputSpec
from tbclf.engine.ensemble import ensemble_scores, load_members
from tbclf.errors import ConfigError
from tbclf.io import read_output_csv
from tbclf.models import SimpleCNNClassifier

SPEC = InputSpec.from_options({"image_size": 32, "preprocessing": "none"}).to_dict()


def save_member(path, seed: int, threshold: float, spec=SPEC):
    torch.manual_seed(seed)
    model = SimpleCNNClassifier(
        channels=[4, 8], kernel_sizes=[3, 3], head=[8], image_size=32, input_spec=spec
    )
    model.threshold.fill_(threshold)
    hparams = {**model.hparams, "_class_path": "tbclf.models.SimpleCNNClassifier"}
    torch.save({"hyper_parameters": hparams, "state_dict": model.state_dict()}, path)
    return path


def test_ensemble_of_two_checkpoints_gives_the_mean_of_their_probabilities(tmp_path):
    data = make_learnable(tmp_path / "data", n_per_class=3, size=40)
    a = save_member(tmp_path / "a.ckpt", 0, 0.3)
    b = save_member(tmp_path / "b.ckpt", 1, 0.5)
    info = ensemble_main(["--ckpt_path", str(a), "--ckpt_path", str(b),
                          "--predict_root", str(data), "--out", str(tmp_path / "out")])  # fmt: skip
    _, rows = read_output_csv(tmp_path / "out" / "predictions.csv")
    records = sorted(rows, key=lambda r: r["id"])
    from tbclf.data.layouts import discover_predict

    singles = [ensemble_scores(load_members([p]), discover_predict(data)) for p in (a, b)]
    by_id = [dict(zip(s["id"], s["prob"], strict=True)) for s in singles]
    assert len(records) == 12
    for row in records:
        mean = (by_id[0][row["id"]] + by_id[1][row["id"]]) / 2
        assert float(row["prob"]) == pytest.approx(mean, abs=2e-6)
        assert int(row["decision"]) == int(float(row["prob"]) >= info["threshold"])
    assert not np.isclose(by_id[0][records[0]["id"]], by_id[1][records[0]["id"]])
    assert info["threshold"] == pytest.approx(0.4)  # no validation folder: members' mean
    saved = json.loads((tmp_path / "out" / "ensemble.json").read_text())
    assert saved["members"] == [str(a), str(b)]


def test_ensemble_threshold_and_temperature_come_from_validation(tmp_path):
    data = make_learnable(tmp_path / "data", n_per_class=3, size=40)
    val = make_learnable(tmp_path / "val", n_per_class=4, size=40, seed=1)
    a = save_member(tmp_path / "a.ckpt", 0, 0.3)
    b = save_member(tmp_path / "b.ckpt", 1, 0.5)
    args = ["--ckpt_path", str(a), "--ckpt_path", str(b), "--predict_root", str(data),
            "--val_root", str(val), "--calibrate", "true", "--tta", "true",
            "--out", str(tmp_path / "out")]  # fmt: skip
    info = ensemble_main(args)
    assert "validation" in info["threshold_from"]
    assert info["temperature"] > 0 and "after_ece" in info["val"]
    with pytest.raises(ConfigError, match="predictions.csv"):
        ensemble_main(args)  # never overwrites without --overwrite
    ensemble_main([*args, "--overwrite", "true"])


def test_members_with_other_inputs_are_refused(tmp_path):
    other = InputSpec.from_options({"image_size": 32, "preprocessing": "clahe"}).to_dict()
    a = save_member(tmp_path / "a.ckpt", 0, 0.5)
    b = save_member(tmp_path / "b.ckpt", 1, 0.5, spec=other)
    with pytest.raises(ConfigError, match="same data"):
        load_members([a, b])
