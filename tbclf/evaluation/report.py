"""The evaluation report: metrics with confidence intervals, figures and a plain-language summary.

Written for a reader who is not a machine-learning person: what share of TB cases the model
finds, how many healthy people it flags, how sure we are about those numbers (95% intervals
that hold on small groups: exact binomial for proportions, DeLong for AUROC), whether the WHO
triage-test targets are met even at the lower ends, and only what is known about where the
threshold came from and whether the images were held out from training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tbclf.errors import ConfigError, DataError
from tbclf.evaluation.figures import (
    WHO_TRIAGE_SENSITIVITY,
    WHO_TRIAGE_SPECIFICITY,
    calibration_summary,
    report_figures,
)
from tbclf.evaluation.metrics import METRIC_NAMES, METRICS, as_arrays, metrics_with_intervals
from tbclf.evaluation.operating_point import KEY as OPERATING_POINT_KEY
from tbclf.evaluation.operating_point import OperatingPoint
from tbclf.evaluation.probability import decide
from tbclf.evaluation.roc import average_precision
from tbclf.evaluation.threshold import goal_text
from tbclf.io import (
    atomic_write_json,
    atomic_write_text,
    check_can_write,
    read_output_csv,
    save_figure,
    write_csv,
)

REPORT_FILES = ("metrics.json", "report.md", "predictions.csv")
FIGURE_NAMES = ("roc", "precision_recall", "confusion_matrix", "score_histogram", "calibration")
FIGURE_CAPTIONS = {
    "roc": "ROC curve: every possible threshold; the dot is the threshold in use, the green "
    "box the WHO triage target.",
    "precision_recall": "Precision-recall curve: of the images the model flags, the share that "
    "truly show TB (precision), against the share of TB cases found (recall).",
    "confusion_matrix": "Confusion matrix at the threshold in use.",
    "score_histogram": "Model scores for truly healthy and truly TB images. Overlap is where "
    "mistakes happen.",
    "calibration": "Calibration: when the model says 30%, are about 30% of those images TB? "
    "Points on the diagonal mean the scores can be read as probabilities.",
}


def _who(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    sens = metrics["sensitivity"]
    spec = metrics["specificity"]

    def ok(v: float | None, target: float) -> bool | None:
        return None if v is None or not np.isfinite(v) else bool(v >= target)

    return {
        "sensitivity_target": WHO_TRIAGE_SENSITIVITY,
        "specificity_target": WHO_TRIAGE_SPECIFICITY,
        "sensitivity_met": ok(sens["value"], WHO_TRIAGE_SENSITIVITY),
        "specificity_met": ok(spec["value"], WHO_TRIAGE_SPECIFICITY),
        "met": (
            ok(sens["value"], WHO_TRIAGE_SENSITIVITY) is True
            and ok(spec["value"], WHO_TRIAGE_SPECIFICITY) is True
        ),
        # Met even at the pessimistic end of both intervals: the claim survives sampling noise.
        "met_at_ci_low": (
            ok(sens["ci_low"], WHO_TRIAGE_SENSITIVITY) is True
            and ok(spec["ci_low"], WHO_TRIAGE_SPECIFICITY) is True
        ),
    }


def _threshold_sentence(threshold: float, info: Mapping[str, Any] | None) -> str:
    """Where the threshold came from, in words: only what ``info`` records."""
    if not info:
        return f"At threshold {threshold:.2f} (no record of how it was chosen)"
    if info.get("description"):
        return f"At threshold {threshold:.2f} ({info['description']})"
    source = info.get("source") or info.get("split")
    if source in ("val", "validation"):
        source = "the validation set"
    if not source:
        return f"At threshold {threshold:.2f} (no record of how it was chosen)"
    how = goal_text(info.get("strategy"), info.get("target_sensitivity"))
    return f"At threshold {threshold:.2f}, chosen on {source}{how}"


def _chosen_on_validation(info: Mapping[str, Any] | None) -> bool:
    return bool(info) and info.get("source") in ("val", "validation")


HELD_OUT_TEXT = {
    True: "that played no part in training or in choosing the threshold",
    False: "some of which were used in training, so these numbers are optimistic",
    None: "(whether any of them played a part in training is not recorded with these "
    "predictions; the numbers estimate performance on new patients only if none did)",
}


def _ci(m: Mapping[str, float]) -> str:
    v, lo, hi = m["value"], m["ci_low"], m["ci_high"]
    if v is None or not np.isfinite(v):
        return "n/a"
    if lo is None or not np.isfinite(lo):
        return f"{v:.2f}"
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def _summary_text(res: Mapping[str, Any], split_name: str) -> list[str]:
    m = res["metrics"]
    c = res["confusion"]
    who = res["who_triage"]
    n_tb, n_h = res["n_tb"], res["n_healthy"]
    lines = [
        f"{_threshold_sentence(res['threshold'], res.get('threshold_info'))}, the model was "
        f"evaluated on {res['n']} {split_name} images ({n_tb} with TB, {n_h} healthy) "
        f"{HELD_OUT_TEXT[res.get('held_out')]}.",
        "",
        f"- **Sensitivity {_ci(m['sensitivity'])}**: it flagged {c['tp']} of the {n_tb} TB "
        f"cases and missed {c['fn']}.",
        f"- **Specificity {_ci(m['specificity'])}**: it cleared {c['tn']} of the {n_h} healthy "
        f"people and flagged {c['fp']} for follow-up testing they did not need.",
        f"- **PPV {_ci(m['ppv'])} / NPV {_ci(m['npv'])}**: of the images flagged, this share "
        "truly showed TB / of those cleared, this share was truly healthy. Both depend on how "
        f"common TB is; here {100 * res['prevalence']:.0f}% of images show TB, far more than in "
        "most screened populations, where the PPV would be lower and the NPV higher.",
        f"- **AUROC {_ci(m['auroc'])}**: how well the scores rank TB above healthy over all "
        "thresholds (0.5 = chance, 1 = perfect).",
        "",
        f"Numbers in brackets are {100 * res['intervals']['level']:.0f}% confidence intervals "
        "(exact binomial for the shares, DeLong for AUROC): with this many test images, the "
        "true value could plausibly lie anywhere in that range.",
        "",
    ]
    sens_ok = who["sensitivity_met"]
    spec_ok = who["specificity_met"]

    def word(flag: bool | None) -> str:
        return "n/a" if flag is None else ("met" if flag else "not met")

    verdict = "**met**" if who["met"] else "**not met**"
    text = (
        f"WHO target for a TB triage test (≥{100 * WHO_TRIAGE_SENSITIVITY:.0f}% sensitivity, "
        f"≥{100 * WHO_TRIAGE_SPECIFICITY:.0f}% specificity): {verdict} "
        f"(sensitivity {word(sens_ok)}, specificity {word(spec_ok)})."
    )
    if who["met"] and not who["met_at_ci_low"]:
        text += (
            " The lower ends of the confidence intervals "
            f"(sensitivity {_low(m['sensitivity'])}, specificity {_low(m['specificity'])}) "
            "fall short of the targets, so a larger test set is needed to confirm it."
        )
    elif who["met_at_ci_low"]:
        text += (
            " Even the lower ends of the confidence intervals "
            f"(sensitivity {_low(m['sensitivity'])}, specificity {_low(m['specificity'])}) "
            "meet the targets."
        )
    lines += [text, ""]
    return lines


def _metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> list[str]:
    rows = ["| metric | value | 95% CI |", "|---|---|---|"]
    for name in METRICS:
        m = metrics[name]
        v = m["value"]
        ci = (
            "–"
            if m["ci_low"] is None or not np.isfinite(m["ci_low"])
            else f"{m['ci_low']:.3f} – {m['ci_high']:.3f}"
        )
        rows.append(
            f"| {METRIC_NAMES[name]} | "
            f"{'n/a' if v is None or not np.isfinite(v) else f'{v:.3f}'} | {ci} |"
        )
    return rows


def _low(m: Mapping[str, float]) -> str:
    lo = m["ci_low"]
    return "n/a" if lo is None or not np.isfinite(lo) else f"{lo:.2f}"


def _group_table(groups: Mapping[str, Mapping[str, Any]], column: str = "source") -> list[str]:
    rows = [
        f"| {column} | images (TB / healthy) | sensitivity | specificity | AUROC |",
        "|---|---|---|---|---|",
    ]
    for src, r in groups.items():
        m = r["metrics"]
        rows.append(
            f"| {src} | {r['n']} ({r['n_tb']} / {r['n_healthy']}) | {_ci(m['sensitivity'])} | "
            f"{_ci(m['specificity'])} | {_ci(m['auroc'])} |"
        )
    return rows


def _errors_list(
    p: np.ndarray, y: np.ndarray, ids: Sequence[str], threshold: float, k: int = 5
) -> dict[str, list[dict[str, Any]]]:
    """The most confident mistakes: false positives with the highest scores, false negatives
    with the lowest (the images a radiologist should look at first)."""
    pred = decide(p, threshold).astype(bool)
    fp = np.flatnonzero(pred & (y == 0))
    fn = np.flatnonzero(~pred & (y == 1))
    fp = fp[np.argsort(-p[fp], kind="stable")][:k]
    fn = fn[np.argsort(p[fn], kind="stable")][:k]
    return {
        "false_positives": [{"id": str(ids[i]), "prob": float(p[i])} for i in fp],
        "false_negatives": [{"id": str(ids[i]), "prob": float(p[i])} for i in fn],
    }


# The view positions compared in the per-view table (DICOM ViewPosition).
FRONTAL_VIEWS = ("PA", "AP")


def _by_group(
    p: np.ndarray, y: np.ndarray, groups: Sequence[str], threshold: float, alpha: float, **boot
) -> dict[str, dict[str, Any]]:
    arr = np.asarray([str(g) for g in groups])
    out = {}
    for g in sorted(set(arr.tolist())):
        sel = arr == g
        r = metrics_with_intervals(p[sel], y[sel], threshold, alpha=alpha, **boot)
        out[g] = {k: r[k] for k in ("n", "n_tb", "n_healthy", "metrics", "confusion")}
    return out


def write_report(
    probs: Sequence[float] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    threshold: float,
    out_dir: str | Path,
    sources: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    threshold_info: Mapping[str, Any] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    split_name: str = "test",
    overwrite: bool = False,
    on_figure: Callable[[str, Figure], None] | None = None,
    views: Sequence[str] | None = None,
    held_out: bool | None = None,
    before_temperature: tuple[Sequence[float] | np.ndarray, float] | None = None,
) -> dict[str, Any]:
    """Write metrics.json, report.md, figures (and predictions.csv when ids are given).

    Args:
        probs: P(TB) per image. labels: 0 healthy / 1 TB (all images must be labelled).
        threshold: Operating threshold (decision P(TB) >= threshold).
        out_dir: Report folder (created).
        sources: Source set per image; per-source metrics when there are >1 distinct.
        ids: Image ids: enable predictions.csv and the list of most confident errors.
        threshold_info: How the threshold was chosen, e.g. {"strategy": "sensitivity",
            "target_sensitivity": 0.9, "source": "validation"}; None: not known.
        n_boot / seed: Bootstrap of the F1 interval (the others are exact or DeLong).
        alpha: 1 - the intervals' level.
        split_name: Which split the data are ("test"), used in the text.
        overwrite: Replace an earlier report in out_dir.
        on_figure: Called with (name, figure) for each figure, e.g. to log it to TensorBoard.
        views: View position per image (PA, AP, ...); a per-view table when both PA and AP
            occur.
        held_out: True when the caller knows no image took part in training (the run's own
            test split), False when some did, None when it is not known: the text says so.
        before_temperature: (P(TB) before temperature scaling, the temperature) for a
            calibrated model: the calibration figures are given before and after.

    Returns the content of metrics.json.
    """
    p, y = _checked_arrays(probs, labels, threshold, sources=sources, ids=ids, views=views)
    names = [*REPORT_FILES, *(f"{f}.png" for f in FIGURE_NAMES)]
    out = check_can_write(out_dir, names, overwrite)
    threshold = float(threshold)
    boot = {"n_boot": n_boot, "seed": seed}

    res: dict[str, Any] = metrics_with_intervals(p, y, threshold, alpha=alpha, **boot)
    res["split"] = split_name
    res["held_out"] = held_out
    res["prevalence"] = float(y.mean())
    res["decision_rule"] = "TB if P(TB) >= threshold"
    res["threshold_info"] = dict(threshold_info) if threshold_info else None
    res["who_triage"] = _who(res["metrics"])
    res["average_precision"] = average_precision(p, y) if 0 < y.sum() < y.size else None
    res["calibration"] = _calibration(p, y, before_temperature)
    src = None if sources is None else [str(s) for s in sources]
    if src is not None and len(set(src)) > 1:
        res["per_source"] = _by_group(p, y, src, threshold, alpha, **boot)
    view = None if views is None else [str(v).strip().upper() or "unknown" for v in views]
    if view is not None and set(FRONTAL_VIEWS) <= set(view):
        res["per_view"] = _by_group(p, y, view, threshold, alpha, **boot)
    if ids is not None:
        res["most_confident_errors"] = _errors_list(p, y, ids, threshold)
    res["figures"] = _write_figures(p, y, threshold, res, out, on_figure)
    if ids is not None:
        _write_report_predictions(out / "predictions.csv", p, y, threshold, ids, src, view)
        res["predictions_csv"] = "predictions.csv"
    atomic_write_json(out / "metrics.json", res)
    atomic_write_text(out / "report.md", _report_md(res, split_name))
    return res


def _checked_arrays(
    probs: Sequence[float] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    threshold: float,
    **per_image: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """P(TB) and labels as arrays, refused before any file is written when they cannot make a
    report (or the per-image lists do not line up with them)."""
    try:
        p, y = as_arrays(probs, labels)
    except ValueError as exc:
        raise DataError(f"cannot evaluate: {exc}") from None
    if p.size == 0:
        raise DataError("cannot evaluate: no predictions")
    if not 0.0 <= float(threshold) <= 1.0:
        raise DataError(f"threshold must be in [0, 1], got {threshold}")
    for name, seq in per_image.items():
        if seq is not None and len(seq) != p.size:
            raise DataError(f"{name} has {len(seq)} entries for {p.size} predictions")
    return p, y


def _calibration(
    p: np.ndarray,
    y: np.ndarray,
    before_temperature: tuple[Sequence[float] | np.ndarray, float] | None,
) -> dict[str, Any]:
    """Calibration of the reported P(TB), with the figures before temperature scaling beside
    them when the model was calibrated (so the reader sees what scaling bought)."""
    summary = calibration_summary(p, y)
    if before_temperature is not None:
        raw, temperature = before_temperature
        before = calibration_summary(np.asarray(raw, dtype=np.float64).reshape(-1), y)
        summary["temperature"] = float(temperature)
        summary["before_temperature"] = {k: before[k] for k in ("brier", "ece")}
    return summary


def _write_figures(
    p: np.ndarray,
    y: np.ndarray,
    threshold: float,
    res: Mapping[str, Any],
    out: Path,
    on_figure: Callable[[str, Figure], None] | None,
) -> dict[str, str]:
    """The report's figures saved into ``out`` (and handed to ``on_figure``): name -> file."""
    auroc = res["metrics"]["auroc"]
    auroc_text = f"AUROC {_ci(auroc)}" if np.isfinite(auroc["value"]) else ""
    files = {}
    for name, fig in report_figures(p, y, threshold, auroc_text).items():
        save_figure(fig, out / f"{name}.png")
        files[name] = f"{name}.png"
        if on_figure is not None:
            on_figure(name, fig)
    return files


