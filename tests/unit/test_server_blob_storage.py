"""File blobs' metadata on both storage engines (server/storage/blobs.py): a resumed
create gets the same blob, another owner a conflict, the quota counts live blobs only,
the last recipient's fetch deletes it, and expiry deletes what is due."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
