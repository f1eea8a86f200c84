"""Conformance fixtures: a fresh server per test, or the one at $SOTTOVOCE_CONFORMANCE_URL.

Local servers run once per storage backend: embedded SQLite and PostgreSQL (a
fresh schema per test; skipped with the reason when PostgreSQL is unreachable).
``SOTTOVOCE_CONFORMANCE_BACKENDS=sqlite`` (comma-separated) narrows the set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conformance.rawclient import Device, RawClient, registered
from tests.integration import pgschema
from tests.integration.serverproc import ServerProcess

EXTERNAL_URL = os.environ.get("SOTTOVOCE_CONFORMANCE_URL", "").strip()
BACKENDS = [
    b.strip()
    for b in os.environ.get("SOTTOVOCE_CONFORMANCE_BACKENDS", "sqlite,postgres").split(",")
    if b.strip()
]


@dataclass
class Target:
    ws_url: str
    proc: ServerProcess | None
    #: The PostgreSQL DSN the server stores into (None: SQLite in proc.data_dir).
    database: str | None = None

    def local(self) -> ServerProcess:
        """The subprocess, for rules that need a restart or the database file."""
        if self.proc is None:
            pytest.skip("needs a local server process (not with SOTTOVOCE_CONFORMANCE_URL)")
        return self.proc

    def stored_bytes(self) -> bytes:
        """Everything the server stored: the files of its data directory and, on
        PostgreSQL, every row of its schema as text (bytea as ``\\x<hex>``, so
        search for ``value.hex()`` too). Stop the server first for the final word."""
        proc = self.local()
        blob = b"".join(p.read_bytes() for p in proc.data_dir.iterdir() if p.is_file())
        if self.database is not None:
            blob += b"\n" + pgschema.dump_rows(self.database)
        return blob


def _ws_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith("/v3/ws") else base + "/v3/ws"


@pytest.fixture(params=["external"] if EXTERNAL_URL else BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "external":
        yield Target(_ws_url(EXTERNAL_URL), None)
        return
    if request.param == "sqlite":
        proc = ServerProcess(tmp_path / "server").start()
        try:
            yield Target(proc.ws_url, proc)
        finally:
            proc.stop()
        return
    reason = pgschema.unreachable()
    if reason is not None:
        pytest.skip(reason)
    with pgschema.fresh_schema("sv_conf") as dsn:
        proc = ServerProcess(tmp_path / "server", extra_args=["--database", dsn]).start()
        try:
            yield Target(proc.ws_url, proc, dsn)
        finally:
            proc.stop()


@pytest.fixture
def url(target: Target) -> str:
    return target.ws_url


async def online_pair(url: str) -> tuple[RawClient, RawClient]:
    """Two registered users, connected and resumed (live)."""
    a = await registered(url, Device.new())
    b = await registered(url, Device.new())
    await a.resume()
    await b.resume()
    return a, b
