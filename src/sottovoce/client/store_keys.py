"""The local store's data key, wrapped by the passphrase: change a passphrase in O(1).

    passphrase ──Argon2id(salt, params: meta "kdf")──► wrapping key (never stored)
    wrapping key ──seal_record("data-key")──► meta "wrapped_key"
    data key (32 random bytes) ──► every sealed record of the store (store.py)

Changing the passphrase re-wraps the one data key under a key derived from the
new passphrase with a fresh salt: nothing else is re-encrypted. The new ``kdf``
and ``wrapped_key`` rows are written in one SQLite transaction, so a crash
leaves either the old pair (old passphrase opens) or the new pair (new
passphrase opens), never a mix.

Stores made before the data key existed have no ``wrapped_key`` row: their
data key *is* the key derived from the passphrase. The first open with the
right passphrase writes that key wrapped under itself (one transaction), so
nothing is re-encrypted; from then on the passphrase can change like any other.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from argon2.exceptions import HashingError
from argon2.low_level import Type, hash_secret_raw

from sottovoce.client.errors import StoreError, WrongPassphrase
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sealed import open_record, seal_record
from sottovoce.errors import DecryptionError
from sottovoce.secret import Secret

DATA_KEY_BYTES = 32
#: Argon2 version 1.3 (0x13), the one RFC 9106 specifies; recorded in the ``kdf`` row.
ARGON2_VERSION = 19
#: meta rows: the Argon2id salt and parameters, and the data key sealed under their output.
KDF_ROW = "kdf"
WRAPPED_ROW = "wrapped_key"
_WRAP_KIND = b"data-key"
_WRAP_ID = b"store"


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id parameters, recorded beside the salt so a store always reopens.

    The default is RFC 9106 §4's second recommended option (64 MiB, t=3, p=4).

    The derivation is libargon2's (argon2-cffi), which fills each lane in a thread of
    its own, so two free cores work on it at once; `cryptography`'s OpenSSL Argon2id
    fills the lanes one after another (its thread count cannot be set from Python).
    The output is the same (tests/unit/test_store_keys.py), and libargon2 needs 0.72x
    the instructions (BENCHMARKS.md).
    """

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    def derive(self, passphrase: bytes, salt: bytes) -> Secret:
        try:
            key = hash_secret_raw(passphrase, salt, time_cost=self.iterations,
                                  memory_cost=self.memory_kib, parallelism=self.lanes,
                                  hash_len=32, type=Type.ID, version=ARGON2_VERSION)
        except (HashingError, OverflowError):  # parameters Argon2 refuses (a damaged record)
            raise StoreError("the local store's key parameters are damaged") from None
        return Secret(key)


#: Cheap parameters for unit tests only (the store records them; never use for real data).
TEST_KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)


def passphrase_bytes(passphrase: str | bytes) -> bytes:
    raw = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    if not raw:
        raise StoreError("the passphrase must not be empty")
    return raw


def kdf_record(params: KdfParams, salt: bytes) -> bytes:
    return json.dumps({
        "alg": "argon2id",
        "version": ARGON2_VERSION,
        "salt": salt.hex(),
        "memory_kib": params.memory_kib,
        "iterations": params.iterations,
        "lanes": params.lanes,
    }).encode()  # fmt: skip


def read_kdf_record(value: bytes | None) -> tuple[KdfParams, bytes]:
    try:
        if value is None:
            raise KeyError(KDF_ROW)
        record = json.loads(value)
        params = KdfParams(
            memory_kib=int(record["memory_kib"]),
            iterations=int(record["iterations"]),
            lanes=int(record["lanes"]),
        )
        return params, bytes.fromhex(record["salt"])
    except (KeyError, ValueError, TypeError):
        raise StoreError("the local store's key parameters are damaged") from None


def wrap(wrapping_key: Secret, data_key: Secret, rng: Random) -> bytes:
    return seal_record(wrapping_key, _WRAP_KIND, _WRAP_ID, data_key.expose(), rng)


def unwrap(wrapping_key: Secret, wrapped: bytes) -> Secret:
    """The data key; a wrong passphrase (wrong wrapping key) raises ``WrongPassphrase``."""
    try:
        data_key = open_record(wrapping_key, _WRAP_KIND, _WRAP_ID, wrapped)
    except DecryptionError:
        raise WrongPassphrase("wrong passphrase for this account") from None
    if len(data_key) != DATA_KEY_BYTES:
        raise StoreError("the local store's wrapped key is damaged")
    return Secret(data_key)


def key_rows(
    passphrase: bytes, data_key: Secret, params: KdfParams, rng: Random
) -> list[tuple[str, bytes]]:
    """The two meta rows that let ``passphrase`` (and only it) open ``data_key``."""
    salt = rng(16)
    return [(KDF_ROW, kdf_record(params, salt)),
            (WRAPPED_ROW, wrap(params.derive(passphrase, salt), data_key, rng))]  # fmt: skip


def data_key(meta: dict[str, bytes], passphrase: bytes) -> tuple[Secret, bool]:
    """The data key from the ``meta`` rows, and whether it still has to be wrapped
    (a store made before wrapping: its derived key is its data key)."""
    params, salt = read_kdf_record(meta.get(KDF_ROW))
    derived = params.derive(passphrase, salt)
    wrapped = meta.get(WRAPPED_ROW)
    if wrapped is None:
        return derived, True
    return unwrap(derived, bytes(wrapped)), False


def write_rows(db: sqlite3.Connection, rows: list[tuple[str, bytes]]) -> None:
    db.executemany(
        "INSERT INTO meta(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        rows,
    )


#: Called between the two row writes of a change, inside its transaction (tests make a
#: crash there to prove the transaction leaves one passphrase working).
between_rows: Callable[[], None] = lambda: None  # noqa: E731


def opens(db: sqlite3.Connection, current: Secret, passphrase: bytes) -> bool:
    """Whether ``passphrase`` opens the data key ``current`` (one Argon2id: slow)."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    try:
        return data_key(meta, passphrase)[0] == current
    except WrongPassphrase:
        return False


def rewrap(
    db: sqlite3.Connection,
    current: Secret,
    old: bytes,
    new: bytes,
    params: KdfParams,
    rng: Random,
) -> None:
    """Check ``old`` opens ``current`` (the open store's data key), then make ``new`` the
    only passphrase that opens it, in one transaction. Call outside any transaction."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    key, _ = data_key(meta, old)
    if key != current:
        raise WrongPassphrase("wrong passphrase for this account")
    (kdf_row, wrapped_row) = key_rows(new, current, params, rng)  # the slow part, outside
    db.execute("BEGIN IMMEDIATE")
    try:
        write_rows(db, [kdf_row])
        between_rows()
        write_rows(db, [wrapped_row])
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
