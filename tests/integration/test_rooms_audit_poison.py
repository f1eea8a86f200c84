"""Nobody can poison a room's audit trail (real server on 127.0.0.1, real clients).

The attack: a member appended an entry with a garbage signature naming another member
as actor; the server stored it, every later entry chained onto it and the whole trail
read INVALID from then on. Now the server refuses an entry that is not by the sending
device's certified MLS key (invalid_audit_entry), and a client that meets such an
entry in a trail an older server stored reports it and verifies the rest.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from sottovoce.client import Client, ServerError
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.audit import AuditAction, AuditEntry, entry_hash
from tests.integration.serverproc import ServerProcess
from tests.integration.test_rooms_e2e import close_all, make_accounts


async def _trail(client: Client, room_id: str) -> list[bytes]:
    room = client.rooms.get(room_id)
    room.audit = []
    return list(await client.rooms._audit.fetch(room))


def _poisoned(head: bytes, as_actor: Client) -> bytes:
    """The next entry after ``head``, naming ``as_actor``, with a garbage signature."""
    prev = AuditEntry.decode(head)
    forged = dataclasses.replace(
        prev, index=prev.index + 1, prev_hash=entry_hash(head),
        action=AuditAction.MEMBER_REMOVED, actor_user_id=as_actor.username,
        actor_device_id=as_actor.device_id, signature=bytes(64),
    )
    return forged.encode()


async def test_the_server_refuses_an_entry_not_signed_by_the_sender(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    try:
        room = await alice.rooms.create_room("r")
        await alice.rooms.invite("r", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        head = (await _trail(bob, room.room_id))[-1]
        for forged in (_poisoned(head, alice), _poisoned(head, bob)):
            with pytest.raises(ServerError) as err:
                await bob._conn.request(
                    pr.AuditAppend(roomId=room.room_id, entry=forged),
                    frozenset({pr.ROOM_AUDIT_APPENDED}),
                )
            assert err.value.code == "invalid_audit_entry"
        await bob.rooms.record_event(room.room_id, AuditAction.CALL_STARTED)
        trail = await alice.rooms.audit("r")
        assert not trail.rejected
        assert [e.action for e in trail][-1] is AuditAction.CALL_STARTED
    finally:
        await close_all([alice, bob])


async def test_a_poisoned_entry_an_older_server_stored_is_skipped_not_fatal(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    try:
        room = await alice.rooms.create_room("r")
        await alice.rooms.invite("r", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        assert len(await alice.rooms.audit("r")) == 2  # created, added
        # What an older server let through: written straight into its database.
        head = (await _trail(alice, room.room_id))[-1]
        poison = _poisoned(head, alice)
        db = sqlite3.connect(server.db_path)
        try:
            with db:
                (pk,) = db.execute("SELECT room FROM rooms WHERE room_id = ?",
                                   (room.room_id,)).fetchone()
                db.execute("INSERT INTO room_audit(room, idx, entry) VALUES (?, 2, ?)",
                           (pk, poison))
                db.execute("UPDATE rooms SET audit_count = 3, audit_head = ? WHERE room = ?",
                           (entry_hash(poison), pk))
        finally:
            db.close()
        # Later entries chain onto it, as they must; the trail stays usable for everyone.
        await bob.rooms.record_event(room.room_id, AuditAction.CALL_STARTED)
        await alice.rooms.record_event("r", AuditAction.CALL_STOPPED)
        for client, ref in ((alice, "r"), (bob, room.room_id)):
            trail = await client.rooms.audit(ref)
            assert [r.index for r in trail.rejected] == [2]
            assert [e.index for e in trail] == [0, 1, 3, 4]
            assert [e.action for e in trail][-2:] == [
                AuditAction.CALL_STARTED, AuditAction.CALL_STOPPED
            ]
    finally:
        await close_all([alice, bob])
