"""The SQLite side of :mod:`.txn`: run an operation on a ``sqlite3`` connection.

All an engine differs in, for the operations written once: ``?`` is already
SQLite's placeholder; row-lock clauses are dropped and :attr:`~.txn.Stmt.locking`
statements skipped, because one writer thread runs every write transaction
(``BEGIN IMMEDIATE`` in :mod:`.sqlite`), so nothing can interleave with it.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Protocol, TypeVar

from sottovoce.server.storage import txn
from sottovoce.server.storage.rooms import RoomView

T = TypeVar("T")


class Writer(Protocol):
    """What the writer thread keeps in memory, as its only writer (see :mod:`.sqlite`)."""

    def _dev(self, conn: sqlite3.Connection, user: str, device: str) -> int | None: ...

    def _room_for_update(self, conn: sqlite3.Connection, room_id: str) -> RoomView: ...

    def _room_reread(self, conn: sqlite3.Connection, room: RoomView) -> None: ...

    def _room_advanced(self, room: RoomView) -> None: ...

    def _received(self) -> int: ...

    def _inbox_seqs(self, conn: sqlite3.Connection, devs: tuple[int, ...]) -> list[int]: ...

#: Row-lock clauses as the operations spell them, longest first.
_LOCK_CLAUSES = (" FOR UPDATE SKIP LOCKED", " FOR UPDATE")
_SQL: dict[str, str] = {}
#: What a skipped :attr:`~.txn.Stmt.locking` statement answers, by kind.
_SKIPPED: dict[str, Any] = {"one": None, "val": None, "all": [], "exec": 0, "many": None}


def sqlite_sql(sql: str) -> str:
    """``sql`` without row-lock clauses (cached: the texts are constants)."""
    out = _SQL.get(sql)
    if out is None:
        out = sql
        for clause in _LOCK_CLAUSES:
            out = out.replace(clause, "")
        _SQL[sql] = out
    return out


def lookup_dev(conn: sqlite3.Connection, user: str, device: str) -> int | None:
    """A device's id without a cache (reader threads share none with the writer)."""
    row = conn.execute(
        "SELECT dev FROM devices WHERE user_id=? AND device_id=?", (user, device)
    ).fetchone()
    return None if row is None else int(row[0])


def execute(conn: sqlite3.Connection, stmt: txn.Stmt) -> Any:
    if stmt.locking:
        return _SKIPPED[stmt.kind]
    sql = sqlite_sql(stmt.sql)
    kind = stmt.kind
    if kind == "many":
        conn.executemany(sql, stmt.params)
        return None
    cur = conn.execute(sql, stmt.params)
    if kind == "one":
        return cur.fetchone()
    if kind == "all":
        return cur.fetchall()
    if kind == "val":
        row = cur.fetchone()
        return None if row is None else row[0]
    return cur.rowcount


def run(transaction: txn.Txn[T], conn: sqlite3.Connection, writer: Writer | None = None) -> T:
    """Drive ``transaction`` to its end on ``conn`` (inside the caller's transaction, if any);
    ``writer``: on the writer thread (reads have none, and cannot write rooms)."""
    result: Any = None
    try:
        while True:
            stmt = transaction.send(result)
            if type(stmt) is txn.Stmt:
                result = execute(conn, stmt)
            elif type(stmt) is txn.DevId:
                result = (lookup_dev(conn, stmt.user, stmt.device) if writer is None
                          else writer._dev(conn, stmt.user, stmt.device))
            elif type(stmt) is txn.Lock:
                result = None
            elif writer is None:
                raise TypeError(f"{type(stmt).__name__} outside the writer")
            elif type(stmt) is txn.RoomForUpdate:
                result = writer._room_for_update(conn, stmt.room_id)
            elif type(stmt) is txn.RoomReread:
                writer._room_reread(conn, stmt.room)
                result = None
            elif type(stmt) is txn.RoomAdvanced:
                writer._room_advanced(stmt.room)
                result = None
            elif type(stmt) is txn.Received:
                result = writer._received()
            elif type(stmt) is txn.InboxSeqs:
                result = writer._inbox_seqs(conn, stmt.devs)
            else:
                raise TypeError(f"not a statement: {type(stmt).__name__}")
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
