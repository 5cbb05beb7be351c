"""A checkpoint's operating point chosen again on a new site's labelled images (the library
side of `tbclf rethreshold`): the weights are untouched, the copy records where its threshold
came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tbclf.data.layouts import discover
from tbclf.engine.checkpoint_io import AtomicCheckpointIO
from tbclf.engine.ensemble import record_batches
from tbclf.engine.scoring import score_loader
from tbclf.errors import ConfigError
from tbclf.evaluation import calibration as cal
from tbclf.evaluation.intervals import proportion_ci
from tbclf.evaluation.operating_point import KEY as OPERATING_POINT_KEY
from tbclf.evaluation.operating_point import LEGACY_CHECKPOINT_KEY, choose_operating_point
from tbclf.evaluation.probability import reported_probability
from tbclf.evaluation.threshold import STRATEGIES, goal_text, sensitivity_specificity
from tbclf.models.loading import load_classifier, read_checkpoint

# Below this many images of a class the chosen point is mostly noise: say so.
FEW = 20


def refuse_out(src: Path, out: Path, overwrite: bool) -> None:
    """Stop before any image is scored when the copy would replace its source or, unasked,
    another file."""
    if out.exists() and out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the input checkpoint; write the copy elsewhere.")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite true to replace it.")


def what_changed(result: dict[str, Any], val_root: str | Path) -> str:
    """The threshold and the site's sensitivity and specificity before and after, in words,
    with a warning when too few images pinned it."""
    out, old_threshold, threshold = result["out"], result["old_threshold"], result["threshold"]
    n_tb, n_healthy = result["n_tb"], result["n_healthy"]
    old_sens, sens = result["site_sensitivity_before"], result["site_sensitivity"]
    old_spec, spec = result["site_specificity_before"], result["site_specificity"]
    text = (
        f"{out}: threshold {old_threshold:.4f} -> {threshold:.4f} on {n_tb} TB / {n_healthy} "
        f"healthy images of {val_root}; there sensitivity {old_sens:.2f} -> {sens:.2f}, "
        f"specificity {old_spec:.2f} -> {spec:.2f} (these are the images it was chosen on: "
        "confirm it on other images of the site with `tbclf test` or `tbclf report`)."
    )
    if min(n_tb, n_healthy) < FEW:
        text += (
            f"\nnote: fewer than {FEW} images of a class: the sensitivity this threshold gives on "
            "the site's next patients is uncertain (95% interval of the one seen here: "
            f"{result['sensitivity_ci'][0]:.2f}-{result['sensitivity_ci'][1]:.2f})."
        )
    return text


def rethreshold_checkpoint(
    src: Path,
    val_root: Path,
    out: Path,
    strategy: str | None = None,
    target: float | None = None,
    calibrate: bool = False,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Write ``out``: ``src`` with its threshold (and with ``calibrate`` its temperature)
    chosen on the labelled images under ``val_root``; returns the figures before and after on
    those images. ``strategy``/``target`` default to the model's own."""
    model = load_classifier(src)
    strategy = strategy or model.threshold_strategy
    target = model.target_sensitivity if target is None else target
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r} is not one of {STRATEGIES}.")
    if not 0.0 < target < 1.0:
        raise ConfigError(f"--target_sensitivity {target}: give a fraction in (0, 1).")

    records = discover(Path(val_root))
    labels = np.array([r.label for r in records], dtype=np.float64)
    n_tb, n_healthy = int((labels == 1).sum()), int((labels == 0).sum())
    if n_tb == 0 or n_healthy == 0:
        raise ConfigError(
            f"--val_root {val_root}: {n_tb} TB and {n_healthy} healthy images; choosing a "
            "threshold needs both."
        )
    raw = score_loader(model, record_batches([model], records, batch_size))
    old_temperature, old_threshold = float(model.temperature), float(model.threshold)
    temperature = cal.fit_temperature(raw["logit"], raw["label"]) if calibrate else old_temperature
    prob = reported_probability(raw["logit"], temperature).numpy()
    old_prob = reported_probability(raw["logit"], old_temperature).numpy()
    goal = goal_text(strategy, target)
    point = choose_operating_point(
        prob,
        raw["label"],
        strategy,
        target,
        source="site validation",
        description=f"chosen again on {n_tb} TB and {n_healthy} healthy labelled images in "
        f"{val_root}{goal} (tbclf rethreshold of {src.name}; the model's validation "
        f"threshold was {old_threshold:.4g})",
        temperature=temperature,
        val_root=str(val_root),
        n_tb=n_tb,
        n_healthy=n_healthy,
        from_checkpoint=str(src),
        temperature_refit=bool(calibrate),
    )
    threshold = point.threshold
    sens, spec = sensitivity_specificity(prob, raw["label"], threshold)
    old_sens, old_spec = sensitivity_specificity(old_prob, raw["label"], old_threshold)

    checkpoint = read_checkpoint(src, cached=False)
    state = checkpoint["state_dict"]
    state["threshold"] = state["threshold"].new_tensor(threshold)
    state["temperature"] = state["temperature"].new_tensor(temperature)
    checkpoint.pop(LEGACY_CHECKPOINT_KEY, None)
    checkpoint[OPERATING_POINT_KEY] = point.to_dict()
    AtomicCheckpointIO().save_checkpoint(checkpoint, out)

    result = {
        "out": str(out),
        "threshold": threshold,
        "old_threshold": old_threshold,
        "temperature": temperature,
        "old_temperature": old_temperature,
        "site_sensitivity": sens,
        "site_specificity": spec,
        "site_sensitivity_before": old_sens,
        "site_specificity_before": old_spec,
        "sensitivity_ci": proportion_ci(round(sens * n_tb), n_tb),
        "specificity_ci": proportion_ci(round(spec * n_healthy), n_healthy),
        "n_tb": n_tb,
        "n_healthy": n_healthy,
        "operating_point": point.to_dict(),
    }
    return result
