"""Files encrypted in chunks, sans I/O (docs/protocol.md §Files).

A file is cut into chunks of :data:`CHUNK_SIZE` plaintext bytes (the last one
shorter, an empty file one empty chunk) and each chunk is sealed on its own
with AES-256-GCM under a random per-file key, so a file of any size streams
through a fixed amount of memory and a download can resume at any chunk::

    chunk i = header ‖ AES-256-GCM(key, nonce = i as 12 bytes,
                                   aad = "sottovoce file chunk v1" ‖ file_id ‖ header,
                                   plaintext[i·CHUNK_SIZE : (i+1)·CHUNK_SIZE])
    header  = uint32 index ‖ uint8 last (1 on the final chunk, else 0)

The header is in clear (so a misplaced chunk is named for what it is) and
authenticated, as is the file id: a chunk cannot move to another position or
another file, and only the real final chunk says "last", so cutting the file
short or appending to it is seen. A SHA-256 of the whole plaintext travels with
the key (in the end-to-end encrypted message) and is checked at the end.

Every way a stream can be wrong ends in its own :class:`FileIntegrityError`:
a chunk that does not open (:class:`ChunkTampered`), one in the wrong place
(:class:`ChunkOutOfOrder`), an end before the final chunk
(:class:`FileTruncated`), data past it (:class:`FileExtended`), or a whole that
is not the file that was sent (:class:`FileMismatch`).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sottovoce.crypto.file_layout import (
    CHUNK_OVERHEAD,
    CHUNK_SIZE,
    FILE_ID_SIZE,
    HEADER_SIZE,
    MAX_CHUNKS,
    SEALED_CHUNK_SIZE,
    TAG_SIZE,
    chunk_count,
    plain_size,
    sealed_chunk_size,
    sealed_size,
    valid_layout,
)
from sottovoce.crypto.rng import Random
from sottovoce.errors import CryptoError, UsageError
from sottovoce.secret import Secret

__all__ = [
    "CHUNK_OVERHEAD", "CHUNK_SIZE", "FILE_ID_SIZE", "HEADER_SIZE", "KEY_SIZE", "MAX_CHUNKS",
    "RESEAL_WINDOW", "SEALED_CHUNK_SIZE", "TAG_SIZE", "ChunkOpener", "ChunkOutOfOrder",
    "ChunkSealer", "ChunkTampered", "FileExtended", "FileIntegrityError", "FileMismatch",
    "FileTruncated", "chunk_count", "new_file_id", "new_file_key", "plain_size",
    "sealed_chunk_size", "sealed_size", "valid_layout",
]

KEY_SIZE = 32
#: How many of the last sealed chunks a sealer can seal again (their tags are kept):
#: far more than a transfer has in flight.
RESEAL_WINDOW = 256

_AAD = b"sottovoce file chunk v1"


class FileIntegrityError(CryptoError):
    """A file's chunks are not the file that was sent; nothing of it may be kept."""


class ChunkTampered(FileIntegrityError):
    """A chunk does not open under the file's key at its place (changed or damaged)."""


class ChunkOutOfOrder(FileIntegrityError):
    """A chunk names another position than the one it was read at."""


class FileTruncated(FileIntegrityError):
    """The chunks ended before the file's final chunk."""


class FileExtended(FileIntegrityError):
    """A chunk came after the file's final chunk."""


class FileMismatch(FileIntegrityError):
    """Every chunk opened, but the whole is not the size or the hash that was sent."""


def new_file_key(rng: Random) -> Secret:
    return Secret(rng(KEY_SIZE))


def new_file_id(rng: Random) -> bytes:
    return rng(FILE_ID_SIZE)


def _header(index: int, last: bool) -> bytes:
    return index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _aead(key: Secret, file_id: bytes) -> AESGCM:
    raw = key.expose()
    if len(raw) != KEY_SIZE:
        raise UsageError("a file key is 32 bytes")
    if len(file_id) != FILE_ID_SIZE:
        raise UsageError("a file id is 16 bytes")
    return AESGCM(raw)


