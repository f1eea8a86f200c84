"""Contacts, message requests and blocking against the real server (client/contact_list.py).

* a stranger's first message is a request on each of my devices; accepting it on one
  makes a contact on both (the other device by the encrypted self-sync);
* declining deletes the request's messages on both devices;
* blocking: the server stores nothing from the blocked account for my devices (no inbox
  row), the sender's send is acknowledged exactly as before, nothing arrives on any of
  my devices; unblocking restores delivery;
* call signals (live sends) from a blocked account reach none of my devices: the server
  drops them (no frame reaches my connection), acknowledges them as if delivered, and
  says so whether or not I am online;
* `contacts` and `requests` as a user types them (the CLI's ``main``, in this process).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sottovoce.cli.main import main as cli_main
from sottovoce.client import Client, EventStream, MessageReceived
from sottovoce.client.call_payloads import CALL_CONTENT_TYPE, encode_signals
from sottovoce.client.contact_list import CONTACTS_CONTENT_TYPE
from sottovoce.client.store import TEST_KDF
from sottovoce.protocol import events as ev
from tests.integration.client_helpers import PASSPHRASE, make_account, received
from tests.integration.serverproc import ServerProcess
from tests.waiting import until


async def _synced(stream: EventStream) -> None:
    """The next contact-list change from one of our own devices was applied."""
    while True:
        event = await stream.next(15)
        if (isinstance(event, MessageReceived)
                and event.message.content_type == CONTACTS_CONTENT_TYPE):
            return


def _listed(client: Client) -> list[str]:
    return [c.peer for c in client.conversations.all()]


async def test_requests_accept_and_decline_reach_my_other_device(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    laptop = await alice.add_device(tmp_path / "alice-laptop", PASSPHRASE, kdf=TEST_KDF)
    bob = await make_account(server, "bob", tmp_path)
    carol = await make_account(server, "carol", tmp_path)
    streams = {c: c.events() for c in (alice, laptop)}
    try:
        await bob.wait_sent(await bob.send_text("alice", "hi, we met at the talk"))
        await carol.wait_sent(await carol.send_text("alice", "buy cheap watches"))
        for device in (alice, laptop):
            assert len(await received(streams[device], 2)) == 2
            assert device.contacts.requests() == ["bob", "carol"]
            assert device.contacts.contacts() == []
            assert _listed(device) == []  # requests are not conversations yet
            assert not device.contacts.may_signal("bob")
            assert [m.text for m in device.history("bob")] == ["hi, we met at the talk"]
        # The sender wrote first, so the request is one-sided: bob sees alice as a contact.
        assert bob.contacts.contacts() == ["alice"] and bob.contacts.may_signal("alice")

        await alice.contacts.accept("bob")
        await _synced(streams[laptop])
        for device in (alice, laptop):
            assert device.contacts.contacts() == ["bob"]
            assert device.contacts.requests() == ["carol"]
            assert device.contacts.may_signal("bob")
            assert _listed(device) == ["bob"]

        await laptop.contacts.decline("carol")
        await _synced(streams[alice])
        for device in (alice, laptop):
            assert device.contacts.requests() == []
            assert device.history("carol") == []
            assert _listed(device) == ["bob"]
        # Declined is not blocked: carol's next message is a request again.
        await carol.wait_sent(await carol.send_text("alice", "one more try"))
        assert len(await received(streams[alice], 1)) == 1
        assert alice.contacts.requests() == ["carol"]
    finally:
        for c in (alice, laptop, bob, carol):
            await c.close()


def _inbox_rows_naming(server: ServerProcess, message_id: str) -> int:
    db = sqlite3.connect(server.db_path)
    try:
        row = db.execute(
            "SELECT count(*) FROM inbox WHERE CAST(envelope AS TEXT) LIKE ?",
            (f"%{message_id}%",),
        ).fetchone()
        return int(row[0])
    finally:
        db.close()


async def test_block_stops_delivery_at_the_server_and_the_sender_cannot_tell(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    laptop = await alice.add_device(tmp_path / "alice-laptop", PASSPHRASE, kdf=TEST_KDF)
    bob = await make_account(server, "bob", tmp_path)
    acks: list[dict[str, Any]] = []
    on_ack = bob._handlers[ev.SEND_ACK]
    bob._handlers[ev.SEND_ACK] = lambda name, data: (acks.append(data), on_ack(name, data))
    streams = {c: c.events() for c in (alice, laptop)}
    try:
        first = await bob.send_text("alice", "first")
        assert await bob.wait_sent(first) == 1
        for device in (alice, laptop):
            await received(streams[device], 1)
        await alice.contacts.block("bob")
        await _synced(streams[laptop])
        assert laptop.contacts.blocked() == ["bob"] and alice.contacts.blocked() == ["bob"]
        assert alice.history("bob") == []  # a blocked request goes with its messages

        blocked = await bob.send_text("alice", "are you ignoring me?")
        assert await bob.wait_sent(blocked) == 2  # acknowledged like any other send
        assert len(acks) == 2
        assert set(acks[0]) == set(acks[1])
        assert acks[1]["messageId"] == blocked and acks[1]["serverSeq"] == 2
        assert acks[0]["duplicate"] == acks[1]["duplicate"] is False
        assert _inbox_rows_naming(server, blocked) == 0
        # Sending to someone one blocked is refused here, before anything goes out.
        try:
            await alice.send_text("bob", "hello?")
            raise AssertionError("a send to a blocked account went out")
        except Exception as exc:
            assert "blocked" in str(exc)

        await laptop.contacts.unblock("bob")
        await _synced(streams[alice])
        assert alice.contacts.blocked() == [] and alice.contacts.state("bob") is None
        again = await bob.send_text("alice", "hello again")
        await bob.wait_sent(again)
        for device in (alice, laptop):
            (got,) = await received(streams[device], 1)
            assert got.message_id == again  # the blocked message never arrived
            assert device.contacts.requests() == ["bob"]
            assert [m.text for m in device.history("bob")] == ["hello again"]
    finally:
        for c in (alice, laptop, bob):
            await c.close()


def _frames_from(client: Client, sender: str) -> list[dict[str, Any]]:
    """Every inbox frame from ``sender`` reaching ``client``'s connection from now on
    (before the client's own checks: what the server let through)."""
    seen: list[dict[str, Any]] = []
    handler = client._handlers[ev.INBOX_FRAME]

    def spy(name: str, data: dict[str, Any]) -> Any:
        envelope = data.get("envelope")
        if isinstance(envelope, dict) and envelope.get("senderUserId") == sender:
            seen.append(data)
        return handler(name, data)

    client._handlers[ev.INBOX_FRAME] = spy
    return seen


async def test_call_signals_from_a_blocked_account_are_dropped_at_the_server(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    phone = await bob.add_device(tmp_path / "bob-phone", PASSPHRASE, kdf=TEST_KDF)
    rings: list[tuple[str, str, bytes]] = []
    alice._direct._on_call = lambda user, device, body: rings.append((user, device, body))
    to_alice, to_phone = _frames_from(alice, "bob"), _frames_from(phone, "bob")
    offer = encode_signals([b"an offer, as the call engine would send it"])
    try:
        await bob._direct.send_live("alice", offer, CALL_CONTENT_TYPE)  # the control
        await until(lambda: len(rings) == 1 and len(to_alice) == 1)
        assert rings[0][0] == "bob"

        await alice.contacts.block("bob")
        acked = await bob._direct.send_live("alice", offer, CALL_CONTENT_TYPE)
        assert acked  # acknowledged as if alice's device took it: bob cannot tell
        await until(lambda: len(to_phone) == 2)  # bob's own copy went on, alice's did not
        await asyncio.sleep(0.3)
        assert len(to_alice) == 1 and len(rings) == 1
        await alice.close()  # blocked: not even "offline" tells bob anything
        await bob._direct.send_live("alice", offer, CALL_CONTENT_TYPE)
    finally:
        for c in (alice, bob, phone):
            await c.close()



async def _strangers_write(server: ServerProcess, root: Path) -> None:
    alice, bob, carol = [await make_account(server, n, root) for n in ("alice", "bob", "carol")]
    events = alice.events()
    try:
        await bob.wait_sent(await bob.send_text("alice", "hello from bob"))
        await carol.wait_sent(await carol.send_text("alice", "hello from carol"))
        await carol.wait_sent(await carol.send_text("alice", "still carol"))
        await received(events, 3)
    finally:
        for c in (alice, bob, carol):
            await c.close()


def test_cli_contacts_and_requests(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asyncio.run(_strangers_write(server, tmp_path))

    def cli(*args: str) -> tuple[int, str, str]:
        monkeypatch.setenv("SOTTOVOCE_HOME", str(tmp_path / "alice"))
        monkeypatch.setenv("SOTTOVOCE_PASSPHRASE", PASSPHRASE)
        code = cli_main(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    def ok(*args: str) -> str:
        code, out, err = cli(*args)
        assert code == 0, (out, err)
        return out

    def refused(*args: str) -> str:
        code, out, err = cli(*args)
        assert code != 0 and len(err.strip().splitlines()) == 1, (out, err)
        return err

    assert ok("requests").splitlines() == [
        f"{'bob':<24} 1 message", f"{'carol':<24} 2 messages"]
    assert ok("requests", "accept", "bob") == "bob is a contact now\n"
    assert ok("requests", "block", "carol") == "carol is blocked\n"
    assert ok("contacts") == "bob\ncarol  (blocked)\n"
    assert "carol is blocked" in refused("contacts", "add", "carol")
    assert ok("contacts", "unblock", "carol") == "carol is no longer blocked\n"
    assert ok("contacts", "add", "dave") == "dave is a contact\n"
    assert ok("contacts", "remove", "bob") == "bob is no longer a contact\n"
    assert "no message request from erin" in refused("requests", "decline", "erin")
    assert "username must be" in refused("contacts", "add", "Not A Name")
