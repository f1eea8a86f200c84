"""The layout of ``mls/`` (docs/architecture.md): modules named after RFC 9420's nouns
whose imports run one way.

Every module under src/sottovoce/mls is parsed (never imported) and its imports
walked, relative and function-level ones included, and those under
``if TYPE_CHECKING:`` too (a back-reference in a type is still a ring in the design):

* no import ring among the ``mls`` modules;
* persistence (``state``, ``snapshot``) never reaches the ``group`` package, not even
  through a submodule (importing one runs the package's ``__init__``).

The walk is :mod:`tests.imports_graph`'s; the limit of 1,200 lines a file is checked
for the whole tree in test_import_rings.py. A self-test plants a ring and a
back-reference to prove the checks catch them.
"""

from __future__ import annotations

from tests.imports_graph import SRC, Sources, import_graph, reach, read_sources, rings

MLS = SRC / "sottovoce" / "mls"
GROUP = "sottovoce.mls.group"
PERSISTENCE = ("sottovoce.mls.state", "sottovoce.mls.snapshot")


def persistence_violations(sources: Sources) -> list[str]:
    graph = import_graph(sources, with_parents=True)
    return sorted(
        f"{root} reaches {m}"
        for root in PERSISTENCE
        for m in reach(graph, root)
        if m == GROUP or m.startswith(GROUP + ".")
    )


def test_no_import_ring_among_mls_modules() -> None:
    assert rings(import_graph(read_sources(MLS))) == []


def test_persistence_never_reaches_the_group_package() -> None:
    sources = read_sources(MLS)
    assert all(root in sources for root in PERSISTENCE)
    assert persistence_violations(sources) == []


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
