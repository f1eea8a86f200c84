"""Versioned schema migrations on both adapters (docs/operations.md, "Upgrading").

A fresh database is brought to the latest version; a database at an older
version is upgraded in place with its rows kept; a database newer than the
code is refused; a failed migration leaves the previous version intact; and
(PostgreSQL) several nodes starting at once apply the migrations exactly once.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from sottovoce.errors import UsageError
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage import sqlite as sqlite_mod
from sottovoce.server.storage.base import SendRequest, Storage
from sottovoce.server.storage.quota import InboxFull, InboxLimits
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.integration import pgschema

#: A later version as a test stands in for one: adds a column and an index.
EXTRA_PG = "ALTER TABLE inbox ADD COLUMN note text; CREATE INDEX inbox_note ON inbox(note)"
EXTRA_SQLITE = "ALTER TABLE inbox ADD COLUMN note TEXT; CREATE INDEX inbox_note ON inbox(note)"


def _log() -> JsonLogger:
    return JsonLogger(io.StringIO())


# --- SQLite ------------------------------------------------------------------------------


def _sqlite_version(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        return int(con.execute("SELECT version FROM schema_version").fetchone()[0])
    finally:
        con.close()


async def test_sqlite_fresh_database_reaches_the_latest_version(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "db.sqlite3", logger=_log())
    await st.open()
    await st.close()
    assert _sqlite_version(tmp_path / "db.sqlite3") == sqlite_mod.SCHEMA_VERSION


async def test_sqlite_older_database_is_upgraded_keeping_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db.sqlite3"
    latest = sqlite_mod.MIGRATIONS
    # Written by an older server: only the first version.
    monkeypatch.setattr(sqlite_mod, "MIGRATIONS", latest[:1])
    monkeypatch.setattr(sqlite_mod, "SCHEMA_VERSION", 1)
    st = SqliteStorage(path, logger=_log())
    await st.open()
    await st.close()
    _old_accounts_sqlite(path, "alice")
    assert _sqlite_version(path) == 1
    # The newer server: every released version plus one more.
    monkeypatch.setattr(sqlite_mod, "MIGRATIONS", (*latest, EXTRA_SQLITE))
    monkeypatch.setattr(sqlite_mod, "SCHEMA_VERSION", len(latest) + 1)
    st = SqliteStorage(path, logger=_log())
    await st.open()
    try:
        assert (await st.get_account("alice")) is not None
    finally:
        await st.close()
    assert _sqlite_version(path) == len(latest) + 1
    con = sqlite3.connect(path)
    assert "note" in [r[1] for r in con.execute("PRAGMA table_info(inbox)")]
    # Its genesis is the key it had, and its device's certificate is kept as a statement.
    assert con.execute("SELECT genesis_key FROM accounts").fetchone() == (b"alice" * 6,)
    assert con.execute("SELECT kind, body FROM account_statements").fetchall() == [
        ("certificate", b"cert")]
    con.close()


async def test_sqlite_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    st = SqliteStorage(path, logger=_log())
    await st.open()
    await st.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE schema_version SET version = version + 1")
    con.commit()
    con.close()
    with pytest.raises(UsageError, match="newer than this server"):
        await SqliteStorage(path, logger=_log()).open()


# --- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    reason = pgschema.unreachable()
    if reason is not None:
        pytest.skip(reason)
    with pgschema.fresh_schema("sv_mig") as dsn:
        yield dsn


_OLD_ACCOUNT = "INSERT INTO accounts(user_id, account_key, created_at) VALUES ({0}, {1}, 0)"
_OLD_DEVICE = ("INSERT INTO devices(user_id, device_id, certificate, created_at) "
               "VALUES ({0}, 'd1', {1}, 0)")


def _old_accounts_sqlite(path: Path, *users: str) -> None:
    """Accounts as an older server wrote them (today's writes use columns it did not have)."""
    con = sqlite3.connect(path)
    for user in users:
        con.execute(_OLD_ACCOUNT.format("?", "?"), (user, user.encode() * (32 // len(user))))
        con.execute(_OLD_DEVICE.format("?", "?"), (user, b"cert"))
    con.commit()
    con.close()


async def _old_accounts_pg(dsn: str, *users: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    for user in users:
        await conn.execute(_OLD_ACCOUNT.format("$1", "$2"), user, user.encode() * (32 // len(user)))
        await conn.execute(_OLD_DEVICE.format("$1", "$2"), user, b"cert")
    await conn.close()


async def _pg_fetch(dsn: str, sql: str) -> object:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_pg_fresh_database_reaches_the_latest_version(pg_dsn: str) -> None:
    from sottovoce.server.storage.postgres import SCHEMA_VERSION, PostgresStorage

    st = PostgresStorage(pg_dsn, logger=_log(), pool_size=2)
    await st.open()
    await st.close()
    assert await _pg_fetch(pg_dsn, "SELECT version FROM schema_version") == SCHEMA_VERSION
    assert await _pg_fetch(pg_dsn, "SELECT count(*) FROM schema_version") == 1
    tables = await _pg_fetch(pg_dsn, "SELECT array_agg(table_name::text) FROM "
                                     "information_schema.tables WHERE table_schema = "
                                     "current_schema()")
    assert isinstance(tables, list)
    assert {"schema_version", "accounts", "devices", "inbox", "sends", "rooms",
            "room_messages", "key_packages"} <= set(tables)


async def test_pg_older_database_is_upgraded_keeping_its_rows(pg_dsn: str) -> None:
    from sottovoce.server.storage.postgres import MIGRATIONS, PostgresStorage

    old = PostgresStorage(pg_dsn, logger=_log(), pool_size=2, migrations=MIGRATIONS[:1])
    await old.open()
    await old.close()
    await _old_accounts_pg(pg_dsn, "alice")
    new = PostgresStorage(pg_dsn, logger=_log(), pool_size=2,
                          migrations=(*MIGRATIONS, EXTRA_PG))
    await new.open()
    try:
        assert (await new.get_account("alice")) is not None
    finally:
        await new.close()
    assert await _pg_fetch(pg_dsn, "SELECT version FROM schema_version") == len(MIGRATIONS) + 1
    assert await _pg_fetch(pg_dsn, "SELECT count(*) FROM information_schema.columns "
                                   "WHERE table_schema = current_schema() "
                                   "AND table_name = 'inbox' AND column_name = 'note'") == 1
    assert await _pg_fetch(pg_dsn, "SELECT count(*) FROM account_statements") == 1


async def test_pg_newer_database_is_refused(pg_dsn: str) -> None:
    from sottovoce.server.storage.postgres import PostgresStorage

    st = PostgresStorage(pg_dsn, logger=_log(), pool_size=2)
    await st.open()
    await st.close()
    import asyncpg

    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("UPDATE schema_version SET version = version + 1")
    await conn.close()
    with pytest.raises(UsageError, match="newer than this server"):
        await PostgresStorage(pg_dsn, logger=_log(), pool_size=2).open()


async def test_pg_failed_migration_leaves_the_previous_version(pg_dsn: str) -> None:
    from sottovoce.server.storage.postgres import MIGRATIONS, PostgresStorage

    st = PostgresStorage(pg_dsn, logger=_log(), pool_size=2)
    await st.open()
    await st.close()
    broken = PostgresStorage(pg_dsn, logger=_log(), pool_size=2,
                             migrations=(*MIGRATIONS, EXTRA_PG + "; SELECT no_such_function()"))
    with pytest.raises(UsageError, match="refused the schema set-up"):
        await broken.open()
    # DDL is transactional in PostgreSQL: the half-applied version left no trace.
    assert await _pg_fetch(pg_dsn, "SELECT version FROM schema_version") == len(MIGRATIONS)
    assert await _pg_fetch(pg_dsn, "SELECT count(*) FROM information_schema.columns "
                                   "WHERE table_schema = current_schema() "
                                   "AND column_name = 'note'") == 0


async def test_pg_concurrent_migrators_apply_each_version_once(pg_dsn: str) -> None:
    import asyncpg

    from sottovoce.server.storage.postgres import MIGRATIONS, migrate

    conns = [await asyncpg.connect(pg_dsn) for _ in range(4)]
    try:
        found = await asyncio.gather(*(migrate(c, (*MIGRATIONS, EXTRA_PG)) for c in conns))
    finally:
        for c in conns:
            await c.close()
    # One node created everything; the others waited on the advisory lock and
    # found the schema current (no "already exists" collision).
    assert sorted(found) == [0] + [len(MIGRATIONS) + 1] * 3
    assert await _pg_fetch(pg_dsn, "SELECT version FROM schema_version") == len(MIGRATIONS) + 1


async def test_pg_nodes_opening_together_share_one_schema(pg_dsn: str) -> None:
    from sottovoce.server.storage.postgres import PostgresStorage

    nodes = [PostgresStorage(pg_dsn, logger=_log(), pool_size=2) for _ in range(3)]
    await asyncio.gather(*(n.open() for n in nodes))
    try:
        await nodes[0].create_account("alice", b"a" * 32, "d1", b"cert", 0)
        for n in nodes[1:]:
            assert (await n.get_account("alice")) is not None
    finally:
        for n in nodes:
            await n.close()


# --- v5: inbox quotas count what already waits --------------------------------------------

#: What waited before the upgrade: two frames for bob's device, of unknown senders.
_ENVELOPE = '{"protocol":"ksmpv3","ciphertext":"' + "A" * 400 + '"}'
TWO_FRAMES = 2 * len(_ENVELOPE)


def _quota_request(i: int) -> SendRequest:
    return SendRequest(
        sender_user="alice", sender_device="d1", conversation_id="dm:alice:bob",
        message_id=f"m{i}", idempotency_key=f"k{i}", recipient_user="bob",
        content_type="text", client_created_at_ms=0, targets=[("bob", "d1", "AAAA")],
    )


async def _send(st: Storage, req: SendRequest) -> object:
    fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    st.append(req, lambda o, e: fut.set_result(o if e is None else e))
    return await fut


async def _waiting_counts(st: Storage) -> None:
    """With room for exactly one more frame, the two old ones must count."""
    assert not isinstance(await _send(st, _quota_request(1)), BaseException)
    refused = await _send(st, _quota_request(2))
    assert isinstance(refused, InboxFull) and refused.scope == "device"


ONE_MORE = InboxLimits(device_messages=3, device_bytes=10**9, contact_messages=3,
                       contact_bytes=10**9, stranger_messages=3, stranger_bytes=10**9)


async def test_sqlite_upgrade_to_quotas_counts_what_already_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db.sqlite3"
    latest = sqlite_mod.MIGRATIONS
    monkeypatch.setattr(sqlite_mod, "MIGRATIONS", latest[:3])
    monkeypatch.setattr(sqlite_mod, "SCHEMA_VERSION", 3)
    st = SqliteStorage(path, logger=_log())
    await st.open()
    await st.close()
    _old_accounts_sqlite(path, "alice", "bob")
    con = sqlite3.connect(path)
    con.executemany("INSERT INTO inbox(dev, seq, received_at, envelope) VALUES "
                    "((SELECT dev FROM devices WHERE user_id='bob'), ?, 0, ?)",
                    [(1, _ENVELOPE), (2, _ENVELOPE)])
    con.execute("UPDATE devices SET last_inbox_seq=2 WHERE user_id='bob'")
    con.commit()
    con.close()
    monkeypatch.setattr(sqlite_mod, "MIGRATIONS", latest)
    monkeypatch.setattr(sqlite_mod, "SCHEMA_VERSION", len(latest))
    st = SqliteStorage(path, logger=_log(), limits=ONE_MORE)
    await st.open()
    try:
        await _waiting_counts(st)
    finally:
        await st.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT messages, bytes FROM inbox_usage WHERE sender=''").fetchone() == (
        2, TWO_FRAMES)
    con.close()


async def test_pg_upgrade_to_quotas_counts_what_already_waits(pg_dsn: str) -> None:
    import asyncpg

    from sottovoce.server.storage.postgres import MIGRATIONS, PostgresStorage

    old = PostgresStorage(pg_dsn, logger=_log(), pool_size=2, migrations=MIGRATIONS[:3])
    await old.open()
    await old.close()
    await _old_accounts_pg(pg_dsn, "alice", "bob")
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.executemany(
            "INSERT INTO inbox(dev, seq, received_at, envelope) VALUES "
            "((SELECT dev FROM devices WHERE user_id='bob'), $1, 0, $2)",
            [(1, _ENVELOPE), (2, _ENVELOPE)])
        await conn.execute("UPDATE devices SET last_inbox_seq=2 WHERE user_id='bob'")
    finally:
        await conn.close()
    new = PostgresStorage(pg_dsn, logger=_log(), pool_size=2, limits=ONE_MORE)
    await new.open()
    try:
        await _waiting_counts(new)
    finally:
        await new.close()
    assert await _pg_fetch(pg_dsn, "SELECT bytes FROM inbox_usage WHERE sender=''") == TWO_FRAMES
