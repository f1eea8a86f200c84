"""Fixtures of the browser tests: one real server on 127.0.0.1 for all of them, and
accounts on it (each test makes its own, under its own names)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sottovoce.client import Client
from sottovoce.client.store import TEST_KDF
from tests.integration.janus_helpers import janus, sfu_server  # noqa: F401 (fixtures of the call tests)
from tests.integration.serverproc import ServerProcess

PASSPHRASE = "browser test passphrase"


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("server")).start()
    try:
        yield srv
    finally:
        srv.stop()


async def make_accounts(server: ServerProcess, root: Path, *names: str) -> dict[str, Path]:
    """Registered accounts (cheap Argon2: tests only), closed again: each app opens its own."""
    async def make(name: str) -> None:
        client = await Client.create_account(server.url, name, root / name, PASSPHRASE,
                                             kdf=TEST_KDF)
        await client.close()

    await asyncio.gather(*(make(name) for name in names))
    return {name: root / name for name in names}
