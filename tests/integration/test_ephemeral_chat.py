"""Ephemeral chats against the real server (client/ephemeral.py): request and accept,
1,000 messages over the relay fallback with nothing left on any disk afterwards, panic
ending the peer's view within a second, a vanished peer noticed."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sottovoce.client import Client, EventStream
from sottovoce.client import ephemeral as eph
from sottovoce.client.events import (
    EphemeralChatEnded,
    EphemeralChatMessage,
    EphemeralChatRequested,
)
from sottovoce.errors import UsageError
from sottovoce.pairwise.ephemeral import State
from tests.integration.client_helpers import accounts
from tests.integration.serverproc import ServerProcess


async def _next(stream: EventStream, kind: type, timeout: float = 10.0) -> object:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        event = await stream.next(max(0.01, deadline - loop.time()))
        if isinstance(event, kind):
            return event


async def _open(alice: Client, bob: Client) -> tuple[eph.Chat, eph.Chat]:
    b_events = bob.events()
    asking = asyncio.ensure_future(alice.ephemeral.open("bob", timeout=15))
    request = await _next(b_events, EphemeralChatRequested)
    assert isinstance(request, EphemeralChatRequested) and request.peer == "alice"
    b_chat = await bob.ephemeral.open("alice", timeout=15)
    a_chat = await asking
    b_events.close()
    assert a_chat.chat_id == b_chat.chat_id
    assert a_chat.session.state is State.OPEN and b_chat.session.state is State.OPEN
    return a_chat, b_chat


def _files(*roots: Path, since: float = 0.0) -> Iterator[Path]:
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                if p.is_file() and st.st_mtime >= since and st.st_size < 64 * 2**20:
                    yield p


def _found(needles: list[bytes], files: Iterator[Path]) -> list[tuple[str, int]]:
    hits = []
    for p in files:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        hits += [(str(p), i) for i, n in enumerate(needles) if n in data]
    return hits


async def test_a_thousand_relayed_messages_leave_no_row_no_canary_and_no_key(
    server: ServerProcess, tmp_path: Path
) -> None:
    started = time.time() - 1
    canary = "ephcanary" + secrets.token_hex(8)
    keys: list[bytes] = []
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        drawn: list[bytes] = []  # chat ids, nonces and the handshakes' ephemeral keys

        def recording(n: int) -> bytes:
            drawn.append(secrets.token_bytes(n))
            return drawn[-1]

        alice.ephemeral._rng = bob.ephemeral._rng = recording
        a_chat, b_chat = await _open(alice, bob)
        assert len(drawn) == 5  # chat id, nonce_i, nonce_r, two ephemeral keys
        keys += drawn
        keys += a_chat.session.key_material() + b_chat.session.key_material()
        keys += [bytes(alice.ephemeral._static or b""), bytes(bob.ephemeral._static or b"")]
        assert len(keys) == 11 and all(len(k) >= 16 and any(k) for k in keys)
        b_events = bob.events()
        for i in range(1000):
            await alice.ephemeral.send(a_chat, f"{canary} {i}")
        got = []
        while len(got) < 1000:
            e = await _next(b_events, EphemeralChatMessage)
            assert isinstance(e, EphemeralChatMessage)
            got.append(e.text)
        assert got == [f"{canary} {i}" for i in range(1000)]
        assert a_chat.frames_via_relay >= 1000 and a_chat.frames_via_pipe == 0
        assert len(b_chat.messages()) == 200  # the bounded ring keeps the newest
        await alice.ephemeral.leave(a_chat)
        ended = await _next(b_events, EphemeralChatEnded)
        assert isinstance(ended, EphemeralChatEnded) and ended.reason == "the other side left"
        assert a_chat.session.key_material() == [] == b_chat.session.key_material()
        assert b_chat.messages() == []
    server.stop()
    needles = [canary.encode(), *keys]
    roots = [server.data_dir, tmp_path / "alice", tmp_path / "bob"]
    assert _found(needles, _files(*roots)) == []
    assert _found(needles, _files(Path(tempfile.gettempdir()), since=started)) == []


async def test_panic_ends_the_peers_view_within_a_second_and_cannot_be_reopened(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        a_chat, b_chat = await _open(alice, bob)
        await bob.ephemeral.send(b_chat, "before the panic")
        b_events = bob.events()
        t0 = time.monotonic()
        alice.ephemeral.panic()
        assert a_chat.session.state is State.CLOSED and alice.ephemeral._static is None
        ended = await _next(b_events, EphemeralChatEnded, timeout=1.0)
        assert time.monotonic() - t0 < 1.0
        assert isinstance(ended, EphemeralChatEnded) and b_chat.session.state is State.CLOSED
        assert alice.ephemeral.chats() == [] == bob.ephemeral.chats()
        assert b_chat.messages() == []
        # Nothing reopens it: a frame of the old chat is dropped, not answered.
        assert a_chat.session.chat_id in alice.ephemeral._ended
        await bob.close()
        with pytest.raises(UsageError, match="bob is not online: an ephemeral chat needs both"):
            await alice.ephemeral.open("bob", timeout=5)
        assert alice.ephemeral.chats() == []  # the failed request is not left behind


async def test_a_vanished_peer_ends_the_chat(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = monkeypatch
    mp.setattr(eph, "KEEPALIVE_S", 0.2)
    mp.setattr(eph, "PEER_SILENCE_S", 0.8)
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        a_chat, b_chat = await _open(alice, bob)
        a_events = alice.events()
        # Bob's process stops answering (no BYE): its keepalive is gone with it.
        b_chat.session.close()
        ended = await _next(a_events, EphemeralChatEnded, timeout=5.0)
        assert isinstance(ended, EphemeralChatEnded)
        assert ended.reason in ("the other side went away", "the other side went offline")
        assert a_chat.session.key_material() == []