def _write_report_predictions(
    path: Path,
    p: np.ndarray,
    y: np.ndarray,
    threshold: float,
    ids: Sequence[str],
    src: Sequence[str] | None,
    view: Sequence[str] | None,
) -> None:
    """The report's own predictions.csv: the scored images with truth, source and view."""
    write_csv(
        path,
        ["ID", "LABEL", "DECISION", "TRUE_LABEL"]
        + (["SOURCE"] if src else [])
        + (["VIEW"] if view else []),
        (
            [ids[i], f"{p[i]:.6f}", int(decide(p[i], threshold)), int(y[i])]
            + ([src[i]] if src else [])
            + ([view[i]] if view else [])
            for i in range(p.size)
        ),
    )


def _threshold_origin(info: Mapping[str, Any] | None) -> str:
    if _chosen_on_validation(info):
        where = f" ({info['checkpoint']})" if info.get("checkpoint") else ""
        return (
            f"The threshold was chosen on the validation set and stored in the checkpoint{where}; "
            "the test set is never used to choose it."
        )
    if info and info.get("description"):
        return f"Threshold: {info['description']}."
    return "How the threshold was chosen is not recorded with these predictions."


def _calibration_line(cal: Mapping[str, Any]) -> str:
    line = (
        f"Calibration: Brier score {cal['brier']:.3f}, expected calibration error "
        f"{cal['ece']:.3f} ({cal['n_bins']} equal-width bins)"
    )
    before = cal.get("before_temperature")
    if not before:
        return line + "."
    return (
        f"{line}, with the temperature {cal['temperature']:.3g} fitted on validation; before "
        f"it: Brier {before['brier']:.3f}, ECE {before['ece']:.3f}."
    )


