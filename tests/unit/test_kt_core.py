"""Key transparency end to end, in memory: the server core (kt/prover.py), a witness,
an auditing witness, a client's lookup verification and an owner's monitor.

Each attack the design must catch is played here against the cores: a split view
(two clients shown different keys), a rollback, a fork, a stale or unsigned or
under-cosigned checkpoint, a malformed proof, a device the owner did not add
(also one added and removed between two polls), a rewritten history, and a map
root no leaf justifies.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.errors import DecodeError, UsageError
from sottovoce.kt.checkpoint import NoteSigner, SignedNote, add_cosignature
from sottovoce.kt.errors import (
    BadCheckpointSignature,
    KTError,
    LogForked,
    LogShrank,
    MalformedProof,
    MapMismatch,
    MonitorAlert,
    NotEnoughCosignatures,
    ProofMismatch,
    StaleCheckpoint,
    VRFError,
)
from sottovoce.kt.map import (
    EMPTY,
    AccountState,
    ChangeKind,
    DeviceEntry,
    LogLeaf,
    MapProof,
    SparseMap,
    entry_hash,
    inner_hash,
    verify_map_proof,
)
from sottovoce.kt.prover import KTLog, KTStores
from sottovoce.kt.verify import (
    HistoryPage,
    HistoryResponse,
    KTPolicy,
    LookupResponse,
    MonitorState,
    OwnKeys,
    TrustedHead,
    log_part_bytes,
    monitor_own_account,
    monitor_page,
    verify_lookup,
)
from sottovoce.kt.vrf import VRFSecretKey
from sottovoce.kt.witness import AuditingWitness, Witness

NOW = 1_800_000_000_000


class Counter:
    """A deterministic rng."""

    def __init__(self, seed: bytes = b"") -> None:
        self.n, self.seed = 0, seed

    def __call__(self, size: int) -> bytes:
        self.n += 1
        out = b""
        while len(out) < size:
            block = self.seed + self.n.to_bytes(8, "big") + bytes([len(out)])
            out += hashlib.sha256(block).digest()
        return out[:size]


def _key(seed: int) -> SigningKey:
    return SigningKey(SignatureScheme.ED25519, hashlib.sha256(bytes([seed])).digest())


def _state(ak: int, *devices: str, rk: int = 200, deleted: bool = False) -> AccountState:
    return AccountState(
        account_key=_key(ak).verify_key.data,
        recovery_key=_key(rk).verify_key.data,
        devices=tuple(
            DeviceEntry(device_id=d, signing_key=_key(len(d) + ord(d[0])).verify_key.data)
            for d in devices
        ),
        deleted=deleted,
    )


class World:
    """A server core, one witness and one client policy."""

    def __init__(self) -> None:
        self.rng = Counter()
        self.log_signer = NoteSigner("kt.example/log", _key(1))
        self.witness_signer = NoteSigner("witness.example/w1", _key(2), cosigner=True)
        self.vrf = VRFSecretKey(bytes(32))
        self.stores = KTStores.memory()
        self.kt = KTLog(self.stores, vrf_key=self.vrf, log_signer=self.log_signer)
        self.witness = Witness(self.witness_signer, self.log_signer.public)
        self.policy = KTPolicy(log_key=self.log_signer.public, vrf_key=self.vrf.public,
                               witnesses=(self.witness_signer.public,))

    def change(self, name: str, state: AccountState, kind: ChangeKind = ChangeKind.DEVICE_ADDED,
               ) -> LogLeaf:
        return self.kt.change(name, state.encode(), kind=kind, now_ms=NOW, rng=self.rng)

    def head(self, since: int = 0, now_ms: int = NOW) -> SignedNote:
        note = self.kt.checkpoint()
        proof = self.kt_consistency(since, note)
        return add_cosignature(note, self.witness.cosign(note, proof, now_ms=now_ms))

    def kt_consistency(self, since: int, note: SignedNote) -> list[bytes]:
        from sottovoce.kt.merkle import consistency_proof

        head = self.witness.state.head
        if head is None:
            return []
        return consistency_proof(head.size, self.kt.size, self.stores.log_nodes)


def test_lookup_verifies_and_returns_the_latest_state() -> None:
    w = World()
    w.change("alice", _state(10, "a1"), ChangeKind.REGISTRATION)
    w.change("bob", _state(11, "b1"), ChangeKind.REGISTRATION)
    w.change("bob", _state(11, "b1", "b2"))
    note = w.head()
    res = verify_lookup(w.policy, None, "bob", w.kt.lookup("bob", note), now_ms=NOW)
    assert res.version == 1 and res.state == _state(11, "b1", "b2")
    # A name with no account gets a verified "absent".
    none = verify_lookup(w.policy, res.head, "carol", w.kt.lookup("carol", note, since=3),
                         now_ms=NOW)
    assert none.state is None and none.version is None
    # The wire form round-trips.
    resp = w.kt.lookup("bob", note)
    assert LookupResponse.decode(resp.encode()) == resp


def test_an_answer_encoded_after_its_log_part_is_the_whole_encoding() -> None:
    # The server encodes the log's part once per checkpoint and joins the rest to it;
    # the bytes are those of the field-by-field encoding, for an absent name, one
    # version and several, and a proof that ends in an empty subtree or an entry.
    w = World()
    w.change("alice", _state(10, "a1"), ChangeKind.REGISTRATION)
    for i in range(4):
        w.change("bob", _state(11, *(f"b{j}" for j in range(i + 1))))
    for i in range(12):
        w.change(f"user{i}", _state(20 + i, "d1"), ChangeKind.REGISTRATION)
    note = w.head()
    for since in (0, 3):
        for name in ("alice", "bob", "carol", "user7", "nobody"):
            resp = w.kt.lookup(name, note, since=since)
            e = resp.entry
            part = log_part_bytes(e.checkpoint, e.consistency, e.leaf, e.leaf_proof)
            assert resp.encode_after(part) == resp.encode()
    # A field too long for its length is refused by both.
    long = replace(resp, opening=bytes(256))
    for encode in (long.encode, lambda: long.encode_after(part)):
        with pytest.raises(UsageError):
            encode()


def test_a_stale_unsigned_or_uncosigned_checkpoint_is_refused() -> None:
    w = World()
    w.change("bob", _state(11, "b1"), ChangeKind.REGISTRATION)
    old = w.head(now_ms=NOW - w.policy.max_age_ms - 1000)
    with pytest.raises(StaleCheckpoint):
        verify_lookup(w.policy, None, "bob", w.kt.lookup("bob", old), now_ms=NOW)
    bare = w.kt.checkpoint()
    with pytest.raises(NotEnoughCosignatures):
        verify_lookup(w.policy, None, "bob", w.kt.lookup("bob", bare), now_ms=NOW)
    other_log = NoteSigner("kt.example/log", _key(9))
    forged = add_cosignature(
        w.kt.checkpoint().__class__(text=bare.text, signatures=(other_log.sign(bare.text),)),
        w.witness_signer.cosign(bare.text, timestamp_s=NOW // 1000),
    )
    with pytest.raises(BadCheckpointSignature):
        verify_lookup(w.policy, None, "bob", w.kt.lookup("bob", forged), now_ms=NOW)
    # A known key whose signature fails rejects the whole note.
    good = w.head()
    sigs = list(good.signatures)
    sigs[0] = replace(sigs[0], signature=bytes(64))
    broken = replace(good, signatures=tuple(sigs))
    with pytest.raises(BadCheckpointSignature):
        verify_lookup(w.policy, None, "bob", w.kt.lookup("bob", broken), now_ms=NOW)


def test_a_log_that_shrank_or_forked_is_caught_at_the_next_consistency_check() -> None:
    w = World()
    w.change("bob", _state(11, "b1"), ChangeKind.REGISTRATION)
    w.change("bob", _state(11, "b1", "b2"))
    res = verify_lookup(w.policy, None, "bob", w.kt.lookup("bob", w.head()), now_ms=NOW)
    # (b) A rolled-back server: a fresh log with one leaf, cosigned by a witness that
    # has not seen the longer one.
    rolled = World()
    rolled.change("bob", _state(11, "b1"), ChangeKind.REGISTRATION)
    with pytest.raises(LogShrank):
        verify_lookup(w.policy, res.head, "bob", rolled.kt.lookup("bob", rolled.head()),
                      now_ms=NOW)
    # A fork: same size, other history.
    fork = World()
    fork.change("bob", _state(11, "b1"), ChangeKind.REGISTRATION)
    fork.change("bob", _state(11, "b1", "evil"))
    with pytest.raises(LogForked):
        verify_lookup(w.policy, res.head, "bob", fork.kt.lookup("bob", fork.head(), since=2),
                      now_ms=NOW)


def test_a_device_that_saw_the_log_empty_takes_the_next_head_without_a_proof() -> None:
    """A device that pinned the log while it was empty (a new server, or a node that had
    not seen another node's newer checkpoint yet) verifies its next lookup: RFC 9162 has
    no consistency proof from the empty tree, so none is sent and none is asked for."""
    w = World()
    cp = w.policy.open(w.head(), NOW).checkpoint
    assert cp.size == 0
    empty = TrustedHead(size=0, root=cp.root, note=b"")
    w.change("bob", _state(11, "b1"), ChangeKind.REGISTRATION)
    w.change("carol", _state(12, "c1"), ChangeKind.REGISTRATION)
    resp = w.kt.lookup("bob", w.head(), since=0)
    assert resp.entry.consistency == ()
    res = verify_lookup(w.policy, empty, "bob", resp, now_ms=NOW)
    assert res.head.size == 2 and res.state == _state(11, "b1")
    # Still no proof from the empty tree, and it has only the one root.
    padded = replace(resp, entry=replace(resp.entry, consistency=(bytes(32),)))
    with pytest.raises(LogForked):
        verify_lookup(w.policy, empty, "bob", padded, now_ms=NOW)
    with pytest.raises(LogForked):
        verify_lookup(w.policy, replace(empty, root=bytes(32)), "bob", resp, now_ms=NOW)


def test_a_split_view_needs_the_witness_to_sign_two_histories_and_it_will_not() -> None:
    # (a) The server shows Alice one key for Bob and Carol another: both views must be
    # cosigned, but the witness refuses the second history.
    w = World()
    w.change("bob", _state(11, "b1"), ChangeKind.REGISTRATION)
    w.head()
    other = World()
    other.change("bob", _state(66, "mallory"), ChangeKind.REGISTRATION)
    other_note = other.kt.checkpoint()
    with pytest.raises(LogForked):
        w.witness.cosign(other_note, [], now_ms=NOW)
    # And two clients that compare their checkpoints (each message carries one) see it.
    alice = verify_lookup(w.policy, None, "bob", w.kt.lookup("bob", w.head()), now_ms=NOW)
    with pytest.raises(LogForked):
        verify_lookup(w.policy, alice.head, "bob",
                      other.kt.lookup("bob", other.head()), now_ms=NOW)


def test_malformed_or_tampered_responses_are_typed_errors() -> None:
    w = World()
    w.change("bob", _state(11, "b1"), ChangeKind.REGISTRATION)
    w.change("alice", _state(10, "a1"), ChangeKind.REGISTRATION)
    note = w.head()
    resp = w.kt.lookup("bob", note)
    data = resp.encode()
    for i in range(0, len(data), 7):
        bad = bytearray(data)
        bad[i] ^= 0x40
        try:
            parsed = LookupResponse.decode(bytes(bad))
        except DecodeError:
            continue
        with pytest.raises(KTError):
            verify_lookup(w.policy, None, "bob", parsed, now_ms=NOW)
    with pytest.raises(DecodeError):
        LookupResponse.decode(data[:-1])
    # Alice's answer does not pass for Bob's (the VRF proof is of "alice").
    with pytest.raises(VRFError):
        verify_lookup(w.policy, None, "bob", w.kt.lookup("alice", note), now_ms=NOW)
    # Claiming "no account" while the map holds one.
    absent = replace(resp, entry=replace(resp.entry, versions=0))
    with pytest.raises(ProofMismatch):
        verify_lookup(w.policy, None, "bob", absent, now_ms=NOW)


def _own(*states: AccountState, deleted: bool = False) -> OwnKeys:
    return OwnKeys(
        devices=frozenset((d.device_id, d.signing_key) for s in states for d in s.devices),
        account_keys=frozenset(s.account_key for s in states),
        recovery_keys=frozenset(s.recovery_key for s in states),
        deleted=deleted,
    )


def test_the_monitor_flags_a_device_its_owner_did_not_add() -> None:
    # (c) and (d): a device added by the server, and one added and removed again
    # between two polls, are both caught at the next poll.
    w = World()
    s0, s1 = _state(11, "b1"), _state(11, "b1", "b2")
    w.change("bob", s0, ChangeKind.REGISTRATION)
    w.change("bob", s1)
    own = _own(s0, s1)
    first = monitor_own_account(w.policy, None, "bob", own, MonitorState(),
                                w.kt.history("bob", w.head()), now_ms=NOW)
    assert first.state.versions == 2 and first.new_versions == (s0, s1)
    w.change("bob", _state(11, "b1", "b2", "x-evil"))
    w.change("bob", s1)
    resp = w.kt.history("bob", w.head(), since=first.head.size)
    assert HistoryResponse.decode(resp.encode()) == resp
    with pytest.raises(MonitorAlert, match=r"version 2 .*'x-evil'"):
        monitor_own_account(w.policy, first.head, "bob", own, first.state, resp, now_ms=NOW)
    # A poll with nothing new passes and keeps the watermark.
    again = monitor_own_account(w.policy, None, "bob", _own(s0, s1, _state(11, "x-evil")),
                                first.state, resp, now_ms=NOW)
    assert again.state.versions == 4


def test_the_monitor_flags_a_rewritten_history_and_a_foreign_key() -> None:
    w = World()
    s0 = _state(11, "b1")
    w.change("bob", s0, ChangeKind.REGISTRATION)
    first = monitor_own_account(w.policy, None, "bob", _own(s0), MonitorState(),
                                w.kt.history("bob", w.head()), now_ms=NOW)
    # Another server whose version 0 differs (same keys, other opening): a rewrite.
    other = World()
    other.rng = Counter(b"other")
    other.change("bob", s0, ChangeKind.REGISTRATION)
    other.change("bob", s0)
    with pytest.raises(MonitorAlert, match="rewritten"):
        monitor_own_account(other.policy, None, "bob", _own(s0), first.state,
                            other.kt.history("bob", other.head()), now_ms=NOW)
    w.change("bob", _state(99, "b1"), ChangeKind.SUCCESSION)
    with pytest.raises(MonitorAlert, match="account key"):
        monitor_own_account(w.policy, None, "bob", _own(s0), first.state,
                            w.kt.history("bob", w.head()), now_ms=NOW)


def _pages(w: World, own: OwnKeys, state: MonitorState, limit: int,
           checked: MonitorState | None = None) -> tuple[MonitorState, int, int]:
    """Poll ``bob``'s history ``limit`` versions a page; (final state, pages, versions)."""
    pages = versions = 0
    while True:
        page = w.kt.history_page("bob", w.head(), start=state.versions, limit=limit)
        assert HistoryPage.decode(page.encode()) == page and len(page.states) <= limit
        result = monitor_page(w.policy, None, "bob", own, state, page, now_ms=NOW,
                              checked=checked)
        state, pages, versions = result.state, pages + 1, versions + len(result.new_versions)
        if not result.more:
            return state, pages, versions


def test_a_long_history_is_monitored_a_page_at_a_time() -> None:
    w = World()
    states = [_state(11, "b1", *(f"d{j}" for j in range(i % 5))) for i in range(23)]
    w.change("bob", states[0], ChangeKind.REGISTRATION)
    for later in states[1:]:
        w.change("bob", later)
    own = _own(*states)
    full = monitor_own_account(w.policy, None, "bob", own, MonitorState(),
                               w.kt.history("bob", w.head()), now_ms=NOW)
    state, pages, versions = _pages(w, own, MonitorState(), 4)
    assert (pages, versions) == (6, 23) and state == full.state
    # The next poll reads only the new versions, from the kept compact range.
    w.change("bob", states[3])
    state, pages, versions = _pages(w, own, state, 4)
    assert (pages, versions, state.versions) == (1, 1, 24)
    # A state kept before pages (no compact range) is checked again from version 0,
    # with no alert for the versions it had checked.
    old = MonitorState(versions=full.state.versions, version_root=full.state.version_root)
    evil = _state(11, "b1", "x-evil")
    again, _, versions = _pages(w, own, MonitorState(), 5,
                                checked=old)
    assert again == state and versions == 1
    # A device nobody added, in a later page, is an alert naming its version.
    w.change("bob", evil)
    with pytest.raises(MonitorAlert, match=r"version 24 .*'x-evil'"):
        _pages(w, own, state, 4)
    # A page that is not the account's, or a history rewritten under the kept range.
    page = w.kt.history_page("bob", w.head(), start=full.state.versions, limit=1)
    for forged in (replace(page, states=(states[0].encode(),)),
                   replace(page, rest_proof=page.rest_proof[1:])):
        with pytest.raises(ProofMismatch):
            monitor_page(w.policy, None, "bob", _own(*states, evil), full.state, forged,
                         now_ms=NOW)
    other = World()
    other.rng = Counter(b"other")
    for again_state in [*states, states[3], evil]:
        other.change("bob", again_state)
    with pytest.raises(MonitorAlert, match="rewritten"):
        _pages(other, _own(*states, evil), state, 4)
    with pytest.raises(MonitorAlert, match="rewritten"):
        _pages(other, _own(*states, evil), MonitorState(), 4, checked=old)


def test_the_auditing_witness_replays_leaves_and_refuses_a_bad_map_root() -> None:
    w = World()
    auditor = AuditingWitness(NoteSigner("audit.example/a1", _key(3), cosigner=True),
                              w.log_signer.public)
    w.change("bob", _state(11, "b1"), ChangeKind.REGISTRATION)
    w.change("alice", _state(10, "a1"), ChangeKind.REGISTRATION)
    auditor.cosign_audited(w.kt.checkpoint(), [w.stores.leaves[i] for i in range(2)], now_ms=NOW)
    assert auditor.size == 2
    # (e) The server serves a map value no leaf justifies: the leaf's map root is not
    # what replaying the change gives.
    leaf = w.change("bob", _state(11, "b1", "b2"))
    forged = replace(leaf, map_root=hashlib.sha256(b"not the map").digest())
    w.stores.leaves[2] = forged.encode()
    # (rebuild the server's log with the forged leaf so its checkpoint is self-consistent)
    bad = World()
    for i in range(3):
        data = w.stores.leaves[i]
        bad.kt._log.append(LogLeaf.decode(data).hash())
        bad.stores.leaves[i] = data
    note = bad.kt.checkpoint()
    with pytest.raises(MapMismatch):
        auditor.cosign_audited(note, [w.stores.leaves[2]], now_ms=NOW)
    assert auditor.size == 2  # nothing kept
    # A leaf that rewrites an account's history (an old version number) is refused too.
    replay = replace(LogLeaf.decode(w.stores.leaves[0]), epoch=2)
    bad2 = World()
    for i, data in enumerate([w.stores.leaves[0], w.stores.leaves[1], replay.encode()]):
        bad2.kt._log.append(LogLeaf.decode(data).hash())
        bad2.stores.leaves[i] = data
    with pytest.raises(MapMismatch):
        auditor.cosign_audited(bad2.kt.checkpoint(), [replay.encode()], now_ms=NOW)
    with pytest.raises(MalformedProof):
        auditor.cosign_audited(note, [], now_ms=NOW)


# --- the sparse map ---------------------------------------------------------------------


def _naive_root(entries: dict[bytes, bytes], depth: int = 0, prefix: int = 0) -> bytes:
    inside = {
        k: v for k, v in entries.items() if int.from_bytes(k, "big") >> (256 - depth) == prefix
    }
    if not inside:
        return EMPTY
    if len(inside) == 1:
        ((k, v),) = inside.items()
        return entry_hash(k, v)
    return inner_hash(_naive_root(inside, depth + 1, prefix << 1),
                      _naive_root(inside, depth + 1, (prefix << 1) | 1))


keys = st.binary(min_size=32, max_size=32)


def test_a_map_proof_deeper_than_the_key_is_malformed_not_a_crash() -> None:
    # Found by the property test below: a tampered proof one level deeper than the
    # 256-bit key once ended in a ValueError from a negative shift.
    m = SparseMap({})
    key = bytes(31) + b"\xdc"
    m.set(key, bytes(32))
    m.set(bytes(31) + b"\xdd", bytes([1]) * 32)
    good = m.prove(key)
    for bad in (replace(good, depth=257, present=good.present + b"\x00"),
                replace(good, present=good.present + b"\x00"),
                replace(good, terminal_key=bytes(31))):
        with pytest.raises(KTError):
            verify_map_proof(m.root(), key, bad)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(keys, st.binary(min_size=32, max_size=32), max_size=24), keys,
       st.data())
