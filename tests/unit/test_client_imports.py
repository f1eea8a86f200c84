"""The client SDK's modules import each other one way (docs/architecture.md, "Inside
the client: arrows run one way"): the Client composes its parts and hands each one
only what it uses, so no part imports back the object that owns it.

Every module under src/sottovoce/client is parsed (never imported) and every import is
an edge, including relative ones, function-level ones and those under
``if TYPE_CHECKING:`` (a back-reference in a type is still a ring in the design). A
ring is reported by its modules. Self-tests plant rings to prove the checker sees them.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
CLIENT = SRC / "sottovoce" / "client"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute dotted names a module imports (``from a import b`` yields a and a.b)."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return out


def rings(modules: dict[str, tuple[str, bool]]) -> list[list[str]]:
    """The import rings (strongly connected sets of more than one module) among
    ``modules`` (name -> (source, is_package)), each sorted, by Tarjan's algorithm."""
    graph = {
        name: sorted(m for m in _imported(src, name, pkg) if m in modules and m != name)
        for name, (src, pkg) in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def _client_modules() -> dict[str, tuple[str, bool]]:
    return {
        _module_name(p): (p.read_text(encoding="utf-8"), p.name == "__init__.py")
        for p in sorted(CLIENT.rglob("*.py"))
    }


def test_no_import_ring_among_client_modules() -> None:
    modules = _client_modules()
    assert "sottovoce.client.client" in modules  # the walk found the package
    assert rings(modules) == []


def test_checker_catches_planted_rings() -> None:
    """A direct back-import, one under TYPE_CHECKING, a relative one and a package whose
    ``__init__`` re-exports a module that imports the package are all rings."""
    direct = {
        "p.a": ("from p.b import B\n", False),
        "p.b": ("import p.a\n", False),
        "p.c": ("from p.a import A\n", False),  # on the path, not in the ring
    }
    assert rings(direct) == [["p.a", "p.b"]]
    typed = {
        "p.owner": ("from p.part import Part\n", False),
        "p.part": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from p.owner import Owner\n",
            False,
        ),
    }
    assert rings(typed) == [["p.owner", "p.part"]]
    relative = {
        "p.x.one": ("from .two import f\n", False),
        "p.x.two": ("def g():\n    from . import one\n", False),
    }
    assert rings(relative) == [["p.x.one", "p.x.two"]]
    package = {
        "p.calls": ("from p.calls.media import M\n", True),
        "p.calls.media": ("from p.calls import hooks\n", False),
        "p.calls.hooks": ("", False),
    }
    assert rings(package) == [["p.calls", "p.calls.media"]]
    package["p.calls.media"] = ("import p.calls.hooks as hooks\n", False)
    assert rings(package) == []
