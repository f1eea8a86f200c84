"""The local store's data key, wrapped by the passphrase (client/store_keys.py).

Rules checked: a new store keeps only a wrapped data key; a passphrase change
re-wraps it and re-encrypts no record; afterwards only the new passphrase opens
the store; a wrong old passphrase changes nothing; a crash between the two row
writes of a change (a real process exit inside the transaction) leaves the old
passphrase working; a store made before wrapping existed (a fixture file made by
that code) opens, is wrapped on first open in one transaction, and can then
change its passphrase. The key derivation (libargon2, lanes in threads) gives what
`cryptography`'s OpenSSL Argon2id gives for the same parameters, the default ones
included, so every store made before opens; parameters Argon2 refuses are a damaged
store, not a crash.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from sottovoce.client import DeliveryStatus, WrongPassphrase, store_keys
from sottovoce.client.errors import StoreError
from sottovoce.client.store import STORE_FILE, TEST_KDF, KdfParams, Store

OLD = "the first passphrase"
NEW = "the second passphrase"
FIXTURE = Path(__file__).parent / "fixtures" / "store-before-wrapping.sqlite3"
FIXTURE_PASS = "an old store passphrase"


def _meta(root: Path) -> dict[str, bytes]:
    db = sqlite3.connect(root / STORE_FILE)
    try:
        return {k: bytes(v) for k, v in db.execute("SELECT key, value FROM meta")}
    finally:
        db.close()


def _sealed_rows(root: Path) -> list[bytes]:
    db = sqlite3.connect(root / STORE_FILE)
    try:
        rows = db.execute("SELECT sealed FROM messages UNION ALL SELECT sealed FROM secrets")
        return sorted(bytes(r[0]) for r in rows)
    finally:
        db.close()


def _store_with_a_message(root: Path) -> None:
    store = Store.create(root, OLD, kdf=TEST_KDF)
    with store.transaction():
        store.add_message(message_id="m1", peer="bob", sender="bob", sender_device="d",
                          outgoing=False, status=DeliveryStatus.SENT, text="hello")
        store.put_secret("note", b"a secret")
    store.close()


def test_a_new_store_keeps_a_random_data_key_only_wrapped(tmp_path: Path) -> None:
    store = Store.create(tmp_path, OLD, kdf=TEST_KDF)
    key = store.storage_key
    store.close()
    meta = _meta(tmp_path)
    assert store_keys.WRAPPED_ROW in meta
    params, salt = store_keys.read_kdf_record(meta[store_keys.KDF_ROW])
    derived = params.derive(OLD.encode(), salt)
    assert derived != key  # the data key is not the passphrase's key
    assert store_keys.unwrap(derived, meta[store_keys.WRAPPED_ROW]) == key
    assert key.expose() not in (tmp_path / STORE_FILE).read_bytes()
    reopened = Store.open(tmp_path, OLD)
    assert reopened.storage_key == key
    reopened.close()


def test_changing_the_passphrase_rewraps_and_reencrypts_nothing(tmp_path: Path) -> None:
    _store_with_a_message(tmp_path)
    before = _sealed_rows(tmp_path)
    store = Store.open(tmp_path, OLD)
    key = store.storage_key
    store.change_passphrase(OLD, NEW, kdf=TEST_KDF)
    store.close()
    assert _sealed_rows(tmp_path) == before  # byte for byte: no record rewritten
    with pytest.raises(WrongPassphrase):
        Store.open(tmp_path, OLD)
    store = Store.open(tmp_path, NEW)
    assert store.storage_key == key
    assert store.history("bob")[0].text == "hello"
    assert store.get_secret("note") == b"a secret"
    store.close()


def test_a_wrong_old_passphrase_changes_nothing(tmp_path: Path) -> None:
    _store_with_a_message(tmp_path)
    meta = _meta(tmp_path)
    store = Store.open(tmp_path, OLD)
    with pytest.raises(WrongPassphrase):
        store.change_passphrase("not the passphrase", NEW, kdf=TEST_KDF)
    store.close()
    assert _meta(tmp_path) == meta
    Store.open(tmp_path, OLD).close()


def test_a_failure_between_the_two_writes_leaves_the_old_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store_with_a_message(tmp_path)

    def fail() -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(store_keys, "between_rows", fail)
    store = Store.open(tmp_path, OLD)
    with pytest.raises(RuntimeError, match="power cut"):
        store.change_passphrase(OLD, NEW, kdf=TEST_KDF)
    store.close()
    with pytest.raises(WrongPassphrase):
        Store.open(tmp_path, NEW)
    Store.open(tmp_path, OLD).close()


def test_a_process_killed_mid_change_leaves_the_old_passphrase(tmp_path: Path) -> None:
    """A real crash: the process exits between the kdf row and the wrapped-key row
    (no rollback runs, no close); the next open sees the old pair whole."""
    _store_with_a_message(tmp_path)
    script = textwrap.dedent(f"""
        import os
        from sottovoce.client import store_keys
        from sottovoce.client.store import TEST_KDF, Store
        store_keys.between_rows = lambda: os._exit(9)
        store = Store.open({str(tmp_path)!r}, {OLD!r})
        store.change_passphrase({OLD!r}, {NEW!r}, kdf=TEST_KDF)
    """)
    done = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert done.returncode == 9
    with pytest.raises(WrongPassphrase):
        Store.open(tmp_path, NEW)
    store = Store.open(tmp_path, OLD)
    assert store.history("bob")[0].text == "hello"
    store.change_passphrase(OLD, NEW, kdf=TEST_KDF)  # and the change can be made again
    store.close()
    Store.open(tmp_path, NEW).close()


def test_a_store_made_before_wrapping_opens_and_is_wrapped_once(tmp_path: Path) -> None:
    shutil.copy(FIXTURE, tmp_path / STORE_FILE)
    (tmp_path / STORE_FILE).chmod(0o600)
    tmp_path.chmod(0o700)
    assert store_keys.WRAPPED_ROW not in _meta(tmp_path)
    before = _sealed_rows(tmp_path)
    with pytest.raises(WrongPassphrase):
        Store.open(tmp_path, "not the passphrase")
    assert store_keys.WRAPPED_ROW not in _meta(tmp_path)  # a wrong one writes nothing
    store = Store.open(tmp_path, FIXTURE_PASS)
    key = store.storage_key
    [message] = store.history("bob")
    assert message.text == "canary-old-format-message"
    assert store.get_secret("note") == b"old secret value"
    store.close()
    assert store_keys.WRAPPED_ROW in _meta(tmp_path)
    assert _sealed_rows(tmp_path) == before  # nothing re-encrypted
    store = Store.open(tmp_path, FIXTURE_PASS)
    assert store.storage_key == key
    store.change_passphrase(FIXTURE_PASS, NEW, kdf=TEST_KDF)
    store.close()
    with pytest.raises(WrongPassphrase):
        Store.open(tmp_path, FIXTURE_PASS)
    store = Store.open(tmp_path, NEW)
    assert store.history("bob")[0].text == "canary-old-format-message"
    store.close()


@pytest.mark.parametrize("params", [
    KdfParams(),  # the default every store is made with: 64 MiB, t=3, 4 lanes
    TEST_KDF,
    KdfParams(memory_kib=96, iterations=2, lanes=3),  # lanes that do not divide evenly
], ids=["default", "test", "odd"])
def test_the_derivation_matches_openssl_argon2id(params: KdfParams) -> None:
    salt, passphrase = bytes(range(16)), "pâssphrase ünïcode".encode()
    expected = Argon2id(salt=salt, length=32, iterations=params.iterations,
                        lanes=params.lanes, memory_cost=params.memory_kib).derive(passphrase)
    assert params.derive(passphrase, salt).expose() == expected
    assert params.derive(passphrase + b"!", salt).expose() != expected


@pytest.mark.parametrize("params", [
    KdfParams(memory_kib=8 * 1024, iterations=1, lanes=0),
    KdfParams(memory_kib=8 * 1024, iterations=0, lanes=1),
    KdfParams(memory_kib=7, iterations=1, lanes=1),  # below 8 KiB per lane
    KdfParams(memory_kib=8 * 1024, iterations=1, lanes=-1),
    KdfParams(memory_kib=2**40, iterations=1, lanes=1),
])
def test_parameters_argon2_refuses_are_a_damaged_store(params: KdfParams) -> None:
    with pytest.raises(StoreError, match="key parameters are damaged"):
        params.derive(b"a passphrase", bytes(16))
