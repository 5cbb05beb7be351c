"""`tbclf eda`: what the images look like before any model sees them.

One pass over the images (decoded with the same reader as training, reduced to image_size at
once, so 16-bit full-resolution originals cost no more memory than 512 px exports) gives:
counts per class and source, stored sizes and bit depths, byte-identical duplicates, mean and
standard-deviation images per class and their difference, per-image intensity and contrast
("variability") per class and per source, intensity histograms, eigen-images and one example of
histogram equalisation vs CLAHE. Everything lands in `out/` as PNGs, stats.json, per_image.csv,
arrays.npz and a summary.md that embeds the figures.
"""

from __future__ import annotations

import io
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tbclf.data.imageio import DEFAULT_MAX_PIXELS, RESIZE_MODES
from tbclf.data.layouts import discover
from tbclf.data.pixel_defaults import PIXEL_DEFAULTS
from tbclf.data.records import Record
from tbclf.data.splits import find_duplicates, hash_files
from tbclf.data.transforms import PREPROCESSING, contrast_transform
from tbclf.eda import figures as F
from tbclf.eda.collect import ImageLoader, Totals, class_key
from tbclf.eda.stats import IMAGE_METRICS, MICHELSON_PERCENTILES, pca, summarize
from tbclf.eda.summary import summary_md
from tbclf.errors import ConfigError, DataError
from tbclf.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_can_write,
    save_figure,
    write_csv_dicts,
)

log = logging.getLogger(__name__)

FIGURES = {
    "counts": "counts.png",
    "sizes": "image_sizes.png",
    "mean_std": "mean_std_images.png",
    "difference": "class_difference.png",
    "variability": "variability_by_class.png",
    "by_source": "variability_by_source.png",
    "histograms": "intensity_histograms.png",
    "eigen": "eigen_images.png",
    "equalization": "equalization_example.png",
}
DATA_FILES = ("stats.json", "summary.md", "per_image.csv", "arrays.npz")
SOURCE_COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]


def _by_class(records: list[Record]) -> dict[Any, list[int]]:
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_class[r.label].append(i)
    return by_class


def _select(records: list[Record], max_images: int | None, seed: int) -> list[Record]:
    """A seeded subset stratified by class (each present class keeps at least one image)."""
    if max_images is None or max_images >= len(records):
        return records
    if max_images < 1:
        raise ConfigError(f"max_images={max_images} must be >= 1 (or None for all images).")
    rng = np.random.default_rng(seed)
    by_class = _by_class(records)
    keys = sorted(by_class, key=lambda k: (k is None, k))
    quota = {k: max(1, round(max_images * len(by_class[k]) / len(records))) for k in keys}
    while sum(quota.values()) > max_images and any(q > 1 for q in quota.values()):
        biggest = max(keys, key=lambda k: quota[k])
        quota[biggest] -= 1
    chosen: list[int] = []
    for k in keys:
        idx = by_class[k]
        chosen += rng.choice(idx, size=min(quota[k], len(idx)), replace=False).tolist()
    return [records[i] for i in sorted(chosen)]


def _pca_sample(records: list[Record], cap: int, seed: int) -> set[int]:
    """Indices (per class at most `cap`) whose downsample is kept for PCA: bounded memory."""
    rng = np.random.default_rng(seed + 1)
    keep: set[int] = set()
    for idx in _by_class(records).values():
        keep.update(rng.choice(idx, size=min(cap, len(idx)), replace=False).tolist())
    return keep


def _classes(records: list[Record]) -> list[str]:
    present = {class_key(r.label) for r in records}
    ordered = [k for k in ("healthy", "tb", "unlabeled") if k in present]
    return ordered + sorted(present - set(ordered))


def _collect(
    records: list[Record], loader: ImageLoader, totals: Totals, workers: int, progress: bool
) -> Totals:
    items = list(enumerate(records))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(loader, items) if workers > 1 else map(loader, items)
        for res in tqdm(results, total=len(items), desc="EDA", unit="img", disable=not progress):
            totals.add(res)
    return totals


