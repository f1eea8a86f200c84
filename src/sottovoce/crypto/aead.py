"""AEADs: AES-GCM and ChaCha20-Poly1305. Every failure is one opaque error."""

from __future__ import annotations

from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from sottovoce.errors import DecryptionError, UsageError


class Aead(Enum):
    AES128GCM = "aes128gcm"
    AES256GCM = "aes256gcm"
    CHACHA20POLY1305 = "chacha20poly1305"

    @property
    def key_size(self) -> int:
        return 16 if self is Aead.AES128GCM else 32

    @property
    def nonce_size(self) -> int:
        return 12

    @property
    def tag_size(self) -> int:
        return 16


def _cipher(alg: Aead, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if len(key) != alg.key_size:
        raise UsageError("AEAD key has the wrong length")
    if alg is Aead.CHACHA20POLY1305:
        return ChaCha20Poly1305(key)
    return AESGCM(key)


def seal(alg: Aead, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    if len(nonce) != alg.nonce_size:
        raise UsageError("AEAD nonce has the wrong length")
    return _cipher(alg, key).encrypt(nonce, plaintext, aad)


def open_(alg: Aead, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
    """Decrypt and authenticate; raises :class:`DecryptionError` on any failure."""
    if len(nonce) != alg.nonce_size:
        raise UsageError("AEAD nonce has the wrong length")
    try:
        return _cipher(alg, key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise DecryptionError("authenticated decryption failed") from None


class AeadKey:
    """A keyed AEAD instance: builds the cipher once for many messages (hot paths)."""

    __slots__ = ("_alg", "_cipher")

    def __init__(self, alg: Aead, key: bytes) -> None:
        self._alg = alg
        self._cipher = _cipher(alg, key)

    def __repr__(self) -> str:
        return f"AeadKey({self._alg.value}, <redacted>)"

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        if len(nonce) != self._alg.nonce_size:
            raise UsageError("AEAD nonce has the wrong length")
        return self._cipher.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
        try:
            return self._cipher.decrypt(nonce, ciphertext, aad)
        except (InvalidTag, ValueError):
            raise DecryptionError("authenticated decryption failed") from None
