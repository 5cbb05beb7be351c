"""tbclf serve: every route and every error through FastAPI's TestClient, plus concurrency."""

from __future__ import annotations

import base64
import struct
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import starlette.formparsers
from fastapi.testclient import TestClient

from tbclf import export
from tbclf.data import imageio
from tbclf.inference import load_predictor
from tbclf.models.loading import load_classifier
from tbclf.serve import create_app
from tbclf.serve.app import STATIC
from tbclf.serve.triage import NOT_SUGGESTED, TB_SUSPECTED
from tests.serve_helpers import running_server, train_run, write_png


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("serve")
    ckpt = train_run(base, "simple")
    run = export.training_run(ckpt)
    onnx_path, _ = export.export_onnx(load_classifier(ckpt), base / "model.onnx", run=run)
    image = write_png(base / "xray.png", 140, 120)
    return {"ckpt": ckpt, "onnx": onnx_path, "image": image}


@pytest.fixture(scope="module")
def onnx_client(models) -> TestClient:
    return TestClient(create_app(load_predictor(models["onnx"]), max_upload_bytes=4_000_000))


@pytest.fixture(scope="module")
def ckpt_client(models) -> TestClient:
    return TestClient(create_app(load_predictor(models["ckpt"])))


def _upload(path: Path, name: str | None = None) -> dict:
    return {"file": (name or path.name, path.read_bytes(), "image/png")}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height; the pixel data is a tiny stub."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    out = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
    out += struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    idat = b"IDAT" + zlib.compress(b"\x00" * 64)
    out += struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    return out + b"\x00\x00\x00\x00IEND\xaeB`\x82"


# ----------------------------------------------------------------------------- routes


@pytest.mark.parametrize("which", ["onnx", "ckpt"])
def test_predict_returns_probability_decision_threshold_and_model(
    models, onnx_client, ckpt_client, which
):
    client = onnx_client if which == "onnx" else ckpt_client
    predictor = load_predictor(models[which])
    response = client.post("/predict", files=_upload(models["image"]))
    assert response.status_code == 200
    body = response.json()
    expected = predictor.predict_file(models["image"])
    assert body["prob_tb"] == pytest.approx(expected.prob, abs=1e-6)
    assert body["tb_suspected"] == bool(expected.decision)
    assert body["decision"] == expected.label
    assert body["threshold"] == pytest.approx(predictor.threshold)
    assert body["triage"] == (TB_SUSPECTED if expected.decision else NOT_SUGGESTED)
    assert body["model"]["format"] == which and body["model"]["name"] == "simple/version_0"
    assert len(body["model"]["version"]) == 12
    assert "input_image" not in body


def test_predict_takes_a_raw_image_body_too(models, onnx_client):
    data = models["image"].read_bytes()
    raw = onnx_client.post("/predict", content=data, headers={"content-type": "image/png"})
    form = onnx_client.post("/predict", files=_upload(models["image"]))
    assert raw.status_code == 200 and raw.json()["prob_tb"] == form.json()["prob_tb"]


def test_predict_can_return_the_image_as_the_model_saw_it(models, onnx_client):
    body = onnx_client.post("/predict?include_input=true", files=_upload(models["image"])).json()
    prefix = "data:image/png;base64,"
    assert body["input_image"].startswith(prefix)
    png = base64.b64decode(body["input_image"][len(prefix) :])
    shown = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    seen = load_predictor(models["onnx"]).prepare_file(models["image"])[0]
    np.testing.assert_array_equal(shown, np.uint8(np.round(seen * 255)))


def test_explain_returns_a_gradcam_png_with_the_probability(models, ckpt_client):
    response = ckpt_client.post("/explain", files=_upload(models["image"]))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    size = load_predictor(models["ckpt"]).spec.image_size
    assert overlay.shape == (size, size, 3)
    assert overlay.std() > 0
    prob = ckpt_client.post("/predict", files=_upload(models["image"])).json()["prob_tb"]
    assert float(response.headers["x-tb-probability"]) == pytest.approx(prob, abs=1e-5)


def test_explain_needs_a_checkpoint(models, onnx_client):
    response = onnx_client.post("/explain", files=_upload(models["image"]))
    assert response.status_code == 501
    assert response.json()["error"] == "explain_unavailable"
    assert "--model best.ckpt" in response.json()["detail"]


def test_health_and_docs(onnx_client, ckpt_client):
    health = onnx_client.get("/health").json()
    assert health["status"] == "ok" and health["explain"] is False
    assert health["model"]["format"] == "onnx" and health["max_upload_bytes"] == 4_000_000
    assert health["workers"] >= 1 and 0 < health["model"]["threshold"] < 1
    assert ckpt_client.get("/health").json()["explain"] is True
    assert onnx_client.get("/docs").status_code == 200
    paths = onnx_client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/explain", "/health"} <= set(paths)
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]


def test_page_is_served_without_any_outside_resource(onnx_client):
    page = onnx_client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js">' in page.text
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
        assert onnx_client.get(f"/static/{name}").status_code == 200


