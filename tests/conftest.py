"""Shared fixtures: a deterministic random source for the sans-IO core, and an open umask."""

from __future__ import annotations

import compileall
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import sottovoce
from sottovoce.crypto.rng import Random


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the package before any test starts a ``sottovoce`` process.

    Hundreds of tests run the server or the CLI as a subprocess. Where Python writes no
    bytecode cache (PYTHONDONTWRITEBYTECODE=1 in the environment), each of those processes
    compiled every module it imports from source again: about 0.5 s of CPU for one that
    loads the client and server stacks. The cache is what a normal import leaves behind;
    a module edited later is compiled again, since its source's mtime and size no longer
    match. Done once, in the main process (pytest-xdist workers start after it).
    """
    if hasattr(config, "workerinput"):
        return
    compileall.compile_dir(Path(sottovoce.__file__).parent, quiet=2)


def deterministic_rng(seed: bytes = b"sottovoce-tests") -> Random:
    """A seeded ``Random``: SHAKE-256 over ``seed || counter``, one call per block.

    Reproducible across runs and platforms; never use outside tests.
    """
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        block = hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(n)
        counter += 1
        return block

    return rng


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> Random:
    """A fresh deterministic source per test, seeded by the test's node id."""
    return deterministic_rng(request.node.nodeid.encode())


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask of 022 (the usual default), so that the file modes a test checks are the
    code's doing: under a stricter umask the files would be private without it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
