"""RFC 9420 §9 secret tree and §6.3.2 sender-data keys against mls/secret-tree.json."""

from __future__ import annotations

from typing import Any

import pytest

from sottovoce.crypto.suite import cipher_suite
from sottovoce.mls.secret_tree import RatchetType, SecretTree, sender_data_key_nonce
from tests.vectors.loader import params

VECTOR_FILE = "mls/secret-tree.json"


def _id(v: dict[str, Any]) -> str:
    return f"suite{v['cipher_suite']}-{len(v['leaves'])}leaves"


@pytest.mark.parametrize("vector", params(VECTOR_FILE, _id))
def test_rfc9420_9_secret_tree(vector: dict[str, Any]) -> None:
    """Sender-data key/nonce, then every leaf's handshake and application keys."""
    suite = cipher_suite(vector["cipher_suite"])

    sd = vector["sender_data"]
    key, nonce = sender_data_key_nonce(
        suite, bytes.fromhex(sd["sender_data_secret"]), bytes.fromhex(sd["ciphertext"])
    )
    assert key.hex() == sd["key"]
    assert nonce.hex() == sd["nonce"]

    n_leaves = len(vector["leaves"])
    encryption_secret = bytes.fromhex(vector["encryption_secret"])
    # A receiver: generations are reached out of order (0, then 15 skipping 1..14).
    receiver = SecretTree(suite, encryption_secret, n_leaves)
    # A sender: keys come out of next_key in order; the vector's ones must appear.
    sender = SecretTree(suite, encryption_secret, n_leaves)
    for leaf, entries in enumerate(vector["leaves"]):
        wanted = {e["generation"]: e for e in entries}
        for rtype, prefix in (
            (RatchetType.HANDSHAKE, "handshake"),
            (RatchetType.APPLICATION, "application"),
        ):
            for e in entries:
                pending = receiver.peek(leaf, rtype, e["generation"])
                assert pending.key.hex() == e[f"{prefix}_key"]
                assert pending.nonce.hex() == e[f"{prefix}_nonce"]
                pending.consume()
            for _ in range(max(wanted) + 1):
                generation, key, nonce = sender.next_key(leaf, rtype)
                if generation in wanted:
                    assert key.hex() == wanted[generation][f"{prefix}_key"]
                    assert nonce.hex() == wanted[generation][f"{prefix}_nonce"]
    # Every leaf has been opened, so no tree-node secret is left (§9.2).
    assert receiver.held_nodes() == frozenset()
    assert sender.held_nodes() == frozenset()
