"""RFC 9420 §8.4 psk_secret against mls/psk_secret.json."""

from __future__ import annotations

from typing import Any

import pytest

from sottovoce.crypto.suite import cipher_suite
from sottovoce.mls.key_schedule import PreSharedKeyID, PSKType, psk_secret
from tests.vectors.loader import params

VECTOR_FILE = "mls/psk_secret.json"


@pytest.mark.parametrize(
    "vector", params(VECTOR_FILE, lambda v: f"suite{v['cipher_suite']}-{len(v['psks'])}psks")
)
def test_rfc9420_8_4_psk_secret(vector: dict[str, Any]) -> None:
    """External PreSharedKeyIDs chained in order give the vector's psk_secret (zero if none)."""
    suite = cipher_suite(vector["cipher_suite"])
    psks = []
    for p in vector["psks"]:
        psk_id = PreSharedKeyID.external(bytes.fromhex(p["psk_id"]), bytes.fromhex(p["psk_nonce"]))
        # The id round-trips through its wire encoding.
        assert PreSharedKeyID.decode(psk_id.encode()) == psk_id
        assert psk_id.psktype is PSKType.EXTERNAL
        psks.append((psk_id, bytes.fromhex(p["psk"])))
    assert psk_secret(suite, psks).expose().hex() == vector["psk_secret"]
