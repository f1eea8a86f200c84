"""File blobs on the wire: sealed chunks a client parks on the server for the devices a
file message goes to (docs/protocol.md §Files).

The server stores opaque chunks (crypto/file_chunks.py: it holds no key and never
learns a file's name, type or content); the key, hash and size travel in the
end-to-end encrypted message. Over the device's authenticated WebSocket::

    sottovoce.blob.create {blobId, size, chunks, ttlMs, recipients: [{userId, deviceId}]}
        → sottovoce.blob.created {blobId, received, expiresAtMs, maxBytes}
          (again with the same size and chunks: how many chunks the server already has,
          so an interrupted upload resumes there)
    sottovoce.blob.put {blobId, index, data}          index = the next chunk (= received)
        → sottovoce.blob.stored {blobId, index, complete}
    sottovoce.blob.get {blobId, index}                a recipient device (or the uploader)
        → sottovoce.blob.chunk {blobId, index, data}   of a complete blob, any index
    sottovoce.blob.fetched {blobId}                   a recipient device has it all
        → sottovoce.blob.released {blobId, deleted}    deleted once every recipient has

The chunks themselves travel as binary WebSocket messages, without base64 or JSON
(a put, and the answer to a get)::

    uint8 op | blob id (16 bytes) | uint32 index | uint8 n | requestId (n bytes) | chunk
    op 0x01: sottovoce.blob.put (client → server); op 0x02: sottovoce.blob.chunk (reply)

``size`` is the sum of the sealed chunks; every chunk but the last is exactly
``SEALED_CHUNK_SIZE`` bytes, so the server checks each one's length and finds any by
its index. Error codes: file_too_large (``details {maxBytes}``), quota_exceeded
(``details {quotaBytes, usedBytes}``), unknown_blob, blob_conflict, bad_chunk,
blob_incomplete, forbidden, bad_request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sottovoce.crypto.file_layout import FILE_ID_SIZE, MAX_CHUNKS, SEALED_CHUNK_SIZE
from sottovoce.limits import MAX_ROOM_MEMBERS
from sottovoce.protocol.fields import B64, ID, ID_RE, MAX_INT, Int, ListOf, Pattern, bad
from sottovoce.protocol.spec import ClientEvent, Nested, WireStruct, event, registry, struct, wire

BLOB_ID_RE = re.compile(r"[0-9a-f]{32}")
BLOB_ID = Pattern(BLOB_ID_RE, "must be 32 lowercase hex characters")
CHUNK_DATA = B64(max_bytes=SEALED_CHUNK_SIZE, nonempty=True)
#: Devices one blob is for: a room's members at most (plus the sender's own devices).
MAX_BLOB_RECIPIENTS = MAX_ROOM_MEMBERS + 16

BLOB_CREATED = "sottovoce.blob.created"
BLOB_STORED = "sottovoce.blob.stored"
BLOB_CHUNK = "sottovoce.blob.chunk"
BLOB_RELEASED = "sottovoce.blob.released"


@struct
class Recipient(WireStruct):
    """A device a blob is for: it may fetch it, and the blob goes once all have."""

    userId: str = wire(ID)
    deviceId: str = wire(ID)


def _recipient_key(r: Recipient) -> tuple[str, str]:
    return (r.userId, r.deviceId)


RECIPIENTS = ListOf(Nested(Recipient, why="items must be objects"),
                    max_items=MAX_BLOB_RECIPIENTS, unique=_recipient_key)


@event("sottovoce.blob.create")
class BlobCreate(ClientEvent):
    blobId: str = wire(BLOB_ID)
    size: int = wire(Int(minimum=1, maximum=MAX_INT))
    chunks: int = wire(Int(minimum=1, maximum=MAX_CHUNKS - 1))
    ttlMs: int = wire(Int(minimum=1, maximum=MAX_INT))
    recipients: tuple[Recipient, ...] = wire(RECIPIENTS)


@event("sottovoce.blob.put")
class BlobPut(ClientEvent):
    blobId: str = wire(BLOB_ID)
    index: int = wire(Int(maximum=MAX_CHUNKS - 1))
    #: A binary put's is a view into its message (no copy of the chunk).
    data: bytes | memoryview = wire(CHUNK_DATA)


@event("sottovoce.blob.get")
class BlobGet(ClientEvent):
    blobId: str = wire(BLOB_ID)
    index: int = wire(Int(maximum=MAX_CHUNKS - 1))


@event("sottovoce.blob.fetched")
class BlobFetched(ClientEvent):
    blobId: str = wire(BLOB_ID)


BLOB_CLIENT_EVENTS = registry(BlobCreate, BlobPut, BlobGet, BlobFetched)


# =============================================================================
# Binary messages: chunks without base64 or JSON
# =============================================================================

OP_PUT = 0x01
OP_CHUNK = 0x02
_HEAD = 1 + FILE_ID_SIZE + 4 + 1


@dataclass(frozen=True, slots=True)
class BinaryChunk:
    op: int
    blob_id: str
    index: int
    request_id: str
    #: A view into the message (no copy of the chunk is made).
    data: memoryview


def is_binary_chunk(message: bytes) -> bool:
    return message[:1] in (b"\x01", b"\x02")


def chunk_head(op: int, blob_id: str, index: int, request_id: str) -> bytes:
    """What comes before the chunk in its binary message (the chunk itself may then be
    written, or sealed, right after it: no copy of it is made)."""
    rid = request_id.encode("ascii")
    return b"".join((bytes((op,)), bytes.fromhex(blob_id), index.to_bytes(4, "big"),
                     bytes((len(rid),)), rid))


def pack_chunk(op: int, blob_id: str, index: int, request_id: str, data: bytes) -> bytes:
    return chunk_head(op, blob_id, index, request_id) + data


def unpack_chunk(message: bytes) -> BinaryChunk:
    """A binary chunk message; ``ProtocolError`` if it is not a well-formed one."""
    if len(message) < _HEAD or message[0] not in (OP_PUT, OP_CHUNK):
        raise bad("binary", "is not a chunk message")
    n = message[_HEAD - 1]
    rid = bytes(message[_HEAD:_HEAD + n]).decode("ascii", "replace")
    if not n or len(message) < _HEAD + n or not ID_RE.fullmatch(rid):
        raise bad("requestId", "must be 1-255 id characters")
    data = memoryview(message)[_HEAD + n:]
    if not data or len(data) > SEALED_CHUNK_SIZE:
        raise bad("data", f"must be 1-{SEALED_CHUNK_SIZE} bytes")
    return BinaryChunk(message[0], bytes(message[1:1 + FILE_ID_SIZE]).hex(),
                       int.from_bytes(message[1 + FILE_ID_SIZE:_HEAD - 1], "big"), rid, data)
