"""Records sealed at rest: our own AEAD under a fresh per-record key.

    record_key = HKDF-SHA256(ikm = storage key, salt = 32 random bytes,
                             info = "sottovoce sealed v1" ‖ kind ‖ record id)
    sealed     = version(1) ‖ salt(32) ‖ nonce(12) ‖ AES-256-GCM(record_key, nonce,
                                                     plaintext, aad = kind ‖ record id)

A fresh salt per write gives a fresh key per record version, so two writes of
the same state never produce related ciphertexts (vodozemac's own pickle
encryption is deterministic). Binding kind and id as AAD stops a
sealed record from being swapped for another one.
"""

from __future__ import annotations

from sottovoce.codec.tls import Writer
from sottovoce.crypto.aead import Aead, open_, seal
from sottovoce.crypto.kdf import Hash, hkdf
from sottovoce.crypto.rng import Random
from sottovoce.errors import DecryptionError, UsageError
from sottovoce.secret import Secret

_VERSION = 1
_SALT = 32
_NONCE = 12
_INFO = b"sottovoce sealed v1"
STORAGE_KEY_BYTES = 32


def _binding(kind: bytes, record_id: bytes) -> bytes:
    w = Writer()
    w.opaque8(kind)
    w.opaque_v(record_id)
    return w.getvalue()


def _record_key(storage_key: Secret, salt: bytes, binding: bytes) -> bytes:
    if len(storage_key) != STORAGE_KEY_BYTES:
        raise UsageError("storage key must be 32 bytes")
    return hkdf(Hash.SHA256, storage_key.expose(), salt, _INFO + binding, 32)


def seal_record(
    storage_key: Secret, kind: bytes, record_id: bytes, plaintext: bytes, rng: Random
) -> bytes:
    binding = _binding(kind, record_id)
    salt, nonce = rng(_SALT), rng(_NONCE)
    key = _record_key(storage_key, salt, binding)
    body = seal(Aead.AES256GCM, key, nonce, plaintext, binding)
    return bytes((_VERSION,)) + salt + nonce + body


def open_record(storage_key: Secret, kind: bytes, record_id: bytes, sealed: bytes) -> bytes:
    """Open a sealed record; raises :class:`DecryptionError` on any mismatch."""
    if len(sealed) < 1 + _SALT + _NONCE + 16 or sealed[0] != _VERSION:
        raise DecryptionError("sealed record is malformed")
    binding = _binding(kind, record_id)
    salt = sealed[1 : 1 + _SALT]
    nonce = sealed[1 + _SALT : 1 + _SALT + _NONCE]
    key = _record_key(storage_key, salt, binding)
    return open_(Aead.AES256GCM, key, nonce, sealed[1 + _SALT + _NONCE :], binding)
