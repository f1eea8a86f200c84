"""Photos and clips in an ephemeral chat, from memory to memory (docs/protocol.md
§Ephemeral chats, "Photos and clips").

    /photo PATH ─► the file read once into a bytearray ─► chunks (MEDIA frames, each
                   under the chat's keys) ─► the sender's buffer zeroed
    chunks in   ─► one bytearray per item, filled in place ─► complete: kept in the
                   chat's RAM ring as a ``Media``; described (kind, size, an image's
                   width and height), never written anywhere

A chunk is ``media id (8) | kind (1) | index (u16) | count (u16) | total (u32) |
name (opaque8) | data``; a group chat's chunk starts with the group chat's id
(client/ephemeral_group.py strips and checks it). Every field is checked against the
first chunk of the item and the limits below; an item that does not add up is dropped.
Saving one to disk is a separate, explicit step of the user's (``/save``), never done
by the client.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from sottovoce.client.ephemeral_memory import wipe
from sottovoce.codec.tls import Reader, Writer
from sottovoce.errors import DecodeError, UsageError

#: The largest photo or clip an ephemeral chat carries (it is held in RAM on both sides).
MAX_MEDIA_BYTES = 4 * 2**20
#: Bytes of media per frame: a relayed frame is copied once per device, and the copies
#: together must stay well under the server's frame limit.
CHUNK_BYTES = 16 * 1024
#: Items a chat keeps (the oldest is wiped when another arrives), and items being received.
MEDIA_RING_SIZE = 8
MAX_INCOMPLETE = 4
MAX_NAME_BYTES = 100
_ID_LEN = 8


class MediaKind(enum.IntEnum):
    PHOTO = 1
    CLIP = 2


@dataclass(eq=False)
class Media:
    """One photo or clip held in memory; ``data`` is zeroed when the chat ends."""

    sender: str
    kind: MediaKind
    name: str
    data: bytearray

    def __repr__(self) -> str:
        return f"Media({self.kind.name.lower()}, {len(self.data)} bytes)"

    def describe(self) -> str:
        """What can be said of it without writing it anywhere: kind, size, dimensions."""
        return describe(self.kind, self.name, self.data)

    def wipe(self) -> None:
        wipe(self.data)


def chunks(media_id: bytes, kind: MediaKind, name: str, data: bytes | bytearray) -> list[bytes]:
    """The MEDIA contents carrying ``data`` (each is sealed, then dropped)."""
    raw_name = name.encode("utf-8")[:MAX_NAME_BYTES]
    if not data:
        raise UsageError("the file is empty")
    if len(data) > MAX_MEDIA_BYTES:
        raise UsageError(f"too big for an ephemeral chat: at most {MAX_MEDIA_BYTES // 2**20} MiB")
    count = -(-len(data) // CHUNK_BYTES)
    view = memoryview(data)
    out = []
    for i in range(count):
        w = Writer()
        w.raw(media_id)
        w.u8(kind)
        w.u16(i)
        w.u16(count)
        w.u32(len(data))
        w.opaque8(raw_name)
        w.raw(bytes(view[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]))
        out.append(w.getvalue())
    return out


@dataclass(eq=False)
class _Partial:
    kind: MediaKind
    name: str
    count: int
    data: bytearray
    have: set[int] = field(default_factory=set)


class Assembler:
    """Chunks in, whole items out; at most MAX_INCOMPLETE items in flight per chat."""

    def __init__(self) -> None:
        self._partial: dict[bytes, _Partial] = {}

    def __repr__(self) -> str:
        return f"Assembler({len(self._partial)} in flight)"

    def add(self, sender: str, content: bytes) -> Media | None:
        """The item ``content`` completed, else ``None``; ``DecodeError`` if malformed."""
        r = Reader(content)
        media_id = r.raw(_ID_LEN)
        try:
            kind = MediaKind(r.u8())
        except ValueError:
            raise DecodeError("unknown media kind") from None
        index, count, total = r.u16(), r.u16(), r.u32()
        try:
            name = r.opaque8().decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("media name is not UTF-8") from None
        piece = r.raw(r.remaining)
        if not 0 < total <= MAX_MEDIA_BYTES or count != -(-total // CHUNK_BYTES) \
                or not 0 <= index < count:
            raise DecodeError("media chunk does not add up")
        expected = min(CHUNK_BYTES, total - index * CHUNK_BYTES)
        if len(piece) != expected:
            raise DecodeError("media chunk has the wrong length")
        partial = self._partial.get(media_id)
        if partial is None:
            if len(self._partial) >= MAX_INCOMPLETE:
                oldest = next(iter(self._partial))
                wipe(self._partial.pop(oldest).data)
            partial = _Partial(kind, name, count, bytearray(total))
            self._partial[media_id] = partial
        if (partial.kind, partial.name, partial.count, len(partial.data)) != (
                kind, name, count, total):
            raise DecodeError("media chunk does not match its item")
        partial.data[index * CHUNK_BYTES:index * CHUNK_BYTES + len(piece)] = piece
        partial.have.add(index)
        if len(partial.have) < count:
            return None
        del self._partial[media_id]
        return Media(sender, kind, name, partial.data)

    def wipe(self) -> None:
        for partial in self._partial.values():
            wipe(partial.data)
        self._partial.clear()


def read_once(path: str) -> bytearray:
    """The file's bytes, read once straight into a bytearray (the caller wipes it)."""
    try:
        with open(path, "rb", buffering=0) as f:
            size = f.seek(0, 2)
            if size > MAX_MEDIA_BYTES:
                raise UsageError(
                    f"too big for an ephemeral chat: at most {MAX_MEDIA_BYTES // 2**20} MiB")
            f.seek(0)
            data = bytearray(size)
            got = f.readinto(data)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if got != size:
        wipe(data)
        raise UsageError(f"{path} changed while it was read")
    return data


def describe(kind: MediaKind, name: str, data: bytes | bytearray) -> str:
    """``photo 'cat.png': PNG image, 640×480, 12345 bytes`` (the name as sent)."""
    what = _image_format(data) if kind is MediaKind.PHOTO else _clip_format(data)
    size = _dimensions(data)
    dims = f", {size[0]}×{size[1]}" if size is not None else ""
    return f"{kind.name.lower()} '{name}': {what}{dims}, {len(data)} bytes"


def _image_format(data: bytes | bytearray) -> str:
    head = bytes(data[:12])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG image"
    if head.startswith(b"\xff\xd8"):
        return "JPEG image"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP image"
    return "image of unknown format"


def _clip_format(data: bytes | bytearray) -> str:
    head = bytes(data[:12])
    if head[4:8] == b"ftyp":
        return "MP4/QuickTime clip"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "WebM/Matroska clip"
    if head.startswith(b"OggS"):
        return "Ogg clip"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "WAV audio"
    return "clip of unknown format"


def _dimensions(data: bytes | bytearray) -> tuple[int, int] | None:
    """An image's width and height from its header (PNG, GIF, JPEG), else ``None``."""
    head = bytes(data[:32])
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        if len(head) < 24:  # a truncated header names no size
            return None
        w, h = struct.unpack(">II", head[16:24])
        return w, h
    if head[:6] in (b"GIF87a", b"GIF89a"):
        if len(head) < 10:
            return None
        w, h = struct.unpack("<HH", head[6:10])
        return w, h
    if head.startswith(b"\xff\xd8"):
        return _jpeg_dimensions(data)
    return None


def _jpeg_dimensions(data: bytes | bytearray) -> tuple[int, int] | None:
    i, n = 2, min(len(data), 1 << 20)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return w, h
        i += 2 + length
    return None
