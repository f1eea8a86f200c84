"""Strict discovery's tables on both storage engines (server/storage/discovery.py): contact
requests wait at most ``max_age`` and ``max_rows`` per account and are taken once, oldest
first; a withdrawal deletes only the named grants of the account that withdraws."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sottovoce.server.discovery import cap_hash
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage.shared import SharedStorage
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.integration import pgschema

Factory = Callable[[], SharedStorage]
WEEK = 7 * 86_400_000


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    log = JsonLogger(io.StringIO())
    if request.param == "sqlite":
        yield lambda: SqliteStorage(tmp_path / "db.sqlite3", logger=log)
        return
    reason = pgschema.unreachable()
    assert reason is None, reason
    from sottovoce.server.storage.postgres import PostgresStorage

    with pgschema.fresh_schema("sv_disc_st") as dsn:
        yield lambda: PostgresStorage(dsn, logger=log, pool_size=2)


async def test_contact_requests_wait_bounded_and_are_taken_once(backend: Factory) -> None:
    st = backend()
    await st.open()
    try:
        assert not await st.has_contact_requests("alice")
        for i in range(5):  # at most 3 kept: the newest
            await st.queue_contact_request("alice", f"r{i}", bytes([i]) * 32, 1000 + i, WEEK, 3)
        await st.queue_contact_request("carol", "r9", bytes(32), 1000, WEEK, 3)
        assert await st.has_contact_requests("alice")
        taken = await st.take_contact_requests("alice", 2000, WEEK)
        assert taken == [(f"r{i}", bytes([i]) * 32, 1000 + i) for i in (2, 3, 4)]
        assert await st.take_contact_requests("alice", 2000, WEEK) == []  # taken once
        # A week later a request is too old to be handed out (and goes).
        assert await st.take_contact_requests("carol", 1000 + WEEK + 1, WEEK) == []
        assert not await st.has_contact_requests("carol")
        # Queuing drops what is older than a week before it adds.
        await st.queue_contact_request("dave", "old", bytes(32), 1, WEEK, 3)
        await st.queue_contact_request("dave", "new", bytes(32), 2 + WEEK, WEEK, 3)
        assert [r[0] for r in await st.take_contact_requests("dave", 2 + WEEK, WEEK)] == ["new"]
    finally:
        await st.close()


async def test_a_withdrawal_deletes_only_the_callers_named_grants(backend: Factory) -> None:
    st = backend()
    await st.open()
    try:
        for owner, token in (("alice", b"b" * 32), ("alice", b"c" * 32), ("carol", b"b" * 32)):
            await st.set_grant(owner, cap_hash(token), True)
        assert await st.withdraw_grants("alice", [cap_hash(b"b" * 32), cap_hash(b"z" * 32)]) == 1
        assert await st.visibility("alice", cap_hash(b"b" * 32)) == (0, False)
        await st.set_discovery("alice", 2)
        await st.set_discovery("carol", 2)
        assert await st.visibility("alice", cap_hash(b"c" * 32)) == (2, True)
        assert await st.visibility("carol", cap_hash(b"b" * 32)) == (2, True)  # not alice's
        assert await st.withdraw_grants("bob", [cap_hash(b"c" * 32)]) == 0
        assert await st.visibility("alice", cap_hash(b"c" * 32)) == (2, True)
    finally:
        await st.close()
