"""The layout of ``mls/`` (docs/architecture.md): modules named after RFC 9420's nouns
whose imports run one way.

Every module under src/sottovoce/mls is parsed (never imported) and its imports
walked, relative and function-level ones included, and those under
``if TYPE_CHECKING:`` too (a back-reference in a type is still a ring in the design):

* no import ring among the ``mls`` modules;
* persistence (``state``, ``snapshot``) never reaches the ``group`` package, not even
  through a submodule (importing one runs the package's ``__init__``);
* no file is over 1,200 lines.

A self-test plants a ring and a back-reference to prove the checks catch them.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "sottovoce"
PACKAGE = "sottovoce.mls"
GROUP = "sottovoce.mls.group"
PERSISTENCE = ("sottovoce.mls.state", "sottovoce.mls.snapshot")
MAX_LINES = 1200

#: module -> (source, is_package)
Sources = dict[str, tuple[str, bool]]


def _mls_sources() -> Sources:
    out: Sources = {}
    for path in sorted((SRC / "mls").rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        out[".".join(parts)] = (path.read_text(encoding="utf-8"), is_package)
    return out


def _imported(source: str, module: str, is_package: bool) -> set[str]:
    """Dotted names a module imports (``from a import b`` yields a and a.b)."""
    out: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
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


def import_graph(sources: Sources, *, with_parents: bool = False) -> dict[str, set[str]]:
    """module -> the modules of ``sources`` it imports; ``with_parents`` adds the
    packages an import runs first (``a.b.c`` runs ``a`` and ``a.b``)."""
    graph: dict[str, set[str]] = {}
    for module, (source, is_package) in sources.items():
        targets = set()
        for name in _imported(source, module, is_package):
            parts = name.split(".")
            start = 1 if with_parents else len(parts)
            targets.update(".".join(parts[:i]) for i in range(start, len(parts) + 1))
        graph[module] = {t for t in targets if t in sources and t != module}
    return graph


def _reach(graph: dict[str, set[str]], root: str) -> set[str]:
    seen, todo = set(), [root]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def rings(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import rings (modules that reach each other), each sorted."""
    reach = {m: _reach(graph, m) for m in graph}
    found: list[list[str]] = []
    for m in sorted(graph):
        ring = sorted(n for n in reach[m] if m in reach[n])
        if ring and ring not in found:
            found.append(ring)
    return found


def persistence_violations(sources: Sources) -> list[str]:
    graph = import_graph(sources, with_parents=True)
    return sorted(
        f"{root} reaches {m}"
        for root in PERSISTENCE
        for m in _reach(graph, root)
        if m == GROUP or m.startswith(GROUP + ".")
    )


def test_no_import_ring_among_mls_modules() -> None:
    assert rings(import_graph(_mls_sources())) == []


def test_persistence_never_reaches_the_group_package() -> None:
    sources = _mls_sources()
    assert all(root in sources for root in PERSISTENCE)
    assert persistence_violations(sources) == []


def test_no_mls_file_over_1200_lines() -> None:
    long = {
        m: n for m, (source, _) in _mls_sources().items()
        if (n := len(source.splitlines())) > MAX_LINES
    }
    assert long == {}


def test_checker_catches_planted_violations() -> None:
    planted: Sources = {
        "sottovoce.mls.a": ("from sottovoce.mls import b\n", False),
        "sottovoce.mls.b": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .a import x\n",
            False,
        ),
        "sottovoce.mls.c": ("def f():\n    import sottovoce.mls.a\n", False),
        "sottovoce.mls.group": ("", True),
        "sottovoce.mls.group.epoch_state": ("", False),
        "sottovoce.mls.state": ("from sottovoce.mls.snapshot import S\n", False),
        "sottovoce.mls.snapshot": ("from sottovoce.mls.group.epoch_state import E\n", False),
    }
    assert rings(import_graph(planted)) == [["sottovoce.mls.a", "sottovoce.mls.b"]]
    assert persistence_violations(planted) == [
        "sottovoce.mls.snapshot reaches sottovoce.mls.group",
        "sottovoce.mls.snapshot reaches sottovoce.mls.group.epoch_state",
        "sottovoce.mls.state reaches sottovoce.mls.group",
        "sottovoce.mls.state reaches sottovoce.mls.group.epoch_state",
    ]
