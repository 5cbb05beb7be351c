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
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from tbclf.data.imageio import DEFAULT_MAX_PIXELS, RESIZE_MODES, crop_black_border, read_gray
from tbclf.data.layouts import discover
from tbclf.data.records import Record
from tbclf.data.splits import hash_files
from tbclf.data.transforms import PREPROCESSING, contrast_transform
from tbclf.eda import figures as F
from tbclf.eda.stats import (
    IMAGE_METRICS,
    METRIC_LABELS,
    MICHELSON_PERCENTILES,
    RunningImageMoments,
    file_format,
    histogram,
    intensity_stats,
    pca,
    summarize,
)
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

CLASS_KEYS = {0: "healthy", 1: "tb", None: "unlabeled"}
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


def _class_key(label: int | None) -> str:
    return CLASS_KEYS.get(label, str(label))


def _fit_long_side(img: np.ndarray, size: int) -> np.ndarray:
    """Shrink (INTER_AREA) or enlarge so the longer side is `size`, aspect ratio kept; the same
    geometry fit_to_square uses before padding, so padding that result reproduces the cache."""
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    if (nh, nw) == (h, w):
        return img
    interp = cv2.INTER_AREA if nh <= h and nw <= w else cv2.INTER_LINEAR
    return cv2.resize(img, (nw, nh), interpolation=interp)