# ----------------------------------------------------------------------------- errors


def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == code
    return response.json()["detail"]


def test_not_an_image_is_415(onnx_client):
    files = {"file": ("notes.txt", b"hello, not an X-ray", "text/plain")}
    message = _error(onnx_client.post("/predict", files=files), 415, "not_an_image")
    assert "not an image" in message and "TIFF, BMP, WebP or DICOM" in message
    raw = onnx_client.post("/predict", content=b"{}", headers={"content-type": "application/json"})
    assert "multipart/form-data" in _error(raw, 415, "unsupported_media_type")


def test_empty_upload_and_missing_file_are_400(onnx_client):
    empty = onnx_client.post("/predict", files={"file": ("x.png", b"", "image/png")})
    _error(empty, 400, "empty_upload")
    no_file = onnx_client.post("/predict", files={"note": (None, "hello")})  # a plain field
    assert "field 'file'" in _error(no_file, 400, "empty_upload")


def test_corrupt_image_is_400(models, onnx_client):
    data = models["image"].read_bytes()
    files = {"file": ("cut.png", data[: len(data) // 2], "image/png")}
    _error(onnx_client.post("/predict", files=files), 400, "corrupt_image")


def test_too_large_is_413_and_the_limit_is_configurable(models):
    client = TestClient(create_app(load_predictor(models["onnx"]), max_upload_bytes=2_000))
    data = models["image"].read_bytes()
    assert len(data) > 2_000
    detail = _error(client.post("/predict", files=_upload(models["image"])), 413, "too_large")
    assert "2000 bytes" in detail

    def chunks():  # no Content-Length: the streamed byte count stops it
        for i in range(0, len(data), 512):
            yield data[i : i + 512]

    raw = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    _error(raw, 413, "too_large")


def test_decompression_bomb_is_refused_from_the_header(onnx_client, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(imageio.cv2, "imdecode", no_decoding)
    bomb = _png_header_only(100_000, 100_000)
    assert len(bomb) < 1_000
    files = {"file": ("bomb.png", bomb, "image/png")}
    detail = _error(onnx_client.post("/predict", files=files), 413, "too_many_pixels")
    assert "100000x100000" in detail and "max_pixels" in detail


def test_a_tiff_bomb_is_413_by_its_error_type(onnx_client, monkeypatch):
    """TIFF headers are checked by the reader itself: its TooManyPixels error becomes 413."""
    import struct

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(imageio.cv2, "imdecode", no_decoding)
    entries = [(256, 4, 1, 100_000), (257, 4, 1, 90_000)]  # ImageWidth, ImageLength (LONG)
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
    bomb = b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4
    files = {"file": ("bomb.tif", bomb, "image/tiff")}
    detail = _error(onnx_client.post("/predict", files=files), 413, "too_many_pixels")
    assert "100000x90000" in detail and "max_pixels" in detail


def test_uploads_are_never_written_to_disk(models, monkeypatch):
    """A 3 MB upload (above Starlette's 1 MiB spooling size) with every tempfile route shut."""
    rng = np.random.default_rng(0)
    big = cv2.imencode(".png", rng.integers(0, 256, (1800, 1700), dtype=np.uint8))[1].tobytes()
    assert len(big) > 2_500_000
    client = TestClient(create_app(load_predictor(models["onnx"])))

    def forbidden(*args, **kwargs):
        raise AssertionError("an upload touched the disk")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, forbidden)
    # Starlette's form parser holds its own reference (what UploadFile would spool to)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", forbidden)
    response = client.post("/predict", files={"file": ("big.png", big, "image/png")})
    assert response.status_code == 200 and 0 <= response.json()["prob_tb"] <= 1


# ----------------------------------------------------------------------------- concurrency


def test_eight_clients_at_once_all_get_answers_off_the_event_loop(models):
    """Model calls run in a pool of `workers` threads; /health answers while they queue."""
    predictor = load_predictor(models["onnx"])
    original = predictor.logits
    lock, state = threading.Lock(), {"now": 0, "peak": 0, "threads": set()}

    def slow_logits(images):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            state["threads"].add(threading.current_thread().name)
        time.sleep(0.3)
        try:
            return original(images)
        finally:
            with lock:
                state["now"] -= 1

    predictor.logits = slow_logits
    data = models["image"].read_bytes()
    with running_server(create_app(predictor, workers=2)) as url:

        def one(_):
            with httpx.Client(timeout=30) as client:
                r = client.post(f"{url}/predict", files={"file": ("x.png", data, "image/png")})
                return r.status_code, r.json()["prob_tb"]

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, i) for i in range(8)]
            time.sleep(0.4)  # all 8 in flight, at most 2 in the model
            started = time.monotonic()
            health = httpx.get(f"{url}/health", timeout=5)
            health_s = time.monotonic() - started
            results = [f.result() for f in futures]
    assert health.status_code == 200 and health_s < 0.3
    assert [s for s, _ in results] == [200] * 8
    assert len({p for _, p in results}) == 1
    assert state["peak"] == 2
    assert threading.main_thread().name not in state["threads"]
