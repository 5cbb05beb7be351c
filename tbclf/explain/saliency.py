"""Where does the model look? Saliency maps scored against radiologists' boxes.

Maps come from the `grad-cam` package on the image as the model saw it (its InputSpec's
square) and are put back on the image as stored with the data layer's
:class:`~tbclf.data.imageio.SquareGeometry` (crop and padding undone), where the boxes live.
Each map is scored three ways: proportional energy (share of the map inside the boxes, as
Idiap's mednet does), the pointing game (is the maximum inside a box) and ROAD faithfulness
(does removing the pixels the map ranks highest lower P(TB) more than removing the lowest).
Baselines give the numbers a floor: a uniform map, a fixed central ellipse, the mean of the
other images' Grad-CAM maps (a lung-field prior learnt from the data) and Grad-CAM of the same
architecture with random weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, ScoreCAM
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn
from tqdm.auto import tqdm

from tbclf.data.imageio import DEFAULT_MAX_PIXELS, SquareGeometry
from tbclf.data.records import Record
from tbclf.data.spec import InputSpec
from tbclf.errors import ConfigError
from tbclf.evaluation.probability import decide, reported_probability
from tbclf.explain.boxes import Box, BoxSet, box_mask
from tbclf.explain.gradcam import find_target_layer, model_threshold, reported_probs, spec_of

METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "scorecam": ScoreCAM,
    "eigencam": EigenCAM,
}
BASELINES = ("uniform", "ellipse", "mean_map", "random_weights")
ROAD_PERCENTILES = (20, 50, 80)
# A constant map ranks no pixel, so its ROAD score is 0 by definition: not computed.
NO_ROAD = ("uniform",)
# A map whose largest value is below this is empty (ReLU removed everything): it has no
# preference, so it is scored as the uniform map and counted.
EMPTY_MAP = 1e-6


class ProbabilityTarget:
    """The network's own P(TB) (before any temperature, which would only rescale the
    differences): ROAD watches how it changes as pixels are imputed."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return reported_probability(output)


# --------------------------------------------------------------------------- maps


