"""Disappearing messages through the real server (docs/protocol.md §Disappearing messages).

* a 5 s timer, in real time: the message is in both stores, then gone from both
  (row and sealed bytes, in the database file and its log);
* an offline recipient (SQLite and PostgreSQL): the server drops the expired
  ciphertext, the recipient connects after expiry and gets nothing of it; the same
  for an offline member of a room (the room's log drops it, and the hole it leaves
  in the room's serverSeqs does not stop the member from catching up);
* a timer change does not revive or move an old message's expiry;
* a client closed while a message expired deletes it when it opens;
* a room's timer applies for all three members.

Where waiting would be long, each client's expiry clock is moved forward instead.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from sottovoce.client import Client, DeliveryStatus, EventStream, MessagesExpired
from sottovoce.client.events import RoomMessageReceived
from sottovoce.client.expiry import TIMER_CONTENT_TYPE
from sottovoce.client.store import STORE_FILE
from tests.integration import pgschema
from tests.integration.client_helpers import PASSPHRASE, make_account, received
from tests.integration.serverproc import ServerProcess


def _sealed(client: Client, message_id: str) -> bytes:
    row = client._store.connection.execute(
        "SELECT sealed FROM messages WHERE message_id = ?", (message_id,)
    ).fetchone()
    assert row is not None
    return bytes(row[0])


async def _expired(stream: EventStream, message_id: str, timeout: float) -> None:
    """Wait for the event that says ``message_id`` was deleted as expired."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        event = await stream.next(max(0.01, deadline - loop.time()))
        if isinstance(event, MessagesExpired) and message_id in event.message_ids:
            return


def _store_bytes(client: Client) -> bytes:
    root = client._store.data_dir
    return b"".join(p.read_bytes() for p in root.iterdir() if p.name.startswith(STORE_FILE))


