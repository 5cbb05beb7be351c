"""A folder of DICOMs made from PNGs trains, predicts, runs eda and
explain, and predicts what the PNGs predict; no identifying tag reaches any output."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import CONFIGS, make_learnable, run_cli, small_run_args
from dicoms import PATIENT_BIRTH, PATIENT_NAME, write_dicom
from pydicom.uid import RLELossless

pytestmark = pytest.mark.slow


def _ok(proc) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    )


def to_dicoms(png_root: Path, dcm_root: Path) -> int:
    """Each PNG as a DICOM that a viewer shows with the same pixels, in four encodings."""
    pngs = sorted(png_root.rglob("*.png"))
    for i, png in enumerate(pngs):
        img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        rel = png.relative_to(png_root)
        kind = i % 4
        target = dcm_root / rel.with_suffix("" if kind == 3 else ".dcm")  # some without extension
        common = {"patient_id": f"MRN{i // 2:04d}", "view": "AP" if i % 2 else "PA"}
        if kind == 0:
            write_dicom(target, img, **common)
        elif kind == 1:  # MONOCHROME1 stores the inverse
            write_dicom(target, (255 - img).astype(np.uint8), photometric="MONOCHROME1", **common)
        elif kind == 2:  # 16 bits: v * 257 spans the same range exactly
            write_dicom(target, img.astype(np.uint16) * 257, bits_stored=16, **common)
        else:
            write_dicom(target, img, syntax=RLELossless, **common)
    # One lateral view and one report that must not break anything.
    write_dicom(dcm_root / "sa" / "tb" / "lateral.dcm", img, view="LL")
    return len(pngs)


def read_predictions(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {row["ID"]: float(row["LABEL"]) for row in csv.DictReader(f)}


def test_dicom_folder_trains_predicts_like_pngs_and_runs_eda_and_explain(tmp_path: Path) -> None:
    png = make_learnable(tmp_path / "png", n_per_class=8, size=48)
    dcm = tmp_path / "dcm"
    n = to_dicoms(png, dcm)
    fit = run_cli(
        ["fit", "--config", str(CONFIGS / "simple_cnn.yaml"), *small_run_args(dcm, epochs=2),
         "--data.group_by", "patient"],
        cwd=tmp_path,
    )  # fmt: skip
    _ok(fit)
    assert "lateral" in fit.stderr and "keep_lateral" in fit.stderr
    run = tmp_path / "runs" / "simple_cnn" / "version_0"
    ckpt = run / "checkpoints" / "best.ckpt"
    outputs = {}
    for name, root in (("png", png), ("dcm", dcm)):
        out = tmp_path / f"pred_{name}.csv"
        _ok(
            run_cli(
                [
                    "predict",
                    "--ckpt_path",
                    str(ckpt),
                    "--data.predict_root",
                    str(root / "sa"),
                    "--data.cache_dir",
                    str(tmp_path / f"cache_{name}"),
                    "--data.num_workers",
                    "0",
                    "--writer.output",
                    str(out),
                ],
                cwd=tmp_path,
            )  # fmt: skip
        )
        outputs[name] = read_predictions(out)
    assert len(outputs["png"]) == n // 2
    assert set(outputs["dcm"]) == set(outputs["png"])  # same ids; the lateral view is left out
    for ident, prob in outputs["png"].items():
        assert abs(outputs["dcm"][ident] - prob) <= 1e-4, ident

    eda = tmp_path / "eda"
    _ok(run_cli(["eda", "--data.root", str(dcm), "--out", str(eda), "--data.image_size", "48"],
                cwd=tmp_path))  # fmt: skip
    assert (eda / "summary.md").is_file()
    with open(eda / "per_image.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == n

    explain = tmp_path / "explain"
    _ok(run_cli(["explain", "--ckpt_path", str(ckpt), "--images", str(dcm / "sa"), "--out",
                 str(explain)], cwd=tmp_path))  # fmt: skip
    overlays = [p for p in explain.rglob("*.png") if p.name != "contact_sheet.png"]
    assert len(overlays) == n // 2

    # Privacy: no patient name, birth date or patient ID in anything written.
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in
               (".csv", ".json", ".yaml", ".md", ".txt", ".log")]  # fmt: skip
    written += [p for p in run.rglob("*") if p.is_file() and p.suffix in ("", ".tfevents")]
    assert any(p.name == "split.json" for p in written)
    for path in written:
        if path.is_relative_to(dcm) or path.is_relative_to(png):
            continue
        text = path.read_bytes()
        for secret in (PATIENT_NAME, "DOE", PATIENT_BIRTH, "MRN0"):
            assert secret.encode() not in text, f"{secret} in {path}"
