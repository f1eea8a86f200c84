"""Storage rules checked in-process on both adapters (storage/base.py).

Every test runs against SQLite and PostgreSQL (``backend`` fixture; the
PostgreSQL runs get a fresh schema each and skip when the server is
unreachable). SQLite-only mechanics (WAL truncation) and PostgreSQL-only
ones (several nodes on one database, connection loss) are at the end.
"""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from msgspec.structs import replace

from sottovoce.server.errors import StorageError
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage.base import (
    DeviceExists,
    PrekeysFull,
    SendOutcome,
    SendRequest,
    Storage,
    UnknownAccount,
    UsernameTaken,
    envelope_one,
    received_part,
)
from sottovoce.server.storage.quota import InboxFull, InboxLimits
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.integration import pgschema

CT = base64.b64encode(b"\x07" * 200).decode()

Factory = Callable[..., Storage]  # keyword arguments go to the adapter (e.g. limits)


def _req(i: int, key: str | None = None, *, conv: str = "dm:alice:bob",
         sender: tuple[str, str] = ("alice", "d1"),
         targets: list[tuple[str, str]] | None = None) -> SendRequest:
    return SendRequest(
        sender_user=sender[0], sender_device=sender[1], conversation_id=conv,
        message_id=f"m{i}", idempotency_key=key or f"k{i}", recipient_user="bob",
        content_type="text", client_created_at_ms=0,
        targets=[(u, d, CT) for u, d in (targets or [("bob", "d1")])],
    )


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """A factory of storages that all share one database (a reopen, or a second node)."""
    log = JsonLogger(io.StringIO())
    if request.param == "sqlite":
        yield lambda **kw: SqliteStorage(tmp_path / "db.sqlite3", logger=log, **kw)
        return
    reason = pgschema.unreachable()
    if reason is not None:
        pytest.skip(reason)
    from sottovoce.server.storage.postgres import PostgresStorage

    with pgschema.fresh_schema() as dsn:
        yield lambda **kw: PostgresStorage(dsn, logger=log, pool_size=4, **kw)


async def _open(factory: Factory, *, accounts: bool = True, **kw: object) -> Storage:
    st = factory(**kw)
    await st.open()
    if accounts:
        await st.create_account("alice", b"a" * 32, "d1", b"cert-a", 0)
        await st.create_account("bob", b"b" * 32, "d1", b"cert-b", 0)
    return st


def _submit(st: Storage, reqs: list[SendRequest]
            ) -> list[asyncio.Future[SendOutcome]]:
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
    return futs


async def _append_all(st: Storage, reqs: list[SendRequest]) -> list[SendOutcome]:
    return list(await asyncio.gather(*_submit(st, reqs)))


async def _closing(st: Storage, body: Callable[[], Awaitable[None]]) -> None:
    try:
        await body()
    finally:
        await st.close()


# --- delivery rules ----------------------------------------------------------------------


async def test_retry_inside_one_batch_is_a_duplicate_not_a_second_row(backend: Factory) -> None:
    st = await _open(backend)
    try:
        # Queued together, these land in one group commit.
        out = await _append_all(st, [_req(1), _req(2), _req(3, key="k1"), _req(4)])
        assert [o.duplicate for o in out] == [False, False, True, False]
        assert out[2].server_seq == out[0].server_seq and out[2].message_id == "m1"
        assert out[2].frames == ()
        assert [o.server_seq for o in out if not o.duplicate] == [1, 2, 3]
        rows = await st.read_inbox("bob", "d1", 0, 100)
        assert [seq for seq, _ in rows] == [1, 2, 3]
        assert await st.latest_inbox_seq("bob", "d1") == 3
    finally:
        await st.close()


async def test_retry_in_a_later_batch_returns_the_first_outcome(backend: Factory) -> None:
    st = await _open(backend)
    try:
        (first,) = await _append_all(st, [_req(1)])
        (again,) = await _append_all(st, [_req(99, key="k1")])
        assert again.duplicate and again.frames == ()
        assert (again.server_seq, again.message_id, again.received_at_ms) == (
            first.server_seq, "m1", first.received_at_ms)
        assert len(await st.read_inbox("bob", "d1", 0, 100)) == 1
    finally:
        await st.close()


