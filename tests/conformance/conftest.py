"""Conformance fixtures: a local server per storage backend, or the one at
$SOTTOVOCE_CONFORMANCE_URL.

Local servers run once per storage backend: embedded SQLite and PostgreSQL (its
own schema; skipped with the reason when PostgreSQL is unreachable).
``SOTTOVOCE_CONFORMANCE_BACKENDS=sqlite`` (comma-separated) narrows the set.

Every test makes its own users with random names, so the conformance tests share
one server per backend, started at its first use (a start costs more than most
tests). A test that kills, stops or restarts the server, or whose assertions
count over all it stores (metrics, every row of a table), is marked
``@pytest.mark.fresh_server`` and gets a server of its own, as before.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def _local_server(backend: str, data_dir: Path) -> Iterator[Target]:
    if backend == "sqlite":
        proc = ServerProcess(data_dir).start()
        try:
            yield Target(proc.ws_url, proc)
        finally:
            proc.stop()
        return
    reason = pgschema.unreachable()
    if reason is not None:
        pytest.skip(reason)
    with pgschema.fresh_schema("sv_conf") as dsn:
        proc = ServerProcess(data_dir, extra_args=["--database", dsn]).start()
        try:
            yield Target(proc.ws_url, proc, dsn)
        finally:
            proc.stop()


class _SharedServers:
    """One server per backend for the conformance tests, started at its first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stack = contextlib.ExitStack()
        self.targets: dict[str, Target] = {}

    def get(self, backend: str) -> Target:
        target = self.targets.get(backend)
        if target is None:
            target = self.stack.enter_context(
                _local_server(backend, self.root / f"server-{backend}")
            )
            self.targets[backend] = target
        proc = target.local()
        if not proc.running:  # a test that stops it must be marked fresh_server
            raise RuntimeError(
                f"the shared {backend} server is not running (exit code "
                f"{proc.proc.returncode if proc.proc else None}):\n{proc.output()[-3000:]}"
            )
        return target


@pytest.fixture(scope="package")  # stopped once the conformance tests are done
def shared_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_SharedServers]:
    servers = _SharedServers(tmp_path_factory.mktemp("conformance"))
    with servers.stack:
        yield servers


@pytest.fixture(params=["external"] if EXTERNAL_URL else BACKENDS)
def target(
    request: pytest.FixtureRequest, tmp_path: Path, shared_servers: _SharedServers
) -> Iterator[Target]:
    if request.param == "external":
        yield Target(_ws_url(EXTERNAL_URL), None)
        return
    if request.node.get_closest_marker("fresh_server") is None:
        yield shared_servers.get(request.param)
        return
    with _local_server(request.param, tmp_path / "server") as fresh:
        yield fresh


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
