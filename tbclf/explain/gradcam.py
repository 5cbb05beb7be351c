"""Grad-CAM heatmaps: which parts of the X-ray pushed the model's TB score up.

A reader should check that the evidence sits in the lungs, not on a text marker, the border or
the scanner's corner: a model that "finds TB" in the label "R" has learnt a shortcut. Heatmaps
use pytorch-grad-cam on the model's single TB logit (BinaryClassifierOutputTarget(1): the
gradient of the logit itself; ClassifierOutputTarget would index a class axis the model does
not have).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn
from tqdm.auto import tqdm

from tbclf.data.imageio import DEFAULT_MAX_PIXELS
from tbclf.data.records import Record
from tbclf.data.spec import InputSpec
from tbclf.errors import ConfigError, DataError
from tbclf.evaluation.probability import decide, reported_probability
from tbclf.io import (
    check_can_write,
    image_row,
    new_figure,
    save_figure,
    write_csv,
)

CLASS_NAMES = {0: "healthy", 1: "TB"}


def find_target_layer(model: nn.Module) -> nn.Module:
    """model.target_layer() when the model names one, else its last nn.Conv2d."""
    getter = getattr(model, "target_layer", None)
    if callable(getter):
        layer = getter()
        if isinstance(layer, nn.Module):
            return layer
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(
            f"{type(model).__name__} has no nn.Conv2d layer and no target_layer() method: "
            "Grad-CAM needs a convolutional feature map."
        )
    return convs[-1]


def model_threshold(model: nn.Module, default: float = 0.5) -> float:
    """The operating threshold stored in the checkpoint (buffer `threshold`), else default."""
    t = getattr(model, "threshold", None)
    if t is None:
        return default
    return float(t.item() if isinstance(t, torch.Tensor) else t)


def spec_of(model: nn.Module | None, spec: InputSpec | None = None) -> InputSpec:
    """The spec given, else the model's own, else the defaults (a bare nn.Module)."""
    if spec is not None:
        return spec
    own = getattr(model, "input_spec", None)
    return own if isinstance(own, InputSpec) else InputSpec()


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    target_layer: nn.Module | None = None,
    target_class: int = 1,
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (B, H, W) in [0, 1] at the input's size and P(TB) (B,) for a batch.

    images: (B, 1, H, W) float in [0, 1] (the data contract). target_class 1 explains evidence
    for TB; 0 explains evidence against it. The model runs in eval mode (and is put back in the
    mode it was in), with gradients enabled even when called under torch.no_grad(). P(TB) is
    the one the model reports everywhere else (its temperature; with ``tta``, averaged over
    the test-time views, which takes a pass per view besides Grad-CAM's own).
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (B, 1, H, W), got {tuple(images.shape)}")
    layer = target_layer if target_layer is not None else find_target_layer(model)
    was_training = model.training
    device = next(model.parameters()).device
    # Requiring grad on the input makes the hooked activations carry gradients even when the
    # backbone's weights are frozen.
    x = images.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
    cam = GradCAM(model=model, target_layers=[layer])
    try:
        with torch.enable_grad():
            maps = cam(
                input_tensor=x, targets=[BinaryClassifierOutputTarget(target_class)] * x.shape[0]
            )
            logits = cam.outputs.detach().reshape(x.shape[0], -1)[:, 0]
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)
    return np.asarray(maps, dtype=np.float32), reported_probs(model, x.detach(), logits, tta)


