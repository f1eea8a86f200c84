"""Arrows run one way across the whole tree (docs/architecture.md, "Who may import what"):
no two modules under src/sottovoce reach each other through their imports, and no
file is so long that nobody reads it whole.

Every module is parsed (never imported) with :mod:`tests.imports_graph`: imports under
``if TYPE_CHECKING:`` count (a type-only back-reference is still a ring in the design),
relative and absolute ones are both resolved, and importing a package counts as
importing its ``__init__``. A ring is reported by its modules and the imports that
close it. Self-tests plant rings to prove the checker sees them.
"""

from __future__ import annotations

from tests.imports_graph import SRC, Sources, edges_within, import_graph, read_sources, rings

PACKAGE = SRC / "sottovoce"
#: A module longer than this is split by what it does (one job per module).
MAX_LINES = 1200


def ring_report(sources: Sources) -> list[str]:
    """One line per ring: its modules, then the imports that close it."""
    graph = import_graph(sources)
    return [
        " ".join(ring) + ": " + ", ".join(edges_within(graph, ring)) for ring in rings(graph)
    ]


def test_no_import_ring_in_the_tree() -> None:
    sources = read_sources(PACKAGE)
    assert {"sottovoce.server.app", "sottovoce.client.client", "sottovoce.mls"} <= set(sources)
    report = ring_report(sources)
    assert not report, "import rings:\n" + "\n".join(report)


def test_no_source_file_over_1200_lines() -> None:
    long = {
        module: n for module, (source, _) in read_sources(PACKAGE).items()
        if (n := len(source.splitlines())) > MAX_LINES
    }
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_checker_catches_planted_rings() -> None:
    """A direct back-import, one under TYPE_CHECKING, a relative one, a function-level
    one and a package whose ``__init__`` re-exports a module that imports the package
    are all rings; a module that only imports into a ring is not in it."""
    planted: Sources = {
        "p.a": ("from p.b import B\n", False),
        "p.b": ("import p.a\n", False),
        "p.c": ("from p.a import A\n", False),  # on the path, not in the ring
    }
    assert ring_report(planted) == ["p.a p.b: p.a -> p.b, p.b -> p.a"]
    typed: Sources = {
        "p.server.app": ("from p.server.delivery import Delivery\n", False),
        "p.server.delivery": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from p.server.app import ServerApp\n",
            False,
        ),
    }
    assert rings(import_graph(typed)) == [["p.server.app", "p.server.delivery"]]
    relative: Sources = {
        "p.x.one": ("from .two import f\n", False),
        "p.x.two": ("def g():\n    from . import one\n", False),
    }
    assert rings(import_graph(relative)) == [["p.x.one", "p.x.two"]]
    package: Sources = {
        "p.fanout": ("from p.fanout.base import Fanout\n", True),
        "p.fanout.base": ("from p.fanout import make\n", False),
        "p.fanout.nats": ("from ..fanout.base import Fanout\n", False),
    }
    assert rings(import_graph(package)) == [["p.fanout", "p.fanout.base"]]
    package["p.fanout.base"] = ("import p.ports\n", False)
    assert rings(import_graph(package)) == []


def test_checker_finds_a_back_import_planted_in_the_real_tree() -> None:
    """The walk over the real tree sees a ring as soon as one module imports back."""
    sources = read_sources(PACKAGE)
    source, is_package = sources["sottovoce.server.delivery"]
    sources["sottovoce.server.delivery"] = (
        source + "\nif TYPE_CHECKING:\n    from sottovoce.server.app import ServerApp\n",
        is_package,
    )
    report = ring_report(sources)
    assert len(report) == 1
    assert report[0].startswith("sottovoce.server.app ")
    assert "sottovoce.server.delivery -> sottovoce.server.app" in report[0]
