"""Room writes, written once for every engine (:mod:`.txn`; rules in :mod:`.roombase`).

Each operation starts from the room's :class:`~.rooms.RoomView` (``RoomForUpdate``:
PostgreSQL locks the row, the SQLite writer hands out its cached view), checks
everything, and only then writes; a refusal (:class:`RoomRefused`) is raised
before the first write, so a refused job leaves nothing behind::

    commit:  room ─► sender ─► idempotency ─► member | token ─► epoch == room epoch?
             else commit_conflict{winningServerSeq} ─► roster ─► audit linkage
             ─► (writes) message, sends, room_commits, roster, rooms, audit, Welcomes

The view is updated with every write, so an engine may keep it across
transactions (``RoomReread`` then refreshes its token hash and audit head before
they decide anything). Where a counter lives (a room's last serverSeq, a device's
globalInboxSeq) is the engine's: ``RoomAdvanced`` and ``InboxSeqs``.
"""

from __future__ import annotations

import hmac
import json
import secrets

from sottovoce.limits import (
    JOIN_REQUEST_PENDING_MS,
    MAX_PENDING_JOIN_REQUESTS,
    MAX_ROOM_MEMBERS,
)
from sottovoce.protocol.rooms import NOTICE_CIPHERTEXT, RESIDENCY_NONE
from sottovoce.server.storage.base import StoredFrame, UnknownAccount
from sottovoce.server.storage.roombase import (
    AuditAppendage,
    CommitOutcome,
    CommitRequest,
    Member,
    RoomRefused,
    RoomSendRequest,
    RoomStored,
    room_envelope,
)
from sottovoce.server.storage.rooms import (
    EVERY_ROOM,
    ZERO_HASH,
    RoomView,
    pairs_json,
    refuse,
    room_admin,
    rooms_of,
    token_room,
)
from sottovoce.server.storage.txn import (
    DevId,
    InboxSeqs,
    Received,
    RoomAdvanced,
    RoomForUpdate,
    RoomReread,
    Txn,
    execute,
    many,
    one,
    val,
)

_RECORD_SEND = (
    "INSERT INTO sends(sender_dev, idem_key, conversation_id, message_id, server_seq, "
    "received_at) VALUES (?, ?, ?, ?, ?, ?)"
)


def _sender(user: str, device: str) -> Txn[int]:
    dev = yield DevId(user, device)
    if dev is None:
        raise UnknownAccount("device is not registered")
    return int(dev)


def _duplicate(sender: int, key: str, room_id: str) -> Txn[tuple[str, int, int] | None]:
    """(messageId, serverSeq, receivedAt) of an earlier send with this key, if any."""
    row = yield one(
        "SELECT conversation_id, message_id, server_seq, received_at FROM sends "
        "WHERE sender_dev=? AND idem_key=?",
        sender, key,
    )
    if row is None:
        return None
    if row[0] != room_id:
        raise refuse("bad_request", "idempotencyKey was used for another conversation")
    return str(row[1]), int(row[2]), int(row[3])


def _member_of(room: RoomView, user: str, device: str) -> None:
    if (user, device) not in room.members:
        raise refuse("not_member", "this device is not a member of the room")


def _audit_check(room: RoomView, audit: AuditAppendage) -> None:
    want = ZERO_HASH if room.audit_head is None else room.audit_head
    if audit.index != room.audit_count or not hmac.compare_digest(audit.prev_hash, want):
        raise RoomRefused(
            "audit_conflict", "audit entry does not link to the stored chain head",
            retryable=True, details={"roomId": room.room_id, "nextIndex": room.audit_count},
        )


def _audit_write(room: RoomView, audit: AuditAppendage) -> Txn[None]:
    yield execute("INSERT INTO room_audit(room, idx, entry) VALUES (?, ?, ?)",
                  room.pk, audit.index, audit.entry)
    yield execute("UPDATE rooms SET audit_count=?, audit_head=? WHERE room=?",
                  audit.index + 1, audit.entry_hash, room.pk)
    room.audit_count, room.audit_head = audit.index + 1, audit.entry_hash


