"""tbclf.inference: one predictor for .onnx and .ckpt, and `predict --model X.onnx`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tbclf import export
from tbclf.errors import ConfigError
from tbclf.inference import OnnxPredictor, TorchPredictor, load_predictor
from tbclf.io import read_output_csv
from tbclf.models.loading import load_classifier
from tests.cli_helpers import run_cli
from tests.serve_helpers import train_run, write_png


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("inference")
    ckpt = train_run(base, "simple")
    onnx_path, _ = export.export_onnx(load_classifier(ckpt), ckpt.parent.parent / "model.onnx")
    images = sorted((base / "data").rglob("*.png"))
    return {"ckpt": ckpt, "onnx": onnx_path, "base": base, "images": images}


def test_onnx_and_checkpoint_predictors_agree(run):
    onnx_p, torch_p = load_predictor(run["onnx"]), load_predictor(run["ckpt"])
    assert isinstance(onnx_p, OnnxPredictor) and isinstance(torch_p, TorchPredictor)
    assert onnx_p.spec == torch_p.spec and onnx_p.threshold == torch_p.threshold
    paths = run["images"][::3]
    a, b = onnx_p.predict_files(paths, batch_size=4), torch_p.predict_files(paths)
    np.testing.assert_allclose([p.prob for p in a], [p.prob for p in b], atol=1e-4, rtol=0)
    assert [p.decision for p in a] == [p.decision for p in b]
    assert len({round(p.prob, 6) for p in a}) > 1


def test_predictor_uses_the_models_own_pipeline(run):
    predictor = load_predictor(run["onnx"])
    model = load_classifier(run["ckpt"])
    path = run["images"][0]
    expected = model.predict_proba(model.input_spec.prepare(path)[None]).item()
    assert predictor.predict_file(path).prob == pytest.approx(expected, abs=1e-5)
    # bytes held in memory (an upload) go through the same reader and steps
    np.testing.assert_array_equal(
        predictor.prepare_bytes(path.read_bytes(), path.name), predictor.prepare_file(path)
    )


def test_decision_is_prob_at_or_above_threshold(run):
    predictor = load_predictor(run["onnx"])
    t = predictor.threshold
    assert predictor.decide(t).decision == 1 and predictor.decide(t).label == "TB"
    assert predictor.decide(np.nextafter(np.float32(t), np.float32(0))).decision == 0


def test_onnx_without_tbclf_metadata_is_refused(run, tmp_path):
    proto = onnx.load(str(run["onnx"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ConfigError, match="without tbclf metadata.*tbclf export"):
        load_predictor(bare)


def test_onnx_with_external_data_is_refused(run, tmp_path):
    proto = onnx.load(str(run["onnx"]))
    out = tmp_path / "ext.onnx"
    onnx.save(proto, str(out), save_as_external_data=True, size_threshold=0, location="w.bin")
    with pytest.raises(ConfigError, match="external files"):
        load_predictor(out)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("model.txt", b"x", "expected a .onnx file"),
        ("junk.onnx", b"not protobuf at all \xff\xfe", "not a readable ONNX model|without tbclf"),
        ("missing.onnx", None, "no such file"),
    ],
)
def test_bad_model_files_get_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_predictor(path)


@pytest.mark.slow
def test_cli_predict_with_onnx_writes_the_same_csv_as_the_checkpoint(run, tmp_path):
    base = run["base"]
    predict_root = base / "data"  # class folders: TRUE_LABEL comes along on both paths
    write_png(predict_root / "sa" / "unlabelled_extra.png")
    common = ["--data.predict_root", str(predict_root)]
    ckpt_csv, onnx_csv = tmp_path / "ckpt.csv", tmp_path / "onnx.csv"
    done = run_cli(
        [
            "predict",
            "--ckpt_path",
            str(run["ckpt"]),
            *common,
            "--data.num_workers",
            "0",
            "--data.cache_dir",
            str(base / "cache"),
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            "--writer.output",
            str(ckpt_csv),
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_cli(
        ["predict", "--model", str(run["onnx"]), *common, "--writer.output", str(onnx_csv)],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    header_a, rows_a = read_output_csv(ckpt_csv)
    header_b, rows_b = read_output_csv(onnx_csv)
    assert header_a == header_b == ["ID", "LABEL", "DECISION", "TRUE_LABEL"]
    by_id = {r["ID"]: r for r in rows_b}
    assert [r["ID"] for r in rows_a] == [r["ID"] for r in rows_b] and len(rows_a) == 41
    for row in rows_a:
        other = by_id[row["ID"]]
        assert abs(float(row["LABEL"]) - float(other["LABEL"])) <= 1e-4
        assert (row["DECISION"], row["TRUE_LABEL"]) == (other["DECISION"], other["TRUE_LABEL"])
    # the same sidecar: the threshold behind DECISION, its origin, the model and its input spec
    side_a = json.loads(ckpt_csv.with_suffix(".json").read_text())
    side_b = json.loads(onnx_csv.with_suffix(".json").read_text())
    point_a, point_b = side_a["operating_point"], side_b["operating_point"]
    assert point_b["threshold"] == pytest.approx(point_a["threshold"], abs=1e-7)
    assert side_b["n"] == side_a["n"] == 41 and side_b["predictions_csv"] == onnx_csv.name
    for key in ("decision_rule", "model_class", "input_spec", "weights_origin", "tbclf_version"):
        assert side_b[key] == side_a[key], key
    assert point_b["strategy"] == point_a["strategy"] and point_b["source"] == "validation"
    assert point_b["model_file"] == str(Path(run["onnx"]).resolve())
    # ... which `report` reads instead of inferring the threshold from DECISION
    report_out = tmp_path / "report_onnx"
    labels = tmp_path / "labels.csv"  # the extra image has no class folder: label it here
    labels.write_text("ID,LABEL\n" + "".join(f"{r['ID']},{r['TRUE_LABEL'] or 0}\n" for r in rows_b))
    report_cmd = ["report", "--predictions", str(onnx_csv), "--labels", str(labels)]
    done = run_cli([*report_cmd, "--out", str(report_out)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((report_out / "metrics.json").read_text())
    assert metrics["threshold"] == pytest.approx(point_a["threshold"])
    assert metrics["threshold_info"]["from"].endswith("onnx.json")
    # same overwrite rule: an existing CSV (or its sidecar) stops the run, untouched
    before = onnx_csv.read_bytes()
    done = run_cli(
        ["predict", "--model", str(run["onnx"]), *common, "--writer.output", str(onnx_csv)],
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "--writer.overwrite true" in done.stderr
    assert onnx_csv.read_bytes() == before
