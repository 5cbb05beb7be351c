"""One small predictor for a `.onnx` or a `.ckpt`: P(TB) and the decision for images.

Images go through the model's own :class:`~tbclf.data.spec.InputSpec` (the training reader and
the deterministic test-time pipeline), rebuilt from the ONNX metadata for `.onnx` files, so a
file alone predicts exactly as the checkpoint it came from. No Lightning Trainer is involved.

>>> predictor = load_predictor("runs/mobilenet/version_0/model.onnx")
>>> predictor.predict_file("xray.png")
Prediction(prob=0.93..., decision=1)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

import tbclf
from tbclf.data import imageio
from tbclf.data.imageio import DEFAULT_MAX_PIXELS
from tbclf.data.spec import InputSpec
from tbclf.engine.provenance import model_record
from tbclf.errors import ConfigError
from tbclf.evaluation.operating_point import KEY as OPERATING_POINT_KEY
from tbclf.evaluation.probability import DECISION_RULE, decide, reported_probability
from tbclf.io import file_sha256

LABELS = {0: "healthy", 1: "TB"}
MAX_MODEL_BYTES = 1 << 30  # no tbclf model is near this; a bigger file is not one of ours


class Prediction(NamedTuple):
    prob: float
    decision: int

    @property
    def label(self) -> str:
        return LABELS[self.decision]


@dataclass(frozen=True)
class ModelInfo:
    """Who the model is, for API answers and logs."""

    name: str
    version: str
    format: str
    architecture: str
    tbclf_version: str
    quantization: str = "none"

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


class Predictor:
    """Shared part: the spec's pipeline and the threshold rule; subclasses run the network."""

    spec: InputSpec
    threshold: float
    info: ModelInfo
    path: Path
    record: dict[str, Any]  # the predictions.json sidecar's account of the model

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, 1, S, S) float32 in [0, 1] -> (B,) reported logits (temperature and, when the
        predictor uses it, TTA included): P(TB) = sigmoid(these)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ inputs
    def prepare_file(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """(1, S, S) float32: the model's input for an image file."""
        return self.spec.prepare(path, max_pixels).numpy()

    def prepare_gray(self, gray: np.ndarray) -> np.ndarray:
        """(1, S, S) float32 for a decoded uint8 gray image."""
        return self.spec.prepare_gray(gray).numpy()

    def prepare_bytes(
        self, data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> np.ndarray:
        """(1, S, S) float32 for an encoded image held in memory (an upload)."""
        return self.prepare_gray(imageio.decode_bytes(data, name, max_pixels))

    # ------------------------------------------------------------------ outputs
    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        parts = [self.logits(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return reported_probability(np.concatenate(parts)).numpy()

    def decide(self, prob: float) -> Prediction:
        return Prediction(float(prob), int(decide(prob, self.threshold)))

    def predict_array(self, image: np.ndarray) -> Prediction:
        """One prepared (1, S, S) image."""
        return self.decide(self.probabilities(image[None])[0])

    def predict_file(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prediction:
        return self.predict_array(self.prepare_file(path, max_pixels))

    def predict_files(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 32,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> list[Prediction]:
        out: list[Prediction] = []
        for i in range(0, len(paths), batch_size):
            batch = np.stack([self.prepare_file(p, max_pixels) for p in paths[i : i + batch_size]])
            out += [self.decide(p) for p in self.probabilities(batch, batch_size)]
        return out


class OnnxPredictor(Predictor):
    """ONNX Runtime (CPU); the spec and threshold come from the file's metadata."""

    def __init__(
        self, path: str | Path, threads: int | None = None, tta: bool | None = None
    ) -> None:
        from tbclf import export

        self.path = Path(path)
        proto = _load_onnx(self.path)
        meta = export.read_metadata(proto)
        has_point = export.META_OPERATING_POINT in meta or export.META_THRESHOLD in meta
        missing = [k for k in (export.META_SPEC,) if k not in meta]
        missing += [] if has_point else [export.META_OPERATING_POINT]
        if missing:
            raise ConfigError(
                f"{self.path} is an ONNX model without tbclf metadata ({', '.join(missing)}); "
                "export it with `python -m tbclf export --ckpt_path best.ckpt`."
            )
        try:
            self.spec = InputSpec.from_dict(json.loads(meta[export.META_SPEC]), where=str(path))
            run = json.loads(meta.get(export.META_RUN) or "{}")
            model = json.loads(meta.get(export.META_MODEL) or "{}")
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{self.path}: unreadable tbclf metadata ({error}).") from None
        self.operating_point = export.metadata_operating_point(meta, str(self.path))
        self.threshold = self.operating_point.threshold
        self.tta = bool(model.get("tta", False))
        if tta is not None and bool(tta) != self.tta:
            raise ConfigError(
                f"{self.path} was exported {'with' if self.tta else 'without'} test-time "
                f"augmentation, which is part of its graph; export it again with `tbclf export "
                f"--tta {str(bool(tta)).lower()}` (or leave --tta out)."
            )
        self.session = export.ort_session(proto.SerializeToString(), threads)
        self.info = ModelInfo(
            name=run.get("run") or self.path.stem,
            version=file_sha256(self.path)[:12],
            format="onnx",
            architecture=" ".join(str(v) for v in (model.get("class"), model.get("backbone")) if v),
            tbclf_version=meta.get(export.META_VERSION, "?"),
            quantization=meta.get(export.META_QUANT, "none"),
        )
        self.record = {
            OPERATING_POINT_KEY: self.operating_point.with_details(
                model_file=str(self.path.resolve())
            ).to_dict(),
            "decision_rule": DECISION_RULE,
            "tta": self.tta,
            "model_class": model.get("class_path") or model.get("class"),
            "input_spec": self.spec.to_dict(),
            "weights_origin": model.get("weights_origin"),
            "tbclf_version": self.info.tbclf_version,
            "model": self.info.to_dict(),
        }

    def logits(self, images: np.ndarray) -> np.ndarray:
        from tbclf.export import INPUT_NAME, OUTPUT_NAME

        return self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def _load_onnx(path: Path):
    """The ONNX proto; refuses external data (a path that could point outside the folder)."""
    import onnx

    if not path.is_file():
        raise ConfigError(f"--model {path}: no such file.")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_MODEL_BYTES} bytes: not a tbclf model.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - any unparsable file gets the same advice
        raise ConfigError(
            f"{path}: not a readable ONNX model ({type(error).__name__}: {error}); export one "
            "with `python -m tbclf export`."
        ) from None
    external = [
        t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise ConfigError(
            f"{path} keeps weights in external files ({', '.join(external[:3])}); tbclf only "
            "loads self-contained ONNX files it exported itself."
        )
    return proto


class TorchPredictor(Predictor):
    """The checkpoint through PyTorch eager (also what /explain's Grad-CAM needs)."""

    def __init__(self, path: str | Path, tta: bool = False) -> None:
        from tbclf.engine.rundir import run_dir_of
        from tbclf.export import model_description
        from tbclf.models.loading import load_classifier

        self.path = Path(path)
        self.model = load_classifier(self.path)
        self.tta = bool(tta)
        self.spec = self.model.input_spec
        self.threshold = float(self.model.threshold)
        self.explain_lock = threading.Lock()  # Grad-CAM hooks the shared model
        self.record = model_record(self.model, str(self.path.resolve()), self.tta)
        run_dir = run_dir_of(self.path)
        model = model_description(self.model)
        self.info = ModelInfo(
            name=f"{run_dir.parent.name}/{run_dir.name}" if run_dir else self.path.stem,
            version=file_sha256(self.path)[:12],
            format="ckpt",
            architecture=" ".join(str(v) for v in (model["class"], model["backbone"]) if v),
            tbclf_version=tbclf.__version__,
        )

    def logits(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model.calibrated_logits(torch.from_numpy(images), self.tta).numpy()

    def explain(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Grad-CAM overlay (RGB uint8, S x S) and P(TB) for one prepared (1, S, S) image."""
        from tbclf.explain.gradcam import compute_cams, overlay

        with self.explain_lock:
            cams, probs = compute_cams(self.model, torch.from_numpy(image[None]), tta=self.tta)
        return overlay(image[0], cams[0]), float(probs[0])


def load_predictor(
    path: str | Path, threads: int | None = None, tta: bool | None = None
) -> Predictor:
    """An :class:`OnnxPredictor` for `.onnx`, a :class:`TorchPredictor` for a checkpoint.

    ``tta``: average over the test-time views (a checkpoint: None = off); an ONNX file has it
    in its graph or not, and None takes it as exported."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return OnnxPredictor(p, threads, tta)
    if p.suffix.lower() in (".ckpt", ".pt", ".pth"):
        return TorchPredictor(p, bool(tta))
    raise ConfigError(f"--model {p}: expected a .onnx file or a tbclf .ckpt checkpoint.")


def describe(predictor: Predictor) -> dict[str, Any]:
    """Model info plus the threshold and input size."""
    return {
        **predictor.info.to_dict(),
        "threshold": predictor.threshold,
        "image_size": predictor.spec.image_size,
    }