async def test_envelope_carries_the_assigned_sequences(backend: Factory) -> None:
    st = await _open(backend)
    try:
        (o,) = await _append_all(st, [_req(1)])
        ((g, env),) = await st.read_inbox("bob", "d1", 0, 10)
        assert g == o.frames[0].global_seq == 1
        # Byte for byte the envelope SendRequest builds (PostgreSQL fills in the
        # serverSeq in SQL; replay and live delivery must not differ).
        assert env == o.frames[0].envelope == _req(1).envelope(CT, o.server_seq,
                                                                o.received_at_ms)
        assert f'"serverSeq":{o.server_seq},' in env
        assert f'"serverReceivedAtMs":{o.received_at_ms},' in env
        assert CT in env
    finally:
        await st.close()


async def test_sequences_per_conversation_and_per_device(backend: Factory) -> None:
    st = await _open(backend)
    try:
        await st.add_device("bob", "d2", b"cert-b2", 0)
        both = [("bob", "d1"), ("bob", "d2")]
        out = await _append_all(st, [
            _req(1, targets=both),
            _req(2, conv="dm:alice:carol", targets=[("bob", "d2")]),
            _req(3, targets=both),
        ])
        assert [o.server_seq for o in out] == [1, 1, 2]
        assert [[f.global_seq for f in o.frames] for o in out] == [[1, 1], [2], [2, 3]]
        assert await st.latest_inbox_seq("bob", "d2") == 3
        assert await st.latest_inbox_seq("bob", "d1") == 2
        assert await st.latest_inbox_seq("bob", "nope") == 0
    finally:
        await st.close()


async def test_unknown_device_fails_alone(backend: Factory) -> None:
    st = await _open(backend)
    try:
        futs = _submit(st, [_req(1), _req(2, targets=[("bob", "ghost")]), _req(3)])
        res = await asyncio.gather(*futs, return_exceptions=True)
        assert isinstance(res[1], UnknownAccount)
        assert [r.server_seq for r in (res[0], res[2]) if isinstance(r, SendOutcome)] == [1, 2]
    finally:
        await st.close()


async def test_sequences_survive_reopen(backend: Factory) -> None:
    st = await _open(backend)
    await _append_all(st, [_req(i) for i in range(5)])
    assert await st.ack_read("bob", "d1", 5) == 5
    await st.close()
    st2 = await _open(backend, accounts=False)
    try:
        (o,) = await _append_all(st2, [_req(9)])
        assert o.server_seq == 6 and o.frames[0].global_seq == 6
        (dup,) = await _append_all(st2, [_req(10, key="k0")])
        assert dup.duplicate and dup.server_seq == 1
    finally:
        await st2.close()


async def test_ack_read_deletes_up_to_the_seq_and_replay_pages(backend: Factory) -> None:
    st = await _open(backend)
    try:
        await _append_all(st, [_req(i) for i in range(6)])
        assert [s for s, _ in await st.read_inbox("bob", "d1", 2, 2)] == [3, 4]
        assert await st.ack_read("bob", "d1", 4) == 4
        assert await st.ack_read("bob", "d1", 4) == 0
        assert [s for s, _ in await st.read_inbox("bob", "d1", 0, 100)] == [5, 6]
        assert await st.ack_read("nobody", "d1", 4) == 0
        assert await st.read_inbox("nobody", "d1", 0, 10) == []
    finally:
        await st.close()


async def test_expiry_deletes_the_old_prefix_only(backend: Factory) -> None:
    st = await _open(backend)
    try:
        old = await _append_all(st, [_req(i) for i in range(3)])
        cutoff = max(o.received_at_ms for o in old) + 1
        while True:  # the next send must be received after the cutoff (ms clock)
            await asyncio.sleep(0.005)
            (new,) = await _append_all(st, [_req(7)])
            if new.received_at_ms >= cutoff:
                break
            await st.ack_read("bob", "d1", new.frames[0].global_seq)
        assert await st.expire(cutoff) == 3
        assert [seq for seq, _ in await st.read_inbox("bob", "d1", 0, 10)] == [
            new.frames[0].global_seq]
        assert await st.expire(cutoff) == 0
        # The idempotency records expired with them: k0 is a new send now.
        (again,) = await _append_all(st, [_req(0)])
        assert not again.duplicate
    finally:
        await st.close()


async def test_disappearing_frames_are_never_replayed_and_the_sweep_drops_them(
    backend: Factory,
) -> None:
    st = await _open(backend)
    try:
        now = time.time_ns() // 1_000_000
        gone, later, plain = _req(1), _req(2), _req(3)
        gone.expires_at_ms, later.expires_at_ms = now - 1, now + 3_600_000
        await _append_all(st, [gone, later, plain])
        # The expired frame is not replayed, even before a sweep deleted it.
        assert [s for s, _ in await st.read_inbox("bob", "d1", 0, 10)] == [2, 3]
        assert await st.drop_expired(now) == 1
        assert await st.drop_expired(now) == 0
        assert await st.drop_expired(now + 3_600_000) == 1
        assert [s for s, _ in await st.read_inbox("bob", "d1", 0, 10)] == [3]
        assert await st.ack_read("bob", "d1", 3) == 1  # only the plain one was left
    finally:
        await st.close()