def _store_message(
    room: RoomView, received: int, envelope: str, expires_at_ms: int = 0
) -> Txn[None]:
    """Store the room's next message (``envelope`` carries serverSeq ``room.last_seq + 1``;
    ``expires_at_ms``: a disappearing message's, 0 for none)."""
    seq = room.last_seq + 1
    yield execute(
        "INSERT INTO room_messages(room, seq, received_at, envelope, expires_at) "
        "VALUES (?, ?, ?, ?, ?)",
        room.pk, seq, received, envelope, expires_at_ms or None,
    )
    room.last_seq = seq
    yield RoomAdvanced(room)


def commit(req: CommitRequest) -> Txn[CommitOutcome]:
    room: RoomView = yield RoomForUpdate(req.room_id)
    sender = yield from _sender(req.user, req.device)
    dup = yield from _duplicate(sender, req.idempotency_key, req.room_id)
    if dup is not None:
        epoch = yield val("SELECT epoch FROM room_commits WHERE room=? AND seq=?", room.pk, dup[1])
        if epoch is None:
            raise refuse("bad_request", "idempotencyKey was used for a room message")
        return CommitOutcome(
            RoomStored(req.room_id, dup[0], req.idempotency_key, dup[1], dup[2], True, "", ()),
            int(epoch) + 1,
            (),
        )
    me = (req.user, req.device)
    external = me not in room.members
    if external or req.audit is not None:
        yield RoomReread(room)
    if external:
        if req.token_hash is None:
            raise refuse("not_member", "this device is not a member of the room")
        if room.token_hash is None or not hmac.compare_digest(room.token_hash, req.token_hash):
            raise refuse("invalid_token", "the token does not open a room")
        if not req.external:
            raise refuse("invalid_commit", "a non-member joins by an external commit")
        if req.adds != (me,) or req.removes:
            raise refuse("bad_request", "an external commit adds exactly its sender")
    elif req.external and (req.adds or req.removes):
        raise refuse("bad_request", "a member's external commit (a resync) changes no member")
    if req.epoch != room.epoch:
        win = yield val("SELECT seq FROM room_commits WHERE room=? AND epoch=?",
                        room.pk, req.epoch)
        if win is None:
            win = yield val("SELECT coalesce(max(seq), 0) FROM room_commits WHERE room=?",
                            room.pk)
        raise RoomRefused(
            "commit_conflict", "another commit was accepted for this epoch",
            retryable=True,
            details={"roomId": req.room_id, "currentEpoch": room.epoch,
                     "winningServerSeq": int(win)},
        )
    if req.external and req.checked_epoch != room.epoch:
        # Nothing unchecked is stored: the handler checks every external commit
        # against the GroupInfo of the epoch it names (the MLS public view).
        raise refuse("invalid_commit", "the external commit was not checked for this epoch")
    added: list[tuple[Member, int]] = []
    for key in req.adds:
        if key in room.members and not external:
            raise refuse("bad_request", "'adds' names a current member")
        dev = yield DevId(*key)
        revoked = None if dev is None else (
            yield val("SELECT revoked_at FROM devices WHERE dev=?", dev))
        if dev is None or revoked is not None:
            raise refuse("bad_request", "'adds' names an unknown or revoked device")
        added.append((key, int(dev)))
    for key in req.removes:
        if key not in room.members:
            raise refuse("bad_request", "'removes' names a device that is not a member")
    if len(room.members) + len(req.adds) - len(req.removes) > MAX_ROOM_MEMBERS:
        raise refuse("bad_request", f"a room has at most {MAX_ROOM_MEMBERS} member devices")
    if req.audit is not None:
        _audit_check(room, req.audit)
    # --- writes start here; nothing below raises a domain error ---
    received = yield Received()
    before = room.deliver
    seq = room.last_seq + 1
    env = room_envelope(
        room_id=req.room_id, message_id=req.message_id, user=req.user, device=req.device,
        ciphertext_b64=req.commit_b64, content_type="system",
        client_created_at_ms=req.client_created_at_ms, server_seq=seq, received_at_ms=received,
        idempotency_key=req.idempotency_key, epoch=req.epoch, kind="commit",
        extra=',"adds":' + pairs_json(req.adds) + ',"removes":' + pairs_json(req.removes),
    )
    yield from _store_message(room, received, env)
    yield execute(_RECORD_SEND, sender, req.idempotency_key, req.room_id, req.message_id, seq,
                  received)
    yield execute("INSERT INTO room_commits(room, epoch, seq) VALUES (?, ?, ?)",
                  room.pk, req.epoch, seq)
    members = dict(room.members)
    for key in req.removes:
        dev, revoked = members.pop(key)
        if revoked:  # a revoked device reads nothing more: forget its position
            yield execute("DELETE FROM room_members WHERE room=? AND dev=?", room.pk, dev)
        else:
            yield execute("UPDATE room_members SET until_seq=? WHERE room=? AND dev=?",
                          seq, room.pk, dev)
    for key, dev in added:
        yield execute(
            "INSERT INTO room_members(room, dev, joined_seq, read_seq, until_seq) "
            "VALUES (?, ?, ?, ?, NULL) ON CONFLICT (room, dev) DO UPDATE "
            "SET joined_seq = excluded.joined_seq, read_seq = excluded.read_seq, "
            "until_seq = NULL",
            room.pk, dev, seq, seq,
        )
        # Its join request (if it made one) is answered.
        yield execute("DELETE FROM room_join_requests WHERE room=? AND dev=?", room.pk, dev)
        members[key] = (dev, False)
    yield execute("UPDATE rooms SET epoch=?, group_info=coalesce(?, group_info) WHERE room=?",
                  req.epoch + 1, req.group_info, room.pk)
    if req.audit is not None:
        yield from _audit_write(room, req.audit)
    welcomes: list[StoredFrame] = []
    if req.welcome_b64 is not None and added:
        seqs = yield InboxSeqs(tuple(dev for _, dev in added))
        inbox_rows: list[tuple[int, int, int, str]] = []
        for ((user, device), dev), g in zip(added, seqs, strict=True):
            wenv = room_envelope(
                room_id=req.room_id, message_id=req.message_id, user=req.user,
                device=req.device, ciphertext_b64=req.welcome_b64, content_type="system",
                client_created_at_ms=req.client_created_at_ms, server_seq=seq,
                received_at_ms=received, idempotency_key=req.idempotency_key,
                epoch=req.epoch + 1, kind="welcome", recipient=user,
            )
            inbox_rows.append((dev, g, received, wenv))
            welcomes.append(StoredFrame(user, device, g, wenv))
        yield many("INSERT INTO inbox(dev, seq, received_at, envelope) VALUES (?, ?, ?, ?)",
                   inbox_rows)
    room.epoch = req.epoch + 1
    room.members = members
    room.recompute()
    msg = RoomStored(req.room_id, req.message_id, req.idempotency_key, seq, received, False,
                     env, before)
    return CommitOutcome(msg, room.epoch, tuple(welcomes))


