"""The SQLite writer's multi-row statements (storage/sqlite.py insert_many, update_many):
one statement per up to 1,024 rows, padded with NULL rows that must never be written."""

from __future__ import annotations

import sqlite3

import pytest

from sottovoce.server.storage.sqlite import insert_flat, insert_inbox, insert_many, update_many


def _table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t(k INTEGER NOT NULL, v TEXT)")
    conn.execute("CREATE UNIQUE INDEX t_k ON t(k)")
    return conn


@pytest.mark.parametrize("n", [1, 2, 3, 63, 64, 65, 200, 1024, 1025, 2500])
def test_insert_many_writes_every_row_once_in_order_and_no_padding(n: int) -> None:
    conn = _table()
    rows = [(i, f"v{i}") for i in range(n)]
    before = conn.total_changes
    insert_many(conn, "INSERT OR IGNORE INTO t(k, v)", 2, rows)
    assert conn.total_changes - before == n
    # rowid order is the order given (the inbox relies on arrival order)
    assert conn.execute("SELECT k, v FROM t ORDER BY rowid").fetchall() == rows


@pytest.mark.parametrize("n", [1, 2, 3, 64, 65, 1024, 1025, 2500])
def test_insert_flat_writes_every_row_once_in_order_with_the_last_column_bound_once(
    n: int,
) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t(k INTEGER NOT NULL, v TEXT, w INTEGER, at INTEGER)")
    conn.execute("CREATE UNIQUE INDEX t_k ON t(k)")
    params: list[object] = []
    for i in range(n):
        params += (i, f"v{i}", -i)
    before = conn.total_changes
    insert_flat(conn, "INSERT OR IGNORE INTO t(k, v, w, at)", 3, params, 1_765_000_000_000)
    assert conn.total_changes - before == n
    assert conn.execute("SELECT k, v, w, at FROM t ORDER BY rowid").fetchall() == [
        (i, f"v{i}", -i, 1_765_000_000_000) for i in range(n)]


def test_insert_many_or_ignore_counts_only_new_rows_and_upsert_tail_applies() -> None:
    conn = _table()
    insert_many(conn, "INSERT INTO t(k, v)", 2, [(1, "a"), (2, "b")])
    before = conn.total_changes
    insert_many(conn, "INSERT OR IGNORE INTO t(k, v)", 2, [(2, "x"), (3, "c")])
    assert conn.total_changes - before == 1  # the writer's retry detection reads this
    insert_many(conn, "INSERT INTO t(k, v)", 2, [(1, "A"), (4, "d"), (5, "e")],
                " ON CONFLICT(k) DO UPDATE SET v=excluded.v")
    assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [
        (1, "A"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]


def test_update_many_touches_only_the_rows_named() -> None:
    conn = _table()
    insert_many(conn, "INSERT INTO t(k, v)", 2, [(i, "old") for i in range(10)])
    update_many(conn, "UPDATE t SET v=v.column2", 2, [(3, "three"), (7, "seven"), (8, "eight")],
                "t.k=v.column1")
    got = dict(conn.execute("SELECT k, v FROM t").fetchall())
    assert got == {**{i: "old" for i in range(10)}, 3: "three", 7: "seven", 8: "eight"}


def test_insert_inbox_keeps_expiry_only_when_a_row_has_one() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE inbox(dev INTEGER, seq INTEGER, received_at INTEGER, "
                 "envelope TEXT, sender INTEGER, expires_at INTEGER DEFAULT NULL)")
    insert_inbox(conn, [(1, 1, 10, "e1", 2, None), (1, 2, 10, "e2", 2, None)])
    insert_inbox(conn, [(1, 3, 11, "e3", 2, None), (1, 4, 11, "e4", 2, 99)])
    assert conn.execute("SELECT seq, expires_at FROM inbox ORDER BY rowid").fetchall() == [
        (1, None), (2, None), (3, None), (4, 99)]


def test_bytes_parameters_bind_as_the_same_blobs_with_their_adapter() -> None:
    """storage/sqlite.py registers ``bytes`` as the adapter of bytes parameters (the
    default lookup formats an exception per parameter): they must still bind as BLOBs,
    byte for byte, empty and NUL bytes included, and a subclass as before."""

    class Sub(bytes):
        pass

    assert sqlite3.adapters.get((bytes, sqlite3.PrepareProtocol)) is bytes
    conn = sqlite3.connect(":memory:")
    for value in (b"", b"\x00", b"\x00\xffab\x00", bytes(range(256)) * 40, Sub(b"\x01\x02")):
        kind, back = conn.execute("SELECT typeof(?1), ?1", (value,)).fetchone()
        assert (kind, back) == ("blob", bytes(value))
