"""RFC 9605 appendix C test vectors, from sframe/test-vectors.json (sframe-wg/sframe).

Sections of the file: ``header`` (§C.1), ``aes_ctr_hmac`` (§C.2), ``sframe``
(§C.3), and ``aes_256_ctr_hmac``: the same AES-CTR-HMAC construction with
AES-256 and HMAC-SHA-512 under codepoints 6-8 (AES_256_CTR_HMAC_SHA512_80/64/32
of draft-barnes-sframe-iana-256, not registered by RFC 9605). The construction
is checked for those; the suites themselves are not offered.
"""

from __future__ import annotations

from typing import Any

import pytest

from sottovoce.crypto.kdf import Hash, hkdf_extract
from sottovoce.sframe import (
    FrameDecryptionError,
    HeaderDecodeError,
    SFrameContext,
    SFrameHeader,
    cipher_suite,
    encode_header,
    encrypt_frame,
    parse_header,
)
from sottovoce.sframe.suites import CtrHmacCipher
from tests.vectors.loader import params

FILE = "sframe/test-vectors.json"


def _header_id(v: dict[str, Any]) -> str:
    return f"kid{v['kid']:#x}-ctr{v['ctr']:#x}"


def _h(v: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(v[name])


# --- §4.3 / §C.1 header ----------------------------------------------------------


@pytest.mark.parametrize("v", params(FILE, _header_id, key="header"))
def test_rfc9605_c1_header_encode(v: dict[str, Any]) -> None:
    assert encode_header(v["kid"], v["ctr"]) == _h(v, "encoded")
    assert SFrameHeader(kid=v["kid"], ctr=v["ctr"]).encode() == _h(v, "encoded")


@pytest.mark.parametrize("v", params(FILE, _header_id, key="header"))
def test_rfc9605_c1_header_decode(v: dict[str, Any]) -> None:
    encoded = _h(v, "encoded")
    assert SFrameHeader.decode(encoded) == SFrameHeader(kid=v["kid"], ctr=v["ctr"])
    # As a prefix of a ciphertext, the header ends exactly where the vector does.
    assert parse_header(encoded + b"\xff" * 20) == (v["kid"], v["ctr"], len(encoded))


@pytest.mark.parametrize("v", params(FILE, _header_id, key="header"))
def test_rfc9605_c1_header_truncated_or_extended_rejected(v: dict[str, Any]) -> None:
    encoded = _h(v, "encoded")
    with pytest.raises(HeaderDecodeError):
        SFrameHeader.decode(encoded[:-1])
    with pytest.raises(HeaderDecodeError):
        SFrameHeader.decode(encoded + b"\x00")


# --- §4.5.1 / §C.2 AES-CTR-HMAC AEAD -----------------------------------------------

#: Codepoints 6-8 (see the module docstring): AES-256, SHA-512, tags 80/64/32 bits.
_AES256_NT = {6: 10, 7: 8, 8: 4}


def _ctr_hmac(v: dict[str, Any]) -> CtrHmacCipher:
    if v["cipher_suite"] in _AES256_NT:
        return CtrHmacCipher(
            _h(v, "key"), nka=32, hash=Hash.SHA512, nt=_AES256_NT[v["cipher_suite"]]
        )
    suite = cipher_suite(v["cipher_suite"])
    cipher = suite.cipher(_h(v, "key"))
    assert isinstance(cipher, CtrHmacCipher)
    return cipher


_AEAD_PARAMS = params(FILE, key="aes_ctr_hmac") + [
    pytest.param(*p.values, id=f"aes256-{p.id}", marks=p.marks)
    for p in params(FILE, key="aes_256_ctr_hmac")
]


@pytest.mark.parametrize("v", _AEAD_PARAMS)
def test_rfc9605_c2_aes_ctr_hmac_subkeys(v: dict[str, Any]) -> None:
    # derive_subkeys: enc_key = key[..Nka], auth_key = key[Nka..]
    key, nka = _h(v, "key"), len(_h(v, "enc_key"))
    assert key[:nka] == _h(v, "enc_key")
    assert key[nka:] == _h(v, "auth_key")
    if v["cipher_suite"] not in _AES256_NT:
        suite = cipher_suite(v["cipher_suite"])
        assert (suite.nka, suite.nh, suite.nk) == (nka, len(_h(v, "auth_key")), len(key))


@pytest.mark.parametrize("v", _AEAD_PARAMS)
def test_rfc9605_c2_aes_ctr_hmac_encrypt(v: dict[str, Any]) -> None:
    ct = _ctr_hmac(v).seal(_h(v, "nonce"), _h(v, "pt"), _h(v, "aad"))
    assert ct == _h(v, "ct")


@pytest.mark.parametrize("v", _AEAD_PARAMS)
def test_rfc9605_c2_aes_ctr_hmac_decrypt(v: dict[str, Any]) -> None:
    assert _ctr_hmac(v).open(_h(v, "nonce"), _h(v, "ct"), _h(v, "aad")) == _h(v, "pt")


@pytest.mark.parametrize("v", _AEAD_PARAMS)
def test_rfc9605_c2_aes_ctr_hmac_tampered_rejected(v: dict[str, Any]) -> None:
    cipher, ct, nonce, aad = _ctr_hmac(v), _h(v, "ct"), _h(v, "nonce"), _h(v, "aad")
    for i in (0, len(ct) - 1):  # a ciphertext byte, a tag byte
        bad = bytearray(ct)
        bad[i] ^= 0x01
        with pytest.raises(FrameDecryptionError):
            cipher.open(nonce, bytes(bad), aad)
    with pytest.raises(FrameDecryptionError):
        cipher.open(nonce, ct, aad + b"x")
    with pytest.raises(FrameDecryptionError):
        cipher.open(nonce, ct[:-1], aad)


# --- §4.4 / §C.3 SFrame encryption -------------------------------------------------


@pytest.mark.parametrize("v", params(FILE, key="sframe"))
def test_rfc9605_c3_key_derivation(v: dict[str, Any]) -> None:
    suite = cipher_suite(v["cipher_suite"])
    key_label, salt_label = suite.labels(v["kid"])
    assert key_label == _h(v, "sframe_key_label")
    assert salt_label == _h(v, "sframe_salt_label")
    assert hkdf_extract(suite.hash, b"", _h(v, "base_key")) == _h(v, "sframe_secret")
    key, salt = suite.derive_key_salt(v["kid"], _h(v, "base_key"))
    assert key.expose() == _h(v, "sframe_key")
    assert salt.expose() == _h(v, "sframe_salt")
    nonce = int.from_bytes(salt.expose(), "big") ^ v["ctr"]
    assert nonce.to_bytes(suite.nn, "big") == _h(v, "nonce")
    assert encode_header(v["kid"], v["ctr"]) + _h(v, "metadata") == _h(v, "aad")


@pytest.mark.parametrize("v", params(FILE, key="sframe"))
def test_rfc9605_c3_encrypt(v: dict[str, Any]) -> None:
    suite = cipher_suite(v["cipher_suite"])
    ct = encrypt_frame(suite, v["kid"], v["ctr"], _h(v, "base_key"), _h(v, "pt"), _h(v, "metadata"))
    assert ct == _h(v, "ct")


@pytest.mark.parametrize("v", params(FILE, key="sframe"))
def test_rfc9605_c3_decrypt_with_context(v: dict[str, Any]) -> None:
    ctx = SFrameContext(v["cipher_suite"])
    ctx.add_recv_key(v["kid"], _h(v, "base_key"))
    out = ctx.unprotect(_h(v, "ct"), _h(v, "metadata"))
    assert (out.kid, out.ctr, out.plaintext) == (v["kid"], v["ctr"], _h(v, "pt"))


@pytest.mark.parametrize("v", params(FILE, key="sframe"))
def test_rfc9605_c3_wrong_metadata_rejected(v: dict[str, Any]) -> None:
    ctx = SFrameContext(v["cipher_suite"])
    ctx.add_recv_key(v["kid"], _h(v, "base_key"))
    with pytest.raises(FrameDecryptionError):
        ctx.unprotect(_h(v, "ct"), _h(v, "metadata") + b"!")
    # The failure left the replay window untouched: the genuine frame still decrypts.
    assert ctx.unprotect(_h(v, "ct"), _h(v, "metadata")).plaintext == _h(v, "pt")


@pytest.mark.parametrize("v", params(FILE, key="sframe"))
def test_rfc9605_c3_context_roundtrip_same_kid(v: dict[str, Any]) -> None:
    sender, receiver = SFrameContext(v["cipher_suite"]), SFrameContext(v["cipher_suite"])
    sender.add_send_key(v["kid"], _h(v, "base_key"))
    receiver.add_recv_key(v["kid"], _h(v, "base_key"))
    frame = sender.protect(v["kid"], _h(v, "pt"), _h(v, "metadata"))
    # The context's first frame is the stateless encrypt() at CTR 0.
    assert frame == encrypt_frame(
        cipher_suite(v["cipher_suite"]),
        v["kid"],
        0,
        _h(v, "base_key"),
        _h(v, "pt"),
        _h(v, "metadata"),
    )
    assert receiver.unprotect(frame, _h(v, "metadata")).plaintext == _h(v, "pt")