def send(req: RoomSendRequest) -> Txn[RoomStored]:
    room: RoomView = yield RoomForUpdate(req.room_id)
    sender = yield from _sender(req.user, req.device)
    dup = yield from _duplicate(sender, req.idempotency_key, req.room_id)
    if dup is not None:
        return RoomStored(req.room_id, dup[0], req.idempotency_key, dup[1], dup[2], True, "", ())
    _member_of(room, req.user, req.device)
    if req.epoch != room.epoch:
        raise RoomRefused(
            "stale_epoch", "the room has moved to another epoch", retryable=True,
            details={"roomId": req.room_id, "currentEpoch": room.epoch},
        )
    received = yield Received()
    seq = room.last_seq + 1
    env = room_envelope(
        room_id=req.room_id, message_id=req.message_id, user=req.user, device=req.device,
        ciphertext_b64=req.ciphertext_b64, content_type=req.content_type,
        client_created_at_ms=req.client_created_at_ms, server_seq=seq, received_at_ms=received,
        idempotency_key=req.idempotency_key, epoch=req.epoch, kind="message",
    )
    yield from _store_message(room, received, env, req.expires_at_ms)
    yield execute(_RECORD_SEND, sender, req.idempotency_key, req.room_id, req.message_id, seq,
                  received)
    return RoomStored(req.room_id, req.message_id, req.idempotency_key, seq, received, False,
                      env, room.deliver)