def _square(
    img_fit: np.ndarray, img_full: np.ndarray, size: int, resize: str
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The size x size model view plus the slices of it that hold image (not padding)."""
    if resize == "squash":
        sq = (
            img_full
            if img_full.shape == (size, size)
            else cv2.resize(img_full, (size, size), interpolation=cv2.INTER_AREA)
        )
        return sq, (slice(0, size), slice(0, size))
    nh, nw = img_fit.shape
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.zeros((size, size), dtype=np.uint8)
    out[top : top + nh, left : left + nw] = img_fit
    return out, (slice(top, top + nh), slice(left, left + nw))


def _select(records: list[Record], max_images: int | None, seed: int) -> list[Record]:
    """A seeded subset stratified by class (each present class keeps at least one image)."""
    if max_images is None or max_images >= len(records):
        return records
    if max_images < 1:
        raise ConfigError(f"max_images={max_images} must be >= 1 (or None for all images).")
    rng = np.random.default_rng(seed)
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_class[r.label].append(i)
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
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_class[r.label].append(i)
    keep: set[int] = set()
    for idx in by_class.values():
        keep.update(rng.choice(idx, size=min(cap, len(idx)), replace=False).tolist())
    return keep


class _Loader:
    """Reads one image and derives everything the EDA needs from it (runs in worker threads;
    cv2 and numpy release the GIL for the heavy parts)."""

    def __init__(
        self,
        views: dict[str, Any],
        image_size: int,
        resize: str,
        crop_border: bool,
        max_pixels: int,
        pca_size: int,
        pca_keep: set[int],
    ) -> None:
        self.views = views
        self.image_size = image_size
        self.resize = resize
        self.crop_border = crop_border
        self.max_pixels = max_pixels
        self.pca_size = pca_size
        self.pca_keep = pca_keep

    def __call__(self, item: tuple[int, Record]) -> dict[str, Any]:
        i, record = item
        out: dict[str, Any] = {"index": i, "record": record}
        try:
            out["header"] = file_format(Path(record.path))
            full = read_gray(Path(record.path), max_pixels=self.max_pixels)
        except (DataError, OSError) as exc:
            out["error"] = str(exc)
            return out
        out["decoded_shape"] = full.shape
        if self.crop_border:
            full = crop_black_border(full)
        fit = _fit_long_side(full, self.image_size)
        square, box = _square(fit, full, self.image_size, self.resize)
        del full
        out["fit"] = fit
        out["squares"] = {}
        out["stats"] = {}
        out["hists"] = {}
        for view, transform in self.views.items():
            sq = square if transform is None else transform(image=square)["image"]
            region = sq[box]
            out["squares"][view] = sq
            out["stats"][view] = intensity_stats(region)
            out["hists"][view] = histogram(region)
        if i in self.pca_keep:
            out["pca"] = cv2.resize(
                square, (self.pca_size, self.pca_size), interpolation=cv2.INTER_AREA
            ).astype(np.float32)
        return out


def run_eda(
    root: str | Path,
    out: str | Path,
    layout: str = "auto",
    preprocessing: str = "clahe",
    image_size: int = 256,
    max_images: int | None = None,
    resize: str = "pad",
    crop_border: bool = True,
    clahe_clip_limit: float = 2.0,
    clahe_tile_grid: int = 8,
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
    if preprocessing not in PREPROCESSING:
        raise ConfigError(f"preprocessing={preprocessing!r} is not one of {PREPROCESSING}.")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize={resize!r} is not one of {RESIZE_MODES}.")
    if image_size < 8 or pca_size < 4:
        raise ConfigError(f"image_size={image_size} must be >= 8 and pca_size={pca_size} >= 4.")
    out_dir = check_can_write(out, [*DATA_FILES, *FIGURES.values()], overwrite)
    root = Path(root)
    found = discover(root, layout)
    records = _select(found, max_images, seed)
    views: dict[str, Any] = {"raw": None}
    if preprocessing != "none":
        views[preprocessing] = contrast_transform(preprocessing, clahe_clip_limit, clahe_tile_grid)
    classes = [
        k for k in ("healthy", "tb", "unlabeled") if any(_class_key(r.label) == k for r in records)
    ]
    classes += sorted({_class_key(r.label) for r in records} - set(classes))
    shape = (image_size, image_size)
    moments = {v: {c: RunningImageMoments(shape) for c in ["all", *classes]} for v in views}
    values: dict[str, dict[str, dict[str, list[float]]]] = {
        v: {c: {m: [] for m in IMAGE_METRICS} for c in ["all", *classes]} for v in views
    }
    by_source_vals: dict[str, dict[str, list[float]]] = defaultdict(
        lambda: {m: [] for m in IMAGE_METRICS}
    )
    pca_stacks: dict[str, list[np.ndarray]] = defaultdict(list)
    counts: dict[str, Counter] = defaultdict(Counter)
    sizes: dict[str, Counter] = defaultdict(Counter)
    size_points: dict[str, list[tuple[int, int]]] = defaultdict(list)
    depths: dict[str, Counter] = defaultdict(Counter)
    unreadable: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []
    example: tuple[np.ndarray, Record] | None = None

    loader = _Loader(
        views,
        image_size,
        resize,
        crop_border,
        max_pixels,
        pca_size,
        _pca_sample(records, max_pca_images, seed),
    )
    items = list(enumerate(records))
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = pool.map(loader, items) if num_workers > 1 else map(loader, items)
        for res in tqdm(results, total=len(items), desc="EDA", unit="img", disable=not progress):
            r: Record = res["record"]
            if "error" in res:
                unreadable.append({"id": r.id, "path": str(r.path), "error": res["error"]})
                continue
            cls = _class_key(r.label)
            counts[r.source][cls] += 1
            hdr = res["header"]
            h, w = res["decoded_shape"]
            sizes[r.source][f"{w}x{h}"] += 1
            size_points[r.source].append((w, h))
            depth = f"{hdr['format']} {hdr['bit_depth']}-bit {hdr['color']}"
            depths[r.source][depth] += 1
            row: dict[str, Any] = {
                "id": r.id,
                "source": r.source,
                "label": r.label,
                "path": str(r.path),
                "width": w,
                "height": h,
                "format": hdr["format"],
                "bit_depth": hdr["bit_depth"],
                "color": hdr["color"],
            }
            for view in views:
                sq = res["squares"][view]
                st = res["stats"][view]
                for group in ("all", cls):
                    moments[view][group].add(sq)
                    for m in IMAGE_METRICS:
                        values[view][group][m].append(st[m])
                for m in IMAGE_METRICS:
                    row[f"{m}_{view}"] = round(st[m], 6)
            for m in IMAGE_METRICS:
                by_source_vals[r.source][m].append(res["stats"]["raw"][m])
            if "pca" in res:
                pca_stacks[cls].append(res["pca"])
            if example is None or (example[1].label != 1 and r.label == 1):
                example = (res["fit"], r)
            rows.append(row)
    n_ok = len(rows)
    if n_ok == 0:
        raise DataError(
            f"None of the {len(records)} images under {root} could be read; first error: "
            f"{unreadable[0]['error'] if unreadable else 'none'}"
        )

    # Duplicates: byte-identical files (the hash the splitter uses to keep copies together).
    hashes = hash_files(records)
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[hashes[Path(r.path)]].append(r)
    dup_groups = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: str(g[0].path))
    conflicts = [g for g in dup_groups if len({x.label for x in g}) > 1]

    # Arrays and PCA.
    arrays: dict[str, np.ndarray] = {}
    means = {v: {c: moments[v][c].mean for c in classes} for v in views}
    stds = {v: {c: moments[v][c].std for c in classes} for v in views}
    for v in views:
        for c in ["all", *classes]:
            arrays[f"mean_{v}_{c}"] = moments[v][c].mean.astype(np.float32)
            arrays[f"std_{v}_{c}"] = moments[v][c].std.astype(np.float32)
    diffs: dict[str, np.ndarray] = {}
    if all(c in classes and moments["raw"][c].n for c in ("tb", "healthy")):
        for v in views:
            diffs[v] = moments[v]["tb"].mean - moments[v]["healthy"].mean
            arrays[f"diff_{v}"] = diffs[v].astype(np.float32)
    pcas: dict[str, dict[str, Any]] = {}
    for c in classes:
        stack = pca_stacks.get(c)
        if stack and len(stack) >= 2:
            res = pca(np.stack(stack), pca_components)
            res["n_images"] = len(stack)
            pcas[c] = res
            arrays[f"pca_{c}_components"] = res["components"].astype(np.float32)
            arrays[f"pca_{c}_mean"] = res["mean"].astype(np.float32)

    # Figures.
    fig_files: dict[str, str] = {}

    def emit(name: str, make) -> None:
        if figures:
            save_figure(make(), out_dir / FIGURES[name])
            fig_files[name] = FIGURES[name]

    by_source_counts = {s: dict(c) for s, c in counts.items()}
    emit("counts", lambda: F.counts_figure(by_source_counts, classes))
    emit("sizes", lambda: F.sizes_figure(size_points))
    emit("mean_std", lambda: F.mean_std_figure(means, stds, classes))
    if diffs:
        emit("difference", lambda: F.difference_figure(diffs))
    emit(
        "variability",
        lambda: F.distributions_figure(
            {v: {c: values[v][c] for c in classes} for v in views},
            classes,
            "Per-image intensity and contrast by class",
        ),
    )
    src_names = sorted(by_source_vals)
    palette = dict(
        zip(
            src_names,
            ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
            * 4,
            strict=False,
        )
    )
    emit(
        "by_source",
        lambda: F.distributions_figure(
            {"raw": by_source_vals},
            src_names,
            "Per-image intensity and contrast by source",
            colors=palette,
        ),
    )
    emit(
        "histograms",
        lambda: F.histograms_figure(
            {v: {c: moments[v][c].hist for c in classes} for v in views}, classes
        ),
    )
    if pcas:
        emit("eigen", lambda: F.eigen_figure(pcas))
    if example is not None:
        ex_img, ex_rec = example
        emit(
            "equalization",
            lambda: F.equalization_figure(
                ex_img,
                clahe_clip_limit,
                clahe_tile_grid,
                f"Contrast enhancement on {ex_rec.id} "
                f"({_class_key(ex_rec.label)}, {ex_rec.source})",
            ),
        )

    elapsed = time.perf_counter() - t0
    stats: dict[str, Any] = {
        "root": str(root),
        "layout": layout,
        "n_found": len(found),
        "n_analysed": n_ok,
        "subset": None if len(records) == len(found) else {"max_images": max_images, "seed": seed},
        "settings": {
            "image_size": image_size,
            "resize": resize,
            "crop_border": crop_border,
            "preprocessing": preprocessing,
            "clahe_clip_limit": clahe_clip_limit,
            "clahe_tile_grid": clahe_tile_grid,
            "pca_size": pca_size,
            "michelson_percentiles": list(MICHELSON_PERCENTILES),
        },
        "views": list(views),
        "classes": classes,
        "counts": {
            "by_class": {c: sum(counts[s][c] for s in counts) for c in classes},
            "by_source": {
                s: {**{c: counts[s][c] for c in classes}, "total": sum(counts[s].values())}
                for s in sorted(counts)
            },
        },
        "image_sizes": {s: dict(sizes[s].most_common()) for s in sorted(sizes)},
        "bit_depths": {s: dict(depths[s].most_common()) for s in sorted(depths)},
        "duplicates": {
            "n_groups": len(dup_groups),
            "n_redundant_files": sum(len(g) - 1 for g in dup_groups),
            "label_conflicts": len(conflicts),
            "groups": [[x.id for x in g] for g in dup_groups],
        },
        "unreadable": unreadable,
        "intensity": {
            v: {
                c: {m: summarize(values[v][c][m]) for m in IMAGE_METRICS} for c in ["all", *classes]
            }
            for v in views
        },
        "intensity_by_source": {
            s: {m: summarize(by_source_vals[s][m]) for m in IMAGE_METRICS} for s in src_names
        },
        "mean_image": {
            v: {
                c: {
                    "mean": float(moments[v][c].mean.mean()),
                    "mean_pixel_std": float(moments[v][c].std.mean()),
                }
                for c in ["all", *classes]
            }
            for v in views
        },
        "class_difference": {
            v: {
                "mean": float(d.mean()),
                "min": float(d.min()),
                "max": float(d.max()),
                "mean_abs": float(np.abs(d).mean()),
            }
            for v, d in diffs.items()
        },
        "pca": {
            c: {
                "n_images": int(p["n_images"]),
                "explained_variance_ratio": [float(x) for x in p["explained_variance_ratio"]],
            }
            for c, p in pcas.items()
        },
        "figures": fig_files,
        "elapsed_s": round(elapsed, 2),
    }
    np_buf = io.BytesIO()
    np.savez_compressed(np_buf, **arrays)
    atomic_write_bytes(out_dir / "arrays.npz", np_buf.getvalue())
    _write_rows(out_dir / "per_image.csv", rows, list(views))
    atomic_write_json(out_dir / "stats.json", stats)
    atomic_write_text(out_dir / "summary.md", _summary_md(stats))
    log.info("EDA of %d images written to %s in %.1f s", n_ok, out_dir, elapsed)
    return stats


def _write_rows(path: Path, rows: list[dict[str, Any]], views: Sequence[str]) -> None:
    fields = ["id", "source", "label", "path", "width", "height", "format", "bit_depth", "color"]
    fields += [f"{m}_{v}" for v in views for m in IMAGE_METRICS]
    write_csv_dicts(path, fields, rows)


def _img(fig: dict[str, str], key: str, alt: str) -> str:
    """Markdown image with a relative link, or nothing when the figure was not drawn."""
    return f"![{alt}]({fig[key]})" if key in fig else ""


def _f(v: Any, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _summary_md(s: dict[str, Any]) -> str:
    classes = s["classes"]
    views = s["views"]
    fig = s["figures"]
    st = s["settings"]
    lines = [
        "# Exploratory data analysis",
        "",
        f"Data: `{s['root']}` (layout {s['layout']}). Analysed {s['n_analysed']} of "
        f"{s['n_found']} images"
        + (f" (seeded class-stratified subset, seed {s['subset']['seed']})" if s["subset"] else "")
        + f", reduced to {st['image_size']}x{st['image_size']} ({st['resize']}, crop_border="
        f"{st['crop_border']}); preprocessing shown: {st['preprocessing']}. "
        f"Took {s['elapsed_s']:.1f} s.",
        "",
        "## Counts",
        "",
        "| source | " + " | ".join(classes) + " | total |",
        "|---|" + "---|" * (len(classes) + 1),
    ]
    for src, c in s["counts"]["by_source"].items():
        lines.append(f"| {src} | " + " | ".join(str(c[k]) for k in classes) + f" | {c['total']} |")
    total = s["counts"]["by_class"]
    lines.append(
        "| **all** | "
        + " | ".join(f"**{total[k]}**" for k in classes)
        + f" | **{sum(total.values())}** |"
    )
    lines += ["", _img(fig, "counts", "counts"), ""]
    lines += [
        "Class balance differs between sources. A model can then learn *which hospital* an image "
        "comes from (scanner, export, text markers) instead of *what the lungs show*: check the "
        "per-source metrics in the evaluation report.",
        "",
        "## Stored sizes and bit depths",
        "",
        "| source | sizes (width x height: count) | encodings |",
        "|---|---|---|",
    ]
    for src in s["image_sizes"]:
        sz = s["image_sizes"][src]
        top = ", ".join(f"{k}: {v}" for k, v in list(sz.items())[:4])
        if len(sz) > 4:
            top += f", … ({len(sz)} distinct)"
        enc = ", ".join(f"{k}: {v}" for k, v in s["bit_depths"][src].items())
        lines.append(f"| {src} | {top} | {enc} |")
    lines += ["", _img(fig, "sizes", "sizes"), ""]
    d = s["duplicates"]
    lines += ["## Duplicates", ""]
    if d["n_groups"]:
        lines.append(
            f"{d['n_groups']} groups of byte-identical files ({d['n_redundant_files']} redundant "
            f"copies; {d['label_conflicts']} with conflicting labels). Splits keep each group on "
            "one side, so copies never leak from training into test:"
        )
        lines.append("")
        for g in d["groups"][:30]:
            lines.append("- " + " = ".join(f"`{x}`" for x in g))
        if d["n_groups"] > 30:
            lines.append(f"- … {d['n_groups'] - 30} more (stats.json)")
    else:
        lines.append("No byte-identical files found.")
    if s["unreadable"]:
        lines += ["", f"**{len(s['unreadable'])} unreadable images** (skipped):", ""]
        lines += [f"- `{u['path']}`: {u['error']}" for u in s["unreadable"][:20]]
    lines += [
        "",
        "## Mean and standard-deviation images",
        "",
        "Pixel-wise mean and standard deviation over all images of a class, as decoded and after "
        "the preprocessing the model sees. Sharp structures in the mean (text markers, borders) "
        "sit in the same place in many images; bright areas in the std image vary most.",
        "",
        _img(fig, "mean_std", "mean and std images"),
        "",
    ]
    if s["class_difference"]:
        lines += [
            "Difference of the class means (TB − healthy; red: brighter on average in TB). "
            "Differences outside the lungs (borders, markers, overall brightness) point to "
            "acquisition differences between the classes rather than disease.",
            "",
            _img(fig, "difference", "class difference"),
            "",
            "| view | mean difference | min | max | mean absolute |",
            "|---|---|---|---|---|",
        ]
        for v, cd in s["class_difference"].items():
            lines.append(
                f"| {v} | {_f(cd['mean'])} | {_f(cd['min'])} | {_f(cd['max'])} | "
                f"{_f(cd['mean_abs'])} |"
            )
        lines.append("")
    lines += [
        "## Variability: intensity and contrast per image",
        "",
        "RMS contrast = standard deviation of the intensities scaled to [0, 1]; Michelson "
        "contrast = (p99 − p1)/(p99 + p1) of the intensities (robust percentiles instead of "
        "max/min so a single marker does not dominate). Median [interquartile range]:",
        "",
        "| view | class | " + " | ".join(METRIC_LABELS[m] for m in IMAGE_METRICS) + " |",
        "|---|---|" + "---|" * len(IMAGE_METRICS),
    ]
    for v in views:
        for c in ["all", *classes]:
            cells = []
            for m in IMAGE_METRICS:
                q = s["intensity"][v][c][m]
                digits = 1 if m in ("mean", "std") else 3
                cells.append(
                    f"{_f(q['median'], digits)} [{_f(q['p25'], digits)}, {_f(q['p75'], digits)}]"
                )
            lines.append(f"| {v} | {c} | " + " | ".join(cells) + " |")
    lines += [
        "",
        _img(fig, "variability", "variability by class"),
        "",
        "The same measures by source (as decoded): sources that differ here are easy for a model "
        "to tell apart.",
        "",
        _img(fig, "by_source", "variability by source"),
        "",
        "## Intensity histograms",
        "",
        _img(fig, "histograms", "histograms"),
        "",
    ]
    if "equalization" in fig:
        lines += [
            "Global histogram equalisation flattens the CDF of the whole image and over-amplifies "
            "the background and noise; CLAHE equalises small tiles with a clip limit, which "
            "brings out lung texture while keeping the overall look.",
            "",
            _img(fig, "equalization", "equalisation example"),
            "",
        ]
    if s["pca"]:
        lines += [
            "## Eigen-images",
            "",
            f"Principal components of each class on {st['pca_size']}x{st['pca_size']} "
            "downsamples (as decoded). The first components usually capture brightness, "
            "patient size and positioning rather than pathology.",
            "",
            _img(fig, "eigen", "eigen-images"),
            "",
            "| class | images | explained variance of the top components |",
            "|---|---|---|",
        ]
        for c, p in s["pca"].items():
            ev = ", ".join(f"{100 * x:.1f}%" for x in p["explained_variance_ratio"])
            lines.append(f"| {c} | {p['n_images']} | {ev} |")
        lines.append("")
    lines += [
        "Files: `stats.json` (all numbers), `per_image.csv` (one row per image), "
        "`arrays.npz` (mean/std/difference images and eigen-images).",
        "",
    ]
    return "\n".join(lines)
