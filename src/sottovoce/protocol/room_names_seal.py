"""Sealing and opening a room's shared name and topic (the shapes and the scheme are
protocol/room_names.py): ChaCha20-Poly1305 under the name key, bound to the room and
the key id. Members only: the server never loads this module (it holds no AEAD code),
it checks the sealed field's shape alone. Sans-IO: key, key id and nonce are passed in.
"""

from __future__ import annotations

from sottovoce.crypto.aead import Aead, open_, seal
from sottovoce.errors import DecodeError, UsageError
from sottovoce.protocol.room_names import (
    KEY_ID_BYTES,
    NAME_KEY_BYTES,
    RoomNames,
    SealedNames,
)
from sottovoce.secret import Secret

__all__ = ["AEAD", "open_names", "seal_names"]

AEAD = Aead.CHACHA20POLY1305
_AAD_LABEL = b"sottovoce room names v1"


def _aad(group_id: bytes, key_id: bytes) -> bytes:
    return _AAD_LABEL + len(group_id).to_bytes(2, "big") + group_id + key_id


def seal_names(
    names: RoomNames, key: Secret, *, key_id: bytes, nonce: bytes, group_id: bytes
) -> bytes:
    """The encoded :class:`SealedNames` of ``names`` under ``key`` for the room
    ``group_id`` (bound in the AAD, so a ciphertext cannot be moved to another room)."""
    if len(key_id) != KEY_ID_BYTES or len(key) != NAME_KEY_BYTES:
        raise UsageError("a room name key is 32 bytes with a 16-byte id")
    ciphertext = seal(AEAD, key.expose(), nonce, names.encode(), _aad(group_id, key_id))
    return SealedNames(key_id, nonce, ciphertext).encode()


def open_names(sealed: SealedNames, key: Secret, *, group_id: bytes) -> RoomNames:
    """The names under ``sealed``; ``DecryptionError`` for a wrong key or a forgery,
    ``DecodeError`` for plaintext that is not a valid name and topic."""
    plain = open_(
        AEAD, key.expose(), sealed.nonce, sealed.ciphertext, _aad(group_id, sealed.key_id)
    )
    try:
        return RoomNames.decode(plain)
    except UsageError as exc:
        raise DecodeError(str(exc)) from None
