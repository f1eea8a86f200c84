"""Group state persistence (``Group.to_state`` / ``Group.from_state``, ``sottovoce.mls.state``).

The contract: a member saved and restored at any point of a conversation is
indistinguishable from one that never stopped. It agrees on the epoch
authenticator and exporter, reads the next messages, commits, and its peers
process those commits; keys it already used stay used (a replay is still
rejected, a restored sender never reuses a generation); late messages of past
epochs, skipped keys, cached proposals, keys of its own pending Update, its own
pending commit and resumption PSKs all survive. Re-encoding a restored state
gives the same bytes. Damaged input raises ``InvalidGroupState`` and nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from sottovoce.crypto.rng import Random
from sottovoce.crypto.suite import SUPPORTED_SUITES, CipherSuite, cipher_suite
from sottovoce.errors import DecodeError, UsageError
from sottovoce.mls.common import WireFormat
from sottovoce.mls.epoch import Epoch, PastEpoch
from sottovoce.mls.group import (
    ApplicationMessage,
    Group,
    GroupConfig,
    GroupInactive,
    PskStore,
    QueuedProposal,
    StagedCommit,
    WrongEpoch,
)
from sottovoce.mls.group.epoch_state import EpochState
from sottovoce.mls.secret_tree import (
    RatchetSnapshot,
    RatchetType,
    ReplayedGeneration,
    SecretTree,
    SecretTreeSnapshot,
)
from sottovoce.mls.snapshot import GroupSnapshot, PastEpochSnapshot
from sottovoce.mls.state import (
    STATE_MAGIC,
    STATE_VERSION,
    InvalidGroupState,
    encode_group_state,
)
from tests.unit.test_mls_group import NOW, SUITE, Client, make_client

PRIVATE = GroupConfig()  # handshake messages as PrivateMessage: the secret tree matters most
PUBLIC = GroupConfig(handshake_wire_format=WireFormat.PUBLIC_MESSAGE)


# --- helpers ----------------------------------------------------------------------------


def view(g: Group) -> tuple[object, ...]:
    """Everything observable about a member's state."""
    return (
        g.group_id,
        g.epoch,
        g.group_context,
        g.own_leaf_index,
        g.epoch_authenticator.expose(),
        g.export_secret(b"state", b"ctx", 32).expose(),
        g.export_ratchet_tree(),
        g.confirmation_tag,
        tuple((q.ref, q.sender, q.proposal) for q in g.pending_proposals),
        tuple(
            None if (p := g.resumption_psk(e)) is None else p.expose()
            for e in range(max(0, g.epoch - 40), g.epoch + 1)
        ),
        g.is_active,
        g.removed,
        g.pending_reinit,
        None if (pc := g.pending_commit) is None else (
            pc.epoch, pc.committer, pc.proposals, pc.adds, pc.removes, pc.psks, pc.group_context,
            None if pc.epoch_authenticator is None else pc.epoch_authenticator.expose(),
        ),
        g.suite.id,
    )


def restart(g: Group, psk_lookup: PskStore | None = None) -> Group:
    """Save ``g``, restore it, and check the round trip is exact."""
    state = g.to_state()
    assert g.to_state() == state  # saving does not change the group
    restored = Group.from_state(state, psk_lookup=psk_lookup)
    assert restored.to_state() == state  # byte-identical re-encoding
    assert view(restored) == view(g)
    return restored


def restart_all(groups: dict[str, Group]) -> None:
    for name in groups:
        groups[name] = restart(groups[name])


def deliver(groups: dict[str, Group], sender: str, message: bytes) -> list[object]:
    """Every other active member processes ``message``; commits are merged."""
    out = []
    for name, g in groups.items():
        if name == sender or not g.is_active:
            continue
        content = g.process_message(message).content
        if isinstance(content, StagedCommit):
            g.merge_staged_commit(content)
        out.append(content)
    return out


def assert_in_sync(groups: dict[str, Group]) -> None:
    active = [g for g in groups.values() if g.is_active]
    assert len({g.epoch_authenticator.expose() for g in active}) == 1
    assert len({g.export_secret(b"x", b"y", 16).expose() for g in active}) == 1
    assert len({g.tree_hash for g in active}) == 1


