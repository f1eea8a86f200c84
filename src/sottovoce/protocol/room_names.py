"""A room's shared name and topic, sealed inside its profile (docs/protocol.md §Rooms,
"Room profile"; the profile itself is protocol/room_rules.py).

The delivery service reads a room's group context (it checks commits against the
room's rules and serves GroupInfo to joiners by token), so the name and topic travel
there only as an AEAD ciphertext under a *name key* the server never holds::

    sealed = key_id (16 random bytes) ‖ nonce ‖ ChaCha20-Poly1305(name key,
             names = opaque name<V> ‖ opaque topic<V>, aad = label ‖ group id ‖ key_id)

    a rename or topic change made in epoch N ──► name key = MLS-Exporter(
        NAME_KEY_LABEL, key_id, 32) of epoch N: every member of epoch N derives it
        when it processes the commit; a member removed before N cannot
    a new room ──► a random name key (no epoch exists yet to export from)
    a joiner ──► a member sends it the current name key inside the room's
        encryption (a control message, client/rooms/names.py)

Each name key seals one ciphertext, so a fresh random nonce is not even needed for
uniqueness; one is drawn anyway. This module is the shapes, which the server checks;
sealing and opening (the AEAD, which the server never loads) are
protocol/room_names_seal.py. Sans-IO: the caller passes key, key id and nonce.
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError, UsageError
from sottovoce.limits import MAX_ROOM_NAME_BYTES
from sottovoce.secret import Secret

__all__ = [
    "KEY_ID_BYTES",
    "MAX_ROOM_TOPIC_BYTES",
    "MAX_SEALED_NAMES_BYTES",
    "NAME_KEY_BYTES",
    "NAME_KEY_LABEL",
    "NONCE_BYTES",
    "PAD_TO",
    "NameKey",
    "RoomNames",
    "SealedNames",
]

MAX_ROOM_TOPIC_BYTES = 1024
#: The MLS exporter label a name key is derived under (RFC 9420 §8.5).
NAME_KEY_LABEL = b"sottovoce room name key"
KEY_ID_BYTES = 16
NAME_KEY_BYTES = 32
#: ChaCha20-Poly1305's nonce and tag (protocol/room_names_seal.py; a test checks).
NONCE_BYTES, TAG_BYTES = 12, 16
#: The names are padded to a multiple of this many bytes, so the ciphertext's length
#: tells the server only a size class of the name and topic.
PAD_TO = 64
#: Three length prefixes of at most 4 bytes each, padding and the AEAD tag.
_MAX_CIPHERTEXT = MAX_ROOM_NAME_BYTES + MAX_ROOM_TOPIC_BYTES + 12 + PAD_TO + TAG_BYTES
#: What a profile's sealed field may hold at most (key id, nonce, ciphertext, prefixes).
MAX_SEALED_NAMES_BYTES = KEY_ID_BYTES + NONCE_BYTES + _MAX_CIPHERTEXT + 12


def _text(raw: bytes, what: str, limit: int, *, empty: bool) -> str:
    if len(raw) > limit or (not raw and not empty):
        raise DecodeError(f"the room {what} is not {0 if empty else 1}-{limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"the room {what} is not UTF-8") from None


@dataclass(frozen=True, slots=True)
class RoomNames:
    """What the sealed field holds: the room's shared name and topic."""

    name: str
    topic: str = ""

    def __post_init__(self) -> None:
        if not 0 < len(self.name.encode("utf-8")) <= MAX_ROOM_NAME_BYTES:
            raise UsageError(f"a room name is 1-{MAX_ROOM_NAME_BYTES} bytes")
        if len(self.topic.encode("utf-8")) > MAX_ROOM_TOPIC_BYTES:
            raise UsageError(f"a room topic is at most {MAX_ROOM_TOPIC_BYTES} bytes")

    def encode(self) -> bytes:
        """``opaque name<V>; opaque topic<V>; opaque padding<V>`` (zeros, to a multiple
        of :data:`PAD_TO` bytes in all)."""
        w = Writer()
        w.opaque_v(self.name.encode("utf-8"))
        w.opaque_v(self.topic.encode("utf-8"))
        pad = -(len(w) + 1) % PAD_TO  # under 64: its length prefix is one byte
        w.opaque_v(bytes(pad))
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> RoomNames:
        def read(r: Reader) -> RoomNames:
            name = _text(r.opaque_v(), "name", MAX_ROOM_NAME_BYTES, empty=False)
            topic = _text(r.opaque_v(), "topic", MAX_ROOM_TOPIC_BYTES, empty=True)
            if any(r.opaque_v()):
                raise DecodeError("the room names' padding is not zeros")
            return cls(name, topic)

        return decode(read, data)


@dataclass(frozen=True, slots=True)
class SealedNames:
    """The profile's sealed field, parsed (it never holds the key)."""

    key_id: bytes
    nonce: bytes
    ciphertext: bytes

    def encode(self) -> bytes:
        w = Writer()
        w.opaque_v(self.key_id)
        w.opaque_v(self.nonce)
        w.opaque_v(self.ciphertext)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> SealedNames:
        """Shape only (what the server can check): sizes of key id, nonce, ciphertext."""

        def read(r: Reader) -> SealedNames:
            key_id, nonce, ciphertext = r.opaque_v(), r.opaque_v(), r.opaque_v()
            if len(key_id) != KEY_ID_BYTES or len(nonce) != NONCE_BYTES:
                raise DecodeError("sealed room names: bad key id or nonce")
            if not TAG_BYTES < len(ciphertext) <= _MAX_CIPHERTEXT:
                raise DecodeError("sealed room names: bad ciphertext size")
            return cls(key_id, nonce, ciphertext)

        if len(data) > MAX_SEALED_NAMES_BYTES:
            raise DecodeError("sealed room names: too long")
        return decode(read, data)


@dataclass(frozen=True, slots=True)
class NameKey:
    """A name key and its id (members keep the one of their room's current names)."""

    key_id: bytes
    key: Secret

    def __post_init__(self) -> None:
        if len(self.key_id) != KEY_ID_BYTES or len(self.key) != NAME_KEY_BYTES:
            raise DecodeError("a room name key is 32 bytes with a 16-byte id")

    def encode(self) -> bytes:
        """``key_id ‖ key`` (fixed sizes), for the sealed store and the control message."""
        return self.key_id + self.key.expose()

    @classmethod
    def decode(cls, raw: bytes) -> NameKey:
        if len(raw) != KEY_ID_BYTES + NAME_KEY_BYTES:
            raise DecodeError("a room name key is 32 bytes with a 16-byte id")
        return cls(raw[:KEY_ID_BYTES], Secret(raw[KEY_ID_BYTES:]))
