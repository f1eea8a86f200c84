"""RoomStorage rules checked in-process (storage/roombase.py, docs/protocol.md §Rooms):
one commit per epoch under concurrency, strictly increasing serverSeq, KeyPackages handed
out once, read positions and deletion once read by all, audit linkage, token hashes only.

The ``room_storage`` fixture yields an opened adapter with three registered
accounts; another backend joins by adding a parameter.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sottovoce.limits import MAX_PENDING_JOIN_REQUESTS
from sottovoce.protocol.audit import AuditAction, entry_hash, make_entry
from sottovoce.protocol.rooms import token_hash
from sottovoce.secret import Secret
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage.base import UnknownAccount
from sottovoce.server.storage.roombase import (
    AuditAppendage,
    CommitOutcome,
    CommitRequest,
    RoomRefused,
    RoomSendRequest,
    RoomStorage,
    RoomStored,
)
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.integration import pgschema
from tests.unit.test_audit import ALICE, NOW, auth

ROOM = "room:" + "ab" * 16
CT = base64.b64encode(b"\x07" * 200).decode()
USERS = ("alice", "bob", "carol")


@pytest.fixture(params=["sqlite", "postgres"])
async def room_storage(request: pytest.FixtureRequest, tmp_path: Path
                       ) -> AsyncIterator[SqliteStorage]:
    schema = None
    if request.param == "sqlite":
        st = SqliteStorage(tmp_path / "db.sqlite3", logger=JsonLogger(io.StringIO()))
    else:  # a fresh PostgreSQL schema per test (skipped when PostgreSQL is unreachable)
        reason = pgschema.unreachable()
        if reason is not None:
            pytest.skip(reason)
        from sottovoce.server.storage.postgres import PostgresStorage

        schema, dsn = await pgschema.acreate_schema("sv_rooms")
        st = PostgresStorage(dsn, logger=JsonLogger(io.StringIO()), pool_size=4)  # type: ignore[assignment]
    await st.open()
    for u in USERS:
        await st.create_account(u, u.encode() * 11, "d1", b"cert-" + u.encode(), 0)
    try:
        yield st
    finally:
        await st.close()
        if schema is not None:
            await pgschema.adrop_schema(schema)


async def _scalar(st: RoomStorage, sql: str) -> Any:
    """One value straight from the adapter's database (SQLite file or PostgreSQL schema)."""
    if isinstance(st, SqliteStorage):
        with sqlite3.connect(st.path) as con:
            return con.execute(sql).fetchone()[0]
    import asyncpg

    conn = await asyncpg.connect(st.dsn)  # type: ignore[attr-defined]
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _stored_bytes(st: RoomStorage) -> bytes:
    """Everything the adapter keeps: the SQLite files, or every PostgreSQL row as text."""
    if isinstance(st, SqliteStorage):
        return b"".join(p.read_bytes() for p in st.path.parent.iterdir() if p.is_file())
    import asyncpg

    conn = await asyncpg.connect(st.dsn)  # type: ignore[attr-defined]
    try:
        tables = await conn.fetch("SELECT table_name FROM information_schema.tables "
                                  "WHERE table_schema = current_schema()")
        out = []
        for (t,) in tables:  # row::text renders bytea as \x<hex>
            out += [r[0] for r in await conn.fetch(f'SELECT t::text FROM "{t}" t')]
        return "\n".join(out).encode()
    finally:
        await conn.close()