def join(client: Client, welcome: bytes, config: GroupConfig = PRIVATE) -> Group:
    return Group.join_from_welcome(
        welcome, client.key_package, client.private, signing_key=client.signing_key,
        now_ms=NOW, config=config,
    )


def three(rng: Random, config: GroupConfig = PRIVATE) -> tuple[dict[str, Group], dict[str, Client]]:
    clients = {n: make_client(n, rng) for n in ("alice", "bob", "carol")}
    alice = Group.create(
        SUITE, credential=clients["alice"].credential, signing_key=clients["alice"].signing_key,
        rng=rng, now_ms=NOW, config=config,
    )
    bundle = alice.add_members(
        [clients["bob"].key_package, clients["carol"].key_package], rng=rng
    )
    alice.merge_pending_commit()
    assert bundle.welcome is not None
    groups = {
        "alice": alice,
        "bob": join(clients["bob"], bundle.welcome, config),
        "carol": join(clients["carol"], bundle.welcome, config),
    }
    return groups, clients


# --- a whole conversation, everyone restarting after every step --------------------------


@pytest.mark.parametrize("config", [PRIVATE, PUBLIC], ids=["private", "public"])
def test_restart_at_every_point_of_a_conversation(rng: Random, config: GroupConfig) -> None:
    clients = {n: make_client(n, rng) for n in ("alice", "bob", "carol")}
    alice = Group.create(
        SUITE, credential=clients["alice"].credential, signing_key=clients["alice"].signing_key,
        rng=rng, now_ms=NOW, config=config,
    )
    groups = {"alice": restart(alice)}  # after create
    # Add bob, with the commit still pending across a restart (a crash between
    # sending a commit and the delivery service accepting it).
    bundle = groups["alice"].add_members([clients["bob"].key_package], rng=rng)
    groups["alice"] = restart(groups["alice"])
    assert groups["alice"].pending_commit is not None
    groups["alice"].merge_pending_commit()
    assert bundle.welcome is not None
    groups["bob"] = join(clients["bob"], bundle.welcome, config)
    restart_all(groups)  # after add
    assert_in_sync(groups)

    # Application data both ways, restarting between every message.
    for i in range(4):
        sender, receiver = ("alice", "bob") if i % 2 == 0 else ("bob", "alice")
        msg = groups[sender].encrypt_application(b"m%d" % i, rng=rng)
        restart_all(groups)
        assert groups[receiver].process_message(msg).content == ApplicationMessage(b"m%d" % i)
        restart_all(groups)

    # bob adds carol by proposal; alice commits; everyone restarts in between.
    proposal = groups["bob"].propose_add(clients["carol"].key_package, rng=rng)
    restart_all(groups)
    [queued] = deliver(groups, "bob", proposal)
    assert isinstance(queued, QueuedProposal)
    restart_all(groups)  # the proposal cache survives on both sides
    assert len(groups["alice"].pending_proposals) == len(groups["bob"].pending_proposals) == 1
    bundle = groups["alice"].commit(rng=rng)
    restart_all(groups)
    groups["alice"].merge_pending_commit()
    deliver(groups, "alice", bundle.commit)
    assert bundle.welcome is not None
    groups["carol"] = join(clients["carol"], bundle.welcome, config)
    restart_all(groups)
    assert_in_sync(groups)

    # Commits from each member, each a restored instance, processed by restored peers.
    for name in ("bob", "carol", "alice"):
        bundle = groups[name].self_update(rng=rng)
        groups[name].merge_pending_commit()
        restart_all(groups)
        deliver(groups, name, bundle.commit)
        restart_all(groups)
        assert_in_sync(groups)
        msg = groups[name].encrypt_application(b"after " + name.encode(), rng=rng)
        assert deliver(groups, name, msg) == [ApplicationMessage(b"after " + name.encode())] * 2

    # A removal: the removed member's state is saved and restored too.
    bundle = groups["alice"].remove_members([groups["carol"].own_leaf_index], rng=rng)
    groups["alice"].merge_pending_commit()
    deliver(groups, "alice", bundle.commit)
    restart_all(groups)
    carol = groups.pop("carol")
    assert carol.removed and not carol.is_active
    with pytest.raises(GroupInactive):
        carol.encrypt_application(b"x", rng=rng)
    later = groups["bob"].encrypt_application(b"secret", rng=rng)
    with pytest.raises(WrongEpoch):
        carol.process_message(later)
    assert groups["alice"].process_message(later).content == ApplicationMessage(b"secret")
    assert_in_sync(groups)


