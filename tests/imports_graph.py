"""The import graph of the source tree, read by parsing (never by importing).

One walk for every test that checks who may import what (import rings tree-wide and
per package, the server's key-free closure, the MLS layout): each module's imports
become edges, relative and absolute alike, function-level ones and those under
``if TYPE_CHECKING:`` included unless ``runtime`` is asked for (a type-only
back-reference is still a ring in the design, but it does not run). ``from a import b``
yields both ``a`` and ``a.b``, so importing a module of a package through it counts,
and importing a package counts as importing its ``__init__`` (named like the package).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: module name -> (source, is_package)
Sources = dict[str, tuple[str, bool]]
#: module -> the modules it imports
Graph = dict[str, set[str]]


def module_name(path: Path, root: Path = SRC) -> str:
    """``src/sottovoce/a/__init__.py`` -> ``sottovoce.a``; ``.../a/b.py`` -> ``sottovoce.a.b``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_sources(package: Path, root: Path = SRC) -> Sources:
    """Every module under ``package`` (a directory below ``root``), by dotted name."""
    return {
        module_name(p, root): (p.read_text(encoding="utf-8"), p.name == "__init__.py")
        for p in sorted(package.rglob("*.py"))
    }


def is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST, *, runtime: bool) -> list[ast.AST]:
    """Every node, or (``runtime``) every node outside ``if TYPE_CHECKING:`` bodies."""
    if not runtime:
        return list(ast.walk(tree))
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and is_type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _dynamic(node: ast.AST) -> str | None:
    """The literal name of ``importlib.import_module("x")`` / ``__import__("x")``."""
    if not (isinstance(node, ast.Call) and node.args):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    arg = node.args[0]
    if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) and (
        isinstance(arg.value, str)
    ):
        return arg.value
    return None


def imported(
    source: str | ast.AST, module: str, is_package: bool, *, runtime: bool = False
) -> list[tuple[str, int]]:
    """(absolute dotted name, line) of each import a module makes; ``from a import b``
    yields a and a.b; a dynamic import of a literal name counts too."""
    tree = ast.parse(source) if isinstance(source, str) else source
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in _nodes(tree, runtime=runtime):
        if isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            out.extend((f"{target}.{a.name}", node.lineno) for a in node.names)
        elif (name := _dynamic(node)) is not None:
            out.append((name, node.lineno))
    return out


def import_graph(sources: Sources, *, with_parents: bool = False) -> Graph:
    """module -> the modules of ``sources`` it imports; ``with_parents`` adds the
    packages an import runs first (``a.b.c`` runs ``a`` and ``a.b``)."""
    graph: Graph = {}
    for module, (source, is_package) in sources.items():
        targets = set()
        for name, _ in imported(source, module, is_package):
            parts = name.split(".")
            start = 1 if with_parents else len(parts)
            targets.update(".".join(parts[:i]) for i in range(start, len(parts) + 1))
        graph[module] = {t for t in targets if t in sources and t != module}
    return graph


def reach(graph: Graph, root: str) -> set[str]:
    """Every module ``root`` reaches through its imports."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def rings(graph: Graph) -> list[list[str]]:
    """The import rings (strongly connected sets of more than one module), each sorted,
    by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            ring = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                ring.append(w)
                if w == v:
                    break
            if len(ring) > 1:
                found.append(sorted(ring))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def edges_within(graph: Graph, ring: list[str]) -> list[str]:
    """The imports that close a ring, ``a -> b`` each, to name in a failure."""
    members = set(ring)
    return [f"{a} -> {b}" for a in ring for b in sorted(graph[a]) if b in members]
