"""The protocol core is sans-IO (docs/architecture.md §Rules).

Every module under the core packages is parsed (never imported) and walked:
an import of an I/O, clock or OS-randomness module, a call to ``open()``, or a
reference to a clock / OS random source fails the test with file and line.
Time and randomness are parameters (``now_ms: int``, ``rng: Random``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "sottovoce"

#: The sans-IO packages (docs/architecture.md §Rules). Those not written yet are simply absent.
CORE_PACKAGES = (
    "codec", "crypto", "identity", "pairwise", "mls", "sframe", "protocol", "calls", "kt",
)

# fmt: off
# Modules the core must not import (top-level name; "os.path" counts as "os"):
# event loops and sockets, files and the OS, clocks, ambient randomness, and
# network/server/database libraries. The I/O layers (server/, client/) wrap
# the core and pass time, randomness and bytes in.
FORBIDDEN_IMPORTS = frozenset({
    # event loops, sockets, TLS
    "asyncio", "socket", "selectors", "ssl",
    # files, processes, the OS
    "sqlite3", "os", "pathlib", "io", "shutil", "subprocess", "threading",
    # clocks
    "time", "datetime",
    # ambient randomness (os.urandom is covered by "os")
    "random", "secrets", "uuid",
    # network, web and database libraries
    "websockets", "aiohttp", "starlette", "uvicorn", "asyncpg", "nats", "httpx", "requests",
    # dynamic imports would let any of the above past this walk
    "importlib",
})

# Builtins the core must not call: open() reads files; __import__ evades the import walk.
FORBIDDEN_CALLS = frozenset({"open", "__import__"})

# Dotted references the core must not make, matched on their last two components
# after resolving import aliases, so "datetime.datetime.now", and "dt.now" after
# "from datetime import datetime as dt", are both caught (beside the import itself).
FORBIDDEN_ATTRIBUTES = frozenset({
    "os.urandom", "os.getrandom", "io.open",
    "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns",
    "time.perf_counter", "time.sleep",
    "datetime.now", "datetime.utcnow", "datetime.today", "date.today",
})
# Any attribute of these modules is forbidden ("random.*", "secrets.*").
FORBIDDEN_ATTRIBUTE_MODULES = frozenset({"random", "secrets"})
# fmt: on


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of Attribute/Name nodes, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted thing it was imported as (``dt`` -> ``datetime.datetime``)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _is_forbidden_reference(dotted: str) -> bool:
    parts = dotted.split(".")
    if ".".join(parts[-2:]) in FORBIDDEN_ATTRIBUTES:
        return True
    # "random.*" / "secrets.*": the module itself, one level deep (no double reports).
    return parts[0] in FORBIDDEN_ATTRIBUTE_MODULES and len(parts) == 2


def find_violations(source: str, filename: str = "<string>") -> list[str]:
    """Every sans-IO violation in ``source``, as ``"file:line: what"`` strings."""
    tree = ast.parse(source, filename=filename)
    aliases = _aliases(tree)
    found: list[tuple[int, str]] = []

    def report(node: ast.AST, what: str) -> None:
        line = getattr(node, "lineno", 0)
        found.append((line, f"{filename}:{line}: {what}"))

    def resolve(dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        target = aliases.get(head, head)
        return f"{target}.{rest}" if rest else target

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_IMPORTS:
                    report(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            # Relative imports (level > 0) stay inside sottovoce.
            if node.level == 0 and node.module:
                top = node.module.split(".")[0]
                if top in FORBIDDEN_IMPORTS:
                    names = ", ".join(a.name for a in node.names)
                    report(node, f"imports {names} from {node.module}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_CALLS
        ):
            report(node, f"calls {node.func.id}()")
        if isinstance(node, ast.Attribute | ast.Name):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                continue
            dotted = _dotted(node)
            if dotted is None or (isinstance(node, ast.Name) and dotted not in aliases):
                continue
            resolved = resolve(dotted)
            if _is_forbidden_reference(resolved):
                shown = dotted if dotted == resolved else f"{dotted} ({resolved})"
                report(node, f"references {shown}")
    return [text for _, text in sorted(found)]


def _core_modules() -> list[Path]:
    return sorted(
        p for pkg in CORE_PACKAGES if (SRC / pkg).is_dir() for p in (SRC / pkg).rglob("*.py")
    )


def test_core_packages_exist() -> None:
    # Guards against a moved source tree making the walk below vacuous.
    assert (SRC / "codec" / "tls.py").is_file()
    assert (SRC / "crypto" / "hpke.py").is_file()
    assert len(_core_modules()) >= 10


@pytest.mark.parametrize("module", _core_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_style_rule_1_core_module_is_sans_io(module: Path) -> None:
    rel = module.relative_to(SRC.parents[1])
    violations = find_violations(module.read_text(encoding="utf-8"), str(rel))
    assert not violations, "sans-IO core violations:\n" + "\n".join(violations)


# --- the checker itself can fail ----------------------------------------------


PLANTED = """\
from __future__ import annotations
import hmac
import time
from os import urandom
import os.path as osp
from datetime import datetime as dt
from sottovoce.codec import tls
from . import sibling


def nonce() -> bytes:
    return os.urandom(8) + urandom(8)


def stamp() -> float:
    return time.time() + dt.now().timestamp()


def load() -> bytes:
    with open("key.bin", "rb") as f:
        return f.read()


def pick(xs):
    return random.choice(xs) + secrets.token_bytes(4) + __import__("socket")
"""


def test_checker_catches_planted_violations() -> None:
    found = find_violations(PLANTED, "planted.py")
    expected = [
        "planted.py:3: imports time",
        "planted.py:4: imports urandom from os",
        "planted.py:5: imports os.path",
        "planted.py:6: imports datetime from datetime",
        "planted.py:12: references os.urandom",
        "planted.py:12: references urandom (os.urandom)",
        "planted.py:16: references time.time",
        "planted.py:16: references dt.now (datetime.datetime.now)",
        "planted.py:20: calls open()",
        "planted.py:25: references random.choice",
        "planted.py:25: references secrets.token_bytes",
        "planted.py:25: calls __import__()",
    ]
    assert sorted(found) == sorted(expected)


def test_checker_passes_clean_source() -> None:
    clean = "import hmac\nfrom sottovoce.crypto.rng import Random\n\ndef f(rng: Random) -> bytes:\n"
    clean += "    return hmac.new(rng(32), b'', 'sha256').digest()\n"
    assert find_violations(clean) == []
