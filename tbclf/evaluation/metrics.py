"""Point estimates and 95% intervals of a binary TB classifier at its operating threshold.

One function per question: ``confusion_counts`` and ``point_metrics`` for the numbers the
module logs, ``metrics_with_intervals`` for the report (exact intervals for proportions,
DeLong for AUROC, a stratified bootstrap for F1; see ``intervals.py`` and ``bootstrap.py``).

Decision rule everywhere in tbclf: an image is called TB when P(TB) >= threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tbclf.evaluation.bootstrap import bootstrap_f1
from tbclf.evaluation.intervals import AUROC_METHOD, PROPORTION_METHOD, auroc_ci, proportion_ci
from tbclf.evaluation.probability import decide
from tbclf.evaluation.roc import auroc

METRICS = ("auroc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
METRIC_NAMES = {
    "auroc": "AUROC",
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (recall for TB)",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "f1": "F1",
}


def as_arrays(probs: Sequence[float], labels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to float64 probabilities and int labels (0 healthy, 1 TB)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y_raw = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y_raw.shape:
        raise ValueError(f"probs and labels differ in length: {p.size} vs {y_raw.size}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contain NaN or infinite values")
    if not np.all(np.isin(y_raw, (0.0, 1.0))):
        bad = np.unique(y_raw[~np.isin(y_raw, (0.0, 1.0))])[:5]
        raise ValueError(f"labels must be 0 (healthy) or 1 (TB); found {bad.tolist()}")
    return p, y_raw.astype(np.int64)


def ratio(num: Any, den: Any) -> np.ndarray:
    """num / den, NaN where den is 0 (scalars or arrays)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


# metric -> (successes, trials) as functions of the confusion counts: the proportions.
PROPORTIONS = {
    "accuracy": lambda c: (c["tp"] + c["tn"], c["tp"] + c["fp"] + c["tn"] + c["fn"]),
    "sensitivity": lambda c: (c["tp"], c["tp"] + c["fn"]),
    "specificity": lambda c: (c["tn"], c["tn"] + c["fp"]),
    "ppv": lambda c: (c["tp"], c["tp"] + c["fp"]),
    "npv": lambda c: (c["tn"], c["tn"] + c["fn"]),
}


def f1_from_counts(tp: Any, fp: Any, fn: Any) -> np.ndarray:
    return ratio(2 * np.asarray(tp), 2 * np.asarray(tp) + fp + fn)


def confusion_counts(probs, labels, threshold: float) -> dict[str, int]:
    """tp/fp/tn/fn with the tbclf decision rule P(TB) >= threshold."""
    p, y = as_arrays(probs, labels)
    pred = decide(p, threshold).astype(bool)
    return {
        "tp": int(np.sum(pred & (y == 1))),
        "fp": int(np.sum(pred & (y == 0))),
        "tn": int(np.sum(~pred & (y == 0))),
        "fn": int(np.sum(~pred & (y == 1))),
    }


def point_metrics(probs, labels, threshold: float) -> dict[str, float]:
    """All METRICS as plain floats (NaN where undefined, e.g. PPV with no positive calls)."""
    c = confusion_counts(probs, labels, threshold)
    out = {name: float(ratio(*count(c))) for name, count in PROPORTIONS.items()}
    out["f1"] = float(f1_from_counts(c["tp"], c["fp"], c["fn"]))
    out["auroc"] = auroc(probs, labels)
    return {k: out[k] for k in METRICS}


def _harmonic(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def f1_bound(sens: tuple[float, float], ppv: tuple[float, float]) -> tuple[float, float]:
    """F1 interval from the sensitivity and PPV intervals (F1 rises with both). An undefined
    PPV (nothing called TB) bounds nothing: 0 below, 1 above."""
    ppv_lo, ppv_hi = (0.0, 1.0) if not np.isfinite(ppv[0]) else ppv
    return _harmonic(sens[0], ppv_lo), _harmonic(sens[1], ppv_hi)


def metrics_with_intervals(
    probs: Sequence[float],
    labels: Sequence[float],
    threshold: float,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics at ``threshold`` with (1 - alpha) intervals and how each was computed.

    Returns {"n", "n_tb", "n_healthy", "threshold", "metrics": {name: {"value", "ci_low",
    "ci_high"}}, "confusion", "intervals": {level, methods, F1 bootstrap and its failures}}.
    A metric undefined on the data (e.g. AUROC with one class) has NaN value and bounds.
    """
    p, y = as_arrays(probs, labels)
    if p.size == 0:
        raise ValueError("no predictions to evaluate")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    c = confusion_counts(p, y, threshold)
    metrics: dict[str, dict[str, float]] = {"auroc": auroc_ci(p, y, alpha)}
    for name, count in PROPORTIONS.items():
        k, n = count(c)
        lo, hi = proportion_ci(k, n, alpha)
        metrics[name] = {"value": float(ratio(k, n)), "ci_low": lo, "ci_high": hi}
    f1 = float(f1_from_counts(c["tp"], c["fp"], c["fn"]))
    boot = bootstrap_f1(p, y, threshold, n_boot=n_boot, seed=seed, alpha=alpha)
    f1_method = "stratified percentile bootstrap"
    lo, hi = boot["ci_low"], boot["ci_high"]
    if np.isfinite(f1) and not lo < hi:
        # Every replicate gave the same F1 (e.g. no mistakes at all): the bootstrap cannot
        # see beyond the sample, so fall back to the bound from the exact intervals.
        half = alpha / 2  # Bonferroni over sensitivity and PPV
        lo, hi = f1_bound(
            proportion_ci(*PROPORTIONS["sensitivity"](c), half),
            proportion_ci(*PROPORTIONS["ppv"](c), half),
        )
        f1_method = "bound from the exact sensitivity and PPV intervals (bootstrap degenerate)"
    metrics["f1"] = {
        "value": f1,
        "ci_low": lo if np.isfinite(f1) else float("nan"),
        "ci_high": hi if np.isfinite(f1) else float("nan"),
    }
    return {
        "n": int(p.size),
        "n_tb": int(np.sum(y == 1)),
        "n_healthy": int(np.sum(y == 0)),
        "threshold": float(threshold),
        "metrics": {k: metrics[k] for k in METRICS},
        "confusion": c,
        "intervals": {
            "level": float(1 - alpha),
            "proportions": PROPORTION_METHOD,
            "auroc": AUROC_METHOD,
            "f1": f1_method,
            "f1_bootstrap": {
                "n_boot": int(n_boot),
                "seed": int(seed),
                "failed_replicates": int(boot["failed"]),
                "stratified": "by class (prevalence fixed)",
            },
        },
    }
