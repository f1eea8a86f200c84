"""The server package never imports decryption code (docs/architecture.md §Rules).

Every module under src/sottovoce/server is parsed (never imported) and its
imports walked, including relative and function-level ones; importing
sottovoce.pairwise, sottovoce.mls, the AEAD/HPKE/sealed-record crypto or
vodozemac fails the test with file and line. A self-test plants such an
import to prove the checker catches it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "sottovoce"
SERVER = SRC / "server"

FORBIDDEN = (
    "sottovoce.pairwise",
    "sottovoce.mls",
    "sottovoce.crypto.aead",
    "sottovoce.crypto.hpke",
    "sottovoce.crypto.sealed",
    "vodozemac",
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Absolute dotted names a module imports (``from a import b`` yields a and a.b)."""
    out: list[tuple[str, int]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
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
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in
            ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.args[0].value, node.lineno))
    return out


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    found = []
    for name, line in _imported(ast.parse(source), module, is_package):
        for bad in FORBIDDEN:
            if name == bad or name.startswith(bad + "."):
                found.append(f"{module}:{line} imports {name}")
    return found


def test_server_never_imports_decryption_code() -> None:
    files = sorted(SERVER.rglob("*.py"))
    assert len(files) >= 10, "the server package was not found"
    problems = []
    for path in files:
        problems += violations(
            path.read_text(), _module_name(path), is_package=path.name == "__init__.py"
        )
    assert problems == []


def test_checker_catches_planted_imports() -> None:
    planted = {
        "import vodozemac": "vodozemac",
        "from sottovoce.pairwise import PairwiseSession": "sottovoce.pairwise",
        "from sottovoce.crypto import aead": "sottovoce.crypto.aead",
        "import sottovoce.mls.key_schedule as ks": "sottovoce.mls.key_schedule",
        "from ...crypto.sealed import open_record": "sottovoce.crypto.sealed",
        "def f():\n    from sottovoce.crypto.hpke import Hpke": "sottovoce.crypto.hpke",
        "import importlib\nimportlib.import_module('sottovoce.pairwise')": "sottovoce.pairwise",
    }
    for source, name in planted.items():
        found = violations(source, "sottovoce.server.storage.sqlite")
        assert found and name in found[0], source
    # And allowed imports stay allowed.
    allowed = "from sottovoce.crypto.sign import ed25519_verify\nimport sottovoce.identity"
    assert violations(allowed, "sottovoce.server.x") == []