# --- the secret tree: generations, replays, skipped keys, past epochs ---------------------


def test_replay_after_restore_is_still_rejected(rng: Random) -> None:
    groups, _ = three(rng)
    msgs = [groups["alice"].encrypt_application(b"%d" % i, rng=rng) for i in range(4)]
    bob = groups["bob"]
    # Out of order: generation 2 first, so 0 and 1 become skipped keys.
    assert bob.process_message(msgs[2]).content == ApplicationMessage(b"2")
    bob = restart(bob)
    assert bob._state.secret_tree.ratchet_position(
        groups["alice"].own_leaf_index, RatchetType.APPLICATION
    ) == (3, (0, 1))
    with pytest.raises(ReplayedGeneration):
        bob.process_message(msgs[2])
    assert bob.process_message(msgs[0]).content == ApplicationMessage(b"0")
    bob = restart(bob)
    with pytest.raises(ReplayedGeneration):
        bob.process_message(msgs[0])
    assert bob.process_message(msgs[1]).content == ApplicationMessage(b"1")
    assert bob.process_message(msgs[3]).content == ApplicationMessage(b"3")
    bob = restart(bob)
    for m in msgs:
        with pytest.raises(ReplayedGeneration):
            bob.process_message(m)


def test_restored_sender_continues_its_generations(rng: Random) -> None:
    """A restored sender must not reuse a (generation, key, nonce): its peers would
    reject the message as a replay (and the AEAD nonce would repeat)."""
    groups, _ = three(rng)
    for i in range(3):
        deliver(groups, "alice", groups["alice"].encrypt_application(b"%d" % i, rng=rng))
    alice = restart(groups["alice"])
    msg = alice.encrypt_application(b"next", rng=rng)
    assert deliver(groups, "alice", msg) == [ApplicationMessage(b"next")] * 2
    leaf = alice.own_leaf_index
    assert alice._state.secret_tree.ratchet_position(leaf, RatchetType.APPLICATION) == (4, ())


def test_late_message_of_a_past_epoch_after_restore(rng: Random) -> None:
    groups, _ = three(rng)
    late = groups["alice"].encrypt_application(b"late", rng=rng)
    bundle = groups["bob"].self_update(rng=rng)
    groups["bob"].merge_pending_commit()
    deliver(groups, "bob", bundle.commit)
    carol = restart(groups["carol"])
    assert carol._state.past and carol._state.past[-1].context.epoch == carol.epoch - 1
    assert carol.process_message(late).content == ApplicationMessage(b"late")
    carol = restart(carol)
    with pytest.raises(ReplayedGeneration):
        carol.process_message(late)


def test_own_update_proposal_key_survives_restore(rng: Random) -> None:
    groups, _ = three(rng)
    proposal = groups["bob"].propose_update(rng=rng)
    deliver(groups, "bob", proposal)
    groups["bob"] = restart(groups["bob"])  # must keep the new leaf's private key
    bundle = groups["carol"].commit(rng=rng)
    groups["carol"].merge_pending_commit()
    deliver(groups, "carol", bundle.commit)
    assert_in_sync(groups)
    msg = groups["alice"].encrypt_application(b"to the updated bob", rng=rng)
    assert groups["bob"].process_message(msg).content == ApplicationMessage(b"to the updated bob")


