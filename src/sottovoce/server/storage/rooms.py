"""Rooms: creation and every read, written once for every engine (:mod:`.txn`).

Message-producing writes (commits, sends, notices, acks, tokens) stay with each
engine, which orders them its own way: the SQLite writer keeps each touched
room's epoch, last serverSeq and roster in memory; PostgreSQL takes the room's
row lock. A read sees only what those writes committed.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sottovoce.errors import DecodeError, UsageError
from sottovoce.protocol.audit import AuditAction, AuditEntry
from sottovoce.server.storage.base import UnknownAccount
from sottovoce.server.storage.roombase import (
    Member,
    RoomFrames,
    RoomPosition,
    RoomRefused,
    RoomState,
    RoomSummary,
)
from sottovoce.server.storage.txn import DevId, Txn, blob, execute, one, rows, val

#: The audit chain's prev_hash before its first entry.
ZERO_HASH = bytes(32)
#: "No upper bound" for a serverSeq range or a count (fits a signed 64-bit column).
_NO_TOP = EVERY_ROOM = 1 << 62


@dataclass(eq=False, repr=False, slots=True)
class RoomView:
    """One room as a write transaction sees it: its row and current roster. The writes of
    :mod:`.room_writes` keep it up to date, so an engine may cache it across transactions
    (the SQLite writer does, as the room's only writer)."""

    pk: int
    room_id: str
    epoch: int
    last_seq: int
    token_hash: bytes | None
    audit_count: int
    audit_head: bytes | None
    #: Current member devices -> (dev, revoked).
    members: dict[Member, tuple[int, bool]]
    deliver: tuple[Member, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.recompute()

    def recompute(self) -> None:
        # Revoked devices stay MLS members until a commit removes them, but get nothing.
        self.deliver = tuple(sorted(k for k, (_, rev) in self.members.items() if not rev))


def load_room(room_id: str) -> Txn[RoomView]:
    """The room with its current roster, its row locked where writers run concurrently
    (``unknown_room`` if there is none)."""
    row = yield one(
        "SELECT room, epoch, last_seq, token_hash, audit_count, audit_head FROM rooms "
        "WHERE room_id=? FOR UPDATE",
        room_id,
    )
    if row is None:
        raise refuse("unknown_room", "no such room")
    members = yield rows(
        "SELECT d.user_id, d.device_id, m.dev, d.revoked_at FROM room_members m "
        "JOIN devices d ON d.dev=m.dev WHERE m.room=? AND m.until_seq IS NULL",
        row[0],
    )
    return RoomView(
        int(row[0]), room_id, int(row[1]), int(row[2]),
        None if row[3] is None else blob(row[3]), int(row[4]),
        None if row[5] is None else blob(row[5]),
        {(str(u), str(d)): (int(dev), rev is not None) for u, d, dev, rev in members},
    )


def refuse(code: str, message: str, **details: Any) -> RoomRefused:
    return RoomRefused(code, message, details=details or None)


def pairs_json(items: Sequence[Member]) -> str:
    return json.dumps([{"userId": u, "deviceId": d} for u, d in items], separators=(",", ":"))


def create_room(
    room_id: str, user: str, device: str, group_info: bytes | None, now: int
) -> Txn[None]:
    dev = yield DevId(user, device)
    if dev is None:
        raise UnknownAccount("device is not registered")
    pk = yield val(
        "INSERT INTO rooms(room_id, epoch, last_seq, group_info, created_at) "
        "VALUES (?, 0, 0, ?, ?) ON CONFLICT (room_id) DO NOTHING RETURNING room",
        room_id, group_info, now,
    )
    if pk is None:
        raise refuse("room_exists", "a room with this id exists")
    yield execute(
        "INSERT INTO room_members(room, dev, joined_seq, read_seq) VALUES (?, ?, 0, 0)", pk, dev
    )


def token_room(token_hash: bytes) -> Txn[str | None]:
    row = yield one("SELECT room_id, token_hash FROM rooms WHERE token_hash=?", token_hash)
    # The index finds the row; the comparison that decides is constant-time.
    if row is None or not hmac.compare_digest(blob(row[1]), token_hash):
        return None
    return str(row[0])


def membership(
    room_id: str, user: str, device: str
) -> Txn[tuple[int, int, int, int, int | None]]:
    """(room pk, epoch, last_seq, joined_seq, until_seq) or RoomRefused."""
    room = yield one("SELECT room, epoch, last_seq FROM rooms WHERE room_id=?", room_id)
    if room is None:
        raise refuse("unknown_room", "no such room")
    row = yield one(
        "SELECT m.joined_seq, m.until_seq FROM room_members m JOIN devices d ON d.dev=m.dev "
        "WHERE m.room=? AND d.user_id=? AND d.device_id=?",
        room[0], user, device,
    )
    if row is None:
        raise refuse("not_member", "this device is not a member of the room")
    until = None if row[1] is None else int(row[1])
    return int(room[0]), int(room[1]), int(room[2]), int(row[0]), until


def current_member(room_id: str, user: str, device: str) -> Txn[tuple[int, int]]:
    """(room pk, epoch) for a device that is a member now (not removed)."""
    pk, epoch, _, _, until = yield from membership(room_id, user, device)
    if until is not None:
        raise refuse("not_member", "this device was removed from the room")
    return pk, epoch


def messages(
    pk: int, after: int, until: int | None, limit: int, now_ms: int
) -> Txn[list[tuple[int, str]]]:
    """The room's frames after ``after`` (a disappearing message past its expiry never:
    its serverSeq is a hole that room.sync's ``upToServerSeq`` steps over)."""
    found = yield rows(
        "SELECT seq, envelope FROM room_messages WHERE room=? AND seq>? AND seq<=? "
        "AND (expires_at IS NULL OR expires_at > ?) ORDER BY seq LIMIT ?",
        pk, after, _NO_TOP if until is None else until, now_ms, limit,
    )
    return [(int(seq), str(env)) for seq, env in found]


def room_read(
    room_id: str, user: str, device: str, after: int, limit: int, now_ms: int
) -> Txn[RoomFrames]:
    pk, epoch, last, joined, until = yield from membership(room_id, user, device)
    # Nothing from before the device joined; a removed device up to its removal.
    frames = yield from messages(pk, max(after, joined), until, limit, now_ms)
    # Fewer than asked: every row up to the end was looked at (expired ones skipped).
    top = last if until is None else min(last, until)
    scanned = frames[-1][0] if len(frames) == limit else max(after, top)
    return RoomFrames(frames, epoch, last, scanned)


def room_positions(user: str, device: str) -> Txn[list[RoomPosition]]:
    found = yield rows(
        "SELECT r.room_id, m.read_seq, m.until_seq FROM devices d "
        "JOIN room_members m ON m.dev=d.dev JOIN rooms r ON r.room=m.room "
        "WHERE d.user_id=? AND d.device_id=? AND d.revoked_at IS NULL ORDER BY r.room",
        user, device,
    )
    return [RoomPosition(str(rid), int(read), None if until is None else int(until))
            for rid, read, until in found]


def room_replay(
    room_id: str, after: int, until: int | None, limit: int, now_ms: int
) -> Txn[list[tuple[int, str]]]:
    pk = yield val("SELECT room FROM rooms WHERE room_id=?", room_id)
    if pk is None:
        return []
    return (yield from messages(int(pk), after, until, limit, now_ms))


def room_state(room_id: str, user: str, device: str) -> Txn[RoomState]:
    pk, epoch, last, _, until = yield from membership(room_id, user, device)
    if until is not None:
        raise refuse("not_member", "this device was removed from the room")
    members = yield rows(
        "SELECT d.user_id, d.device_id FROM room_members m JOIN devices d ON d.dev=m.dev "
        "WHERE m.room=? AND m.until_seq IS NULL ORDER BY d.user_id, d.device_id",
        pk,
    )
    token, residency, recorder = yield one(
        "SELECT token_hash IS NOT NULL, residency, recorder FROM rooms WHERE room=?", pk
    )
    admin = yield from room_admin(pk)
    return RoomState(room_id, epoch, last, tuple((str(u), str(d)) for u, d in members),
                     bool(token), None if residency is None else str(residency),
                     bool(recorder), admin)


def room_admin(pk: int) -> Txn[str | None]:
    """The room's admin: the account that signed its first audit entry, ROOM_CREATED
    (the server checked that entry's signature against its actor's certificate)."""
    first = yield val("SELECT entry FROM room_audit WHERE room=? AND idx=0", pk)
    if first is None:
        return None
    try:
        entry = AuditEntry.decode(blob(first))
    except (DecodeError, UsageError):
        return None
    return entry.actor_user_id if entry.action is AuditAction.ROOM_CREATED else None


def rooms_of(user: str, device: str, limit: int) -> Txn[list[RoomSummary]]:
    found = yield rows(
        "SELECT r.room_id, r.epoch, r.last_seq FROM devices d "
        "JOIN room_members m ON m.dev=d.dev JOIN rooms r ON r.room=m.room "
        "WHERE d.user_id=? AND d.device_id=? AND m.until_seq IS NULL "
        "ORDER BY r.room_id LIMIT ?",
        user, device, limit,
    )
    return [RoomSummary(str(rid), int(epoch), int(last)) for rid, epoch, last in found]


def group_info_by_token(token_hash: bytes) -> Txn[tuple[str, int, bytes] | None]:
    room_id = yield from token_room(token_hash)
    if room_id is None:
        return None
    row = yield one("SELECT epoch, group_info FROM rooms WHERE room_id=?", room_id)
    return room_id, int(row[0]), b"" if row[1] is None else blob(row[1])


def room_group_info(room_id: str, user: str, device: str) -> Txn[tuple[int, bytes]]:
    pk, epoch = yield from current_member(room_id, user, device)
    info = yield val("SELECT group_info FROM rooms WHERE room=?", pk)
    return epoch, b"" if info is None else blob(info)


def audit_get(
    room_id: str, user: str, device: str, after: int, limit: int
) -> Txn[list[bytes]]:
    pk, _ = yield from current_member(room_id, user, device)
    found = yield rows(
        "SELECT entry FROM room_audit WHERE room=? AND idx>? ORDER BY idx LIMIT ?",
        pk, after, limit,
    )
    return [blob(e) for (e,) in found]
