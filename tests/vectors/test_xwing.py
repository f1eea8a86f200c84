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
from sottovoce.crypto.aead import Aead
from sottovoce.crypto.hpke_xwing import key_schedule
from sottovoce.crypto.kdf import Hash
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


# --- the HPKE key schedule the X-Wing suite runs, against RFC 9180's vectors -------------

HPKE_FILE = "hpke/rfc9180-test-vectors.json"
_HASH = {1: Hash.SHA256, 2: Hash.SHA384, 3: Hash.SHA512}
_AEAD = {1: Aead.AES128GCM, 2: Aead.AES256GCM, 3: Aead.CHACHA20POLY1305}


def _schedule_cases() -> list[Any]:
    """Base and PSK mode vectors with a real AEAD: the modes X-Wing HPKE offers."""
    return [p for p in params(HPKE_FILE)
            if p.values[0] is None
            or (p.values[0]["mode"] in (0, 1) and p.values[0]["aead_id"] in _AEAD)]


@pytest.mark.parametrize("vector", _schedule_cases())
def test_hpke_key_schedule_matches_rfc9180_vectors(vector: dict[str, Any]) -> None:
    """Our own RFC 9180 key schedule (pyhpke knows no X-Wing), fed each vector's
    DHKEM shared secret: every ciphertext and every export must match."""
    suite_id = b"HPKE" + b"".join(
        vector[k].to_bytes(2, "big") for k in ("kem_id", "kdf_id", "aead_id")
    )
    psk = bytes.fromhex(vector.get("psk", "")) if vector["mode"] == 1 else b""
    psk_id = bytes.fromhex(vector.get("psk_id", "")) if vector["mode"] == 1 else b""
    ctx = key_schedule(_HASH[vector["kdf_id"]], _AEAD[vector["aead_id"]], suite_id,
                       vector["mode"], _h(vector, "shared_secret"), _h(vector, "info"),
                       psk, psk_id)
    for e in vector["encryptions"]:
        assert ctx.seal(bytes.fromhex(e["pt"]), bytes.fromhex(e["aad"])) == bytes.fromhex(e["ct"])
    for x in vector["exports"]:
        got = ctx.export(bytes.fromhex(x["exporter_context"]), x["L"])
        assert got == bytes.fromhex(x["exported_value"])
