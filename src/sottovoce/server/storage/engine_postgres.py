"""The PostgreSQL side of :mod:`.txn`: run an operation on an asyncpg connection.

What differs from SQLite, for the operations written once: ``?`` becomes
``$1, $2, …`` (rewritten once per statement text, cached); row-lock clauses and
:attr:`~.txn.Stmt.locking` statements run, since several writers (this node's pool,
other nodes) share the database; a :class:`~.txn.Lock` is a transaction-scoped
advisory lock; a command's row count is parsed from its status line.
Each statement is one round trip, as the hand-written code had.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from sottovoce.server.storage import txn
from sottovoce.server.storage.rooms import RoomView

T = TypeVar("T")


class Node(Protocol):
    """What this node keeps (device ids) and how it takes its counters (row locks)."""

    async def _dev(self, conn: Any, user: str, device: str) -> int | None: ...

    async def _room_for_update(self, conn: Any, room_id: str) -> RoomView: ...

    async def _room_advanced(self, conn: Any, room: RoomView) -> None: ...

    def _received(self) -> int: ...

    async def _inbox_seqs(self, conn: Any, devs: tuple[int, ...]) -> list[int]: ...

_SQL: dict[str, str] = {}
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('sottovoce.' || $1::text), $2::int)"
#: Advisory lock keys are int4: device ids are folded into that range.
_INT4 = 2_147_483_647


def postgres_sql(sql: str) -> str:
    """``sql`` with ``?`` placeholders numbered ``$n`` (cached: the texts are constants).
    No statement of ours has a ``?`` inside a string literal."""
    out = _SQL.get(sql)
    if out is None:
        parts = sql.split("?")
        out = parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], start=1))
        _SQL[sql] = out
    return out


async def lookup_dev(conn: Any, user: str, device: str) -> int | None:
    dev = await conn.fetchval(
        "SELECT dev FROM devices WHERE user_id=$1 AND device_id=$2", user, device
    )
    return None if dev is None else int(dev)


def _count(status: str) -> int:
    """Rows a command changed, from its status ("DELETE 3", "INSERT 0 1", …)."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


async def execute(conn: Any, stmt: txn.Stmt) -> Any:
    sql = postgres_sql(stmt.sql)
    kind = stmt.kind
    if kind == "one":
        return await conn.fetchrow(sql, *stmt.params)
    if kind == "all":
        return await conn.fetch(sql, *stmt.params)
    if kind == "val":
        return await conn.fetchval(sql, *stmt.params)
    if kind == "many":
        if stmt.params:
            await conn.executemany(sql, stmt.params)
        return None
    return _count(await conn.execute(sql, *stmt.params))


async def run(transaction: txn.Txn[T], conn: Any, node: Node | None = None) -> T:
    """Drive ``transaction`` to its end on ``conn`` (inside the caller's transaction, if any)."""
    result: Any = None
    try:
        while True:
            stmt = transaction.send(result)
            if type(stmt) is txn.Stmt:
                result = await execute(conn, stmt)
            elif type(stmt) is txn.DevId:
                result = await (lookup_dev(conn, stmt.user, stmt.device) if node is None
                                else node._dev(conn, stmt.user, stmt.device))
            elif type(stmt) is txn.Lock:
                await conn.execute(_LOCK, stmt.name, stmt.key % _INT4)
                result = None
            elif node is None:
                raise TypeError(f"{type(stmt).__name__} needs the node's state")
            elif type(stmt) is txn.RoomForUpdate:
                result = await node._room_for_update(conn, stmt.room_id)
            elif type(stmt) is txn.RoomReread:
                result = None  # loaded under the row lock in this very transaction
            elif type(stmt) is txn.RoomAdvanced:
                await node._room_advanced(conn, stmt.room)
                result = None
            elif type(stmt) is txn.Received:
                result = node._received()
            elif type(stmt) is txn.InboxSeqs:
                result = await node._inbox_seqs(conn, stmt.devs)
            else:
                raise TypeError(f"not a statement: {type(stmt).__name__}")
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
