"""Chunked file encryption: a round trip, and every way a stream can be wrong ends in
its own typed error (crypto/file_chunks.py)."""

from __future__ import annotations

import hashlib
import os
import secrets

import pytest

from sottovoce.crypto.file_chunks import (
    CHUNK_OVERHEAD,
    CHUNK_SIZE,
    RESEAL_WINDOW,
    SEALED_CHUNK_SIZE,
    ChunkOpener,
    ChunkOutOfOrder,
    ChunkSealer,
    ChunkTampered,
    FileExtended,
    FileIntegrityError,
    FileMismatch,
    FileTruncated,
    chunk_count,
    new_file_id,
    new_file_key,
    sealed_chunk_size,
    sealed_size,
    valid_layout,
)
from sottovoce.errors import UsageError
from sottovoce.secret import Secret

DATA = bytes(range(256)) * (CHUNK_SIZE * 3 // 256) + b"tail"


def seal_all(data: bytes, key=None, file_id=None):  # type: ignore[no-untyped-def]
    key = key or new_file_key(secrets.token_bytes)
    file_id = file_id or new_file_id(secrets.token_bytes)
    sealer = ChunkSealer(key, file_id, len(data))
    chunks = [sealer.seal(data[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE])
              for i in range(sealer.chunks)]
    return key, file_id, chunks, sealer.digest()


def open_all(key, file_id, size, digest, chunks):  # type: ignore[no-untyped-def]
    opener = ChunkOpener(key, file_id, size, digest)
    out = b"".join(opener.open(c) for c in chunks)
    opener.finish()
    return out


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, len(DATA)])
def test_round_trip_and_layout(size: int) -> None:
    data = DATA[:size]
    key, file_id, chunks, digest = seal_all(data)
    assert digest == hashlib.sha256(data).digest()
    assert len(chunks) == chunk_count(size)
    assert sum(map(len, chunks)) == sealed_size(size)
    assert valid_layout(sealed_size(size), len(chunks))
    for i, c in enumerate(chunks):
        assert len(c) == sealed_chunk_size(i, len(chunks), sealed_size(size))
    assert open_all(key, file_id, size, digest, chunks) == data


def test_layouts_a_server_refuses() -> None:
    assert not valid_layout(0, 1)
    assert not valid_layout(SEALED_CHUNK_SIZE + 1, 1)
    assert not valid_layout(SEALED_CHUNK_SIZE + CHUNK_OVERHEAD, 2)  # an empty last chunk
    assert valid_layout(SEALED_CHUNK_SIZE + CHUNK_OVERHEAD + 1, 2)
    assert not valid_layout(10, 0)


def test_tampered_chunk() -> None:
    key, file_id, chunks, digest = seal_all(DATA)
    bad = bytearray(chunks[1])
    bad[100] ^= 1
    with pytest.raises(ChunkTampered):
        open_all(key, file_id, len(DATA), digest, [chunks[0], bytes(bad), *chunks[2:]])


def test_header_forged_to_the_right_place_still_fails() -> None:
    key, file_id, chunks, digest = seal_all(DATA)
    moved = chunks[0][:0] + (1).to_bytes(4, "big") + b"\x00" + chunks[2][5:]
    with pytest.raises(ChunkTampered):
        open_all(key, file_id, len(DATA), digest, [chunks[0], moved, *chunks[2:]])


def test_reordered_chunks() -> None:
    key, file_id, chunks, digest = seal_all(DATA)
    with pytest.raises(ChunkOutOfOrder):
        open_all(key, file_id, len(DATA), digest, [chunks[1], chunks[0], *chunks[2:]])


def test_truncated_stream() -> None:
    key, file_id, chunks, digest = seal_all(DATA)
    with pytest.raises(FileTruncated):
        open_all(key, file_id, len(DATA), digest, chunks[:-1])


def test_extended_stream() -> None:
    key, file_id, chunks, digest = seal_all(DATA)
    with pytest.raises(FileExtended):
        open_all(key, file_id, len(DATA), digest, [*chunks, chunks[-1]])


def test_chunk_of_another_file() -> None:
    key, file_id, chunks, digest = seal_all(DATA)
    _, _, other, _ = seal_all(DATA, key=key)  # same key, another file id
    with pytest.raises(ChunkTampered):
        open_all(key, file_id, len(DATA), digest, [other[0], *chunks[1:]])


def test_wrong_hash_or_size() -> None:
    key, file_id, chunks, _ = seal_all(DATA)
    with pytest.raises(FileMismatch):
        open_all(key, file_id, len(DATA), b"\x00" * 32, chunks)
    with pytest.raises(FileIntegrityError):
        open_all(key, file_id, len(DATA) - 1, hashlib.sha256(DATA).digest(), chunks)


def test_sealer_refuses_a_file_that_changed() -> None:
    sealer = ChunkSealer(new_file_key(secrets.token_bytes), new_file_id(secrets.token_bytes), 10)
    with pytest.raises(UsageError):
        sealer.seal(b"short")


def test_resumed_sealing_and_opening_give_the_same_file() -> None:
    key, file_id, chunks, digest = seal_all(DATA)
    again = ChunkSealer(key, file_id, len(DATA), start=2)
    assert again.seal(DATA[2 * CHUNK_SIZE:3 * CHUNK_SIZE]) == chunks[2]
    assert again.reseal(2, DATA[2 * CHUNK_SIZE:3 * CHUNK_SIZE]) == chunks[2]
    with pytest.raises(UsageError):
        again.digest()
    opener = ChunkOpener(key, file_id, len(DATA), digest)
    opener.accept_verified(DATA[:CHUNK_SIZE])
    opener.accept_verified(DATA[CHUNK_SIZE:2 * CHUNK_SIZE])
    assert opener.next_index == 2
    for c in chunks[2:]:
        opener.open(c)
    opener.finish()


def test_reseal_refuses_other_plaintext_and_chunks_it_no_longer_remembers() -> None:
    key, file_id = Secret(bytes(range(32))), bytes(16)
    size = (RESEAL_WINDOW + 2) * CHUNK_SIZE
    sealer = ChunkSealer(key, file_id, size)
    block = bytes(CHUNK_SIZE)
    first = sealer.seal(block)
    assert sealer.reseal(0, block) == first
    changed = b"\x01" + block[1:]
    with pytest.raises(UsageError, match="changed"):  # same nonce, other bytes: never
        sealer.reseal(0, changed)
    for _ in range(RESEAL_WINDOW):
        sealer.seal(block)
    with pytest.raises(UsageError, match="last chunks"):
        sealer.reseal(0, block)
    assert sealer.reseal(1, block)[:4] == (1).to_bytes(4, "big")


def test_binary_chunk_messages_round_trip_and_refuse_malformed_ones() -> None:
    from sottovoce.protocol import blobs as pb
    from sottovoce.protocol.fields import ProtocolError

    msg = pb.pack_chunk(pb.OP_PUT, "ab" * 16, 7, "r12", b"sealed")
    assert pb.is_binary_chunk(msg)
    got = pb.unpack_chunk(msg)
    assert (got.op, got.blob_id, got.index, got.request_id, got.data) == (
        pb.OP_PUT, "ab" * 16, 7, "r12", b"sealed")
    for bad in (
        msg[:10],  # cut in the header
        b"\x03" + msg[1:],  # unknown op
        msg[:21] + b"\x00" + msg[22:],  # no requestId
        msg[:21] + b"\x03r\x01!" + b"data",  # requestId outside the id alphabet
        pb.pack_chunk(pb.OP_PUT, "ab" * 16, 0, "r1", b""),  # no chunk
        pb.pack_chunk(pb.OP_PUT, "ab" * 16, 0, "r1", b"x" * (SEALED_CHUNK_SIZE + 1)),
    ):
        with pytest.raises(ProtocolError):
            pb.unpack_chunk(bad)
    assert not pb.is_binary_chunk(b'{"event":"x"}')


def test_sealing_in_place_gives_the_same_chunk_and_needs_its_exact_length() -> None:
    key, file_id = Secret(os.urandom(32)), os.urandom(16)
    size = CHUNK_SIZE + 10
    a, b = ChunkSealer(key, file_id, size), ChunkSealer(key, file_id, size)
    data = os.urandom(size)
    buf = bytearray(7 + SEALED_CHUNK_SIZE)
    b.seal_into(memoryview(data)[:CHUNK_SIZE], memoryview(buf)[7:])
    assert bytes(buf[7:]) == a.seal(data[:CHUNK_SIZE])
    with pytest.raises(UsageError):  # one byte short: nothing sealed, nothing counted
        b.seal_into(data[CHUNK_SIZE:], memoryview(bytearray(CHUNK_OVERHEAD + 9)))
    assert b.next_index == 1
    last = bytearray(CHUNK_OVERHEAD + 10)
    b.seal_into(data[CHUNK_SIZE:], memoryview(last))
    assert bytes(last) == a.seal(data[CHUNK_SIZE:]) and a.digest() == b.digest()
    opener = ChunkOpener(key, file_id, size, hashlib.sha256(data).digest())
    assert opener.open(memoryview(buf)[7:]) + opener.open(memoryview(last)) == data
    opener.finish()