def test_resumption_psks_and_psk_lookup_after_restore(rng: Random) -> None:
    store = PskStore({b"ext": b"\x07" * 32})
    config = dataclasses.replace(PRIVATE, psk_lookup=store)
    groups, _ = three(rng, config)
    for _ in range(3):
        bundle = groups["alice"].self_update(rng=rng)
        groups["alice"].merge_pending_commit()
        deliver(groups, "alice", bundle.commit)
    old_epoch = groups["alice"].epoch - 2
    for name in groups:
        groups[name] = restart(groups[name], psk_lookup=store)
    # Both PSK kinds resolve after a restore: a resumption PSK of an old epoch
    # (kept in the state) and an external one (psk_lookup, passed again).
    psks = [
        groups["bob"].resumption_psk_id(old_epoch, rng=rng),
        groups["bob"].external_psk_id(b"ext", rng=rng),
    ]
    for psk in psks:
        deliver(groups, "bob", groups["bob"].propose_psk(psk, rng=rng))
    bundle = groups["bob"].commit(rng=rng)
    groups["bob"].merge_pending_commit()
    deliver(groups, "bob", bundle.commit)
    assert bundle.staged.psks == tuple(psks)
    assert_in_sync(groups)
    # Without the lookup, the restored member cannot resolve an external PSK.
    alice = Group.from_state(groups["alice"].to_state())
    assert alice._state.config.psk_lookup is None


def test_committed_reinit_survives_restore(rng: Random) -> None:
    groups, _ = three(rng)
    reinit = groups["carol"].reinit_proposal(rng=rng)
    bundle = groups["carol"].commit(rng=rng, proposals=[reinit])
    groups["carol"].merge_pending_commit()
    deliver(groups, "carol", bundle.commit)
    restart_all(groups)
    assert all(g.pending_reinit == reinit and not g.is_active for g in groups.values())


def test_dropping_a_pending_commit_after_restore(rng: Random) -> None:
    groups, _ = three(rng)
    mine = groups["alice"].self_update(rng=rng)
    theirs = groups["bob"].self_update(rng=rng)
    groups["bob"].merge_pending_commit()
    alice = restart(groups["alice"])
    with pytest.raises(UsageError):
        alice.merge_staged_commit(mine.staged)  # the pre-restart object is not ours
    # The delivery service took bob's commit: drop ours, process his.
    alice.clear_pending_commit()
    groups["alice"] = restart(alice)
    deliver(groups, "bob", theirs.commit)
    assert_in_sync(groups)


def test_commit_received_but_not_merged_is_processed_again_after_restore(rng: Random) -> None:
    """A crash between processing a commit and merging it loses nothing: the
    handshake key is consumed by the merge, so the restored member reprocesses it."""
    groups, _ = three(rng)
    bundle = groups["alice"].self_update(rng=rng)
    groups["alice"].merge_pending_commit()
    staged = groups["bob"].process_message(bundle.commit).content
    assert isinstance(staged, StagedCommit)
    bob = restart(groups["bob"])
    assert bob.epoch == staged.epoch - 1
    again = bob.process_message(bundle.commit).content
    assert isinstance(again, StagedCommit)
    bob.merge_staged_commit(again)
    groups["bob"] = restart(bob)
    deliver({"alice": groups["alice"], "carol": groups["carol"]}, "alice", bundle.commit)
    assert_in_sync(groups)
    with pytest.raises(WrongEpoch):  # the merged commit's epoch is gone
        groups["bob"].process_message(bundle.commit)


# --- snapshots: the value state.py encodes ---------------------------------------------


def test_a_snapshot_is_detached_and_restores_a_member_of_its_own(rng: Random) -> None:
    """``Group.snapshot()`` is a value: what the group does afterwards (consuming
    keys, merging a commit) leaves it as it was, ``Group.restore()`` continues from it
    as a new instance, and it encodes to the same bytes as ``to_state()``."""
    groups, _ = three(rng, PUBLIC)
    bob = groups["bob"]
    msg = groups["alice"].encrypt_application(b"once", rng=rng)
    snap, state = bob.snapshot(), bob.to_state()
    assert encode_group_state(snap) == state
    assert bob.process_message(msg).content == ApplicationMessage(b"once")
    with pytest.raises(ReplayedGeneration):
        bob.process_message(msg)
    bundle = groups["carol"].self_update(rng=rng)
    groups["carol"].merge_pending_commit()
    deliver(groups, "carol", bundle.commit)
    assert encode_group_state(snap) == state
    restored = Group.restore(snap)
    assert restored.epoch == bob.epoch - 1
    assert restored.process_message(msg).content == ApplicationMessage(b"once")
    staged = restored.process_message(bundle.commit).content
    assert isinstance(staged, StagedCommit)
    with pytest.raises(UsageError):  # staged by another instance
        Group.restore(snap).merge_staged_commit(staged)
    restored.merge_staged_commit(staged)
    assert restored.epoch_authenticator == bob.epoch_authenticator
    assert "Secret" not in repr(snap) and snap.epoch.context.epoch == restored.epoch - 1


