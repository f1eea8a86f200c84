"""Conformance fixtures: a fresh server per test, or the one at $SOTTOVOCE_CONFORMANCE_URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conformance.rawclient import Device, RawClient, registered
from tests.integration.serverproc import ServerProcess

EXTERNAL_URL = os.environ.get("SOTTOVOCE_CONFORMANCE_URL", "").strip()


@dataclass
class Target:
    ws_url: str
    proc: ServerProcess | None

    def local(self) -> ServerProcess:
        """The subprocess, for rules that need a restart or the database file."""
        if self.proc is None:
            pytest.skip("needs a local server process (not with SOTTOVOCE_CONFORMANCE_URL)")
        return self.proc


def _ws_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith("/v3/ws") else base + "/v3/ws"


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    if EXTERNAL_URL:
        yield Target(_ws_url(EXTERNAL_URL), None)
        return
    proc = ServerProcess(tmp_path / "server").start()
    try:
        yield Target(proc.ws_url, proc)
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
