"""SQLite rooms and KeyPackages: :class:`RoomStorage` on the SQLite writer
(docs/architecture.md §Hot path).

Mixed into :class:`~sottovoce.server.storage.sqlite.SqliteStorage`: every write
below is a job of its single writer thread, so room sends, commits and acks
share the group commit of 1:1 sends (a batch of room sends costs one fsync),
and a commit's checks and writes cannot interleave with another commit's::

    writer job room_commit:  room (cached) ─► sender ─► idempotency ─► member | token
                             ─► epoch == room epoch? else commit_conflict{winningServerSeq}
                             ─► roster checks ─► audit linkage ─► (writes start here)
                             message row, room_commits, roster, rooms row, audit row,
                             Welcome inbox rows ─► COMMIT with the rest of the batch

Domain refusals (:class:`RoomRefused`) are raised before a job writes
anything, like the 1:1 jobs. One row per room message plus one read position
per member device; messages every (non-revoked) member has read are deleted
on ack. The writer caches each touched room's epoch, last serverSeq and roster
(it is their only writer); a rolled-back batch forgets the cache.
"""

from __future__ import annotations

import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sottovoce.limits import (
    JOIN_REQUEST_PENDING_MS,
    MAX_PENDING_JOIN_REQUESTS,
    MAX_ROOM_MEMBERS,
)
from sottovoce.protocol.rooms import NOTICE_CIPHERTEXT
from sottovoce.server.storage import engine_sqlite
from sottovoce.server.storage.base import StoredFrame, UnknownAccount
from sottovoce.server.storage.roombase import (
    AuditAppendage,
    CommitOutcome,
    CommitRequest,
    Member,
    RoomCallback,
    RoomRefused,
    RoomSendRequest,
    RoomStored,
    room_envelope,
)
from sottovoce.server.storage.rooms import ZERO_HASH, pairs_json, refuse, token_room
from sottovoce.server.storage.shared import SharedRooms

T = TypeVar("T")

#: Schema for rooms and KeyPackages, appended to ``sqlite.MIGRATIONS`` (no ';' in comments).
ROOMS_MIGRATION = """
    CREATE TABLE key_packages(
        id INTEGER PRIMARY KEY,
        dev INTEGER NOT NULL,
        key_package BLOB NOT NULL
    );
    CREATE INDEX key_packages_dev ON key_packages(dev, id);
    -- One row per device that ever uploaded KeyPackages, with its last-resort one.
    CREATE TABLE key_package_devices(
        dev INTEGER PRIMARY KEY,
        last_resort BLOB
    );
    -- token_hash is SHA-256 over a domain prefix and the token: never the token.
    CREATE TABLE rooms(
        room INTEGER PRIMARY KEY,
        room_id TEXT NOT NULL UNIQUE,
        epoch INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        group_info BLOB,
        token_hash BLOB,
        audit_count INTEGER NOT NULL DEFAULT 0,
        audit_head BLOB,
        created_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX rooms_token ON rooms(token_hash) WHERE token_hash IS NOT NULL;
    -- One read position per member device. until_seq is set when the device is
    -- removed: it still gets the messages up to the commit that removed it.
    CREATE TABLE room_members(
        room INTEGER NOT NULL,
        dev INTEGER NOT NULL,
        joined_seq INTEGER NOT NULL,
        read_seq INTEGER NOT NULL,
        until_seq INTEGER,
        PRIMARY KEY(room, dev)
    ) WITHOUT ROWID;
    CREATE INDEX room_members_dev ON room_members(dev);
    -- One row per room message (docs/architecture.md): append-only, narrow index, rowid = arrival.
    CREATE TABLE room_messages(
        id INTEGER PRIMARY KEY,
        room INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        envelope TEXT NOT NULL
    );
    CREATE UNIQUE INDEX room_messages_seq ON room_messages(room, seq);
    -- The accepted commit of each epoch (epoch = the epoch it was made in).
    CREATE TABLE room_commits(
        room INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY(room, epoch)
    ) WITHOUT ROWID;
    CREATE TABLE room_audit(
        room INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        entry BLOB NOT NULL,
        PRIMARY KEY(room, idx)
    ) WITHOUT ROWID;
"""

