"""ONNX export of a trained classifier: one file that is enough to predict correctly.

The model is exported as is, input adapter included, so the ONNX input keeps the model's
contract ((B, 1, S, S) float32 in [0, 1], dynamic batch) and normalisation and gray-to-RGB
expansion happen inside the graph. Everything else a consumer needs (input spec, threshold,
class meaning, tbclf version, training run) goes into ``metadata_props``; see
:mod:`tbclf.inference` for the reader. INT8 is ONNX Runtime's static quantization calibrated on
the run's training images, accepted only when the AUROC on the run's test split barely moves.
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import tbclf
from tbclf.data.imageio import DEFAULT_MAX_PIXELS
from tbclf.data.records import Record
from tbclf.data.spec import InputSpec
from tbclf.engine import rundir
from tbclf.engine.provenance import operating_point_of
from tbclf.engine.rundir import run_dir_of
from tbclf.errors import ConfigError
from tbclf.evaluation.operating_point import KEY as OPERATING_POINT_KEY
from tbclf.evaluation.operating_point import OperatingPoint
from tbclf.evaluation.probability import reported_probability
from tbclf.evaluation.roc import auroc
from tbclf.io import atomic_write_bytes, file_sha256

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "logit"
MAX_PROB_DIFF = 1e-4
MAX_INT8_AUROC_CHANGE = 0.01
# metadata_props keys (all values are strings; JSON where structured)
META_SPEC = "tbclf.input_spec"
META_OPERATING_POINT = f"tbclf.{OPERATING_POINT_KEY}"
META_CLASSES = "tbclf.classes"
META_VERSION = "tbclf.version"
META_RUN = "tbclf.training_run"
META_MODEL = "tbclf.model"
META_QUANT = "tbclf.quantization"
# Files exported before the operating point had one key: read, never written.
META_THRESHOLD = "tbclf.threshold"
META_THRESHOLD_SOURCE = "tbclf.threshold_source"
CLASSES = {
    "output": f"'{OUTPUT_NAME}' is the TB logit per image; P(TB) = sigmoid(logit)",
    "decision": f"TB when P(TB) >= the threshold of {META_OPERATING_POINT}, else healthy",
    "labels": {"0": "healthy", "1": "TB"},
}


@dataclass(frozen=True)
class Int8Result:
    """What INT8 did to the ranking on the run's test split."""

    auroc_fp32: float
    auroc_int8: float
    n_test: int
    n_calibration: int

    @property
    def change(self) -> float:
        return self.auroc_int8 - self.auroc_fp32


def training_run(ckpt_path: str | Path) -> dict[str, Any]:
    """Where the weights come from: checkpoint, its run folder, epoch/step and file hash."""
    from tbclf.models.loading import read_checkpoint

    path = Path(ckpt_path).resolve()
    checkpoint = read_checkpoint(path)
    run_dir = run_dir_of(path)
    return {
        "checkpoint": str(path),
        "checkpoint_sha256": file_sha256(path),
        "run_dir": None if run_dir is None else str(run_dir),
        "run": None if run_dir is None else f"{run_dir.parent.name}/{run_dir.name}",
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }


def model_description(model: torch.nn.Module, tta: bool = False) -> dict[str, Any]:
    """The architecture in a few words (class, backbone, channels) and whether test-time
    augmentation is part of the exported graph (the temperature, already inside the exported
    logit, is recorded with the operating point)."""
    hparams = dict(getattr(model, "hparams", {}) or {})
    cls = type(model)
    return {
        "class": cls.__name__,
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "backbone": hparams.get("backbone"),
        "in_chans": model.input_spec.in_chans,
        # Test-time augmentation traced into the graph: the logit of the views' mean P(TB).
        "tta": bool(tta),
        # The weights training started from (e.g. a chest X-ray backbone): file and SHA-256.
        "weights_origin": getattr(model, "weights_origin", None),
    }


def metadata(
    model: torch.nn.Module, run: dict[str, Any] | None, tta: bool = False
) -> dict[str, str]:
    """The metadata_props that make the ONNX file self-describing."""
    return {
        META_SPEC: json.dumps(model.input_spec.to_dict()),
        META_OPERATING_POINT: json.dumps(
            operating_point_of(model, (run or {}).get("checkpoint")).to_dict()
        ),
        META_CLASSES: json.dumps(CLASSES),
        META_VERSION: tbclf.__version__,
        META_RUN: json.dumps(run or {}),
        META_MODEL: json.dumps(model_description(model, tta)),
        META_QUANT: "none",
    }


def _set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    keep = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)


def read_metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