def _notice(room: RoomView, user: str, device: str, ct_b64: str, extra: str) -> Txn[RoomStored]:
    """A message made by the server itself (no idempotency record: it is never retried)."""
    mid = "srv-" + secrets.token_hex(16)
    received = yield Received()
    seq = room.last_seq + 1
    env = room_envelope(
        room_id=room.room_id, message_id=mid, user=user, device=device,
        ciphertext_b64=ct_b64, content_type="system", client_created_at_ms=0, server_seq=seq,
        received_at_ms=received, idempotency_key=mid, epoch=room.epoch, kind="notice",
        extra=extra,
    )
    yield from _store_message(room, received, env)
    return RoomStored(room.room_id, mid, mid, seq, received, False, env, room.deliver)


def token_rooms(token_hash: bytes) -> Txn[list[str]]:
    """The room a join request names (``invalid_token`` if none): its ordering key."""
    room_id = yield from token_room(token_hash)
    if room_id is None:
        raise refuse("invalid_token", "the token does not open a room")
    return [room_id]


def join_request(token_hash: bytes, user: str, device: str, kp_b64: str) -> Txn[RoomStored]:
    dev = yield from _sender(user, device)
    (room_id,) = yield from token_rooms(token_hash)
    room: RoomView = yield RoomForUpdate(room_id)
    yield RoomReread(room)
    if room.token_hash is None or not hmac.compare_digest(room.token_hash, token_hash):
        raise refuse("invalid_token", "the token does not open a room")  # changed meanwhile
    if (user, device) in room.members:
        raise refuse("bad_request", "this device is a member of the room")
    # The room is ours until the end (row lock, or the single writer): counting and
    # inserting cannot race another request.
    now = yield Received()
    yield execute("DELETE FROM room_join_requests WHERE room=? AND requested_at<=?",
                  room.pk, now - JOIN_REQUEST_PENDING_MS)
    if (yield one("SELECT 1 FROM room_join_requests WHERE room=? AND dev=?", room.pk, dev)):
        raise refuse("join_request_pending", "this device's join request is still pending")
    pending = yield val("SELECT count(*) FROM room_join_requests WHERE room=?", room.pk)
    if int(pending) >= MAX_PENDING_JOIN_REQUESTS:
        raise RoomRefused(
            "join_requests_full", "the room holds the most unanswered join requests",
            retryable=True,
        )
    yield execute("INSERT INTO room_join_requests(room, dev, requested_at) VALUES (?, ?, ?)",
                  room.pk, dev, now)
    extra = ',"joinRequest":' + json.dumps({"userId": user, "deviceId": device},
                                           separators=(",", ":"))
    return (yield from _notice(room, user, device, kp_b64, extra))


def device_rooms(user: str, device: str) -> Txn[list[str]]:
    """The rooms a device is a member of, by room id (the order their rows are locked in)."""
    return [r.room_id for r in (yield from rooms_of(user, device, EVERY_ROOM))]


