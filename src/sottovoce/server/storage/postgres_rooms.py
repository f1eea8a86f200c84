"""PostgreSQL rooms and KeyPackages: :class:`RoomStorage` for several server processes
(docs/deploy.md).

Mixed into :class:`~sottovoce.server.storage.postgres.PostgresStorage`. Every
room write is one transaction on the pool that first locks the room's row
(``SELECT … FOR UPDATE``): commits, sends and acks of one room are serialized
across all nodes, so the epoch check, the serverSeq, the roster change, the
Welcome inbox rows and the audit entry of a commit see and write one
consistent state::

    room_commit:  [node lock: room] BEGIN ─► lock rooms row ─► sender, idempotency
                  ─► member | token ─► epoch == room epoch? else commit_conflict
                  ─► roster checks ─► audit linkage ─► (writes start here)
                  message row, sends, room_commits, roster, rooms row, audit row,
                  Welcome inbox rows (device counter rows locked in sorted order)
                  ─► COMMIT ─► callback (still under the node lock)

Nothing is cached across transactions (another node may have changed the
room). Within one process a lock per room makes callbacks run in commit order,
so fan-out follows serverSeq. Lock order everywhere: room rows (by room id),
then device counter rows (by dev), like 1:1 batches take conversation rows then
device rows; no cycle, so nodes cannot deadlock.

Room writes are one transaction each, not group-committed like 1:1 sends:
throughput per room is bounded by one commit round trip (PostgreSQL still
groups the WAL flushes of concurrent commits of different rooms).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sottovoce.errors import RemoteError
from sottovoce.limits import (
    JOIN_REQUEST_PENDING_MS,
    MAX_PENDING_JOIN_REQUESTS,
    MAX_ROOM_MEMBERS,
)
from sottovoce.protocol.rooms import NOTICE_CIPHERTEXT
from sottovoce.server.errors import StorageError
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage import engine_postgres
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

#: Schema v2 of PostgreSQL (rooms and KeyPackages), appended to ``postgres.MIGRATIONS``.
ROOMS_MIGRATION = """
    CREATE TABLE key_packages(
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        dev bigint NOT NULL,
        key_package bytea NOT NULL
    );
    CREATE INDEX key_packages_dev ON key_packages(dev, id);
    -- One row per device that ever uploaded KeyPackages, with its last-resort one.
    CREATE TABLE key_package_devices(
        dev bigint PRIMARY KEY,
        last_resort bytea
    );
    -- token_hash is SHA-256 over a domain prefix and the token: never the token.
    -- The row is the room's lock: every room write takes it FOR UPDATE first.
    CREATE TABLE rooms(
        room bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        room_id text NOT NULL UNIQUE,
        epoch bigint NOT NULL,
        last_seq bigint NOT NULL,
        group_info bytea,
        token_hash bytea,
        audit_count bigint NOT NULL DEFAULT 0,
        audit_head bytea,
        created_at bigint NOT NULL
    );
    CREATE UNIQUE INDEX rooms_token ON rooms(token_hash) WHERE token_hash IS NOT NULL;
    -- One read position per member device; until_seq is set when the device is
    -- removed (it still gets the messages up to the commit that removed it).
    CREATE TABLE room_members(
        room bigint NOT NULL,
        dev bigint NOT NULL,
        joined_seq bigint NOT NULL,
        read_seq bigint NOT NULL,
        until_seq bigint,
        PRIMARY KEY(room, dev)
    );
    CREATE INDEX room_members_dev ON room_members(dev);
    -- One row per room message (docs/architecture.md), not one per recipient.
    CREATE TABLE room_messages(
        room bigint NOT NULL,
        seq bigint NOT NULL,
        received_at bigint NOT NULL,
        envelope text NOT NULL,
        PRIMARY KEY(room, seq)
    );
    ALTER TABLE room_messages ALTER COLUMN envelope SET STORAGE EXTERNAL;
    CREATE INDEX room_messages_received ON room_messages USING brin(received_at);
    -- The accepted commit of each epoch (epoch = the epoch it was made in).
    CREATE TABLE room_commits(
        room bigint NOT NULL,
        epoch bigint NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY(room, epoch)
    );
    CREATE TABLE room_audit(
        room bigint NOT NULL,
        idx bigint NOT NULL,
        entry bytea NOT NULL,
        PRIMARY KEY(room, idx)
    );
