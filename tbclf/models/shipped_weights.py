"""``model.weights`` values: a file path, or ``tbclf:<name>`` for a backbone shipped in the
package (``tbclf/weights``), so it loads offline with no extra install or download."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tbclf.errors import ConfigError

PREFIX = "tbclf:"
SUFFIX = ".safetensors"


def shipped_weights() -> dict[str, Path]:
    """Name -> file of every backbone shipped with tbclf."""
    folder = Path(str(resources.files("tbclf.weights")))
    return {p.name[: -len(SUFFIX)]: p for p in sorted(folder.glob(f"*{SUFFIX}"))}


def resolve_weights(value: str | Path) -> Path:
    """The file a ``model.weights`` value names (a path, or ``tbclf:<name>``)."""
    text = str(value)
    if not text.startswith(PREFIX):
        return Path(text).expanduser()
    name = text[len(PREFIX) :]
    shipped = shipped_weights()
    if name not in shipped:
        known = ", ".join(PREFIX + n for n in shipped) or "none"
        raise ConfigError(
            f"model.weights: {text!r} is not a backbone shipped with tbclf (shipped: {known}); "
            "pass one of those or a weights file's path"
        )
    return shipped[name]
