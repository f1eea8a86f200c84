"""RFC 9420 §8, §10–§14 group state machine: positive flows and rejections.

Every negative test checks three things: the input is rejected with a typed
error, the receiving group is unchanged (epoch, epoch authenticator, tree
hash, ratchet tree, proposal cache), and a valid message processed afterwards
still works (so nothing was half-consumed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite, cipher_suite
from sottovoce.errors import RemoteError, UsageError
from sottovoce.mls.common import Extension, ExtensionType, WireFormat
from sottovoce.mls.errors import (
    InvalidConfirmationTag,
    InvalidMembershipTag,
    InvalidSignature,
)
from sottovoce.mls.framing import (
    AuthenticatedContent,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PublicMessage,
    Sender,
    protect_public,
    sign_content,
)
from sottovoce.mls.group import (
    ApplicationMessage,
    CommitBundle,
    Group,
    GroupConfig,
    GroupInactive,
    InvalidProposal,
    InvalidProposalList,
    InvalidWelcome,
    KeyPackagePrivate,
    MissingPsk,
    OwnMessage,
    PskStore,
    QueuedProposal,
    StagedCommit,
    UnknownProposal,
    UnknownSender,
    UnsupportedCipherSuite,
    WrongEpoch,
    WrongGroup,
    generate_key_package,
    validate_key_package,
)
from sottovoce.mls.key_schedule import zero_secret
from sottovoce.mls.messages import (
    Add,
    Capabilities,
    Commit,
    Credential,
    ExternalSender,
    ExternalSenders,
    GroupInfo,
    KeyPackage,
    PreSharedKey,
    Remove,
    RequiredCapabilities,
    UpdatePath,
    Welcome,
)
from sottovoce.mls.proposals import InvalidKeyPackage
from sottovoce.mls.secret_tree import ReplayedGeneration
from sottovoce.mls.tree import InvalidParentHash
from sottovoce.mls.welcome import (
    NewMember,
    build_welcome,
    decrypt_group_info,
    decrypt_group_secrets,
)
from tests.conftest import deterministic_rng

NOW = 1_700_000_000_000
SUITE = cipher_suite(1)
PUBLIC = GroupConfig(handshake_wire_format=WireFormat.PUBLIC_MESSAGE)


@dataclass
class Client:
    name: str
    signing_key: SigningKey
    credential: Credential
    key_package: KeyPackage
    private: KeyPackagePrivate


def make_client(name: str, rng: Random, suite: CipherSuite = SUITE) -> Client:
    sk = suite.generate_signing_key(rng)
    cred = Credential.basic(name.encode())
    kp, priv = generate_key_package(suite, cred, sk, rng, NOW)
    return Client(name, sk, cred, kp, priv)


def make_group(
    rng: Random, names: tuple[str, ...] = ("alice", "bob", "carol"), config: GroupConfig = PUBLIC
) -> tuple[dict[str, Group], dict[str, Client]]:
    clients = {n: make_client(n, rng) for n in names}
    first = clients[names[0]]
    creator = Group.create(
        SUITE, credential=first.credential, signing_key=first.signing_key, rng=rng, now_ms=NOW,
        config=config,
    )
    groups = {names[0]: creator}
    if len(names) > 1:
        bundle = creator.add_members([clients[n].key_package for n in names[1:]], rng=rng)
        creator.merge_pending_commit()
        assert bundle.welcome is not None
        for n in names[1:]:
            c = clients[n]
            groups[n] = Group.join_from_welcome(
                bundle.welcome, c.key_package, c.private, signing_key=c.signing_key,
                now_ms=NOW, config=config,
            )
    return groups, clients


def assert_in_sync(groups: dict[str, Group]) -> None:
    auths = {g.epoch_authenticator.expose() for g in groups.values()}
    exports = {g.export_secret(b"test", b"ctx", 32).expose() for g in groups.values()}
    trees = {g.tree_hash for g in groups.values()}
    assert len(auths) == len(exports) == len(trees) == 1


def deliver(groups: dict[str, Group], sender: str, message: bytes) -> None:
    """Every other member processes ``message``; commits are merged."""
    for name, g in groups.items():
        if name == sender:
            continue
        result = g.process_message(message)
        if isinstance(result.content, StagedCommit):
            g.merge_staged_commit(result.content)


def commit_and_deliver(
    groups: dict[str, Group], sender: str, bundle_fn: Callable[[Group], CommitBundle]
) -> None:
    bundle = bundle_fn(groups[sender])
    groups[sender].merge_pending_commit()
    deliver(groups, sender, bundle.commit)


def snapshot(g: Group) -> tuple[object, ...]:
    return (
        g.epoch,
        g.epoch_authenticator.expose(),
        g.tree_hash,
        g.export_ratchet_tree(),
        g.confirmation_tag,
        tuple(q.ref for q in g.pending_proposals),
        g.is_active,
    )


def reframe(
    committer: Group,
    message: bytes,
    *,
    content: Callable[[FramedContent], FramedContent] | None = None,
    signature: Callable[[bytes], bytes] | None = None,
    tag: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """Rebuild ``committer``'s PublicMessage with changes, re-signed by the committer
    (so only the intended field is wrong) and with a valid membership tag."""
    pm = MLSMessage.decode(message).body
    assert isinstance(pm, PublicMessage)
    st = committer._state.epoch
    fc = pm.content if content is None else content(pm.content)
    sig = sign_content(committer._state.signing_key, WireFormat.PUBLIC_MESSAGE, fc, st.context)
    if signature is not None:
        sig = signature(sig)
    auth = AuthenticatedContent(
        wire_format=WireFormat.PUBLIC_MESSAGE,
        content=fc,
        auth=FramedContentAuthData(signature=sig, confirmation_tag=pm.auth.confirmation_tag),
    )
    out = protect_public(SUITE, auth, st.secrets.membership_key, st.context)
    if tag is not None:
        assert out.membership_tag is not None
        out = replace(out, membership_tag=tag(out.membership_tag))
    return MLSMessage(body=out).encode()


# --- positive flows --------------------------------------------------------------------


@pytest.mark.parametrize("wire_format", [WireFormat.PUBLIC_MESSAGE, WireFormat.PRIVATE_MESSAGE])
def test_rfc9420_12_group_lifecycle_stays_in_sync(rng: Random, wire_format: WireFormat) -> None:
    config = GroupConfig(handshake_wire_format=wire_format)
    groups, clients = make_group(rng, ("alice", "bob", "carol", "dave"), config)
    assert_in_sync(groups)
    assert groups["bob"].epoch == 1
    # Application data, both directions.
    msg = groups["bob"].encrypt_application(b"hello", rng=rng, authenticated_data=b"ad")
    for name in ("alice", "carol", "dave"):
        result = groups[name].process_message(msg)
        assert result.content == ApplicationMessage(b"hello")
        assert result.authenticated_data == b"ad"
        assert result.credential == clients["bob"].credential
    # Proposals by reference from two members, committed by a third.
    p1 = groups["carol"].propose_update(rng=rng)
    p2 = groups["dave"].propose_remove(groups["bob"].own_leaf_index, rng=rng)
    for name, g in groups.items():
        for sender, p in (("carol", p1), ("dave", p2)):
            if name != sender:
                assert isinstance(g.process_message(p).content, QueuedProposal)
    bundle = groups["alice"].commit(rng=rng)
    staged = bundle.staged
    assert [m.index for m in staged.removes] == [1]
    assert [m.index for m in staged.updates] == [groups["carol"].own_leaf_index]
    groups["alice"].merge_pending_commit()
    for name in ("bob", "carol", "dave"):
        received = groups[name].process_message(bundle.commit).content
        assert isinstance(received, StagedCommit)
        assert received.self_removed == (name == "bob")
        groups[name].merge_staged_commit(received)
    assert not groups["bob"].is_active and groups["bob"].removed
    bob = groups.pop("bob")
    assert_in_sync(groups)
    # The removed member reads nothing of the new epoch.
    later = groups["carol"].encrypt_application(b"after", rng=rng)
    with pytest.raises(WrongEpoch):
        bob.process_message(later)
    with pytest.raises(GroupInactive):
        bob.encrypt_application(b"x", rng=rng)


def test_rfc9420_12_4_commit_without_path_for_add_only(rng: Random) -> None:
    groups, _ = make_group(rng)
    erin = make_client("erin", rng)
    bundle = groups["bob"].commit(rng=rng, proposals=[Add(key_package=erin.key_package)],
                                  with_path=False)
    assert not bundle.staged.has_path
    groups["bob"].merge_pending_commit()
    deliver(groups, "bob", bundle.commit)
    assert bundle.welcome is not None
    groups["erin"] = Group.join_from_welcome(
        bundle.welcome, erin.key_package, erin.private, signing_key=erin.signing_key, config=PUBLIC
    )
    assert_in_sync(groups)
    with pytest.raises(UsageError):
        groups["bob"].commit(rng=rng, proposals=[Remove(removed=0)], with_path=False)


def test_rfc9420_12_4_3_3_welcome_without_ratchet_tree(rng: Random) -> None:
    config = replace(PUBLIC, ratchet_tree_in_welcome=False)
    groups, _ = make_group(rng, ("alice",), config)
    erin = make_client("erin", rng)
    bundle = groups["alice"].add_members([erin.key_package], rng=rng)
    groups["alice"].merge_pending_commit()
    deliver(groups, "alice", bundle.commit)
    assert bundle.welcome is not None
    with pytest.raises(UsageError):
        Group.join_from_welcome(bundle.welcome, erin.key_package, erin.private,
                                signing_key=erin.signing_key)
    groups["erin"] = Group.join_from_welcome(
        bundle.welcome, erin.key_package, erin.private, signing_key=erin.signing_key,
        ratchet_tree=groups["alice"].export_ratchet_tree(), config=config,
    )
    assert_in_sync(groups)


def test_rfc9420_8_4_external_and_resumption_psks(rng: Random) -> None:
    store = PskStore({b"shared": b"s" * 32})
    config = replace(PUBLIC, psk_lookup=store)
    groups, _ = make_group(rng, config=config)
    alice = groups["alice"]
    ext = alice.external_psk_id(b"shared", rng=rng)
    # Joiners only know resumption PSKs from the epoch they joined in.
    res = alice.resumption_psk_id(alice.epoch, rng=rng)
    bundle = alice.commit(rng=rng, proposals=[PreSharedKey(psk=ext), PreSharedKey(psk=res)],
                          with_path=False)
    assert bundle.staged.psks == (ext, res)
    alice.merge_pending_commit()
    deliver(groups, "alice", bundle.commit)
    assert_in_sync(groups)
    # A member without the external PSK cannot follow, and stays as it was.
    lonely, _ = make_group(rng, ("x", "y"), PUBLIC)
    psk = lonely["x"].external_psk_id(b"unknown", rng=rng)
    with pytest.raises(MissingPsk):
        lonely["x"].commit(rng=rng, proposals=[PreSharedKey(psk=psk)])


def test_rfc9420_12_4_3_2_external_commit_join_and_resync(rng: Random) -> None:
    groups, _ = make_group(rng)
    erin = make_client("erin", rng)
    join = Group.join_by_external_commit(
        groups["bob"].group_info(), credential=erin.credential, signing_key=erin.signing_key,
        rng=rng, now_ms=NOW, config=PUBLIC,
    )
    for g in groups.values():
        staged = g.process_message(join.commit).content
        assert isinstance(staged, StagedCommit) and staged.external
        g.merge_staged_commit(staged)
    groups["erin"] = join.group
    assert_in_sync(groups)
    # Erin lost her state: she rejoins and removes her old leaf in one commit.
    old = groups["erin"].own_leaf_index
    rejoin = Group.join_by_external_commit(
        groups["alice"].group_info(), credential=erin.credential,
        signing_key=SUITE.generate_signing_key(rng), rng=rng, config=PUBLIC, remove_leaf=old,
    )
    for name, g in list(groups.items()):
        staged = g.process_message(rejoin.commit).content
        assert isinstance(staged, StagedCommit)
        assert staged.self_removed == (name == "erin")
        g.merge_staged_commit(staged)
    groups["erin"] = rejoin.group
    assert_in_sync(groups)


def test_rfc9420_12_1_8_external_sender_proposal(rng: Random) -> None:
    ds_key = SUITE.generate_signing_key(rng)
    senders = ExternalSenders(senders=(ExternalSender(
        signature_key=ds_key.verify_key.data, credential=Credential.basic(b"ds")),))
    ext = Extension(extension_type=ExtensionType.EXTERNAL_SENDERS,
                    extension_data=senders.encode())
    alice_c = make_client("alice", rng)
    alice = Group.create(SUITE, credential=alice_c.credential, signing_key=alice_c.signing_key,
                         rng=rng, now_ms=NOW, extensions=[ext], config=PUBLIC)
    bob = make_client("bob", rng)
    bundle = alice.add_members([bob.key_package], rng=rng)
    alice.merge_pending_commit()
    assert bundle.welcome is not None
    bob_g = Group.join_from_welcome(bundle.welcome, bob.key_package, bob.private,
                                    signing_key=bob.signing_key, config=PUBLIC)
    # The delivery service (external sender 0) proposes removing bob.
    fc = FramedContent(group_id=alice.group_id, epoch=alice.epoch, sender=Sender.external(0),
                       content=Remove(removed=1))
    sig = sign_content(ds_key, WireFormat.PUBLIC_MESSAGE, fc, None)
    auth = AuthenticatedContent(wire_format=WireFormat.PUBLIC_MESSAGE, content=fc,
                                auth=FramedContentAuthData(signature=sig))
    message = MLSMessage(body=protect_public(SUITE, auth, None, None)).encode()
    result = alice.process_message(message)
    assert isinstance(result.content, QueuedProposal)
    assert result.credential == Credential.basic(b"ds")
    assert bob_g.process_message(message).sender == Sender.external(0)
    commit = alice.commit(rng=rng)
    alice.merge_pending_commit()
    assert bob_g.process_message(commit.commit).content.self_removed  # type: ignore[union-attr]
    # An unknown external sender index is refused.
    fc2 = replace(fc, sender=Sender.external(1), epoch=alice.epoch)
    sig2 = sign_content(ds_key, WireFormat.PUBLIC_MESSAGE, fc2, None)
    auth2 = replace(auth, content=fc2, auth=FramedContentAuthData(signature=sig2))
    with pytest.raises(UnknownSender):
        alice.process_message(MLSMessage(body=protect_public(SUITE, auth2, None, None)).encode())


def test_rfc9420_11_1_required_capabilities_gate_adds(rng: Random) -> None:
    rc = RequiredCapabilities(extension_types=(0xF0F0,))
    ext = Extension(extension_type=ExtensionType.REQUIRED_CAPABILITIES, extension_data=rc.encode())
    caps = Capabilities(cipher_suites=(1,), credentials=(1,), extensions=(0xF0F0,))
    alice_c = make_client("alice", rng)
    alice = Group.create(SUITE, credential=alice_c.credential, signing_key=alice_c.signing_key,
                         rng=rng, now_ms=NOW, extensions=[ext], capabilities=caps)
    plain = make_client("bob", rng)  # does not list 0xF0F0
    before = snapshot(alice)
    with pytest.raises(InvalidKeyPackage):
        alice.add_members([plain.key_package], rng=rng)
    assert snapshot(alice) == before and alice.pending_commit is None
    sk = SUITE.generate_signing_key(rng)
    kp, _ = generate_key_package(SUITE, Credential.basic(b"c"), sk, rng, NOW, capabilities=caps)
    alice.add_members([kp], rng=rng)
    alice.merge_pending_commit()
    assert alice.epoch == 1


def test_rfc9420_11_2_reinit_and_11_3_branch(rng: Random) -> None:
    groups, clients = make_group(rng)
    # Branch a subgroup of alice and bob.
    bob_kp, bob_priv = generate_key_package(SUITE, clients["bob"].credential,
                                            clients["bob"].signing_key, rng, NOW)
    sub, bundle = groups["alice"].branch([bob_kp], rng=rng, now_ms=NOW)
    sub.merge_pending_commit()
    assert bundle.welcome is not None
    bob_sub = Group.join_from_welcome(bundle.welcome, bob_kp, bob_priv,
                                      signing_key=clients["bob"].signing_key,
                                      resumed_from=groups["bob"])
    assert bob_sub.epoch == 1 and bob_sub.epoch_authenticator == sub.epoch_authenticator
    # Reinit into suite 3.
    reinit = groups["carol"].reinit_proposal(rng=rng, cipher_suite_id=3)
    commit_and_deliver(groups, "carol", lambda g: g.commit(rng=rng, proposals=[reinit]))
    assert all(g.pending_reinit == reinit and not g.is_active for g in groups.values())
    suite3 = cipher_suite(3)
    fresh = {n: generate_key_package(suite3, clients[n].credential, clients[n].signing_key,
                                     rng, NOW) for n in ("alice", "bob")}
    new, bundle = groups["carol"].reinit([kp for kp, _ in fresh.values()], rng=rng, now_ms=NOW)
    new.merge_pending_commit()
    assert new.group_id == reinit.group_id and new.suite.id == 3 and new.epoch == 1
    assert bundle.welcome is not None
    for n, (kp, priv) in fresh.items():
        joined = Group.join_from_welcome(bundle.welcome, kp, priv,
                                         signing_key=clients[n].signing_key,
                                         resumed_from=groups[n])
        assert joined.epoch_authenticator == new.epoch_authenticator
    # A Welcome that claims to resume a group it does not match is refused.
    with pytest.raises(InvalidWelcome):
        Group.join_from_welcome(bundle.welcome, fresh["bob"][0], fresh["bob"][1],
                                signing_key=clients["bob"].signing_key,
                                psk_lookup=groups["bob"].find_psk, resumed_from=sub)
    with pytest.raises(MissingPsk):
        Group.join_from_welcome(bundle.welcome, fresh["bob"][0], fresh["bob"][1],
                                signing_key=clients["bob"].signing_key)


def test_rfc9420_14_late_application_message_from_past_epoch(rng: Random) -> None:
    groups, _ = make_group(rng)
    late = groups["bob"].encrypt_application(b"late", rng=rng)
    commit_and_deliver(groups, "alice", lambda g: g.self_update(rng=rng))
    result = groups["carol"].process_message(late)
    assert result.content == ApplicationMessage(b"late")
    assert result.epoch == groups["carol"].epoch - 1


# --- negative cases: typed error, state unchanged, next valid message works ---------------


def test_rfc9420_6_1_forged_or_empty_commit_signature_rejected(rng: Random) -> None:
    groups, _ = make_group(rng)
    alice, bob = groups["alice"], groups["bob"]
    bundle = alice.self_update(rng=rng)
    before = snapshot(bob)
    for forge in (lambda s: s[:-1] + bytes([s[-1] ^ 1]), lambda s: b""):
        bad = reframe(alice, bundle.commit, signature=forge)
        with pytest.raises(InvalidSignature):
            bob.process_message(bad)
        assert snapshot(bob) == before
    alice.merge_pending_commit()
    deliver(groups, "alice", bundle.commit)
    assert_in_sync(groups)


def test_rfc9420_6_2_wrong_membership_tag_rejected(rng: Random) -> None:
    groups, _ = make_group(rng)
    alice, bob = groups["alice"], groups["bob"]
    proposal = alice.propose_remove(2, rng=rng)
    before = snapshot(bob)
    bad = reframe(alice, proposal, tag=lambda t: bytes([t[0] ^ 0x80]) + t[1:])
    with pytest.raises(InvalidMembershipTag):
        bob.process_message(bad)
    assert snapshot(bob) == before
    assert isinstance(bob.process_message(proposal).content, QueuedProposal)


def test_rfc9420_12_4_2_commit_from_removed_member_rejected(rng: Random) -> None:
    groups, _ = make_group(rng)
    carol = groups.pop("carol")
    carol_index = carol.own_leaf_index
    commit_and_deliver({**groups, "carol": carol}, "alice",
                       lambda g: g.remove_members([carol_index], rng=rng))
    assert carol.removed
    bob = groups["bob"]
    before = snapshot(bob)
    # Carol's old state is kept, and it refuses to send.
    with pytest.raises(GroupInactive):
        carol.self_update(rng=rng)
    # A commit signed by carol's key for the current epoch, sent as her old leaf,
    # even with a valid membership tag (as if she had the key), is refused.
    own_commit = groups["alice"].self_update(rng=rng)
    carol_key = carol._state.signing_key

    def as_carol(fc: FramedContent) -> FramedContent:
        return replace(fc, sender=Sender.member(carol_index))

    forged = reframe(groups["alice"], own_commit.commit, content=as_carol)
    pm = MLSMessage.decode(forged).body
    assert isinstance(pm, PublicMessage)
    sig = sign_content(carol_key, WireFormat.PUBLIC_MESSAGE, pm.content, bob.group_context)
    with pytest.raises(UnknownSender):
        bob.process_message(MLSMessage(body=replace(pm, auth=replace(pm.auth, signature=sig)))
                            .encode())
    # And a commit of her old epoch is for the wrong epoch.
    old_epoch = reframe(groups["alice"], own_commit.commit,
                        content=lambda fc: replace(fc, epoch=fc.epoch - 1))
    with pytest.raises(WrongEpoch):
        bob.process_message(old_epoch)
    assert snapshot(bob) == before
    groups["alice"].merge_pending_commit()
    deliver(groups, "alice", own_commit.commit)
    assert_in_sync(groups)


def test_rfc9420_9_replayed_application_generation_rejected(rng: Random) -> None:
    groups, _ = make_group(rng)
    msg = groups["bob"].encrypt_application(b"once", rng=rng)
    carol = groups["carol"]
    assert carol.process_message(msg).content == ApplicationMessage(b"once")
    before = snapshot(carol)
    with pytest.raises(ReplayedGeneration):
        carol.process_message(msg)
    assert snapshot(carol) == before
    nxt = groups["bob"].encrypt_application(b"twice", rng=rng)
    assert carol.process_message(nxt).content == ApplicationMessage(b"twice")


def _welcome_for(rng: Random) -> tuple[dict[str, Group], Client, bytes]:
    groups, _ = make_group(rng)
    erin = make_client("erin", rng)
    bundle = groups["alice"].add_members([erin.key_package], rng=rng)
    groups["alice"].merge_pending_commit()
    deliver(groups, "alice", bundle.commit)
    assert bundle.welcome is not None
    return groups, erin, bundle.welcome


def _rewrap(welcome: Welcome, erin: Client, change: Callable[[GroupInfo], GroupInfo]) -> bytes:
    """Decrypt the GroupInfo with erin's keys, change it, and build the Welcome again
    (the group secrets are bound to the encrypted group info, so they are re-encrypted)."""
    gs = decrypt_group_secrets(SUITE, welcome, erin.key_package, erin.private.init_private)
    gi = decrypt_group_info(SUITE, welcome, gs.joiner_secret, zero_secret(SUITE))
    rebuilt = build_welcome(
        SUITE,
        group_info=change(gi),
        joiner_secret=gs.joiner_secret,
        psk_secret=zero_secret(SUITE),
        psks=(),
        new_members=[NewMember(key_package=erin.key_package)],
        rng=deterministic_rng(b"rewrap"),
    )
    return MLSMessage(body=rebuilt).encode()


def test_rfc9420_12_4_3_1_tampered_welcome_rejected(rng: Random) -> None:
    groups, erin, welcome_bytes = _welcome_for(rng)
    welcome = MLSMessage.decode(welcome_bytes).body
    assert isinstance(welcome, Welcome)

    def join(data: bytes) -> Group:
        return Group.join_from_welcome(data, erin.key_package, erin.private,
                                       signing_key=erin.signing_key, config=PUBLIC)

    flipped = bytearray(welcome.encrypted_group_info)
    flipped[5] ^= 1
    cases: list[tuple[bytes, type[Exception]]] = [
        (MLSMessage(body=replace(welcome, encrypted_group_info=bytes(flipped))).encode(),
         InvalidWelcome),
        # GroupInfo changed after signing: the signature no longer verifies.
        (_rewrap(welcome, erin, lambda gi: replace(gi, confirmation_tag=b"\0" * SUITE.nh)),
         InvalidSignature),
        # Re-signed by the signer, but with a wrong confirmation tag.
        (_rewrap(welcome, erin, lambda gi: replace(
            gi, confirmation_tag=b"\0" * SUITE.nh).signed(groups["alice"]._state.signing_key)),
         InvalidConfirmationTag),
    ]
    for data, error in cases:
        with pytest.raises(error):
            join(data)
    groups["erin"] = join(welcome_bytes)
    assert_in_sync(groups)


def test_rfc9420_7_9_2_invalid_parent_hash_in_commit_path_rejected(rng: Random) -> None:
    groups, _ = make_group(rng)
    alice, bob = groups["alice"], groups["bob"]
    bundle = alice.self_update(rng=rng)
    commit_pm = MLSMessage.decode(bundle.commit).body
    assert isinstance(commit_pm, PublicMessage) and isinstance(commit_pm.content.content, Commit)
    path = commit_pm.content.content.path
    assert path is not None and path.leaf_node.parent_hash
    bad_ph = bytes([path.leaf_node.parent_hash[0] ^ 1]) + path.leaf_node.parent_hash[1:]
    # The leaf stays validly signed by alice: only its parent hash is wrong.
    bad_leaf = replace(path.leaf_node, parent_hash=bad_ph).signed(
        alice._state.signing_key, alice.group_id, alice.own_leaf_index)
    bad_commit = replace(commit_pm.content.content, path=UpdatePath(leaf_node=bad_leaf,
                                                                    nodes=path.nodes))
    bad = reframe(alice, bundle.commit, content=lambda fc: replace(fc, content=bad_commit))
    before = snapshot(bob)
    with pytest.raises(InvalidParentHash):
        bob.process_message(bad)
    assert snapshot(bob) == before
    alice.merge_pending_commit()
    deliver(groups, "alice", bundle.commit)
    assert_in_sync(groups)


def test_rfc9420_10_1_key_package_with_unsupported_suite_rejected(rng: Random) -> None:
    groups, _ = make_group(rng)
    alice, bob = groups["alice"], groups["bob"]
    other = make_client("p256", rng, cipher_suite(2))
    unknown = replace(other.key_package, cipher_suite=0x7A7A)
    before_alice, before_bob = snapshot(alice), snapshot(bob)
    for kp in (other.key_package, unknown):
        with pytest.raises(UnsupportedCipherSuite):
            alice.add_members([kp], rng=rng)
        with pytest.raises(UnsupportedCipherSuite):
            alice.propose_add(kp, rng=rng)
        with pytest.raises(UnsupportedCipherSuite):
            validate_key_package(kp, cipher_suite_id=SUITE.id)
    assert snapshot(alice) == before_alice and alice.pending_commit is None
    # Received: an Add proposal with that KeyPackage, signed by alice.
    good = alice.propose_remove(2, rng=rng)
    bad = reframe(alice, good, content=lambda fc: replace(
        fc, content=Add(key_package=other.key_package)))
    with pytest.raises(UnsupportedCipherSuite):
        bob.process_message(bad)
    assert snapshot(bob) == before_bob
    assert isinstance(bob.process_message(good).content, QueuedProposal)


def test_rfc9420_10_1_key_package_checks(rng: Random) -> None:
    c = make_client("x", rng)
    kp = c.key_package
    validate_key_package(kp, cipher_suite_id=1, now_ms=NOW)
    with pytest.raises(InvalidKeyPackage):  # expired at that time
        validate_key_package(kp, cipher_suite_id=1, now_ms=NOW + 400 * 86_400_000)
    with pytest.raises(InvalidSignature):
        validate_key_package(replace(kp, signature=b""), cipher_suite_id=1)
    with pytest.raises(InvalidKeyPackage):
        validate_key_package(replace(kp, version=2), cipher_suite_id=1)
    same = replace(kp, init_key=kp.leaf_node.encryption_key).signed(c.signing_key)
    with pytest.raises(InvalidKeyPackage):
        validate_key_package(same, cipher_suite_id=1)


def test_rfc9420_12_4_2_unknown_proposal_reference_rejected(rng: Random) -> None:
    groups, _ = make_group(rng)
    alice, bob = groups["alice"], groups["bob"]
    proposal = alice.propose_remove(2, rng=rng)
    bundle = alice.commit(rng=rng)  # by reference; bob never saw the proposal
    before = snapshot(bob)
    with pytest.raises(UnknownProposal):
        bob.process_message(bundle.commit)
    assert snapshot(bob) == before
    bob.process_message(proposal)
    staged = bob.process_message(bundle.commit).content
    assert isinstance(staged, StagedCommit)
    bob.merge_staged_commit(staged)
    alice.merge_pending_commit()
    assert bob.epoch_authenticator == alice.epoch_authenticator


def test_rfc9420_12_2_invalid_proposal_lists_rejected(rng: Random) -> None:
    groups, clients = make_group(rng)
    alice = groups["alice"]
    before = snapshot(alice)
    with pytest.raises(InvalidProposalList):
        alice.commit(rng=rng, proposals=[Remove(removed=1), Remove(removed=1)])
    with pytest.raises(InvalidProposalList):
        alice.commit(rng=rng, proposals=[Remove(removed=0)])
    with pytest.raises(RemoteError):  # bob is already a member
        alice.commit(rng=rng, proposals=[Add(key_package=make_client("bob2", rng).key_package),
                                         Add(key_package=clients["bob"].key_package)])
    assert snapshot(alice) == before and alice.pending_commit is None


def test_rfc9420_6_wrong_group_epoch_and_own_echo(rng: Random) -> None:
    groups, _ = make_group(rng)
    other, _ = make_group(rng, ("x", "y"))
    bob = groups["bob"]
    msg = groups["alice"].encrypt_application(b"m", rng=rng)
    with pytest.raises(OwnMessage):
        groups["alice"].process_message(msg)
    with pytest.raises(WrongGroup):
        other["y"].process_message(msg)
    before = snapshot(bob)
    commit = groups["alice"].self_update(rng=rng)
    with pytest.raises(OwnMessage):
        groups["alice"].process_message(commit.commit)
    old = reframe(groups["alice"], commit.commit,
                  content=lambda fc: replace(fc, epoch=fc.epoch + 1))
    with pytest.raises(WrongEpoch):
        bob.process_message(old)
    assert snapshot(bob) == before
    assert bob.process_message(msg).content == ApplicationMessage(b"m")


def test_rfc9420_12_1_8_new_member_proposal_adds_itself(rng: Random) -> None:
    groups, _ = make_group(rng)
    erin = make_client("erin", rng)
    alice = groups["alice"]
    fc = FramedContent(group_id=alice.group_id, epoch=alice.epoch,
                       sender=Sender.new_member_proposal(),
                       content=Add(key_package=erin.key_package))
    sig = sign_content(erin.signing_key, WireFormat.PUBLIC_MESSAGE, fc, None)
    auth = AuthenticatedContent(wire_format=WireFormat.PUBLIC_MESSAGE, content=fc,
                                auth=FramedContentAuthData(signature=sig))
    message = MLSMessage(body=protect_public(SUITE, auth, None, None)).encode()
    for g in groups.values():
        result = g.process_message(message)
        assert isinstance(result.content, QueuedProposal)
        assert result.credential == erin.credential
    commit_and_deliver(groups, "bob", lambda g: g.commit(rng=rng))
    assert groups["bob"].member(3) is not None
    assert_in_sync(groups)
    # Signed by anyone but the KeyPackage's owner, it is refused.
    forged_sig = sign_content(groups["bob"]._state.signing_key, WireFormat.PUBLIC_MESSAGE,
                              replace(fc, epoch=alice.epoch), None)
    forged = replace(auth, content=replace(fc, epoch=alice.epoch),
                     auth=FramedContentAuthData(signature=forged_sig))
    before = snapshot(alice)
    with pytest.raises(InvalidSignature):
        alice.process_message(MLSMessage(body=protect_public(SUITE, forged, None, None)).encode())
    assert snapshot(alice) == before


def test_rfc9420_12_1_7_group_context_extensions(rng: Random) -> None:
    groups, _ = make_group(rng)
    ds_key = SUITE.generate_signing_key(rng)
    senders = ExternalSenders(senders=(ExternalSender(
        signature_key=ds_key.verify_key.data, credential=Credential.basic(b"ds")),))
    ext = Extension(extension_type=ExtensionType.EXTERNAL_SENDERS,
                    extension_data=senders.encode())
    proposal = groups["carol"].propose_group_context_extensions([ext], rng=rng)
    deliver(groups, "carol", proposal)
    bundle = groups["alice"].commit(rng=rng)
    assert bundle.staged.new_extensions == (ext,)
    groups["alice"].merge_pending_commit()
    deliver(groups, "alice", bundle.commit)
    assert all(g.group_context.extensions == (ext,) for g in groups.values())
    assert_in_sync(groups)
    # Requiring an extension no member supports is refused, nothing changes.
    rc = RequiredCapabilities(extension_types=(0xF0F0,))
    required = Extension(extension_type=ExtensionType.REQUIRED_CAPABILITIES,
                         extension_data=rc.encode())
    before = snapshot(groups["bob"])
    with pytest.raises(InvalidProposal):
        groups["bob"].propose_group_context_extensions([required], rng=rng)
    assert snapshot(groups["bob"]) == before