# --- accounts, devices, prekeys ----------------------------------------------------------


async def test_accounts_and_devices(backend: Factory) -> None:
    st = await _open(backend)
    try:
        with pytest.raises(UsernameTaken):
            await st.create_account("alice", b"x" * 32, "d9", b"c", 0)
        with pytest.raises(DeviceExists):
            await st.add_device("alice", "d1", b"c", 0)
        with pytest.raises(UnknownAccount):
            await st.add_device("carol", "d1", b"c", 0)
        await st.add_device("alice", "d2", b"cert-a2", 5)
        await st.set_push_endpoint("alice", "d2", "https://push.example/x")
        rec = await st.get_account("alice")
        assert rec is not None and rec.account_key == b"a" * 32
        assert [(d.device_id, d.certificate, d.revoked, d.push_endpoint) for d in rec.devices] == [
            ("d1", b"cert-a", False, None), ("d2", b"cert-a2", False, "https://push.example/x")]
        assert await st.get_account("carol") is None
    finally:
        await st.close()


async def test_revocation_drops_the_inbox_prekeys_and_push(backend: Factory) -> None:
    st = await _open(backend)
    try:
        await st.add_device("bob", "d2", b"cert-b2", 0)
        await st.store_prekeys("bob", "d2", [("p1", b"k1")], b"fb", 10)
        await st.set_push_endpoint("bob", "d2", "https://push.example/y")
        await _append_all(st, [_req(1, targets=[("bob", "d1"), ("bob", "d2")])])
        await st.revoke_device("bob", "d2", 7)
        rec = await st.get_account("bob")
        assert rec is not None
        d2 = rec.device("d2")
        assert d2 is not None and d2.revoked and d2.push_endpoint is None
        assert [d.device_id for d in rec.active()] == ["d1"]
        assert await st.read_inbox("bob", "d2", 0, 10) == []
        assert await st.count_prekeys("bob", "d2") == 0
        await st.store_prekeys("bob", "d1", [], b"fb1", 10)
        assert [(c.device_id, c.prekey) for c in await st.claim_prekeys("bob", None)] == [
            ("d1", b"fb1")]
        with pytest.raises(UnknownAccount):
            await st.revoke_device("bob", "ghost", 7)
    finally:
        await st.close()


async def test_deleting_an_account_leaves_a_tombstone_and_drops_what_its_devices_held(
    backend: Factory,
) -> None:
    st = await _open(backend)
    try:
        await st.add_device("bob", "d2", b"cert-b2", 0)
        await st.add_device("bob", "d3", b"cert-b3", 0)
        await st.revoke_device("bob", "d3", 3)
        await st.store_prekeys("bob", "d1", [("p1", b"k1")], b"fb", 10)
        await st.set_push_endpoint("bob", "d2", "https://push.example/z")
        await _append_all(st, [_req(1, targets=[("bob", "d1"), ("bob", "d2")])])
        # Only the devices it revoked now: d3 was revoked before.
        assert await st.delete_account("bob", 9) == ("d1", "d2")
        rec = await st.get_account("bob")
        assert rec is not None and rec.deleted and rec.active() == ()
        assert all(d.push_endpoint is None for d in rec.devices)
        assert await st.read_inbox("bob", "d1", 0, 10) == []
        assert await st.count_prekeys("bob", "d1") == 0
        assert await st.claim_prekeys("bob", None) == []
        with pytest.raises(UsernameTaken):  # the name is never handed out again
            await st.create_account("bob", b"x" * 32, "d1", b"c", 0)
        with pytest.raises(UnknownAccount):
            await st.add_device("bob", "d4", b"c", 0)
        with pytest.raises(UnknownAccount):
            await st.delete_account("bob", 10)
        with pytest.raises(UnknownAccount):
            await st.delete_account("carol", 10)
        rec_a = await st.get_account("alice")  # other accounts are untouched
        assert rec_a is not None and not rec_a.deleted
    finally:
        await st.close()