def test_sparse_map_root_and_proofs_match_the_definition(
    entries: dict[bytes, bytes], absent: bytes, data: st.DataObject
) -> None:
    # Keys sharing long prefixes exercise deep splits.
    m = SparseMap({})
    shared = {bytes(31) + k[-1:]: v for k, v in list(entries.items())[:4]}
    entries = {**entries, **shared}
    for k, v in entries.items():
        m.set(k, v)
    root = m.root()
    assert root == _naive_root(entries)
    for k, v in entries.items():
        proof = m.prove(k)
        assert MapProof.decode(proof.encode()) == proof
        assert verify_map_proof(root, k, proof) == v
    if absent not in entries:
        proof = m.prove(absent)
        assert verify_map_proof(root, absent, proof) is None
        if entries:
            # Tampering with any part of a proof fails.
            pick = data.draw(st.sampled_from(sorted(entries)))
            good = m.prove(pick)
            assert good.terminal_value is not None
            other_value = bytes([good.terminal_value[0] ^ 1]) + good.terminal_value[1:]
            for bad in (replace(good, terminal_value=other_value),
                        replace(good, siblings=(*good.siblings, EMPTY)),
                        replace(good, depth=good.depth + 1, present=good.present + b"\x00")):
                with pytest.raises(KTError):
                    verify_map_proof(root, pick, bad)


def test_map_proofs_built_on_shared_tops_are_the_proofs_built_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys under one node at depth PROOF_TOP share their proofs' siblings above it: a
    caller proving many keys of one map keeps them, and the proofs are unchanged."""
    from sottovoce.kt import map as kt_map

    monkeypatch.setattr(kt_map, "PROOF_TOP", 3)
    store: dict[tuple[int, int], bytes] = {}
    smap = SparseMap(store)
    keys = [hashlib.sha256(b"k%d" % i).digest() for i in range(300)]
    for k in keys:
        smap.set(k, hashlib.sha256(k).digest())
    others = [hashlib.sha256(b"absent%d" % i).digest() for i in range(100)]
    tops: kt_map.ProofTops = {}
    for _ in range(2):  # filling the tops, then from them
        for k in keys + others:
            proof = smap.prove(k, tops)
            assert proof == smap.prove(k)
            assert verify_map_proof(smap.root(), k, proof) == (
                hashlib.sha256(k).digest() if k in keys else None)
    # Kept in two parts: by the nodes at depth PROOF_TOP // 2 and at PROOF_TOP.
    assert sum(d == 1 for d, _ in tops) == 2 and sum(d == 3 for d, _ in tops) == 8
