"""The server package never loads decryption code (docs/architecture.md: the server
imports no key-holding code: not pairwise, not sframe, and of mls only its public view).

Every module under src/sottovoce/server is parsed (never imported) and its imports
walked (:mod:`tests.imports_graph`), including relative and function-level ones:

* directly, a server module may import ``sottovoce.mls.public`` and nothing else of
  ``sottovoce.mls``, and never pairwise, sframe, the AEAD/HPKE/sealed-record crypto
  or vodozemac;
* transitively, following what actually runs (``if TYPE_CHECKING:`` blocks do not),
  everything the server pulls in stays clear of those modules and of the crypto
  suite table (it loads HPKE and AEAD); of ``mls`` only the public view and the pure
  wire structs it is built on are reached.

A violation names the file, line and import chain. Self-tests plant violations to
prove the checkers catch them, and one subprocess imports the server and looks at
``sys.modules``, which would also see what parsing cannot (e.g. a dynamic import).
"""

from __future__ import annotations

import subprocess
import sys
from functools import cache

from tests.imports_graph import SRC as SRC_ROOT
from tests.imports_graph import imported, module_name

SRC = SRC_ROOT / "sottovoce"
SERVER = SRC / "server"

#: The one module of mls/ the server may import.
MLS_PUBLIC = "sottovoce.mls.public"

FORBIDDEN = (
    "sottovoce.pairwise",
    "sottovoce.sframe",
    "sottovoce.mls",
    "sottovoce.crypto.aead",
    "sottovoce.crypto.hpke",
    "sottovoce.crypto.sealed",
    "vodozemac",
)

#: Never reached from the server, directly or not: key-holding and decrypting code.
FORBIDDEN_TRANSITIVE = (
    "sottovoce.pairwise",
    "sottovoce.sframe",
    "sottovoce.crypto.aead",
    "sottovoce.crypto.hpke",
    "sottovoce.crypto.sealed",
    "sottovoce.crypto.suite",
    "sottovoce.client",
    "vodozemac",
    "pyhpke",
)
#: What of mls/ the public view may pull in: itself and the key-free wire structs.
MLS_REACHABLE = frozenset(
    {"sottovoce.mls", MLS_PUBLIC, "sottovoce.mls.common", "sottovoce.mls.errors",
     "sottovoce.mls.messages"}
)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Direct imports a server module may not make."""
    found = []
    for name, line in imported(source, module, is_package):
        if _under(name, (MLS_PUBLIC,)):
            continue
        for bad in FORBIDDEN:
            if _under(name, (bad,)):
                found.append(f"{module}:{line} imports {name}")
    return found


# --- the transitive walk -------------------------------------------------------------


def _source_of(module: str, sources: dict[str, str]) -> tuple[str, bool] | None:
    """(source, is_package) of a sottovoce module, from ``sources`` or the tree."""
    if module in sources:  # planted by a self-test: a plain module
        return sources[module], False
    if not module.startswith("sottovoce"):
        return None
    base = SRC.joinpath(*module.split(".")[1:])
    for path, pkg in ((base / "__init__.py", True), (base.parent / f"{base.name}.py", False)):
        if path.is_file():
            return path.read_text(), pkg
    return None


def _loaded(name: str, sources: dict[str, str]) -> list[str]:
    """The modules importing ``name`` runs: its parent packages, then itself (if it is
    a module rather than an attribute of one); third-party names by their top package."""
    if not name.startswith("sottovoce"):
        return [name.split(".")[0]]
    parts = name.split(".")
    out = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [m for m in out if m in sources or _source_of(m, sources) is not None]


def closure(roots: list[str], sources: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Every module reachable from ``roots`` at run time -> one import chain to it."""
    sources = sources or {}
    chains: dict[str, list[str]] = {r: [r] for r in roots}
    todo = list(roots)
    while todo:
        module = todo.pop()
        found = _source_of(module, sources)
        if found is None:
            continue
        source, is_package = found
        for name, _ in imported(source, module, is_package, runtime=True):
            for target in _loaded(name, sources):
                if target not in chains:
                    chains[target] = [*chains[module], target]
                    todo.append(target)
    return chains


