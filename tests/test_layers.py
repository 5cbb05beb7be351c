"""The package's layers import only downwards: one home for each thing, no cycles to untangle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tbclf"
# Lower layers never import higher ones; modules of one layer may import each other.
LAYERS = [
    {"tbclf", "tbclf.errors", "tbclf.io"},
    {"tbclf.data"},
    {"tbclf.evaluation"},
    {"tbclf.models"},
    {"tbclf.engine"},
    {"tbclf.eda", "tbclf.explain", "tbclf.export", "tbclf.inference", "tbclf.serve"},
    {"tbclf.cli", "tbclf.lightning_cli", "tbclf.commands", "tbclf.__main__"},
]


def _layer(module: str) -> int:
    parts = module.split(".")
    for depth in (2, 1):
        name = ".".join(parts[:depth])
        for i, layer in enumerate(LAYERS):
            if name in layer:
                return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m == "tbclf" or m.startswith("tbclf.")}


def test_no_import_runs_back_up() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        here = _layer(module)
        for target in _imports(path):
            if target != "tbclf" and _layer(target) > here:
                upward.append(f"{module} (layer {here}) imports {target} (layer {_layer(target)})")
    assert not upward, "\n".join(upward)


def test_the_input_spec_and_the_csv_writer_are_defined_once() -> None:
    texts = {p: p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}
    assert [p.name for p, t in texts.items() if "MODEL_INPUT_KEYS" in t] == []
    assert [p.name for p, t in texts.items() if "class InputSpec" in t] == ["spec.py"]
    writers = sorted(p.name for p, t in texts.items() if "csv.writer(" in t)
    assert writers == ["io.py"], f"CSV outputs go through tbclf.io: {writers}"
