"""Pretraining as a tbclf run, then a TB fit that starts from it, through the CLI."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from cli_helpers import CONFIGS, make_learnable, run_cli, small_run_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
_SPEC = importlib.util.spec_from_file_location("backbone_dtype", BENCHMARKS / "backbone_dtype.py")
backbone_dtype = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(backbone_dtype)

pytestmark = pytest.mark.slow


def _ok(proc) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )


def _corpus(root: Path, n: int = 12) -> Path:
    """Three classes with a bright band at a class-specific height."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(["covid19", "normal", "viral_pneumonia"]):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = rng.normal(80, 15, (48, 48)).clip(0, 255).astype(np.uint8)
            img[k * 16 : (k + 1) * 16] = 230
            cv2.imwrite(str(root / name / f"{name}_{i:02d}.jpg"), img)
    return root


@pytest.mark.parametrize("config", ["pretrain_cxr_simple_cnn.yaml"])
def test_pretrain_then_tb_fit_records_the_backbone(tmp_path: Path, config: str) -> None:
    _corpus(tmp_path / "corpus")
    _ok(run_cli(["fit", "--config", str(CONFIGS / config), *small_run_args(tmp_path / "corpus")],
                cwd=tmp_path))  # fmt: skip
    pre_dir = tmp_path / "runs" / "pretrain_cxr_simple_cnn" / "version_0"
    hparams = yaml.safe_load((pre_dir / "hparams.yaml").read_text())
    assert hparams["class_names"] == ["covid19", "normal", "viral_pneumonia"]
    events = EventAccumulator(str(pre_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/auroc", "val/balanced_accuracy", "val/auroc_covid19"} <= tags, tags
    pre_ckpt = pre_dir / "checkpoints" / "best.ckpt"

    # The fp16 check of the pretraining table scores exactly the run's validation images and
    # reproduces the best epoch's logged validation AUROC before rounding.
    dtype_check = backbone_dtype.compare(pre_dir, "float16")
    split = json.loads((pre_dir / "split.json").read_text())
    assert dtype_check["images"] == len(split["splits"]["val"])
    best = max(e.value for e in events.Scalars("val/auroc"))
    assert dtype_check["float32"]["auroc_macro"] == pytest.approx(best, abs=1e-4)
    assert 0 <= dtype_check["same_class"] <= dtype_check["images"]

    make_learnable(tmp_path / "tb")
    _ok(run_cli(["fit", "--config", str(CONFIGS / "simple_cnn.yaml"),
                 *small_run_args(tmp_path / "tb"), "--model.init_args.weights", str(pre_ckpt)],
                cwd=tmp_path))  # fmt: skip
    tb_dir = tmp_path / "runs" / "simple_cnn" / "version_0"
    tb_hparams = yaml.safe_load((tb_dir / "hparams.yaml").read_text())
    origin = tb_hparams["weights_origin"]
    assert origin["sha256"] == hashlib.sha256(pre_ckpt.read_bytes()).hexdigest()
    assert tb_hparams["class_names"] == ["healthy", "tb"]

    out = tmp_path / "pred.csv"
    _ok(run_cli(["predict", "--config", str(CONFIGS / "simple_cnn.yaml"),
                 *small_run_args(tmp_path / "tb"), "--data.predict_root", str(tmp_path / "tb"),
                 "--ckpt_path", str(tb_dir / "checkpoints" / "best.ckpt"),
                 "--writer.output", str(out)], cwd=tmp_path))  # fmt: skip
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["weights_origin"] == origin

    # The exported backbone starts a model just as well, and is far smaller than the ckpt.
    exported = tmp_path / "cnn.safetensors"
    _ok(run_cli(["backbone", "--ckpt_path", str(pre_ckpt), "--out", str(exported)],
                cwd=tmp_path))  # fmt: skip
    assert exported.stat().st_size < pre_ckpt.stat().st_size / 2