def device_revoked(user: str, device: str) -> Txn[list[RoomStored]]:
    dev = yield DevId(user, device)
    if dev is None:
        return []
    # A revoked device must not be added anywhere again.
    yield execute("DELETE FROM key_packages WHERE dev=?", dev)
    yield execute("DELETE FROM key_package_last_resorts WHERE dev=?", dev)
    yield execute("DELETE FROM key_package_devices WHERE dev=?", dev)
    extra = ',"removeRequest":' + json.dumps(
        {"userId": user, "deviceId": device, "reason": "revoked"}, separators=(",", ":")
    )
    out: list[RoomStored] = []
    key = (user, device)
    for room_id in (yield from device_rooms(user, device)):
        room: RoomView = yield RoomForUpdate(room_id)
        if key in room.members:  # stays a member until a commit removes it; gets nothing
            room.members[key] = (int(dev), True)
            room.recompute()
        out.append((yield from _notice(room, user, device, NOTICE_CIPHERTEXT, extra)))
    return out


def ack(room_id: str, user: str, device: str, up_to: int) -> Txn[int]:
    """Move the device's read position; delete what every (non-revoked) member has read."""
    room: RoomView = yield RoomForUpdate(room_id)
    dev = yield from _sender(user, device)
    row = yield one("SELECT read_seq, until_seq FROM room_members WHERE room=? AND dev=?",
                    room.pk, dev)
    if row is None:
        raise refuse("not_member", "this device is not a member of the room")
    read, until = int(row[0]), row[1]
    new = min(up_to, room.last_seq if until is None else int(until))
    if until is not None and new >= int(until):
        # A removed device has read everything it may: forget it.
        yield execute("DELETE FROM room_members WHERE room=? AND dev=?", room.pk, dev)
    elif new > read:
        yield execute("UPDATE room_members SET read_seq=? WHERE room=? AND dev=?",
                      new, room.pk, dev)
    else:
        return 0
    low = yield val(
        "SELECT min(m.read_seq) FROM room_members m JOIN devices d ON d.dev=m.dev "
        "WHERE m.room=? AND d.revoked_at IS NULL",
        room.pk,
    )
    if low is None:
        return 0
    return int((yield execute("DELETE FROM room_messages WHERE room=? AND seq<=?",
                              room.pk, int(low))))


def set_token(
    room_id: str, user: str, device: str, token_hash: bytes | None,
    audit: AuditAppendage | None,
) -> Txn[None]:
    room: RoomView = yield RoomForUpdate(room_id)
    _member_of(room, user, device)
    if token_hash is not None and (yield one(
        "SELECT 1 FROM rooms WHERE token_hash=? AND room<>?", token_hash, room.pk
    )):
        raise refuse("bad_request", "this token is in use; make a new one")
    if audit is not None:
        yield RoomReread(room)
        _audit_check(room, audit)
    yield execute("UPDATE rooms SET token_hash=? WHERE room=?", token_hash, room.pk)
    room.token_hash = token_hash
    if audit is not None:
        yield from _audit_write(room, audit)


def set_setting(
    room_id: str, user: str, device: str, setting: str, value: str, audit: AuditAppendage
) -> Txn[None]:
    room: RoomView = yield RoomForUpdate(room_id)
    _member_of(room, user, device)
    if (yield from room_admin(room.pk)) != user:
        raise refuse("not_admin", "only the room's admin (the account that created it) "
                     "changes its settings")
    yield RoomReread(room)
    _audit_check(room, audit)
    if setting == "residency":
        region = None if value == RESIDENCY_NONE else value
        yield execute("UPDATE rooms SET residency=? WHERE room=?", region, room.pk)
    else:
        yield execute("UPDATE rooms SET recorder=? WHERE room=?", value == "on", room.pk)
    yield from _audit_write(room, audit)


def audit_append(room_id: str, user: str, device: str, audit: AuditAppendage) -> Txn[int]:
    room: RoomView = yield RoomForUpdate(room_id)
    _member_of(room, user, device)
    yield RoomReread(room)
    _audit_check(room, audit)
    yield from _audit_write(room, audit)
    return audit.index
