"""The body of a ``"file"`` message: what a recipient needs to fetch, check and show a
file whose sealed chunks wait on the server (docs/protocol.md §Files).

Inner content type ``"file"`` (the envelope says ``"text"``, as for every message);
the body is compact JSON (client/payload.py ``json_body``)::

    {"v":1,"blob":"<32 hex>","key":"<base64, 32 bytes>","sha256":"<64 hex>",
     "size":N,"name":"photo.jpg","type":"image/jpeg","kind":"file"|"image"|"voice",
     "thumb":"<base64 JPEG>"|null,"durationMs":N|null,"expires":<ms>}

A view-once file adds ``"once":true`` (a body without it is an ordinary file, so older
clients read every ordinary file as before, and refuse a view-once one rather than keep
it). The recipient opens it once; then its key, its sealed copy and the message body
are replaced, on that device, by the local tombstone ``{"v":1,"opened":"<kind>"}``,
which never travels. The sender keeps only that tombstone from the start.

Images carry a small JPEG thumbnail made on the sender's device, voice notes their
duration. Everything read from a peer is checked here: ids shaped like ids, a
32-byte key, sizes in range, a name that is one plain file name.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from sottovoce.client.payload import json_body, read_json_body
from sottovoce.errors import DecodeError
from sottovoce.secret import Secret

FILE_CONTENT_TYPE = "file"
FILE_KINDS = frozenset({"file", "image", "voice"})
#: A thumbnail stays small: it travels inside the end-to-end encrypted message.
MAX_THUMBNAIL_BYTES = 12 * 1024
MAX_NAME_CHARS = 255
MAX_SIZE = (1 << 53) - 1
_FIELDS = ("blob", "key", "sha256", "size", "name", "type", "kind", "thumb", "durationMs",
           "expires")
_BLOB = re.compile(r"[0-9a-f]{32}")
_SHA = re.compile(r"[0-9a-f]{64}")
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FileInfo:
    blob_id: str
    key: Secret
    sha256: bytes
    size: int
    name: str
    media_type: str
    kind: str
    thumbnail: bytes | None
    duration_ms: int | None
    expires_at_ms: int
    view_once: bool = False

    def encode(self) -> str:
        return json_body(
            blob=self.blob_id, key=base64.b64encode(self.key.expose()).decode("ascii"),
            sha256=self.sha256.hex(), size=self.size, name=self.name, type=self.media_type,
            kind=self.kind,
            thumb=None if self.thumbnail is None else base64.b64encode(self.thumbnail).decode(),
            durationMs=self.duration_ms, expires=self.expires_at_ms,
            **({"once": True} if self.view_once else {}),
        )

    @classmethod
    def decode(cls, text: str) -> FileInfo:
        try:
            d = read_json_body(text, _FIELDS, "file message")
        except DecodeError:
            d = read_json_body(text, (*_FIELDS, "once"), "file message")
            if d["once"] is not True:
                raise DecodeError("file message has a malformed once") from None
        return cls(
            blob_id=_match(d, "blob", _BLOB),
            key=Secret(_b64(d["key"], "key", 32, 32)),
            sha256=bytes.fromhex(_match(d, "sha256", _SHA)),
            size=_int(d["size"], "size"),
            name=valid_name(d["name"]),
            media_type=_match(d, "type", _MEDIA_TYPE),
            kind=_kind(d["kind"]),
            thumbnail=None if d["thumb"] is None
            else _b64(d["thumb"], "thumbnail", 1, MAX_THUMBNAIL_BYTES),
            duration_ms=None if d["durationMs"] is None else _int(d["durationMs"], "duration"),
            expires_at_ms=_int(d["expires"], "expiry"),
            view_once="once" in d,
        )


def opened_body(info: FileInfo) -> str:
    """What a view-once file message becomes once opened (or sent): its kind only."""
    return json_body(opened=info.kind)


def is_opened(text: str) -> bool:
    """Whether a stored file message is the tombstone of an opened view-once file."""
    try:
        read_json_body(text, ("opened",), "opened file")
    except DecodeError:
        return False
    return True


def valid_name(value: Any) -> str:
    """A file name from a peer: one plain name, never a path (it may name a saved file)."""
    if (
        not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_CHARS
        or value in (".", "..") or any(c in value for c in "/\\\x00")
        or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value)
    ):
        raise DecodeError("file message has an unusable file name")
    return value


def _match(d: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = d[name]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise DecodeError(f"file message has a malformed {name}")
    return value


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SIZE:
        raise DecodeError(f"file message has a malformed {what}")
    return value


def _b64(value: Any, what: str, low: int, high: int) -> bytes:
    if not isinstance(value, str) or len(value) > (high + 2) // 3 * 4:
        raise DecodeError(f"file message has a malformed {what}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"file message has a malformed {what}") from None
    if not low <= len(raw) <= high:
        raise DecodeError(f"file message has a malformed {what}")
    return raw


def _kind(value: Any) -> str:
    if value not in FILE_KINDS:
        raise DecodeError("file message has an unknown kind")
    return str(value)
