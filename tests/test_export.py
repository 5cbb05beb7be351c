"""tbclf export: a checked, self-describing ONNX file equal to PyTorch, and the INT8 gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import tbclf
from tbclf import export
from tbclf.commands import run_command
from tbclf.data.spec import InputSpec
from tbclf.errors import ConfigError
from tbclf.models.loading import load_classifier
from tests.serve_helpers import DEV, build_model, dev_images, train_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("export")
    return {
        "simple": train_run(base / "simple", "simple"),
        "timm": train_run(base / "timm", "timm", epochs=1),
    }


@pytest.mark.parametrize("kind", ["simple", "timm"])
def test_export_writes_checked_self_describing_onnx(runs, kind, capsys):
    ckpt = runs[kind]
    result = run_command("export", ["--ckpt_path", str(ckpt), "--overwrite", "true"])
    path = Path(result["onnx"])
    assert path == ckpt.parent.parent / "model.onnx"
    assert "max |P_onnx - P_torch|" in capsys.readouterr().out
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    model = load_classifier(ckpt)
    size = model.input_spec.image_size
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, size, size]
    meta = export.read_metadata(proto)
    assert InputSpec.from_dict(json.loads(meta[export.META_SPEC])) == model.input_spec
    point = export.metadata_operating_point(meta, "m.onnx")
    assert point.threshold == float(model.threshold) and point.source == "validation"
    assert json.loads(meta[export.META_CLASSES])["labels"] == {"0": "healthy", "1": "TB"}
    assert meta[export.META_VERSION] == tbclf.__version__
    run = json.loads(meta[export.META_RUN])
    assert run["run"] == f"{kind}/version_0" and len(run["checkpoint_sha256"]) == 64
    assert meta[export.META_QUANT] == "none"


@pytest.mark.parametrize("kind", ["simple", "timm"])
def test_onnx_probabilities_equal_pytorch_for_any_batch(runs, kind, tmp_path):
    model = load_classifier(runs[kind])
    path, diff = export.export_onnx(model, tmp_path / "m.onnx")
    assert diff <= export.MAX_PROB_DIFF
    size = model.input_spec.image_size
    session = export.ort_session(path)
    for batch in (1, 5):
        images = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(batch))
        ours = export.onnx_probabilities(session, images.numpy())
        theirs = export.torch_probabilities(model, images.numpy())
        assert ours.shape == (batch,)
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_tta_export_equals_pytorch_tta_and_says_so(runs, tmp_path):
    from tbclf.inference import OnnxPredictor

    model = load_classifier(runs["simple"])
    size = model.input_spec.image_size
    images = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(4))
    plain = export.torch_probabilities(model, images.numpy())
    result = run_command("export", ["--ckpt_path", str(runs["simple"]), "--tta", "true",
                                    "--out", str(tmp_path / "tta.onnx")])  # fmt: skip
    ours = export.onnx_probabilities(export.ort_session(result["onnx"]), images.numpy())
    np.testing.assert_allclose(ours, export.torch_probabilities(model, images.numpy(), tta=True),
                               atol=1e-4, rtol=0)  # fmt: skip
    assert np.abs(ours - plain).max() > 1e-5  # the views were traced, not dropped
    meta = export.read_metadata(onnx.load(result["onnx"]))
    assert json.loads(meta[export.META_MODEL])["tta"] is True
    assert OnnxPredictor(result["onnx"]).record["tta"] is True


@pytest.mark.devset
@pytest.mark.skipif(not DEV.is_dir(), reason=f"dev set not present at {DEV}")
@pytest.mark.parametrize("kind", ["simple", "timm"])
def test_onnx_equals_pytorch_on_dev_images_at_224(kind, tmp_path):
    model = build_model(kind, 224).eval()
    paths = dev_images(12)
    images = export.prepare_images(model.input_spec, paths)
    path, diff = export.export_onnx(model, tmp_path / "m.onnx", check_images=images)
    probs = export.onnx_probabilities(export.ort_session(path), images)
    np.testing.assert_allclose(probs, export.torch_probabilities(model, images), atol=1e-4, rtol=0)
    assert diff <= 1e-4 and probs.std() > 0  # distinct images, distinct answers


def test_export_refuses_to_overwrite(runs, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"mine")
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        run_command("export", ["--ckpt_path", str(runs["simple"]), "--out", str(out)])
    assert out.read_bytes() == b"mine"


def test_int8_is_calibrated_on_training_images_and_its_auroc_change_printed(runs, capsys):
    ckpt = runs["simple"]
    result = run_command(
        "export", ["--ckpt_path", str(ckpt), "--int8", "true", "--overwrite", "true"]
    )
    out = capsys.readouterr().out
    assert "test AUROC" in out and "change" in out and "calibrated on 20 training images" in out
    int8 = onnx.load(result["int8"])
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = export.read_metadata(int8)
    assert meta[export.META_QUANT].startswith("int8 static")
    assert (
        meta[export.META_SPEC] == export.read_metadata(onnx.load(result["onnx"]))[export.META_SPEC]
    )
    assert abs(result["auroc_int8"] - result["auroc_fp32"]) <= export.MAX_INT8_AUROC_CHANGE


def _negated(fp32: bytes, calibration: np.ndarray) -> bytes:
    """A "quantized" model that ranks backwards: what a broken INT8 model looks like."""
    proto = onnx.load_from_string(fp32)
    graph = proto.graph
    out = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = "raw_logit"
    graph.node.append(onnx.helper.make_node("Neg", ["raw_logit"], [out]))
    return proto.SerializeToString()


def test_int8_refused_when_auroc_changes_too_much(runs, tmp_path, monkeypatch):
    ckpt = runs["simple"]
    fp32, _ = export.export_onnx(load_classifier(ckpt), tmp_path / "m.onnx")
    monkeypatch.setattr(export, "quantize_int8", _negated)
    target = tmp_path / "m.int8.onnx"
    with pytest.raises(ConfigError, match=r"INT8 refused .*change of -1\.0000, more than 0\.01"):
        export.export_int8(fp32, target, ckpt.parent.parent)
    assert not target.exists()


def test_int8_change_rule():
    ok = export.Int8Result(auroc_fp32=0.90, auroc_int8=0.895, n_test=10, n_calibration=5)
    export.check_int8(ok, 0.01, "x")
    bad = export.Int8Result(auroc_fp32=0.90, auroc_int8=0.88, n_test=10, n_calibration=5)
    with pytest.raises(ConfigError, match="-0.0200"):
        export.check_int8(bad, 0.01, "x")


def test_int8_needs_the_run_folder(runs, tmp_path):
    ckpt = tmp_path / "loose.ckpt"
    ckpt.write_bytes(runs["simple"].read_bytes())
    with pytest.raises(ConfigError, match="not in a run folder"):
        run_command("export", ["--ckpt_path", str(ckpt), "--int8", "true"])
    assert (tmp_path / "loose.onnx").exists()  # the fp32 model is still written


@pytest.mark.parametrize("size", [56, 64])
def test_shipped_small_cnn_with_adaptive_pooling_exports_exactly(size):
    """configs/simple_cnn.yaml pools adaptively to 4x4 (14x14 -> 4x4 at 224: uneven windows),
    which the exporter cannot trace with a dynamic batch; export fixes the pools' windows."""
    from tbclf.models import SimpleCNNClassifier

    model = SimpleCNNClassifier(
        batch_norm=True,
        dropout=0.3,
        adaptive_pool=4,
        image_size=size,
        channels_last=False,
        input_spec={"image_size": size},
    ).eval()
    session = export.ort_session(export.to_onnx_proto(model).SerializeToString())
    x = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].reshape(-1)
    np.testing.assert_allclose(got, expected, atol=1e-4)
