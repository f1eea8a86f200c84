"""The MLS public view (mls/public.py): what the delivery service can check without keys.

External commits (RFC 9420 §12.4.3.2), GroupInfo (§12.4.3) and KeyPackages (§10.1),
each accepted when valid and refused with its typed error when not; Hypothesis
mutations of valid bytes raise only MLS errors.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, replace
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sottovoce.crypto.suite import SUPPORTED_SUITES, cipher_suite
from sottovoce.mls import public
from sottovoce.mls.common import PreSharedKeyID, WireFormat
from sottovoce.mls.errors import (
    InvalidCommit,
    InvalidKeyPackage,
    InvalidProposalList,
    InvalidSignature,
    InvalidWelcome,
    MlsDecodeError,
    MlsError,
    UnsupportedCipherSuite,
    WrongEpoch,
    WrongGroup,
)
from sottovoce.mls.framing import MLSMessage, sign_content
from sottovoce.mls.group import Group, GroupConfig, PskStore
from sottovoce.mls.messages import Commit, GroupInfo, KeyPackage, Remove
from sottovoce.mls.public import (
    ExternalCommit,
    FramedContentAuthData,
    PublicMessage,
    check_external_commit,
    check_group_info,
    check_key_package,
    decode_key_package,
    decode_public,
)
from tests.conftest import deterministic_rng
from tests.unit.test_mls_decode_errors import _mutate
from tests.unit.test_mls_group import NOW, SUITE, Client, make_client, make_group


@dataclass(frozen=True)
class World:
    alice: Group
    alice_client: Client
    dave: Client
    group_info: bytes
    external_commit: bytes


@cache
def world() -> World:
    rng = deterministic_rng(b"mls-public")
    groups, clients = make_group(rng)
    dave = make_client("dave", rng)
    group_info = groups["alice"].group_info()
    join = Group.join_by_external_commit(
        group_info, credential=dave.credential, signing_key=dave.signing_key, rng=rng,
        now_ms=NOW,
    )
    return World(groups["alice"], clients["alice"], dave, group_info, join.commit)


def resigned(w: World, data: bytes, key_of: Client, **changes: object) -> bytes:
    """The external commit with FramedContent fields changed, re-signed by ``key_of``."""
    message = MLSMessage.decode(data).body
    assert isinstance(message, PublicMessage)
    content = replace(message.content, **changes)  # type: ignore[arg-type]
    info = check_group_info(w.group_info)
    signature = sign_content(key_of.signing_key, WireFormat.PUBLIC_MESSAGE, content, info.context)
    auth = FramedContentAuthData(
        signature=signature, confirmation_tag=message.auth.confirmation_tag
    )
    return MLSMessage(body=PublicMessage(content=content, auth=auth)).encode()


def test_the_public_suite_table_is_the_crypto_suite_table() -> None:
    for suite_id in SUPPORTED_SUITES:
        full, view = cipher_suite(suite_id), public.public_suite(suite_id)
        assert (view.id, view.hash, view.signature, view.nh) == (
            full.id, full.hash, full.signature, full.nh
        )
    with pytest.raises(UnsupportedCipherSuite):
        public.public_suite(0x0A0A)


# --- external commits (§12.4.3.2) -------------------------------------------------------


def test_rfc9420_12_4_3_2_a_valid_external_commit_passes_and_names_its_joiner() -> None:
    w = world()
    info = check_group_info(w.group_info)
    checked = check_external_commit(w.external_commit, info, now_ms=NOW)
    assert isinstance(checked, ExternalCommit)
    assert checked.leaf.signature_key == w.dave.signing_key.verify_key.data
    assert checked.leaf.credential == w.dave.credential
    assert checked.removed is None and checked.psks == ()


# Fixed noise, not drawn at collection: every pytest-xdist worker must collect the same ids.
@pytest.mark.parametrize("data", [hashlib.shake_256(b"no mls message").digest(64), b"",
                                  b"\x00\x01\x00\x01"], ids=["noise", "empty", "short"])
def test_bytes_that_are_no_mls_message_are_refused(data: bytes) -> None:
    info = check_group_info(world().group_info)
    with pytest.raises(MlsDecodeError):
        check_external_commit(data, info)


def test_rfc9420_6_1_an_external_commit_signed_by_another_key_is_refused() -> None:
    w = world()
    forged = resigned(w, w.external_commit, w.alice_client)
    with pytest.raises(InvalidSignature):
        check_external_commit(forged, check_group_info(w.group_info))


def test_rfc9420_6_an_external_commit_for_another_epoch_or_group_is_refused() -> None:
    w = world()
    info = check_group_info(w.group_info)
    with pytest.raises(WrongEpoch):
        check_external_commit(resigned(w, w.external_commit, w.dave, epoch=info.context.epoch + 1),
                              info)
    with pytest.raises(WrongGroup):
        check_external_commit(resigned(w, w.external_commit, w.dave, group_id=b"x" * 16), info)


def test_rfc9420_12_2_an_external_commit_with_a_forbidden_list_is_refused() -> None:
    w = world()
    info = check_group_info(w.group_info)
    message = MLSMessage.decode(w.external_commit).body
    assert isinstance(message, PublicMessage) and isinstance(message.content.content, Commit)
    commit = message.content.content
    # Removing a leaf of someone else is no resync (§12.2).
    stolen = replace(commit, proposals=(*commit.proposals, Remove(removed=1)))
    with pytest.raises(InvalidProposalList):
        check_external_commit(resigned(w, w.external_commit, w.dave, content=stolen), info)
    no_path = replace(commit, path=None)
    with pytest.raises(InvalidCommit):
        check_external_commit(resigned(w, w.external_commit, w.dave, content=no_path), info)
    no_init = replace(commit, proposals=())
    with pytest.raises(InvalidProposalList):
        check_external_commit(resigned(w, w.external_commit, w.dave, content=no_init), info)


def test_a_member_commit_is_not_an_external_commit() -> None:
    rng = deterministic_rng(b"member-commit")
    groups, _ = make_group(rng, config=GroupConfig(handshake_wire_format=WireFormat.PUBLIC_MESSAGE))
    info = check_group_info(groups["alice"].group_info())
    bundle = groups["alice"].self_update(rng=rng)
    with pytest.raises(InvalidCommit):
        check_external_commit(bundle.commit, info)


def test_the_psk_proposals_of_an_external_commit_are_reported() -> None:
    w = world()
    rng = deterministic_rng(b"psk")
    psk = PreSharedKeyID.external(b"room-token", rng(SUITE.nh))
    join = Group.join_by_external_commit(
        w.group_info, credential=w.dave.credential, signing_key=w.dave.signing_key, rng=rng,
        psks=[psk], config=GroupConfig(psk_lookup=PskStore({b"room-token": b"t" * 32})),
    )
    checked = check_external_commit(join.commit, check_group_info(w.group_info))
    assert checked.psks == (psk,)


# --- GroupInfo (§12.4.3) and KeyPackages (§10.1) --------------------------------------


def test_rfc9420_12_4_3_group_info_is_checked_against_its_signer_leaf() -> None:
    w = world()
    info = check_group_info(w.group_info)
    assert info.context == w.alice.group_context and info.external_pub
    assert info.joiner_index() == 3 and info.joiner_index(removed=1) == 1
    body = MLSMessage.decode(w.group_info).body
    assert isinstance(body, GroupInfo)
    tampered = replace(body, signature=body.signature[:-1] + bytes([body.signature[-1] ^ 1]))
    with pytest.raises(InvalidSignature):
        check_group_info(MLSMessage(body=tampered).encode())
    bare = MLSMessage.decode(w.alice.group_info(with_ratchet_tree=False)).body
    assert isinstance(bare, GroupInfo)
    with pytest.raises(InvalidWelcome):
        check_group_info(bare)
    signer = w.alice_client.signing_key.verify_key.data
    assert check_group_info(bare, signer_key=signer).leaves == ()
    with pytest.raises(InvalidWelcome):
        check_group_info(w.group_info, signer_key=w.dave.signing_key.verify_key.data)
    with pytest.raises(InvalidWelcome):
        check_group_info(w.external_commit)  # a PublicMessage is no GroupInfo


def test_rfc9420_10_1_key_packages_are_checked_without_a_group() -> None:
    w = world()
    kp = w.dave.key_package
    assert check_key_package(kp, now_ms=NOW).id == SUITE.id
    assert decode_key_package(MLSMessage(body=kp).encode()) == kp
    lifetime = kp.leaf_node.lifetime
    assert lifetime is not None
    with pytest.raises(InvalidKeyPackage):
        check_key_package(kp, now_ms=(lifetime.not_after + 1) * 1000)
    with pytest.raises(UnsupportedCipherSuite):
        check_key_package(kp, cipher_suite_id=2)
    forged = replace(kp, signature=bytes(len(kp.signature)))
    with pytest.raises(InvalidSignature):
        check_key_package(forged)
    with pytest.raises(InvalidKeyPackage):
        decode_key_package(w.group_info)
    with pytest.raises(InvalidKeyPackage):
        decode_key_package(b"\x00\x01\x00\x05")


def test_encrypted_messages_have_no_public_view() -> None:
    rng = deterministic_rng(b"private")
    groups, _ = make_group(rng, ("alice", "bob"))
    with pytest.raises(MlsDecodeError):
        decode_public(groups["alice"].encrypt_application(b"hi", rng=rng))


# --- mutations: only MLS errors -------------------------------------------------------

_FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@_FUZZ
@given(st.data())
def test_mutated_external_commit_raises_only_mls_errors(data: st.DataObject) -> None:
    w = world()
    info = check_group_info(w.group_info)
    with contextlib.suppress(MlsError):
        check_external_commit(_mutate(w.external_commit, data), info, now_ms=NOW)


@_FUZZ
@given(st.data())
def test_mutated_group_info_and_key_package_raise_only_mls_errors(data: st.DataObject) -> None:
    w = world()
    with contextlib.suppress(MlsError):
        check_group_info(_mutate(w.group_info, data))
    kp: KeyPackage | None = None
    with contextlib.suppress(MlsError):
        kp = decode_key_package(_mutate(MLSMessage(body=w.dave.key_package).encode(), data))
    if kp is not None:
        with contextlib.suppress(MlsError):
            check_key_package(kp, now_ms=NOW)
