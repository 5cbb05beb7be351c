"""One pass over the images: what each image gives the EDA, and the running totals over all.

Images are decoded with the data package's reader and reduced with its geometry
(`imageio.square_placement`), so the statistics describe exactly the squares a model is fed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tbclf.data.imageio import (
    crop_black_border,
    file_info,
    fit_to_square,
    read_gray,
    square_placement,
)
from tbclf.data.records import Record
from tbclf.eda.stats import IMAGE_METRICS, RunningImageMoments, histogram, intensity_stats
from tbclf.errors import DataError

CLASS_KEYS = {0: "healthy", 1: "tb", None: "unlabeled"}


def class_key(label: int | None) -> str:
    return CLASS_KEYS.get(label, str(label))


class ImageLoader:
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
            out["header"] = file_info(Path(record.path))
            full = read_gray(Path(record.path), max_pixels=self.max_pixels)
        except (DataError, OSError) as exc:
            out["error"] = str(exc)
            return out
        out["decoded_shape"] = full.shape
        if self.crop_border:
            full = crop_black_border(full)
        square = fit_to_square(full, self.image_size, self.resize)
        top, left, nh, nw = square_placement(*full.shape, self.image_size, self.resize)
        box = (slice(top, top + nh), slice(left, left + nw))  # the image, not the padding
        del full
        out["fit"] = square[box]
        out["squares"], out["stats"], out["hists"] = {}, {}, {}
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


def _metric_lists() -> dict[str, list[float]]:
    return {m: [] for m in IMAGE_METRICS}


@dataclass
class Totals:
    """Running totals over the analysed images, per view, class and source."""

    views: list[str]
    classes: list[str]
    image_size: int
    moments: dict[str, dict[str, RunningImageMoments]] = field(init=False)
    values: dict[str, dict[str, dict[str, list[float]]]] = field(init=False)
    by_source: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(_metric_lists)
    )
    pca_stacks: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    sizes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    size_points: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    depths: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    unreadable: list[dict[str, str]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    example: tuple[np.ndarray, Record] | None = None

    def __post_init__(self) -> None:
        shape = (self.image_size, self.image_size)
        groups = ["all", *self.classes]
        self.moments = {v: {c: RunningImageMoments(shape) for c in groups} for v in self.views}
        self.values = {v: {c: _metric_lists() for c in groups} for v in self.views}

    def add(self, res: dict[str, Any]) -> None:
        r: Record = res["record"]
        if "error" in res:
            self.unreadable.append({"id": r.id, "path": str(r.path), "error": res["error"]})
            return
        cls = class_key(r.label)
        self.counts[r.source][cls] += 1
        hdr = res["header"]
        h, w = res["decoded_shape"]
        self.sizes[r.source][f"{w}x{h}"] += 1
        self.size_points[r.source].append((w, h))
        self.depths[r.source][f"{hdr['format']} {hdr['bit_depth']}-bit {hdr['color']}"] += 1
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
        for view in self.views:
            stats = res["stats"][view]
            for group in ("all", cls):
                self.moments[view][group].add(res["squares"][view])
                for m in IMAGE_METRICS:
                    self.values[view][group][m].append(stats[m])
            for m in IMAGE_METRICS:
                row[f"{m}_{view}"] = round(stats[m], 6)
        for m in IMAGE_METRICS:
            self.by_source[r.source][m].append(res["stats"]["raw"][m])
        if "pca" in res:
            self.pca_stacks[cls].append(res["pca"])
        if self.example is None or (self.example[1].label != 1 and r.label == 1):
            self.example = (res["fit"], r)
        self.rows.append(row)
