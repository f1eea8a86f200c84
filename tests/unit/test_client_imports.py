"""The client SDK's modules import each other one way (docs/architecture.md, "Inside
the client: arrows run one way"): the Client composes its parts and hands each one
only what it uses, so no part imports back the object that owns it.

Every module under src/sottovoce/client is parsed (never imported) by
:mod:`tests.imports_graph` and every import is an edge, including relative ones,
function-level ones and those under ``if TYPE_CHECKING:`` (a back-reference in a type
is still a ring in the design). A ring is reported by its modules. The self-tests that plant
rings to prove the shared checker sees them (tests/unit/test_import_rings.py, which
checks the whole tree the same way).
"""

from __future__ import annotations

from tests.imports_graph import SRC, import_graph, read_sources, rings

CLIENT = SRC / "sottovoce" / "client"


def test_no_import_ring_among_client_modules() -> None:
    modules = read_sources(CLIENT)
    assert "sottovoce.client.client" in modules  # the walk found the package
    assert rings(import_graph(modules)) == []
