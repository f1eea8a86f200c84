"""Only client/calls, client/media (voice notes) and the tests import the media stack:
aiortc, aioice, PyAV.

Like tests/unit/test_server_imports.py: every module under src/sottovoce is
parsed, never imported, and its imports walked by :mod:`tests.imports_graph`
(relative, function-level and dynamic ones included); a self-test plants such
imports to prove the checker works.
"""

from __future__ import annotations

from tests.imports_graph import SRC as SRC_ROOT
from tests.imports_graph import imported, module_name

SRC = SRC_ROOT / "sottovoce"

MEDIA = ("aiortc", "aioice", "av", "pylibsrtp", "pyee")
#: Calls, and voice notes (transcoded, recorded and played with PyAV).
ALLOWED = ("sottovoce.client.calls", "sottovoce.client.media")


def media_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    return [
        f"{module}:{line} imports {name}"
        for name, line in imported(source, module, is_package)
        if any(name == m or name.startswith(m + ".") for m in MEDIA)
    ]


def test_only_client_calls_imports_the_media_stack() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) >= 100, "the source tree was not found"
    problems = []
    users = set()
    for path in files:
        module = module_name(path)
        found = media_violations(path.read_text(), module, is_package=path.name == "__init__.py")
        if any(module == a or module.startswith(a + ".") for a in ALLOWED):
            if found:
                users.add(module)
            continue
        problems += found
    assert problems == []
    # the walk does see the real users
    assert {"sottovoce.client.calls.media", "sottovoce.client.media.voice"} <= users


def test_checker_catches_planted_media_imports() -> None:
    for source in (
        "import av",
        "from aiortc import RTCPeerConnection",
        "def f():\n    import aioice.ice",
        "import importlib\nimportlib.import_module('aiortc.contrib.media')",
    ):
        assert media_violations(source, "sottovoce.client.client"), source
    assert media_violations("import avocado", "sottovoce.client.client") == []
