"""Offline sends in the SDK: queued durably, sent on the next connection, never twice.

A message to someone this device never looked up cannot be encrypted offline
(no devices, no sessions). It is stored as sending, with its messageId and
idempotencyKey fixed, and encrypted once a connection is up; a lost ack then
resends the same frame, and the relay's idempotency check keeps it single.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sottovoce.client import Client, DeliveryStatus, EventStream, MessageReceived, NotConnected
from sottovoce.client.connection import TransportClosed
from sottovoce.client.store import TEST_KDF
from tests.unit.client_fake_relay import FakeRelay
from tests.waiting import until

URL = "ws://fake.invalid:1"
PASS = "pass"


class Switch:
    """A connector that fails (like a stopped server) while ``down`` is set."""

    def __init__(self, relay: FakeRelay) -> None:
        self.relay = relay
        self.down = True

    async def __call__(self, url: str) -> object:
        if self.down:
            raise TransportClosed("connection refused: nothing listens on that port")
        return await self.relay.connector(url)



async def _next_message(events: EventStream, timeout: float = 10.0) -> MessageReceived:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        event = await events.next(max(0.01, deadline - loop.time()))
        if isinstance(event, MessageReceived):
            return event


async def test_offline_send_to_a_new_contact_is_queued_and_arrives_once(tmp_path: Path) -> None:
    relay = FakeRelay()
    for name in ("alice", "carol"):
        client = await Client.create_account(
            URL, name, tmp_path / name, PASS, kdf=TEST_KDF, connector=relay.connector
        )
        await client.close()
    switch = Switch(relay)
    alice = await Client.open(tmp_path / "alice", PASS, connector=switch)  # type: ignore[arg-type]
    with pytest.raises(NotConnected, match="connection refused"):
        await alice.connect(timeout=5, fail_fast=True)  # says why, at the first failure
    assert alice.connection_problem is not None
    mid = await alice.send_text("carol", "written while the server was down")
    stored = alice.message(mid)
    assert stored is not None and stored.status is DeliveryStatus.SENDING
    key = stored.idempotency_key
    assert key and alice.pending_sends() == 1
    await alice.close()  # durable: a new process finds it

    switch.down = False
    relay.swallow_acks = 1  # the first send reaches the relay, its ack is lost
    alice = await Client.open(tmp_path / "alice", PASS, connector=switch)  # type: ignore[arg-type]
    assert alice.pending_sends() == 1
    await alice.connect(timeout=5)
    await until(lambda: bool(relay.sends))
    assert alice.pending_sends() == 1  # no ack yet
    await relay.drop_all()  # reconnect: the outbox goes out again, same key
    assert await alice.wait_sent(mid, timeout=5) == 1
    assert [s["idempotencyKey"] for s in relay.sends] == [key]  # one stored send
    assert alice.pending_sends() == 0

    carol = await Client.open(tmp_path / "carol", PASS, connector=relay.connector)
    events = carol.events()
    await carol.connect(timeout=5)
    first = await _next_message(events)
    got = [first.message.text]
    got += [e.message.text for e in events.pending() if isinstance(e, MessageReceived)]
    assert got == ["written while the server was down"]
    assert [m.text for m in carol.history("alice")] == got
    await carol.close()
    await alice.close()


async def test_queued_message_to_a_user_that_does_not_exist_fails_visibly(
    tmp_path: Path,
) -> None:
    relay = FakeRelay()
    client = await Client.create_account(
        URL, "alice", tmp_path / "alice", PASS, kdf=TEST_KDF, connector=relay.connector
    )
    await client.close()
    switch = Switch(relay)
    alice = await Client.open(tmp_path / "alice", PASS, connector=switch)  # type: ignore[arg-type]
    mid = await alice.send_text("nobody", "to no one")
    switch.down = False
    await alice.connect(timeout=5)

    def failed() -> bool:
        stored = alice.message(mid)
        return stored is not None and stored.status is DeliveryStatus.FAILED

    await until(failed)
    assert alice.pending_sends() == 0
    await alice.close()


async def test_a_message_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    relay = FakeRelay()
    alice = await Client.create_account(
        URL, "alice", tmp_path / "alice", PASS, kdf=TEST_KDF, connector=relay.connector
    )
    from sottovoce.errors import UsageError

    with pytest.raises(UsageError, match="UTF-8"):
        await alice.send_text("bob", "bad \udcff byte")  # what a non-UTF-8 terminal passes
    await alice.close()
