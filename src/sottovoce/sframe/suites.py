"""SFrame cipher suites (RFC 9605 §4.5), key derivation (§4.4.2) and the
AES-CTR + HMAC AEAD (§4.5.1).

::

    base_key ──HKDF-Extract("", ·)──► sframe_secret
    sframe_secret ──HKDF-Expand("SFrame 1.0 Secret key "  ‖ KID ‖ suite, Nk)──► sframe_key
    sframe_secret ──HKDF-Expand("SFrame 1.0 Secret salt " ‖ KID ‖ suite, Nn)──► sframe_salt
        (KID as u64 big-endian, not the header form; suite as u16)

    AES-CTR-HMAC (encrypt-then-MAC, §4.5.1), sframe_key = enc_key(Nka) ‖ auth_key(Nh):
        ct  = AES-CTR(enc_key, nonce ‖ 0x00000000, pt)
        tag = HMAC(auth_key, u64(len aad) ‖ u64(len ct) ‖ u64(Nt) ‖ nonce ‖ aad ‖ ct)[:Nt]

A :class:`FrameCipher` is keyed once per KID (the ``AESGCM`` object, or the
AES key and an HMAC prototype) so the per-frame cost is the primitive call only.
"""

from __future__ import annotations

import hmac as _hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sottovoce.crypto import kdf
from sottovoce.crypto.kdf import Hash
from sottovoce.errors import UnsupportedError, UsageError
from sottovoce.limits import SFRAME_MAX_KID
from sottovoce.readonly import ReadOnly
from sottovoce.secret import Secret
from sottovoce.sframe.errors import FrameDecryptionError

_KEY_LABEL = b"SFrame 1.0 Secret key "
_SALT_LABEL = b"SFrame 1.0 Secret salt "
_CTR_SUFFIX = b"\x00\x00\x00\x00"


class CipherSuiteId(IntEnum):
    """RFC 9605 §8.1, the "SFrame Cipher Suites" registry."""

    AES_128_CTR_HMAC_SHA256_80 = 0x0001
    AES_128_CTR_HMAC_SHA256_64 = 0x0002
    AES_128_CTR_HMAC_SHA256_32 = 0x0003
    AES_128_GCM_SHA256_128 = 0x0004
    AES_256_GCM_SHA512_128 = 0x0005


#: Exceptions the ``raw_open`` of a :class:`FrameCipher` may raise on a bad frame.
RAW_OPEN_ERRORS: tuple[type[Exception], ...] = (InvalidTag, ValueError, FrameDecryptionError)


class FrameCipher(Protocol):
    """A keyed AEAD for frames. ``open`` raises only :class:`FrameDecryptionError`.

    ``raw_seal``/``raw_open`` are the same operations with the least Python in
    between (for AES-GCM, the ``AESGCM`` methods themselves); ``raw_open`` may
    raise any of :data:`RAW_OPEN_ERRORS`, which the caller maps to one opaque error.
    """

    raw_seal: Callable[[bytes, bytes, bytes], bytes]
    raw_open: Callable[[bytes, bytes, bytes], bytes]

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes: ...

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes: ...


class GcmCipher:
    """AES-GCM with its ``AESGCM`` object built once (RFC 9605 §4.5, suites 4 and 5)."""

    __slots__ = ("_aead", "raw_open", "raw_seal")
    raw_seal: Callable[[bytes, bytes, bytes], bytes]
    raw_open: Callable[[bytes, bytes, bytes], bytes]

    def __init__(self, key: bytes) -> None:
        if len(key) not in (16, 32):
            raise UsageError("AES-GCM key has the wrong length")
        self._aead = AESGCM(key)
        self.raw_seal = self._aead.encrypt
        self.raw_open = self._aead.decrypt

    def __repr__(self) -> str:
        return "GcmCipher(<redacted>)"

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except (InvalidTag, ValueError):
            raise FrameDecryptionError("frame authentication failed") from None


