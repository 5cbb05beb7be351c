"""One reported P(TB): for a calibrated model (temperature != 1), with and without test-time
augmentation, `predict`, `test`, the ONNX and checkpoint predictors, the web service, Grad-CAM
(`explain`) and saliency report the same probability and the same decision for each image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tbclf import export
from tbclf.engine.rundir import run_split
from tbclf.evaluation.probability import decide, reported_logit, reported_probability
from tbclf.explain.boxes import Box, BoxSet
from tbclf.explain.gradcam import explain_images
from tbclf.explain.saliency import run_saliency
from tbclf.inference import load_predictor
from tbclf.io import read_output_csv
from tbclf.models.loading import load_classifier
from tbclf.serve.app import create_app
from tests.cli_helpers import run_cli
from tests.serve_helpers import train_run

TEMPERATURE = 1.7
TOL = 1e-6  # the CSVs print 6 decimals: two printed values of one number differ by <= 1e-6


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> dict:
    """A trained small CNN given a fitted-looking temperature, saved as two checkpoints in its
    run folder whose thresholds split its test images without and with TTA; its test images."""
    base = tmp_path_factory.mktemp("reported")
    best = train_run(base, "simple", image_size=48, n_per_class=8)
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["temperature"] = torch.tensor(TEMPERATURE)
    torch.save(checkpoint, best)
    model = load_classifier(best)
    records = run_split(best.parent.parent, "test", "")["test"]
    images = torch.stack([model.input_spec.prepare(r.path) for r in records])
    ckpts = {}
    for tta in (False, True):
        probs = np.sort(model.predict_proba(images, tta=tta).numpy())
        middle = len(probs) // 2
        checkpoint["state_dict"]["threshold"] = torch.tensor(probs[middle - 1 : middle + 1].mean())
        ckpts[tta] = best.with_name(f"calibrated-tta-{str(tta).lower()}.ckpt")
        torch.save(checkpoint, ckpts[tta])
    return {"ckpts": ckpts, "base": base, "records": records, "images": images}


def _key(ident: str | Path) -> str:
    """An image's split ID (`sa/tb/tb_001`) from itself or from its flat copy's name
    (`sa__tb__tb_001.png`, as `predict` reads it)."""
    return Path(ident).with_suffix("").as_posix().replace("__", "/")


def _csv_probs(path: Path) -> dict[str, tuple[float, int]]:
    _, rows = read_output_csv(path)
    return {_key(r["ID"]): (float(r["LABEL"]), int(r["DECISION"])) for r in rows}


def _assert_same(name: str, got: dict[str, tuple[float, int]], want: dict[str, tuple[float, int]]):
    assert set(got) == set(want), name
    for key, (prob, decision) in want.items():
        assert got[key][0] == pytest.approx(prob, abs=TOL), f"{name}: P(TB) of {key}"
        assert got[key][1] == decision, f"{name}: decision of {key}"


def test_one_function_gives_the_probability_and_the_decision():
    scores = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.equal(reported_probability(scores, 2.0), torch.sigmoid(scores / 2.0))
    assert reported_probability(scores).dtype == torch.float32
    assert torch.equal(reported_logit(scores.numpy(), torch.tensor(2.0)), scores / 2.0)
    p = reported_probability(scores, 2.0)
    assert decide(p, p[1]).tolist() == [0, 1, 1]  # an image at the threshold is TB
    assert int(decide(float(p[1]), p[1])) == 1  # whatever carries the numbers
    assert decide(p.numpy(), float(np.nextafter(p[1].item(), 1.0))).tolist() == [0, 0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True])
def test_every_consumer_reports_the_same_probability_and_decision(calibrated, tta, tmp_path):
    ckpt, records, images = calibrated["ckpts"][tta], calibrated["records"], calibrated["images"]
    model = load_classifier(ckpt)
    assert float(model.temperature) == pytest.approx(TEMPERATURE)
    probs = model.predict_proba(images, tta=tta).numpy()
    threshold = float(model.threshold)
    reference = {
        _key(r.id): (float(p), int(decide(p, threshold)))
        for r, p in zip(records, probs, strict=True)
    }
    decisions = [d for _, d in reference.values()]
    assert 0 < sum(decisions) < len(decisions), "the threshold splits the images"
    flag = ["--tta", str(tta).lower()]

    # predict and test: the LightningCLI in a subprocess, as a user runs them.
    folder = tmp_path / "images"
    folder.mkdir()
    for r in records:  # the test images alone, in one folder, named after their split IDs
        (folder / f"{r.id.replace('/', '__')}.png").write_bytes(r.path.read_bytes())
    out = tmp_path / "predictions.csv"
    proc = run_cli(["predict", "--ckpt_path", str(ckpt), "--data.predict_root", str(folder),
                    "--writer.output", str(out), *flag], cwd=calibrated["base"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same("predict", _csv_probs(out), reference)
    data = ["--data.root", str(calibrated["base"] / "data"), "--data.num_workers", "0",
            "--data.cache_dir", str(calibrated["base"] / "cache")]  # fmt: skip
    proc = run_cli(["test", "--ckpt_path", str(ckpt), *data, *flag], cwd=calibrated["base"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = sorted(ckpt.parent.parent.glob("test-*/report/predictions.csv"))[-1:]
    tested = _csv_probs(report)
    report.parent.parent.rename(tmp_path / "test-stage")  # the next parameter finds its own
    _assert_same("test", tested, reference)

    # The predictors: the checkpoint, and the ONNX file exported with the same TTA choice.
    onnx_path, _ = export.export_onnx(model, tmp_path / "model.onnx", tta=tta)
    paths = [r.path for r in records]
    for kind, path in (("ckpt", ckpt), ("onnx", onnx_path)):
        predictor = load_predictor(path, tta=tta)
        answers = predictor.predict_files(paths)
        got = {_key(r.id): tuple(a) for r, a in zip(records, answers, strict=True)}
        _assert_same(f"{kind} predictor", got, reference)
        client = TestClient(create_app(predictor))  # the web service
        served = {}
        for r in records:
            upload = {"file": (r.path.name, r.path.read_bytes(), "image/png")}
            answer = client.post("/predict", files=upload)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            served[_key(r.id)] = (body["prob_tb"], int(body["tb_suspected"]))
        _assert_same(f"serve ({kind})", served, reference)

    # Grad-CAM keeps its own forward pass; saliency too; both report the same P(TB).
    explained = explain_images(model, records, tmp_path / "explain", progress=False, tta=tta)
    _assert_same("explain", {_key(r["id"]): (r["prob"], r["decision"]) for r in explained},
                 reference)  # fmt: skip
    box = Box(10, 10, 40, 40, "TB")
    pairs = [(r, BoxSet(r.id, "boxes", 96, 96, (box,))) for r in records]
    run = run_saliency(model, pairs, methods=["gradcam"], baselines=(), road=False,
                       progress=False, tta=tta)  # fmt: skip
    salient = {_key(row["id"]): (row["prob"], row["decision"]) for row in run.rows}
    _assert_same("saliency", salient, reference)
