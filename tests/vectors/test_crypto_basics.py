"""RFC 9420 §5.1–5.2, §8, §9.1 labelled crypto against mls/crypto-basics.json (every field)."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import pytest

from sottovoce.crypto.labels import (
    decrypt_with_label,
    derive_secret,
    encrypt_with_label,
    expand_with_label,
    ref_hash,
    sign_with_label,
    verify_with_label,
)
from sottovoce.crypto.rng import Random
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import DecryptionError, SignatureError
from sottovoce.mls.secret_tree import derive_tree_secret
from tests.vectors.loader import params

VECTOR_FILE = "mls/crypto-basics.json"


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def _seeded_rng(seed: bytes) -> Random:
    """Deterministic random source: SHAKE-256 over (seed, call counter)."""
    counter = itertools.count()

    def rng(n: int) -> bytes:
        return hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)

    return rng


@pytest.mark.parametrize("vector", params(VECTOR_FILE))
def test_rfc9420_crypto_basics(vector: dict[str, Any]) -> None:
    """RefHash, ExpandWithLabel, DeriveSecret, DeriveTreeSecret, Sign/Verify, Encrypt/Decrypt."""
    suite = cipher_suite(vector["cipher_suite"])

    v = vector["ref_hash"]
    assert ref_hash(suite, v["label"].encode(), _h(v["value"])).hex() == v["out"]

    v = vector["expand_with_label"]
    out = expand_with_label(suite, _h(v["secret"]), v["label"].encode(), _h(v["context"]),
                            v["length"])
    assert out.hex() == v["out"]

    v = vector["derive_secret"]
    assert derive_secret(suite, _h(v["secret"]), v["label"].encode()).hex() == v["out"]

    v = vector["derive_tree_secret"]
    out = derive_tree_secret(suite, _h(v["secret"]), v["label"].encode(), v["generation"],
                             v["length"])
    assert out.hex() == v["out"]

    # §5.1.2, both directions: the vector's signature verifies, and ours does too.
    v = vector["sign_with_label"]
    label, content = v["label"].encode(), _h(v["content"])
    signing_key = suite.signing_key(_h(v["priv"]))
    verify_key = suite.verify_key(_h(v["pub"]))
    assert signing_key.verify_key == verify_key
    verify_with_label(verify_key, label, content, _h(v["signature"]))
    verify_with_label(verify_key, label, content, sign_with_label(signing_key, label, content))
    with pytest.raises(SignatureError):  # the label is bound into the signature
        verify_with_label(verify_key, label + b"x", content, _h(v["signature"]))

    # §5.1.3: the vector decrypts; our own encryption (deterministic rng) round-trips.
    v = vector["encrypt_with_label"]
    label, context, plaintext = v["label"].encode(), _h(v["context"]), _h(v["plaintext"])
    priv, pub = _h(v["priv"]), _h(v["pub"])
    assert suite.hpke.public_from_private(priv) == pub
    got = decrypt_with_label(suite, priv, label, context, _h(v["kem_output"]), _h(v["ciphertext"]))
    assert got == plaintext
    kem_output, ciphertext = encrypt_with_label(
        suite, pub, label, context, plaintext, _seeded_rng(b"crypto-basics")
    )
    assert decrypt_with_label(suite, priv, label, context, kem_output, ciphertext) == plaintext
    # The random source is the only randomness: the same seed gives the same output.
    again = encrypt_with_label(suite, pub, label, context, plaintext, _seeded_rng(b"crypto-basics"))
    assert again == (kem_output, ciphertext)
    with pytest.raises(DecryptionError):  # the context is bound into the HPKE info
        decrypt_with_label(suite, priv, label, context + b"x", kem_output, ciphertext)
