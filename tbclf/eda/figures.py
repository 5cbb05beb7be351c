"""EDA figures. Each returns an Agg Figure; run.py saves them next to stats.json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from matplotlib.figure import Figure

from tbclf.eda.stats import IMAGE_METRICS, METRIC_LABELS
from tbclf.io import new_figure

CLASS_COLORS = {"healthy": "#2c7bb6", "tb": "#d7191c", "unlabeled": "#7f7f7f"}
CLASS_TITLES = {"healthy": "Healthy", "tb": "TB", "unlabeled": "Unlabeled"}
VIEW_TITLES = {"raw": "as decoded", "clahe": "after CLAHE", "equalize": "after hist. equalisation"}


def _view_title(view: str) -> str:
    return VIEW_TITLES.get(view, view)


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def counts_figure(by_source: Mapping[str, Mapping[str, int]], classes: Sequence[str]) -> Figure:
    sources = sorted(by_source)
    fig = new_figure(max(4.5, 1.1 * len(sources) + 2), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(sources))
    width = 0.8 / max(len(classes), 1)
    for i, cls in enumerate(classes):
        vals = [by_source[s].get(cls, 0) for s in sources]
        bars = ax.bar(
            x + (i - (len(classes) - 1) / 2) * width,
            vals,
            width,
            color=CLASS_COLORS.get(cls),
            label=CLASS_TITLES.get(cls, cls),
        )
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, sources)
    ax.set(ylabel="Images", title="Images per source and class")
    ax.legend(fontsize=8)
    return fig


def mean_std_figure(
    means: Mapping[str, Mapping[str, np.ndarray]],
    stds: Mapping[str, Mapping[str, np.ndarray]],
    classes: Sequence[str],
) -> Figure:
    """Rows: views (as decoded, after preprocessing); columns: mean per class, std per class."""
    views = list(means)
    ncol = 2 * len(classes)
    fig = new_figure(2.3 * ncol + 0.8, 2.5 * len(views) + 0.4)
    axes = fig.subplots(len(views), ncol, squeeze=False)
    for r, view in enumerate(views):
        for c, cls in enumerate(classes):
            ax = axes[r][c]
            im = ax.imshow(means[view][cls], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"Mean, {CLASS_TITLES.get(cls, cls)}\n{_view_title(view)}", fontsize=9)
            _off(ax)
            ax = axes[r][len(classes) + c]
            ims = ax.imshow(
                stds[view][cls],
                cmap="magma",
                vmin=0,
                vmax=max(float(np.max([stds[view][k].max() for k in classes])), 1),
            )
            ax.set_title(f"Std, {CLASS_TITLES.get(cls, cls)}\n{_view_title(view)}", fontsize=9)
            _off(ax)
        fig.colorbar(im, ax=axes[r][: len(classes)].tolist(), shrink=0.8, label="gray level")
        fig.colorbar(ims, ax=axes[r][len(classes) :].tolist(), shrink=0.8, label="gray levels")
    fig.suptitle("Mean and standard-deviation images per class (pixel-wise over images)")
    return fig


def difference_figure(diffs: Mapping[str, np.ndarray]) -> Figure:
    """Mean TB minus mean healthy, diverging map with symmetric limits (red: brighter in TB)."""
    views = list(diffs)
    fig = new_figure(3.4 * len(views) + 0.6, 3.6)
    axes = fig.subplots(1, len(views), squeeze=False)[0]
    for ax, view in zip(axes, views, strict=True):
        d = diffs[view]
        lim = max(float(np.max(np.abs(d))), 1e-6)
        im = ax.imshow(d, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"Mean TB − mean healthy\n{_view_title(view)}", fontsize=9)
        _off(ax)
        fig.colorbar(im, ax=ax, shrink=0.8, label="gray levels")
    return fig


def distributions_figure(
    values: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    groups: Sequence[str],
    title: str,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Violins of each per-image metric (columns) per group, one row per view."""
    views = list(values)
    fig = new_figure(3.2 * len(IMAGE_METRICS), 2.9 * len(views) + 0.4)
    axes = fig.subplots(len(views), len(IMAGE_METRICS), squeeze=False)
    for r, view in enumerate(views):
        for c, metric in enumerate(IMAGE_METRICS):
            ax = axes[r][c]
            data = [np.asarray(values[view][g][metric], dtype=float) for g in groups]
            present = [i for i, d in enumerate(data) if d.size]
            if present:
                parts = ax.violinplot(
                    [data[i] for i in present], positions=present, showmedians=True, widths=0.8
                )
                for body, i in zip(parts["bodies"], present, strict=True):
                    color = (colors or CLASS_COLORS).get(groups[i], "#7f7f7f")
                    body.set_facecolor(color)
                    body.set_alpha(0.5)
                for key in ("cmins", "cmaxes", "cbars", "cmedians"):
                    parts[key].set_color("#333333")
                    parts[key].set_linewidth(1.0)
            ax.set_xticks(
                range(len(groups)),
                [
                    f"{CLASS_TITLES.get(g, g)}\n(n={d.size})"
                    for g, d in zip(groups, data, strict=True)
                ],
                fontsize=8,
            )
            ax.set_title(f"{METRIC_LABELS[metric]}\n{_view_title(view)}", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    return fig


def histograms_figure(
    hists: Mapping[str, Mapping[str, np.ndarray]], classes: Sequence[str]
) -> Figure:
    """Pixel intensity distribution per class (normalised to a density), one panel per view."""
    views = list(hists)
    fig = new_figure(4.6 * len(views), 3.4)
    axes = fig.subplots(1, len(views), squeeze=False)[0]
    levels = np.arange(256)
    for ax, view in zip(axes, views, strict=True):
        for cls in classes:
            h = hists[view][cls].astype(float)
            if h.sum() == 0:
                continue
            ax.plot(
                levels,
                h / h.sum(),
                color=CLASS_COLORS.get(cls),
                label=CLASS_TITLES.get(cls, cls),
                lw=1.5,
            )
        ax.set(
            xlabel="Gray level",
            ylabel="Fraction of pixels",
            xlim=(0, 255),
            title=f"Intensity histogram, {_view_title(view)}",
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def eigen_figure(pcas: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Per class: mean image, then the top principal components with explained variance."""
    classes = [c for c in pcas if pcas[c]["components"].shape[0] > 0]
    k = max((pcas[c]["components"].shape[0] for c in classes), default=0)
    fig = new_figure(1.9 * (k + 1) + 0.4, 2.2 * max(len(classes), 1) + 0.3)
    axes = fig.subplots(max(len(classes), 1), k + 1, squeeze=False)
    for r, cls in enumerate(classes):
        res = pcas[cls]
        ax = axes[r][0]
        ax.imshow(res["mean"], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{CLASS_TITLES.get(cls, cls)} mean\n(n={int(res['n_images'])})", fontsize=8)
        _off(ax)
        comps = res["components"]
        for j in range(k):
            ax = axes[r][j + 1]
            _off(ax)
            if j >= comps.shape[0]:
                ax.axis("off")
                continue
            lim = float(np.max(np.abs(comps[j]))) or 1.0
            ax.imshow(comps[j], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(
                f"PC{j + 1}: {100 * res['explained_variance_ratio'][j]:.1f}% var.", fontsize=8
            )
    fig.suptitle("Eigen-images (PCA per class on downsampled images)")
    return fig


def equalization_figure(img: np.ndarray, clip_limit: float, tile_grid: int, title: str) -> Figure:
    """One image before / after global histogram equalisation and after CLAHE (cv2), each with
    its histogram and cumulative distribution: shows why CLAHE is the default preprocessing."""
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(tile_grid, tile_grid))
    versions = [
        ("Original", img),
        ("Histogram equalisation", cv2.equalizeHist(img)),
        (f"CLAHE (clip {clip_limit:g}, {tile_grid}x{tile_grid} tiles)", clahe.apply(img)),
    ]
    fig = new_figure(11, 6.6)
    axes = fig.subplots(2, 3, height_ratios=[2.2, 1])
    for c, (name, im) in enumerate(versions):
        ax = axes[0][c]
        ax.imshow(im, cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=10)
        _off(ax)
        ax = axes[1][c]
        h = np.bincount(im.ravel(), minlength=256).astype(float)
        ax.bar(np.arange(256), h / h.sum(), width=1.0, color="#555555")
        ax.set(xlim=(0, 255), xlabel="Gray level")
        if c == 0:
            ax.set_ylabel("Fraction of pixels")
        ax2 = ax.twinx()
        ax2.plot(np.arange(256), np.cumsum(h) / h.sum(), color="#d7191c", lw=1.5)
        ax2.set_ylim(0, 1.02)
        if c == 2:
            ax2.set_ylabel("CDF", color="#d7191c")
    fig.suptitle(title)
    return fig


def sizes_figure(sizes: Mapping[str, Sequence[tuple[int, int]]]) -> Figure:
    """Stored width x height per source (originals differ by source: a shortcut risk)."""
    fig = new_figure(4.8, 4.2)
    ax = fig.add_subplot()
    for src in sorted(sizes):
        wh = np.asarray(sizes[src], dtype=float).reshape(-1, 2)
        if wh.size:
            ax.scatter(wh[:, 0], wh[:, 1], s=12, alpha=0.6, label=f"{src} (n={len(wh)})")
    ax.set(xlabel="Width (px)", ylabel="Height (px)", title="Stored image sizes")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
