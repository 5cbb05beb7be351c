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