async def test_prekeys_one_time_then_fallback(backend: Factory) -> None:
    st = await _open(backend)
    try:
        assert await st.store_prekeys("bob", "d1", [("a", b"ka"), ("b", b"kb")], b"fb", 3) == 2
        with pytest.raises(PrekeysFull):
            await st.store_prekeys("bob", "d1", [("c", b"kc"), ("d", b"kd")], None, 3)
        with pytest.raises(UnknownAccount):
            await st.store_prekeys("bob", "ghost", [("c", b"kc")], None, 3)
        assert await st.count_prekeys("bob", "d1") == 2
        got = [await st.claim_prekeys("bob", ("alice", "d1")) for _ in range(3)]
        assert [(c[0].prekey, c[0].remaining, c[0].certificate) for c in got] == [
            (b"ka", 1, b"cert-b"), (b"kb", 0, b"cert-b"), (b"fb", 0, b"cert-b")]
        # The requesting device itself is left out.
        assert await st.claim_prekeys("bob", ("bob", "d1")) == []
        assert await st.claim_prekeys("carol", None) == []
    finally:
        await st.close()


async def test_a_limited_claim_gets_the_fallback_and_consumes_nothing(backend: Factory) -> None:
    st = await _open(backend)
    try:
        await st.store_prekeys("bob", "d1", [("a", b"ka"), ("b", b"kb")], b"fb", 3)
        got = await st.claim_prekeys("bob", ("alice", "d1"), one_time=False)
        assert [(c.prekey, c.remaining) for c in got] == [(b"fb", 2)]
        assert await st.count_prekeys("bob", "d1") == 2
        assert (await st.claim_prekeys("bob", ("alice", "d1")))[0].prekey == b"ka"
    finally:
        await st.close()


async def test_concurrent_claims_never_hand_out_a_key_twice(backend: Factory) -> None:
    st = await _open(backend)
    try:
        keys = [(f"k{i:03}", b"key-%03d" % i) for i in range(40)]
        await st.store_prekeys("bob", "d1", keys, b"fallback", 100)
        claims = await asyncio.gather(*(st.claim_prekeys("bob", None) for _ in range(50)))
        handed = [c[0].prekey for c in claims]
        one_time = [k for k in handed if k != b"fallback"]
        assert len(one_time) == len(set(one_time)) == 40
        assert handed.count(b"fallback") == 10
        assert await st.count_prekeys("bob", "d1") == 0
    finally:
        await st.close()


# --- inbox quotas (storage/quota.py) ----------------------------------------------------

#: Small quotas: 2 frames from a stranger, 4 from a contact, 6 in all (bytes far away).
SMALL = InboxLimits(device_messages=6, device_bytes=10**9, contact_messages=4,
                    contact_bytes=10**9, stranger_messages=2, stranger_bytes=10**9)


def _from(sender: str, i: int, to: str = "bob", device: str = "d1") -> SendRequest:
    low, high = sorted((sender, to))
    req = _req(i, conv=f"dm:{low}:{high}", sender=(sender, "d1"), targets=[(to, device)])
    req.recipient_user = to
    return req


async def _refused(st: Storage, req: SendRequest) -> InboxFull:
    with pytest.raises(InboxFull) as info:
        await _append_all(st, [req])
    return info.value


async def test_inbox_quotas_stranger_then_contact_then_device(backend: Factory) -> None:
    st = await _open(backend, limits=SMALL)
    try:
        await st.create_account("carol", b"c" * 32, "d1", b"cert-c", 0)
        await _append_all(st, [_from("alice", 1), _from("alice", 2)])
        err = await _refused(st, _from("alice", 3))
        assert (err.code, err.retryable, err.retry_after_ms > 0) == ("inbox_full", True, True)
        assert err.details == {"scope": "stranger", "userId": "bob", "deviceId": "d1"}
        # Once bob has written to alice, she is a contact: 4 may wait.
        await _append_all(st, [_from("bob", 10, to="alice")])
        await _append_all(st, [_from("alice", 4), _from("alice", 5)])
        assert (await _refused(st, _from("alice", 6))).scope == "contact"
        # Carol is still a stranger; then the device is full for everyone.
        await _append_all(st, [_from("carol", 20)])
        await _append_all(st, [_from("carol", 21)])
        assert (await _refused(st, _from("carol", 22))).scope == "device"
        # A retry of a stored send is answered with its ack, full or not.
        (dup,) = await _append_all(st, [_from("alice", 1)])
        assert dup.duplicate
        # Nothing of a refused send was stored; reading makes room.
        assert len(await st.read_inbox("bob", "d1", 0, 100)) == 6
        assert await st.ack_read("bob", "d1", 3) == 3  # three of alice's
        await _append_all(st, [_from("alice", 7), _from("alice", 8), _from("alice", 9)])
        assert (await _refused(st, _from("alice", 11))).scope == "device"
    finally:
        await st.close()


