"""PostgreSQL rooms and KeyPackages: :class:`RoomStorage` for several server processes
(docs/deploy.md).

Mixed into :class:`~sottovoce.server.storage.postgres.PostgresStorage`; the
writes themselves are :mod:`.room_writes` (written once for both engines). Every
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
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sottovoce.errors import RemoteError
from sottovoce.server.errors import StorageError
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage import engine_postgres
from sottovoce.server.storage.roombase import RoomCallback
from sottovoce.server.storage.rooms import RoomView, load_room
from sottovoce.server.storage.shared import Op, SharedRooms
from sottovoce.server.storage.txn import Txn

T = TypeVar("T")

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

    def _submit_op(
        self, op: Op[Any], args: tuple[Any, ...], callback: RoomCallback,
        rooms: Callable[[], Txn[list[str]]] | list[str],
    ) -> None:
        async def fn(conn: Any) -> Any:
            return await engine_postgres.run(op(*args), conn, self)

        if isinstance(rooms, list):
            self._run_ordered(rooms, fn, callback)
            return

        async def start() -> None:
            # The rooms are known only from the database: find them, then queue behind
            # their jobs (the transaction finds them again, under their row locks).
            try:
                room_ids = await self._with(
                    lambda conn: engine_postgres.run(rooms(), conn, self), write=False
                )
            except RemoteError as exc:
                callback(None, exc)
                return
            self._run_ordered(room_ids, fn, callback)

        task = asyncio.get_running_loop().create_task(start())
        self._room_tasks.add(task)
        task.add_done_callback(self._room_tasks.discard)

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

    # --- room state under row locks (the engine_postgres.Node protocol) ------------------

    def _received(self) -> int:
        received = max(_now_ms(), self._last_received)
        self._last_received = received
        return received

    async def _room_for_update(self, conn: Any, room_id: str) -> RoomView:
        return await engine_postgres.run(load_room(room_id), conn)

    async def _room_advanced(self, conn: Any, room: RoomView) -> None:
        await conn.execute("UPDATE rooms SET last_seq=$1 WHERE room=$2", room.last_seq, room.pk)

    async def _inbox_seqs(self, conn: Any, devs: tuple[int, ...]) -> list[int]:
        wanted = sorted(set(devs))
        counts = [devs.count(d) for d in wanted]
        # Device counters: row locks in sorted order, as 1:1 batches take them.
        last = {
            int(d): int(seq) for d, seq in await conn.fetch(
                "UPDATE devices d SET last_inbox_seq = d.last_inbox_seq + u.n "
                "FROM (SELECT dev FROM devices WHERE dev = ANY($1::bigint[]) "
                "      ORDER BY dev FOR UPDATE) AS l, "
                "     unnest($1::bigint[], $2::bigint[]) AS u(dev, n) "
                "WHERE d.dev = l.dev AND u.dev = l.dev "
                "RETURNING d.dev, d.last_inbox_seq",
                wanted, counts,
            )
        }
        nxt = {d: last[d] - n + 1 for d, n in zip(wanted, counts, strict=True)}
        out: list[int] = []
        for dev in devs:
            out.append(nxt[dev])
            nxt[dev] += 1
        return out