async def _cb(fn: Callable[..., None], *args: Any) -> Any:
    """Run a callback-style storage operation; its outcome, or raise its error."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def done(out: Any, err: BaseException | None) -> None:
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(out)

    fn(*args, done)
    return await fut


def _commit(user: str, epoch: int, key: str, **kw: Any) -> CommitRequest:
    fields: dict[str, Any] = {
        "room_id": ROOM, "user": user, "device": "d1", "epoch": epoch, "message_id": "m-" + key,
        "idempotency_key": key, "commit_b64": CT, "welcome_b64": None, "adds": (),
        "removes": (), "group_info": None, "audit": None, "token_hash": None,
    }
    fields.update(kw)
    return CommitRequest(**fields)


def _send(user: str, epoch: int, key: str, expires_at_ms: int = 0) -> RoomSendRequest:
    return RoomSendRequest(
        room_id=ROOM, user=user, device="d1", epoch=epoch, message_id="m-" + key,
        idempotency_key=key, content_type="text", client_created_at_ms=0, ciphertext_b64=CT,
        expires_at_ms=expires_at_ms,
    )


async def _room_of_three(st: RoomStorage) -> None:
    await st.create_room(ROOM, "alice", "d1", b"gi", 0)
    out: CommitOutcome = await _cb(st.room_commit, _commit(
        "alice", 0, "add", adds=(("bob", "d1"), ("carol", "d1")), welcome_b64=CT))
    assert out.epoch == 1 and len(out.welcomes) == 2


async def _settle(futs: list[asyncio.Future[Any]]) -> list[Any]:
    return list(await asyncio.gather(*futs, return_exceptions=True))


async def test_exactly_one_commit_per_epoch_under_concurrent_commits(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await _room_of_three(st)
    # Queued together: they land in one writer batch, in some order, one wins.
    futs = [asyncio.ensure_future(_cb(st.room_commit, _commit(u, 1, f"race-{u}-{i}")))
            for i in range(4) for u in USERS]
    results = await _settle(futs)
    won = [r for r in results if isinstance(r, CommitOutcome)]
    lost = [r for r in results if isinstance(r, RoomRefused)]
    assert len(won) == 1 and len(lost) == len(futs) - 1
    seq = won[0].message.server_seq
    for err in lost:
        assert err.code == "commit_conflict" and err.retryable
        assert err.details == {"roomId": ROOM, "currentEpoch": 2, "winningServerSeq": seq}
    assert won[0].epoch == 2


async def test_server_seq_strictly_increasing_across_sends_and_commits(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await _room_of_three(st)
    futs: list[asyncio.Future[Any]] = []
    for i in range(30):
        futs.append(asyncio.ensure_future(_cb(st.room_send, _send(USERS[i % 3], 1, f"s{i}"))))
    results = await _settle(futs)
    seqs = [r.server_seq for r in results]
    assert seqs == list(range(2, 32)), "one per message, in arrival order, after the add (1)"
    # A retry (same device, same key) is the same message, not a new one.
    dup: RoomStored = await _cb(st.room_send, _send("alice", 1, "s0"))
    assert dup.duplicate and dup.server_seq == 2
    # stale_epoch: the message's epoch must be the room's.
    with pytest.raises(RoomRefused) as exc:
        await _cb(st.room_send, _send("bob", 0, "old"))
    assert exc.value.code == "stale_epoch" and exc.value.details["currentEpoch"] == 1
    frames = await st.room_read(ROOM, "carol", "d1", 0, 100)
    assert [s for s, _ in frames.frames] == list(range(2, 32)), "carol joined at seq 1"


async def test_an_expired_room_message_is_never_read_then_swept(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await _room_of_three(st)
    past = time.time_ns() // 1_000_000 - 1000
    later = past + 3_600_000
    await _cb(st.room_send, _send("alice", 1, "gone", expires_at_ms=past))  # seq 2
    await _cb(st.room_send, _send("alice", 1, "kept", expires_at_ms=later))  # seq 3
    await _cb(st.room_send, _send("alice", 1, "last", expires_at_ms=past))  # seq 4
    got = await st.room_read(ROOM, "bob", "d1", 1, 100)
    # The expired ones are holes; the read still covers them (room.sync steps over).
    assert [s for s, _ in got.frames] == [3] and got.scanned_to == got.latest_seq == 4
    assert [s for s, _ in await st.room_replay(ROOM, 1, None, 100)] == [3]
    # A full batch covers only up to its last frame (seq 4 may still hold one).
    assert (await st.room_read(ROOM, "bob", "d1", 0, 1)).scanned_to == 3
    assert await st.drop_expired(past + 1) == 2
    assert await _scalar(st, "SELECT count(*) FROM room_messages WHERE expires_at IS NOT NULL") == 1
    assert await st.drop_expired(later) == 1


async def test_a_limited_key_package_claim_gets_the_last_resort_and_consumes_nothing(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await st.store_key_packages("bob", "d1", [b"kp-1", b"kp-2"], b"last-resort", 500)
    got = await st.claim_key_packages("bob", ("alice", "d1"), one_time=False)
    assert [(c.key_package, c.remaining) for c in got] == [(b"last-resort", 2)]
    assert await st.count_key_packages("bob", "d1") == 2


async def test_a_device_withdraws_only_its_own_one_time_key_packages(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await st.store_key_packages("bob", "d1", [b"old-1", b"old-2"], b"old-last", 500)
    await st.store_key_packages("carol", "d1", [b"carol-1"], b"carol-last", 500)
    assert await st.withdraw_key_packages("bob", "d1") == 2
    assert await st.count_key_packages("bob", "d1") == 0
    assert await st.count_key_packages("carol", "d1") == 1, "another device's stock stays"
    # Nothing one-time left: a claim gets the last resort until the next upload replaces it.
    got = await st.claim_key_packages("bob", ("alice", "d1"))
    assert [c.key_package for c in got] == [b"old-last"]
    await st.store_key_packages("bob", "d1", [b"new-1"], b"new-last", 500)
    got = await st.claim_key_packages("bob", ("alice", "d1"))
    assert [c.key_package for c in got] == [b"new-1"]
    got = await st.claim_key_packages("bob", ("alice", "d1"))
    assert [c.key_package for c in got] == [b"new-last"]
    assert await st.withdraw_key_packages("bob", "d1") == 0, "withdrawing twice is harmless"
    with pytest.raises(UnknownAccount):
        await st.withdraw_key_packages("bob", "no-such-device")


async def test_key_package_claimed_once_under_concurrent_claims(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    kps = [b"kp-%03d" % i for i in range(20)]
    assert await st.store_key_packages("bob", "d1", kps, b"last-resort", 500) == 20
    claims = await asyncio.gather(*(
        st.claim_key_packages("bob", (USERS[i % 3], "dx")) for i in range(30)
    ))
    got = [c[0].key_package for c in claims]
    one_time = [k for k in got if k != b"last-resort"]
    assert sorted(one_time) == kps, "each one-time KeyPackage exactly once"
    assert got.count(b"last-resort") == 10, "then the last resort, never consumed"
    assert await st.count_key_packages("bob", "d1") == 0
    assert await st.count_key_packages("alice", "d1") is None, "never uploaded"
    assert claims[-1][0].remaining == 0
    # The claimer's own device is excluded.
    assert await st.claim_key_packages("bob", ("bob", "d1")) == []
    with pytest.raises(RoomRefused) as exc:
        await st.store_key_packages("bob", "d1", [b"k"] * 3, None, 2)
    assert exc.value.code == "keypackages_full"


async def test_read_positions_and_deletion_once_every_member_read(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await _room_of_three(st)
    for i in range(5):
        await _cb(st.room_send, _send("alice", 1, f"r{i}"))  # seqs 2..6
    # bob and carol joined at the add (seq 1): it is read by all once alice read it.
    assert await st.room_ack(ROOM, "alice", "d1", 6) == 1
    assert await st.room_ack(ROOM, "bob", "d1", 4) == 0, "carol has read nothing since"
    assert await st.room_ack(ROOM, "carol", "d1", 3) == 2, "seq 2..3 read by all"
    # A read position never moves back, and never past the room's last message.
    assert await st.room_ack(ROOM, "carol", "d1", 2) == 0
    assert await st.room_ack(ROOM, "carol", "d1", 10**9) == 1  # min is bob's 4 now
    positions = {p.room_id: p.read_seq for p in await st.room_positions("carol", "d1")}
    assert positions == {ROOM: 6}
    left = await st.room_read(ROOM, "bob", "d1", 0, 100)
    assert [s for s, _ in left.frames] == [5, 6]
    assert await _scalar(st, "SELECT count(*) FROM room_messages") == 2
    # One row per message, one read position per member device: nothing per recipient.
    assert await _scalar(st, "SELECT count(*) FROM room_members") == 3


async def test_removed_device_reads_up_to_its_removal_then_is_forgotten(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await _room_of_three(st)
    await _cb(st.room_send, _send("alice", 1, "before"))  # 2
    out: CommitOutcome = await _cb(st.room_commit, _commit(
        "alice", 1, "rm", removes=(("carol", "d1"),)))  # 3
    assert ("carol", "d1") in out.message.members, "the removed device gets the commit"
    after: RoomStored = await _cb(st.room_send, _send("alice", 2, "after"))  # 4
    assert ("carol", "d1") not in after.members
    (pos,) = await st.room_positions("carol", "d1")
    assert pos.until_seq == 3
    assert [s for s, _ in await st.room_replay(ROOM, pos.read_seq, pos.until_seq, 100)] == [2, 3]
    with pytest.raises(RoomRefused):
        await _cb(st.room_send, _send("carol", 2, "x"))
    await st.room_ack(ROOM, "carol", "d1", 3)
    assert await st.room_positions("carol", "d1") == []


async def test_rooms_of_lists_a_device_s_current_rooms_by_id(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await _room_of_three(st)
    other = "room:" + "cd" * 16
    await st.create_room(other, "carol", "d1", None, 0)
    with pytest.raises(RoomRefused) as exc:
        await st.create_room(other, "alice", "d1", None, 0)
    assert exc.value.code == "room_exists"
    summaries = await st.rooms_of("carol", "d1", 10)
    assert [(r.room_id, r.epoch, r.latest_seq) for r in summaries] == [(ROOM, 1, 1), (other, 0, 0)]
    assert [r.room_id for r in await st.rooms_of("carol", "d1", 1)] == [ROOM]
    assert [r.room_id for r in await st.rooms_of("alice", "d1", 10)] == [ROOM]
    # A removed device no longer lists the room.
    await _cb(st.room_commit, _commit("alice", 1, "rm", removes=(("carol", "d1"),)))
    assert [r.room_id for r in await st.rooms_of("carol", "d1", 10)] == [other]


async def test_a_removed_device_added_again_starts_over_from_the_commit_that_adds_it(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await _room_of_three(st)
    await _cb(st.room_commit, _commit("alice", 1, "rm", removes=(("carol", "d1"),)))  # 2
    await _cb(st.room_send, _send("alice", 2, "while-out"))  # 3
    latest = await st.latest_inbox_seq("carol", "d1")
    back: CommitOutcome = await _cb(st.room_commit, _commit(
        "alice", 2, "re-add", adds=(("carol", "d1"),), welcome_b64=CT))  # 4
    assert back.epoch == 3 and back.message.server_seq == 4
    # Its Welcome takes the device's next globalInboxSeq, like any frame to its inbox.
    assert [(w.user_id, w.global_seq) for w in back.welcomes] == [("carol", latest + 1)]
    assert await st.latest_inbox_seq("carol", "d1") == latest + 1
    (pos,) = await st.room_positions("carol", "d1")
    assert (pos.read_seq, pos.until_seq) == (4, None), "one position, reset, not a second row"
    assert await _scalar(st, "SELECT count(*) FROM room_members") == 3
    after: RoomStored = await _cb(st.room_send, _send("carol", 3, "hello-again"))  # 5
    assert ("carol", "d1") in after.members
    frames = await st.room_read(ROOM, "carol", "d1", 0, 100)
    assert [s for s, _ in frames.frames] == [5], "nothing from while it was out"


async def test_writes_to_a_room_that_does_not_exist_are_refused(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    ghost = "room:" + "ef" * 16
    for op in (
        _cb(st.room_send, RoomSendRequest(
            room_id=ghost, user="alice", device="d1", epoch=0, message_id="m", idempotency_key="k",
            content_type="text", client_created_at_ms=0, ciphertext_b64=CT)),
        _cb(st.room_commit, _commit("alice", 0, "c", room_id=ghost)),
        st.room_ack(ghost, "alice", "d1", 1),
        st.audit_append(ghost, "alice", "d1", AuditAppendage(b"e", 0, bytes(32), bytes(32))),
        st.set_room_token(ghost, "alice", "d1", None, None),
        st.room_state(ghost, "alice", "d1"),
    ):
        with pytest.raises(RoomRefused) as exc:
            await op
        assert exc.value.code == "unknown_room"
    # A room message's idempotency key cannot be reused for a commit.
    await _room_of_three(st)
    await _cb(st.room_send, _send("alice", 1, "same-key"))
    with pytest.raises(RoomRefused) as dup:
        await _cb(st.room_commit, _commit("alice", 1, "same-key"))
    assert dup.value.code == "bad_request"


async def test_audit_chain_only_grows_by_a_linked_entry(room_storage: SqliteStorage) -> None:
    st = room_storage
    await st.create_room(ROOM, "alice", "d1", None, 0)

    def entry(i: int, prev: bytes) -> AuditAppendage:
        raw = b"entry-%d" % i
        return AuditAppendage(raw, i, prev, hashlib.sha256(raw).digest())

    e0 = entry(0, bytes(32))
    assert await st.audit_append(ROOM, "alice", "d1", e0) == 0
    for bad in (entry(0, bytes(32)), entry(1, bytes(32)), entry(2, e0.entry_hash)):
        with pytest.raises(RoomRefused) as exc:
            await st.audit_append(ROOM, "alice", "d1", bad)
        assert exc.value.code == "audit_conflict" and exc.value.details["nextIndex"] == 1
    e1 = entry(1, e0.entry_hash)
    # With a commit: a broken link refuses the whole commit (nothing stored).
    with pytest.raises(RoomRefused):
        await _cb(st.room_commit, _commit("alice", 0, "c-bad", audit=entry(1, bytes(32))))
    out: CommitOutcome = await _cb(st.room_commit, _commit("alice", 0, "c-ok", audit=e1))
    assert out.epoch == 1 and out.message.server_seq == 1
    assert await st.audit_get(ROOM, "alice", "d1", -1, 10) == [e0.entry, e1.entry]
    with pytest.raises(RoomRefused) as exc:
        await st.audit_get(ROOM, "bob", "d1", -1, 10)
    assert exc.value.code == "not_member"


def _signed(index: int, prev: bytes | None, action: AuditAction, user: str,
            subjects: tuple[tuple[str, str], ...] = ()) -> AuditAppendage:
    raw = make_entry(
        signing_key=ALICE, suite=1, prev=prev, room_id=ROOM, epoch=1,
        epoch_authenticator=auth(1), action=action, actor_user_id=user,
        actor_device_id="d1", actor_leaf_index=0, now_ms=NOW, subjects=subjects,
    ).encode()
    return AuditAppendage(raw, index, bytes(32) if prev is None else entry_hash(prev),
                          entry_hash(raw))


async def test_only_the_rooms_creator_changes_its_settings_each_with_its_audit_entry(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await _room_of_three(st)
    state = await st.room_state(ROOM, "bob", "d1")
    assert (state.admin, state.residency, state.recorder) == (None, None, False)
    created = _signed(0, None, AuditAction.ROOM_CREATED, "alice")
    await st.audit_append(ROOM, "alice", "d1", created)
    state = await st.room_state(ROOM, "bob", "d1")
    assert state.admin == "alice"

    def setting(index: int, prev: bytes, user: str, name: str, value: str) -> AuditAppendage:
        return _signed(index, prev, AuditAction.ROOM_SETTING, user, ((name, value),))

    # A member who is not the admin is refused, and nothing is stored.
    with pytest.raises(RoomRefused) as exc:
        await st.set_room_setting(ROOM, "bob", "d1", "residency", "eu",
                                  setting(1, created.entry, "bob", "residency", "eu"))
    assert exc.value.code == "not_admin"
    with pytest.raises(RoomRefused) as exc:
        await st.set_room_setting(ROOM, "nobody", "d1", "residency", "eu",
                                  setting(1, created.entry, "alice", "residency", "eu"))
    assert exc.value.code == "not_member"
    # The admin's change goes in with its entry, linked to the chain's head, or not at all.
    with pytest.raises(RoomRefused) as exc:
        await st.set_room_setting(ROOM, "alice", "d1", "residency", "eu",
                                  setting(2, created.entry, "alice", "residency", "eu"))
    assert exc.value.code == "audit_conflict"
    assert (await st.room_state(ROOM, "carol", "d1")).residency is None
    eu = setting(1, created.entry, "alice", "residency", "eu")
    await st.set_room_setting(ROOM, "alice", "d1", "residency", "eu", eu)
    on = setting(2, eu.entry, "alice", "recorder", "on")
    await st.set_room_setting(ROOM, "alice", "d1", "recorder", "on", on)
    state = await st.room_state(ROOM, "carol", "d1")
    assert (state.residency, state.recorder) == ("eu", True)
    cleared = setting(3, on.entry, "alice", "residency", "none")
    await st.set_room_setting(ROOM, "alice", "d1", "residency", "none", cleared)
    state = await st.room_state(ROOM, "carol", "d1")
    assert (state.residency, state.recorder) == (None, True)
    assert await st.audit_get(ROOM, "bob", "d1", -1, 10) == [
        created.entry, eu.entry, on.entry, cleared.entry]


async def test_token_is_kept_as_its_hash_only(room_storage: SqliteStorage) -> None:
    st = room_storage
    await _room_of_three(st)
    token = "T0ken-" + "x" * 37
    h = token_hash(Secret(token.encode()))
    assert h == hashlib.sha256(b"sottovoce room token v1" + token.encode()).digest()
    await st.set_room_token(ROOM, "bob", "d1", h, None)
    assert await st.group_info_by_token(h) == (ROOM, 1, b"gi")
    assert await st.group_info_by_token(hashlib.sha256(b"other").digest()) is None
    assert await _scalar(st, "SELECT token_hash FROM rooms") == h
    blob = await _stored_bytes(st)
    assert token.encode() not in blob and (h in blob or h.hex().encode() in blob)
    # External commit by the token: only for exactly the sender, only with the right hash,
    # only an external commit the handler checked against this epoch's GroupInfo.
    await st.create_account("dave", b"d" * 32, "d1", b"cert-d", 0)
    join = {"adds": (("dave", "d1"),), "token_hash": h, "external": True}
    refused = [
        ("invalid_token", {**join, "token_hash": hashlib.sha256(b"nope").digest(),
                           "checked_epoch": 1}),
        ("invalid_commit", {**join, "external": False, "checked_epoch": 1}),
        ("invalid_commit", {**join, "checked_epoch": None}),
        ("invalid_commit", {**join, "checked_epoch": 0}),
        ("bad_request", {**join, "adds": (("dave", "d1"), ("bob", "d1")), "checked_epoch": 1}),
    ]
    for i, (code, kw) in enumerate(refused):
        with pytest.raises(RoomRefused) as exc:
            await _cb(st.room_commit, _commit("dave", 1, f"ext-bad{i}", **kw))
        assert exc.value.code == code, kw
    assert (await st.room_state(ROOM, "bob", "d1")).epoch == 1  # nothing was stored
    out: CommitOutcome = await _cb(st.room_commit, _commit("dave", 1, "ext1", checked_epoch=1,
                                                           **join))
    assert out.epoch == 2 and ("dave", "d1") not in out.message.members
    await st.set_room_token(ROOM, "bob", "d1", None, None)
    assert await st.group_info_by_token(h) is None


async def test_a_member_resync_changes_no_member_and_members_read_the_group_info(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await _room_of_three(st)
    assert await st.room_group_info(ROOM, "bob", "d1") == (1, b"gi")
    await st.create_account("dave", b"d" * 32, "d1", b"cert-d", 0)
    with pytest.raises(RoomRefused) as exc:
        await st.room_group_info(ROOM, "dave", "d1")
    assert exc.value.code == "not_member"
    with pytest.raises(RoomRefused) as exc:
        await _cb(st.room_commit, _commit("bob", 1, "resync-bad", external=True,
                                          checked_epoch=1, removes=(("carol", "d1"),)))
    assert exc.value.code == "bad_request"
    with pytest.raises(RoomRefused) as exc:
        await _cb(st.room_commit, _commit("bob", 1, "resync-unchecked", external=True))
    assert exc.value.code == "invalid_commit"
    out: CommitOutcome = await _cb(st.room_commit, _commit(
        "bob", 1, "resync", external=True, checked_epoch=1, group_info=b"gi-2"))
    assert out.epoch == 2 and set(out.message.members) == {
        ("alice", "d1"), ("bob", "d1"), ("carol", "d1")
    }
    assert await st.room_group_info(ROOM, "carol", "d1") == (2, b"gi-2")


async def test_revoked_device_is_dropped_from_delivery_and_each_room_gets_a_notice(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await _room_of_three(st)
    await st.store_key_packages("carol", "d1", [b"kp"], b"lr", 500)
    await st.revoke_device("carol", "d1", 1)
    notices: list[RoomStored] = await _cb(st.room_device_revoked, "carol", "d1")
    assert len(notices) == 1
    env = notices[0].envelope
    assert '"removeRequest":{"userId":"carol","deviceId":"d1","reason":"revoked"}' in env
    assert ("carol", "d1") not in notices[0].members
    assert await st.claim_key_packages("carol", None) == []
    msg: RoomStored = await _cb(st.room_send, _send("alice", 1, "after-revoke"))
    assert ("carol", "d1") not in msg.members
    state = await st.room_state(ROOM, "alice", "d1")
    assert ("carol", "d1") in state.members, "still an MLS member until a commit removes it"
    await _cb(st.room_commit, _commit("bob", 1, "rm-carol", removes=(("carol", "d1"),)))
    state = await st.room_state(ROOM, "alice", "d1")
    assert ("carol", "d1") not in state.members


def test_room_events_round_trip_through_their_wire_form() -> None:
    """to_data → from_data is the identity for every room event (what the client sends)."""
    import json

    from sottovoce.protocol import rooms as wire

    m = wire.MemberRef(userId="bob", deviceId="d1")
    token = Secret(b"t" * 43)
    events = [
        wire.KeyPackagesUpload(keyPackages=(b"kp1", b"kp2"), lastResort=b"lr"),
        wire.KeyPackagesWithdraw(),
        wire.KeyPackagesClaim(username="bob"),
        wire.RoomCreate(roomId=ROOM, groupInfo=b"gi"),
        wire.RoomCommit(roomId=ROOM, epoch=3, messageId="m", idempotencyKey="k", commit=b"c",
                        welcome=b"w", adds=(m,), removes=(), groupInfo=b"g", audit=None,
                        token=token),
        wire.RoomSend(roomId=ROOM, epoch=3, messageId="m", idempotencyKey="k",
                      contentType="text", clientCreatedAtMs=5, ciphertext=b"x"),
        wire.RoomAck(roomId=ROOM, upToServerSeq=9),
        wire.RoomSync(roomId=ROOM, afterServerSeq=2),
        wire.RoomInfo(roomId=ROOM),
        wire.RoomsList(),
        wire.RoomTokenSet(roomId=ROOM, token=token, audit=b"a"),
        wire.RoomTokenRevoke(roomId=ROOM, audit=None),
        wire.GroupInfoGet(token=token),
        wire.JoinRequest(token=token, keyPackage=b"kp"),
        wire.AuditAppend(roomId=ROOM, entry=b"e"),
        wire.AuditGet(roomId=ROOM, afterIndex=-1),
        wire.RoomCallGrant(roomId=ROOM, callId=b"c" * 16),
        wire.RoomSettingSet(roomId=ROOM, setting="residency", value="eu", audit=b"a"),
    ]
    assert {type(e).name for e in events} == set(wire.ROOM_CLIENT_EVENTS)
    for ev in events:
        data = json.loads(ev.to_frame("r1"))["data"]
        assert type(ev).from_data(data) == ev
    assert "t" * 43 not in repr(events[3]), "tokens are Secrets: redacted in reprs"
    env = {
        "protocol": "ksmpv3", "conversationId": ROOM, "messageId": "srv-1", "senderUserId": "bob",
        "senderDeviceId": "d1", "recipientUserId": "", "ciphertext": "AA==",
        "contentType": "system", "clientCreatedAtMs": 0, "serverSeq": 4,
        "serverReceivedAtMs": 1, "idempotencyKey": "srv-1", "ephemeral": False, "roomEpoch": 2,
        "roomKind": "notice",
        "removeRequest": {"userId": "bob", "deviceId": "d1", "reason": "revoked"},
    }
    parsed = wire.parse_room_frame({"envelope": env})
    assert parsed.roomId == ROOM and parsed.serverSeq == 4 and parsed.removeRequest == m
    assert parsed.removeReason == "revoked" and parsed.envelope.ciphertext == b"\x00"


async def test_a_room_holds_a_bounded_number_of_pending_join_requests(
    room_storage: SqliteStorage,
) -> None:
    st = room_storage
    await _room_of_three(st)
    h = hashlib.sha256(b"join token").digest()
    await st.set_room_token(ROOM, "alice", "d1", h, None)
    askers = [f"asker{i:02d}" for i in range(MAX_PENDING_JOIN_REQUESTS + 1)]
    for name in askers:
        await st.create_account(name, b"k" * 32, "d1", b"cert", 0)
    for name in askers[:-1]:
        notice: RoomStored = await _cb(st.room_join_request, h, name, "d1", CT)
        assert f'"joinRequest":{{"userId":"{name}","deviceId":"d1"}}' in notice.envelope
    refusals = [(askers[0], "join_request_pending"), (askers[-1], "join_requests_full")]
    for name, code in refusals:
        with pytest.raises(RoomRefused) as exc:
            await _cb(st.room_join_request, h, name, "d1", CT)
        assert exc.value.code == code
    # Adding a requester answers its request: the slot is free again.
    await _cb(st.room_commit, _commit("alice", 1, "add-asker", adds=((askers[0], "d1"),),
                                      welcome_b64=CT))
    notice = await _cb(st.room_join_request, h, askers[-1], "d1", CT)
    assert askers[-1] in notice.envelope
