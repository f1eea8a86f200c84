"""Storage operations written once, for every engine: transactions as generators.

An operation is a generator that yields statements and receives their results,
so the same rules run on the SQLite writer thread (synchronous ``sqlite3``) and on
an asyncpg connection (``await``), each driven by its engine module::

    def count_prekeys(user, device) -> Txn[int]:       engine_sqlite.run(txn, conn)
        n = yield val("SELECT count(*) ... ?", ...)     engine_postgres.run(txn, conn)
        return int(n)                                  (one statement = one round trip)

SQL is written once with ``?`` placeholders; the PostgreSQL engine rewrites them
to ``$n`` (once per statement text, cached). A row lock is written as PostgreSQL
spells it (``FOR UPDATE``, ``FOR UPDATE SKIP LOCKED``): the SQLite engine drops
the clause, since its single writer already serializes every write transaction.
What only an engine with concurrent writers needs is marked :attr:`Stmt.locking`
(skipped on SQLite) or is a :class:`Lock`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class Stmt(NamedTuple):
    """One SQL statement and what its result should be handed back as (``kind``)."""

    #: ``one`` (a row or None), ``all`` (rows), ``val`` (first column of the first row or
    #: None), ``exec`` (rows changed), ``many`` (``params`` is a sequence of rows; None).
    kind: str
    sql: str
    params: tuple[Any, ...]
    #: Only engines whose writers run concurrently need it (row locks taken up front, a
    #: second, waiting claim): an engine with a single writer answers None, 0 or [].
    locking: bool = False


class DevId(NamedTuple):
    """The internal id of a device (None if unknown), from the engine's cache if it has one:
    ids never change and device rows are never deleted, so any cache of them is safe."""

    user: str
    device: str


class Lock(NamedTuple):
    """Serialize transactions that use the same (name, key) until they end; a no-op where
    a single writer already serializes them."""

    name: str
    key: int


class RoomForUpdate(NamedTuple):
    """The room (a :class:`~.rooms.RoomView`) for a transaction that may change it; raises
    ``unknown_room``. PostgreSQL locks its row until the end of the transaction; the SQLite
    writer, its only writer, hands out its cached view (forgotten on rollback)."""

    room_id: str


class RoomReread(NamedTuple):
    """Bring the view's token hash and audit head up to the database's before they decide
    something: an engine that keeps views across transactions (the SQLite writer) reads
    them again, since an operator's tool may have written them (repairs, imports); one
    that loaded the view under its row lock in this transaction has them already."""

    room: Any


class RoomAdvanced(NamedTuple):
    """The view's ``last_seq`` moved on: store it (at once, or with the writer's batch)."""

    room: Any


class Received(NamedTuple):
    """The server time for rows stored now: never less than any stored before, since
    expiry deletes a prefix in received order."""


class InboxSeqs(NamedTuple):
    """The next globalInboxSeq of each device in ``devs`` (one per entry, in order; a device
    may repeat), taken from its counter as 1:1 sends take them."""

    devs: tuple[int, ...]


Statement = (
    Stmt | DevId | Lock | RoomForUpdate | RoomReread | RoomAdvanced | Received | InboxSeqs
)
Txn = Generator[Statement, Any, T]


def one(sql: str, *params: Any, locking: bool = False) -> Stmt:
    return Stmt("one", sql, params, locking)


def rows(sql: str, *params: Any) -> Stmt:
    return Stmt("all", sql, params)


def val(sql: str, *params: Any, locking: bool = False) -> Stmt:
    return Stmt("val", sql, params, locking)


def execute(sql: str, *params: Any, locking: bool = False) -> Stmt:
    return Stmt("exec", sql, params, locking)


def many(sql: str, params: Sequence[tuple[Any, ...]]) -> Stmt:
    return Stmt("many", sql, tuple(params))


def blob(value: Any) -> bytes:
    """A BLOB/bytea column as bytes (drivers may hand back a memoryview)."""
    return bytes(value)