async def test_inbox_quota_counts_bytes_and_one_batch_cannot_overshoot(backend: Factory) -> None:
    one = len(_from("alice", 1).envelope(CT, 1, 1_700_000_000_000))
    limits = InboxLimits(device_messages=100, device_bytes=10**9, contact_messages=100,
                         contact_bytes=10**9, stranger_messages=100,
                         stranger_bytes=3 * one + one // 2)
    st = await _open(backend, limits=limits)
    try:
        # Queued together (one group commit): the fourth passes the byte quota alone.
        futs = _submit(st, [_from("alice", i) for i in range(1, 6)])
        res = await asyncio.gather(*futs, return_exceptions=True)
        assert [type(r).__name__ for r in res] == ["SendOutcome"] * 3 + ["InboxFull"] * 2
        assert len(await st.read_inbox("bob", "d1", 0, 100)) == 3
    finally:
        await st.close()


async def test_a_run_with_a_fan_out_and_a_retry_counts_each_stored_frame_once(
    backend: Factory,
) -> None:
    limits = InboxLimits(device_messages=100, device_bytes=10**9, contact_messages=100,
                         contact_bytes=10**9, stranger_messages=3, stranger_bytes=10**9)
    st = await _open(backend, limits=limits)
    try:
        await st.add_device("bob", "d2", b"cert-b2", 0)
        both = [("bob", "d1"), ("bob", "d2")]
        # Queued together: the retry sends the run down the careful path, which must undo
        # what the run had counted before it counts each send again.
        out = await _append_all(st, [_req(1), _req(2, targets=both), _req(3, key="k1"),
                                     _req(4)])
        assert [o.duplicate for o in out] == [False, False, True, False]
        assert [len(o.frames) for o in out] == [1, 2, 0, 1]
        assert [f.global_seq for f in out[1].frames] == [2, 1]
        # bob/d1 holds 3 of alice's frames (her stranger quota), bob/d2 one: two more fit.
        assert (await _refused(st, _req(5))).scope == "stranger"
        await _append_all(st, [_req(6, targets=[("bob", "d2")])])
        await _append_all(st, [_req(7, targets=[("bob", "d2")])])
        assert (await _refused(st, _req(8, targets=[("bob", "d2")]))).scope == "stranger"
        assert [s for s, _ in await st.read_inbox("bob", "d2", 0, 10)] == [1, 2, 3]
    finally:
        await st.close()


@pytest.mark.parametrize("ephemeral", [False, True])
def test_the_one_step_envelope_is_the_envelope(ephemeral: bool) -> None:
    req = _req(7)
    req.ephemeral = ephemeral
    req.client_created_at_ms = 1_765_000_000_123
    assert envelope_one(req, CT, 42, received_part(1_765_000_000_456)) == req.envelope(
        CT, 42, 1_765_000_000_456)


async def test_inbox_usage_survives_a_restart_and_expiry_frees_it(backend: Factory) -> None:
    st = await _open(backend, limits=SMALL)
    await _append_all(st, [_from("alice", 1), _from("alice", 2)])
    await st.close()
    st = await _open(backend, accounts=False, limits=SMALL)
    try:
        assert (await _refused(st, _from("alice", 3))).scope == "stranger"
        assert await st.expire(10**15) == 2  # everything is older than that
        await _append_all(st, [_from("alice", 4), _from("alice", 5)])
        # A revoked device's inbox is gone, and so is what counted in it.
        await st.add_device("bob", "d2", b"cert-b2", 0)
        await _append_all(st, [_from("alice", 6, device="d2"), _from("alice", 7, device="d2")])
        await st.revoke_device("bob", "d2", 0)
        assert (await _refused(st, _from("alice", 8))).scope == "stranger"  # d1 still full
    finally:
        await st.close()


# --- SQLite only ---------------------------------------------------------------------------


async def test_wal_is_truncated_under_sustained_writes(tmp_path: Path) -> None:
    # Thousands of frames wait unread: no inbox quota in the way (limits far away).
    far = InboxLimits(device_messages=10**9, device_bytes=10**12, contact_messages=10**9,
                      contact_bytes=10**12, stranger_messages=10**9, stranger_bytes=10**12)
    st = SqliteStorage(tmp_path / "db.sqlite3", logger=JsonLogger(io.StringIO()), limits=far)
    await st.open()
    await st.create_account("alice", b"a" * 32, "d1", b"cert-a", 0)
    await st.create_account("bob", b"b" * 32, "d1", b"cert-b", 0)
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


async def test_the_wal_is_copied_by_work_done_not_at_every_look(tmp_path: Path) -> None:
    """A few commits wait for the next copy (until enough jobs or the longest wait), many
    commits are copied at the next look: a low rate of sends does not meet a checkpoint's
    fsync twice a second."""
    loop = asyncio.get_running_loop()

    async def opened(name: str) -> SqliteStorage:
        st = SqliteStorage(tmp_path / name, logger=JsonLogger(io.StringIO()))
        await st.open()
        await st.create_account("alice", b"a" * 32, "d1", b"cert-a", 0)
        await st.create_account("bob", b"b" * 32, "d1", b"cert-b", 0)
        st.checkpoint_interval_s = 0.01
        st.checkpoint_jobs = 40
        st.checkpoint_max_wait_s = 3600.0
        return st

    async def copied(st: SqliteStorage, seen: int, wait_s: float) -> None:
        deadline = loop.time() + wait_s
        while loop.time() < deadline and st.stats.checkpoints == seen:
            await asyncio.sleep(0.01)

    async def copies_after(st: SqliteStorage, jobs: int, start: int, wait_s: float) -> int:
        seen = st.stats.checkpoints
        for i in range(jobs):
            await _append_all(st, [_req(start + i)])
        await copied(st, seen, wait_s)
        await asyncio.sleep(0.05)  # a second copy, if one were due, would come now
        return st.stats.checkpoints - seen

    st = await opened("many.sqlite3")
    try:
        await asyncio.sleep(0.1)  # the two accounts' jobs: below the threshold
        assert await copies_after(st, 5, 0, wait_s=0.3) == 0  # ~30 looks
        assert await copies_after(st, 40, 5, wait_s=10.0) == 1
    finally:
        await st.close()
    # The longest wait passes: a lone job is copied. A store of its own, whose account
    # jobs are copied first, so no job left over from above shares (or splits) its copy.
    st = await opened("lone.sqlite3")
    try:
        st.checkpoint_max_wait_s = 0.05
        await copied(st, 0, wait_s=10.0)
        assert st.stats.checkpoints == 1
        assert await copies_after(st, 1, 0, wait_s=10.0) == 1
    finally:
        await st.close()


async def test_inbox_rows_carry_an_expiry_only_when_the_send_has_one(tmp_path: Path) -> None:
    """Batches without any expiry are written without the column (NULL, outside the
    partial index); a batch with one, alone or mixed, keeps each row's own value."""
    path = tmp_path / "db.sqlite3"
    st = SqliteStorage(path, logger=JsonLogger(io.StringIO()))
    await st.open()
    await st.create_account("alice", b"a" * 32, "d1", b"cert-a", 0)
    await st.create_account("bob", b"b" * 32, "d1", b"cert-b", 0)
    now = time.time_ns() // 1_000_000
    plain, alone, mixed_plain, mixed = _req(1), _req(2), _req(3), _req(4)
    alone.expires_at_ms, mixed.expires_at_ms = now - 1, now + 3_600_000
    try:
        await _append_all(st, [plain])
        await _append_all(st, [alone])
        await _append_all(st, [mixed_plain, mixed])
    finally:
        await st.close()
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT seq, expires_at FROM inbox ORDER BY seq").fetchall()
        indexed = conn.execute(
            "SELECT count(*) FROM inbox INDEXED BY inbox_expires WHERE expires_at IS NOT NULL"
        ).fetchone()
    finally:
        conn.close()
    assert rows == [(1, None), (2, now - 1), (3, None), (4, now + 3_600_000)]
    assert indexed == (2,)


# --- PostgreSQL only: several nodes on one database, failures -----------------------------


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    reason = pgschema.unreachable()
    if reason is not None:
        pytest.skip(reason)
    with pgschema.fresh_schema() as dsn:
        yield dsn


def _pg(dsn: str, **kw: object) -> Storage:
    from sottovoce.server.storage.postgres import PostgresStorage

    return PostgresStorage(dsn, logger=JsonLogger(io.StringIO()), pool_size=4, **kw)  # type: ignore[arg-type]


async def test_pg_two_nodes_keep_server_seq_strictly_increasing(pg_dsn: str) -> None:
    nodes = [_pg(pg_dsn), _pg(pg_dsn), _pg(pg_dsn)]
    for n in nodes:
        await n.open()
    a = nodes[0]
    await a.create_account("alice", b"a" * 32, "d1", b"cert-a", 0)
    await a.create_account("bob", b"b" * 32, "d1", b"cert-b", 0)
    await a.add_device("bob", "d2", b"cert-b2", 0)
    try:
        both = [("bob", "d1"), ("bob", "d2")]
        # Many small batches from three writers interleave on the same counter rows,
        # plus a second conversation that locks the device rows in a different mix.
        futs: list[asyncio.Future[SendOutcome]] = []
        for round_ in range(20):
            for k, n in enumerate(nodes):
                base = (round_ * 3 + k) * 10
                futs += _submit(n, [_req(base + j, targets=both) for j in range(5)])
                futs += _submit(n, [_req(base + 5 + j, conv="dm:alice:zed",
                                         targets=[("bob", "d2")]) for j in range(5)])
            await asyncio.sleep(0)
        out = await asyncio.gather(*futs)
        main = sorted(o.server_seq for o in out if o.conversation_id == "dm:alice:bob")
        other = sorted(o.server_seq for o in out if o.conversation_id == "dm:alice:zed")
        assert main == list(range(1, 301)) and other == list(range(1, 301))
        for dev, count in (("d1", 300), ("d2", 600)):
            rows = await a.read_inbox("bob", dev, 0, 10_000)
            assert [s for s, _ in rows] == list(range(1, count + 1))
        # Within a device's inbox, serverSeq of one conversation grows with globalInboxSeq.
        rows = await a.read_inbox("bob", "d1", 0, 10_000)
        seqs = [int(env.split('"serverSeq":')[1].split(",")[0]) for _, env in rows]
        assert seqs == sorted(seqs)
    finally:
        for n in nodes:
            await n.close()


async def test_pg_same_idempotency_key_on_two_nodes_is_stored_once(pg_dsn: str) -> None:
    a, b = _pg(pg_dsn), _pg(pg_dsn)
    await a.open()
    await b.open()
    await a.create_account("alice", b"a" * 32, "d1", b"cert-a", 0)
    await a.create_account("bob", b"b" * 32, "d1", b"cert-b", 0)
    try:
        for i in range(10):
            fa = _submit(a, [_req(i, key=f"race{i}")])
            fb = _submit(b, [_req(i, key=f"race{i}")])
            oa, ob = await asyncio.gather(*fa, *fb)
            assert sorted([oa.duplicate, ob.duplicate]) == [False, True]
            assert oa.server_seq == ob.server_seq
        assert len(await a.read_inbox("bob", "d1", 0, 100)) == 10
    finally:
        await a.close()
        await b.close()


async def test_pg_connection_loss_fails_retryably_and_stores_nothing_half(pg_dsn: str) -> None:
    import asyncpg

    app = "sv_kill_" + secrets.token_hex(4)
    st = _pg(pg_dsn + "&application_name=" + app)
    await st.open()
    await st.create_account("alice", b"a" * 32, "d1", b"cert-a", 0)
    await st.create_account("bob", b"b" * 32, "d1", b"cert-b", 0)
    admin = await asyncpg.connect(pg_dsn)
    try:
        await _append_all(st, [_req(0)])
        # Hold the conversation's counter row so the next batch stops mid-transaction
        # (after its idempotency lookup, before any insert) ...
        blocker = admin.transaction()
        await blocker.start()
        await admin.execute("SELECT 1 FROM conversations WHERE conversation_id = 'dm:alice:bob' "
                            "FOR UPDATE")
        futs = _submit(st, [_req(1), _req(2)])
        waiting = 0
        for _ in range(500):
            waiting = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                "AND wait_event_type = 'Lock'", app)
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting == 1
        # ... then cut that session, as a PostgreSQL restart or network loss would.
        assert await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND wait_event_type = 'Lock'", app) == 1
        res = await asyncio.gather(*futs, return_exceptions=True)
        await blocker.rollback()
        assert all(isinstance(r, StorageError) for r in res), res
        assert all(r.retryable and r.code == "unavailable" for r in res
                   if isinstance(r, StorageError))
        assert [s for s, _ in await st.read_inbox("bob", "d1", 0, 100)] == [1]
        # The client retries with the same keys: the writer reconnects, each message
        # is stored exactly once, and the counters did not move for the lost batch.
        retry = await _append_all(st, [_req(1), _req(2)])
        assert [(o.server_seq, o.duplicate) for o in retry] == [(2, False), (3, False)]
        again = await _append_all(st, [_req(1), _req(2)])
        assert [(o.server_seq, o.duplicate) for o in again] == [(2, True), (3, True)]
        assert [s for s, _ in await st.read_inbox("bob", "d1", 0, 100)] == [1, 2, 3]
    finally:
        await admin.close()
        await st.close()


