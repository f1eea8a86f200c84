"""SQLite rooms and KeyPackages: the writer-side state behind :mod:`.room_writes`
(docs/architecture.md §Hot path).

Mixed into :class:`~sottovoce.server.storage.sqlite.SqliteStorage`: every room
write (:mod:`.room_writes`, written once for both engines) is a job of its
single writer thread, so room sends, commits and acks share the group commit
of 1:1 sends (a batch of room sends costs one fsync), and a commit's checks and
writes cannot interleave with another commit's. What this module adds is what
the writer keeps in memory as the rooms' only writer: each touched room's
:class:`~.rooms.RoomView` (epoch, last serverSeq, roster, token hash, audit
head), its last serverSeq written once per batch; a rolled-back batch forgets
them all.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sottovoce.server.storage import engine_sqlite
from sottovoce.server.storage.roombase import RoomCallback
from sottovoce.server.storage.rooms import RoomView, load_room
from sottovoce.server.storage.shared import Op, SharedRooms
from sottovoce.server.storage.txn import Txn

T = TypeVar("T")

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

        def _w_op(
            self, conn: sqlite3.Connection, op: Op[T], args: tuple[Any, ...],
            after: Callable[[T], Any] | None,
        ) -> T: ...

    def _init_rooms(self) -> None:
        self._rooms: dict[str, RoomView] = {}
        self._dirty_rooms: set[str] = set()

    def _submit_op(
        self, op: Op[Any], args: tuple[Any, ...], callback: RoomCallback,
        rooms: Callable[[], Txn[list[str]]] | list[str],
    ) -> None:
        # One writer runs every job in arrival order: no per-room ordering is needed.
        self._submit(self._w_op, (op, args, None), callback)

    # --- the writer's room state (the engine_sqlite.Writer protocol) -------------------

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

    def _room_for_update(self, conn: sqlite3.Connection, room_id: str) -> RoomView:
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = engine_sqlite.run(load_room(room_id), conn)
        return room

    def _room_reread(self, conn: sqlite3.Connection, room: RoomView) -> None:
        token, count, head = conn.execute(
            "SELECT token_hash, audit_count, audit_head FROM rooms WHERE room=?", (room.pk,)
        ).fetchone()
        room.token_hash = None if token is None else bytes(token)
        room.audit_count = int(count)
        room.audit_head = None if head is None else bytes(head)

    def _room_advanced(self, room: RoomView) -> None:
        self._dirty_rooms.add(room.room_id)  # written once per batch (_flush_rooms)

    def _inbox_seqs(self, conn: sqlite3.Connection, devs: tuple[int, ...]) -> list[int]:
        out: list[int] = []
        for dev in devs:
            seq = self._inbox_seq.get(dev)
            if seq is None:
                seq = int(conn.execute(
                    "SELECT last_inbox_seq FROM devices WHERE dev=?", (dev,)).fetchone()[0])
            self._inbox_seq[dev] = seq + 1
            self._dirty_devs.add(dev)
            out.append(seq + 1)
        return out
