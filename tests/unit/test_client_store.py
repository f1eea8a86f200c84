"""The client's local store (docs/protocol.md §Local store: sealed at rest).

Rules checked: a wrong passphrase is a clear error and changes nothing; what is
sensitive never sits in the files in clear; messages are deduplicated by
messageId; lastGlobalInboxSeq commits with the messages it covers; the outbox
(unacked sends and their idempotency keys) survives a restart; one process
per account.
"""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from sottovoce.client import DeliveryStatus, StoreError, WrongPassphrase
from sottovoce.client.store import STORE_FILE, TEST_KDF, Store

PASS = "correct horse battery staple"


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.iterdir()) if p.is_file())


def _add(store: Store, message_id: str, text: str, **kw: object) -> int | None:
    return store.add_message(
        message_id=message_id,
        peer="bob",
        sender="bob",
        sender_device="dev1",
        outgoing=False,
        status=DeliveryStatus.SENT,
        text=text,
        **kw,  # type: ignore[arg-type]
    )


def test_wrong_passphrase_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    store = Store.create(tmp_path, PASS, kdf=TEST_KDF)
    _add(store, "m1", "hello")
    store.close()
    before = (tmp_path / STORE_FILE).read_bytes()
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        Store.open(tmp_path, "not the passphrase")
    assert (tmp_path / STORE_FILE).read_bytes() == before
    store = Store.open(tmp_path, PASS)  # the right one still opens it
    assert [m.text for m in store.history("bob")] == ["hello"]
    store.close()


def test_missing_store_and_empty_passphrase_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no account"):
        Store.open(tmp_path / "nowhere", PASS)
    with pytest.raises(StoreError, match="empty"):
        Store.create(tmp_path, "", kdf=TEST_KDF)
    Store.create(tmp_path, PASS, kdf=TEST_KDF).close()
    with pytest.raises(StoreError, match="already exists"):
        Store.create(tmp_path, PASS, kdf=TEST_KDF)


def test_sealed_at_rest_canary_absent_from_the_files(tmp_path: Path) -> None:
    canary = "CANARY-7f3a-the-eagle-lands-at-dawn"
    peer = "canarypeer"
    store = Store.create(tmp_path, PASS, kdf=TEST_KDF)
    store.add_message(
        message_id="m-canary",
        peer=peer,
        sender=peer,
        sender_device="dev1",
        outgoing=False,
        status=DeliveryStatus.SENT,
        text=canary,
    )
    store.put_secret("identity", canary.encode())
    store.add_outbox("m-out", "idem-1", f'{{"text": "{canary}"}}')
    # Read everything while the WAL still holds it, then again after a checkpoint.
    for _ in range(2):
        raw = _all_bytes(tmp_path)
        for needle in (
            canary.encode(),
            canary.encode().hex().encode(),
            base64.b64encode(canary.encode()),
            peer.encode(),
        ):
            assert needle not in raw
        store.close()
        store = Store.open(tmp_path, PASS)
    assert store.history(peer)[0].text == canary
    store.close()


def test_dedupe_by_message_id(tmp_path: Path) -> None:
    store = Store.create(tmp_path, PASS, kdf=TEST_KDF)
    first = _add(store, "m1", "once")
    assert first is not None
    assert _add(store, "m1", "twice") is None
    assert store.has_message("m1")
    assert [m.text for m in store.history("bob")] == ["once"]
    store.close()


def test_last_inbox_seq_commits_with_its_messages(tmp_path: Path) -> None:
    store = Store.create(tmp_path, PASS, kdf=TEST_KDF)
    with store.transaction():
        _add(store, "m1", "one", inbox_seq=1)
        store.set_last_inbox_seq(1)
    with pytest.raises(RuntimeError), store.transaction():
        _add(store, "m2", "two", inbox_seq=2)
        store.set_last_inbox_seq(2)
        raise RuntimeError("crash before commit")
    assert store.last_inbox_seq == 1
    assert not store.has_message("m2")
    store.set_last_inbox_seq(0)  # never moves backwards
    store.close()
    store = Store.open(tmp_path, PASS)
    assert store.last_inbox_seq == 1
    store.close()


def test_outbox_survives_reopen_with_its_idempotency_keys(tmp_path: Path) -> None:
    store = Store.create(tmp_path, PASS, kdf=TEST_KDF)
    with store.transaction():
        for i in range(3):
            store.add_message(
                message_id=f"m{i}",
                peer="bob",
                sender="alice",
                sender_device="d",
                outgoing=True,
                status=DeliveryStatus.SENDING,
                text=f"text {i}",
                idempotency_key=f"idem{i}",
            )
            store.add_outbox(f"m{i}", f"idem{i}", f'{{"frame": {i}}}')
    store.mark_sent("m1", 7)
    store.remove_outbox("m1")
    store.close()
    store = Store.open(tmp_path, PASS)
    items = store.outbox()
    assert [(i.message_id, i.idempotency_key, i.frame) for i in items] == [
        ("m0", "idem0", '{"frame": 0}'),
        ("m2", "idem2", '{"frame": 2}'),
    ]
    statuses = {m.message_id: (m.status, m.server_seq) for m in store.history("bob")}
    assert statuses == {
        "m0": (DeliveryStatus.SENDING, None),
        "m1": (DeliveryStatus.SENT, 7),
        "m2": (DeliveryStatus.SENDING, None),
    }
    assert not store.mark_sent("m1", 7)  # an ack seen twice changes nothing
    store.close()


def test_history_pages_backwards(tmp_path: Path) -> None:
    store = Store.create(tmp_path, PASS, kdf=TEST_KDF)
    with store.transaction():
        for i in range(10):
            _add(store, f"m{i}", f"t{i}")
    page = store.history("bob", limit=4)
    assert [m.text for m in page] == ["t6", "t7", "t8", "t9"]
    older = store.history("bob", limit=4, before=page[0].local_id)
    assert [m.text for m in older] == ["t2", "t3", "t4", "t5"]
    assert store.history("carol") == []
    store.close()


def test_one_process_per_account(tmp_path: Path) -> None:
    store = Store.create(tmp_path, PASS, kdf=TEST_KDF)
    with pytest.raises(StoreError, match="another sottovoce process"):
        Store.open(tmp_path, PASS)
    store.close()
    Store.open(tmp_path, PASS).close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_directory_is_0700_and_its_files_0600(tmp_path: Path, open_umask: None) -> None:
    root = tmp_path / "new" / "alice"
    store = Store.create(root, PASS, kdf=TEST_KDF)
    try:
        store.set_flag("touched")  # a write: the WAL and shared-memory files exist
        files = sorted(p for p in root.iterdir() if p.is_file())
        assert {p.name for p in files} >= {STORE_FILE, f"{STORE_FILE}-wal", f"{STORE_FILE}-shm"}
        assert _mode(root) == 0o700
        assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        store.close()


def test_opening_a_store_readable_by_others_warns_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "alice"
    Store.create(root, PASS, kdf=TEST_KDF).close()
    assert "warning" not in capsys.readouterr().err
    root.chmod(0o755)
    (root / STORE_FILE).chmod(0o644)
    Store.open(root, PASS).close()
    err = capsys.readouterr().err
    assert f"{root} has mode 0755" in err and f"{root / STORE_FILE} has mode 0644" in err
    assert _mode(root) == 0o755, "reported, not changed behind the user's back"