# --- configuration: which storage a server uses -------------------------------------------


def test_database_and_residency_come_from_flags_env_or_file(tmp_path: Path) -> None:
    from sottovoce.errors import UsageError
    from sottovoce.server.app import make_storage
    from sottovoce.server.config import load_config
    from sottovoce.server.storage.postgres import PostgresStorage

    log = JsonLogger(io.StringIO())
    default = load_config({"data_dir": str(tmp_path)}, environ={})
    assert default.database is None and default.residency is None
    assert isinstance(make_storage(default, log), SqliteStorage)
    toml = tmp_path / "s.toml"
    toml.write_text('database = "postgresql://db.internal/sv"\nresidency = "eu-west"\n')
    from_file = load_config(config_file=toml, environ={})
    assert (from_file.database, from_file.residency) == ("postgresql://db.internal/sv", "eu-west")
    env = {"SOTTOVOCE_DATABASE": "postgresql://u:hunter2@h/db", "SOTTOVOCE_RESIDENCY": "ch"}
    from_env = load_config(config_file=toml, environ=env)
    assert (from_env.database, from_env.residency) == ("postgresql://u:hunter2@h/db", "ch")
    assert "hunter2" not in repr(from_env)
    flag = load_config({"database": "postgres://h/db2"}, config_file=toml, environ=env)
    assert flag.database == "postgres://h/db2"
    st = make_storage(flag, log)
    assert isinstance(st, PostgresStorage) and st.dsn == "postgres://h/db2"
    # Both engines get the same tuning from the configuration.
    tuned = {"max_batch": "7", "inbox_stranger_messages": "3"}
    for engine in (make_storage(load_config({**tuned, "data_dir": str(tmp_path)}, environ={}), log),
                   make_storage(load_config({**tuned, "database": "postgres://h/db3"},
                                            environ={}), log)):
        assert isinstance(engine, SqliteStorage | PostgresStorage)
        assert engine.limits.stranger_messages == 3 and engine._max_batch == 7
    with pytest.raises(UsageError, match="postgresql://") as bad:
        load_config({"database": "mysql://u:hunter2@h/db"}, environ={})
    assert "hunter2" not in str(bad.value)
    with pytest.raises(UsageError, match="residency"):
        load_config({"residency": "eu\nwest"}, environ={})


