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
    {
        "tbclf.eda",
        "tbclf.explain",
        "tbclf.export",
        "tbclf.inference",
        "tbclf.onnx_module",
        "tbclf.serve",
    },
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


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The tbclf modules a file imports when it runs, function-level imports included and
    ``if TYPE_CHECKING:`` blocks left out; ``from tbclf.a import b`` names module ``tbclf.a.b``
    when there is one, else ``tbclf.a``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if test is not None and "TYPE_CHECKING" in ast.unparse(test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {m for m in found if m in modules}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (or a module importing itself),
    by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_itself_round_a_circle() -> None:
    paths = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(paths)
    graph = {m: _runtime_imports(p, modules) - {m} for m, p in paths.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_cycle_check_finds_a_hidden_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
