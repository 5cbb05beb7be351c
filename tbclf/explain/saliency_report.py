"""The saliency run's outputs: per image x map CSV, a summary with 95% intervals, contact sheets.

Means get percentile-bootstrap intervals (scipy.stats.bootstrap, seeded); a method is compared
with the uniform map on the same images (paired differences), so "beats uniform" means the
interval of its energy gain lies above 0. Sensitivity on a TB-only set gets the exact
Clopper-Pearson interval (scipy.stats.binomtest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Rectangle
from scipy import stats

from tbclf.data.imageio import read_gray
from tbclf.explain.gradcam import overlay
from tbclf.explain.saliency import METHODS, NO_ROAD, SaliencyRun
from tbclf.io import (
    atomic_write_json,
    atomic_write_text,
    check_can_write,
    image_row,
    new_figure,
    save_figure,
    write_csv_dicts,
)

CSV_FIELDS = (
    "id",
    "method",
    "kind",
    "energy",
    "box_fraction",
    "energy_gain",
    "pointing",
    "road",
    "empty_map",
    "prob",
    "decision",
    "n_boxes",
    "width",
    "height",
    "path",
)
N_BOOT = 2000


def mean_interval(values: Sequence[float], seed: int = 0, n_boot: int = N_BOOT) -> dict[str, Any]:
    """{mean, low, high, n}: the mean with its 95% percentile-bootstrap interval (NaNs dropped;
    no interval below 2 values; a constant sample has a zero-width interval)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    if np.ptp(x) == 0:
        return {"mean": mean, "low": mean, "high": mean, "n": int(x.size)}
    res = stats.bootstrap((x,), np.mean, n_resamples=n_boot, method="percentile", random_state=seed)
    ci = res.confidence_interval
    return {"mean": mean, "low": float(ci.low), "high": float(ci.high), "n": int(x.size)}


def sensitivity(decisions: Sequence[int]) -> dict[str, Any]:
    """Share of TB images called TB, with the exact (Clopper-Pearson) 95% interval."""
    k, n = int(np.sum(decisions)), len(decisions)
    if n == 0:
        return {"value": None, "low": None, "high": None, "tp": 0, "n": 0}
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return {"value": k / n, "low": float(ci.low), "high": float(ci.high), "tp": k, "n": n}


def _verdict(gain: dict[str, Any]) -> str:
    if gain["n"] == 0 or gain["low"] is None:
        return "too few images to tell"
    if gain["low"] > 0:
        return "beats uniform"
    if gain["high"] < 0:
        return "worse than uniform"
    return "does not beat uniform"