class CtrHmacCipher:
    """RFC 9605 §4.5.1: AES-CTR then HMAC, tag truncated to ``nt`` bytes.

    ``key`` is the whole AEAD key: the first ``nka`` bytes are the AES key,
    the remaining ``Nh`` bytes (``hash.size``) the HMAC key.
    """

    __slots__ = ("_aes", "_mac", "_nt", "_nt_be", "raw_open", "raw_seal")
    raw_seal: Callable[[bytes, bytes, bytes], bytes]
    raw_open: Callable[[bytes, bytes, bytes], bytes]

    def __init__(self, key: bytes, *, nka: int, hash: Hash, nt: int) -> None:
        if nka not in (16, 24, 32) or len(key) != nka + hash.size:
            raise UsageError("AES-CTR-HMAC key has the wrong length")
        if not 0 < nt <= hash.size:
            raise UsageError("AES-CTR-HMAC tag length out of range")
        enc_key, auth_key = key[:nka], key[nka:]
        self._aes = algorithms.AES(enc_key)
        # An HMAC keyed once; each frame works on a copy (cheaper than re-keying).
        self._mac = _hmac.new(auth_key, digestmod=hash.value)
        self._nt = nt
        self._nt_be = nt.to_bytes(8, "big")
        self.raw_seal = self.seal
        self.raw_open = self.open

    def __repr__(self) -> str:
        return f"CtrHmacCipher(nt={self._nt}, <redacted>)"

    def _ctr(self, nonce: bytes, data: bytes) -> bytes:
        # initial_counter = nonce ‖ 0x00000000 (§4.5.1); a 12-byte nonce leaves a
        # 32-bit block counter, far above any frame size we accept.
        ctx = Cipher(self._aes, modes.CTR(nonce + _CTR_SUFFIX)).encryptor()
        return ctx.update(data)

    def _tag(self, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(
            len(aad).to_bytes(8, "big") + len(ct).to_bytes(8, "big") + self._nt_be + nonce + aad
        )
        mac.update(ct)
        return mac.digest()[: self._nt]

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if len(nonce) != 12:
            raise UsageError("AES-CTR-HMAC nonce must be 12 bytes")
        ct = self._ctr(nonce, plaintext)
        return ct + self._tag(nonce, aad, ct)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        n = len(ciphertext) - self._nt
        if n < 0 or len(nonce) != 12:
            raise FrameDecryptionError("frame authentication failed")
        inner, tag = ciphertext[:n], ciphertext[n:]
        # Authenticate before decrypting, in constant time (§4.5.1).
        if not _hmac.compare_digest(tag, self._tag(nonce, aad, inner)):
            raise FrameDecryptionError("frame authentication failed")
        return self._ctr(nonce, inner)


@dataclass(frozen=True, slots=True)
class SFrameSuite:
    """One row of RFC 9605 §4.5's table. ``nka`` is 0 for the AES-GCM suites."""

    id: CipherSuiteId
    hash: Hash
    nk: int
    nn: int
    nt: int
    nka: int

    name = ReadOnly[str]("id.name")
    nh = ReadOnly[int]("hash.size")

    @property
    def is_ctr_hmac(self) -> bool:
        return self.nka != 0

    def labels(self, kid: int) -> tuple[bytes, bytes]:
        """(sframe_key_label, sframe_salt_label) of §4.4.2 for ``kid``."""
        if not 0 <= kid <= SFRAME_MAX_KID:
            raise UsageError("SFrame KID must fit in 64 bits")
        # §4.4.2: KID as an 8-byte big-endian integer (not the header form), the
        # cipher suite as 2 bytes.
        tail = kid.to_bytes(8, "big") + int(self.id).to_bytes(2, "big")
        return _KEY_LABEL + tail, _SALT_LABEL + tail

    def derive_key_salt(self, kid: int, base_key: bytes | Secret) -> tuple[Secret, Secret]:
        """RFC 9605 §4.4.2 ``derive_key_salt(KID, base_key)`` -> (sframe_key, sframe_salt)."""
        raw = base_key.expose() if isinstance(base_key, Secret) else base_key
        if not raw:
            raise UsageError("SFrame base_key must not be empty")
        key_label, salt_label = self.labels(kid)
        secret = kdf.hkdf_extract(self.hash, b"", raw)
        return (
            Secret(kdf.hkdf_expand(self.hash, secret, key_label, self.nk)),
            Secret(kdf.hkdf_expand(self.hash, secret, salt_label, self.nn)),
        )

    def cipher(self, sframe_key: bytes | Secret) -> FrameCipher:
        """The keyed AEAD of this suite for ``sframe_key`` (``Nk`` bytes)."""
        raw = sframe_key.expose() if isinstance(sframe_key, Secret) else sframe_key
        if len(raw) != self.nk:
            raise UsageError("SFrame key has the wrong length for the cipher suite")
        if self.is_ctr_hmac:
            return CtrHmacCipher(raw, nka=self.nka, hash=self.hash, nt=self.nt)
        return GcmCipher(raw)


_SUITES = {
    s.id: s
    for s in (
        SFrameSuite(CipherSuiteId.AES_128_CTR_HMAC_SHA256_80, Hash.SHA256, 48, 12, 10, 16),
        SFrameSuite(CipherSuiteId.AES_128_CTR_HMAC_SHA256_64, Hash.SHA256, 48, 12, 8, 16),
        SFrameSuite(CipherSuiteId.AES_128_CTR_HMAC_SHA256_32, Hash.SHA256, 48, 12, 4, 16),
        SFrameSuite(CipherSuiteId.AES_128_GCM_SHA256_128, Hash.SHA256, 16, 12, 16, 0),
        SFrameSuite(CipherSuiteId.AES_256_GCM_SHA512_128, Hash.SHA512, 32, 12, 16, 0),
    )
}


def cipher_suite(suite_id: int) -> SFrameSuite:
    """The suite with registry value ``suite_id``; :class:`UnsupportedError` otherwise."""
    try:
        return _SUITES[CipherSuiteId(suite_id)]
    except ValueError:
        raise UnsupportedError("unsupported SFrame cipher suite") from None


#: Every suite this module implements, in registry order.
SUITES: tuple[SFrameSuite, ...] = tuple(_SUITES.values())
