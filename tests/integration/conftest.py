"""Integration fixtures: the real server process on 127.0.0.1 with a temporary data dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.janus_helpers import janus, sfu_server  # noqa: F401 (fixtures)
from tests.integration.serverproc import ServerProcess

if TYPE_CHECKING:
    from tests.integration.calls_helpers import Coturn, Net


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh server with default options; stopped after the test."""
    srv = ServerProcess(tmp_path / "server").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with extra options: ``server_factory("--retention-ms", "500")``."""
    started: list[ServerProcess] = []

    def make(*extra_args: str, name: str | None = None) -> ServerProcess:
        srv = ServerProcess(tmp_path / (name or f"server{len(started)}"), extra_args=extra_args)
        started.append(srv.start())
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """A coturn of the module's own on 127.0.0.1 (skips where coturn is not installed)."""
    from tests.integration.calls_helpers import Coturn

    turn = Coturn(tmp_path_factory.mktemp("coturn")).start()
    try:
        yield turn
    finally:
        turn.stop()


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    """1:1 call devices wired in memory (``calls_helpers.Net``), closed after the test.
    The room-call tests define their own ``net``: a ``RoomNet``."""
    from tests.integration.calls_helpers import Net

    n = Net()
    try:
        yield n
    finally:
        await n.close()


