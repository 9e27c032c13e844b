"""The import graph of sage_cli, read with `ast` (imports inside functions count: a lazy import is still a
dependency): the CLI sits on top of the library, and no module reaches back into it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sage_cli"

# Circles still in the tree, each to be cut where it lives; a new circle fails the test. None is left.
KNOWN_CIRCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(node, module: str, is_package: bool, modules: dict) -> list[str]:
    """The sage_cli modules one import statement names (`from pkg import mod` names pkg.mod)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, up level - 1
            pkg = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = []
    for name in names:
        while name and name not in modules:  # `import sage_cli.x.y` depends on the module that exists
            name = name.rpartition(".")[0]
        if name.startswith("sage_cli"):
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {m: set() for m in modules}
    for m, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[m].update(t for t in _imported(node, m, path.name == "__init__.py", modules) if t != m)
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_and_relative_imports():
    g = import_graph()
    assert "sage_cli.cli" in g["sage_cli.__main__"]
    assert "sage_cli.commands.demo" in g["sage_cli.cli"]  # `from sage_cli.commands import demo as demo_cmd`
    assert "sage_cli.models.engine" in g["sage_cli.commands.infer"] or "sage_cli.infer" in g["sage_cli.commands.infer"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_only_main_imports_the_cli():
    users = sorted(m for m, deps in import_graph().items() if "sage_cli.cli" in deps)
    assert users == ["sage_cli.__main__"]


def test_the_library_never_imports_a_command():
    front = ("sage_cli.cli", "sage_cli.__main__", "sage_cli.commands")
    back = {m: sorted(d for d in deps if d.startswith("sage_cli.commands"))
            for m, deps in import_graph().items() if not m.startswith(front)}
    assert {m: d for m, d in back.items() if d} == {}


def test_no_new_import_circle():
    new = [sorted(c) for c in circles(import_graph()) if c not in KNOWN_CIRCLES]
    assert new == [], f"import circles: {new}"