def summarise(run: SaliencyRun, seed: int = 0, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Per map: mean energy, pointing, ROAD and the paired gains over uniform, with intervals."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in run.rows:
        by_name.setdefault(row["method"], []).append(row)
    uniform = {r["id"]: r for r in by_name.get("uniform", [])}
    table = {}
    order = [n for n in [*run.methods, *run.baselines] if n in by_name]
    for name, rows in ((n, by_name[n]) for n in order):
        entry: dict[str, Any] = {
            "kind": rows[0]["kind"],
            "n_images": len(rows),
            "energy": mean_interval([r["energy"] for r in rows], seed, n_boot),
            "box_fraction": mean_interval([r["box_fraction"] for r in rows], seed, n_boot),
            "energy_gain": mean_interval([r["energy_gain"] for r in rows], seed, n_boot),
            "pointing": mean_interval([r["pointing"] for r in rows], seed, n_boot),
            "pointing_gain": mean_interval(
                [r["pointing"] - uniform[r["id"]]["pointing"] for r in rows if r["id"] in uniform],
                seed,
                n_boot,
            ),
            "road": mean_interval([r["road"] for r in rows], seed, n_boot),
            "empty_maps": int(sum(r["empty_map"] for r in rows)),
            "seconds": run.seconds.get(name),
            "road_seconds": run.seconds.get(f"road:{name}"),
        }
        if name in NO_ROAD:
            entry["road_note"] = "0 by definition (a constant map ranks no pixel)"
        entry["verdict"] = "reference" if name == "uniform" else _verdict(entry["energy_gain"])
        table[name] = entry
    first = {}
    for row in run.rows:
        first.setdefault(row["id"], row)
    return {
        "n_images": len(run.items),
        "threshold": run.threshold,
        "sensitivity": sensitivity([r["decision"] for r in first.values()]),
        "mean_prob": mean_interval([r["prob"] for r in first.values()], seed, n_boot),
        "methods": run.methods,
        "baselines": run.baselines,
        "maps": table,
        "settings": run.settings,
    }


def _fmt(ci: dict[str, Any], digits: int = 3) -> str:
    if ci["mean"] is None:
        return "—"
    if ci["low"] is None:
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def summary_markdown(summary: dict[str, Any], title: str = "Saliency against boxes") -> str:
    """The summary table (means with 95% intervals) and the model's sensitivity."""
    sens = summary["sensitivity"]
    lines = [f"# {title}", ""]
    if sens["n"]:
        lines.append(
            f"{summary['n_images']} images with boxes. P(TB) >= {summary['threshold']:.3f} on "
            f"{sens['tp']}/{sens['n']}: sensitivity {sens['value']:.3f} (95% Clopper-Pearson "
            f"{sens['low']:.3f}-{sens['high']:.3f}) if every image is TB; mean P(TB) "
            f"{_fmt(summary['mean_prob'])}."
        )
    lines += [
        "",
        "Energy: share of the map inside the boxes; gain: energy minus the uniform map's on the "
        "same image (the boxes' share of the image). Pointing: the map's maximum in a box. "
        "ROAD: faithfulness on P(TB) (higher is better, 0 = no information). 95% bootstrap "
        "intervals in brackets; n = images scored (ROAD on its own subset).",
        "",
        "| map | kind | n | energy | energy gain | pointing | ROAD (n) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in summary["maps"].items():
        road = e.get("road_note") and "0 (by definition)" or f"{_fmt(e['road'])} ({e['road']['n']})"
        empty = f" ({e['empty_maps']} empty maps)" if e["empty_maps"] else ""
        lines.append(
            f"| {name} | {e['kind']} | {e['n_images']} | {_fmt(e['energy'])} | "
            f"{_fmt(e['energy_gain'])} | {_fmt(e['pointing'])} | {road} | {e['verdict']}{empty} |"
        )
    return "\n".join(lines) + "\n"


def contact_sheet(
    run: SaliencyRun, method: str, out_path: str | Path, per_row: int = 4
) -> dict[str, list[str]]:
    """Overlays on the image as stored, boxes drawn: the best and the worst images by energy."""
    rows = sorted(
        (r for r in run.rows if r["method"] == method and math.isfinite(r["energy"])),
        key=lambda r: (-r["energy"], r["id"]),
    )
    picked = {"best": rows[:per_row], "worst": rows[::-1][:per_row] if rows else []}
    items = {it.record.id: it for it in run.items}
    fig = new_figure(2.7 * per_row, 6.4)
    subfigs = fig.subfigures(2, 1)
    for sub, (group, chosen) in zip(subfigs, picked.items(), strict=True):
        axes = image_row(sub, f"{group.capitalize()} by energy", per_row)
        for ax, row in zip(axes, chosen, strict=False):
            item = items[row["id"]]
            gray = read_gray(item.record.path).astype(np.float32) / 255.0
            heat = item.geometry.to_image(item.maps[method].astype(np.float32))
            heat = heat / heat.max() if heat.max() > 0 else heat
            ax.imshow(overlay(gray, heat))
            for b in item.boxes:
                ax.add_patch(
                    Rectangle(
                        (b.x0 - 0.5, b.y0 - 0.5),
                        b.x1 - b.x0,
                        b.y1 - b.y0,
                        fill=False,
                        edgecolor="white",
                        linewidth=1.2,
                    )
                )
            ax.set_title(
                f"{row['id']}  E={row['energy']:.2f} (box {row['box_fraction']:.2f})\n"
                f"P(TB)={row['prob']:.2f}",
                fontsize=7,
            )
    fig.suptitle(f"{method}: evidence for TB, radiologists' boxes in white", fontsize=11)
    save_figure(fig, out_path)
    return {g: [r["id"] for r in c] for g, c in picked.items()}


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6f}" if math.isfinite(value) else ""
    return value


def output_names(sheet_methods: Sequence[str]) -> list[str]:
    return [
        "saliency.csv",
        "summary.json",
        "summary.md",
        *(f"contact_sheet_{sheet_name(m)}.png" for m in sheet_methods),
    ]


def sheet_name(method: str) -> str:
    return method.replace("+", "p")


def write_outputs(
    run: SaliencyRun,
    out_dir: str | Path,
    sheet_methods: Sequence[str] | None = None,
    per_row: int = 4,
    seed: int = 0,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """saliency.csv, summary.json/.md and one contact sheet per method, through tbclf.io."""
    sheets = [m for m in (run.methods if sheet_methods is None else sheet_methods) if m in METHODS]
    out = check_can_write(out_dir, output_names(sheets), overwrite)
    summary = summarise(run, seed)
    summary.update(extra or {})
    shown = {
        m: contact_sheet(run, m, out / f"contact_sheet_{sheet_name(m)}.png", per_row)
        for m in sheets
    }
    summary["contact_sheets"] = shown
    write_csv_dicts(
        out / "saliency.csv",
        CSV_FIELDS,
        ({k: _cell(v) for k, v in r.items()} for r in run.rows),
    )
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary
