"""Malformed MLS input ends in the documented typed error, never a bare decode error.

Each decoder call site class of ``mls/`` is tried with a malformed input:

* the message a join is handed (Welcome, GroupInfo) does not decode → InvalidWelcome;
* an extension payload inside a signed GroupInfo does not decode (``external_pub``,
  ``ratchet_tree``) → InvalidWelcome (RFC 9420 §12.4.3.2, §12.4.3.3);
* a handshake or application message does not decode → MlsDecodeError, which is both
  an MLS error and a ``DecodeError`` (the contract of ``process_message``).

A Hypothesis test then mutates valid GroupInfo, Welcome and commit bytes and checks
that only those typed errors come out.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sottovoce.crypto.labels import encrypt_with_label
from sottovoce.crypto.sign import SigningKey
from sottovoce.errors import DecodeError, UsageError
from sottovoce.mls.common import Extension, ExtensionType
from sottovoce.mls.errors import MlsDecodeError, MlsError
from sottovoce.mls.framing import MLSMessage
from sottovoce.mls.group import Group, InvalidWelcome
from sottovoce.mls.key_schedule import psk_secret, welcome_key_nonce, welcome_secret
from sottovoce.mls.messages import (
    EncryptedGroupSecrets,
    GroupInfo,
    HPKECiphertext,
    Welcome,
    find_extension,
)
from sottovoce.mls.welcome import WELCOME_LABEL, decrypt_group_info, decrypt_group_secrets
from tests.conftest import deterministic_rng
from tests.unit.test_mls_group import NOW, SUITE, Client, make_client, make_group


@dataclass(frozen=True)
class Fixture:
    """A three-member group and valid inputs of every kind a peer hands us."""

    alice: Group
    alice_key: SigningKey
    bob_state: bytes
    dave: Client  # joins by external commit
    erin: Client  # joins by Welcome
    group_info: bytes
    welcome: bytes
    commit: bytes
    external_commit: bytes
    welcome_group_info: bytes  # the GroupInfo inside ``welcome``, as plaintext


@cache
def fixture() -> Fixture:
    rng = deterministic_rng(b"mls-decode-errors")
    groups, clients = make_group(rng)
    alice = groups["alice"]
    dave, erin = make_client("dave", rng), make_client("erin", rng)
    group_info = alice.group_info()
    external = Group.join_by_external_commit(
        group_info, credential=dave.credential, signing_key=dave.signing_key, rng=rng,
        now_ms=NOW,
    )
    bundle = alice.add_members([erin.key_package], rng=rng)
    alice.clear_pending_commit()
    assert bundle.welcome is not None
    body = MLSMessage.decode(bundle.welcome).body
    assert isinstance(body, Welcome)
    secrets = decrypt_group_secrets(SUITE, body, erin.key_package, erin.private.init_private)
    inner = decrypt_group_info(SUITE, body, secrets.joiner_secret, psk_secret(SUITE, []))
    return Fixture(
        alice=alice,
        alice_key=clients["alice"].signing_key,
        bob_state=groups["bob"].to_state(),
        dave=dave,
        erin=erin,
        group_info=group_info,
        welcome=bundle.welcome,
        commit=bundle.commit,
        external_commit=external.commit,
        welcome_group_info=inner.encode(),
    )


def external_join(f: Fixture, group_info: bytes) -> Group:
    return Group.join_by_external_commit(
        group_info, credential=f.dave.credential, signing_key=f.dave.signing_key,
        rng=deterministic_rng(b"join"), now_ms=NOW,
    ).group


def welcome_join(f: Fixture, welcome: bytes) -> Group:
    return Group.join_from_welcome(
        welcome, f.erin.key_package, f.erin.private, signing_key=f.erin.signing_key, now_ms=NOW
    )


def rewelcome(f: Fixture, group_info: bytes) -> bytes:
    """The fixture's Welcome, re-encrypted around other GroupInfo bytes (same secrets)."""
    body = MLSMessage.decode(f.welcome).body
    assert isinstance(body, Welcome)
    secrets = decrypt_group_secrets(SUITE, body, f.erin.key_package, f.erin.private.init_private)
    psk = psk_secret(SUITE, [])
    key, nonce = welcome_key_nonce(SUITE, welcome_secret(SUITE, secrets.joiner_secret, psk))
    sealed = SUITE.aead_key(key).seal(nonce, group_info, b"")
    kem_output, ciphertext = encrypt_with_label(
        SUITE, f.erin.key_package.init_key, WELCOME_LABEL, sealed, secrets.encode(),
        deterministic_rng(b"rewelcome"),
    )
    entry = EncryptedGroupSecrets(
        new_member=f.erin.key_package.ref(SUITE),
        encrypted_group_secrets=HPKECiphertext(kem_output=kem_output, ciphertext=ciphertext),
    )
    return MLSMessage(
        body=Welcome(cipher_suite=SUITE.id, secrets=(entry,), encrypted_group_info=sealed)
    ).encode()


def signed_group_info(f: Fixture, payloads: dict[int, bytes]) -> bytes:
    """Alice's GroupInfo with some extension payloads replaced, validly signed."""
    body = MLSMessage.decode(f.group_info).body
    assert isinstance(body, GroupInfo)
    extensions = tuple(
        Extension(extension_type=e.extension_type,
                  extension_data=payloads.get(e.extension_type, e.extension_data))
        for e in body.extensions
    )
    return MLSMessage(body=replace(body, extensions=extensions).signed(f.alice_key)).encode()


# --- one test per call-site class ------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"\x00\x01\x00\x04", b"\xff" * 40], ids=["empty", "truncated", "garbage"]
)
def test_join_input_that_does_not_decode_is_an_invalid_welcome(data: bytes) -> None:
    f = fixture()
    for join in (external_join, welcome_join):
        with pytest.raises(InvalidWelcome) as err:
            join(f, data)
        assert not isinstance(err.value, DecodeError)


def test_rfc9420_12_4_3_2_external_pub_that_does_not_decode_is_an_invalid_group_info() -> None:
    f = fixture()
    bad = signed_group_info(f, {ExtensionType.EXTERNAL_PUB: b"\x40"})  # truncated varint
    with pytest.raises(InvalidWelcome, match="external_pub"):
        external_join(f, bad)
    # The same GroupInfo with a well-formed extension joins: only the payload was wrong.
    assert external_join(f, signed_group_info(f, {})).epoch == f.alice.epoch + 1


def test_rfc9420_12_4_3_3_ratchet_tree_that_does_not_decode_is_an_invalid_welcome() -> None:
    f = fixture()
    bad_tree = {ExtensionType.RATCHET_TREE: b"\x03\x01\x07\x00"}
    with pytest.raises(InvalidWelcome, match="ratchet tree"):
        external_join(f, signed_group_info(f, bad_tree))
    inner = GroupInfo.decode(f.welcome_group_info)
    ext = find_extension(inner.extensions, ExtensionType.RATCHET_TREE)
    assert ext is not None
    # The first node's NodeType octet (after the vector's varint length and the
    # optional's presence octet) becomes an unknown type: same length, no longer a tree.
    at = (1 << (ext.extension_data[0] >> 6)) + 1
    tree = bytearray(ext.extension_data)
    tree[at] = 7
    broken = f.welcome_group_info.replace(ext.extension_data, bytes(tree))
    with pytest.raises(InvalidWelcome):
        welcome_join(f, rewelcome(f, broken))


@pytest.mark.parametrize(
    "data", [b"", b"\x00\x01\x00\x01\x00", b"\x00\x01\x00\x09"],
    ids=["empty", "truncated", "unknown-wire-format"],
)
def test_rfc9420_6_message_that_does_not_decode_is_an_mls_decode_error(data: bytes) -> None:
    f = fixture()
    bob = Group.from_state(f.bob_state)
    with pytest.raises(MlsDecodeError) as err:
        bob.process_message(data, now_ms=NOW)
    assert isinstance(err.value, DecodeError) and isinstance(err.value, MlsError)
    assert bob.to_state() == f.bob_state


# --- mutations of valid input: only typed errors ---------------------------------------


def _mutate(data: bytes, draw: st.DataObject) -> bytes:
    """Flip, overwrite, cut or insert bytes of ``data`` (Hypothesis-driven)."""
    out = bytearray(data)
    kind = draw.draw(st.sampled_from(["flip", "set", "cut", "insert"]))
    at = draw.draw(st.integers(0, len(out) - 1))
    if kind == "flip":
        out[at] ^= 1 << draw.draw(st.integers(0, 7))
    elif kind == "set":
        out[at] = draw.draw(st.sampled_from([0x00, 0x01, 0x03, 0x40, 0x80, 0xFF]))
    elif kind == "cut":
        del out[at:]
    else:
        out.insert(at, draw.draw(st.integers(0, 255)))
    return bytes(out)


def _no_tree(data: bytes) -> bool:
    """The mutation removed the ratchet tree: the caller must pass one (a UsageError)."""
    try:
        body = MLSMessage.decode(data).body
    except DecodeError:
        return False
    return isinstance(body, GroupInfo) and (
        find_extension(body.extensions, ExtensionType.RATCHET_TREE) is None
    )


_FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@_FUZZ
@given(st.data())
def test_mutated_group_info_raises_only_typed_errors(data: st.DataObject) -> None:
    f = fixture()
    mutated = _mutate(f.group_info, data)
    try:
        external_join(f, mutated)
    except MlsError:
        pass
    except UsageError:
        assert _no_tree(mutated)


@_FUZZ
@given(st.data())
def test_mutated_welcome_raises_only_typed_errors(data: st.DataObject) -> None:
    f = fixture()
    mutated = _mutate(f.welcome, data)
    with contextlib.suppress(MlsError):
        welcome_join(f, mutated)


@_FUZZ
@given(st.data())
def test_mutated_group_info_inside_a_welcome_raises_only_typed_errors(
    data: st.DataObject,
) -> None:
    f = fixture()
    with contextlib.suppress(MlsError):
        welcome_join(f, rewelcome(f, _mutate(f.welcome_group_info, data)))


@_FUZZ
@given(st.data(), st.booleans())
def test_mutated_commit_raises_only_typed_errors(data: st.DataObject, external: bool) -> None:
    f = fixture()
    bob = Group.from_state(f.bob_state)
    with contextlib.suppress(MlsError):
        bob.process_message(_mutate(f.external_commit if external else f.commit, data),
                            now_ms=NOW)
