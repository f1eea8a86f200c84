"""SQLite storage rules checked in-process (DESIGN §9): group commit, idempotency inside one
batch, WAL kept bounded under sustained writes, retention as a rowid prefix."""

from __future__ import annotations

import asyncio
import base64
import io
import sqlite3
from pathlib import Path

from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage.base import SendOutcome, SendRequest
from sottovoce.server.storage.sqlite import SqliteStorage

CT = base64.b64encode(b"\x07" * 200).decode()


def _req(i: int, key: str | None = None) -> SendRequest:
    return SendRequest(
        sender_user="alice", sender_device="d1", conversation_id="dm:alice:bob",
        message_id=f"m{i}", idempotency_key=key or f"k{i}", recipient_user="bob",
        content_type="text", client_created_at_ms=0, targets=[("bob", "d1", CT)],
    )


async def _storage(tmp_path: Path) -> SqliteStorage:
    st = SqliteStorage(tmp_path / "db.sqlite3", logger=JsonLogger(io.StringIO()))
    await st.open()
    await st.create_account("alice", b"a" * 32, "d1", b"cert-a", 0)
    await st.create_account("bob", b"b" * 32, "d1", b"cert-b", 0)
    return st


async def _append_all(st: SqliteStorage, reqs: list[SendRequest]) -> list[SendOutcome]:
    loop = asyncio.get_running_loop()
    futs: list[asyncio.Future[SendOutcome]] = []
    for r in reqs:
        fut: asyncio.Future[SendOutcome] = loop.create_future()

        def done(o: SendOutcome | None, e: BaseException | None,
                 fut: asyncio.Future[SendOutcome] = fut) -> None:
            if e is not None:
                fut.set_exception(e)
            else:
                assert o is not None
                fut.set_result(o)

        st.append(r, done)
        futs.append(fut)
    return list(await asyncio.gather(*futs))


async def test_retry_inside_one_batch_is_a_duplicate_not_a_second_row(tmp_path: Path) -> None:
    st = await _storage(tmp_path)
    try:
        # Queued together, these land in one group commit and take the careful path.
        out = await _append_all(st, [_req(1), _req(2), _req(3, key="k1"), _req(4)])
        assert [o.duplicate for o in out] == [False, False, True, False]
        assert out[2].server_seq == out[0].server_seq and out[2].message_id == "m1"
        assert [o.server_seq for o in out if not o.duplicate] == [1, 2, 3]
        rows = await st.read_inbox("bob", "d1", 0, 100)
        assert [seq for seq, _ in rows] == [1, 2, 3]
        assert await st.latest_inbox_seq("bob", "d1") == 3
    finally:
        await st.close()


async def test_sequences_survive_reopen(tmp_path: Path) -> None:
    st = await _storage(tmp_path)
    await _append_all(st, [_req(i) for i in range(5)])
    await st.ack_read("bob", "d1", 5)
    await st.close()
    st2 = SqliteStorage(tmp_path / "db.sqlite3", logger=JsonLogger(io.StringIO()))
    await st2.open()
    try:
        (o,) = await _append_all(st2, [_req(9)])
        assert o.server_seq == 6 and o.frames[0].global_seq == 6
        (dup,) = await _append_all(st2, [_req(10, key="k0")])
        assert dup.duplicate and dup.server_seq == 1
    finally:
        await st2.close()


async def test_wal_is_truncated_under_sustained_writes(tmp_path: Path) -> None:
    st = await _storage(tmp_path)
    st.checkpoint_interval_s = 0.05
    st.wal_truncate_frames = 10
    wal = tmp_path / "db.sqlite3-wal"
    try:
        # Keep writing until the checkpointer has asked for a truncation and the
        # writer has done it (bounded: a loaded CI machine may need a few rounds).
        i = 0
        deadline = asyncio.get_running_loop().time() + 20
        while st.stats.truncations < 1 and asyncio.get_running_loop().time() < deadline:
            await _append_all(st, [_req(i + j) for j in range(50)])
            i += 50
            await asyncio.sleep(0.005)
        assert st.stats.truncations >= 1
        assert wal.stat().st_size < 8 * 1024 * 1024
    finally:
        await st.close()


async def test_expiry_deletes_the_old_prefix_only(tmp_path: Path) -> None:
    st = await _storage(tmp_path)
    try:
        await _append_all(st, [_req(i) for i in range(3)])
        con = sqlite3.connect(tmp_path / "db.sqlite3")
        (cutoff,) = con.execute("SELECT max(received_at) + 1 FROM inbox").fetchone()
        con.close()
        await asyncio.sleep(0.01)
        await _append_all(st, [_req(7)])
        assert await st.expire(cutoff) == 3
        assert [seq for seq, _ in await st.read_inbox("bob", "d1", 0, 10)] == [4]
        assert await st.expire(cutoff) == 0
    finally:
        await st.close()