def check_methods(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(
            f"--methods {', '.join(unknown) or '(none)'}: choose from {', '.join(METHODS)}."
        )
    return list(dict.fromkeys(methods))


def method_maps(
    model: nn.Module,
    images: torch.Tensor,
    method: str,
    target_layer: nn.Module | None = None,
    scorecam_batch_size: int = 32,
) -> np.ndarray:
    """(B, S, S) maps in [0, 1] of one grad-cam method for the TB logit, on the model's input.

    The model is put back in the mode it was in; gradients are on even under no_grad and with
    frozen weights (the input requires grad, so the hooked activations carry gradients).
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (B, 1, S, S), got {tuple(images.shape)}")
    cls = METHODS[check_methods([method])[0]]
    layer = target_layer if target_layer is not None else find_target_layer(model)
    was_training = model.training
    device = next(model.parameters()).device
    x = images.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
    cam = cls(model=model, target_layers=[layer])
    if method == "scorecam":
        cam.batch_size = int(scorecam_batch_size)  # forward passes per step (memory vs speed)
    try:
        with torch.enable_grad():
            maps = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)] * x.shape[0])
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)
    return np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0)


def uniform_map(geometry: SquareGeometry) -> np.ndarray:
    """1 on the image, 0 on the padding: no preference among the pixels the model saw."""
    return geometry.content()


def ellipse_map(
    geometry: SquareGeometry, semi_axes: tuple[float, float] = (0.4, 0.4)
) -> np.ndarray:
    """A fixed lung-field prior: a dome on a central ellipse of the image part of the square
    (semi-axes as fractions of its width and height), highest in the middle."""
    top, left, rows, cols = geometry.placed
    ys, xs = np.mgrid[0 : geometry.size, 0 : geometry.size].astype(np.float32) + 0.5
    cy, cx = top + rows / 2.0, left + cols / 2.0
    r2 = ((xs - cx) / (semi_axes[0] * cols)) ** 2 + ((ys - cy) / (semi_axes[1] * rows)) ** 2
    return np.clip(1.0 - r2, 0.0, 1.0).astype(np.float32)


def random_weights_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture and input spec with freshly initialised weights (seeded): the
    map of a model that learnt nothing, for the sanity check of Adebayo et al. (2018)."""
    hparams = dict(getattr(model, "hparams", {}) or {})
    hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
    if "pretrained" in hparams:  # never download: random means random
        hparams.update(pretrained=False, weights=None)
    spec = getattr(model, "input_spec", None)
    if isinstance(spec, InputSpec):
        hparams["input_spec"] = spec.to_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(**hparams)
    return fresh.eval()


# --------------------------------------------------------------------------- metrics


def proportional_energy(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total inside the boxes (mednet's proportional energy)."""
    total = float(saliency.sum(dtype=np.float64))
    if total <= 0:
        return float("nan")
    return float(saliency[mask].sum(dtype=np.float64) / total)


def pointing_game(saliency: np.ndarray, mask: np.ndarray, rtol: float = 1e-6) -> float:
    """1 when the map's maximum lies in a box, 0 when not; with ties (a flat top) the share of
    the maximal pixels inside, i.e. the expected hit when a tie is broken at random."""
    peak = float(saliency.max())
    top = saliency >= peak - rtol * max(abs(peak), 1e-12)
    return float(np.count_nonzero(top & mask) / np.count_nonzero(top))


def road_scores(
    model: nn.Module,
    images: torch.Tensor,
    maps: np.ndarray,
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
) -> np.ndarray:
    """ROAD combined score per image (Rong et al. 2022, grad-cam's ROADCombined) on P(TB):
    mean over percentiles of [drop when the least relevant pixels are imputed minus drop when
    the most relevant are], halved. Higher = more faithful; 0 = the ranking says nothing.

    The imputation adds noise: it is drawn from `seed` without touching the global RNG.
    """
    metric = ROADCombined(percentiles=list(percentiles))
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            scores = metric(
                images.float(), maps.astype(np.float32), [ProbabilityTarget()] * len(maps), model
            )
    finally:
        model.train(was_training)
    return np.asarray(scores, dtype=np.float64).reshape(-1)


# --------------------------------------------------------------------------- one image


@dataclass
class ScoredImage:
    """One image: what the model saw, where its boxes are, and its prediction."""

    record: Record
    boxset: BoxSet
    geometry: SquareGeometry
    image: torch.Tensor  # (1, S, S) model input
    boxes: tuple[Box, ...]  # in the image frame (geometry.height x geometry.width)
    mask: np.ndarray  # (H, W) bool, inside a box
    prob: float = float("nan")
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # square frame, float16

    @property
    def box_fraction(self) -> float:
        """Energy of the uniform map over the pixels the model saw: the floor to beat."""
        visible = self.geometry.visible() > 0
        return float(np.count_nonzero(self.mask & visible) / max(np.count_nonzero(visible), 1))


def prepare_image(
    record: Record, boxset: BoxSet, spec: InputSpec, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ScoredImage:
    """The model's input (exactly ``spec.prepare``) with the geometry and the scaled boxes."""
    square, geometry = spec.load_square_geometry(record.path, max_pixels)
    image = spec.to_tensor(spec.enhance(square))
    boxes = boxset.scaled_to(geometry.width, geometry.height)
    mask = box_mask(boxes, geometry.height, geometry.width)
    return ScoredImage(record, boxset, geometry, image, boxes, mask)


def score_map(item: ScoredImage, square_map: np.ndarray) -> dict[str, float]:
    """Energy and pointing of a square-frame map on the image frame (an empty map = uniform)."""
    on_image = item.geometry.to_image(np.asarray(square_map, dtype=np.float32))
    empty = float(on_image.max()) < EMPTY_MAP
    if empty:
        on_image = item.geometry.visible()
    return {
        "energy": proportional_energy(on_image, item.mask),
        "pointing": pointing_game(on_image, item.mask),
        "empty": int(empty),
    }


# --------------------------------------------------------------------------- the run


@dataclass
class SaliencyRun:
    """Everything the report needs: per image x map rows and the images (with their maps)."""

    rows: list[dict[str, Any]]
    items: list[ScoredImage]
    methods: list[str]
    baselines: list[str]
    threshold: float
    seconds: dict[str, float]
    subsets: dict[str, int]
    settings: dict[str, Any]


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def subset(n: int, limit: int | None, seed: int) -> list[int]:
    """A fixed, seeded subset of image indices (all when limit is None or >= n). Subsets of
    one seed are nested, so a smaller one (Score-CAM's) lies inside a bigger one (ROAD's)."""
    if limit is None or limit >= n:
        return list(range(n))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[: max(int(limit), 0)].tolist())


def run_saliency(
    model: nn.Module,
    pairs: Sequence[tuple[Record, BoxSet]],
    methods: Sequence[str] = tuple(METHODS),
    baselines: Sequence[str] = BASELINES,
    batch_size: int = 4,
    scorecam_batch_size: int = 32,
    method_max_images: dict[str, int] | None = None,
    road: bool = True,
    road_max_images: int | None = None,
    road_percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    tta: bool = False,
) -> SaliencyRun:
    """Maps of every method and baseline for every image, scored against its boxes; P(TB) as
    the model reports it (its temperature; averaged over the test-time views with ``tta``)."""
    methods = check_methods(methods)
    limits = _check_options(methods, baselines, method_max_images, batch_size, scorecam_batch_size)
    spec = spec_of(model)
    threshold = model_threshold(model)
    layer = find_target_layer(model)
    model.eval()
    items = [prepare_image(rec, boxes, spec, max_pixels) for rec, boxes in pairs]
    _predict(model, items, tta)
    n = len(items)
    # Maps: methods, then baselines (mean_map needs every image's Grad-CAM).
    needs_gradcam = "mean_map" in baselines and "gradcam" not in methods
    names = [*methods, *(["gradcam"] if needs_gradcam else [])]
    random_model = random_weights_like(model, seed) if "random_weights" in baselines else None
    subsets = {m: len(subset(n, limits.get(m), seed)) for m in methods}
    seconds = _method_maps(
        model, items, names, layer, limits, seed, batch_size, scorecam_batch_size, progress, log
    )
    _baseline_maps(items, baselines, random_model, batch_size, seconds)
    if needs_gradcam:
        for it in items:
            it.maps.pop("gradcam", None)
    names = [*methods, *baselines]
    road_of: dict[tuple[int, str], float] = {}
    if road:
        road_images = set(subset(n, road_max_images, seed))
        road_of = _road(model, items, names, road_images, road_percentiles, seed, batch_size,
                        seconds, log)  # fmt: skip
    settings = {
        "batch_size": batch_size,
        "scorecam_batch_size": scorecam_batch_size,
        "road": road,
        "road_max_images": road_max_images,
        "road_percentiles": list(road_percentiles),
        "seed": seed,
        "tta": bool(tta),
        "input_spec": spec.to_dict(),
        "target_layer": type(layer).__name__,
    }
    rows = _rows(items, names, road_of, threshold)
    return SaliencyRun(rows, items, methods, list(baselines), threshold, seconds, subsets, settings)


def _check_options(
    methods: Sequence[str],
    baselines: Sequence[str],
    method_max_images: dict[str, int] | None,
    batch_size: int,
    scorecam_batch_size: int,
) -> dict[str, int]:
    """Refuse a run that would fail (or mean nothing) hours in; the per-method limits."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"--baselines {', '.join(unknown)}: choose from {', '.join(BASELINES)}.")
    limits = dict(method_max_images or {})
    bad = [m for m in limits if m not in METHODS]
    if bad:
        raise ConfigError(f"--method_max_images names unknown method(s) {', '.join(bad)}.")
    if "mean_map" in baselines and limits.get("gradcam") is not None:
        raise ConfigError("the mean_map baseline needs Grad-CAM on every image: no gradcam limit.")
    if batch_size < 1 or scorecam_batch_size < 1:
        raise ConfigError("--batch_size and --scorecam_batch_size must be at least 1.")
    return limits


def _predict(model: nn.Module, items: list[ScoredImage], tta: bool) -> None:
    """Each image's reported P(TB), for the decision the report sets beside its maps."""
    with torch.no_grad():
        for chunk in _batches(len(items), 16):
            x = torch.stack([items[i].image for i in chunk])
            probs = reported_probs(model, x, None, tta)
            for i, p in zip(chunk, probs, strict=True):
                items[i].prob = float(p)


def _method_maps(
    model: nn.Module,
    items: list[ScoredImage],
    names: Sequence[str],
    layer: nn.Module,
    limits: dict[str, int],
    seed: int,
    batch_size: int,
    scorecam_batch_size: int,
    progress: bool,
    log: Callable[[str], None] | None,
) -> dict[str, float]:
    """The grad-cam methods' maps (each on its seeded subset); seconds per method."""
    n = len(items)
    seconds: dict[str, float] = {}
    bar = tqdm(total=n * len(names), desc="saliency maps", unit="map", disable=not progress)
    try:
        for name in names:
            chosen = subset(n, limits.get(name), seed)
            start = time.perf_counter()
            for chunk in _batches(len(chosen), batch_size):
                idx = [chosen[i] for i in chunk]
                x = torch.stack([items[i].image for i in idx])
                maps = method_maps(model, x, name, layer, scorecam_batch_size)
                for i, m in zip(idx, maps, strict=True):
                    items[i].maps[name] = m.astype(np.float16)
                bar.update(len(idx))
            seconds[name] = time.perf_counter() - start
            if log:
                log(f"{name}: {len(chosen)} images in {seconds[name]:.1f} s")
    finally:
        bar.close()
    return seconds


def _baseline_maps(
    items: list[ScoredImage],
    baselines: Sequence[str],
    random_model: nn.Module | None,
    batch_size: int,
    seconds: dict[str, float],
) -> None:
    """The floors the methods are measured against (after the methods: mean_map averages the
    other images' Grad-CAM maps)."""
    n = len(items)
    for item in items:
        for b in baselines:
            if b == "uniform":
                item.maps[b] = uniform_map(item.geometry).astype(np.float16)
            elif b == "ellipse":
                item.maps[b] = ellipse_map(item.geometry).astype(np.float16)
    if "mean_map" in baselines:
        total = np.sum([it.maps["gradcam"].astype(np.float32) for it in items], axis=0)
        for it in items:  # leave-one-out: the prior never saw the image it is scored on
            own = it.maps["gradcam"].astype(np.float32)
            it.maps["mean_map"] = ((total - own) / max(n - 1, 1)).astype(np.float16)
    if random_model is not None:
        start = time.perf_counter()
        random_layer = find_target_layer(random_model)
        for chunk in _batches(n, batch_size):
            x = torch.stack([items[i].image for i in chunk])
            maps = method_maps(random_model, x, "gradcam", random_layer)
            for i, m in zip(chunk, maps, strict=True):
                items[i].maps["random_weights"] = m.astype(np.float16)
        seconds["random_weights"] = time.perf_counter() - start


def _road(
    model: nn.Module,
    items: list[ScoredImage],
    names: Sequence[str],
    road_images: set[int],
    road_percentiles: Sequence[int],
    seed: int,
    batch_size: int,
    seconds: dict[str, float],
    log: Callable[[str], None] | None,
) -> dict[tuple[int, str], float]:
    """ROAD faithfulness per (image index, map name), on the seeded ROAD subset."""
    road_of: dict[tuple[int, str], float] = {}
    for name in (m for m in names if m not in NO_ROAD):
        start = time.perf_counter()
        have = [i for i in range(len(items)) if name in items[i].maps and i in road_images]
        for chunk in _batches(len(have), batch_size):
            idx = [have[i] for i in chunk]
            x = torch.stack([items[i].image for i in idx])
            maps = np.stack([items[i].maps[name].astype(np.float32) for i in idx])
            scores = road_scores(model, x, maps, road_percentiles, seed + idx[0])
            for i, s in zip(idx, scores, strict=True):
                road_of[(i, name)] = float(s)
        seconds[f"road:{name}"] = time.perf_counter() - start
        if log:
            log(f"ROAD {name}: {len(have)} images in {seconds[f'road:{name}']:.1f} s")
    return road_of


def _rows(
    items: list[ScoredImage],
    names: Sequence[str],
    road_of: dict[tuple[int, str], float],
    threshold: float,
) -> list[dict[str, Any]]:
    """One row per image and map it has: the table the report summarises."""
    rows = []
    for i, it in enumerate(items):
        fraction = it.box_fraction
        for name in names:
            if name not in it.maps:
                continue
            scored = score_map(it, it.maps[name].astype(np.float32))
            rows.append(
                {
                    "id": it.record.id,
                    "method": name,
                    "kind": "method" if name in METHODS else "baseline",
                    "energy": scored["energy"],
                    "box_fraction": fraction,
                    "energy_gain": scored["energy"] - fraction,
                    "pointing": scored["pointing"],
                    "road": road_of.get((i, name), float("nan")),
                    "empty_map": scored["empty"],
                    "prob": it.prob,
                    "decision": int(decide(it.prob, threshold)),
                    "n_boxes": len(it.boxes),
                    "width": it.geometry.width,
                    "height": it.geometry.height,
                    "path": str(it.record.path),
                }
            )
    return rows
