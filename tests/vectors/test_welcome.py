"""RFC 9420 §12.4.3.1 Welcome processing against mlswg welcome.json.

For each vector: find our entry by KeyPackageRef, decrypt the GroupSecrets
with ``init_priv``, decrypt the GroupInfo with the welcome key (no PSKs),
verify its signature under ``signer_pub`` and its confirmation tag with the
key schedule run from the joiner_secret. Negative cases: a flipped byte in
the encrypted group info, another KeyPackage, a wrong init key.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from sottovoce.crypto.suite import cipher_suite
from sottovoce.mls.errors import (
    InvalidConfirmationTag,
    InvalidSignature,
    InvalidWelcome,
    NoMatchingKeyPackage,
)
from sottovoce.mls.framing import MLSMessage
from sottovoce.mls.key_schedule import join_epoch, zero_secret
from sottovoce.mls.messages import GroupInfo, KeyPackage, Welcome
from sottovoce.mls.transcript import verify_confirmation_tag
from sottovoce.mls.welcome import decrypt_group_info, decrypt_group_secrets
from tests.vectors.loader import params

VECTORS = params("mls/welcome.json")


def _inputs(vector: dict[str, Any]) -> tuple[Any, Welcome, KeyPackage, bytes]:
    suite = cipher_suite(vector["cipher_suite"])
    welcome = MLSMessage.decode(bytes.fromhex(vector["welcome"])).body
    key_package = MLSMessage.decode(bytes.fromhex(vector["key_package"])).body
    assert isinstance(welcome, Welcome) and isinstance(key_package, KeyPackage)
    return suite, welcome, key_package, bytes.fromhex(vector["init_priv"])


def _open(vector: dict[str, Any]) -> tuple[Any, GroupInfo, Any]:
    suite, welcome, key_package, init_priv = _inputs(vector)
    assert welcome.cipher_suite == key_package.cipher_suite == suite.id
    secrets = decrypt_group_secrets(suite, welcome, key_package, init_priv)
    assert not secrets.psks  # the README: "no PSKs"
    group_info = decrypt_group_info(suite, welcome, secrets.joiner_secret, zero_secret(suite))
    return suite, group_info, secrets


@pytest.mark.parametrize("vector", VECTORS)
def test_rfc9420_12_4_3_1_welcome_decrypts_and_verifies(vector: dict[str, Any]) -> None:
    suite, group_info, secrets = _open(vector)
    assert group_info.group_context.cipher_suite == suite.id
    group_info.verify_signature(suite.verify_key(bytes.fromhex(vector["signer_pub"])))
    transition = join_epoch(
        suite,
        joiner_secret=secrets.joiner_secret,
        psk_secret=zero_secret(suite),
        group_context=group_info.group_context,
    )
    verify_confirmation_tag(
        suite,
        transition.epoch.confirmation_key,
        group_info.group_context.confirmed_transcript_hash,
        group_info.confirmation_tag,
    )


@pytest.mark.parametrize("vector", VECTORS)
def test_rfc9420_12_4_3_1_tampered_group_info_is_rejected(vector: dict[str, Any]) -> None:
    suite, welcome, key_package, init_priv = _inputs(vector)
    data = bytearray(welcome.encrypted_group_info)
    data[len(data) // 2] ^= 1
    tampered = replace(welcome, encrypted_group_info=bytes(data))
    # The encrypted group info is also the HPKE context of the group secrets.
    with pytest.raises(InvalidWelcome):
        decrypt_group_secrets(suite, tampered, key_package, init_priv)
    secrets = decrypt_group_secrets(suite, welcome, key_package, init_priv)
    with pytest.raises(InvalidWelcome):
        decrypt_group_info(suite, tampered, secrets.joiner_secret, zero_secret(suite))


@pytest.mark.parametrize("vector", VECTORS)
def test_rfc9420_12_4_3_1_other_key_package_or_key_is_rejected(vector: dict[str, Any]) -> None:
    suite, welcome, key_package, init_priv = _inputs(vector)
    other = replace(key_package, signature=key_package.signature[::-1])
    with pytest.raises(NoMatchingKeyPackage):
        decrypt_group_secrets(suite, welcome, other, init_priv)
    wrong = bytes(b ^ 0x55 for b in init_priv)
    with pytest.raises(InvalidWelcome):
        decrypt_group_secrets(suite, welcome, key_package, wrong)


@pytest.mark.parametrize("vector", VECTORS)
def test_rfc9420_12_4_3_group_info_signature_and_tag_bind_content(vector: dict[str, Any]) -> None:
    suite, group_info, secrets = _open(vector)
    key = suite.verify_key(bytes.fromhex(vector["signer_pub"]))
    forged = replace(group_info, signer=group_info.signer + 1)
    with pytest.raises(InvalidSignature):
        forged.verify_signature(key)
    transition = join_epoch(
        suite,
        joiner_secret=secrets.joiner_secret,
        psk_secret=zero_secret(suite),
        group_context=group_info.group_context,
    )
    with pytest.raises(InvalidConfirmationTag):
        verify_confirmation_tag(
            suite,
            transition.epoch.confirmation_key,
            group_info.group_context.confirmed_transcript_hash + b"x",
            group_info.confirmation_tag,
        )