def reported_probs(
    model: nn.Module, images: torch.Tensor, logits: torch.Tensor | None, tta: bool = False
) -> np.ndarray:
    """(B,) P(TB) as the model reports it: from the given logits of an explainer's own forward
    pass (its temperature applied), or a pass of its own when there are none or with ``tta``.
    A bare module (no ``score_logits``) is reported with temperature 1."""
    if tta or logits is None:
        score = getattr(model, "score_logits", None)
        with torch.no_grad():
            logits = score(images, tta) if score is not None else model(images)
    temperature = getattr(model, "temperature", 1.0)
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.detach().cpu()
    return reported_probability(logits.detach().cpu(), temperature).numpy()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 of the gray image (H, W) in [0, 1] with the heatmap (jet) blended on top."""
    heat = cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0, 1)), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    gray = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    return np.uint8(255 * np.clip((1 - alpha) * gray + alpha * heat, 0, 1))


def _decision_text(prob: float, threshold: float, label: int | None) -> str:
    decision = "TB" if decide(prob, threshold) else "healthy"
    text = f"P(TB) = {prob:.2f} → {decision} (threshold {threshold:.2f})"
    if label is not None:
        text += f"; truth: {CLASS_NAMES.get(label, label)}"
    return text


def _safe_name(ident: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", ident).strip("._") or "image"
    name, k = base, 1
    while name.lower() in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name.lower())
    return name


def _iter_batches(
    items: Iterable[Any], batch_size: int, spec: InputSpec, max_pixels: int
) -> Iterator[dict[str, Any]]:
    """Batches in the data contract from Records (prepared as at test time) or batch dicts."""
    pending: list[Record] = []

    def flush() -> dict[str, Any]:
        batch = {
            "image": torch.stack([spec.prepare(r.path, max_pixels) for r in pending]),
            "label": torch.tensor([np.nan if r.label is None else float(r.label) for r in pending]),
            "id": [r.id for r in pending],
            "source": [r.source for r in pending],
            "path": [str(r.path) for r in pending],
        }
        pending.clear()
        return batch

    for item in items:
        if isinstance(item, Record):
            pending.append(item)
            if len(pending) >= batch_size:
                yield flush()
        elif isinstance(item, Mapping) and "image" in item:
            if pending:
                yield flush()
            yield dict(item)
        else:
            raise TypeError(f"expected Record or batch dict, got {type(item).__name__}")
    if pending:
        yield flush()


def explain_images(
    model: nn.Module,
    records_or_batches: Iterable[Record] | Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    spec: InputSpec | None = None,
    threshold: float | None = None,
    batch_size: int = 8,
    max_images: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    progress: bool = True,
    tta: bool = False,
) -> list[dict[str, Any]]:
    """One PNG per image: the X-ray as the model sees it next to its Grad-CAM overlay, titled
    with P(TB) and the decision; plus explanations.csv listing them.

    Args:
        model: A tbclf classifier (or any module mapping (B,1,H,W) [0,1] to (B,) logits).
        records_or_batches: Records (read and preprocessed like the test set, with the data
            settings below, which must match the model's training) or data-contract batches.
        out_dir: Output folder (created).
        spec: How to prepare Records; default the model's own ``input_spec``.
        threshold: Decision threshold; default the model's stored `threshold` (else 0.5).
        batch_size: Images per Grad-CAM pass.
        max_images: Stop after this many images.
        overwrite: Replace explanations.csv / PNGs of an earlier run.
        tta: Report P(TB) averaged over the test-time views (as `predict --tta true`).
    Returns one dict per image: id, prob, decision, label, source, file.
    """
    out = check_can_write(out_dir, ["explanations.csv"], overwrite)
    thr = model_threshold(model) if threshold is None else float(threshold)
    spec = spec_of(model, spec)
    layer = find_target_layer(model)
    taken: set[str] = set()
    results: list[dict[str, Any]] = []
    bar = tqdm(total=max_images, desc="Grad-CAM", unit="img", disable=not progress)
    try:
        for batch in _iter_batches(records_or_batches, batch_size, spec, max_pixels):
            images = batch["image"]
            if max_images is not None:
                left = max_images - len(results)
                if left <= 0:
                    break
                images = images[:left]
            cams, probs = compute_cams(model, images, layer, tta=tta)
            done = _explain_batch(batch, images, cams, probs, thr, out, taken, len(results))
            results += done
            bar.update(len(done))
    finally:
        bar.close()
    if not results:
        raise DataError("no images to explain")
    _write_explanations_csv(out / "explanations.csv", results)
    return results


def _explain_batch(
    batch: Mapping[str, Any],
    images: torch.Tensor,
    cams: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    out: Path,
    taken: set[str],
    n_before: int,
) -> list[dict[str, Any]]:
    """One figure per image of a batch, saved under a file name no other image took; the
    rows of explanations.csv for them (unnamed images are numbered from ``n_before``)."""
    labels = batch.get("label")
    results: list[dict[str, Any]] = []
    for i in range(images.shape[0]):
        ident = str(batch["id"][i]) if "id" in batch else f"image_{n_before + len(results)}"
        lab = None
        if labels is not None:
            v = float(labels[i])
            lab = None if np.isnan(v) else int(v)
        img = images[i, 0].detach().cpu().numpy()
        name = _safe_name(ident, taken) + ".png"
        fig = _explain_figure(img, cams[i], ident, float(probs[i]), threshold, lab)
        save_figure(fig, out / name)
        results.append(
            {
                "id": ident,
                "prob": float(probs[i]),
                "decision": int(decide(probs[i], threshold)),
                "label": lab,
                "source": str(batch["source"][i]) if "source" in batch else "",
                "file": name,
            }
        )
    return results


def _write_explanations_csv(path: Path, results: Sequence[Mapping[str, Any]]) -> None:
    """The index of the figures, in predictions.csv's columns plus the figure's file."""
    write_csv(
        path,
        ["ID", "LABEL", "DECISION", "TRUE_LABEL", "SOURCE", "FILE"],
        (
            [
                r["id"],
                f"{r['prob']:.6f}",
                r["decision"],
                "" if r["label"] is None else r["label"],
                r["source"],
                r["file"],
            ]
            for r in results
        ),
    )


def _explain_figure(
    img: np.ndarray, cam: np.ndarray, ident: str, prob: float, threshold: float, label: int | None
):
    fig = new_figure(8.4, 4.6)
    axes = fig.subplots(1, 2)
    axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("X-ray (model input)", fontsize=9)
    axes[1].imshow(overlay(img, cam))
    axes[1].set_title("Grad-CAM: evidence for TB", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap="jet"),
        ax=axes[1],
        shrink=0.8,
        label="relative importance",
    )
    fig.suptitle(f"{ident}\n{_decision_text(prob, threshold, label)}", fontsize=10)
    return fig


def select_cases(
    probs: Sequence[float] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    threshold: float,
    n_per_group: int = 4,
) -> dict[str, list[int]]:
    """Indices of the most confident true positives (highest P(TB)), false positives (highest)
    and false negatives (lowest), at most n_per_group each."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    pred = decide(p, threshold).astype(bool)
    groups = {
        "true_positive": np.flatnonzero(pred & (y == 1)),
        "false_positive": np.flatnonzero(pred & (y == 0)),
        "false_negative": np.flatnonzero(~pred & (y == 1)),
    }
    out = {}
    for name, idx in groups.items():
        order = np.argsort(p[idx], kind="stable")
        if name != "false_negative":
            order = order[::-1]
        out[name] = idx[order][:n_per_group].tolist()
    return out


GROUP_TITLES = {
    "true_positive": "Most confident true positives (TB, found)",
    "false_positive": "Most confident false positives (healthy, flagged)",
    "false_negative": "Most confident false negatives (TB, missed)",
}


def contact_sheet(
    probs: Sequence[float] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    ids: Sequence[str],
    paths: Sequence[str | Path] | Mapping[str, str | Path],
    out_path: str | Path,
    threshold: float = 0.5,
    n_per_group: int = 4,
    model: nn.Module | None = None,
    spec: InputSpec | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """One PNG grid of a test run's most confident true positives, false positives and false
    negatives (rows), with Grad-CAM overlays when a model is given.

    paths: one image path per id (same order) or a mapping id -> path. Images are read and
    prepared with `spec` (default: the model's own input spec).
    Returns the cases shown per group: [{id, prob, label}].
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise ConfigError(
            f"{out_path} already exists; pass overwrite=True (--overwrite) to "
            "replace it or choose another file name"
        )
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if not (p.size == y.size == len(ids)):
        raise DataError(
            f"probs ({p.size}), labels ({y.size}) and ids ({len(ids)}) differ in length"
        )
    path_of = dict(paths) if isinstance(paths, Mapping) else dict(zip(ids, paths, strict=True))
    missing = [i for i in ids if i not in path_of]
    if missing:
        raise DataError(f"no image path for ids {missing[:5]}")
    cases = select_cases(p, y, threshold, n_per_group)
    spec = spec_of(model, spec)
    ncols = max(n_per_group, 1)
    fig = new_figure(2.6 * ncols, 2.95 * 3 + 0.4)
    subfigs = fig.subfigures(3, 1)
    shown: dict[str, list[dict[str, Any]]] = {}
    layer = find_target_layer(model) if model is not None else None
    for sub, (group, idx) in zip(subfigs, cases.items(), strict=True):
        axes = image_row(sub, f"{GROUP_TITLES[group]}: {len(idx)} shown", ncols)
        shown[group] = []
        if not idx:
            axes[0].text(0.02, 0.5, "none", fontsize=10, transform=axes[0].transAxes)
            continue
        batch = torch.stack([spec.prepare(path_of[ids[i]], max_pixels) for i in idx])
        cams = compute_cams(model, batch, layer)[0] if model is not None else None
        for j, i in enumerate(idx):
            img = batch[j, 0].numpy()
            axes[j].imshow(
                overlay(img, cams[j]) if cams is not None else img,
                cmap=None if cams is not None else "gray",
                vmin=0,
                vmax=1,
            )
            axes[j].set_title(f"{ids[i]}\nP(TB) = {p[i]:.2f}", fontsize=8)
            shown[group].append({"id": str(ids[i]), "prob": float(p[i]), "label": int(y[i])})
    fig.suptitle(
        f"Threshold {threshold:.2f}"
        + (" — Grad-CAM: evidence for TB" if model is not None else ""),
        fontsize=11,
    )
    save_figure(fig, out_path)
    return shown
