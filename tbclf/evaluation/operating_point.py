"""The operating point: a model's threshold with the record of how and where it was chosen.

One typed record (:class:`OperatingPoint`) with one dict form, stored under one key
(:data:`KEY`) in checkpoints, in the predictions' `.json` sidecars and (as
``tbclf.operating_point``) in ONNX metadata; :func:`choose_operating_point` is the one place a
threshold is picked on labelled scores (training's validation epochs, `tbclf rethreshold`,
`tbclf ensemble`). Files written before the record existed still load: :meth:`from_legacy`
reads their separate threshold, origin and temperature.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from tbclf.errors import ConfigError
from tbclf.evaluation.threshold import pick_threshold

KEY = "operating_point"
# Before the record: the checkpoint's key for a re-picked threshold's origin, and the sidecar's
# and ONNX metadata's separate fields. Read, never written.
LEGACY_CHECKPOINT_KEY = "tbclf_threshold_source"

Scalar = str | int | float | bool
FIELDS = ("threshold", "strategy", "target_sensitivity", "source", "description", "temperature")


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold on the reported P(TB) and how it was chosen.

    Attributes:
        threshold: TB when P(TB) >= threshold.
        strategy: how it was picked ("sensitivity", "youden", or a word for a threshold that
            was not picked on scores: "members' mean", "fixed", "inferred", "default").
        target_sensitivity: the sensitivity the "sensitivity" strategy aimed for.
        source: where it was chosen ("validation", "site validation", "ensemble validation",
            "out-of-fold", "members", ...).
        description: on what, in words, for reports ("" = say it from the fields above).
        temperature: the temperature of the probabilities it was chosen on (1 = none).
        details: further plain facts (the checkpoint, val_root, split file, image counts).
    """

    threshold: float
    strategy: str = "sensitivity"
    target_sensitivity: float | None = 0.9
    source: str = "validation"
    description: str = ""
    temperature: float = 1.0
    details: Mapping[str, Scalar] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, with the details alongside them."""
        out: dict[str, Any] = {
            **{k: v for k, v in self.details.items() if k not in FIELDS},
            "threshold": float(self.threshold),
            "strategy": self.strategy,
            "source": self.source,
            "temperature": float(self.temperature),
        }
        if self.target_sensitivity is not None:
            out["target_sensitivity"] = float(self.target_sensitivity)
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "operating point") -> OperatingPoint:
        """The record from :meth:`to_dict`'s form; ConfigError naming ``where`` when it is not
        one (files are untrusted input: only plain values are kept)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: the operating point is not a mapping ({data!r:.80}).")
        threshold = _number(data.get("threshold"), where, "threshold")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"{where}: threshold {threshold} is not in [0, 1].")
        target = data.get("target_sensitivity")
        return cls(
            threshold=threshold,
            strategy=str(data.get("strategy") or "unknown"),
            target_sensitivity=None if target is None else _number(target, where, "target"),
            source=str(data.get("source") or "unknown"),
            description=str(data.get("description") or ""),
            temperature=_number(data.get("temperature", 1.0), where, "temperature"),
            details={str(k): v for k, v in data.items() if k not in FIELDS and _plain(v)},
        )

    @classmethod
    def from_legacy(
        cls,
        threshold: Any,
        origin: Mapping[str, Any] | None,
        temperature: Any = 1.0,
        where: str = "threshold record",
    ) -> OperatingPoint:
        """A file from before the record: its threshold, the origin dict it kept beside it
        (none: chosen on the run's validation split) and its temperature."""
        data = {"source": "validation", **dict(origin or {})}
        data.update(threshold=threshold, temperature=temperature)
        return cls.from_dict(data, where)

    def with_threshold(self, threshold: float, temperature: float | None = None) -> OperatingPoint:
        """A copy at another threshold (and temperature): the values a model's buffers hold."""
        new_t = self.temperature if temperature is None else float(temperature)
        return dataclasses.replace(self, threshold=float(threshold), temperature=new_t)

    def with_details(self, **details: Scalar | None) -> OperatingPoint:
        """A copy with more details (None values left out)."""
        kept = {k: v for k, v in details.items() if v is not None}
        return dataclasses.replace(self, details={**self.details, **kept})


def choose_operating_point(
    probs: Any,
    labels: Any,
    strategy: str = "sensitivity",
    target_sensitivity: float = 0.9,
    *,
    source: str,
    description: str = "",
    temperature: float = 1.0,
    **details: Scalar | None,
) -> OperatingPoint:
    """Pick the threshold on labelled P(TB) (``pick_threshold``'s rule) and record how: the
    one way tbclf chooses an operating point."""
    threshold = pick_threshold(probs, labels, strategy, target_sensitivity)
    return OperatingPoint(
        threshold=float(threshold),
        strategy=strategy,
        target_sensitivity=float(target_sensitivity) if strategy == "sensitivity" else None,
        source=source,
        description=description,
        temperature=float(temperature),
    ).with_details(**details)


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: {name} must be a number, got {value!r:.80}.")
    return float(value)


def _plain(value: Any) -> bool:
    """A value a record may keep: a string, a bool or a finite number."""
    if isinstance(value, str | bool):
        return True
    return isinstance(value, int | float) and math.isfinite(value)
