"""What a 1:1 ciphertext carries inside (the server never sees this structure).

    struct {
        uint8  version = 1;
        opaque message_id<0..255>;       // binds the plaintext to the envelope's messageId
        opaque conversation_id<0..255>;  // and to its conversation
        opaque content_type<0..255>;
        uint64 created_at_ms;
        opaque body<V>;
        // version 2 only: the sender's latest verified transparency-log head
        uint64 kt_size;
        opaque kt_root<0..255>;          // 32 bytes
        // version 3 only: both fields above (size 0 and an empty root: no head),
        // then when the message disappears (docs/protocol.md §Disappearing messages)
        uint64 expires_at_ms;            // > 0
    } Payload;

The receiver checks ``message_id`` and ``conversation_id`` against the
envelope, so the relay cannot move a ciphertext to another message or chat.
Version 2 adds the sender's head of the key-transparency log (its size and
root), so two users who talk compare the log they were shown
(:meth:`sottovoce.client.kt.KeyTransparency.compare`); a sender with no head
writes version 1. Version 3 adds the message's expiry (a disappearing message,
:mod:`sottovoce.client.timers`) inside the ciphertext, so a later change of the
chat's timer cannot move it; a payload without one is written as version 1 or 2
as before, so older readers still read every message that does not disappear.

Padding to size buckets (so a ciphertext's length says little about the text's)
has one implementation, :mod:`sottovoce.pairwise.padding`: 1:1 sessions pad
inside the Olm layer; a room's MLS application data is padded here
(:meth:`Payload.encode_padded`), with the same buckets.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sottovoce.codec.tls import Reader, WireStruct, Writer
from sottovoce.errors import DecodeError, UsageError
from sottovoce.limits import MAX_TEXT_BYTES
from sottovoce.pairwise.padding import pad, unpad

_VERSION = 1
_VERSION_KT = 2
_VERSION_EXPIRY = 3


#: The ``"v"`` of the small JSON bodies some payloads carry (a missed call, a room invitation).
JSON_BODY_VERSION = 1


def json_body(**fields: object) -> str:
    """A small payload body as compact JSON with its version first: ``{"v":1,...}``."""
    return json.dumps(
        {"v": JSON_BODY_VERSION, **fields}, ensure_ascii=False, separators=(",", ":")
    )


@contextmanager
def peer_check(message: str) -> Iterator[None]:
    """Around a check written for our own input (it raises ``UsageError``): what it
    refuses in a body from a peer is a ``DecodeError`` saying ``message``."""
    try:
        yield
    except UsageError:
        raise DecodeError(message) from None


class JsonBody:
    """A dataclass whose body is :func:`json_body` of its fields, in their order (a tuple
    as a list); the subclass reads it back with :func:`read_json_body` and its checks."""

    __slots__ = ()

    def encode(self) -> bytes:
        fields = dataclasses.fields(self)  # type: ignore[arg-type]  # subclasses are dataclasses
        return json_body(**{f.name: getattr(self, f.name) for f in fields}).encode("utf-8")


def read_json_body(data: str | bytes, fields: Collection[str], what: str) -> dict[str, Any]:
    """The object :func:`json_body` wrote, with exactly ``fields`` besides ``v``.

    Anything else (not UTF-8 JSON, other fields, another version) is a
    ``DecodeError`` naming ``what``; the caller checks each field's value.
    """
    try:
        # Bytes are UTF-8 only (json.loads alone would guess UTF-16 or UTF-32 too).
        value = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: a peer's deeply nested arrays exhaust the parser's stack.
        raise DecodeError(f"{what} is not JSON") from None
    if not isinstance(value, dict) or set(value) != {"v", *fields}:
        raise DecodeError(f"{what} has the wrong fields")
    if value["v"] != JSON_BODY_VERSION:
        raise DecodeError(f"unknown {what} version")
    return value


def text_body(text: str) -> bytes:
    """A text message's body (1:1 or room), or a plain error for what cannot be one."""
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("the message is not valid UTF-8 text") from None
    if not body or len(body) > MAX_TEXT_BYTES:
        raise UsageError(f"a text message is 1-{MAX_TEXT_BYTES} bytes of UTF-8")
    return body