# --- all seven cipher suites ----------------------------------------------------------


@pytest.mark.parametrize("suite_id", SUPPORTED_SUITES)
def test_every_cipher_suite_round_trips(rng: Random, suite_id: int) -> None:
    suite: CipherSuite = cipher_suite(suite_id)
    alice_c, bob_c = make_client("alice", rng, suite), make_client("bob", rng, suite)
    alice = Group.create(
        suite, credential=alice_c.credential, signing_key=alice_c.signing_key, rng=rng,
        now_ms=NOW,
    )
    bundle = alice.add_members([bob_c.key_package], rng=rng)
    alice.merge_pending_commit()
    assert bundle.welcome is not None
    groups = {"alice": alice, "bob": join(bob_c, bundle.welcome)}
    deliver(groups, "alice", groups["alice"].encrypt_application(b"hi", rng=rng))
    pending = groups["bob"].self_update(rng=rng)
    restart_all(groups)
    groups["bob"].merge_pending_commit()
    deliver(groups, "bob", pending.commit)
    restart_all(groups)
    assert_in_sync(groups)
    assert deliver(groups, "alice", groups["alice"].encrypt_application(b"x", rng=rng)) == [
        ApplicationMessage(b"x")
    ]


# --- damaged input --------------------------------------------------------------------


def _busy_state(rng: Random) -> bytes:
    """A state with every optional part filled: past epochs, skipped keys, cached
    proposals, an own Update key and a pending commit."""
    groups, _ = three(rng)
    msgs = [groups["alice"].encrypt_application(b"%d" % i, rng=rng) for i in range(3)]
    groups["bob"].process_message(msgs[2])
    bundle = groups["carol"].self_update(rng=rng)
    groups["carol"].merge_pending_commit()
    deliver(groups, "carol", bundle.commit)
    deliver(groups, "alice", groups["alice"].propose_remove(2, rng=rng))
    groups["bob"].propose_update(rng=rng)
    groups["bob"].commit(rng=rng)
    bob = groups["bob"]
    st = bob._state
    assert st.past and st.proposals and st.own_update_keys and bob.pending_commit
    return bob.to_state()


def _redigest(head: bytes) -> bytes:
    return head + hashlib.sha256(head).digest()


def test_truncated_or_modified_state_raises_decode_error(rng: Random) -> None:
    state = _busy_state(rng)
    Group.from_state(state)
    for n in range(len(state)):
        with pytest.raises(InvalidGroupState):
            Group.from_state(state[:n])
    for i in range(len(state)):
        damaged = bytearray(state)
        damaged[i] ^= 0x01
        with pytest.raises(InvalidGroupState):
            Group.from_state(bytes(damaged))
    with pytest.raises(InvalidGroupState):
        Group.from_state(state + b"\x00")
    assert issubclass(InvalidGroupState, DecodeError)


def test_wrong_magic_version_or_type(rng: Random) -> None:
    state = _busy_state(rng)
    head = state[:-32]
    with pytest.raises(InvalidGroupState, match="not a sottovoce"):
        Group.from_state(_redigest(b"xxxx" + head[4:]))
    future = STATE_MAGIC + (STATE_VERSION + 1).to_bytes(2, "big") + head[6:]
    with pytest.raises(InvalidGroupState, match="version"):
        Group.from_state(_redigest(future))
    with pytest.raises(InvalidGroupState):
        Group.from_state(_redigest(head + b"\x00"))  # trailing byte after the body
    with pytest.raises(InvalidGroupState):
        Group.from_state("not bytes")  # type: ignore[arg-type]


def test_modified_body_with_a_valid_digest_is_rejected_or_harmless(rng: Random) -> None:
    """Past the digest, the decoder itself: every change either decodes into a
    group (a changed secret byte cannot be told apart) or raises
    InvalidGroupState; no other exception escapes."""
    state = _busy_state(rng)
    head = state[:-32]
    rejected = accepted = 0
    for i in range(len(STATE_MAGIC) + 2, len(head)):
        for flip in (0x01, 0xFF):
            damaged = bytearray(head)
            damaged[i] ^= flip
            try:
                Group.from_state(_redigest(bytes(damaged)))
            except InvalidGroupState:
                rejected += 1
            else:
                accepted += 1
    # Most of a state is key material, which nothing can check; the structure is.
    assert rejected > 1000 and accepted > 0


