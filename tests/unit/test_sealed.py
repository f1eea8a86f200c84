"""Records sealed at rest (`sottovoce.crypto.sealed`, docs/protocol.md §Local store).

sealed = version(1) ‖ salt(32) ‖ nonce(12) ‖ AES-256-GCM(...), with kind and
record id bound as AAD. Every mismatch is one opaque DecryptionError.
"""

from __future__ import annotations

import pytest

from sottovoce.crypto.rng import Random
from sottovoce.crypto.sealed import STORAGE_KEY_BYTES, open_record, seal_record
from sottovoce.errors import DecryptionError, UsageError
from sottovoce.secret import Secret

KIND = b"olm-session"
RECORD_ID = b"bob/laptop"
PLAINTEXT = b"pickled ratchet state \x00\x01\x02"
HEADER = 1 + 32 + 12  # version, salt, nonce
TAG = 16


@pytest.fixture
def key(rng: Random) -> Secret:
    return Secret(rng(STORAGE_KEY_BYTES))


@pytest.fixture
def sealed(key: Secret, rng: Random) -> bytes:
    return seal_record(key, KIND, RECORD_ID, PLAINTEXT, rng)


def test_round_trip_returns_the_plaintext(key: Secret, sealed: bytes) -> None:
    assert open_record(key, KIND, RECORD_ID, sealed) == PLAINTEXT
    assert len(sealed) == HEADER + len(PLAINTEXT) + TAG
    assert sealed[0] == 1


def test_round_trip_of_an_empty_record(key: Secret, rng: Random) -> None:
    blob = seal_record(key, KIND, RECORD_ID, b"", rng)
    assert open_record(key, KIND, RECORD_ID, blob) == b""


def test_wrong_storage_key_is_a_decryption_error(sealed: bytes, rng: Random) -> None:
    with pytest.raises(DecryptionError):
        open_record(Secret(rng(STORAGE_KEY_BYTES)), KIND, RECORD_ID, sealed)


def test_wrong_kind_is_a_decryption_error(key: Secret, sealed: bytes) -> None:
    with pytest.raises(DecryptionError):
        open_record(key, b"olm-account", RECORD_ID, sealed)


@pytest.mark.parametrize("other_id", [b"bob/phone", b"bob/laptop2", b"", b"Bob/laptop"])
def test_wrong_record_id_is_a_decryption_error(key: Secret, sealed: bytes, other_id: bytes) -> None:
    with pytest.raises(DecryptionError):
        open_record(key, KIND, other_id, sealed)


def test_kind_and_id_are_bound_unambiguously(key: Secret, rng: Random) -> None:
    # Moving bytes between kind and id must not yield the same AAD.
    blob = seal_record(key, b"ab", b"c", PLAINTEXT, rng)
    with pytest.raises(DecryptionError):
        open_record(key, b"a", b"bc", blob)


def test_every_truncation_is_a_decryption_error(key: Secret, sealed: bytes) -> None:
    for n in range(len(sealed)):
        with pytest.raises(DecryptionError):
            open_record(key, KIND, RECORD_ID, sealed[:n])


def test_trailing_bytes_are_a_decryption_error(key: Secret, sealed: bytes) -> None:
    with pytest.raises(DecryptionError):
        open_record(key, KIND, RECORD_ID, sealed + b"\x00")


def test_every_flipped_byte_is_a_decryption_error(key: Secret, sealed: bytes) -> None:
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(DecryptionError):
            open_record(key, KIND, RECORD_ID, bytes(tampered))


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_unknown_version_byte_is_a_decryption_error(
    key: Secret, sealed: bytes, version: int
) -> None:
    with pytest.raises(DecryptionError):
        open_record(key, KIND, RECORD_ID, bytes((version,)) + sealed[1:])


def test_two_seals_of_the_same_plaintext_differ(key: Secret, rng: Random) -> None:
    # A fresh salt and nonce per write: no two versions of a record are related.
    a = seal_record(key, KIND, RECORD_ID, PLAINTEXT, rng)
    b = seal_record(key, KIND, RECORD_ID, PLAINTEXT, rng)
    assert a != b
    assert a[1:33] != b[1:33]  # salt
    assert a[HEADER:] != b[HEADER:]  # body
    assert open_record(key, KIND, RECORD_ID, a) == open_record(key, KIND, RECORD_ID, b)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_storage_key_of_wrong_length_is_a_usage_error(size: int, rng: Random) -> None:
    with pytest.raises(UsageError):
        seal_record(Secret(bytes(size)), KIND, RECORD_ID, PLAINTEXT, rng)


def test_decryption_error_does_not_echo_the_plaintext(key: Secret, rng: Random) -> None:
    blob = seal_record(key, KIND, RECORD_ID, PLAINTEXT, rng)
    with pytest.raises(DecryptionError) as info:
        open_record(key, KIND, b"other", blob)
    assert PLAINTEXT not in str(info.value).encode()
    assert blob.hex() not in str(info.value)
