"""The package's import graph: no cycles, and arrows that run one way between its folders.

Every ``import``/``from ... import`` of an ``engine`` module counts wherever it is written
(top level, inside a function, under ``TYPE_CHECKING``), so a cycle cannot hide behind a
late import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import engine

ROOT = Path(engine.__file__).parent

# Each folder may import only folders to its left (and itself); the top-level modules errors
# (everything's base), interpreter (process settings) and cli/__init__/__main__ (the front doors)
# are placed explicitly.
# report sits below run: a run ends by writing its report, and the report reads only results.
# Every ``__main__`` module (``engine/__main__.py``, ``engine/sim/__main__.py``) is a front door of
# its own, in the top layer: only the command line (cli, for ``engine sim``) imports one, so it may
# import anything (the sim's command line reads a question file through run.targets).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "interpreter"),
    ("experiment", "endpoint", "sim"),
    ("results", "local"),
    ("report",),
    ("run",),
    ("study", "bench"),
    ("cli", "__init__", "__main__"),
)


def folder_of(module: str) -> str:
    """The folder (or top-level module) a module belongs to; each ``__main__`` is a node of its own."""
    if module.rpartition(".")[2] == "__main__":
        return module.removeprefix("engine.")
    return module.split(".")[1] if "." in module else "__init__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The engine modules ``name`` imports, resolved to modules (``from engine.x import y`` may name a module y)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int:
    part = folder_of(module)
    if part.endswith("__main__"):
        part = "__main__"
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"{module} is in no layer of LAYERS: place its folder")


def test_graph_sees_imports() -> None:
    edges = graph()
    assert "engine.errors" in edges
    assert sum(len(v) for v in edges.values()) > 50  # the walk found the package's arrows at all


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_no_package_cycles() -> None:
    folders: dict[str, set[str]] = {}
    for source, targets in graph().items():
        a = folder_of(source)
        for target in targets:
            b = folder_of(target)
            if a != b:
                folders.setdefault(a, set()).add(b)
    assert cycles(folders) == []


def test_arrows_run_one_way() -> None:
    upward = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(source)
    ]
    assert upward == []


def test_only_the_command_line_imports_a_front_door() -> None:
    doors = [
        f"{s} -> {d}"
        for s, ds in graph().items()
        for d in ds
        if folder_of(d).endswith("__main__") and s != "engine.cli"
    ]
    assert doors == []


def test_no_type_checking_imports() -> None:
    """A ``TYPE_CHECKING`` import is how a cycle hides; with none, every arrow above is a real one."""
    # engine/__init__.py is the exception: it is the top (nothing imports it) and names its lazy
    # public API for type checkers under TYPE_CHECKING, which cannot close a cycle.
    hiding = [
        name
        for name, path in modules().items()
        if name != "engine" and "TYPE_CHECKING" in path.read_text(encoding="utf-8")
    ]
    assert hiding == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