def _duplicates(records: list[Record]) -> dict[str, Any]:
    """Byte-identical files, grouped as the splitter groups them."""
    groups = find_duplicates(records, hash_files(records))
    conflicts = [g for g in groups if len({x.label for x in g}) > 1]
    return {
        "n_groups": len(groups),
        "n_redundant_files": sum(len(g) - 1 for g in groups),
        "label_conflicts": len(conflicts),
        "groups": [[x.id for x in g] for g in groups],
    }


def _derived(totals: Totals, pca_components: int) -> dict[str, Any]:
    """Mean/std images, the class difference and eigen-images, as arrays."""
    t = totals
    arrays: dict[str, np.ndarray] = {}
    for v in t.views:
        for c in ["all", *t.classes]:
            arrays[f"mean_{v}_{c}"] = t.moments[v][c].mean.astype(np.float32)
            arrays[f"std_{v}_{c}"] = t.moments[v][c].std.astype(np.float32)
    diffs: dict[str, np.ndarray] = {}
    if all(c in t.classes and t.moments["raw"][c].n for c in ("tb", "healthy")):
        for v in t.views:
            diffs[v] = t.moments[v]["tb"].mean - t.moments[v]["healthy"].mean
            arrays[f"diff_{v}"] = diffs[v].astype(np.float32)
    pcas: dict[str, dict[str, Any]] = {}
    for c in t.classes:
        stack = t.pca_stacks.get(c)
        if stack and len(stack) >= 2:
            res = pca(np.stack(stack), pca_components)
            res["n_images"] = len(stack)
            pcas[c] = res
            arrays[f"pca_{c}_components"] = res["components"].astype(np.float32)
            arrays[f"pca_{c}_mean"] = res["mean"].astype(np.float32)
    return {"arrays": arrays, "diffs": diffs, "pcas": pcas}


def _figures(
    totals: Totals, derived: dict[str, Any], out_dir: Path, clahe: tuple[float, int]
) -> dict[str, str]:
    """Draw and write every figure; returns name -> file name of those drawn."""
    t = totals
    drawn: dict[str, str] = {}

    def emit(name: str, make) -> None:
        save_figure(make(), out_dir / FIGURES[name])
        drawn[name] = FIGURES[name]

    means = {v: {c: t.moments[v][c].mean for c in t.classes} for v in t.views}
    stds = {v: {c: t.moments[v][c].std for c in t.classes} for v in t.views}
    emit("counts", lambda: F.counts_figure({s: dict(c) for s, c in t.counts.items()}, t.classes))
    emit("sizes", lambda: F.sizes_figure(t.size_points))
    emit("mean_std", lambda: F.mean_std_figure(means, stds, t.classes))
    if derived["diffs"]:
        emit("difference", lambda: F.difference_figure(derived["diffs"]))
    by_class = {v: {c: t.values[v][c] for c in t.classes} for v in t.views}
    title = "Per-image intensity and contrast by"
    emit("variability", lambda: F.distributions_figure(by_class, t.classes, f"{title} class"))
    sources = sorted(t.by_source)
    palette = {s: SOURCE_COLORS[i % len(SOURCE_COLORS)] for i, s in enumerate(sources)}
    emit(
        "by_source",
        lambda: F.distributions_figure(
            {"raw": t.by_source}, sources, f"{title} source", colors=palette
        ),
    )
    hists = {v: {c: t.moments[v][c].hist for c in t.classes} for v in t.views}
    emit("histograms", lambda: F.histograms_figure(hists, t.classes))
    if derived["pcas"]:
        emit("eigen", lambda: F.eigen_figure(derived["pcas"]))
    if t.example is not None:
        img, rec = t.example
        caption = f"Contrast enhancement on {rec.id} ({class_key(rec.label)}, {rec.source})"
        emit("equalization", lambda: F.equalization_figure(img, *clahe, caption))
    return drawn


