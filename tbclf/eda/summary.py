"""summary.md of an EDA: the numbers of stats.json in words, with the figures embedded."""

from __future__ import annotations

from typing import Any

from tbclf.eda.stats import IMAGE_METRICS, METRIC_LABELS


def _img(fig: dict[str, str], key: str, alt: str) -> str:
    """Markdown image with a relative link, or nothing when the figure was not drawn."""
    return f"![{alt}]({fig[key]})" if key in fig else ""


def _f(v: Any, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def balance_sentence(by_source: dict[str, dict[str, int]], classes: list[str]) -> str:
    """The warning about class balance across sources, only when it is true."""
    labelled = [c for c in classes if c in ("healthy", "tb")]
    if len(by_source) < 2 or len(labelled) < 2:
        return ""
    shares = set()
    for counts in by_source.values():
        n = sum(counts.get(c, 0) for c in labelled)
        if n:
            shares.add(round(counts.get("tb", 0) / n, 2))
    if len(shares) <= 1:
        return "Every source has the same share of TB images."
    return (
        "Class balance differs between sources. A model can then learn *which hospital* an image "
        "comes from (scanner, export, text markers) instead of *what the lungs show*: check the "
        "per-source metrics in the evaluation report."
    )


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table's lines: every section of the summary lays its numbers out the same."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _table_section(title: str, header: list[str], rows: list[list[Any]], figure: str) -> list[str]:
    """A section that is a table with its figure below it."""
    return [f"## {title}", "", *_table(header, rows), "", figure, ""]


def summary_md(s: dict[str, Any]) -> str:
    """The EDA in words for a reader of the data, not of stats.json: one section per
    question (how many, how stored, duplicated, how the classes and sources differ)."""
    lines = [
        *_intro(s),
        *_counts(s),
        *_sizes(s),
        *_duplicates(s),
        *_mean_images(s),
        *_variability(s),
        *_eigen_images(s),
        "Files: `stats.json` (all numbers), `per_image.csv` (one row per image), "
        "`arrays.npz` (mean/std/difference images and eigen-images).",
        "",
    ]
    return "\n".join(lines)


def _intro(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    return [
        "# Exploratory data analysis",
        "",
        f"Data: `{s['root']}` (layout {s['layout']}). Analysed {s['n_analysed']} of "
        f"{s['n_found']} images"
        + (f" (seeded class-stratified subset, seed {s['subset']['seed']})" if s["subset"] else "")
        + f", reduced to {st['image_size']}x{st['image_size']} ({st['resize']}, crop_border="
        f"{st['crop_border']}); preprocessing shown: {st['preprocessing']}. "
        f"Took {s['elapsed_s']:.1f} s.",
        "",
    ]


def _counts(s: dict[str, Any]) -> list[str]:
    classes = s["classes"]
    by_source = s["counts"]["by_source"]
    total = s["counts"]["by_class"]
    rows = [[src, *(c[k] for k in classes), c["total"]] for src, c in by_source.items()]
    rows.append(["**all**", *(f"**{total[k]}**" for k in classes), f"**{sum(total.values())}**"])
    balance = balance_sentence(by_source, classes)
    figure = _img(s["figures"], "counts", "counts")
    return [
        *_table_section("Counts", ["source", *classes, "total"], rows, figure),
        *([balance, ""] if balance else []),
    ]


def _sizes(s: dict[str, Any]) -> list[str]:
    rows = []
    for src, sz in s["image_sizes"].items():
        top = ", ".join(f"{k}: {v}" for k, v in list(sz.items())[:4])
        if len(sz) > 4:
            top += f", … ({len(sz)} distinct)"
        enc = ", ".join(f"{k}: {v}" for k, v in s["bit_depths"][src].items())
        rows.append([src, top, enc])
    header = ["source", "sizes (width x height: count)", "encodings"]
    figure = _img(s["figures"], "sizes", "sizes")
    return _table_section("Stored sizes and bit depths", header, rows, figure)


def _duplicates(s: dict[str, Any]) -> list[str]:
    d = s["duplicates"]
    lines = ["## Duplicates", ""]
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
    return lines


def _mean_images(s: dict[str, Any]) -> list[str]:
    fig = s["figures"]
    lines = [
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
    if not s["class_difference"]:
        return lines
    rows = [
        [v, _f(cd["mean"]), _f(cd["min"]), _f(cd["max"]), _f(cd["mean_abs"])]
        for v, cd in s["class_difference"].items()
    ]
    return [
        *lines,
        "Difference of the class means (TB − healthy; red: brighter on average in TB). "
        "Differences outside the lungs (borders, markers, overall brightness) point to "
        "acquisition differences between the classes rather than disease.",
        "",
        _img(fig, "difference", "class difference"),
        "",
        *_table(["view", "mean difference", "min", "max", "mean absolute"], rows),
        "",
    ]


def _variability(s: dict[str, Any]) -> list[str]:
    fig = s["figures"]
    rows = []
    for v in s["views"]:
        for c in ["all", *s["classes"]]:
            cells = []
            for m in IMAGE_METRICS:
                q = s["intensity"][v][c][m]
                digits = 1 if m in ("mean", "std") else 3
                cells.append(
                    f"{_f(q['median'], digits)} [{_f(q['p25'], digits)}, {_f(q['p75'], digits)}]"
                )
            rows.append([v, c, *cells])
    lines = [
        "## Variability: intensity and contrast per image",
        "",
        "RMS contrast = standard deviation of the intensities scaled to [0, 1]; Michelson "
        "contrast = (p99 − p1)/(p99 + p1) of the intensities (robust percentiles instead of "
        "max/min so a single marker does not dominate). Median [interquartile range]:",
        "",
        *_table(["view", "class", *(METRIC_LABELS[m] for m in IMAGE_METRICS)], rows),
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
    return lines


def _eigen_images(s: dict[str, Any]) -> list[str]:
    if not s["pca"]:
        return []
    size = s["settings"]["pca_size"]
    rows = [
        [c, p["n_images"], ", ".join(f"{100 * x:.1f}%" for x in p["explained_variance_ratio"])]
        for c, p in s["pca"].items()
    ]
    return [
        "## Eigen-images",
        "",
        f"Principal components of each class on {size}x{size} "
        "downsamples (as decoded). The first components usually capture brightness, "
        "patient size and positioning rather than pathology.",
        "",
        _img(s["figures"], "eigen", "eigen-images"),
        "",
        *_table(["class", "images", "explained variance of the top components"], rows),
        "",
    ]