def test_redacted_dsn_hides_only_the_password() -> None:
    from sottovoce.server.storage.postgres import redact_dsn

    assert redact_dsn("postgresql://sv:hunter2@db:5432/sv?sslmode=require") == (
        "postgresql://sv:***@db:5432/sv?sslmode=require")
    assert redact_dsn("postgresql://sv@db/sv") == "postgresql://sv@db/sv"


def test_server_on_postgres_reports_storage_and_residency(pg_dsn: str, tmp_path: Path) -> None:
    from tests.integration.serverproc import ServerProcess

    with ServerProcess(tmp_path / "srv", extra_args=[
        "--database", pg_dsn, "--residency", "eu-west"]) as srv:
        health = srv.health()
        assert (health["storage"], health["residency"]) == ("postgresql", "eu-west")
    assert not (tmp_path / "srv" / "sottovoce.sqlite3").exists()


async def test_blocks_are_kept_per_account_and_a_send_may_store_no_inbox_row(
    backend: Factory,
) -> None:
    st = await _open(backend)
    try:
        await st.set_block("bob", "alice", True)
        await st.set_block("bob", "alice", True)  # idempotent
        await st.set_block("bob", "carol", True)
        rec = await st.get_account("bob")
        assert rec is not None and rec.blocked == frozenset({"alice", "carol"})
        alice = await st.get_account("alice")
        assert alice is not None and alice.blocked == frozenset()
        await st.set_block("bob", "carol", False)
        rec = await st.get_account("bob")
        assert rec is not None and rec.blocked == frozenset({"alice"})
        # What delivery stores for a blocked sender with no other device: no inbox row,
        # and an ordinary outcome (serverSeq and all) for the ack.
        blocked = replace(_req(1), targets=[])
        (outcome,) = await _append_all(st, [blocked])
        assert outcome.server_seq == 1 and not outcome.duplicate
        assert await st.read_inbox("bob", "d1", 0, 10) == []
        await st.delete_account("bob", 5)  # the blocks go with the account
        rec = await st.get_account("bob")
        assert rec is not None and rec.blocked == frozenset()
    finally:
        await st.close()
