"""`tbclf cv`: a run folder per fold, each image scored once by the model that never saw it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import CONFIGS, make_learnable, run_cli, small_run_args

from tbclf.evaluation.roc import auroc
from tbclf.io import read_output_csv

pytestmark = pytest.mark.slow


def test_cv_trains_a_run_per_fold_and_pools_out_of_fold_predictions(tmp_path: Path) -> None:
    make_learnable(tmp_path / "data", n_per_class=8)
    args = ["cv", "--folds", "2", "--config", str(CONFIGS / "simple_cnn.yaml"),
            *small_run_args(tmp_path / "data")]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    group = tmp_path / "runs" / "simple_cnn_cv2"
    summary = json.loads((group / "cv.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    for f in summary["folds"]:
        assert Path(f["checkpoint"]).is_file() and f"fold{f['fold']}" in f["checkpoint"]
    _, rows = read_output_csv(group / "oof_predictions.csv")
    ids = [r["ID"] for r in rows]
    assert len(ids) == len(set(ids)) == 32, "every image scored exactly once"
    # Each image was held out by the fold that scored it: it is in that run's test split only.
    for f in summary["folds"]:
        split = json.loads((Path(f["run"]) / "split.json").read_text())["splits"]
        tested = {str(Path(p).with_suffix("")) for p in split["test"]}
        trained = {str(Path(p).with_suffix("")) for p in split["train"] + split["val"]}
        scored = {r["ID"] for r in rows if r["FOLD"] == str(f["fold"])}
        assert scored == tested and not scored & trained
    pooled = auroc([float(r["LABEL"]) for r in rows], [int(r["TRUE_LABEL"]) for r in rows])
    assert summary["pooled_auroc"]["value"] == pytest.approx(pooled)
    assert "tbclf ensemble --group" in proc.stdout
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode != 0 and "cv.json" in again.stderr and "overwrite" in again.stderr
    # The fold models as an ensemble, thresholded on the pooled out-of-fold predictions.
    ens = run_cli(["ensemble", "--group", str(group), "--predict_root", str(tmp_path / "data"),
                   "--out", str(tmp_path / "ens")], cwd=tmp_path)  # fmt: skip
    assert ens.returncode == 0, ens.stderr[-4000:]
    sidecar = json.loads((tmp_path / "ens" / "predictions.json").read_text())
    assert sidecar["operating_point"]["source"] == "out-of-fold"
    assert sidecar["ensemble"]["members"] == summary["members"]
    assert (tmp_path / "ens" / "report" / "report.md").is_file()


def test_one_recipe_fitted_with_two_seeds_ensembles_on_their_shared_validation_split(
    tmp_path: Path,
) -> None:
    make_learnable(tmp_path / "data", n_per_class=8)
    ckpts = []
    for seed in ("1", "7"):  # data.seed stays: one split, two initialisations
        args = ["fit", "--config", str(CONFIGS / "simple_cnn.yaml"),
                *small_run_args(tmp_path / "data"), "--seed_everything", seed]  # fmt: skip
        proc = run_cli(args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        ckpts += sorted((tmp_path / "runs").glob("simple_cnn/version_*/checkpoints/best.ckpt"))
    ckpts = sorted(set(ckpts))
    assert len(ckpts) == 2
    members = [arg for c in ckpts for arg in ("--ckpt_path", str(c))]
    where = ["--predict_root", str(tmp_path / "data"), "--out", str(tmp_path / "ens")]
    ens = run_cli(["ensemble", *members, "--tta", "true", *where], cwd=tmp_path)
    assert ens.returncode == 0, ens.stderr[-4000:]
    source = json.loads((tmp_path / "ens" / "predictions.json").read_text())["operating_point"]
    assert source["source"] == "ensemble validation"
    assert source["split_file"] == str(ckpts[0].parent.parent / "split.json")
