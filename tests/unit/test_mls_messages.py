"""RFC 9420 wire structs beyond what messages.json exercises: every select arm
round-trips, signatures over LeafNodeTBS / KeyPackageTBS / GroupInfoTBS verify
and bind their context, and malformed selects are rejected."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sottovoce.codec.tls import Writer
from sottovoce.crypto.labels import ref_hash
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import DecodeError, UsageError
from sottovoce.mls.common import CredentialType, Extension, ExtensionType, GroupContext
from sottovoce.mls.errors import InvalidSignature
from sottovoce.mls.messages import (
    Add,
    ApplicationId,
    Capabilities,
    Commit,
    Credential,
    EncryptedGroupSecrets,
    ExternalInit,
    ExternalPub,
    ExternalSender,
    ExternalSenders,
    GroupContextExtensions,
    GroupInfo,
    GroupSecrets,
    HPKECiphertext,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    ParentNode,
    PathSecret,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    RatchetTree,
    ReInit,
    Remove,
    RequiredCapabilities,
    ResumptionPSKUsage,
    Update,
    UpdatePath,
    UpdatePathNode,
    Welcome,
    decode_proposal,
    decode_ratchet_tree,
    encode_proposal,
    encode_ratchet_tree,
    find_extension,
    leaf_node_tbs,
    write_node,
)
from sottovoce.secret import Secret

SUITE = cipher_suite(1)


@pytest.fixture
def key(rng: Random) -> SigningKey:
    return SUITE.generate_signing_key(rng)


def _leaf(key: SigningKey, source: LeafNodeSource = LeafNodeSource.KEY_PACKAGE) -> LeafNode:
    return LeafNode(
        encryption_key=b"\x11" * 32,
        signature_key=key.verify_key.data,
        credential=Credential.basic(b"alice"),
        capabilities=Capabilities(cipher_suites=(1, 0x0A0A), credentials=(1, 2)),
        leaf_node_source=source,
        lifetime=Lifetime(not_before=0, not_after=2**64 - 1)
        if source == LeafNodeSource.KEY_PACKAGE
        else None,
        parent_hash=b"\x22" * 32 if source == LeafNodeSource.COMMIT else b"",
        extensions=(Extension(extension_type=0xF0F0, extension_data=b"grease"),),
    )


def _key_package(key: SigningKey) -> KeyPackage:
    return KeyPackage(
        cipher_suite=SUITE.id, init_key=b"\x33" * 32, leaf_node=_leaf(key).signed(key)
    ).signed(key)


def test_rfc9420_5_3_credentials_round_trip() -> None:
    for cred in (Credential.basic(b""), Credential.basic(b"bob"), Credential.x509([b"a", b"bc"])):
        assert Credential.decode(cred.encode()) == cred
    assert Credential.x509([b"\x30\x00"]).encode() == b"\x00\x02\x03\x02\x30\x00"


def test_rfc9420_5_3_unknown_credential_type_rejected() -> None:
    with pytest.raises(DecodeError):
        Credential.decode(b"\x0a\x0a\x00")
    assert Credential.decode(b"\x00\x01\x00").credential_type is CredentialType.BASIC


@pytest.mark.parametrize("source", list(LeafNodeSource))
def test_rfc9420_7_2_leaf_node_signature_binds_context(
    key: SigningKey, source: LeafNodeSource
) -> None:
    leaf = _leaf(key, source).signed(key, b"group", 3)
    assert LeafNode.decode(leaf.encode()) == leaf
    leaf.verify_signature(SUITE, b"group", 3)
    if source == LeafNodeSource.KEY_PACKAGE:
        # key_package leaves are not bound to a group (§7.2).
        assert leaf.tbs() == leaf_node_tbs(leaf, b"other", 9)
    else:
        with pytest.raises(UsageError):
            leaf.tbs()
        with pytest.raises(InvalidSignature):
            leaf.verify_signature(SUITE, b"other", 3)
        with pytest.raises(InvalidSignature):
            leaf.verify_signature(SUITE, b"group", 4)
    with pytest.raises(InvalidSignature):
        replace(leaf, encryption_key=b"\x12" * 32).verify_signature(SUITE, b"group", 3)
    with pytest.raises(InvalidSignature):
        replace(leaf, signature=b"").verify_signature(SUITE, b"group", 3)


def test_rfc9420_7_2_leaf_node_source_fields_are_consistent(key: SigningKey) -> None:
    with pytest.raises(UsageError):
        replace(_leaf(key), lifetime=None)
    with pytest.raises(UsageError):
        replace(_leaf(key, LeafNodeSource.UPDATE), parent_hash=b"x")
    # An unknown leaf_node_source cannot be parsed.
    enc = bytearray(_leaf(key).encode())
    i = enc.index(bytes([LeafNodeSource.KEY_PACKAGE]) + bytes(8))
    enc[i] = 9
    with pytest.raises(DecodeError):
        LeafNode.decode(bytes(enc))


def test_rfc9420_10_key_package_signature_and_ref(key: SigningKey, rng: Random) -> None:
    kp = _key_package(key)
    assert KeyPackage.decode(kp.encode()) == kp
    kp.verify_signature(SUITE)
    kp.leaf_node.verify_signature(SUITE)
    assert kp.ref(SUITE) == ref_hash(SUITE, b"MLS 1.0 KeyPackage Reference", kp.encode())
    with pytest.raises(InvalidSignature):
        replace(kp, init_key=b"\x34" * 32).verify_signature(SUITE)
    other = SUITE.generate_signing_key(rng)
    with pytest.raises(InvalidSignature):
        replace(kp, signature=kp.signed(other).signature).verify_signature(SUITE)


def test_rfc9420_12_1_every_proposal_round_trips_as_select(key: SigningKey) -> None:
    proposals: list[Proposal] = [
        Add(key_package=_key_package(key)),
        Update(leaf_node=_leaf(key, LeafNodeSource.UPDATE).signed(key, b"g", 0)),
        Remove(removed=0xFFFFFFFF),
        PreSharedKey(psk=PreSharedKeyID.external(b"id", b"\x01" * 32)),
        PreSharedKey(
            psk=PreSharedKeyID.resumption(ResumptionPSKUsage.BRANCH, b"g", 2**63, b"\x02" * 32)
        ),
        ReInit(group_id=b"new", cipher_suite=3, extensions=()),
        ExternalInit(kem_output=b"\x44" * 32),
        GroupContextExtensions(
            extensions=(Extension(extension_type=ExtensionType.EXTERNAL_PUB, extension_data=b""),)
        ),
    ]
    for p in proposals:
        enc = encode_proposal(p)
        assert enc[:2] == p.proposal_type.to_bytes(2, "big")
        assert enc[2:] == p.encode()
        assert decode_proposal(enc) == p
        assert type(p).decode(p.encode()) == p


def test_rfc9420_12_1_unknown_proposal_type_rejected() -> None:
    with pytest.raises(DecodeError):
        decode_proposal(b"\x0a\x0a\x00\x00\x00\x00")
    with pytest.raises(DecodeError):
        decode_proposal(b"\x00\x08\x00")


def test_rfc9420_12_4_commit_by_value_and_reference(key: SigningKey) -> None:
    path = UpdatePath(
        leaf_node=_leaf(key, LeafNodeSource.COMMIT).signed(key, b"g", 1),
        nodes=(
            UpdatePathNode(
                encryption_key=b"\x55" * 32,
                encrypted_path_secret=(HPKECiphertext(kem_output=b"k", ciphertext=b"c"),) * 2,
            ),
        ),
    )
    for commit in (
        Commit(),
        Commit(proposals=(Remove(removed=1), b"\x66" * 32), path=path),
        Commit(proposals=(b"",)),
    ):
        assert Commit.decode(commit.encode()) == commit
    assert Commit().encode() == b"\x00\x00"
    with pytest.raises(DecodeError):
        Commit.decode(b"\x02\x03\x00\x00")  # ProposalOrRefType 3


def test_rfc9420_12_4_3_group_info_signature(key: SigningKey) -> None:
    ctx = GroupContext(
        cipher_suite=1, group_id=b"g", epoch=5, tree_hash=b"t", confirmed_transcript_hash=b"c"
    )
    gi = GroupInfo(group_context=ctx, confirmation_tag=b"\x77" * 32, signer=4).signed(key)
    assert GroupInfo.decode(gi.encode()) == gi
    gi.verify_signature(key.verify_key)
    with pytest.raises(InvalidSignature):
        replace(gi, signer=5).verify_signature(key.verify_key)


def test_rfc9420_12_4_3_1_welcome_and_group_secrets_round_trip() -> None:
    gs = GroupSecrets(
        joiner_secret=Secret(b"\x01" * 32),
        path_secret=PathSecret(path_secret=Secret(b"\x02" * 32)),
        psks=(PreSharedKeyID.external(b"x", b"\x03" * 32),),
    )
    back = GroupSecrets.decode(gs.encode())
    assert back == gs
    assert "\\x01" not in repr(back) and "0101" not in repr(back)
    bare = GroupSecrets(joiner_secret=Secret(b"j"))
    assert GroupSecrets.decode(bare.encode()).path_secret is None
    empty_ct = HPKECiphertext(kem_output=b"", ciphertext=b"")
    entry = EncryptedGroupSecrets(new_member=b"\x09" * 32, encrypted_group_secrets=empty_ct)
    welcome = Welcome(cipher_suite=1, secrets=(entry,), encrypted_group_info=b"egi")
    assert Welcome.decode(welcome.encode()) == welcome
    assert welcome.find_secrets(b"\x09" * 32) is entry
    assert welcome.find_secrets(b"\x08" * 32) is None


def test_rfc9420_12_4_3_3_ratchet_tree_rules(key: SigningKey) -> None:
    leaf = _leaf(key).signed(key)
    parent = ParentNode(encryption_key=b"\x88" * 32, unmerged_leaves=(1, 3))
    nodes = [leaf, parent, None, None, leaf]
    enc = encode_ratchet_tree([*nodes, None, None])  # trailing blanks are not sent
    assert enc == encode_ratchet_tree(nodes)
    assert decode_ratchet_tree(enc) == nodes
    assert RatchetTree.decode(enc) == RatchetTree(nodes=tuple(nodes))
    bad_trees: list[list[LeafNode | ParentNode | None]] = [
        [],  # empty
        [leaf, None],  # ends with a blank
        [parent],  # parent at a leaf position
        [leaf, leaf, leaf],  # leaf at a parent position
    ]
    for bad in bad_trees:
        with pytest.raises(DecodeError):
            decode_ratchet_tree(_raw(bad))


def _raw(nodes: list[LeafNode | ParentNode | None]) -> bytes:
    # Encode without dropping trailing blanks, to present a malformed tree.
    inner = Writer()
    for n in nodes:
        if n is None:
            inner.u8(0)
        else:
            inner.u8(1)
            write_node(inner, n)
    w = Writer()
    w.opaque_v(inner.getvalue())
    return w.getvalue()


def test_rfc9420_extension_payloads_round_trip(key: SigningKey) -> None:
    values = [
        ApplicationId(application_id=b"app"),
        RequiredCapabilities(extension_types=(5,), proposal_types=(), credential_types=(1, 2)),
        ExternalPub(external_pub=b"\x99" * 32),
        ExternalSenders(
            senders=(
                ExternalSender(
                    signature_key=key.verify_key.data, credential=Credential.basic(b"ds")
                ),
            )
        ),
    ]
    for v in values:
        assert type(v).decode(v.encode()) == v
    exts = (Extension(extension_type=ExtensionType.APPLICATION_ID, extension_data=b"x"),)
    assert find_extension(exts, ExtensionType.APPLICATION_ID) is exts[0]
    assert find_extension(exts, ExtensionType.RATCHET_TREE) is None


def test_rfc9420_13_4_duplicate_extension_rejected() -> None:
    ext = Extension(extension_type=1, extension_data=b"")
    enc = GroupContextExtensions(extensions=(ext, ext)).encode()
    with pytest.raises(DecodeError):
        GroupContextExtensions.decode(enc)