class ChunkSealer:
    """Seals the chunks of one file, in order, and hashes its plaintext on the way."""

    __slots__ = ("_aead", "_file_id", "_hash", "_next", "_start", "_tags", "chunks", "size")

    def __init__(self, key: Secret, file_id: bytes, size: int, *, start: int = 0) -> None:
        """``start``: seal from that chunk on (the ones before are sealed already; the
        hash then covers only what this sealer saw, and :meth:`digest` refuses)."""
        self._aead = _aead(key, file_id)
        self._file_id = file_id
        self.size = size
        self.chunks = chunk_count(size)
        self._next = self._start = start
        self._hash = hashlib.sha256()
        #: The tags of the last chunks sealed, by index (:meth:`reseal` checks against them).
        self._tags: dict[int, bytes] = {}

    def seal(self, plaintext: bytes) -> bytes:
        """Seal the next chunk (``CHUNK_SIZE`` bytes, the last one up to that)."""
        sealed = bytearray(HEADER_SIZE + len(plaintext) + TAG_SIZE)
        self.seal_into(plaintext, memoryview(sealed))
        return bytes(sealed)

    def seal_into(self, plaintext: bytes | bytearray | memoryview, out: memoryview) -> None:
        """:meth:`seal`, written into ``out`` (``HEADER_SIZE + len(plaintext) + TAG_SIZE``
        bytes, the chunk's place in a larger buffer) instead of new bytes."""
        index = self._next
        if index >= self.chunks:
            raise UsageError("the file has no more chunks")
        last = index == self.chunks - 1
        want = self.size - index * CHUNK_SIZE if last else CHUNK_SIZE
        if len(plaintext) != want:
            raise UsageError("the file changed while it was being sent")
        if len(out) != HEADER_SIZE + want + TAG_SIZE:
            raise UsageError("a sealed chunk needs its exact length")
        self._next += 1
        self._hash.update(plaintext)
        header = _header(index, last)
        nonce = index.to_bytes(12, "big")
        out[:HEADER_SIZE] = header
        self._aead.encrypt_into(nonce, plaintext, _AAD + self._file_id + header,
                                out[HEADER_SIZE:])
        self._tags[index] = bytes(out[-TAG_SIZE:])
        self._tags.pop(index - RESEAL_WINDOW, None)

    @property
    def next_index(self) -> int:
        return self._next

    @property
    def done(self) -> bool:
        return self._next == self.chunks

    def digest(self) -> bytes:
        """SHA-256 of the plaintext, once every chunk is sealed."""
        if not self.done or self._start:
            raise UsageError("the file is not sealed from its start to its end")
        return self._hash.digest()

    def reseal(self, index: int, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Chunk ``index`` again, one of the last sealed (a resumed upload sends it again):
        the same bytes, since the nonce is the index; the hash is not touched. Plaintext
        that is not what was sealed there (the file changed meanwhile) is refused before
        anything of it leaves: the same nonce on other bytes would give away both."""
        if index >= self._next:
            raise UsageError("only a chunk sealed before can be sealed again")
        tag = self._tags.get(index)
        if tag is None:
            raise UsageError("only one of the last chunks sealed can be sealed again")
        last = index == self.chunks - 1
        header = _header(index, last)
        sealed = header + self._aead.encrypt(
            index.to_bytes(12, "big"), plaintext, _AAD + self._file_id + header
        )
        if not hmac.compare_digest(sealed[-TAG_SIZE:], tag):
            raise UsageError("the file changed while it was being sent")
        return sealed


class ChunkOpener:
    """Opens the chunks of one file, in order, and checks the whole at the end."""

    __slots__ = ("_aead", "_done", "_file_id", "_hash", "_next", "_seen", "chunks", "sha256",
                 "size")

    def __init__(self, key: Secret, file_id: bytes, size: int, sha256: bytes) -> None:
        self._aead = _aead(key, file_id)
        self._file_id = file_id
        self.size = size
        self.sha256 = sha256
        self.chunks = chunk_count(size)
        self._next = 0
        self._seen = 0
        self._done = False
        self._hash = hashlib.sha256()

    @property
    def next_index(self) -> int:
        return self._next

    def accept_verified(self, plaintext: bytes) -> None:
        """The next chunk's plaintext, opened and checked before (a resumed download keeps
        what it verified): counted and hashed, not opened again."""
        if self._done:
            raise FileExtended("data follows the file's final chunk")
        if len(plaintext) > CHUNK_SIZE:
            raise UsageError("a chunk holds at most CHUNK_SIZE bytes")
        self._next += 1
        self._seen += len(plaintext)
        self._hash.update(plaintext)
        self._done = self._next == self.chunks

    def open(self, sealed: bytes | memoryview) -> bytes:
        """The plaintext of the next chunk, or a :class:`FileIntegrityError`."""
        if self._done:
            raise FileExtended("data follows the file's final chunk")
        if len(sealed) < CHUNK_OVERHEAD or len(sealed) > SEALED_CHUNK_SIZE:
            raise ChunkTampered(f"chunk {self._next} has an impossible length")
        header = bytes(sealed[:HEADER_SIZE])
        index = int.from_bytes(header[:4], "big")
        if index != self._next or header[4] > 1:
            raise ChunkOutOfOrder(f"chunk {self._next} names position {index}")
        nonce = index.to_bytes(12, "big")
        try:
            plaintext = self._aead.decrypt(
                nonce, memoryview(sealed)[HEADER_SIZE:], _AAD + self._file_id + header
            )
        except InvalidTag:
            raise ChunkTampered(f"chunk {index} does not open under the file's key") from None
        last = header[4] == 1
        if last != (index == self.chunks - 1):
            # Sealed by the key holder with another layout than the message says.
            raise FileMismatch("the file's chunks do not match its size")
        self._next += 1
        self._seen += len(plaintext)
        self._hash.update(plaintext)
        self._done = last
        return plaintext

    def finish(self) -> None:
        """Every chunk was read: the final one was seen and the whole is the file sent."""
        if not self._done:
            raise FileTruncated(f"the file ends after {self._next} of {self.chunks} chunks")
        if self._seen != self.size:
            raise FileMismatch("the file is not the size that was sent")
        if not hmac.compare_digest(self._hash.digest(), self.sha256):
            raise FileMismatch("the file's SHA-256 is not the one that was sent")