async def test_a_5s_message_is_gone_from_both_stores_after_5s(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    b_events = bob.events()
    try:
        await alice.timers.set_chat_timer("bob", 5)
        (notice,) = await received(b_events, 1)
        assert notice.content_type == TIMER_CONTENT_TYPE
        for client, setter in ((alice, "alice"), (bob, "alice")):
            timer = client.timers.chat_timer("bob" if client is alice else "alice")
            assert timer is not None and (timer.seconds, timer.setter) == (5, setter)
        canary = "canary-5s-" + "x" * 40
        mid = await alice.send_text("bob", canary)
        sent_at = time.time()
        (got,) = await received(b_events, 1)
        assert got.text == canary
        expires = alice.timers.expires_at(mid)
        assert expires == bob.timers.expires_at(mid) == got.client_created_ms + 5000
        sealed = {c: _sealed(c, mid) for c in (alice, bob)}
        for c in (alice, bob):
            assert c.message(mid) is not None  # present before
        await asyncio.gather(alice.timers.wait_deleted(mid, 20), _expired(b_events, mid, 20))
        assert time.time() >= sent_at + 4  # not before its time (created before sent_at)
        for c in (alice, bob):
            assert c.message(mid) is None
            assert [m.content_type for m in c.history("bob" if c is alice else "alice")] == [
                TIMER_CONTENT_TYPE]  # the timer notice stays
            raw = _store_bytes(c)
            assert canary.encode() not in raw and sealed[c][-48:] not in raw
        # The timer notice does not disappear, and the chat keeps its timer.
        assert alice.timers.chat_timer("bob") is not None
    finally:
        await alice.close()
        await bob.close()


async def _server_inbox_expiring(
    server: ServerProcess, dsn: str | None, table: str = "inbox"
) -> int:
    """How many rows with an expiry the server's ``table`` still holds."""
    query = f"SELECT count(*) FROM {table} WHERE expires_at IS NOT NULL"
    if dsn is None:
        db = sqlite3.connect(server.data_dir / "sottovoce.sqlite3")
        try:
            return int(db.execute(query).fetchone()[0])
        finally:
            db.close()
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


async def _offline_recipient(root: Path, dsn: str | None) -> None:
    args = ["--expiry-interval-ms", "200"] + (["--database", dsn] if dsn else [])
    server = await asyncio.to_thread(ServerProcess(root / "server", extra_args=args).start)
    try:
        alice = await make_account(server, "alice", root)
        bob = await make_account(server, "bob", root)
        await bob.close()  # offline from now on
        try:
            await alice.timers.set_chat_timer("bob", 5)
            mid = await alice.send_text("bob", "gone before bob looks")
            await alice.wait_sent(mid)
            assert await _server_inbox_expiring(server, dsn) == 1
            expires = alice.timers.expires_at(mid)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 25
            while await _server_inbox_expiring(server, dsn):  # the server's sweep
                assert loop.time() < deadline, "the server kept the expired row"
                await asyncio.sleep(0.2)
            assert time.time() * 1000 >= expires - 1000  # dropped at its time, not before
            bob = await Client.open(root / "bob", PASSPHRASE)
            await bob.connect()
            history = bob.history("alice")
            assert [m.content_type for m in history] == [TIMER_CONTENT_TYPE]
            assert bob.message(mid) is None
        finally:
            await alice.close()
            await bob.close()
    finally:
        await asyncio.to_thread(server.stop)


async def _offline_room_member(root: Path, dsn: str | None) -> None:
    """Amy's room message with a 5 s timer, and bea offline until it expired."""
    args = ["--expiry-interval-ms", "200"] + (["--database", dsn] if dsn else [])
    server = await asyncio.to_thread(ServerProcess(root / "server", extra_args=args).start)
    try:
        alice = await make_account(server, "amy", root)
        bob = await make_account(server, "bea", root)
        try:
            room = await alice.rooms.create_room("team")
            await alice.rooms.invite("team", "bea")
            await bob.rooms.wait_epoch(room.room_id, 1)
            await bob.close()  # offline from now on
            await alice.timers.set_room_timer("team", 5)
            mid = await alice.rooms.send("team", "gone before bob looks")
            await alice.wait_sent(mid)
            await alice.timers.set_room_timer("team", 0)  # after it: a hole at its seq
            assert await _server_inbox_expiring(server, dsn, "room_messages") == 1
            expires = alice.timers.expires_at(mid)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 25
            while await _server_inbox_expiring(server, dsn, "room_messages"):  # the sweep
                assert loop.time() < deadline, "the server kept the expired room message"
                await asyncio.sleep(0.2)
            assert time.time() * 1000 >= expires - 1000  # dropped at its time, not before
            bob = await Client.open(root / "bea", PASSPHRASE)
            await bob.connect()
            # Bob catches up past the hole: both timer changes arrive, the message never.
            assert await bob.rooms.wait_until(
                lambda: [m.content_type for m in bob.rooms.history(room.room_id)].count(
                    TIMER_CONTENT_TYPE) == 2, 15)
            assert bob.message(mid) is None and bob.timers.deleted == 0  # never stored
            assert "text" not in [m.content_type for m in bob.rooms.history(room.room_id)]
        finally:
            await alice.close()
            await bob.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_the_server_drops_an_expired_message_for_an_offline_recipient(
    tmp_path: Path,
) -> None:
    reason = await asyncio.to_thread(pgschema.unreachable)
    if reason is not None:
        pytest.skip(reason)
    name, dsn = await asyncio.to_thread(pgschema.create_schema, "sv_timer")
    room_name, room_dsn = await asyncio.to_thread(pgschema.create_schema, "sv_room_timer")
    try:
        # Both engines at once, 1:1 and room: the 5 s wait is paid once.
        await asyncio.gather(
            _offline_recipient(tmp_path / "sqlite", None),
            _offline_recipient(tmp_path / "postgres", dsn),
            _offline_room_member(tmp_path / "room-sqlite", None),
            _offline_room_member(tmp_path / "room-postgres", room_dsn),
        )
    finally:
        await asyncio.to_thread(pgschema.drop_schema, name)
        await asyncio.to_thread(pgschema.drop_schema, room_name)


async def test_a_timer_change_does_not_revive_an_old_message(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    a_events, b_events = alice.events(), bob.events()
    try:
        await alice.timers.set_chat_timer("bob", 3600)
        old = await alice.send_text("bob", "under the one-hour timer")
        await bob.timers.set_chat_timer("alice", 0)  # off, set from the other side
        (off,) = await received(a_events, 1)
        assert off.content_type == TIMER_CONTENT_TYPE and off.sender == "bob"
        new = await alice.send_text("bob", "no timer")
        await received(b_events, 3)  # alice's timer, old, new
        await alice.wait_sent(new)
        for c in (alice, bob):
            peer = "bob" if c is alice else "alice"
            timer = c.timers.chat_timer(peer)
            assert timer is not None and (timer.seconds, timer.setter) == (0, "bob")
            stored = c.message(old)
            assert stored is not None
            assert c.timers.expires_at(old) == stored.client_created_ms + 3_600_000
            assert c.timers.expires_at(new) == 0
        await alice.timers.set_chat_timer("bob", 5)  # a shorter timer moves nothing either
        assert alice.timers.expires_at(old) == alice.message(old).client_created_ms + 3_600_000
        later = time.time_ns() // 1_000_000 + 3_600_000 + 1000
        for c in (alice, bob):
            c.timers.expiries.clock = lambda: later
            assert old in c.timers.sweep()
            assert c.message(old) is None and c.message(new) is not None
    finally:
        await alice.close()
        await bob.close()


async def test_a_closed_client_deletes_what_expired_when_it_opens(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    b_events = bob.events()
    try:
        await alice.timers.set_chat_timer("bob", 60)
        mid = await alice.send_text("bob", "read me within the minute")
        keep = await alice.send_text("bob", "x")  # the clock below moves past this too
        await received(b_events, 3)
        await bob.close()
        # Two minutes later (the expiry clock is moved, nothing else): opening deletes
        # the expired messages before the application sees anything.
        later = time.time_ns() // 1_000_000 + 120_000
        monkeypatch.setattr("sottovoce.client.expiry.now_ms", lambda: later)
        bob = await Client.open(tmp_path / "bob", PASSPHRASE)
        assert bob.message(mid) is None and bob.message(keep) is None
        assert [m.content_type for m in bob.history("alice")] == [TIMER_CONTENT_TYPE]
        assert bob.timers.deleted == 2
    finally:
        await alice.close()
        await bob.close()


async def test_a_room_timer_applies_for_all_three_members(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, carol = await asyncio.gather(
        *(make_account(server, n, tmp_path) for n in ("alice", "bob", "carol"))
    )
    clients = (alice, bob, carol)
    try:
        room = await alice.rooms.create_room("team")
        await alice.rooms.invite("team", "bob")
        await alice.rooms.invite("team", "carol")
        for c in (bob, carol):
            await c.rooms.wait_epoch(room.room_id, 2)
        await alice.timers.set_room_timer("team", 3600)
        for c in clients:
            assert await c.rooms.wait_until(
                lambda c=c: (t := c.timers.room_timer(room.room_id)) is not None
                and t.seconds == 3600, 10)
            timer = c.timers.room_timer(room.room_id)
            assert timer is not None and timer.setter == "alice"
        mid = await bob.rooms.send(room.room_id, "disappears in an hour")
        for c in clients:
            assert await c.rooms.wait_until(lambda c=c: c.message(mid) is not None, 10)
            stored = c.message(mid)
            assert stored is not None and stored.status is DeliveryStatus.SENT
            assert c.timers.expires_at(mid) == stored.client_created_ms + 3_600_000
        later = time.time_ns() // 1_000_000 + 3_600_000 + 1000
        for c in clients:
            c.timers.expiries.clock = lambda: later
            assert mid in c.timers.sweep()
            assert c.message(mid) is None
            kinds = [m.content_type for m in c.rooms.history(room.room_id)]
            assert TIMER_CONTENT_TYPE in kinds and "text" not in kinds
        # A member that fetches a message only after it expired never shows it.
        await carol.close()
        late = await bob.rooms.send(room.room_id, "expired before carol looks")
        carol = await Client.open(tmp_path / "carol", PASSPHRASE)
        clients = (alice, bob, carol)
        carol.timers.expiries.clock = lambda: later
        events = carol.events()
        await carol.connect()
        await carol.timers.wait_deleted(late, 10)
        assert carol.message(late) is None
        assert carol.timers.deleted == 1  # it was stored (then deleted), not missed
        while True:
            try:
                event = await events.next(0.01)
            except TimeoutError:
                break
            assert not (isinstance(event, RoomMessageReceived) and event.message.message_id == late)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