#: Schema v4: unanswered join requests (one per room and device), appended to
#: ``sqlite.MIGRATIONS``.
JOIN_REQUESTS_MIGRATION = """
    CREATE TABLE room_join_requests(
        room INTEGER NOT NULL,
        dev INTEGER NOT NULL,
        requested_at INTEGER NOT NULL,
        PRIMARY KEY(room, dev)
    ) WITHOUT ROWID
"""

class _Room:
    """The writer's view of one room (only the writer thread touches it)."""

    __slots__ = ("deliver", "epoch", "last_seq", "members", "pk", "room_id")

    def __init__(
        self, pk: int, room_id: str, epoch: int, last_seq: int,
        members: dict[Member, tuple[int, bool]],
    ) -> None:
        self.pk = pk
        self.room_id = room_id
        self.epoch = epoch
        self.last_seq = last_seq
        #: Current member devices -> (dev, revoked).
        self.members = members
        self.deliver: tuple[Member, ...] = ()
        self.recompute()

    def recompute(self) -> None:
        # Revoked devices stay MLS members until a commit removes them, but get nothing.
        self.deliver = tuple(sorted(k for k, (_, rev) in self.members.items() if not rev))


class SqliteRooms(SharedRooms):
    """Room methods of :class:`SqliteStorage` (which provides the writer and readers)."""

    if TYPE_CHECKING:
        _inbox_seq: dict[int, int]
        _dirty_devs: set[int]
        _last_received: int

        def _submit(
            self, fn: Callable[..., Any], args: tuple[Any, ...],
            done: Callable[[Any, BaseException | None], None],
        ) -> None: ...

        async def _write(self, fn: Callable[..., T], *args: Any) -> T: ...

        async def _read(self, fn: Callable[..., T], *args: Any) -> T: ...

        def _dev(self, conn: sqlite3.Connection, user: str, device: str) -> int | None: ...

    def _init_rooms(self) -> None:
        self._rooms: dict[str, _Room] = {}
        self._dirty_rooms: set[str] = set()

    def _received(self) -> int:
        # Shared with 1:1 sends: received_at grows with rowid in every table, which
        # expiry relies on (it deletes a rowid prefix).
        received = max(time.time_ns() // 1_000_000, self._last_received)
        self._last_received = received
        return received

    def _rooms_reset(self) -> None:
        """After a rollback: the cached rooms may hold uncommitted state."""
        self._rooms.clear()
        self._dirty_rooms.clear()

    def _flush_rooms(self, conn: sqlite3.Connection) -> None:
        if self._dirty_rooms:
            rooms = self._rooms
            conn.executemany(
                "UPDATE rooms SET last_seq=? WHERE room=?",
                [(rooms[r].last_seq, rooms[r].pk) for r in self._dirty_rooms],
            )
            self._dirty_rooms.clear()
        if len(self._rooms) > 10_000:
            self._rooms.clear()  # nothing dirty is left: the database has it all

    def _room(self, conn: sqlite3.Connection, room_id: str) -> _Room:
        room = self._rooms.get(room_id)
        if room is None:
            row = conn.execute(
                "SELECT room, epoch, last_seq FROM rooms WHERE room_id=?", (room_id,)
            ).fetchone()
            if row is None:
                raise refuse("unknown_room", "no such room")
            members = {
                (u, d): (int(dev), rev is not None)
                for u, d, dev, rev in conn.execute(
                    "SELECT d.user_id, d.device_id, m.dev, d.revoked_at FROM room_members m "
                    "JOIN devices d ON d.dev=m.dev WHERE m.room=? AND m.until_seq IS NULL",
                    (int(row[0]),),
                )
            }
            room = _Room(int(row[0]), room_id, int(row[1]), int(row[2]), members)
            self._rooms[room_id] = room
        return room

    def _sender(self, conn: sqlite3.Connection, user: str, device: str) -> int:
        dev = self._dev(conn, user, device)
        if dev is None:
            raise UnknownAccount("device is not registered")
        return dev

    def _duplicate(
        self, conn: sqlite3.Connection, sender: int, key: str, room_id: str
    ) -> tuple[str, int, int] | None:
        """(messageId, serverSeq, receivedAt) of an earlier send with this key, if any."""
        row = conn.execute(
            "SELECT conversation_id, message_id, server_seq, received_at FROM sends "
            "WHERE sender_dev=? AND idem_key=?",
            (sender, key),
        ).fetchone()
        if row is None:
            return None
        if row[0] != room_id:
            raise refuse("bad_request", "idempotencyKey was used for another conversation")
        return str(row[1]), int(row[2]), int(row[3])

    def _store_message(
        self,
        conn: sqlite3.Connection,
        room: _Room,
        received: int,
        envelope_of: Callable[[int], str],
    ) -> tuple[int, str]:
        seq = room.last_seq + 1
        env = envelope_of(seq)
        conn.execute(
            "INSERT INTO room_messages(room, seq, received_at, envelope) VALUES (?, ?, ?, ?)",
            (room.pk, seq, received, env),
        )
        room.last_seq = seq
        self._dirty_rooms.add(room.room_id)
        return seq, env

    def _audit_check(self, conn: sqlite3.Connection, room: _Room, audit: AuditAppendage) -> None:
        row = conn.execute(
            "SELECT audit_count, audit_head FROM rooms WHERE room=?", (room.pk,)
        ).fetchone()
        count, head = int(row[0]), row[1]
        want = ZERO_HASH if head is None else bytes(head)
        if audit.index != count or not hmac.compare_digest(audit.prev_hash, want):
            raise RoomRefused(
                "audit_conflict", "audit entry does not link to the stored chain head",
                retryable=True, details={"roomId": room.room_id, "nextIndex": count},
            )

    def _audit_write(self, conn: sqlite3.Connection, room: _Room, audit: AuditAppendage) -> None:
        conn.execute(
            "INSERT INTO room_audit(room, idx, entry) VALUES (?, ?, ?)",
            (room.pk, audit.index, audit.entry),
        )
        conn.execute(
            "UPDATE rooms SET audit_count=?, audit_head=? WHERE room=?",
            (audit.index + 1, audit.entry_hash, room.pk),
        )

    def _member_of(self, room: _Room, user: str, device: str) -> None:
        if (user, device) not in room.members:
            raise refuse("not_member", "this device is not a member of the room")

    # --- rooms (writer) ----------------------------------------------------------------

    def room_commit(self, req: CommitRequest, callback: RoomCallback) -> None:
        self._submit(self._w_commit, (req,), callback)

    def _w_commit(self, conn: sqlite3.Connection, req: CommitRequest) -> CommitOutcome:
        room = self._room(conn, req.room_id)
        sender = self._sender(conn, req.user, req.device)
        dup = self._duplicate(conn, sender, req.idempotency_key, req.room_id)
        if dup is not None:
            row = conn.execute(
                "SELECT epoch FROM room_commits WHERE room=? AND seq=?", (room.pk, dup[1])
            ).fetchone()
            if row is None:
                raise refuse("bad_request", "idempotencyKey was used for a room message")
            return CommitOutcome(
                RoomStored(req.room_id, dup[0], req.idempotency_key, dup[1], dup[2], True, "", ()),
                int(row[0]) + 1,
                (),
            )
        me = (req.user, req.device)
        external = me not in room.members
        if external:
            if req.token_hash is None:
                raise refuse("not_member", "this device is not a member of the room")
            stored = conn.execute(
                "SELECT token_hash FROM rooms WHERE room=?", (room.pk,)
            ).fetchone()[0]
            if stored is None or not hmac.compare_digest(bytes(stored), req.token_hash):
                raise refuse("invalid_token", "the token does not open a room")
            if not req.external:
                raise refuse("invalid_commit", "a non-member joins by an external commit")
            if req.adds != (me,) or req.removes:
                raise refuse("bad_request", "an external commit adds exactly its sender")
        elif req.external and (req.adds or req.removes):
            raise refuse("bad_request", "a member's external commit (a resync) changes no member")
        if req.epoch != room.epoch:
            row = conn.execute(
                "SELECT seq FROM room_commits WHERE room=? AND epoch=?", (room.pk, req.epoch)
            ).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT coalesce(max(seq), 0) FROM room_commits WHERE room=?", (room.pk,)
                ).fetchone()
            raise RoomRefused(
                "commit_conflict", "another commit was accepted for this epoch",
                retryable=True,
                details={"roomId": req.room_id, "currentEpoch": room.epoch,
                         "winningServerSeq": int(row[0])},
            )
        if req.external and req.checked_epoch != room.epoch:
            # Nothing unchecked is stored: the handler checks every external commit
            # against the GroupInfo of the epoch it names (the MLS public view).
            raise refuse("invalid_commit", "the external commit was not checked for this epoch")
        added: list[tuple[Member, int]] = []
        for key in req.adds:
            if key in room.members and not external:
                raise refuse("bad_request", "'adds' names a current member")
            dev = self._dev(conn, *key)
            revoked = None if dev is None else conn.execute(
                "SELECT revoked_at FROM devices WHERE dev=?", (dev,)
            ).fetchone()[0]
            if dev is None or revoked is not None:
                raise refuse("bad_request", "'adds' names an unknown or revoked device")
            added.append((key, dev))
        for key in req.removes:
            if key not in room.members:
                raise refuse("bad_request", "'removes' names a device that is not a member")
        if len(room.members) + len(req.adds) - len(req.removes) > MAX_ROOM_MEMBERS:
            raise refuse("bad_request", f"a room has at most {MAX_ROOM_MEMBERS} member devices")
        if req.audit is not None:
            self._audit_check(conn, room, req.audit)
        # --- writes start here; nothing below raises a domain error ---
        received = self._received()
        before = room.deliver
        extra = ',"adds":' + pairs_json(req.adds) + ',"removes":' + pairs_json(req.removes)
        seq, env = self._store_message(conn, room, received, lambda s: room_envelope(
            room_id=req.room_id, message_id=req.message_id, user=req.user, device=req.device,
            ciphertext_b64=req.commit_b64, content_type="system",
            client_created_at_ms=req.client_created_at_ms, server_seq=s, received_at_ms=received,
            idempotency_key=req.idempotency_key, epoch=req.epoch, kind="commit", extra=extra,
        ))
        conn.execute(
            "INSERT INTO sends(sender_dev, idem_key, conversation_id, message_id, server_seq, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?)",
            (sender, req.idempotency_key, req.room_id, req.message_id, seq, received),
        )
        conn.execute(
            "INSERT INTO room_commits(room, epoch, seq) VALUES (?, ?, ?)",
            (room.pk, req.epoch, seq),
        )
        members = dict(room.members)
        for key in req.removes:
            dev, revoked = members.pop(key)
            if revoked:  # a revoked device reads nothing more: forget its position
                conn.execute("DELETE FROM room_members WHERE room=? AND dev=?", (room.pk, dev))
            else:
                conn.execute(
                    "UPDATE room_members SET until_seq=? WHERE room=? AND dev=?",
                    (seq, room.pk, dev),
                )
        for key, dev in added:
            conn.execute(
                "INSERT OR REPLACE INTO room_members(room, dev, joined_seq, read_seq, until_seq) "
                "VALUES (?, ?, ?, ?, NULL)",
                (room.pk, dev, seq, seq),
            )
            # Its join request (if it made one) is answered.
            conn.execute("DELETE FROM room_join_requests WHERE room=? AND dev=?", (room.pk, dev))
            members[key] = (dev, False)
        conn.execute(
            "UPDATE rooms SET epoch=?, last_seq=?, group_info=coalesce(?, group_info) "
            "WHERE room=?",
            (req.epoch + 1, seq, req.group_info, room.pk),
        )
        if req.audit is not None:
            self._audit_write(conn, room, req.audit)
        welcomes: list[StoredFrame] = []
        if req.welcome_b64 is not None:
            rows: list[tuple[int, int, int, str]] = []
            for (user, device), dev in added:
                g = self._inbox_seq[dev] + 1
                self._inbox_seq[dev] = g
                self._dirty_devs.add(dev)
                wenv = room_envelope(
                    room_id=req.room_id, message_id=req.message_id, user=req.user,
                    device=req.device, ciphertext_b64=req.welcome_b64, content_type="system",
                    client_created_at_ms=req.client_created_at_ms, server_seq=seq,
                    received_at_ms=received, idempotency_key=req.idempotency_key,
                    epoch=req.epoch + 1, kind="welcome", recipient=user,
                )
                rows.append((dev, g, received, wenv))
                welcomes.append(StoredFrame(user, device, g, wenv))
            conn.executemany(
                "INSERT INTO inbox(dev, seq, received_at, envelope) VALUES (?, ?, ?, ?)", rows
            )
        room.epoch = req.epoch + 1
        room.members = members
        room.recompute()
        msg = RoomStored(req.room_id, req.message_id, req.idempotency_key, seq, received, False,
                         env, before)
        return CommitOutcome(msg, room.epoch, tuple(welcomes))

    def room_send(self, req: RoomSendRequest, callback: RoomCallback) -> None:
        self._submit(self._w_send, (req,), callback)

    def _w_send(self, conn: sqlite3.Connection, req: RoomSendRequest) -> RoomStored:
        room = self._room(conn, req.room_id)
        sender = self._sender(conn, req.user, req.device)
        dup = self._duplicate(conn, sender, req.idempotency_key, req.room_id)
        if dup is not None:
            return RoomStored(req.room_id, dup[0], req.idempotency_key, dup[1], dup[2], True,
                              "", ())
        self._member_of(room, req.user, req.device)
        if req.epoch != room.epoch:
            raise RoomRefused(
                "stale_epoch", "the room has moved to another epoch", retryable=True,
                details={"roomId": req.room_id, "currentEpoch": room.epoch},
            )
        received = self._received()
        seq, env = self._store_message(conn, room, received, lambda s: room_envelope(
            room_id=req.room_id, message_id=req.message_id, user=req.user, device=req.device,
            ciphertext_b64=req.ciphertext_b64, content_type=req.content_type,
            client_created_at_ms=req.client_created_at_ms, server_seq=s, received_at_ms=received,
            idempotency_key=req.idempotency_key, epoch=req.epoch, kind="message",
        ))
        conn.execute(
            "INSERT INTO sends(sender_dev, idem_key, conversation_id, message_id, server_seq, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?)",
            (sender, req.idempotency_key, req.room_id, req.message_id, seq, received),
        )
        return RoomStored(req.room_id, req.message_id, req.idempotency_key, seq, received, False,
                          env, room.deliver)

    def _notice(
        self, conn: sqlite3.Connection, room: _Room, user: str, device: str, ct_b64: str,
        extra: str,
    ) -> RoomStored:
        """A message made by the server itself (no idempotency record: it is never retried)."""
        mid = "srv-" + secrets.token_hex(16)
        received = self._received()
        seq, env = self._store_message(conn, room, received, lambda s: room_envelope(
            room_id=room.room_id, message_id=mid, user=user, device=device,
            ciphertext_b64=ct_b64, content_type="system", client_created_at_ms=0, server_seq=s,
            received_at_ms=received, idempotency_key=mid, epoch=room.epoch, kind="notice",
            extra=extra,
        ))
        return RoomStored(room.room_id, mid, mid, seq, received, False, env, room.deliver)

    def room_join_request(
        self, token_hash: bytes, user_id: str, device_id: str, key_package_b64: str,
        callback: RoomCallback,
    ) -> None:
        self._submit(
            self._w_join_request, (token_hash, user_id, device_id, key_package_b64), callback
        )

    def _w_join_request(
        self, conn: sqlite3.Connection, h: bytes, user: str, device: str, kp_b64: str
    ) -> RoomStored:
        self._sender(conn, user, device)
        room_id = engine_sqlite.run(token_room(h), conn)
        if room_id is None:
            raise refuse("invalid_token", "the token does not open a room")
        room = self._room(conn, room_id)
        if (user, device) in room.members:
            raise refuse("bad_request", "this device is a member of the room")
        dev = self._sender(conn, user, device)
        received = self._received()
        conn.execute(
            "DELETE FROM room_join_requests WHERE room=? AND requested_at<=?",
            (room.pk, received - JOIN_REQUEST_PENDING_MS),
        )
        if conn.execute(
            "SELECT 1 FROM room_join_requests WHERE room=? AND dev=?", (room.pk, dev)
        ).fetchone():
            raise refuse("join_request_pending", "this device's join request is still pending")
        pending = conn.execute(
            "SELECT count(*) FROM room_join_requests WHERE room=?", (room.pk,)
        ).fetchone()[0]
        if int(pending) >= MAX_PENDING_JOIN_REQUESTS:
            raise RoomRefused(
                "join_requests_full", "the room holds the most unanswered join requests",
                retryable=True,
            )
        conn.execute(
            "INSERT INTO room_join_requests(room, dev, requested_at) VALUES (?, ?, ?)",
            (room.pk, dev, received),
        )
        extra = ',"joinRequest":' + json.dumps(
            {"userId": user, "deviceId": device}, separators=(",", ":")
        )
        return self._notice(conn, room, user, device, kp_b64, extra)

    def room_device_revoked(self, user_id: str, device_id: str, callback: RoomCallback) -> None:
        self._submit(self._w_revoked, (user_id, device_id), callback)

    def _w_revoked(self, conn: sqlite3.Connection, user: str, device: str) -> list[RoomStored]:
        dev = self._dev(conn, user, device)
        if dev is None:
            return []
        # A revoked device must not be added anywhere again.
        conn.execute("DELETE FROM key_packages WHERE dev=?", (dev,))
        conn.execute("DELETE FROM key_package_devices WHERE dev=?", (dev,))
        room_ids = [
            str(r[0]) for r in conn.execute(
                "SELECT r.room_id FROM room_members m JOIN rooms r ON r.room=m.room "
                "WHERE m.dev=? AND m.until_seq IS NULL ORDER BY r.room",
                (dev,),
            )
        ]
        extra = ',"removeRequest":' + json.dumps(
            {"userId": user, "deviceId": device, "reason": "revoked"}, separators=(",", ":")
        )
        out: list[RoomStored] = []
        for room_id in room_ids:
            room = self._room(conn, room_id)
            key = (user, device)
            if key in room.members:
                room.members[key] = (dev, True)
                room.recompute()
            out.append(self._notice(conn, room, user, device, NOTICE_CIPHERTEXT, extra))
        return out

    async def room_ack(self, room_id: str, user_id: str, device_id: str, up_to_seq: int) -> int:
        return await self._write(self._w_ack, room_id, user_id, device_id, up_to_seq)

    def _w_ack(
        self, conn: sqlite3.Connection, room_id: str, user: str, device: str, up_to: int
    ) -> int:
        room = self._room(conn, room_id)
        dev = self._sender(conn, user, device)
        row = conn.execute(
            "SELECT read_seq, until_seq FROM room_members WHERE room=? AND dev=?", (room.pk, dev)
        ).fetchone()
        if row is None:
            raise refuse("not_member", "this device is not a member of the room")
        read, until = int(row[0]), row[1]
        new = min(up_to, room.last_seq if until is None else int(until))
        if until is not None and new >= int(until):
            # A removed device has read everything it may: forget it.
            conn.execute("DELETE FROM room_members WHERE room=? AND dev=?", (room.pk, dev))
        elif new > read:
            conn.execute(
                "UPDATE room_members SET read_seq=? WHERE room=? AND dev=?", (new, room.pk, dev)
            )
        else:
            return 0
        low = conn.execute(
            "SELECT min(m.read_seq) FROM room_members m JOIN devices d ON d.dev=m.dev "
            "WHERE m.room=? AND d.revoked_at IS NULL",
            (room.pk,),
        ).fetchone()[0]
        if low is None:
            return 0
        return int(conn.execute(
            "DELETE FROM room_messages WHERE room=? AND seq<=?", (room.pk, int(low))
        ).rowcount)

    async def set_room_token(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        token_hash: bytes | None,
        audit: AuditAppendage | None,
    ) -> None:
        await self._write(self._w_token, room_id, user_id, device_id, token_hash, audit)

    def _w_token(
        self, conn: sqlite3.Connection, room_id: str, user: str, device: str,
        h: bytes | None, audit: AuditAppendage | None,
    ) -> None:
        room = self._room(conn, room_id)
        self._member_of(room, user, device)
        if h is not None and conn.execute(
            "SELECT 1 FROM rooms WHERE token_hash=? AND room<>?", (h, room.pk)
        ).fetchone():
            raise refuse("bad_request", "this token is in use; make a new one")
        if audit is not None:
            self._audit_check(conn, room, audit)
        conn.execute("UPDATE rooms SET token_hash=? WHERE room=?", (h, room.pk))
        if audit is not None:
            self._audit_write(conn, room, audit)

    async def audit_append(
        self, room_id: str, user_id: str, device_id: str, audit: AuditAppendage
    ) -> int:
        return await self._write(self._w_audit, room_id, user_id, device_id, audit)

    def _w_audit(
        self, conn: sqlite3.Connection, room_id: str, user: str, device: str,
        audit: AuditAppendage,
    ) -> int:
        room = self._room(conn, room_id)
        self._member_of(room, user, device)
        self._audit_check(conn, room, audit)
        self._audit_write(conn, room, audit)
        return audit.index
