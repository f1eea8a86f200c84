"""Ephemeral chats over the WebRTC data channel (client/calls/datachannel.py): P2P on
127.0.0.1, and TURN only through a coturn of our own; the relay fallback is in
test_ephemeral_chat.py. The SDP offer and answer travel inside the chat's keys."""

from __future__ import annotations

import asyncio
from asyncio import selector_events
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sottovoce.client import Client
from sottovoce.client.calls import IceConfig
from sottovoce.client.calls.datachannel import DataPipe, pipe_maker
from sottovoce.client.ephemeral import Chat
from sottovoce.client.events import EphemeralChatMessage
from tests.integration.calls_helpers import Coturn
from tests.integration.client_helpers import accounts
from tests.integration.serverproc import ServerProcess
from tests.integration.test_ephemeral_chat import _next, _open


@pytest.fixture
def sent_to(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """The destination of every UDP datagram the event loop sends."""
    destinations: list[tuple[str, int]] = []
    original = selector_events._SelectorDatagramTransport.sendto

    def spy(self: Any, data: bytes, addr: Any = None) -> None:
        target = addr if addr is not None else self._address
        destinations.append((str(target[0]), int(target[1])))
        original(self, data, addr)

    monkeypatch.setattr(selector_events._SelectorDatagramTransport, "sendto", spy)
    yield destinations


def _use(client: Client, ice: IceConfig) -> None:
    async def config() -> IceConfig:
        return ice

    client.ephemeral.pipe_maker = pipe_maker(client.ephemeral, config)


async def _piped(chat: Chat) -> DataPipe:
    for _ in range(300):
        if isinstance(chat.pipe, DataPipe) and chat.pipe.is_open:
            return chat.pipe
        await asyncio.sleep(0.05)
    raise AssertionError("the data channel did not open")


async def _talk(alice: Client, bob: Client, a_chat: Chat, n: int) -> None:
    b_events = bob.events()
    relayed = a_chat.frames_via_relay
    for i in range(n):
        await alice.ephemeral.send(a_chat, f"over the channel {i}")
    got = []
    while len(got) < n:
        e = await _next(b_events, EphemeralChatMessage)
        assert isinstance(e, EphemeralChatMessage)
        got.append(e.text)
    assert got == [f"over the channel {i}" for i in range(n)]
    assert a_chat.frames_via_relay == relayed  # none of them went through the server


async def test_p2p_data_channel_on_loopback(
    server: ServerProcess, tmp_path: Path, sent_to: list[tuple[str, int]]
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        for c in (alice, bob):
            _use(c, IceConfig(loopback=True))
        a_chat, b_chat = await _open(alice, bob)
        a_pipe, _ = await _piped(a_chat), await _piped(b_chat)
        assert a_pipe.path() == "host"
        await _talk(alice, bob, a_chat, 50)
        assert a_chat.frames_via_pipe >= 50
        assert {host for host, _ in sent_to} == {"127.0.0.1"}


async def test_turn_only_data_channel_sends_every_packet_to_the_turn_server(
    server: ServerProcess, tmp_path: Path, coturn: Coturn, sent_to: list[tuple[str, int]]
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        for c in (alice, bob):
            _use(c, IceConfig(turn=(coturn.server(),), relay_only=True))
        a_chat, b_chat = await _open(alice, bob)
        a_pipe, _ = await _piped(a_chat), await _piped(b_chat)
        assert a_pipe.path() == "relay"
        sent_to.clear()
        await _talk(alice, bob, a_chat, 50)
        assert sent_to and set(sent_to) == {("127.0.0.1", coturn.port)}


async def test_without_a_path_the_chat_stays_on_the_relay(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Relay-only with no TURN server: no data channel can open; the chat still works
    through the server's ephemeral path (the last resort)."""
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        for c in (alice, bob):
            _use(c, IceConfig(relay_only=True))
        a_chat, _ = await _open(alice, bob)
        b_events = bob.events()
        await alice.ephemeral.send(a_chat, "still here")
        e = await _next(b_events, EphemeralChatMessage)
        assert isinstance(e, EphemeralChatMessage) and e.text == "still here"
        assert a_chat.pipe is None and a_chat.frames_via_relay >= 2
