"""File blobs' metadata on both storage engines (server/storage/blobs.py): a resumed
create gets the same blob, another owner a conflict, the quota counts live blobs only,
the last recipient's fetch deletes it, and expiry deletes what is due; the sweep deletes
blob files left without rows (server/blobs.py), and only those."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sottovoce.server.blobs import ORPHAN_GRACE_MS, BlobService
from sottovoce.server.config import ServerConfig
from sottovoce.server.errors import WireFailure
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage.shared import SharedStorage
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.integration import pgschema

Factory = Callable[[], SharedStorage]
ALICE, BOB, BOB2 = ("alice", "d1"), ("bob", "d1"), ("bob", "d2")
ID1, ID2, ID3 = "a" * 32, "b" * 32, "c" * 32


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    log = JsonLogger(io.StringIO())
    if request.param == "sqlite":
        yield lambda: SqliteStorage(tmp_path / "db.sqlite3", logger=log)
        return
    reason = pgschema.unreachable()
    if reason is not None:
        pytest.skip(reason)
    from sottovoce.server.storage.postgres import PostgresStorage

    with pgschema.fresh_schema() as dsn:
        yield lambda: PostgresStorage(dsn, logger=log, pool_size=2)


async def test_blob_rows_life_cycle(backend: Factory) -> None:
    st = backend()
    await st.open()
    try:
        meta = await st.create_blob(ID1, ALICE, 500, 1, [BOB, BOB2], 1000, 9000, 10_000)
        assert (meta.complete, meta.recipients) == (False, frozenset({BOB, BOB2}))
        again = await st.create_blob(ID1, ALICE, 500, 1, [BOB], 2000, 9999, 10_000)
        assert again == meta  # a resumed upload: the stored blob, unchanged
        with pytest.raises(WireFailure) as conflict:
            await st.create_blob(ID1, BOB, 500, 1, [ALICE], 2000, 9000, 10_000)
        assert conflict.value.code == "blob_conflict"
        with pytest.raises(WireFailure) as quota:
            await st.create_blob(ID2, ALICE, 9_600, 1, [BOB], 2000, 9000, 10_000)
        assert quota.value.code == "quota_exceeded"
        assert quota.value.details == {"quotaBytes": 10_000, "usedBytes": 500}
        # Expired blobs no longer count against the quota.
        await st.create_blob(ID2, ALICE, 9_500, 1, [BOB], 9001, 20_000, 10_000)

        await st.complete_blob(ID1)
        found = await st.blob_meta(ID1)
        assert found is not None and found.complete
        assert await st.blob_fetched(ID1, *BOB) is False
        assert await st.blob_fetched(ID1, *BOB2) is True
        assert await st.blob_meta(ID1) is None

        await st.create_blob(ID3, BOB, 100, 1, [ALICE], 0, 5, 10_000)
        assert await st.expire_blobs(10, 100) == [ID3]
        assert await st.blob_meta(ID3) is None
        assert await st.blob_meta(ID2) is not None
    finally:
        await st.close()


async def test_the_sweep_deletes_blob_files_without_rows_once_they_are_old(
    backend: Factory, tmp_path: Path
) -> None:
    st = backend()
    await st.open()
    out = io.StringIO()
    now = [10**13]
    service = BlobService(st, ServerConfig(data_dir=tmp_path / "data"), JsonLogger(out),
                          lambda: now[0])
    service.start()
    try:
        await st.create_blob(ID1, ALICE, 500, 1, [BOB], 0, 10**14, 10_000)
        root = service.root
        kept = root / ID1  # has rows
        orphan, orphan_part = root / ID2, root / (ID3 + ".part")  # rows gone, files left
        young = root / ("d" * 32 + ".part")  # no rows, but written just now
        other = root / "README"  # not a blob file: not ours to judge
        for path in (kept, orphan, orphan_part, young, other):
            path.write_bytes(b"sealed")
        old_s = (now[0] - ORPHAN_GRACE_MS - 1000) / 1000
        for path in (kept, orphan, orphan_part, other):
            os.utime(path, (old_s, old_s))
        os.utime(young, (now[0] / 1000, now[0] / 1000))

        assert await service.sweep() == 0  # nothing expired; the orphan pass runs too
        assert sorted(p.name for p in root.iterdir()) == sorted(
            [kept.name, young.name, other.name])
        assert "blob.orphans_deleted" in out.getvalue()

        # Later the young one is old enough; the next pass waits for its interval.
        now[0] += ORPHAN_GRACE_MS + 1000
        await service.sweep()
        assert young.exists()
        assert await service.sweep_orphans() == 1
        assert not young.exists() and kept.exists()
    finally:
        await st.close()


def test_a_failed_chunk_write_is_cut_off_so_no_torn_chunk_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sottovoce.crypto.file_layout import SEALED_CHUNK_SIZE
    from sottovoce.server import blobs as server_blobs
    from sottovoce.write_behind import WriteBehind

    part = tmp_path / "x.part"
    chunk = b"s" * SEALED_CHUNK_SIZE
    BlobService._append(part, 0, chunk, WriteBehind())
    real = os.write
    calls: list[int] = []

    def disk_full(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, bytes(data[:1000]))  # a short write, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(server_blobs.os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        BlobService._append(part, 1, chunk, WriteBehind())
    assert part.stat().st_size == SEALED_CHUNK_SIZE  # chunk 0 whole, nothing of chunk 1
    monkeypatch.setattr(server_blobs.os, "write", real)
    BlobService._append(part, 1, chunk, WriteBehind())
    assert part.read_bytes() == chunk * 2
