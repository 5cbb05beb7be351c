"""The FastAPI app: POST /predict, POST /explain, GET /health, the web page at / and /docs.

Uploads are read into memory (:mod:`tbclf.serve.upload`), decoded by the training reader
(``imageio.decode_bytes``, header checked against ``max_pixels`` before any pixel is decoded)
and prepared by the model's own input spec. Model work runs off the event loop in a thread pool
with one slot per core, so slow requests queue instead of blocking health checks or timing out.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

import tbclf
from tbclf.data import imageio
from tbclf.data.layouts import FORMATS_TEXT
from tbclf.errors import DataError, TooManyPixels
from tbclf.inference import Predictor, TorchPredictor, describe
from tbclf.serve.triage import SCOPE, triage_text
from tbclf.serve.upload import Upload, UploadError, read_upload

DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_PIXELS = imageio.DEFAULT_MAX_PIXELS  # one limit for the whole tool
STATIC = Path(__file__).with_name("static")
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8")  # the formats whose header is checked first
T = TypeVar("T")

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ERRORS = {
    400: {"description": "empty upload, or an image that cannot be decoded"},
    413: {"description": "upload over the byte limit, or more pixels than max_pixels"},
    415: {"description": "not an image"},
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def prepare_upload(predictor: Predictor, upload: Upload, max_pixels: int) -> np.ndarray:
    """(1, S, S) model input for an upload; UploadError with the right status otherwise."""
    data, name = upload.data, upload.name
    checked = data.startswith(_SIGNATURES)
    if checked:
        try:
            _, height, width = imageio.image_header(data, Path(name))
        except DataError:
            raise UploadError(
                400, "corrupt_image", f"{name}: the PNG/JPEG header is truncated or corrupt."
            ) from None
        if height * width > max_pixels:
            raise UploadError(
                413,
                "too_many_pixels",
                f"{name} declares {width}x{height} = {width * height} pixels, more than the "
                f"server's max_pixels={max_pixels} (a guard against decompression bombs); "
                "nothing was decoded. Downscale the image.",
            )
    try:
        gray = imageio.decode_bytes(data, name, max_pixels)
    except DataError as error:
        if isinstance(error, TooManyPixels):  # formats whose header the reader checks itself
            raise UploadError(413, "too_many_pixels", str(error)) from None
        if not checked:
            raise UploadError(
                415,
                "not_an_image",
                f"{name} is not an image tbclf can read ({FORMATS_TEXT} of a chest X-ray).",
            ) from None
        raise UploadError(
            400, "corrupt_image", f"{name} could not be decoded (truncated or corrupt data)."
        ) from None
    return predictor.prepare_gray(gray)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of a (H, W) float image in [0, 1] or an (H, W, 3) RGB uint8 image."""
    if image.dtype != np.uint8:
        image = np.uint8(np.round(np.clip(image, 0, 1) * 255))
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def predict_upload(
    predictor: Predictor, upload: Upload, max_pixels: int, include_input: bool = False
) -> dict[str, Any]:
    """The /predict answer for one upload (blocking: run it off the event loop)."""
    image = prepare_upload(predictor, upload, max_pixels)
    result = predictor.predict_array(image)
    out: dict[str, Any] = {
        "prob_tb": result.prob,
        "decision": result.label,
        "tb_suspected": bool(result.decision),
        "threshold": predictor.threshold,
        "triage": triage_text(bool(result.decision)),
        "triage_scope": SCOPE,
        "model": predictor.info.to_dict(),
        "filename": upload.name,
    }
    if include_input:
        png = base64.b64encode(png_bytes(image[0])).decode("ascii")
        out["input_image"] = f"data:image/png;base64,{png}"
    return out


def explain_upload(
    explainer: TorchPredictor, upload: Upload, max_pixels: int
) -> tuple[bytes, float]:
    """The /explain overlay (PNG) and P(TB) for one upload (blocking, like predict_upload)."""
    image = prepare_upload(explainer, upload, max_pixels)
    overlay, prob = explainer.explain(image)
    return png_bytes(overlay), prob


def _base_app() -> FastAPI:
    """The app without routes: its description, security headers on every response and
    upload errors answered as JSON."""
    app = FastAPI(
        title="tbclf",
        version=tbclf.__version__,
        description=(
            "Tuberculosis screening on chest X-rays: P(TB) and the decision at the model's "
            "operating threshold. A screening and triage aid, not a diagnosis."
        ),
    )

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail)

    return app


def create_app(
    predictor: Predictor,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> FastAPI:
    """The service for one predictor. `workers` model calls run at once (default: the cores)."""
    workers = max(1, int(workers or os.cpu_count() or 1))
    explainer = predictor if isinstance(predictor, TorchPredictor) else None
    app = _base_app()
    state: dict[str, Any] = {}

    async def off_loop(fn: Callable[..., T], *args: Any) -> T:
        limiter = state.get("limiter")
        if limiter is None:
            limiter = state["limiter"] = anyio.CapacityLimiter(workers)
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    @app.post("/predict", openapi_extra=UPLOAD_BODY, responses=ERRORS)
    async def predict(request: Request, include_input: bool = False) -> dict[str, Any]:
        """P(TB) for one X-ray; `include_input=true` adds the image as the model saw it."""
        upload = await read_upload(request, max_upload_bytes)
        return await off_loop(predict_upload, predictor, upload, max_pixels, include_input)

    @app.post(
        "/explain",
        openapi_extra=UPLOAD_BODY,
        responses={**ERRORS, 200: {"content": {"image/png": {}}}, 501: {"description": "ONNX"}},
        response_class=Response,
    )
    async def explain(request: Request) -> Response:
        """Grad-CAM overlay (PNG) of the evidence for TB; needs a .ckpt model."""
        if explainer is None:
            return _error(
                501,
                "explain_unavailable",
                "Grad-CAM needs the PyTorch checkpoint: start the server with --model best.ckpt.",
            )
        upload = await read_upload(request, max_upload_bytes)
        png, prob = await off_loop(explain_upload, explainer, upload, max_pixels)
        return Response(png, media_type="image/png", headers={"X-TB-Probability": f"{prob:.6f}"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": describe(predictor),
            "explain": explainer is not None,
            "workers": workers,
            "max_upload_bytes": max_upload_bytes,
            "max_pixels": max_pixels,
        }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