class FixedAdaptiveAvgPool(torch.nn.Module):
    """AdaptiveAvgPool2d for one known input size, as two averaging matrix products.

    The TorchScript exporter cannot export adaptive pooling once the batch axis is dynamic
    ("input size not accessible"); for a fixed input size the same windows (PyTorch's
    floor/ceil rule) are a constant matrix on each axis, exact and exportable.
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", self._matrix(in_hw[0], out_hw[0]))
        self.register_buffer("cols", self._matrix(in_hw[1], out_hw[1]))

    @staticmethod
    def _matrix(n_in: int, n_out: int) -> torch.Tensor:
        m = torch.zeros(n_out, n_in)
        for i in range(n_out):
            start = (i * n_in) // n_out
            end = -((-(i + 1) * n_in) // n_out)
            m[i, start:end] = 1.0 / (end - start)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols.t())


def _static_adaptive_pools(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """A copy of `model` whose AdaptiveAvgPool2d layers are fixed for `example`'s size."""
    pools = {
        name: m for name, m in model.named_modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)
    }
    if not pools:
        return model
    sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, inp, out, name=name: sizes.__setitem__(
                name, (tuple(inp[0].shape[-2:]), tuple(out.shape[-2:]))
            )
        )
        for name, m in pools.items()
    ]
    with torch.no_grad():
        model(example)
    for hook in hooks:
        hook.remove()
    fixed = copy.deepcopy(model)
    for name, (in_hw, out_hw) in sizes.items():
        parent_name, _, child = name.rpartition(".")
        parent = fixed.get_submodule(parent_name) if parent_name else fixed
        setattr(parent, child, FixedAdaptiveAvgPool(in_hw, out_hw))
    return fixed.eval()


class ReportedLogits(torch.nn.Module):
    """The model's reported logits (its temperature included), as the module to trace."""

    def __init__(self, model: torch.nn.Module, tta: bool = False) -> None:
        super().__init__()
        self.model = model
        self.tta = bool(tta)
        self.input_spec = model.input_spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.calibrated_logits(images, self.tta)


