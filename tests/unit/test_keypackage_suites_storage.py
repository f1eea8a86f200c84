"""KeyPackages per MLS cipher suite in storage (storage/keypackages.py; docs/operations.md,
the schema version that added them), on SQLite and PostgreSQL.

* Each suite has its own one-time stock, last resort, cap and count; a claim takes
  one of the suite it names and passes over a device with none of it; a withdrawal
  empties every suite's one-time stock; deleting the account deletes them all.
* A database from before suites is upgraded in place: its KeyPackages and its
  last-resort ones become suite 1's and are handed out as before.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest

from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage import sqlite as sqlite_mod
from sottovoce.server.storage.roombase import RoomRefused
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.integration import pgschema
from tests.unit.test_server_rooms_storage import (
    _scalar,
    room_storage,  # noqa: F401 - the fixture
)

XWING = 0xF001


async def test_each_suite_has_its_own_stock_last_resort_and_claims(
    room_storage: SqliteStorage,  # noqa: F811
) -> None:
    st = room_storage
    assert await st.store_key_packages("bob", "d1", [b"c-1", b"c-2"], b"c-last", 500) == 2
    assert await st.store_key_packages(
        "bob", "d1", [b"x-1"], b"x-last", 500, XWING) == 1
    assert await st.count_key_packages("bob", "d1") == 2
    assert await st.count_key_packages("bob", "d1", XWING) == 1
    assert await st.key_package_stock("bob", "d1") == {1: 2, XWING: 1}
    # carol has suite 1 only: an X-Wing claim passes her device over.
    await st.store_key_packages("carol", "d1", [b"carol-1"], b"carol-last", 500)
    assert await st.claim_key_packages("carol", ("alice", "d1"), suite=XWING) == []
    assert [c.key_package for c in await st.claim_key_packages("carol", ("alice", "d1"))] == [
        b"carol-1"]

    got = [await st.claim_key_packages("bob", ("alice", "d1"), suite=XWING) for _ in range(3)]
    assert [[(c.key_package, c.remaining) for c in g] for g in got] == [
        [(b"x-1", 0)], [(b"x-last", 0)], [(b"x-last", 0)]]
    got = [await st.claim_key_packages("bob", ("alice", "d1")) for _ in range(3)]
    assert [g[0].key_package for g in got] == [b"c-1", b"c-2", b"c-last"]
    limited = await st.claim_key_packages("bob", ("alice", "d1"), one_time=False, suite=XWING)
    assert [c.key_package for c in limited] == [b"x-last"]

    # A new last resort replaces only its own suite's.
    await st.store_key_packages("bob", "d1", [], b"x-last-2", 500, XWING)
    assert [c.key_package for c in await st.claim_key_packages(
        "bob", ("alice", "d1"), suite=XWING)] == [b"x-last-2"]
    assert [c.key_package for c in await st.claim_key_packages(
        "bob", ("alice", "d1"))] == [b"c-last"]

    # The cap is per suite; a withdrawal empties every suite's one-time stock.
    await st.store_key_packages("bob", "d1", [b"c"] * 3, None, 3)
    await st.store_key_packages("bob", "d1", [b"x"] * 3, None, 3, XWING)
    with pytest.raises(RoomRefused) as exc:
        await st.store_key_packages("bob", "d1", [b"x"], None, 3, XWING)
    assert exc.value.code == "keypackages_full"
    assert await st.withdraw_key_packages("bob", "d1") == 6
    assert await st.key_package_stock("bob", "d1") == {1: 0, XWING: 0}
    assert await st.key_package_stock("alice", "d1") == {}, "never uploaded"
    # Deleting the account deletes its last resorts of every suite too.
    await st.delete_account("bob", 1)
    assert await _scalar(st, "SELECT count(*) FROM key_package_last_resorts") == 1  # carol's


#: The schema version before the one that stores KeyPackages per suite (version 15).
BEFORE_SUITES = 14


def _ks_rows(path: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with sqlite3.connect(path) as con:
        kps = con.execute("SELECT suite, key_package FROM key_packages ORDER BY id").fetchall()
        lrs = con.execute("SELECT suite, last_resort FROM key_package_last_resorts").fetchall()
    return kps, lrs


async def test_sqlite_database_from_before_suites_keeps_its_key_packages_as_suite_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db.sqlite3"
    latest = sqlite_mod.MIGRATIONS
    monkeypatch.setattr(sqlite_mod, "MIGRATIONS", latest[:BEFORE_SUITES])
    monkeypatch.setattr(sqlite_mod, "SCHEMA_VERSION", BEFORE_SUITES)
    old = SqliteStorage(path, logger=JsonLogger(io.StringIO()))
    await old.open()
    await old.create_account("bob", b"b" * 32, "d1", b"cert", 0)
    await old.close()
    with sqlite3.connect(path) as con:  # as the previous version stored them
        dev = con.execute("SELECT dev FROM devices WHERE user_id='bob'").fetchone()[0]
        con.executemany("INSERT INTO key_packages(dev, key_package) VALUES (?, ?)",
                        [(dev, b"old-1"), (dev, b"old-2")])
        con.execute("INSERT INTO key_package_devices(dev, last_resort) VALUES (?, ?)",
                    (dev, b"old-last"))
    monkeypatch.setattr(sqlite_mod, "MIGRATIONS", latest)
    monkeypatch.setattr(sqlite_mod, "SCHEMA_VERSION", len(latest))
    st = SqliteStorage(path, logger=JsonLogger(io.StringIO()))
    await st.open()
    try:
        assert _ks_rows(path) == ([(1, b"old-1"), (1, b"old-2")], [(1, b"old-last")])
        assert await st.key_package_stock("bob", "d1") == {1: 2}
        assert await st.claim_key_packages("bob", None, suite=XWING) == []
        got = [(await st.claim_key_packages("bob", None))[0].key_package for _ in range(3)]
        assert got == [b"old-1", b"old-2", b"old-last"]
    finally:
        await st.close()


async def test_pg_database_from_before_suites_keeps_its_key_packages_as_suite_1() -> None:
    reason = pgschema.unreachable()
    if reason is not None:
        pytest.skip(reason)
    import asyncpg

    from sottovoce.server.storage.postgres import MIGRATIONS, PostgresStorage

    with pgschema.fresh_schema("sv_kps") as dsn:
        old = PostgresStorage(dsn, logger=JsonLogger(io.StringIO()), pool_size=2,
                              migrations=MIGRATIONS[:BEFORE_SUITES])
        await old.open()
        await old.create_account("bob", b"b" * 32, "d1", b"cert", 0)
        await old.close()
        conn = await asyncpg.connect(dsn)
        try:
            dev = await conn.fetchval("SELECT dev FROM devices WHERE user_id='bob'")
            await conn.executemany("INSERT INTO key_packages(dev, key_package) VALUES ($1, $2)",
                                   [(dev, b"old-1"), (dev, b"old-2")])
            await conn.execute("INSERT INTO key_package_devices(dev, last_resort) VALUES ($1, $2)",
                               dev, b"old-last")
        finally:
            await conn.close()
        st = PostgresStorage(dsn, logger=JsonLogger(io.StringIO()), pool_size=2)
        await st.open()
        try:
            assert await st.key_package_stock("bob", "d1") == {1: 2}
            assert await st.claim_key_packages("bob", None, suite=XWING) == []
            got = [(await st.claim_key_packages("bob", None))[0].key_package for _ in range(3)]
            assert got == [b"old-1", b"old-2", b"old-last"]
        finally:
            await st.close()
