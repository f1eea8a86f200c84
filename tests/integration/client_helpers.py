"""Shared helpers for the client integration tests (real server subprocess, real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from sottovoce.client import Client, EventStream, MessageReceived, StoredMessage
from sottovoce.client.store import TEST_KDF
from sottovoce.errors import SottovoceError
from sottovoce.mls.group import Group
from tests.integration.serverproc import ServerProcess

PASSPHRASE = "integration passphrase"


async def make_account(server: ServerProcess, name: str, root: Path) -> Client:
    """A registered, connected account (cheap Argon2 parameters: tests only)."""
    return await Client.create_account(server.url, name, root / name, PASSPHRASE, kdf=TEST_KDF)


@contextlib.asynccontextmanager
async def accounts(server: ServerProcess, root: Path, *names: str) -> AsyncIterator[list[Client]]:
    """Accounts made by :func:`make_account` one after the other, all closed on leaving."""
    clients: list[Client] = []
    try:
        for name in names:
            clients.append(await make_account(server, name, root))
        yield clients
    finally:
        for client in clients:
            await client.close()


async def befriend(*clients: Client) -> None:
    """Make every pair of ``clients`` each other's contacts (receipts and typing notices
    go only to contacts: a stranger's message is a request)."""
    for client in clients:
        for other in clients:
            if other.username != client.username:
                await client.contacts.add(other.username)


async def received(stream: EventStream, n: int, timeout: float = 10.0) -> list[StoredMessage]:
    """The next ``n`` messages stored by the client behind ``stream``."""
    out: list[StoredMessage] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(out) < n:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"received {len(out)} of {n} messages")
        try:
            event = await stream.next(remaining)
        except TimeoutError:
            raise TimeoutError(f"received {len(out)} of {n} messages") from None
        if isinstance(event, MessageReceived):
            out.append(event.message)
    return out


def opened_by(group: Group, ciphertexts: list[bytes]) -> int:
    """How many of ``ciphertexts`` ``group`` opens (a removed member's group: none)."""
    opened = 0
    for ciphertext in ciphertexts:
        try:
            group.process_message(ciphertext)
            opened += 1
        except SottovoceError:
            pass
    return opened