def transitive_violations(chains: dict[str, list[str]]) -> list[str]:
    bad = []
    for module, chain in sorted(chains.items()):
        mls_stray = _under(module, ("sottovoce.mls",)) and module not in MLS_REACHABLE
        if mls_stray or _under(module, FORBIDDEN_TRANSITIVE):
            bad.append(" -> ".join(chain))
    return bad


@cache
def _server_modules() -> list[str]:
    return sorted(module_name(p) for p in SERVER.rglob("*.py"))


# --- tests ---------------------------------------------------------------------------


def test_server_never_imports_decryption_code() -> None:
    files = sorted(SERVER.rglob("*.py"))
    assert len(files) >= 10, "the server package was not found"
    problems = []
    for path in files:
        problems += violations(
            path.read_text(), module_name(path), is_package=path.name == "__init__.py"
        )
    assert problems == []


def test_what_the_server_pulls_in_holds_no_keys() -> None:
    chains = closure(_server_modules())
    assert MLS_PUBLIC in chains, "the server no longer uses the MLS public view"
    assert transitive_violations(chains) == []


def test_the_mls_public_view_pulls_in_no_key_holding_module() -> None:
    chains = closure([MLS_PUBLIC])
    assert transitive_violations(chains) == []
    assert {m for m in chains if m.startswith("sottovoce.mls")} <= MLS_REACHABLE


def test_a_running_server_has_loaded_no_decryption_code() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {_server_modules()!r}: importlib.import_module(m)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    loaded = [m for m in out if _under(m, FORBIDDEN_TRANSITIVE)]
    loaded += [m for m in out if _under(m, ("sottovoce.mls",)) and m not in MLS_REACHABLE]
    assert loaded == []
    assert MLS_PUBLIC in out


def test_checker_catches_planted_imports() -> None:
    planted = {
        "import vodozemac": "vodozemac",
        "from sottovoce.pairwise import PairwiseSession": "sottovoce.pairwise",
        "from sottovoce.crypto import aead": "sottovoce.crypto.aead",
        "import sottovoce.mls.key_schedule as ks": "sottovoce.mls.key_schedule",
        "from sottovoce.mls.group import Group": "sottovoce.mls.group",
        "from sottovoce.mls import framing": "sottovoce.mls",
        "from sottovoce.sframe.context import SFrameContext": "sottovoce.sframe",
        "from ...crypto.sealed import open_record": "sottovoce.crypto.sealed",
        "def f():\n    from sottovoce.crypto.hpke import Hpke": "sottovoce.crypto.hpke",
        "import importlib\nimportlib.import_module('sottovoce.pairwise')": "sottovoce.pairwise",
    }
    for source, name in planted.items():
        found = violations(source, "sottovoce.server.storage.sqlite")
        assert found and name in found[0], source
    # And allowed imports stay allowed: the public view is the one door into mls/.
    allowed = (
        "from sottovoce.crypto.sign import ed25519_verify\nimport sottovoce.identity\n"
        "from sottovoce.mls.public import check_external_commit\n"
        "import sottovoce.mls.public as public"
    )
    assert violations(allowed, "sottovoce.server.x") == []


def test_transitive_checker_catches_a_planted_chain() -> None:
    # A server module that imports only an innocent-looking helper, which imports the
    # group state machine: the chain is reported, from the server module to the culprit.
    sources = {
        "sottovoce.server.planted": "from sottovoce.server import helper\n",
        "sottovoce.server.helper": "def f():\n    from sottovoce.mls.group import Group\n",
    }
    chains = closure(["sottovoce.server.planted"], sources)
    bad = transitive_violations(chains)
    assert any(
        line.startswith("sottovoce.server.planted -> sottovoce.server.helper -> ")
        and line.endswith("sottovoce.mls.group")
        for line in bad
    ), bad
    # A TYPE_CHECKING-only import does not run, so it is not followed.
    sources["sottovoce.server.helper"] = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from sottovoce.crypto.suite import CipherSuite\n"
    )
    assert transitive_violations(closure(["sottovoce.server.planted"], sources)) == []
