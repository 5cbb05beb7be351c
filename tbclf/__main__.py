"""`python -m tbclf`."""

import os
import sys


def _unshadow() -> None:
    """Run from the folder that holds the clone, `./tbclf` (the clone, with its `data/`
    folder) shadows the installed package as a namespace package; point imports back at the
    package this file belongs to."""
    package = sys.modules.get("tbclf")
    if package is None or getattr(package, "__file__", None) is not None:
        return
    for name in [m for m in sys.modules if m == "tbclf" or m.startswith("tbclf.")]:
        if name != __name__:
            del sys.modules[name]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_unshadow()

from tbclf.cli import cli_main  # noqa: E402

if __name__ == "__main__":
    cli_main()