@dataclass(frozen=True, slots=True, kw_only=True)
class Payload(WireStruct):
    message_id: str
    conversation_id: str
    content_type: str
    created_at_ms: int
    body: bytes
    kt_size: int = 0
    kt_root: bytes = b""
    #: When the message disappears (Unix ms); 0: it does not.
    expires_at_ms: int = 0

    def write(self, w: Writer) -> None:
        if self.expires_at_ms:
            version = _VERSION_EXPIRY
        else:
            version = _VERSION_KT if self.kt_root else _VERSION
        w.u8(version)
        w.opaque8(self.message_id.encode("ascii"))
        w.opaque8(self.conversation_id.encode("ascii"))
        w.opaque8(self.content_type.encode("ascii"))
        w.u64(self.created_at_ms)
        w.opaque_v(self.body)
        if version != _VERSION:
            w.u64(self.kt_size if self.kt_root else 0)
            w.opaque8(self.kt_root)
        if version == _VERSION_EXPIRY:
            w.u64(self.expires_at_ms)

    @classmethod
    def read(cls, r: Reader) -> Payload:
        version = r.u8()
        if version not in (_VERSION, _VERSION_KT, _VERSION_EXPIRY):
            raise DecodeError("unknown payload version")
        payload = cls(
            message_id=r.opaque8().decode("ascii"),
            conversation_id=r.opaque8().decode("ascii"),
            content_type=r.opaque8().decode("ascii"),
            created_at_ms=r.u64(),
            body=r.opaque_v(),
        )
        if version == _VERSION:
            return payload
        size, root = r.u64(), r.opaque8()
        if version == _VERSION_EXPIRY and size == 0 and not root:
            head = None  # version 3 without a log head
        elif size <= 0 or len(root) != 32:
            raise DecodeError("the payload's log head is malformed")
        else:
            head = (size, root)
        if version == _VERSION_KT:
            return payload.with_head(head)
        expires = r.u64()
        if expires <= 0:
            raise DecodeError("the payload's expiry is malformed")
        return dataclasses.replace(payload.with_head(head), expires_at_ms=expires)

    def with_head(self, head: tuple[int, bytes] | None) -> Payload:
        """This payload carrying the log head ``(size, root)`` (unchanged without one)."""
        if head is None:
            return self
        return dataclasses.replace(self, kt_size=head[0], kt_root=head[1])

    def encode_padded(self) -> bytes:
        """The encoding padded to its size bucket (for MLS application data)."""
        return pad(self.encode())

    @classmethod
    def decode_padded(cls, data: bytes) -> Payload:
        """Inverse of :meth:`encode_padded`; ``DecodeError`` on a bad pad or payload."""
        return cls.decode(unpad(data))


#: A log head in an MLS commit's authenticated data: ``uint8 version = 1; uint64 size;
#: opaque root<0..255>`` (32 bytes); empty when the committer has none.
_HEAD_AAD_VERSION = 1


def encode_log_head(head: tuple[int, bytes] | None) -> bytes:
    """The authenticated data of a commit: our transparency-log head, or nothing."""
    if head is None:
        return b""
    w = Writer()
    w.u8(_HEAD_AAD_VERSION)
    w.u64(head[0])
    w.opaque8(head[1])
    return w.getvalue()


def decode_log_head(data: bytes) -> tuple[int, bytes] | None:
    """The head a commit's authenticated data carries; ``None`` if it holds none or
    something else (a commit is never refused for it)."""
    if not data:
        return None
    try:
        r = Reader(data)
        if r.u8() != _HEAD_AAD_VERSION:
            return None
        size, root = r.u64(), r.opaque8()
        r.finish()
    except DecodeError:
        return None
    return (size, root) if size > 0 and len(root) == 32 else None