def to_onnx_proto(model: torch.nn.Module, opset: int = OPSET, tta: bool = False) -> onnx.ModelProto:
    """Trace the model (eval mode, CPU, fp32) to ONNX with a dynamic batch axis; the output is
    the logit the model reports (divided by its fitted temperature; of the mean P(TB) over
    the test-time views with ``tta``, so the file costs one pass per view)."""
    model = model.to("cpu", torch.float32).eval()
    if hasattr(model, "calibrated_logits"):
        model = ReportedLogits(model, tta).eval()
    elif tta:
        raise ConfigError(f"{type(model).__name__} has no test-time augmentation to export.")
    size = model.input_spec.image_size
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    model = _static_adaptive_pools(model, example)
    with tempfile.TemporaryDirectory(prefix="tbclf-export-") as tmp:
        out = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # The adapter's shape checks are constant for a fixed channel count: expected.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)  # shape-inference notes from torch
            torch.onnx.export(
                model,
                (example,),
                str(out),
                dynamo=False,  # the TorchScript exporter: no onnxscript dependency
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        proto = onnx.load(str(out))
    proto.producer_name = "tbclf"
    proto.producer_version = tbclf.__version__
    proto.doc_string = (
        "tbclf TB classifier. Input 'image': float32 (batch, 1, S, S) gray in [0, 1], prepared "
        "as metadata 'tbclf.input_spec' says. Output 'logit': (batch,) TB logit."
    )
    return proto


def ort_session(source: str | Path | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session (threads=None: ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    data = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_probabilities(session, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """P(TB) per image from an ORT session (the graph's output is the reported logit)."""
    out = [
        session.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return reported_probability(np.concatenate(out)).numpy() if out else np.zeros(0, np.float32)


def torch_probabilities(
    model: torch.nn.Module, images: np.ndarray, batch_size: int = 32, tta: bool = False
) -> np.ndarray:
    """P(TB) per image as the PyTorch model reports it (a bare module: temperature 1)."""
    proba = getattr(model, "predict_proba", None)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size])
            out.append(proba(x, tta) if proba is not None else reported_probability(model(x)))
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def prepare_images(
    spec: InputSpec, paths: Iterable[str | Path], max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """(N, 1, S, S) float32 through the one test-time pipeline."""
    arrays = [spec.prepare(p, max_pixels).numpy() for p in paths]
    size = spec.image_size
    return np.stack(arrays) if arrays else np.zeros((0, 1, size, size), np.float32)


def check_equal(
    model: torch.nn.Module,
    onnx_bytes: bytes,
    images: np.ndarray,
    where: str | Path,
    tta: bool = False,
) -> float:
    """Max |P_onnx - P_torch| over `images`; ConfigError when above MAX_PROB_DIFF."""
    diff = float(
        np.max(
            np.abs(
                onnx_probabilities(ort_session(onnx_bytes), images)
                - torch_probabilities(model, images, tta=tta)
            )
        )
    )
    if diff > MAX_PROB_DIFF:
        raise ConfigError(
            f"{where}: the ONNX model's probabilities differ from PyTorch's by {diff:.2e} "
            f"(> {MAX_PROB_DIFF}); nothing was written. Report this with the checkpoint."
        )
    return diff


def export_onnx(
    model: torch.nn.Module,
    out: str | Path,
    run: dict[str, Any] | None = None,
    check_images: np.ndarray | None = None,
    overwrite: bool = False,
    opset: int = OPSET,
    tta: bool = False,
) -> tuple[Path, float]:
    """Write `model` as a checked, self-describing ONNX file; returns (path, max prob diff).

    The probabilities are compared with PyTorch's on `check_images` (random images when None)
    before anything is written.
    """
    out = Path(out)
    refuse_existing(out, overwrite)
    proto = to_onnx_proto(model, opset, tta)
    _set_metadata(proto, metadata(model, run, tta))
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    if check_images is None or len(check_images) == 0:
        size = model.input_spec.image_size
        check_images = torch.rand(
            8, 1, size, size, generator=torch.Generator().manual_seed(1)
        ).numpy()
    diff = check_equal(model, data, check_images, out, tta)
    atomic_write_bytes(out, data)
    return out, diff


def refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass --overwrite true to replace it.")


# --------------------------------------------------------------------------- INT8


def run_split(run_dir: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, list[Record]]:
    """The run's split mapped back onto its data, for INT8 calibration and its AUROC check."""
    return rundir.run_split(
        run_dir,
        "INT8 calibration needs the run's training images",
        "Export from a checkpoint inside its run folder (runs/NAME/version_N), or drop --int8.",
    )


class _Calibration:
    """ORT CalibrationDataReader over prepared images, one image per call."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {INPUT_NAME: self.images[self.i - 1 : self.i]}

    def rewind(self) -> None:
        self.i = 0


def quantize_int8(fp32_onnx: bytes, calibration: np.ndarray) -> bytes:
    """ORT static quantization (QDQ, uint8 activations, per-channel int8 weights, MinMax)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Calibration, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="tbclf-int8-") as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32_onnx)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            Reader(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(dst))
    meta = read_metadata(onnx.load_from_string(fp32_onnx))
    meta[META_QUANT] = (
        f"int8 static (ONNX Runtime QDQ, MinMax, per-channel weights), calibrated on "
        f"{len(calibration)} training images"
    )
    _set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _spread(records: Sequence[Record], n: int) -> list[Record]:
    """n records evenly spread over a sorted list (deterministic, covers every source)."""
    if n >= len(records):
        return list(records)
    idx = np.linspace(0, len(records) - 1, n).round().astype(int)
    return [records[i] for i in idx]


def export_int8(
    fp32_path: str | Path,
    out: str | Path,
    run_dir: Path,
    n_calibration: int = 64,
    max_change: float = MAX_INT8_AUROC_CHANGE,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[Path, Int8Result]:
    """INT8 model calibrated on the run's training images; refused when |AUROC change| on the
    run's test split exceeds `max_change` (nothing is written then)."""
    out = Path(out)
    refuse_existing(out, overwrite)
    fp32 = Path(fp32_path).read_bytes()
    spec = InputSpec.from_dict(json.loads(read_metadata(onnx.load_from_string(fp32))[META_SPEC]))
    split = run_split(run_dir, max_pixels)
    train = sorted(split.get("train", []), key=lambda r: str(r.path))
    test = [r for r in split.get("test", []) if r.label is not None]
    if not train:
        raise ConfigError(f"{run_dir / 'split.json'} has no training images to calibrate on.")
    if len({r.label for r in test}) < 2:
        raise ConfigError(
            f"{run_dir / 'split.json'}: the test split needs TB and healthy images to measure "
            "the AUROC change of INT8; it has not. Drop --int8."
        )
    calibration = prepare_images(spec, [r.path for r in _spread(train, n_calibration)], max_pixels)
    int8 = quantize_int8(fp32, calibration)
    images = prepare_images(spec, [r.path for r in test], max_pixels)
    labels = np.array([r.label for r in test], dtype=np.float64)
    result = Int8Result(
        auroc_fp32=auroc(onnx_probabilities(ort_session(fp32), images), labels),
        auroc_int8=auroc(onnx_probabilities(ort_session(int8), images), labels),
        n_test=len(test),
        n_calibration=len(calibration),
    )
    check_int8(result, max_change, out)
    atomic_write_bytes(out, int8)
    return out, result


def check_int8(result: Int8Result, max_change: float, where: str | Path) -> None:
    """Refuse an INT8 model whose test AUROC moved more than `max_change`."""
    if not np.isfinite(result.change) or abs(result.change) > max_change:
        raise ConfigError(
            f"INT8 refused ({where} not written): test AUROC {result.auroc_fp32:.4f} (fp32) -> "
            f"{result.auroc_int8:.4f} (int8), a change of {result.change:+.4f}, more than "
            f"{max_change} allowed. Use the fp32 model, or calibrate on more images "
            "(--calibration_images)."
        )


def metadata_operating_point(meta: dict[str, str], where: str) -> OperatingPoint:
    """The operating point an exported file carries (files from before the one key: their
    threshold, its origin and the model's temperature)."""
    try:
        if META_OPERATING_POINT in meta:
            return OperatingPoint.from_dict(json.loads(meta[META_OPERATING_POINT]), where)
        model = json.loads(meta.get(META_MODEL) or "{}")
        origin = json.loads(meta.get(META_THRESHOLD_SOURCE) or "{}")
        return OperatingPoint.from_legacy(
            float(meta[META_THRESHOLD]), origin, float(model.get("temperature", 1.0))
        )
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"{where}: no readable operating point in its tbclf metadata ({error}); export it "
            "again with `python -m tbclf export --ckpt_path best.ckpt`."
        ) from None


# --------------------------------------------------------------------------- a checkpoint


def default_out(ckpt_path: str | Path) -> Path:
    """model.onnx in the checkpoint's run folder, else <checkpoint stem>.onnx beside it."""
    run_dir = run_dir_of(ckpt_path)
    return run_dir / "model.onnx" if run_dir is not None else Path(ckpt_path).with_suffix(".onnx")


def int8_path(out: Path) -> Path:
    """Where the INT8 model goes: beside the fp32 one, so the pair is found together."""
    return out.with_name(f"{out.stem}.int8.onnx")


def check_images_of(
    model: torch.nn.Module,
    run_dir: Path | None,
    n: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    log: Callable[[str], None] = print,
) -> np.ndarray | None:
    """Up to ``n`` of the run's test images to compare ONNX and PyTorch on (None: the run or
    its data is not there, and random images will do)."""
    if run_dir is None or not (run_dir / "split.json").is_file() or n <= 0:
        return None
    try:
        test = run_split(run_dir, max_pixels).get("test", [])
    except ConfigError as error:  # data moved: compare on random images instead
        log(f"note: {error}")
        test = []
    return prepare_images(model.input_spec, [r.path for r in _spread(test, n)], max_pixels)


def export_checkpoint(
    ckpt_path: str | Path,
    out: str | Path | None = None,
    *,
    opset: int = OPSET,
    int8: bool = False,
    calibration_images: int = 64,
    max_auroc_change: float = MAX_INT8_AUROC_CHANGE,
    tta: bool = False,
    check_images: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`tbclf export`: the checkpoint as ONNX (and INT8 when asked), every refusal checked
    before the slow work starts."""
    from tbclf.models.loading import load_classifier

    out = Path(out) if out else default_out(ckpt_path)
    refuse_existing(out, overwrite)
    if int8:
        refuse_existing(int8_path(out), overwrite)
    if max_auroc_change > MAX_INT8_AUROC_CHANGE:
        raise ConfigError(
            f"--max_auroc_change {max_auroc_change} is above the project's limit of "
            f"{MAX_INT8_AUROC_CHANGE}."
        )
    model = load_classifier(ckpt_path)
    run_dir = run_dir_of(ckpt_path)
    check = check_images_of(model, run_dir, check_images, max_pixels, log)
    path, diff = export_onnx(
        model, out, run=training_run(ckpt_path), check_images=check, overwrite=overwrite,
        opset=opset, tta=tta,
    )  # fmt: skip
    what = f"{len(check)} test images" if check is not None and len(check) else "random images"
    log(f"wrote {path} (opset {opset}); max |P_onnx - P_torch| = {diff:.2e} on {what}")
    result: dict[str, Any] = {"onnx": str(path), "max_prob_diff": diff}
    if not int8:
        return result
    if run_dir is None:
        raise ConfigError(
            f"--int8 calibrates on the run's training images, but {ckpt_path} is not in "
            "a run folder (runs/NAME/version_N/checkpoints/)."
        )
    q_path, q = export_int8(
        path, int8_path(out), run_dir, n_calibration=calibration_images,
        max_change=max_auroc_change, overwrite=overwrite, max_pixels=max_pixels,
    )  # fmt: skip
    log(
        f"wrote {q_path}: test AUROC {q.auroc_fp32:.4f} (fp32) -> {q.auroc_int8:.4f} "
        f"(int8), change {q.change:+.4f} on {q.n_test} test images; calibrated on "
        f"{q.n_calibration} training images"
    )
    result.update(int8=str(q_path), auroc_fp32=q.auroc_fp32, auroc_int8=q.auroc_int8)
    return result
