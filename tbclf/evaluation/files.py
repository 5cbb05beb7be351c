"""Atomic output files for reports and EDA: a crash never leaves a half-written JSON or PNG."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tbclf.engine.atomic import atomic_write_bytes, atomic_write_text
from tbclf.errors import ConfigError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_can_write",
    "new_figure",
    "save_figure",
]


def _json_safe(obj: Any) -> Any:
    """NaN/inf become null (valid JSON); numpy scalars and arrays become Python values."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Render to memory, then write atomically (layout comes from the figure's constrained
    layout; bbox_inches="tight" would draw every figure twice)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def check_can_write(
    out_dir: str | Path, names: list[str] | tuple[str, ...], overwrite: bool
) -> Path:
    """Refuse to replace earlier outputs unless the caller asked for it explicitly."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a folder; choose another --out")
    if not overwrite:
        existing = [n for n in names if (out / n).exists()]
        if existing:
            raise ConfigError(
                f"{out} already holds {', '.join(existing)}; pass overwrite=True (--overwrite) "
                "to replace them or choose another output folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    return out


def new_figure(width: float, height: float) -> Figure:
    """An Agg figure not registered with pyplot.

    No global backend switch (notebooks keep theirs), no pyplot state to leak in long runs or
    callbacks, and no display needed.
    """
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig
