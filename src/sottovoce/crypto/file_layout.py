"""The layout of a file sealed in chunks (crypto/file_chunks.py), without any key or
cipher: sizes a server checks and serves by, and that the sealing code follows.

Every chunk but the last holds ``CHUNK_SIZE`` plaintext bytes and is
``SEALED_CHUNK_SIZE`` bytes sealed; the last holds the rest (an empty file is one
empty chunk); sealing adds ``CHUNK_OVERHEAD`` bytes (a 5-byte header and a 16-byte
tag) to each.
"""

from __future__ import annotations

from sottovoce.errors import UsageError

#: Plaintext bytes per chunk: a sealed chunk, base64-encoded in a frame, stays well under
#: the 256 KiB frame limit (limits.MAX_FRAME_BYTES).
CHUNK_SIZE = 128 * 1024
HEADER_SIZE = 5
TAG_SIZE = 16
#: What sealing adds to each chunk.
CHUNK_OVERHEAD = HEADER_SIZE + TAG_SIZE
#: A full sealed chunk (every chunk but the last is exactly this long).
SEALED_CHUNK_SIZE = CHUNK_SIZE + CHUNK_OVERHEAD
FILE_ID_SIZE = 16
#: A uint32 index: 2^32 chunks of 128 KiB is far beyond any size limit.
MAX_CHUNKS = 1 << 32


def chunk_count(size: int) -> int:
    """How many chunks a file of ``size`` plaintext bytes has (an empty file has one)."""
    if size < 0:
        raise UsageError("a file size is not negative")
    return max(1, -(-size // CHUNK_SIZE))


def sealed_size(size: int) -> int:
    """Bytes of all sealed chunks of a file of ``size`` plaintext bytes."""
    return size + chunk_count(size) * CHUNK_OVERHEAD


def plain_size(sealed: int, chunks: int) -> int:
    """The plaintext size of ``chunks`` sealed chunks of ``sealed`` bytes in all."""
    return sealed - chunks * CHUNK_OVERHEAD


def valid_layout(sealed: int, chunks: int) -> bool:
    """Whether ``sealed`` bytes can be ``chunks`` sealed chunks (all full but the last,
    which holds at least its overhead): what a server checks without any key."""
    if not 1 <= chunks < MAX_CHUNKS:
        return False
    low = (chunks - 1) * SEALED_CHUNK_SIZE + CHUNK_OVERHEAD
    if chunks > 1:
        low += 1  # a last chunk after full ones holds at least one byte
    return low <= sealed <= chunks * SEALED_CHUNK_SIZE


def sealed_chunk_size(index: int, chunks: int, sealed: int) -> int:
    """The length of sealed chunk ``index`` of a file laid out as ``(sealed, chunks)``."""
    if index < chunks - 1:
        return SEALED_CHUNK_SIZE
    return sealed - (chunks - 1) * SEALED_CHUNK_SIZE
