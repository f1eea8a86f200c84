"""X-Wing (X25519 + ML-KEM-768) against the draft's published vectors (xwing/test-vectors.json).

Each vector is (seed, eseed, pk, ct, ss). Key generation and decapsulation are
replayed whole. Encapsulation's ML-KEM half draws its randomness inside
``cryptography``, so of encapsulation only the X25519 half (ct_X from
eseed[32:64]) can be replayed; round trips cover the rest.
"""

from __future__ import annotations

from typing import Any

import pytest

from sottovoce.crypto import xwing
from tests.vectors.loader import params

VECTOR_FILE = "xwing/test-vectors.json"


def _h(v: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(v[name])


@pytest.mark.parametrize("vector", params(VECTOR_FILE))
def test_xwing_keygen_matches_vector(vector: dict[str, Any]) -> None:
    assert _h(vector, "sk") == _h(vector, "seed")
    assert xwing.public_key(_h(vector, "seed")) == _h(vector, "pk")


@pytest.mark.parametrize("vector", params(VECTOR_FILE))
def test_xwing_decapsulation_matches_vector(vector: dict[str, Any]) -> None:
    assert xwing.decapsulate(_h(vector, "ct"), _h(vector, "sk")) == _h(vector, "ss")


@pytest.mark.parametrize("vector", params(VECTOR_FILE))
def test_xwing_encapsulation_x25519_half_matches_vector(vector: dict[str, Any]) -> None:
    eseed = _h(vector, "eseed")
    _, ct_x, pk_x = xwing.encapsulate_x25519(_h(vector, "pk"), eseed[32:])
    assert ct_x == _h(vector, "ct")[-32:]
    assert pk_x == _h(vector, "pk")[-32:]


@pytest.mark.parametrize("vector", params(VECTOR_FILE))
def test_xwing_encapsulation_round_trips_to_vector_key(vector: dict[str, Any]) -> None:
    ss, ct = xwing.encapsulate(_h(vector, "pk"), _h(vector, "eseed")[32:])
    assert len(ct) == xwing.CIPHERTEXT_SIZE
    assert xwing.decapsulate(ct, _h(vector, "sk")) == ss
    # A flipped bit in the X25519 or the ML-KEM half changes the secret.
    for i in (0, xwing.CIPHERTEXT_SIZE - 1):
        bad = bytearray(ct)
        bad[i] ^= 1
        assert xwing.decapsulate(bytes(bad), _h(vector, "sk")) != ss