def test_state_is_not_in_reprs_or_errors(rng: Random) -> None:
    groups, _ = three(rng)
    bob = groups["bob"]
    state = bob.to_state()
    secret = bob.epoch_authenticator.expose()
    for text in (repr(bob), repr(Group.from_state(state)), repr(bob._state.secret_tree)):
        assert secret.hex() not in text and state[-32:].hex() not in text
    damaged = bytearray(state)
    damaged[-1] ^= 1
    with pytest.raises(InvalidGroupState) as info:
        Group.from_state(bytes(damaged))
    assert len(str(info.value)) < 80


# --- size ----------------------------------------------------------------------------


def test_past_epochs_are_stored_as_tree_differences(rng: Random) -> None:
    """With two past epochs kept, the state is about one tree, not three."""
    clients = [make_client(f"m{i}", rng) for i in range(40)]
    alice = Group.create(
        SUITE, credential=clients[0].credential, signing_key=clients[0].signing_key,
        rng=rng, now_ms=NOW,
    )
    alice.add_members([c.key_package for c in clients[1:]], rng=rng)
    alice.merge_pending_commit()
    fresh = len(alice.to_state())
    for _ in range(2):
        alice.self_update(rng=rng)
        alice.merge_pending_commit()
    assert len(alice._state.past) == 2
    tree = len(alice.export_ratchet_tree())
    with_past = len(alice.to_state())
    # Two full copies would add 2 * tree; the differences (the committer's leaf and
    # path, a context, an unopened secret tree) add a fraction of one.
    assert with_past - fresh < tree // 2


# --- every field of the state is persisted ----------------------------------------------


def test_every_group_field_is_known_to_the_state_codec() -> None:
    """A new field of a member's state (or of its epoch records) must be added to
    GroupSnapshot and sottovoce.mls.state, or a restored member would silently lose it."""
    snapshot_fields = [f.name for f in dataclasses.fields(GroupSnapshot)]
    assert snapshot_fields == [
        "suite", "config", "signing_key", "epoch", "secret_tree", "proposals",
        "own_update_keys", "past", "resumption_psks", "reinit", "removed", "active",
        "pending_commit",
    ]
    # The live state holds exactly the snapshot's fields, plus the instance token.
    assert {f.name for f in dataclasses.fields(EpochState)} == {*snapshot_fields, "token"}
    assert [f.name for f in dataclasses.fields(Epoch)] == [
        "context", "tree", "private", "secrets", "interim_transcript_hash",
        "confirmation_tag", "context_bytes",
    ]
    past_fields = ["context", "tree", "sender_data_secret", "secret_tree"]
    assert [f.name for f in dataclasses.fields(PastEpoch)] == past_fields
    assert [f.name for f in dataclasses.fields(PastEpochSnapshot)] == past_fields
    assert set(SecretTree.__slots__) == {"_nodes", "_ratchets", "_suite", "_version", "n_leaves"}
    assert [f.name for f in dataclasses.fields(SecretTreeSnapshot)] == [
        "n_leaves", "nodes", "ratchets",
    ]
    assert [f.name for f in dataclasses.fields(RatchetSnapshot)] == [
        "leaf", "ratchet_type", "generation", "secret", "expired_below", "skipped",
    ]
    assert [f.name for f in dataclasses.fields(GroupConfig)] == [
        "handshake_wire_format", "ratchet_tree_in_welcome", "max_past_epochs",
        "max_resumption_psks", "padding", "psk_lookup",
    ]
    assert {f.name for f in dataclasses.fields(StagedCommit)} == {
        "group_id", "epoch", "sender", "committer", "proposals", "adds", "removes",
        "updates", "psks", "new_extensions", "reinit", "external", "has_path",
        "self_removed", "authenticated_data", "_owner", "_base_epoch", "_next",
        "_pending_key",
    }
