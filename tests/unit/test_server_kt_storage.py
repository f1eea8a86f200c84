"""The key-transparency tables (server/storage/kt.py) on both engines: every directory
change is queued in its own transaction and a fold appends one leaf for each, proofs
built from the tables verify with the client's checks, and a read at an older tree size
sees the map as it was then."""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.identity import AccountKey, DeviceCertificate, DevicePublicKeys, DeviceSigningKey
from sottovoce.kt.checkpoint import NoteSigner, add_cosignature
from sottovoce.kt.errors import MapMismatch
from sottovoce.kt.map import AccountState, ChangeKind, LogLeaf
from sottovoce.kt.merkle import consistency_nodes, consistency_proof, verify_consistency
from sottovoce.kt.prover import KTLog
from sottovoce.kt.verify import KTPolicy, verify_lookup
from sottovoce.kt.vrf import VRFSecretKey
from sottovoce.kt.witness import AuditingWitness
from sottovoce.server.errors import StorageError
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage import kt as kt_tables
from sottovoce.server.storage.kt import NO_RECOVERY_KEY, KTWriter
from sottovoce.server.storage.shared import SharedStorage
from sottovoce.server.storage.sqlite import SqliteStorage
from sottovoce.server.storage.txn import Txn
from tests.integration import pgschema
from tests.kt_helpers import hide_an_account

VRF = VRFSecretKey(hashlib.sha256(b"vrf").digest())
LOG = NoteSigner("kt.test/log", SigningKey(SignatureScheme.ED25519, bytes(range(32))))
WITNESS = NoteSigner("kt.test/w", SigningKey(SignatureScheme.ED25519, bytes(32)), cosigner=True)
NOW = 1_700_000_000_000


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedStorage]:
    log = JsonLogger(io.StringIO())
    if request.param == "sqlite":
        st: SharedStorage = SqliteStorage(tmp_path / "db.sqlite3", logger=log)
    else:
        reason = pgschema.unreachable()
        if reason is not None:
            pytest.skip(reason)
        from sottovoce.server.storage.postgres import PostgresStorage

        with pgschema.fresh_schema() as dsn:
            st = PostgresStorage(dsn, logger=log, pool_size=2)
            st.kt_writer = KTWriter(vrf=VRF, rng=secrets.token_bytes)
            yield st
        return
    st.kt_writer = KTWriter(vrf=VRF, rng=secrets.token_bytes)
    yield st


class Account:
    def __init__(self, user: str) -> None:
        self.user = user
        self.ak = AccountKey.generate(secrets.token_bytes)
        self.keys: dict[str, bytes] = {}

    def cert(self, device: str) -> bytes:
        dk = DeviceSigningKey.generate(secrets.token_bytes)
        self.keys[device] = dk.public
        keys = DevicePublicKeys(signing_key=dk.public, olm_identity_key=bytes(32),
                                olm_signing_key=bytes(32))
        return DeviceCertificate.issue(self.ak, username=self.user, device_id=device,
                                       keys=keys, now_ms=NOW).encode()


