"""RFC 9420 §12.4.3.1, §12.4.2 passive client against mlswg passive-client-*.json.

A passive client joins from the vector's Welcome with the given private keys
and external PSKs (and the ratchet tree when it is not in the Welcome), checks
the initial epoch authenticator, then for each epoch processes the proposals
(cached by reference) and the commit, merges it, and checks the epoch
authenticator. These vectors were made by other MLS implementations, so they
prove interoperability.

Received leaves are not checked against the clock (``now_ms=None``): RFC 9420
§7.3 only recommends it, and the vectors' lifetimes have long expired.
"""

from __future__ import annotations

from typing import Any

import pytest

from sottovoce.crypto.suite import cipher_suite
from sottovoce.mls.framing import MLSMessage
from sottovoce.mls.group import Group, KeyPackagePrivate, PskStore, QueuedProposal, StagedCommit
from sottovoce.mls.messages import KeyPackage
from sottovoce.secret import Secret
from tests.vectors.loader import params

# ECDSA private keys may be encoded without leading zero octets (see message-protection).
_ECDSA_SCALAR = {2: 32, 5: 66, 7: 48}


def _join(vector: dict[str, Any]) -> Group:
    suite = cipher_suite(vector["cipher_suite"])
    key_package = MLSMessage.decode(bytes.fromhex(vector["key_package"])).body
    assert isinstance(key_package, KeyPackage)
    signature_priv = bytes.fromhex(vector["signature_priv"])
    signing_key = suite.signing_key(signature_priv.rjust(_ECDSA_SCALAR.get(suite.id, 0), b"\0"))
    # The README: the privates correspond to the KeyPackage's public keys.
    assert signing_key.verify_key.data == key_package.leaf_node.signature_key
    init_priv = bytes.fromhex(vector["init_priv"])
    encryption_priv = bytes.fromhex(vector["encryption_priv"])
    assert suite.hpke.public_from_private(init_priv) == key_package.init_key
    assert suite.hpke.public_from_private(encryption_priv) == key_package.leaf_node.encryption_key
    psks = PskStore(
        {bytes.fromhex(p["psk_id"]): bytes.fromhex(p["psk"]) for p in vector["external_psks"]}
    )
    tree = vector.get("ratchet_tree")
    group = Group.join_from_welcome(
        bytes.fromhex(vector["welcome"]),
        key_package,
        KeyPackagePrivate(
            init_private=Secret(init_priv), encryption_private=Secret(encryption_priv)
        ),
        signing_key=signing_key,
        ratchet_tree=bytes.fromhex(tree) if tree else None,
        psk_lookup=psks,
    )
    assert group.epoch_authenticator.expose().hex() == vector["initial_epoch_authenticator"]
    return group


def _follow(vector: dict[str, Any]) -> None:
    group = _join(vector)
    for i, epoch in enumerate(vector["epochs"]):
        for proposal in epoch["proposals"]:
            result = group.process_message(bytes.fromhex(proposal))
            assert isinstance(result.content, QueuedProposal)
        result = group.process_message(bytes.fromhex(epoch["commit"]))
        staged = result.content
        assert isinstance(staged, StagedCommit)
        assert not staged.self_removed
        before = group.epoch
        group.merge_staged_commit(staged)
        assert group.epoch == before + 1
        assert group.epoch_authenticator.expose().hex() == epoch["epoch_authenticator"], (
            f"epoch #{i}"
        )


@pytest.mark.parametrize("vector", params("mls/passive-client-welcome.json"))
def test_rfc9420_12_4_3_1_passive_client_joins_from_welcome(vector: dict[str, Any]) -> None:
    _follow(vector)


@pytest.mark.parametrize("vector", params("mls/passive-client-handling-commit.json"))
def test_rfc9420_12_4_2_passive_client_handles_commits(vector: dict[str, Any]) -> None:
    _follow(vector)
