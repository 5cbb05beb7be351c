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
from tbclf.evaluation.probability import reported_probability
from tbclf.io import read_output_csv
from tbclf.models import SimpleCNNClassifier

SPEC = InputSpec.from_options({"image_size": 32, "preprocessing": "none"}).to_dict()


def save_member(path, seed: int, threshold: float, spec=SPEC, temperature: float = 1.0):
    torch.manual_seed(seed)
    model = SimpleCNNClassifier(
        channels=[4, 8], kernel_sizes=[3, 3], head=[8], image_size=32, input_spec=spec
    )
    model.threshold.fill_(threshold)
    model.temperature.fill_(temperature)
    hparams = {**model.hparams, "_class_path": "tbclf.models.SimpleCNNClassifier"}
    torch.save({"hyper_parameters": hparams, "state_dict": model.state_dict()}, path)
    return path


def test_ensemble_of_two_checkpoints_gives_the_mean_of_their_probabilities(tmp_path):
    data = make_learnable(tmp_path / "data", n_per_class=3, size=40)
    a = save_member(tmp_path / "a.ckpt", 0, 0.3)
    b = save_member(tmp_path / "b.ckpt", 1, 0.5)
    info = ensemble_main(["--ckpt_path", str(a), "--ckpt_path", str(b),
                          "--predict_root", str(data), "--out", str(tmp_path / "out")])  # fmt: skip
    header, rows = read_output_csv(tmp_path / "out" / "predictions.csv")
    assert header == ["ID", "LABEL", "DECISION", "TRUE_LABEL"]  # what `predict` writes
    records = sorted(rows, key=lambda r: r["ID"])
    from tbclf.data.layouts import discover_predict

    singles = [ensemble_scores(load_members([p]), discover_predict(data)) for p in (a, b)]
    by_id = [dict(zip(s["id"], s["prob"], strict=True)) for s in singles]
    assert len(records) == 12
    for row in records:
        mean = (by_id[0][row["ID"]] + by_id[1][row["ID"]]) / 2
        assert float(row["LABEL"]) == pytest.approx(mean, abs=2e-6)
        assert int(row["DECISION"]) == int(
            float(row["LABEL"]) >= info["operating_point"]["threshold"]
        )
    assert not np.isclose(by_id[0][records[0]["ID"]], by_id[1][records[0]["ID"]])
    assert info["operating_point"]["threshold"] == pytest.approx(
        0.4
    )  # no validation folder: members' mean
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert saved["ensemble"]["members"] == [str(a), str(b)]
    assert saved["operating_point"]["threshold"] == pytest.approx(0.4) and saved["operating_point"][
        "source"
    ] == ("members")
    # Labelled images: the report `test` writes, read from the same sidecar.
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "At threshold 0.40 (the mean of the members' validation thresholds" in report


def test_ensemble_threshold_and_temperature_come_from_validation(tmp_path):
    data = make_learnable(tmp_path / "data", n_per_class=3, size=40)
    val = make_learnable(tmp_path / "val", n_per_class=4, size=40, seed=1)
    a = save_member(tmp_path / "a.ckpt", 0, 0.3)
    b = save_member(tmp_path / "b.ckpt", 1, 0.5)
    args = ["--ckpt_path", str(a), "--ckpt_path", str(b), "--predict_root", str(data),
            "--val_root", str(val), "--calibrate", "true", "--tta", "true",
            "--out", str(tmp_path / "out")]  # fmt: skip
    info = ensemble_main(args)
    assert info["operating_point"]["source"] == "ensemble validation"
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert str(val) in saved["operating_point"]["description"]
    assert info["operating_point"]["temperature"] > 0 and "after_ece" in info["val"]
    with pytest.raises(ConfigError, match="predictions.csv"):
        ensemble_main(args)  # never overwrites without --overwrite
    ensemble_main([*args, "--overwrite", "true"])


def test_members_with_other_inputs_are_refused(tmp_path):
    other = InputSpec.from_options({"image_size": 32, "preprocessing": "clahe"}).to_dict()
    a = save_member(tmp_path / "a.ckpt", 0, 0.5)
    b = save_member(tmp_path / "b.ckpt", 1, 0.5, spec=other)
    with pytest.raises(ConfigError, match="same data"):
        load_members([a, b])


def test_members_are_averaged_as_they_report_p_tb_temperature_included(tmp_path):
    from tbclf.data.layouts import discover_predict
    from tbclf.engine.ensemble import record_batches
    from tbclf.engine.scoring import score_loader

    data = make_learnable(tmp_path / "data", n_per_class=2, size=40)
    hot = load_members([save_member(tmp_path / "t.ckpt", 0, 0.5, temperature=2.0)])
    records = discover_predict(data)
    raw = score_loader(hot[0], list(record_batches(hot, records, 4)))
    got = ensemble_scores(hot, records)
    np.testing.assert_allclose(got["prob"], 1 / (1 + np.exp(-raw["logit"] / 2.0)), atol=1e-6)


