"""The one loader for test vectors: tests never open vector files themselves.

Vector files are checked in under ``tests/vectors/data`` (where each comes from,
and its sha256, is in ``tests/vectors/data/PROVENANCE``). Tests call :func:`load`
or :func:`params`:

    from tests.vectors.loader import load, params

    @pytest.mark.parametrize("vector", params("mls/tree-math.json"))
    def test_tree_math(vector): ...

A missing file FAILS the test that needs it, naming the path: a checkout
without its vectors must never pass by skipping them.

To read every vector from another directory, set ``SOTTOVOCE_VECTORS=/path``.
To run another vector file of the same format without code changes (say, one
produced by another MLS implementation), point one relative path elsewhere:

    SOTTOVOCE_VECTOR_FILES="mls/welcome.json=/tmp/other-welcome.json" pytest tests/vectors
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: The vectors checked into the repository.
DEFAULT_DIR = Path(__file__).resolve().parent / "data"

VECTORS_DIR: Path = Path(os.environ.get("SOTTOVOCE_VECTORS") or DEFAULT_DIR)


def _file_overrides() -> dict[str, Path]:
    spec = os.environ.get("SOTTOVOCE_VECTOR_FILES", "")
    pairs = (item.split("=", 1) for item in spec.split(",") if "=" in item)
    return {rel.strip(): Path(target.strip()) for rel, target in pairs}


#: ``relpath -> file`` replacements from ``SOTTOVOCE_VECTOR_FILES`` (comma-separated).
VECTOR_FILES: dict[str, Path] = _file_overrides()


def path(relpath: str) -> Path:
    """Absolute path of a vector file: an override, else relative to :data:`VECTORS_DIR`."""
    return VECTOR_FILES.get(relpath, VECTORS_DIR / relpath)


#: Marks the one param :func:`params` returns for an absent file; tests/vectors/conftest.py
#: fails every test so marked, at setup, with the message the mark carries.
MISSING_MARK = pytest.mark.vector_file_missing


def _missing(relpath: str) -> str:
    return f"vector file {relpath} is missing: {path(relpath)} does not exist"


def load(relpath: str) -> Any:
    """Parsed JSON of ``relpath``; fails the calling test if the file is absent."""
    p = path(relpath)
    if not p.is_file():
        pytest.fail(_missing(relpath), pytrace=False)
    with p.open(encoding="utf-8") as f:
        return json.load(f)


def text(relpath: str) -> str:
    """The text of ``relpath`` (a vector file that is not JSON: a spec's example, Go
    test data); fails the calling test if the file is absent."""
    p = path(relpath)
    if not p.is_file():
        pytest.fail(_missing(relpath), pytrace=False)
    return p.read_text(encoding="utf-8")


def files(reldir: str) -> list[Any]:
    """One ``pytest.param`` per JSON file under ``reldir`` (recursively), holding its
    relative path and parsed content, named by the path below ``reldir``.

    For upstream suites kept as one file per case (transparency-dev/merkle's
    testdata). An absent or empty directory gives a single failing param, as
    :func:`params` does for an absent file.
    """
    root = path(reldir.rstrip("/"))
    found = sorted(root.rglob("*.json")) if root.is_dir() else []
    if not found:
        return [pytest.param(None, id="missing", marks=MISSING_MARK(_missing(reldir)))]
    out: list[Any] = []
    for file in found:
        with file.open(encoding="utf-8") as f:
            item = json.load(f)
        out.append(pytest.param(item, id=file.relative_to(root).as_posix()))
    return out


def _default_id(index: int, item: Any) -> str:
    # "suite1-#3" for MLS-style vectors, "#3" otherwise.
    if isinstance(item, dict) and "cipher_suite" in item:
        return f"suite{item['cipher_suite']}-#{index}"
    return f"#{index}"


def params(
    relpath: str,
    id_fn: Callable[[Any], str] | None = None,
    *,
    key: str | None = None,
) -> list[Any]:
    """One ``pytest.param`` per vector in the JSON list of ``relpath``.

    ``id_fn(vector) -> str`` names each case (default: ``suite<N>-#<i>`` or
    ``#<i>``); repeated names get ``-#<i>`` appended so every id is unique.
    ``key`` picks a list inside a JSON object (e.g. ``key="header"`` for
    ``sframe/test-vectors.json``). If the file is absent, the result is a
    single param named ``missing`` that fails, naming the path (collection goes
    on, so every missing file is reported, and none is skipped).
    """
    p = path(relpath)
    if not p.is_file():
        return [pytest.param(None, id="missing", marks=MISSING_MARK(_missing(relpath)))]
    data = load(relpath)
    if key is not None:
        data = data[key]
    if not isinstance(data, list):
        raise TypeError(f"{relpath}{'[' + key + ']' if key else ''} is not a JSON list")
    out: list[Any] = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        name = id_fn(item) if id_fn is not None else _default_id(i, item)
        if name in seen:
            name = f"{name}-#{i}"
        seen.add(name)
        out.append(pytest.param(item, id=name))
    return out
