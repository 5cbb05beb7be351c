"""`tbclf serve`: the HTTP API and web page for a .onnx or .ckpt model, on uvicorn."""

from __future__ import annotations

import os

from tbclf.commands.common import add_tta, command_parser


def main(argv: list[str]) -> None:
    import uvicorn

    from tbclf.inference import load_predictor
    from tbclf.serve.app import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, create_app

    parser = command_parser(
        "serve",
        "Serve a model: POST /predict, POST /explain (.ckpt only), GET /health, the web page at "
        "/ and the API docs at /docs. Binds 127.0.0.1 unless --host says otherwise; put a TLS "
        "reverse proxy with authentication in front before exposing it.",
        required={"model": "model.onnx or best.ckpt"},
    )
    parser.add_argument("--host", type=str, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_upload_bytes", type=int, default=DEFAULT_MAX_UPLOAD_BYTES)
    parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument(
        "--workers", type=int | None, default=None, help="model calls at once (default: cores)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime threads per call (.onnx models)"
    )
    add_tta(parser, " (.ckpt; an .onnx has it as exported)", optional=True)
    parser.add_argument(
        "--limit_concurrency",
        type=int,
        default=64,
        help="open requests before uvicorn answers 503 (bounds memory under a flood)",
    )
    cfg = parser.parse_args(argv)
    predictor = load_predictor(cfg.model, threads=cfg.threads, tta=cfg.tta)
    if not cfg.model.lower().endswith(".onnx"):
        import torch

        torch.set_num_threads(max(1, cfg.threads))
    workers = cfg.workers or os.cpu_count() or 1
    app = create_app(predictor, cfg.max_upload_bytes, cfg.max_pixels, workers)
    print(
        f"tbclf serve: {predictor.info.name} on http://{cfg.host}:{cfg.port}/ ({workers} workers)"
    )
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        limit_concurrency=cfg.limit_concurrency,
        timeout_keep_alive=5,
        server_header=False,
        log_level="warning",
    )