"""

#: Schema v4: unanswered join requests (one per room and device), appended to
#: ``postgres.MIGRATIONS``.
JOIN_REQUESTS_MIGRATION = """
    CREATE TABLE room_join_requests(
        room bigint NOT NULL,
        dev bigint NOT NULL,
        requested_at bigint NOT NULL,
        PRIMARY KEY(room, dev)
    );
"""

class _Room:
    """One room's row and current roster, read under its row lock in this transaction."""

    __slots__ = ("audit_count", "audit_head", "deliver", "epoch", "last_seq", "members", "pk",
                 "room_id", "token_hash")

    def __init__(self, pk: int, room_id: str, epoch: int, last_seq: int,
                 token_hash: bytes | None, audit_count: int, audit_head: bytes | None,
                 members: dict[Member, tuple[int, bool]]) -> None:
        self.pk = pk
        self.room_id = room_id
        self.epoch = epoch
        self.last_seq = last_seq
        self.token_hash = token_hash
        self.audit_count = audit_count
        self.audit_head = audit_head
        #: Current member devices -> (dev, revoked).
        self.members = members
        # Revoked devices stay MLS members until a commit removes them, but get nothing.
        self.deliver = tuple(sorted(k for k, (_, rev) in members.items() if not rev))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class PostgresRooms(SharedRooms):
    """Room methods of :class:`PostgresStorage` (which provides the pool and device ids)."""

    if TYPE_CHECKING:
        _log: JsonLogger
        _last_received: int

        async def _with(self, fn: Callable[[Any], Awaitable[T]], *, write: bool = True) -> T: ...

        async def _dev(self, conn: Any, user: str, device: str) -> int | None: ...

    def _init_rooms(self) -> None:
        #: room id -> [lock, jobs holding or waiting for it] (this process only).
        self._room_locks: dict[str, list[Any]] = {}
        self._room_tasks: set[asyncio.Task[None]] = set()

    async def _drain_rooms(self) -> None:
        while self._room_tasks:
            await asyncio.gather(*list(self._room_tasks), return_exceptions=True)

    def _received(self) -> int:
        received = max(_now_ms(), self._last_received)
        self._last_received = received
        return received

    # --- ordering within this process ---------------------------------------------------

    def _run_ordered(
        self, room_ids: Sequence[str], fn: Callable[[Any], Awaitable[Any]],
        callback: RoomCallback,
    ) -> None:
        """Run ``fn`` in a transaction after earlier jobs of the same rooms; then ``callback``."""
        ids = sorted(set(room_ids))
        locks: list[asyncio.Lock] = []
        for rid in ids:
            entry = self._room_locks.get(rid)
            if entry is None:
                entry = self._room_locks[rid] = [asyncio.Lock(), 0]
            entry[1] += 1  # jobs holding or waiting: the lock lives while any does
            locks.append(entry[0])
        task = asyncio.get_running_loop().create_task(self._ordered(ids, locks, fn, callback))
        self._room_tasks.add(task)
        task.add_done_callback(self._room_tasks.discard)

    async def _ordered(
        self, room_ids: Sequence[str], locks: list[asyncio.Lock],
        fn: Callable[[Any], Awaitable[Any]], callback: RoomCallback,
    ) -> None:
        for lock in locks:  # sorted: two jobs never wait on each other crosswise
            await lock.acquire()
        try:
            try:
                result = await self._with(fn)
            except RemoteError as exc:  # RoomRefused, UnknownAccount, StorageError
                error: BaseException | None = exc
                result = None
            except Exception as exc:  # our bug: the send fails, the server goes on
                self._log.error("storage.room_failed", error=type(exc).__name__)
                error, result = StorageError(), None
            else:
                error = None
            try:
                callback(result, error)
            except Exception as exc:
                self._log.error("storage.callback_failed", error=type(exc).__name__)
        finally:
            for lock in locks:
                lock.release()
            for rid in room_ids:
                entry = self._room_locks[rid]
                entry[1] -= 1
                if entry[1] == 0:
                    del self._room_locks[rid]

    # --- helpers inside a transaction ----------------------------------------------------

    async def _lock_room(self, conn: Any, room_id: str) -> _Room:
        row = await conn.fetchrow(
            "SELECT room, epoch, last_seq, token_hash, audit_count, audit_head FROM rooms "
            "WHERE room_id=$1 FOR UPDATE",
            room_id,
        )
        if row is None:
            raise refuse("unknown_room", "no such room")
        pk = int(row[0])
        members = {
            (u, d): (int(dev), rev is not None)
            for u, d, dev, rev in await conn.fetch(
                "SELECT d.user_id, d.device_id, m.dev, d.revoked_at FROM room_members m "
                "JOIN devices d ON d.dev=m.dev WHERE m.room=$1 AND m.until_seq IS NULL",
                pk,
            )
        }
        return _Room(pk, room_id, int(row[1]), int(row[2]),
                     None if row[3] is None else bytes(row[3]), int(row[4]),
                     None if row[5] is None else bytes(row[5]), members)

    async def _sender(self, conn: Any, user: str, device: str) -> int:
        dev = await self._dev(conn, user, device)
        if dev is None:
            raise UnknownAccount("device is not registered")
        return dev

    @staticmethod
    async def _duplicate(
        conn: Any, sender: int, key: str, room_id: str
    ) -> tuple[str, int, int] | None:
        row = await conn.fetchrow(
            "SELECT conversation_id, message_id, server_seq, received_at FROM sends "
            "WHERE sender_dev=$1 AND idem_key=$2",
            sender, key,
        )
        if row is None:
            return None
        if row[0] != room_id:
            raise refuse("bad_request", "idempotencyKey was used for another conversation")
        return str(row[1]), int(row[2]), int(row[3])

    @staticmethod
    async def _store_message(
        conn: Any, room: _Room, received: int, envelope_of: Callable[[int], str]
    ) -> tuple[int, str]:
        seq = room.last_seq + 1
        env = envelope_of(seq)
        await conn.execute(
            "INSERT INTO room_messages(room, seq, received_at, envelope) VALUES ($1, $2, $3, $4)",
            room.pk, seq, received, env,
        )
        await conn.execute("UPDATE rooms SET last_seq=$1 WHERE room=$2", seq, room.pk)
        room.last_seq = seq
        return seq, env

    @staticmethod
    async def _record_send(conn: Any, sender: int, key: str, room_id: str, mid: str, seq: int,
                           received: int) -> None:
        await conn.execute(
            "INSERT INTO sends(sender_dev, idem_key, conversation_id, message_id, server_seq, "
            "received_at) VALUES ($1, $2, $3, $4, $5, $6)",
            sender, key, room_id, mid, seq, received,
        )

    @staticmethod
    def _audit_check(room: _Room, audit: AuditAppendage) -> None:
        want = ZERO_HASH if room.audit_head is None else room.audit_head
        if audit.index != room.audit_count or not hmac.compare_digest(audit.prev_hash, want):
            raise RoomRefused(
                "audit_conflict", "audit entry does not link to the stored chain head",
                retryable=True, details={"roomId": room.room_id, "nextIndex": room.audit_count},
            )

    @staticmethod
    async def _audit_write(conn: Any, room: _Room, audit: AuditAppendage) -> None:
        await conn.execute(
            "INSERT INTO room_audit(room, idx, entry) VALUES ($1, $2, $3)",
            room.pk, audit.index, audit.entry,
        )
        await conn.execute(
            "UPDATE rooms SET audit_count=$1, audit_head=$2 WHERE room=$3",
            audit.index + 1, audit.entry_hash, room.pk,
        )

    @staticmethod
    def _member_of(room: _Room, user: str, device: str) -> None:
        if (user, device) not in room.members:
            raise refuse("not_member", "this device is not a member of the room")

    # --- rooms ---------------------------------------------------------------------------------

    def room_commit(self, req: CommitRequest, callback: RoomCallback) -> None:
        self._run_ordered([req.room_id], lambda conn: self._commit(conn, req), callback)

    async def _commit(self, conn: Any, req: CommitRequest) -> CommitOutcome:
        room = await self._lock_room(conn, req.room_id)
        sender = await self._sender(conn, req.user, req.device)
        dup = await self._duplicate(conn, sender, req.idempotency_key, req.room_id)
        if dup is not None:
            epoch = await conn.fetchval(
                "SELECT epoch FROM room_commits WHERE room=$1 AND seq=$2", room.pk, dup[1]
            )
            if epoch is None:
                raise refuse("bad_request", "idempotencyKey was used for a room message")
            return CommitOutcome(
                RoomStored(req.room_id, dup[0], req.idempotency_key, dup[1], dup[2], True, "", ()),
                int(epoch) + 1,
                (),
            )
        me = (req.user, req.device)
        external = me not in room.members
        if external:
            if req.token_hash is None:
                raise refuse("not_member", "this device is not a member of the room")
            if room.token_hash is None or not hmac.compare_digest(room.token_hash,
                                                                  req.token_hash):
                raise refuse("invalid_token", "the token does not open a room")
            if not req.external:
                raise refuse("invalid_commit", "a non-member joins by an external commit")
            if req.adds != (me,) or req.removes:
                raise refuse("bad_request", "an external commit adds exactly its sender")
        elif req.external and (req.adds or req.removes):
            raise refuse("bad_request", "a member's external commit (a resync) changes no member")
        if req.epoch != room.epoch:
            win = await conn.fetchval(
                "SELECT seq FROM room_commits WHERE room=$1 AND epoch=$2", room.pk, req.epoch
            )
            if win is None:
                win = await conn.fetchval(
                    "SELECT coalesce(max(seq), 0) FROM room_commits WHERE room=$1", room.pk
                )
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
            dev = await self._dev(conn, *key)
            revoked = None if dev is None else await conn.fetchval(
                "SELECT revoked_at FROM devices WHERE dev=$1", dev
            )
            if dev is None or revoked is not None:
                raise refuse("bad_request", "'adds' names an unknown or revoked device")
            added.append((key, dev))
        for key in req.removes:
            if key not in room.members:
                raise refuse("bad_request", "'removes' names a device that is not a member")
        if len(room.members) + len(req.adds) - len(req.removes) > MAX_ROOM_MEMBERS:
            raise refuse("bad_request", f"a room has at most {MAX_ROOM_MEMBERS} member devices")
        if req.audit is not None:
            self._audit_check(room, req.audit)
        # --- writes start here; nothing below raises a domain error ---
        received = self._received()
        before = room.deliver
        extra = ',"adds":' + pairs_json(req.adds) + ',"removes":' + pairs_json(req.removes)
        seq, env = await self._store_message(conn, room, received, lambda s: room_envelope(
            room_id=req.room_id, message_id=req.message_id, user=req.user, device=req.device,
            ciphertext_b64=req.commit_b64, content_type="system",
            client_created_at_ms=req.client_created_at_ms, server_seq=s, received_at_ms=received,
            idempotency_key=req.idempotency_key, epoch=req.epoch, kind="commit", extra=extra,
        ))
        await self._record_send(conn, sender, req.idempotency_key, req.room_id, req.message_id,
                                seq, received)
        await conn.execute(
            "INSERT INTO room_commits(room, epoch, seq) VALUES ($1, $2, $3)",
            room.pk, req.epoch, seq,
        )
        for key in req.removes:
            dev, revoked = room.members[key]
            if revoked:  # a revoked device reads nothing more: forget its position
                await conn.execute("DELETE FROM room_members WHERE room=$1 AND dev=$2",
                                   room.pk, dev)
            else:
                await conn.execute(
                    "UPDATE room_members SET until_seq=$1 WHERE room=$2 AND dev=$3",
                    seq, room.pk, dev,
                )
        for _, dev in added:
            await conn.execute(
                "INSERT INTO room_members(room, dev, joined_seq, read_seq, until_seq) "
                "VALUES ($1, $2, $3, $3, NULL) ON CONFLICT (room, dev) DO UPDATE "
                "SET joined_seq = excluded.joined_seq, read_seq = excluded.read_seq, "
                "until_seq = NULL",
                room.pk, dev, seq,
            )
            # Its join request (if it made one) is answered.
            await conn.execute(
                "DELETE FROM room_join_requests WHERE room=$1 AND dev=$2", room.pk, dev
            )
        await conn.execute(
            "UPDATE rooms SET epoch=$1, group_info=coalesce($2, group_info) WHERE room=$3",
            req.epoch + 1, req.group_info, room.pk,
        )
        if req.audit is not None:
            await self._audit_write(conn, room, req.audit)
        welcomes: list[StoredFrame] = []
        if req.welcome_b64 is not None and added:
            devs = sorted({dev for _, dev in added})
            # Device counters: row locks in sorted order, as 1:1 batches take them.
            nxt = {
                int(d): int(last) for d, last in await conn.fetch(
                    "UPDATE devices d SET last_inbox_seq = d.last_inbox_seq + u.n "
                    "FROM (SELECT dev FROM devices WHERE dev = ANY($1::bigint[]) "
                    "      ORDER BY dev FOR UPDATE) AS l, "
                    "     unnest($1::bigint[], $2::bigint[]) AS u(dev, n) "
                    "WHERE d.dev = l.dev AND u.dev = l.dev "
                    "RETURNING d.dev, d.last_inbox_seq",
                    devs, [sum(1 for _, x in added if x == d) for d in devs],
                )
            }
            count = {d: sum(1 for _, x in added if x == d) for d in devs}
            nxt = {d: last - count[d] + 1 for d, last in nxt.items()}
            rows: list[tuple[int, int, int, str]] = []
            for (user, device), dev in added:
                g = nxt[dev]
                nxt[dev] = g + 1
                wenv = room_envelope(
                    room_id=req.room_id, message_id=req.message_id, user=req.user,
                    device=req.device, ciphertext_b64=req.welcome_b64, content_type="system",
                    client_created_at_ms=req.client_created_at_ms, server_seq=seq,
                    received_at_ms=received, idempotency_key=req.idempotency_key,
                    epoch=req.epoch + 1, kind="welcome", recipient=user,
                )
                rows.append((dev, g, received, wenv))
                welcomes.append(StoredFrame(user, device, g, wenv))
            await conn.executemany(
                "INSERT INTO inbox(dev, seq, received_at, envelope) VALUES ($1, $2, $3, $4)", rows
            )
        msg = RoomStored(req.room_id, req.message_id, req.idempotency_key, seq, received, False,
                         env, before)
        return CommitOutcome(msg, req.epoch + 1, tuple(welcomes))

    def room_send(self, req: RoomSendRequest, callback: RoomCallback) -> None:
        self._run_ordered([req.room_id], lambda conn: self._send(conn, req), callback)

    async def _send(self, conn: Any, req: RoomSendRequest) -> RoomStored:
        room = await self._lock_room(conn, req.room_id)
        sender = await self._sender(conn, req.user, req.device)
        dup = await self._duplicate(conn, sender, req.idempotency_key, req.room_id)
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
        seq, env = await self._store_message(conn, room, received, lambda s: room_envelope(
            room_id=req.room_id, message_id=req.message_id, user=req.user, device=req.device,
            ciphertext_b64=req.ciphertext_b64, content_type=req.content_type,
            client_created_at_ms=req.client_created_at_ms, server_seq=s, received_at_ms=received,
            idempotency_key=req.idempotency_key, epoch=req.epoch, kind="message",
        ))
        await self._record_send(conn, sender, req.idempotency_key, req.room_id, req.message_id,
                                seq, received)
        return RoomStored(req.room_id, req.message_id, req.idempotency_key, seq, received, False,
                          env, room.deliver)

    async def _notice(
        self, conn: Any, room: _Room, user: str, device: str, ct_b64: str, extra: str
    ) -> RoomStored:
        """A message made by the server itself (no idempotency record: it is never retried)."""
        mid = "srv-" + secrets.token_hex(16)
        received = self._received()
        seq, env = await self._store_message(conn, room, received, lambda s: room_envelope(
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
        async def start() -> None:
            # The room is known only from the token: find it, then queue behind its jobs.
            try:
                room_id = await self._read_op(token_room, token_hash)
            except RemoteError as exc:
                callback(None, exc)
                return
            if room_id is None:
                callback(None, refuse("invalid_token", "the token does not open a room"))
                return
            self._run_ordered([room_id], lambda conn: self._join_request(
                conn, token_hash, user_id, device_id, key_package_b64), callback)

        task = asyncio.get_running_loop().create_task(start())
        self._room_tasks.add(task)
        task.add_done_callback(self._room_tasks.discard)

    async def _join_request(
        self, conn: Any, h: bytes, user: str, device: str, kp_b64: str
    ) -> RoomStored:
        dev = await self._sender(conn, user, device)
        room_id = await engine_postgres.run(token_room(h), conn)
        if room_id is None:
            raise refuse("invalid_token", "the token does not open a room")
        room = await self._lock_room(conn, room_id)
        if room.token_hash is None or not hmac.compare_digest(room.token_hash, h):
            raise refuse("invalid_token", "the token does not open a room")  # changed meanwhile
        if (user, device) in room.members:
            raise refuse("bad_request", "this device is a member of the room")
        # The room row is locked: counting and inserting cannot race another request.
        now = self._received()
        await conn.execute(
            "DELETE FROM room_join_requests WHERE room=$1 AND requested_at<=$2",
            room.pk, now - JOIN_REQUEST_PENDING_MS,
        )
        if await conn.fetchval(
            "SELECT 1 FROM room_join_requests WHERE room=$1 AND dev=$2", room.pk, dev
        ):
            raise refuse("join_request_pending", "this device's join request is still pending")
        pending = await conn.fetchval(
            "SELECT count(*) FROM room_join_requests WHERE room=$1", room.pk
        )
        if int(pending) >= MAX_PENDING_JOIN_REQUESTS:
            raise RoomRefused(
                "join_requests_full", "the room holds the most unanswered join requests",
                retryable=True,
            )
        await conn.execute(
            "INSERT INTO room_join_requests(room, dev, requested_at) VALUES ($1, $2, $3)",
            room.pk, dev, now,
        )
        extra = ',"joinRequest":' + json.dumps(
            {"userId": user, "deviceId": device}, separators=(",", ":")
        )
        return await self._notice(conn, room, user, device, kp_b64, extra)

    def room_device_revoked(self, user_id: str, device_id: str, callback: RoomCallback) -> None:
        async def start() -> None:
            try:
                room_ids = await self._with(
                    lambda conn: _device_rooms(conn, user_id, device_id), write=False
                )
            except RemoteError as exc:
                callback(None, exc)
                return
            self._run_ordered(room_ids, lambda conn: self._revoked(conn, user_id, device_id),
                              callback)

        task = asyncio.get_running_loop().create_task(start())
        self._room_tasks.add(task)
        task.add_done_callback(self._room_tasks.discard)

    async def _revoked(self, conn: Any, user: str, device: str) -> list[RoomStored]:
        dev = await self._dev(conn, user, device)
        if dev is None:
            return []
        # A revoked device must not be added anywhere again.
        await conn.execute("DELETE FROM key_packages WHERE dev=$1", dev)
        await conn.execute("DELETE FROM key_package_devices WHERE dev=$1", dev)
        extra = ',"removeRequest":' + json.dumps(
            {"userId": user, "deviceId": device, "reason": "revoked"}, separators=(",", ":")
        )
        out: list[RoomStored] = []
        for room_id in await _device_rooms(conn, user, device):  # sorted: the lock order
            room = await self._lock_room(conn, room_id)
            out.append(await self._notice(conn, room, user, device, NOTICE_CIPHERTEXT, extra))
        return out

    async def room_ack(self, room_id: str, user_id: str, device_id: str, up_to_seq: int) -> int:
        async def run(conn: Any) -> int:
            room = await self._lock_room(conn, room_id)
            dev = await self._sender(conn, user_id, device_id)
            row = await conn.fetchrow(
                "SELECT read_seq, until_seq FROM room_members WHERE room=$1 AND dev=$2",
                room.pk, dev,
            )
            if row is None:
                raise refuse("not_member", "this device is not a member of the room")
            read, until = int(row[0]), row[1]
            new = min(up_to_seq, room.last_seq if until is None else int(until))
            if until is not None and new >= int(until):
                # A removed device has read everything it may: forget it.
                await conn.execute("DELETE FROM room_members WHERE room=$1 AND dev=$2",
                                   room.pk, dev)
            elif new > read:
                await conn.execute(
                    "UPDATE room_members SET read_seq=$1 WHERE room=$2 AND dev=$3",
                    new, room.pk, dev,
                )
            else:
                return 0
            low = await conn.fetchval(
                "SELECT min(m.read_seq) FROM room_members m JOIN devices d ON d.dev=m.dev "
                "WHERE m.room=$1 AND d.revoked_at IS NULL",
                room.pk,
            )
            if low is None:
                return 0
            status = await conn.execute(
                "DELETE FROM room_messages WHERE room=$1 AND seq<=$2", room.pk, int(low)
            )
            return int(status.rsplit(" ", 1)[1])

        return await self._with(run)

    async def set_room_token(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        token_hash: bytes | None,
        audit: AuditAppendage | None,
    ) -> None:
        async def run(conn: Any) -> None:
            room = await self._lock_room(conn, room_id)
            self._member_of(room, user_id, device_id)
            if token_hash is not None and await conn.fetchval(
                "SELECT 1 FROM rooms WHERE token_hash=$1 AND room<>$2", token_hash, room.pk
            ):
                raise refuse("bad_request", "this token is in use; make a new one")
            if audit is not None:
                self._audit_check(room, audit)
            await conn.execute("UPDATE rooms SET token_hash=$1 WHERE room=$2", token_hash,
                               room.pk)
            if audit is not None:
                await self._audit_write(conn, room, audit)

        await self._with(run)

    async def audit_append(
        self, room_id: str, user_id: str, device_id: str, audit: AuditAppendage
    ) -> int:
        async def run(conn: Any) -> int:
            room = await self._lock_room(conn, room_id)
            self._member_of(room, user_id, device_id)
            self._audit_check(room, audit)
            await self._audit_write(conn, room, audit)
            return audit.index

        return await self._with(run)


async def _device_rooms(conn: Any, user: str, device: str) -> list[str]:
    return [
        str(r[0]) for r in await conn.fetch(
            "SELECT r.room_id FROM devices d JOIN room_members m ON m.dev=d.dev "
            "JOIN rooms r ON r.room=m.room "
            "WHERE d.user_id=$1 AND d.device_id=$2 AND m.until_seq IS NULL ORDER BY r.room_id",
            user, device,
        )
    ]