def _interval_lines(iv: Mapping[str, Any]) -> list[str]:
    boot = iv["f1_bootstrap"]
    lines = [
        f"Intervals ({100 * iv['level']:.0f}%): sensitivity, specificity, PPV, NPV and accuracy "
        f"{iv['proportions']}; AUROC {iv['auroc']}; F1 {iv['f1']} ({boot['n_boot']} "
        f"replicates resampled within each class, seed {boot['seed']}).",
    ]
    if boot["failed_replicates"]:
        lines.append(
            f"{boot['failed_replicates']} of {boot['n_boot']} F1 replicates had no defined F1 "
            "and are left out of its interval."
        )
    return lines


def _report_md(res: Mapping[str, Any], split_name: str) -> str:
    lines = [
        f"# TB screening model: evaluation on the {split_name} set",
        "",
        "> Research software, not a medical device: not for diagnosing or excluding TB.",
        "",
        "## Summary",
        "",
        *_summary_text(res, split_name),
        "## Metrics",
        "",
        *_metrics_table(res["metrics"]),
        "",
        f"Decision rule: an image is called TB when the model's P(TB) ≥ {res['threshold']:.4g}. "
        + _threshold_origin(res.get("threshold_info")),
        *_interval_lines(res["intervals"]),
        _calibration_line(res["calibration"]),
        "",
        "## Figures",
        "",
    ]
    for name in FIGURE_NAMES:
        if name in res["figures"]:
            lines += [f"![{name}]({res['figures'][name]})", "", FIGURE_CAPTIONS[name], ""]
    if res.get("per_source"):
        lines += [
            "## By source",
            "",
            "Performance per image source. Large differences suggest the model reacts to how "
            "and where an image was taken, not only to the lungs; a source with one class only "
            "has no AUROC and either no sensitivity or no specificity.",
            "",
            *_group_table(res["per_source"]),
            "",
        ]
    if res.get("per_view"):
        lines += [
            "## By view",
            "",
            "Performance per view position. AP films are mostly taken of patients too ill to "
            "stand, so a gap between PA and AP can reflect who was imaged as much as the model.",
            "",
            *_group_table(res["per_view"], "view"),
            "",
        ]
    errs = res.get("most_confident_errors")
    if errs and (errs["false_positives"] or errs["false_negatives"]):
        lines += [
            "## Most confident mistakes",
            "",
            "Worth a look by a radiologist (label errors, unusual images, shortcuts):",
            "",
        ]
        for key, title in (
            ("false_negatives", "Missed TB (lowest scores)"),
            ("false_positives", "Healthy flagged as TB (highest scores)"),
        ):
            if errs[key]:
                lines.append(
                    f"- {title}: " + ", ".join(f"`{e['id']}` ({e['prob']:.2f})" for e in errs[key])
                )
        lines.append("")
    files = "`metrics.json` (all numbers)"
    if res.get("predictions_csv"):
        files += ", `predictions.csv` (one row per image)"
    lines += [f"Files: {files}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- from a CSV


def _parse_float(value: str, path: Path, line: int, column: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise DataError(f"{path} line {line}: {column}={value!r} is not a number.") from None
    if not np.isfinite(v):
        raise DataError(f"{path} line {line}: {column}={value!r} is not a finite number.")
    return v


def _parse_label(value: str, path: Path, line: int, column: str) -> int:
    v = _parse_float(value, path, line, column)
    if v not in (0.0, 1.0):
        raise DataError(f"{path} line {line}: {column}={value!r} must be 0 (healthy) or 1 (TB).")
    return int(v)


def implied_threshold(probs: np.ndarray, decisions: np.ndarray) -> float:
    """A threshold that reproduces the DECISION column with P(TB) >= threshold.

    0.5 when it fits (the default), else the lowest score called TB (or just above the highest
    score when nothing was called TB). Raises DataError when no single threshold fits.
    """
    pos = probs[decisions == 1]
    neg = probs[decisions == 0]
    if pos.size and neg.size and neg.max() >= pos.min():
        raise DataError(
            "DECISION does not follow one threshold: an image with P(TB) "
            f"{neg.max():.6f} is called healthy while one with {pos.min():.6f} is called TB. "
            "Pass threshold=... (--threshold) explicitly."
        )
    if (not pos.size or pos.min() >= 0.5) and (not neg.size or neg.max() < 0.5):
        return 0.5
    if pos.size:
        return float(pos.min())
    return float(min(1.0, np.nextafter(neg.max(), np.inf)))


SIDECAR_MAX_BYTES = 1_000_000


def sidecar_path(predictions_csv: str | Path) -> Path:
    """Where `tbclf predict` records the threshold of a predictions CSV: same stem, .json."""
    return Path(predictions_csv).with_suffix(".json")


def read_sidecar(predictions_csv: str | Path) -> dict[str, Any] | None:
    """The sidecar of a predictions CSV, checked (it is untrusted input); None when absent."""
    path = sidecar_path(predictions_csv)
    if not path.is_file():
        return None
    if path.stat().st_size > SIDECAR_MAX_BYTES:
        raise DataError(f"{path} is over {SIDECAR_MAX_BYTES} bytes: not a tbclf sidecar.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(
            f"{path} is not readable JSON ({exc}); delete it or pass --threshold."
        ) from None
    if not isinstance(data, dict):
        data = {}
    try:
        if OPERATING_POINT_KEY in data:
            op = OperatingPoint.from_dict(data[OPERATING_POINT_KEY], str(path))
        else:  # a sidecar from before the operating point had one key
            origin = data.get("threshold_source")
            op = OperatingPoint.from_legacy(
                data.get("threshold"),  # type: ignore[arg-type]
                origin if isinstance(origin, dict) else None,
                data.get("temperature", 1.0),
                str(path),
            )
    except ConfigError as error:
        raise DataError(
            f"{error} {path} is not the sidecar `tbclf predict` writes: delete it or pass "
            "--threshold."
        ) from None
    data[OPERATING_POINT_KEY] = op
    return data


def _match_decisions(
    probs: np.ndarray, decisions: np.ndarray, threshold: float, path: Path, tol: float = 1e-6
) -> np.ndarray:
    """Probabilities whose rule ``>= threshold`` reproduces DECISION.

    LABEL is printed with 6 decimals, so a score within rounding of the threshold can print on
    the other side of it; such a score is moved to the side its DECISION says. A DECISION that
    disagrees by more means the sidecar belongs to other predictions.
    """
    wrong = decide(probs, threshold) != (decisions == 1)
    far = wrong & (np.abs(probs - threshold) > tol)
    if far.any():
        raise DataError(
            f"{path}: {int(far.sum())} DECISION values do not follow the threshold "
            f"{threshold:.6g} recorded in {sidecar_path(path).name}; the two files do not belong "
            "together. Pass --threshold to choose one."
        )
    fixed = probs.copy()
    fixed[wrong & (decisions == 1)] = threshold
    fixed[wrong & (decisions == 0)] = np.nextafter(threshold, -np.inf)
    return fixed


def _read_scores(
    pred_path: Path, header: Sequence[str], rows: Sequence[Mapping[str, str]]
) -> tuple[list[str], np.ndarray]:
    """The IDs and P(TB) of a predictions CSV, refused when it is not one `predict` wrote."""
    for col in ("ID", "LABEL"):
        if col not in header:
            raise DataError(
                f"{pred_path} has no {col} column (found {header}); expected the output of "
                "`tbclf predict`: ID, LABEL (P(TB)), DECISION[, TRUE_LABEL]."
            )
    if not rows:
        raise DataError(f"{pred_path} has no rows.")
    ids = [r["ID"] for r in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if dupes:
        raise DataError(f"{pred_path} lists these IDs more than once: {dupes[:5]}")
    probs = np.array(
        [_parse_float(r["LABEL"], pred_path, n + 2, "LABEL") for n, r in enumerate(rows)]
    )
    if probs.min() < 0 or probs.max() > 1:
        raise DataError(f"{pred_path}: LABEL must be a probability in [0, 1].")
    return ids, probs


def _read_truth(
    pred_path: Path,
    header: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    ids: Sequence[str],
    labels_csv: str | Path | None,
) -> tuple[np.ndarray, str]:
    """The true label of every predicted ID (from ``labels_csv``, else the TRUE_LABEL column)
    and where it came from, for the report to say."""
    if labels_csv is not None:
        lab_path = Path(labels_csv)
        lab_header, lab_rows = read_output_csv(lab_path)
        if "ID" not in lab_header or "LABEL" not in lab_header:
            raise DataError(f"{lab_path} needs ID and LABEL columns (found {lab_header}).")
        truth = {
            r["ID"]: _parse_label(r["LABEL"], lab_path, n + 2, "LABEL")
            for n, r in enumerate(lab_rows)
        }
        missing = [i for i in ids if i not in truth]
        if missing:
            raise DataError(
                f"{lab_path} has no label for {len(missing)} predicted IDs, e.g. "
                f"{missing[:5]}. Use the labels CSV of the same images."
            )
        return np.array([truth[i] for i in ids]), str(lab_path)
    if "TRUE_LABEL" not in header:
        raise DataError(
            f"{pred_path} has no TRUE_LABEL column: pass labels_csv (--labels), a "
            "CSV with ID,LABEL for these images (e.g. Zindi's Train.csv)."
        )
    blank = [r["ID"] for r in rows if r["TRUE_LABEL"] == ""]
    if blank:
        raise DataError(
            f"{pred_path}: {len(blank)} rows have no TRUE_LABEL (e.g. "
            f"{blank[:5]}); pass labels_csv (--labels) with ID,LABEL for them."
        )
    labels = np.array(
        [_parse_label(r["TRUE_LABEL"], pred_path, n + 2, "TRUE_LABEL") for n, r in enumerate(rows)]
    )
    return labels, f"{pred_path} (TRUE_LABEL)"


def _csv_threshold(
    pred_path: Path,
    probs: np.ndarray,
    decisions: np.ndarray | None,
    threshold: float | None,
) -> tuple[float, dict[str, Any], np.ndarray]:
    """The threshold to report at, what is known of its origin, and the P(TB) (moved within
    rounding to the side DECISION says when the sidecar's threshold is used)."""
    sidecar = read_sidecar(pred_path)
    name = sidecar_path(pred_path).name
    info: dict[str, Any]
    if threshold is not None:
        info = {"strategy": "fixed", "description": "given explicitly (--threshold)"}
        if sidecar is not None:
            info["description"] += (
                f"; the model's own threshold, {sidecar[OPERATING_POINT_KEY].threshold:.4g}, is in "
                f"{name}"
            )
    elif sidecar is not None:
        threshold = sidecar[OPERATING_POINT_KEY].threshold
        info = {**sidecar[OPERATING_POINT_KEY].to_dict(), "from": str(sidecar_path(pred_path))}
        if decisions is not None:
            probs = _match_decisions(probs, decisions, threshold, pred_path)
    elif decisions is not None:
        threshold = implied_threshold(probs, decisions)
        info = {
            "strategy": "inferred",
            "description": f"inferred from the DECISION column of {pred_path.name}, which has "
            f"no {name} beside it; the threshold the model used is not "
            "recorded, and how it was chosen is unknown",
        }
    else:
        threshold = 0.5
        info = {
            "strategy": "default",
            "description": f"the default 0.5; the CSV has no DECISION column and no {name} "
            "beside it",
        }
    return float(threshold), info, probs


def report_from_csv(
    predictions_csv: str | Path,
    out_dir: str | Path,
    threshold: float | None = None,
    labels_csv: str | Path | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluation report from a predictions CSV (ID, LABEL = P(TB), DECISION[, TRUE_LABEL,
    SOURCE]) and true labels from its TRUE_LABEL column or a Zindi-style labels CSV (ID, LABEL).

    The threshold: the one `tbclf predict` recorded in the sidecar ``<csv stem>.json`` beside
    the CSV; else ``threshold``; else one inferred from DECISION (0.5 when that fits), and the
    report says it was inferred. ``threshold`` given explicitly wins over the sidecar.
    """
    pred_path = Path(predictions_csv)
    header, rows = read_output_csv(pred_path)
    ids, probs = _read_scores(pred_path, header, rows)
    labels, label_source = _read_truth(pred_path, header, rows, ids, labels_csv)
    decisions = (
        np.array(
            [_parse_label(r["DECISION"], pred_path, n + 2, "DECISION") for n, r in enumerate(rows)]
        )
        if "DECISION" in header
        else None
    )
    threshold, info, probs = _csv_threshold(pred_path, probs, decisions, threshold)
    info["labels_from"] = label_source
    sources = [r["SOURCE"] for r in rows] if "SOURCE" in header else None
    views = [r["VIEW"] for r in rows] if "VIEW" in header else None
    return write_report(
        probs,
        labels,
        float(threshold),
        out_dir,
        sources=sources,
        ids=ids,
        threshold_info=info,
        n_boot=n_boot,
        seed=seed,
        overwrite=overwrite,
        views=views,
        held_out=None,  # a CSV does not say whether its images were used in training
    )