async def _lookup(st: SharedStorage, user: str, since: int = 0, size: int | None = None):  # type: ignore[no-untyped-def]
    size = size if size is not None else await st.kt_size()
    stores = await st.kt_snapshot(user, size, since, every_version=False)
    core = KTLog(stores, vrf_key=VRF, log_signer=LOG)
    note = add_cosignature(core.checkpoint(), WITNESS.cosign(core.checkpoint().text,
                                                              timestamp_s=NOW // 1000))
    policy = KTPolicy(log_key=LOG.public, vrf_key=VRF.public, witnesses=(WITNESS.public,))
    return verify_lookup(policy, None, user, core.lookup(user, note, since=since), now_ms=NOW)


async def test_each_directory_change_appends_a_leaf_whose_proofs_verify(
    store: SharedStorage,
) -> None:
    await store.open()
    try:
        alice, bob = Account("alice"), Account("bob")
        await store.create_account("alice", alice.ak.public, "d1", alice.cert("d1"), NOW)
        assert await store.kt_size() == 0 and await store.kt_pending() == 1
        assert len(await store.kt_fold()) == 1
        assert await store.kt_size() == 1 and await store.kt_pending() == 0
        await store.create_account("bob", bob.ak.public, "d1", bob.cert("d1"), NOW)
        await store.add_device("alice", "d2", alice.cert("d2"), NOW)
        await store.kt_fold()
        assert await store.kt_size() == 3
        found = await _lookup(store, "alice")
        assert found.version == 1 and found.state is not None
        assert found.state.account_key == alice.ak.public
        assert found.state.recovery_key == NO_RECOVERY_KEY
        assert {(d.device_id, d.signing_key) for d in found.state.devices} == {
            ("d1", alice.keys["d1"]), ("d2", alice.keys["d2"])}
        await store.revoke_device("alice", "d1", NOW)
        await store.revoke_device("alice", "d1", NOW)  # a second revocation logs nothing
        await store.kt_fold()
        assert await store.kt_size() == 4
        found = await _lookup(store, "alice", since=2)
        assert found.version == 2 and found.state is not None
        assert [d.device_id for d in found.state.devices] == ["d2"]
        # The map as it was at size 3: alice's second version, both devices.
        old = await _lookup(store, "alice", size=3)
        assert old.version == 1 and old.state is not None and len(old.state.devices) == 2
        await store.delete_account("bob", NOW)
        await store.kt_fold()
        gone = await _lookup(store, "bob")
        assert gone.state is not None and gone.state.deleted and gone.state.devices == ()
        nobody = await _lookup(store, "carol")
        assert nobody.version is None
        # A succession hook: one call installs new keys, kept by later versions.
        await store.kt_record("alice", ChangeKind.RECOVERY, NOW,
                              account_key=b"\x05" * 32, recovery_key=b"\x06" * 32)
        await store.add_device("alice", "d3", alice.cert("d3"), NOW)
        leaf, _ = await store.kt_fold()  # two changes of one account in one fold
        assert leaf.kind is ChangeKind.RECOVERY and leaf.epoch == 5
        latest = await _lookup(store, "alice")
        assert latest.state is not None and latest.state.recovery_key == b"\x06" * 32
        # Consistency between two heads, from stored nodes only.
        nodes = await store.kt_log_nodes(consistency_nodes(3, 7))
        old_root = KTLog(await store.kt_snapshot("alice", 3, 0, every_version=False),
                         vrf_key=VRF, log_signer=LOG).checkpoint()
        from sottovoce.kt.checkpoint import Checkpoint

        r3 = Checkpoint.parse(old_root.text).root
        r7 = Checkpoint.parse(latest.head.note.decode().split("\n\n")[0] + "\n").root
        verify_consistency(3, 7, r3, r7, consistency_proof(3, 7, nodes))
    finally:
        await store.close()


async def test_an_auditing_witness_replays_the_stored_leaves_and_refuses_a_tampered_map(
    store: SharedStorage,
) -> None:
    await store.open()
    try:
        for i in range(5):
            a = Account(f"user{i}")
            await store.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await store.kt_fold()
        leaves = await store.kt_leaves(0, 10)
        assert [LogLeaf.decode(x).epoch for x in leaves] == list(range(5))
        auditor = AuditingWitness(WITNESS, LOG.public)
        note = KTLog(await store.kt_snapshot("user0", 5, 0, every_version=False),
                     vrf_key=VRF, log_signer=LOG).checkpoint()
        auditor.cosign_audited(note, leaves, now_ms=NOW)
        # Tamper: an account no leaf appended, hidden in the map.
        await store._write_op(hide_an_account)
        # The next append, by another node or this one after a restart (a node's own
        # append cache does not read the map's upper nodes again), carries it into the
        # map root.
        store.kt_writer = KTWriter(vrf=VRF, rng=secrets.token_bytes)
        a = Account("user9")
        await store.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await store.kt_fold()
        note = KTLog(await store.kt_snapshot("user0", 6, 0, every_version=False),
                     vrf_key=VRF, log_signer=LOG).checkpoint()
        with pytest.raises(MapMismatch):
            auditor.cosign_audited(note, await store.kt_leaves(5, 10), now_ms=NOW)
    finally:
        await store.close()


def _fold_then_fail(writer: KTWriter) -> Txn[None]:
    yield from kt_tables.fold(writer, kt_tables.FOLD_BATCH)
    raise RuntimeError("the transaction failed after its fold")


async def test_a_fold_rolled_back_after_it_warmed_the_cache_leaves_no_trace(
    store: SharedStorage,
) -> None:
    """A node keeps the upper map nodes and the log's border of its last fold in
    memory. A fold whose transaction then rolls back moved that copy on: the next
    fold finds the log's size and border differ and reads the tables again, so every
    leaf's map root still replays; and the changes it took are still queued."""
    await store.open()
    try:
        for i in range(4):
            a = Account(f"user{i}")
            await store.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await store.kt_fold()
        writer = store.kt_writer
        assert writer is not None and writer.cache.size == 4 and writer.cache.nodes
        await store.kt_record("user1", ChangeKind.DEVICE_ADDED, NOW)
        with pytest.raises((RuntimeError, StorageError)):  # (SQLite's writer wraps it)
            await store._write_op(_fold_then_fail, writer)
        assert writer.cache.size == 5 and await store.kt_size() == 4
        assert await store.kt_pending() == 1
        for i in range(4, 7):
            a = Account(f"user{i}")
            await store.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await store.kt_fold()
        leaves = await store.kt_leaves(0, 10)
        assert [LogLeaf.decode(x).epoch for x in leaves] == list(range(8))
        assert LogLeaf.decode(leaves[4]).kind is ChangeKind.DEVICE_ADDED
        note = KTLog(await store.kt_snapshot("user0", 8, 0, every_version=False),
                     vrf_key=VRF, log_signer=LOG).checkpoint()
        AuditingWitness(WITNESS, LOG.public).cosign_audited(note, leaves, now_ms=NOW)
        for i in range(7):
            assert (await _lookup(store, f"user{i}")).version == (1 if i == 1 else 0)
    finally:
        await store.close()


def test_account_state_round_trips() -> None:
    s = AccountState(account_key=b"a" * 32, recovery_key=NO_RECOVERY_KEY)
    assert AccountState.decode(s.encode()) == s


async def test_two_nodes_appending_at_once_take_consecutive_leaves(tmp_path: Path) -> None:
    """Several server nodes on one PostgreSQL database: the append lock orders them."""
    import asyncio

    reason = pgschema.unreachable()
    if reason is not None:
        pytest.skip(reason)
    from sottovoce.server.storage.postgres import PostgresStorage

    log = JsonLogger(io.StringIO())
    with pgschema.fresh_schema() as dsn:
        nodes = [PostgresStorage(dsn, logger=log, pool_size=4) for _ in range(2)]
        for st in nodes:
            st.kt_writer = KTWriter(vrf=VRF, rng=secrets.token_bytes)
            await st.open()
        try:
            accounts = [Account(f"user{i}") for i in range(16)]
            await asyncio.gather(*(
                nodes[i % 2].create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
                for i, a in enumerate(accounts)))
            # Both nodes fold at once: the fold lock orders them, none is taken twice.
            folded = await asyncio.gather(*(st.kt_fold(5) for st in (*nodes, nodes[0])))
            assert sum(len(f) for f in folded) == 15 and await nodes[1].kt_pending() == 1
            await nodes[1].kt_fold()
            leaves = await nodes[0].kt_leaves(0, 100)
            assert [LogLeaf.decode(x).epoch for x in leaves] == list(range(16))
            auditor = AuditingWitness(WITNESS, LOG.public)
            note = KTLog(await nodes[1].kt_snapshot("user0", 16, 0, every_version=False),
                         vrf_key=VRF, log_signer=LOG).checkpoint()
            auditor.cosign_audited(note, leaves, now_ms=NOW)  # every map root replays
            for a in accounts[:3]:
                assert (await _lookup(nodes[0], a.user)).version == 0
        finally:
            for st in nodes:
                await st.close()


async def test_lookups_read_together_answer_as_each_read_alone(store: SharedStorage) -> None:
    """Several lookups' rows in one read (with the log's part built once per checkpoint)
    give byte for byte the answers of one full read each, at the newest size and at an
    older one, cache cold and warm: one version or several, no account, a deletion,
    one name asked twice, a history beside lookups."""
    from sottovoce.kt import prover

    await store.open()
    try:
        for i in range(12):
            a = Account(f"user{i}")
            await store.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
            await store.kt_fold()  # one leaf per fold: a read at any size is at a fold's end
            for d in range(i % 4):  # 1 to 4 versions
                await store.add_device(a.user, f"d{d + 2}", a.cert(f"d{d + 2}"), NOW)
                await store.kt_fold()
        await store.delete_account("user5", NOW)
        await store.kt_fold()
        names = ["user3", "nobody", "user0", "user5", "user3", "user7", "user11", "user2"]
        asks = [(n, False) for n in names] + [("user3", True)]
        for size in (await store.kt_size(), 9):
            core_for = {}
            for n in set(names):
                full = await store.kt_snapshot(n, size, 4, every_version=True)
                core_for[n] = KTLog(full, vrf_key=VRF, log_signer=LOG)
            note = next(iter(core_for.values())).checkpoint()
            leaf, nodes = await store.kt_log_part(size, 4, None)
            assert leaf is not None
            part = prover.log_proof(note.encode(), size, 4, leaf, nodes)
            cache = kt_tables.AppendCache(size)
            for _ in range(2):  # the cache cold, then warm
                got = await store.kt_answers([(n, h, part) for n, h in asks], size, cache)
                for (n, history), mine in zip(asks, got, strict=True):
                    if history:
                        assert mine == core_for[n].history(n, note, since=4).encode()
                    else:
                        assert mine == core_for[n].lookup(n, note, since=4).encode()
        found = await _lookup(store, "user3")
        assert found.version == 3
    finally:
        await store.close()


async def test_history_pages_read_from_the_tables_are_the_cores_and_fit_a_budget(
    store: SharedStorage,
) -> None:
    """A page of an account's history (kt.history with start) read from the tables
    holds the versions asked for and verifies from the compact range of the versions
    before it, at the newest size and an older one; a small byte budget trims it to the
    versions that fit, one at least."""
    from sottovoce.kt import prover
    from sottovoce.kt.merkle import LogWriter, leaf_hash
    from sottovoce.kt.verify import HistoryPage, MonitorState, OwnKeys, monitor_page

    await store.open()
    try:
        bob = Account("bob")
        await store.create_account("bob", bob.ak.public, "d1", bob.cert("d1"), NOW)
        await store.kt_fold()
        for d in range(2, 9):  # 8 versions in all, one fold each (read at every size)
            await store.add_device("bob", f"d{d}", bob.cert(f"d{d}"), NOW)
            await store.kt_fold()
        policy = KTPolicy(log_key=LOG.public, vrf_key=VRF.public, witnesses=(WITNESS.public,))
        everything = OwnKeys(devices=frozenset((f"d{d}", bob.keys[f"d{d}"]) for d in range(1, 9)),
                             account_keys=frozenset({bob.ak.public}),
                             recovery_keys=frozenset({NO_RECOVERY_KEY}))

        async def page_at(size: int, start: int, limit: int, budget: int) -> HistoryPage:
            stores = await store.kt_snapshot("bob", size, 0, every_version=True)
            note = KTLog(stores, vrf_key=VRF, log_signer=LOG).checkpoint()
            note = add_cosignature(note, WITNESS.cosign(note.text, timestamp_s=NOW // 1000))
            leaf, nodes = await store.kt_log_part(size, 0, None)
            assert leaf is not None
            part = prover.log_proof(note.encode(), size, 0, leaf, nodes)
            return HistoryPage.decode(await store.kt_history_page(
                "bob", size, start, limit, part, budget, None))

        async def before(size: int, start: int) -> MonitorState:
            """The monitor's state after versions [0, start), from the stored records."""
            stores = await store.kt_snapshot("bob", size, 0, every_version=True)
            writer = LogWriter()
            for v in range(start):
                writer.append(leaf_hash(stores.records[(next(iter(stores.sizes)), v)].commitment))
            return MonitorState(versions=start, version_root=writer.root() if start else b"",
                                border=writer.border)

        for size, versions in ((await store.kt_size(), 8), (5, 5)):
            for start, limit in ((0, 3), (3, 3), (versions - 2, 3), (2, 100), (versions, 2)):
                page = await page_at(size, start, limit, 1 << 20)
                assert page.start == start
                assert len(page.states) == min(limit, versions - start)
                result = monitor_page(policy, None, "bob", everything,
                                      await before(size, start), page, now_ms=NOW)
                assert result.more == (start + len(page.states) < versions)
        # A budget for about two versions: pages of two, each verified from the last.
        size = await store.kt_size()
        first = await page_at(size, 0, 100, 1 << 20)
        budget = len(first.encode()) - sum(len(s) + 40 for s in first.states[2:])
        state, sizes = MonitorState(), []
        while state.versions < 8:
            page = await page_at(size, state.versions, 100, budget)
            state = monitor_page(policy, None, "bob", everything, state, page,
                                 now_ms=NOW).state
            sizes.append(len(page.states))
        assert 1 <= max(sizes) < 8 and sum(sizes) == 8
        assert len((await page_at(size, 0, 100, 1)).states) == 1  # one at least, always
    finally:
        await store.close()


async def test_labels_stored_in_bulk_are_folded_and_paths_read_in_small_steps_are_whole(
    store: SharedStorage, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bulk load's labels (``store_labels``, computed elsewhere) are the ones a fold
    uses, with no VRF evaluation; a name stored twice keeps its first label. Map paths
    read through the cache (whose path tops are kept per checkpoint) and in steps of a
    few depths are the paths read whole without it, cache cold and warm, and folds and
    lookups made that way verify."""
    accounts = [Account(f"bulk{i}") for i in range(40)]
    labels = [(a.user, *VRF.evaluate(a.user.encode())) for a in accounts]
    await store.open()
    try:
        await store._write_op(kt_tables.store_labels, labels)
        await store._write_op(kt_tables.store_labels, [(labels[0][0], bytes(64), bytes(80))])
        for a in accounts:
            await store.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)

        def no_vrf(*_: object) -> None:
            raise AssertionError("a stored label was evaluated again")

        with monkeypatch.context() as m:
            m.setattr(VRFSecretKey, "evaluate", no_vrf)
            m.setattr(VRFSecretKey, "prove", no_vrf)
            assert len(await store.kt_fold(1000)) == 40  # from the empty log, in one fold
        size = await store.kt_size()
        keys = [kt_tables.map_key(b) for _, b, _ in labels] + [secrets.token_bytes(32)
                                                              for _ in range(5)]
        whole = await store._read_op(kt_tables._map_paths, keys, size, None)
        assert all(whole[k] for k in keys[:40])
        # Tops at depth 1, the cache to depth 3, one depth per round trip at first.
        monkeypatch.setattr(kt_tables, "TOP_DEPTH", 1)
        monkeypatch.setattr(kt_tables, "CACHE_DEPTH", 3)
        monkeypatch.setattr(kt_tables, "_PAST_LOG2", -size.bit_length())
        cache = kt_tables.AppendCache(size)
        for _ in range(2):
            assert await store._read_op(kt_tables._map_paths, keys, size, cache) == whole
        assert cache.tops and all(n[0] <= 3 for n in cache.nodes)
        # Answers built on proofs' shared tops (at depth 1 here) are those built without.
        from sottovoce.kt import map as kt_map
        from sottovoce.kt import prover

        monkeypatch.setattr(kt_map, "PROOF_TOP", 1)
        leaf, nodes = await store.kt_log_part(size, 0, None)
        assert leaf is not None
        part = prover.log_proof(b"a checkpoint", size, 0, leaf, nodes)
        asks = [(a.user, False, part) for a in accounts] + [("nobody", False, part)]
        alone = [(await store.kt_answers([ask], size, None))[0] for ask in asks]
        for _ in range(2):
            assert await store.kt_answers(asks, size, cache) == alone
        assert sum(d == 1 for d, _ in cache.proofs) == 2
        for a in accounts[:8]:
            await store.add_device(a.user, "d2", a.cert("d2"), NOW)
            await store.kt_fold(3)
        for a in accounts[:8:3]:
            found = await _lookup(store, a.user)
            assert found.state is not None and len(found.state.devices) == 2
        assert (await _lookup(store, accounts[20].user)).version == 0
    finally:
        await store.close()


def _node_at(node: tuple[int, int], size: int) -> Txn[bytes | None]:
    from sottovoce.server.storage.txn import blob, one

    found = yield one(
        "SELECT record FROM kt_map_nodes WHERE node=? AND epoch<? ORDER BY epoch DESC LIMIT 1",
        kt_tables.map_node_id(node), size)
    return None if found is None else blob(found[0])


async def test_a_cache_carried_to_a_later_size_keeps_only_nodes_that_did_not_change(
    store: SharedStorage,
) -> None:
    """The lookup cache of a served checkpoint, carried to the next one minus the paths
    (and the nodes beside them) of the keys the leaves between them changed, holds for
    every node it keeps the very record (or absence) a read at the new size finds, new
    accounts pushing old entries down included; and answers built on it are byte for
    byte those built without a cache."""
    from sottovoce.kt import prover

    await store.open()
    try:
        accounts = [Account(f"user{i}") for i in range(40)]
        for a in accounts[:24]:
            await store.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await store.kt_fold()
        old_size = await store.kt_size()
        old = kt_tables.AppendCache(old_size)
        leaf, nodes = await store.kt_log_part(old_size, 0, None)
        assert leaf is not None
        part = prover.log_proof(b"note", old_size, 0, leaf, nodes)
        names = [a.user for a in accounts[:24]] + ["nobody"]
        await store.kt_answers([(n, False, part) for n in names], old_size, old)
        assert old.nodes
        # New accounts (entries pushed down beside them) and a changed one.
        for a in accounts[24:]:
            await store.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await store.add_device("user3", "d2", accounts[3].cert("d2"), NOW)
        await store.kt_fold()
        size = await store.kt_size()
        changed = await store.kt_changed_keys(old_size, size)
        assert len(changed) == size - old_size == 17
        new = kt_tables.AppendCache(size)
        new.carry(old, changed)
        kept = dict(new.nodes)
        assert kept and len(kept) < len(old.nodes)
        assert set(new.labels) == set(old.labels)
        for node, rec in kept.items():
            assert await store._read_op(_node_at, node, size) == rec, node
        leaf, nodes = await store.kt_log_part(size, 0, None)
        assert leaf is not None
        part = prover.log_proof(b"note", size, 0, leaf, nodes)
        asks = [(a.user, False, part) for a in accounts] + [("nobody", False, part)]
        assert (await store.kt_answers(asks, size, new)
                == await store.kt_answers(asks, size, None))
    finally:
        await store.close()


async def _filled(store: SharedStorage, size: int,
                  cache: kt_tables.AppendCache | None = None) -> kt_tables.AppendCache:
    """``cache`` (a new one if None) with every map node down to CACHE_DEPTH read, as a
    server fills its served checkpoint's, and its lookup memos built."""
    cache = kt_tables.AppendCache(size) if cache is None else cache
    nodes = [(0, 0)]
    while nodes:
        nodes = await store.kt_fill_upper(size, nodes, cache)
    kt_tables.build_tops(cache, 0, kt_tables.TOPS)
    return cache


async def test_lookup_memos_carried_to_a_later_size_are_those_made_afresh(
    store: SharedStorage, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The memos lookups share below the nodes at the memos' middle depth (path walks
    and proofs' siblings), carried to the next checkpoint where no changed key goes
    through, are the very memos a cache filled afresh at that size makes; answers
    built on them are byte for byte those built without a cache."""
    from sottovoce.kt import map as kt_map
    from sottovoce.kt import prover

    for module in (kt_tables, kt_map):
        monkeypatch.setattr(module, "PROOF_TOP", 4)
    monkeypatch.setattr(kt_tables, "TOP_DEPTH", 4)
    monkeypatch.setattr(kt_tables, "CACHE_DEPTH", 6)
    monkeypatch.setattr(kt_tables, "TOPS", 16)
    await store.open()
    try:
        accounts = [Account(f"memo{i}") for i in range(64)]
        for a in accounts[:60]:
            await store.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await store.kt_fold()
        old = await _filled(store, old_size := await store.kt_size())
        # A proof's memo is kept below inner nodes only (a few paths end at depth 4).
        assert sum(d == 4 for d, _ in old.tops) == 16
        assert sum(d == 4 for d, _ in old.proofs) >= 12
        await store.add_device("memo3", "d2", accounts[3].cert("d2"), NOW)
        await store.create_account(accounts[60].user, accounts[60].ak.public, "d1",
                                   accounts[60].cert("d1"), NOW)
        await store.kt_fold()
        size = await store.kt_size()
        new = kt_tables.AppendCache(size)
        new.carry(old, await store.kt_changed_keys(old_size, size))
        carried = {"tops": dict(new.tops), "proofs": dict(new.proofs)}
        assert all(d == 4 for memos in carried.values() for d, _ in memos)
        assert 0 < len(carried["tops"]) < 16 and 0 < len(carried["proofs"]) < 16
        # Lookups on the carried cache (upper memos and the changed paths' nodes not
        # made or read yet) answer as without a cache, and what they make is exact.
        leaf, nodes = await store.kt_log_part(size, 0, None)
        assert leaf is not None
        part = prover.log_proof(b"note", size, 0, leaf, nodes)
        asks = [(a.user, False, part) for a in accounts] + [("nobody", False, part)]
        alone = await store.kt_answers(asks, size, None)
        assert await store.kt_answers(asks, size, new) == alone
        fresh = await _filled(store, size)
        for node, memo in carried["tops"].items():
            assert fresh.tops[node] == memo, node
        for node, memo in carried["proofs"].items():
            assert fresh.proofs[node] == memo, node
        await _filled(store, size, new)
        assert new.tops == fresh.tops and new.proofs == fresh.proofs
        assert await store.kt_answers(asks, size, new) == alone
    finally:
        await store.close()


async def test_paths_read_below_the_cache_in_one_statement_are_the_whole_paths(
    store: SharedStorage, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Below the cache a lookup reads only its path's siblings and its entry, whose depth
    its key's neighbours tell, in one statement for all the names read together: the
    answers are byte for byte those of whole paths read step by step, at the newest
    size and at an older one (where later keys are not neighbours yet), cache cold and
    warm; only names with no entry at that size are walked step by step; and an entry
    not found where its neighbours put it is walked step by step too, to the same
    answer."""
    from sottovoce.kt import prover

    accounts = [Account(f"deep{i}") for i in range(40)]
    await store.open()
    try:
        for a in accounts[:24]:
            await store.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await store.kt_fold(1000)
        older = await store.kt_size()
        for a in accounts[24:]:
            await store.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        for a in accounts[:6]:
            await store.add_device(a.user, "d2", a.cert("d2"), NOW)
        await store.delete_account(accounts[7].user, NOW)
        await store.kt_fold(1000)
        newest = await store.kt_size()
        monkeypatch.setattr(kt_tables, "TOP_DEPTH", 1)
        monkeypatch.setattr(kt_tables, "CACHE_DEPTH", 2)
        walked: list[bytes] = []
        step_by_step = kt_tables._map_paths

        def spy(keys: list[bytes], size: int, cache: kt_tables.AppendCache | None,
                ) -> Txn[dict[bytes, dict[tuple[int, int], bytes]]]:
            if cache is not None:
                walked.extend(keys)
            return step_by_step(keys, size, cache)

        monkeypatch.setattr(kt_tables, "_map_paths", spy)
        names = [a.user for a in accounts] + ["nobody"]
        for size, known in ((newest, 40), (older, 24)):
            leaf, nodes = await store.kt_log_part(size, 0, None)
            assert leaf is not None
            part = prover.log_proof(b"a checkpoint", size, 0, leaf, nodes)
            asks = [(n, n == "deep3", part) for n in names]
            alone = [(await store.kt_answers([ask], size, None))[0] for ask in asks]
            cache = kt_tables.AppendCache(size)
            for _ in range(2):
                walked.clear()
                assert await store.kt_answers(asks, size, cache) == alone
                keys = {kt_tables.map_key(VRF.evaluate(n.encode())[0]): n for n in names}
                assert sorted(keys[k] for k in walked) == sorted(names[known:])
            assert any(n[0] == 2 for n in cache.nodes)
        # Depths one too deep: no entry there, so those paths are walked step by step.
        entries = kt_tables._entries

        def too_deep(users: list[str], size: int) -> Txn[tuple[
                dict[str, tuple[bytes, bytes]], dict[bytes, kt_tables.VersionRecord],
                dict[bytes, int]]]:
            labels, latest, depths = yield from entries(users, size)
            return labels, latest, {k: d + 1 for k, d in depths.items()}

        monkeypatch.setattr(kt_tables, "_entries", too_deep)
        walked.clear()
        assert await store.kt_answers(asks, older, kt_tables.AppendCache(older)) == alone
        assert len(walked) == len(names)
        found = await _lookup(store, accounts[30].user)
        assert found.state is not None and found.version == 0
    finally:
        await store.close()
