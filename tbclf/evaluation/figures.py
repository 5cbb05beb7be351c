"""Report figures: ROC, precision-recall, confusion matrix, score histograms, calibration.

Each function returns an Agg matplotlib Figure (not registered with pyplot) so the same figure can
be saved to PNG and logged to TensorBoard. The operating point (the threshold chosen on the
validation set) is marked on every curve so a reader sees where the deployed model sits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tbclf.evaluation.metrics import confusion_counts
from tbclf.evaluation.roc import average_precision, pr_curve, roc_curve
from tbclf.io import new_figure

HEALTHY_COLOR = "#2c7bb6"
TB_COLOR = "#d7191c"
# WHO target product profile for a TB triage (screening) test.
WHO_TRIAGE_SENSITIVITY = 0.90
WHO_TRIAGE_SPECIFICITY = 0.70


def _fmt(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"


def roc_figure(
    probs: np.ndarray, labels: np.ndarray, threshold: float, auroc_text: str = ""
) -> Figure:
    fpr, tpr, _ = roc_curve(probs, labels)
    c = confusion_counts(probs, labels, threshold)
    sens = c["tp"] / max(c["tp"] + c["fn"], 1)
    spec = c["tn"] / max(c["tn"] + c["fp"], 1)
    fig = new_figure(5.2, 5.0)
    ax = fig.add_subplot()
    ax.add_patch(
        Rectangle(
            (0, WHO_TRIAGE_SENSITIVITY),
            1 - WHO_TRIAGE_SPECIFICITY,
            1 - WHO_TRIAGE_SENSITIVITY,
            color="#1a9641",
            alpha=0.15,
            label="WHO triage target (sens ≥ 0.90, spec ≥ 0.70)",
        )
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.plot(fpr, tpr, color="black", lw=2, label=f"ROC{(' ' + auroc_text) if auroc_text else ''}")
    label = f"threshold {threshold:.2f}: sens {sens:.2f}, spec {spec:.2f}"
    axes = ("1 − specificity (healthy people flagged)", "Sensitivity (TB cases found)")
    return _unit_square(fig, ax, (1 - spec, sens, label), "ROC curve", "lower right", *axes)


def _unit_square(
    fig: Figure,
    ax: Any,
    point: tuple[float, float, str],
    title: str,
    legend: str,
    xlabel: str,
    ylabel: str,
) -> Figure:
    """Mark the operating point on a curve over [0, 1]^2 and finish the axes."""
    x, y, label = point
    ax.plot([x], [y], "o", ms=9, color=TB_COLOR, label=label)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel=xlabel, ylabel=ylabel, title=title,
           aspect="equal")  # fmt: skip
    ax.legend(loc=legend, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def pr_figure(probs: np.ndarray, labels: np.ndarray, threshold: float) -> Figure:
    prec, rec, _ = pr_curve(probs, labels)
    c = confusion_counts(probs, labels, threshold)
    sens = c["tp"] / max(c["tp"] + c["fn"], 1)
    ppv = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else float("nan")
    prevalence = float(np.mean(labels))
    fig = new_figure(5.2, 5.0)
    ax = fig.add_subplot()
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence {prevalence:.2f}")
    ax.step(
        rec,
        prec,
        where="pre",  # precision at each recall holds back to the previous recall (AP's area)
        color="black",
        lw=2,
        label=f"PR curve (AP {average_precision(probs, labels):.2f})",
    )
    label = f"threshold {threshold:.2f}: recall {sens:.2f}, precision {_fmt(ppv)}"
    return _unit_square(fig, ax, (sens, ppv, label), "Precision-recall curve", "lower left",
                        "Recall = sensitivity", "Precision = PPV")  # fmt: skip


def confusion_figure(probs: np.ndarray, labels: np.ndarray, threshold: float) -> Figure:
    c = confusion_counts(probs, labels, threshold)
    mat = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    row = mat.sum(axis=1, keepdims=True)
    frac = np.divide(mat, row, out=np.zeros_like(mat, dtype=float), where=row > 0)
    fig = new_figure(4.6, 4.0)
    ax = fig.add_subplot()
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    names = [["true negative", "false positive"], ["false negative", "true positive"]]
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{mat[i, j]}\n({100 * frac[i, j]:.0f}% of row)\n{names[i][j]}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if frac[i, j] > 0.6 else "black",
            )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["Healthy", "TB"],
        yticklabels=["Healthy", "TB"],
        xlabel="Model decision",
        ylabel="True label",
        title=f"Confusion matrix (threshold {threshold:.2f})",
    )
    return fig


def score_histogram_figure(probs: np.ndarray, labels: np.ndarray, threshold: float) -> Figure:
    bins = np.linspace(0, 1, 26)
    fig = new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    for cls, name, color in ((0, "Healthy", HEALTHY_COLOR), (1, "TB", TB_COLOR)):
        sel = probs[labels == cls]
        ax.hist(sel, bins=bins, alpha=0.55, color=color, label=f"{name} (n={sel.size})")
    ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.2f}")
    ax.set(xlabel="Model output P(TB)", ylabel="Images", title="Scores by true class")
    ax.legend(fontsize=8)
    return fig


def calibration_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 10
) -> list[dict[str, Any]]:
    """Equal-width bins of P(TB): mean predicted probability vs observed TB fraction."""
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1], right=False), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = which == b
        n = int(sel.sum())
        out.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": n,
                "mean_prob": float(probs[sel].mean()) if n else None,
                "tb_fraction": float(labels[sel].mean()) if n else None,
            }
        )
    return out


def calibration_summary(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Brier score and expected calibration error (ECE, equal-width bins) with the bins."""
    bins = calibration_bins(probs, labels, n_bins)
    n = max(probs.size, 1)
    ece = sum(b["n"] / n * abs(b["mean_prob"] - b["tb_fraction"]) for b in bins if b["n"])
    return {
        "brier": float(np.mean((probs - labels) ** 2)),
        "ece": float(ece),
        "n_bins": n_bins,
        "bins": bins,
    }


def calibration_figure(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> Figure:
    cal = calibration_summary(probs, labels, n_bins)
    used = [b for b in cal["bins"] if b["n"]]
    fig = new_figure(5.2, 5.6)
    gs = fig.add_gridspec(2, 1, height_ratios=[3, 1])
    ax = fig.add_subplot(gs[0])
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(
        [b["mean_prob"] for b in used],
        [b["tb_fraction"] for b in used],
        "o-",
        color="black",
        label=f"model (ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f})",
    )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        ylabel="Observed fraction with TB",
        title="Calibration (reliability) curve",
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(gs[1], sharex=ax)
    centers = [(b["low"] + b["high"]) / 2 for b in cal["bins"]]
    ax2.bar(centers, [b["n"] for b in cal["bins"]], width=1 / n_bins * 0.9, color="grey")
    ax2.set(xlabel="Predicted P(TB)", ylabel="Images")
    return fig


def report_figures(
    probs: np.ndarray, labels: np.ndarray, threshold: float, auroc_text: str = ""
) -> dict[str, Figure]:
    """All report figures by short name (also the PNG stem and the TensorBoard tag)."""
    figs = {
        "confusion_matrix": confusion_figure(probs, labels, threshold),
        "score_histogram": score_histogram_figure(probs, labels, threshold),
        "calibration": calibration_figure(probs, labels),
    }
    if 0 < labels.sum() < labels.size:  # curves need both classes
        figs = {
            "roc": roc_figure(probs, labels, threshold, auroc_text),
            "precision_recall": pr_figure(probs, labels, threshold),
            **figs,
        }
    return figs