def test_a_cv_group_is_an_ensemble_thresholded_on_its_out_of_fold_predictions(tmp_path):
    from tbclf.evaluation.threshold import pick_threshold
    from tbclf.io import write_csv

    data = make_learnable(tmp_path / "data", n_per_class=3, size=40)
    group = tmp_path / "runs" / "m_cv2"
    group.mkdir(parents=True)
    members = [save_member(tmp_path / f"{k}.ckpt", k, 0.5) for k in (0, 1)]
    (group / "cv.json").write_text(json.dumps({"members": [str(m) for m in members]}))
    rng = np.random.default_rng(0)
    oof = [(f"i{k}", "", k % 2, f"{p:.6f}", int(p > 0.5), k % 3 == 0)
           for k, p in enumerate(rng.random(30))]  # fmt: skip
    write_csv(group / "oof_predictions.csv",
              ["ID", "SOURCE", "FOLD", "LABEL", "DECISION", "TRUE_LABEL"],
              [[*r[:5], int(r[5])] for r in oof])  # fmt: skip
    info = ensemble_main(["--group", str(group), "--predict_root", str(data),
                          "--out", str(tmp_path / "out")])  # fmt: skip
    expected = pick_threshold([float(r[3]) for r in oof], [int(r[5]) for r in oof],
                              "sensitivity", 0.9)  # fmt: skip
    assert info["operating_point"]["threshold"] == pytest.approx(expected)
    assert info["members"] == [str(m) for m in members]
    assert "out-of-fold" in info["operating_point"]["description"]
    pair = ["--ckpt_path", str(members[0]), "--ckpt_path", str(members[1])]
    direct = ensemble_main([*pair, "--predict_root", str(data), "--out", str(tmp_path / "o2")])
    a = read_output_csv(tmp_path / "out" / "predictions.csv")[1]
    b = read_output_csv(tmp_path / "o2" / "predictions.csv")[1]
    assert [r["LABEL"] for r in a] == [r["LABEL"] for r in b]
    assert direct["operating_point"]["source"] == "members"


def test_a_group_without_cv_json_or_with_moved_members_is_refused(tmp_path):
    data = make_learnable(tmp_path / "data", n_per_class=1, size=40)
    args = ["--group", str(tmp_path / "nothing"), "--predict_root", str(data), "--out",
            str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(ConfigError, match="cv.json does not exist"):
        ensemble_main(args)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "cv.json").write_text(json.dumps({"members": ["/gone/best.ckpt"]}))
    with pytest.raises(ConfigError, match="which is not there"):
        ensemble_main(args)


def test_members_sharing_a_validation_split_are_thresholded_on_it(tmp_path):
    from tbclf.data.layouts import discover
    from tbclf.data.splits import save_split
    from tbclf.evaluation.threshold import pick_threshold

    data = make_learnable(tmp_path / "data", n_per_class=4, size=40)
    records = discover(data)
    split = {"train": records[::2], "val": records[1::2], "test": []}
    members = []
    for name, seed in (("s1", 0), ("s7", 1)):  # one recipe, two seeds: one split
        run = tmp_path / "runs" / name / "version_0"
        (run / "checkpoints").mkdir(parents=True)
        save_split(run / "split.json", split, data, {"seed": 42, "layout": "auto"})
        members.append(save_member(run / "checkpoints" / "best.ckpt", seed, 0.5))
    pair = ["--ckpt_path", str(members[0]), "--ckpt_path", str(members[1])]
    info = ensemble_main([*pair, "--predict_root", str(data), "--out", str(tmp_path / "out"),
                          "--calibrate", "true"])  # fmt: skip
    val = ensemble_scores(load_members(members), split["val"])
    temp = info["operating_point"]["temperature"]

    prob = reported_probability(val["logit"], temp).numpy()
    assert info["operating_point"]["threshold"] == pytest.approx(
        pick_threshold(prob, val["label"], "sensitivity", 0.9)
    )
    assert info["operating_point"]["split_file"].endswith("s1/version_0/split.json")
    assert "validation split all members held out" in info["operating_point"]["description"]
    # Another split for one member: no shared validation set, so nothing to fit a temperature on.
    other = {"train": records[1::2], "val": records[::2], "test": []}
    save_split(members[1].parent.parent / "split.json", other, data, {"seed": 1})
    with pytest.raises(ConfigError, match="--calibrate needs labelled images"):
        ensemble_main([*pair, "--predict_root", str(data), "--out", str(tmp_path / "o2"),
                       "--calibrate", "true"])  # fmt: skip
