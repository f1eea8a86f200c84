"""Ephemeral conversations: relayed to online devices only, never stored
(docs/protocol.md §Ephemeral)."""

from __future__ import annotations

import asyncio
import base64
import secrets

import pytest

from tests.conformance.conftest import Target, online_pair
from tests.conformance.rawclient import Device, logged_in, registered, unb64
from tests.conformance.test_session import assert_error


async def test_ephemeral_is_delivered_to_online_devices(url: str) -> None:
    a, b = await online_pair(url)
    bob = b.device.username
    ack = await a.send_message(bob, [(bob, "d1", b"psst")], ephemeral=True)
    assert ack["event"] == "ksmpv3.send.ack" and ack["data"]["ephemeralSeq"] >= 1
    f = await b.expect("ksmpv3.inbox.frame")
    assert f["data"]["globalInboxSeq"] == 0
    assert f["data"]["envelope"]["ephemeral"] is True
    assert unb64(f["data"]["envelope"]["ciphertext"]) == b"psst"


async def test_ephemeral_messages_have_their_own_sequence_never_a_server_seq(url: str) -> None:
    """serverSeq is strictly increasing per conversation over stored messages; ephemeral
    ones interleaved with them carry ephemeralSeq instead, so neither is read as the other."""
    a, b = await online_pair(url)
    bob = b.device.username
    acks, frames = [], []
    for ephemeral in (False, False, True, False, True):
        ack = await a.send_message(bob, [(bob, "d1", b"m")], ephemeral=ephemeral)
        assert ack["event"] == "ksmpv3.send.ack", ack
        acks.append(ack["data"])
        frames.append((await b.expect("ksmpv3.inbox.frame"))["data"]["envelope"])
    stored = [f for f in frames if not f["ephemeral"]]
    passing = [f for f in frames if f["ephemeral"]]
    assert [f["serverSeq"] for f in stored] == [1, 2, 3]
    assert [f["ephemeralSeq"] for f in passing] == [1, 2]
    assert all("ephemeralSeq" not in f for f in stored)
    assert all("serverSeq" not in f for f in passing)
    assert [("serverSeq" in k, "ephemeralSeq" in k) for k in acks] == [
        (True, False), (True, False), (False, True), (True, False), (False, True)]


async def test_ephemeral_to_offline_recipient_is_recipient_offline(url: str) -> None:
    bob = Device.new()
    await (await registered(url, bob)).close()
    a = await registered(url)
    # The server learns of bob's close a moment after the close handshake; until then
    # it may still relay to that closing socket. It must say offline within a second.
    for _ in range(20):
        reply = await a.send_message(bob.username, [(bob.username, "d1", b"x")], ephemeral=True)
        if reply["event"] == "ksmpv3.error":
            break
        await asyncio.sleep(0.05)
    assert_error(reply, "recipient_offline")


@pytest.mark.fresh_server
async def test_ephemeral_is_never_stored(target: Target) -> None:
    url = target.ws_url
    a, b = await online_pair(url)
    bob = b.device
    canary = b"EPHEMERAL-CANARY-" + secrets.token_hex(16).encode()
    ack = await a.send_message(bob.username, [(bob.username, "d1", canary)], ephemeral=True)
    assert ack["event"] == "ksmpv3.send.ack"
    await b.expect("ksmpv3.inbox.frame")
    await b.close()
    b2 = await logged_in(url, bob)
    assert b2.connected["latestGlobalInboxSeq"] == 0
    assert await b2.resume(0) == []
    if target.proc is not None:
        target.proc.stop()  # checkpoint nothing away: read every file the server wrote
        # The data directory's files and, on PostgreSQL, every stored row.
        blob = target.stored_bytes()
        for needle in (canary, base64.b64encode(canary), canary.hex().encode()):
            assert needle not in blob, "ephemeral ciphertext found in the server's storage"
