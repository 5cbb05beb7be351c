"""`tbclf predict --model model.onnx`: predictions.csv from an exported model.

The same path as a checkpoint's predict: `Trainer.predict` with the data module's loader (the
model's input spec from the file's metadata), the same `--trainer.*`, `--data.*` and
`--writer.*` options, the same streaming writer and the same files; only the network is ONNX
Runtime (:class:`tbclf.onnx_module.OnnxModule`). `--trainer.devices N` runs N processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningArgumentParser

from tbclf.data.datamodule import TBDataModule
from tbclf.engine.progress import count_images
from tbclf.engine.writer import PredictionWriter


def build_parser() -> LightningArgumentParser:
    parser = LightningArgumentParser(
        prog="tbclf predict",
        description="P(TB) and decisions for new images with an exported .onnx model.",
        exit_on_error=True,
    )
    parser.add_argument("--config", action="config", help="YAML with any of these options")
    parser.add_argument("--model", type=str, required=True, help="a model.onnx from tbclf export")
    parser.add_argument("--threads", type=int | None, default=1, help="ONNX Runtime threads")
    parser.add_lightning_class_args(Trainer, "trainer")
    parser.add_lightning_class_args(TBDataModule, "data")
    parser.add_lightning_class_args(PredictionWriter, "writer")
    parser.set_defaults(
        {
            "trainer.accelerator": "cpu",  # ONNX Runtime's CPU session
            "trainer.logger": False,
            "trainer.enable_model_summary": False,
        }
    )
    return parser


def main(argv: list[str]) -> Path | None:
    from tbclf.onnx_module import OnnxModule

    parser = build_parser()
    cfg = parser.parse_args(argv)
    model = Path(cfg.model)
    if cfg.writer.output is None:
        cfg.writer.output = str(model.parent / "predictions.csv")
    module = OnnxModule(model, threads=cfg.threads)  # a bad file stops here, before any rank
    init = parser.instantiate(cfg)
    writer: PredictionWriter = init.writer
    options = dict(init.trainer)  # the Trainer itself is built here, as LightningCLI does
    options["callbacks"] = [*(options.get("callbacks") or []), writer]
    trainer = Trainer(**options)
    count_images(trainer)
    # DDP's launcher re-runs this command in each new process: it reads sys.argv.
    sys.argv[1:] = ["predict", *argv]
    trainer.predict(module, datamodule=init.data, return_predictions=False)
    return writer.written
