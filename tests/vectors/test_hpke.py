"""RFC 9180 test vectors (hpke/rfc9180-test-vectors.json) through `sottovoce.crypto.hpke`.

Every vector is replayed through our wrapper, not through pyhpke directly: the
ephemeral key comes from ``ikmE`` (RFC 9180 §7.1.3 DeriveKeyPair), exactly as
our sans-IO sender draws it from the caller's random source.
"""

from __future__ import annotations

from typing import Any

import pytest

from sottovoce.crypto.hpke import AeadId, Hpke, KdfId, KemId
from sottovoce.errors import DecryptionError, UnsupportedError
from tests.vectors.loader import params

VECTOR_FILE = "hpke/rfc9180-test-vectors.json"

# RFC 9180 §5: mode_base, mode_psk, mode_auth, mode_auth_psk.
MODE_PSK = (1, 3)
MODE_AUTH = (2, 3)


def _vector_id(v: dict[str, Any]) -> str:
    return f"mode{v['mode']}-kem{v['kem_id']}-kdf{v['kdf_id']}-aead{v['aead_id']}"


def _suite(v: dict[str, Any]) -> Hpke:
    try:
        return Hpke(KemId(v["kem_id"]), KdfId(v["kdf_id"]), AeadId(v["aead_id"]))
    except (ValueError, UnsupportedError):
        pytest.skip(f"suite kem={v['kem_id']} kdf={v['kdf_id']} aead={v['aead_id']} unsupported")


def _h(v: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(v.get(name, ""))


@pytest.mark.parametrize("vector", params(VECTOR_FILE, _vector_id))
def test_rfc9180_appendix_a_vector(vector: dict[str, Any]) -> None:
    """RFC 9180 Appendix A: keys, enc, every ciphertext and every export match."""
    hpke = _suite(vector)
    info = _h(vector, "info")
    psk = _h(vector, "psk") if vector["mode"] in MODE_PSK else b""
    psk_id = _h(vector, "psk_id") if vector["mode"] in MODE_PSK else b""

    # §7.1.3 DeriveKeyPair(ikmR) -> (skRm, pkRm).
    recipient = hpke.derive_key_pair(_h(vector, "ikmR"))
    assert recipient.public == _h(vector, "pkRm")
    # The ephemeral pair the sender derives from ikmE is the vector's (skEm, pkEm).
    assert hpke.derive_key_pair(_h(vector, "ikmE")).public == _h(vector, "pkEm")

    sender_private = None
    sender_public = None
    if vector["mode"] in MODE_AUTH:
        sender = hpke.derive_key_pair(_h(vector, "ikmS"))
        assert sender.public == _h(vector, "pkSm")
        sender_private, sender_public = _h(vector, "skSm"), sender.public

    enc, sctx = hpke.setup_sender(
        recipient.public,
        info,
        ikm_e=_h(vector, "ikmE"),
        psk=psk,
        psk_id=psk_id,
        sender_private=sender_private,
    )
    assert enc == _h(vector, "enc")
    rctx = hpke.setup_recipient(
        enc, recipient.private, info, psk=psk, psk_id=psk_id, sender_public=sender_public
    )

    # §5.2: sequence numbers advance in lock-step, so order matters.
    for i, e in enumerate(vector["encryptions"]):
        aad, pt, ct = _h(e, "aad"), _h(e, "pt"), _h(e, "ct")
        assert sctx.seal(pt, aad) == ct, f"{VECTOR_FILE} encryption #{i}"
        assert rctx.open(ct, aad) == pt, f"{VECTOR_FILE} encryption #{i}"

    # §5.3: both sides export the same secrets.
    for i, x in enumerate(vector["exports"]):
        ctx, length, want = _h(x, "exporter_context"), x["L"], _h(x, "exported_value")
        assert sctx.export(ctx, length) == want, f"{VECTOR_FILE} export #{i}"
        assert rctx.export(ctx, length) == want, f"{VECTOR_FILE} export #{i}"


# --- negative cases -----------------------------------------------------------

_BASE_VECTORS = [
    p
    for p in params(VECTOR_FILE, _vector_id)
    if p.values[0] is None or (p.values[0]["mode"] == 0 and p.values[0]["encryptions"])
]


@pytest.mark.parametrize("vector", _BASE_VECTORS)
def test_rfc9180_open_rejects_flipped_ciphertext_byte(vector: dict[str, Any]) -> None:
    """RFC 9180 §5.2 Open: any modified ciphertext byte fails authentication."""
    hpke = _suite(vector)
    recipient = hpke.derive_key_pair(_h(vector, "ikmR"))
    first = vector["encryptions"][0]
    ct, aad = _h(first, "ct"), _h(first, "aad")
    enc = _h(vector, "enc")
    info = _h(vector, "info")
    assert hpke.open(enc, recipient.private, info, aad, ct) == _h(first, "pt")
    for pos in (0, len(ct) // 2, len(ct) - 1):
        bad = bytearray(ct)
        bad[pos] ^= 0x01
        with pytest.raises(DecryptionError):
            hpke.open(enc, recipient.private, info, aad, bytes(bad))


@pytest.mark.parametrize("vector", _BASE_VECTORS)
def test_rfc9180_open_rejects_wrong_recipient_key(vector: dict[str, Any]) -> None:
    """RFC 9180 §4.1 Decap with another private key yields another key: Open fails."""
    hpke = _suite(vector)
    other = hpke.derive_key_pair(bytes(reversed(_h(vector, "ikmR"))))
    first = vector["encryptions"][0]
    with pytest.raises(DecryptionError):
        hpke.open(
            _h(vector, "enc"), other.private, _h(vector, "info"), _h(first, "aad"), _h(first, "ct")
        )


# --- key serialization (RFC 9180 §7.1.2) -------------------------------------------

def _one_vector_per_kem() -> list[Any]:
    out: list[Any] = []
    kems: set[int] = set()
    for p in params(VECTOR_FILE, _vector_id):
        v = p.values[0]
        if v is None:
            return [p]
        if v["kem_id"] in kems:
            continue
        kems.add(v["kem_id"])
        out.append(pytest.param(v, id=f"kem{v['kem_id']}"))
    return out


@pytest.mark.parametrize("vector", _one_vector_per_kem())
def test_rfc9180_7_1_2_serialized_private_key_is_nsk_bytes(vector: dict[str, Any]) -> None:
    """SerializePrivateKey yields exactly Nsk bytes: DeriveKeyPair(ikmR) gives skRm."""
    hpke = _suite(vector)
    recipient = hpke.derive_key_pair(_h(vector, "ikmR"))
    assert len(recipient.private) == hpke.private_key_size
    assert recipient.private.expose() == _h(vector, "skRm")


@pytest.mark.parametrize("vector", _one_vector_per_kem())
def test_rfc9180_7_1_public_key_from_private_key(vector: dict[str, Any]) -> None:
    """The public key recomputed from skRm is pkRm."""
    hpke = _suite(vector)
    assert hpke.public_from_private(_h(vector, "skRm")) == _h(vector, "pkRm")
