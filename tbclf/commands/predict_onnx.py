"""`tbclf predict --model model.onnx`: predictions.csv from an exported model, no Trainer.

The same images (``discover_predict``), the same IDs, the same pipeline (the model's input
spec from the file's metadata) and the same CSV writer as the checkpoint path.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from tbclf.commands.common import command_parser
from tbclf.data.imageio import DEFAULT_MAX_PIXELS


def main(argv: list[str]) -> Path:
    from tbclf.data.layouts import discover_predict
    from tbclf.engine.predictions import check_output_free, write_predictions
    from tbclf.errors import DataError
    from tbclf.inference import load_predictor

    parser = command_parser(
        "predict", "P(TB) and decisions for new images with an exported .onnx model."
    )
    parser.add_argument("--model", type=str, required=True, help="a model.onnx from tbclf export")
    parser.add_argument(
        "--data.predict_root", type=str, required=True, help="folder, image or Zindi CSV"
    )
    parser.add_argument("--data.batch_size", type=int, default=32)
    parser.add_argument("--data.max_pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--data.skip_bad_images", type=bool, default=False)
    parser.add_argument(
        "--writer.output", type=str | None, default=None, help="default: beside the model"
    )
    parser.add_argument("--writer.overwrite", type=bool, default=False)
    parser.add_argument("--threads", type=int | None, default=None, help="ONNX Runtime threads")
    cfg = parser.parse_args(argv)

    model = Path(cfg.model)
    output = Path(cfg.writer.output) if cfg.writer.output else model.parent / "predictions.csv"
    check_output_free(output, cfg.writer.overwrite)
    predictor = load_predictor(model, threads=cfg.threads)
    records = discover_predict(Path(cfg.data.predict_root))
    rows = []
    for start in range(0, len(records), cfg.data.batch_size):
        batch, kept = [], []
        for record in records[start : start + cfg.data.batch_size]:
            try:
                batch.append(predictor.prepare_file(record.path, cfg.data.max_pixels))
            except DataError as error:
                if not cfg.data.skip_bad_images:
                    raise
                warnings.warn(f"skipped: {error}", stacklevel=1)
                continue
            kept.append(record)
        if not batch:
            continue
        for record, prob in zip(kept, predictor.probabilities(np.stack(batch)), strict=True):
            p = predictor.decide(prob)
            rows.append((record.id, p.prob, p.decision, record.label))
    path = write_predictions(output, rows, predictor.record)
    print(f"wrote {len(rows)} predictions to {path} (threshold and model: {path.stem}.json)")
    return path
