"""The app imports at its start what the page's first request and the unlock would
import on first use (app/bridge.py ``PREWARM``, ``Bridge.prewarm``): afterwards the
account views and every import made inside a function on the unlock's path (the
bridge, the calls bridges, the client's call surface) load no module more.

Each check runs in a fresh interpreter, so nothing imported by other tests counts; the
same run without the prewarm shows the check can fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "sottovoce"
#: The modules whose functions run while an unlock is answered.
UNLOCK_PATH = ("app/bridge.py", "app/calls_bridge.py", "app/p2p_bridge.py",
               "client/call_surface.py")

RUN = """\
import importlib, json, sys
from pathlib import Path
from sottovoce.app.bridge import Bridge
bridge = Bridge(Path(sys.argv[1]))
if sys.argv[2] == "prewarm":
    bridge.prewarm()
before = set(sys.modules)
bridge._ops()
for name in json.loads(sys.argv[3]):
    importlib.import_module(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def lazy_imports() -> list[str]:
    """The sottovoce modules imported inside functions of the unlock path's modules."""
    found: set[str] = set()
    for rel in UNLOCK_PATH:
        tree = ast.parse((SRC / rel).read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                            and node.module.startswith("sottovoce."):
                        found.add(node.module)
    return sorted(found)


def loaded_after(tmp_path: Path, mode: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", RUN, str(tmp_path), mode,
                           json.dumps(lazy_imports())],
                          capture_output=True, text=True, timeout=120, check=True)
    return [m for m in json.loads(proc.stdout) if m.startswith("sottovoce")]


def test_the_unlock_path_imports_nothing_after_the_prewarm(tmp_path: Path) -> None:
    assert "sottovoce.client.calls.wiring" in lazy_imports()  # the scan sees them
    assert loaded_after(tmp_path, "prewarm") == []


def test_without_the_prewarm_they_are_imported_on_first_use(tmp_path: Path) -> None:
    later = loaded_after(tmp_path, "none")
    assert {"sottovoce.app.bridge_views", "sottovoce.app.p2p_bridge",
            "sottovoce.client.calls.wiring"} <= set(later)