def _stats_doc(
    totals: Totals, derived: dict[str, Any], meta: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    """The content of stats.json."""
    t = totals
    groups = ["all", *t.classes]
    return {
        **meta,
        "settings": {**settings, "michelson_percentiles": list(MICHELSON_PERCENTILES)},
        "views": list(t.views),
        "classes": t.classes,
        "counts": {
            "by_class": {c: sum(t.counts[s][c] for s in t.counts) for c in t.classes},
            "by_source": {
                s: {**{c: t.counts[s][c] for c in t.classes}, "total": sum(t.counts[s].values())}
                for s in sorted(t.counts)
            },
        },
        "image_sizes": {s: dict(t.sizes[s].most_common()) for s in sorted(t.sizes)},
        "bit_depths": {s: dict(t.depths[s].most_common()) for s in sorted(t.depths)},
        "unreadable": t.unreadable,
        "intensity": {
            v: {c: {m: summarize(t.values[v][c][m]) for m in IMAGE_METRICS} for c in groups}
            for v in t.views
        },
        "intensity_by_source": {
            s: {m: summarize(t.by_source[s][m]) for m in IMAGE_METRICS} for s in sorted(t.by_source)
        },
        "mean_image": {
            v: {
                c: {
                    "mean": float(t.moments[v][c].mean.mean()),
                    "mean_pixel_std": float(t.moments[v][c].std.mean()),
                }
                for c in groups
            }
            for v in t.views
        },
        "class_difference": {
            v: {
                "mean": float(d.mean()),
                "min": float(d.min()),
                "max": float(d.max()),
                "mean_abs": float(np.abs(d).mean()),
            }
            for v, d in derived["diffs"].items()
        },
        "pca": {
            c: {
                "n_images": int(p["n_images"]),
                "explained_variance_ratio": [float(x) for x in p["explained_variance_ratio"]],
            }
            for c, p in derived["pcas"].items()
        },
    }


def _write_rows(path: Path, rows: list[dict[str, Any]], views: Sequence[str]) -> None:
    fields = ["id", "source", "label", "path", "width", "height", "format", "bit_depth", "color"]
    fields += [f"{m}_{v}" for v in views for m in IMAGE_METRICS]
    write_csv_dicts(path, fields, rows)


def _check_options(preprocessing: str, resize: str, image_size: int, pca_size: int) -> None:
    """Refuse settings that would fail only after every image was decoded."""
    if preprocessing not in PREPROCESSING:
        raise ConfigError(f"preprocessing={preprocessing!r} is not one of {PREPROCESSING}.")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize={resize!r} is not one of {RESIZE_MODES}.")
    if image_size < 8 or pca_size < 4:
        raise ConfigError(f"image_size={image_size} must be >= 8 and pca_size={pca_size} >= 4.")


def _tally(
    records: Sequence[Record],
    root: Path,
    settings: dict[str, Any],
    max_pixels: int,
    pca_sample: set[int],
    num_workers: int,
    progress: bool,
) -> Totals:
    """Every image decoded once, as stored and through the preprocessing shown, into running
    totals (memory does not grow with the number of images)."""
    preprocessing = settings["preprocessing"]
    views: dict[str, Any] = {"raw": None}
    if preprocessing != "none":
        views[preprocessing] = contrast_transform(
            preprocessing, settings["clahe_clip_limit"], settings["clahe_tile_grid"]
        )
    totals = Totals(list(views), _classes(records), settings["image_size"])
    loader = ImageLoader(
        views,
        settings["image_size"],
        settings["resize"],
        settings["crop_border"],
        max_pixels,
        settings["pca_size"],
        pca_sample,
    )
    _collect(records, loader, totals, num_workers, progress)
    if not totals.rows:
        first = totals.unreadable[0]["error"] if totals.unreadable else "none"
        raise DataError(
            f"None of the {len(records)} images under {root} could be read; first error: {first}"
        )
    return totals


def _meta(
    root: Path,
    layout: str,
    n_found: int,
    totals: Totals,
    subset: dict[str, Any] | None,
    records: Sequence[Record],
) -> dict[str, Any]:
    """What was analysed: where, how many of how many, which subset, which byte copies."""
    return {
        "root": str(root),
        "layout": layout,
        "n_found": n_found,
        "n_analysed": len(totals.rows),
        "subset": subset,
        "duplicates": _duplicates(records),
    }


def _write_outputs(
    out_dir: Path,
    stats: dict[str, Any],
    arrays: dict[str, np.ndarray],
    rows: list[dict[str, Any]],
    views: Sequence[str],
) -> None:
    """arrays.npz, per_image.csv, stats.json and summary.md, each written whole or not at all."""
    np_buf = io.BytesIO()
    np.savez_compressed(np_buf, **arrays)
    atomic_write_bytes(out_dir / "arrays.npz", np_buf.getvalue())
    _write_rows(out_dir / "per_image.csv", rows, views)
    atomic_write_json(out_dir / "stats.json", stats)
    atomic_write_text(out_dir / "summary.md", summary_md(stats))


def run_eda(
    root: str | Path,
    out: str | Path,
    layout: str = "auto",
    preprocessing: str = PIXEL_DEFAULTS.preprocessing,
    image_size: int = 256,
    max_images: int | None = None,
    resize: str = PIXEL_DEFAULTS.resize,
    crop_border: bool = PIXEL_DEFAULTS.crop_border,
    clahe_clip_limit: float = PIXEL_DEFAULTS.clahe_clip_limit,
    clahe_tile_grid: int = PIXEL_DEFAULTS.clahe_tile_grid,
    pca_size: int = 64,
    pca_components: int = 6,
    max_pca_images: int = 300,
    seed: int = 0,
    num_workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    progress: bool = True,
    figures: bool = True,
) -> dict[str, Any]:
    """Explore a labelled data set and write figures, stats.json and summary.md to `out`.

    Args:
        root: Data folder (any layout `discover` understands).
        out: Output folder (created); existing EDA files there need overwrite=True.
        layout: "auto", "nlm", "zindi" or "folders".
        preprocessing: Contrast step shown next to the decoded images ("clahe", "equalize",
            "none"), the same transform training uses.
        image_size: Side of the square every image is reduced to (as for training).
        max_images: Analyse a seeded, class-stratified subset of this many images.
        resize / crop_border: As data.resize / data.crop_border for training.
        clahe_clip_limit / clahe_tile_grid: CLAHE settings (as data.*).
        pca_size: Side of the downsample used for eigen-images.
        pca_components: Eigen-images shown per class.
        max_pca_images: Images per class kept for PCA (bounds memory).
        seed: Seed of the subset and PCA sample.
        num_workers: Threads decoding images.
        max_pixels: Decompression-bomb guard, as data.max_pixels.
        overwrite: Replace the files of an earlier EDA in `out`.
        progress: Show a tqdm progress bar.
        figures: Draw the PNG figures (False: numbers only, several seconds faster).

    Returns the content of stats.json (a dict).
    """
    t0 = time.perf_counter()
    _check_options(preprocessing, resize, image_size, pca_size)
    root = Path(root)
    found = discover(root, layout)  # before the output folder exists: a bad root leaves none
    out_dir = check_can_write(out, [*DATA_FILES, *FIGURES.values()], overwrite)
    records = _select(found, max_images, seed)
    settings = {
        "image_size": image_size,
        "resize": resize,
        "crop_border": crop_border,
        "preprocessing": preprocessing,
        "clahe_clip_limit": clahe_clip_limit,
        "clahe_tile_grid": clahe_tile_grid,
        "pca_size": pca_size,
    }
    pca_sample = _pca_sample(records, max_pca_images, seed)
    totals = _tally(records, root, settings, max_pixels, pca_sample, num_workers, progress)
    derived = _derived(totals, pca_components)
    drawn = (
        _figures(totals, derived, out_dir, (clahe_clip_limit, clahe_tile_grid)) if figures else {}
    )
    subset = None if len(records) == len(found) else {"max_images": max_images, "seed": seed}
    meta = _meta(root, layout, len(found), totals, subset, records)
    stats = _stats_doc(totals, derived, meta, settings)
    stats["figures"] = drawn
    stats["elapsed_s"] = round(time.perf_counter() - t0, 2)
    _write_outputs(out_dir, stats, derived["arrays"], totals.rows, totals.views)
    log.info(
        "EDA of %d images written to %s in %.1f s", len(totals.rows), out_dir, stats["elapsed_s"]
    )
    return stats
