"""One list of per-message tables (client/purge.py): a message that expires or whose
conversation is forgotten leaves no row in any of them, control tables included, and
forgetting a 1:1 chat removes the control markers kept beside it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sottovoce.client.control import control_peer
from sottovoce.client.conversations import Conversations
from sottovoce.client.purge import PER_MESSAGE_TABLES
from sottovoce.client.store import TEST_KDF, DeliveryStatus, Store
from sottovoce.client.store_control import ControlStore, MessageState
from sottovoce.client.store_files import FileTable
from sottovoce.client.store_timers import TimerStore
from sottovoce.secret import Secret


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.create(tmp_path, "purge tests", kdf=TEST_KDF)
    yield s
    s.close()


def _message_with_everything(store: Store, message_id: str, peer: str) -> None:
    control, files, timers = ControlStore(store), FileTable(store), TimerStore(store)
    record = files.new(message_id, Secret(os.urandom(32)), os.urandom(16))
    files.dir.mkdir(exist_ok=True)
    files.path(record).write_bytes(b"sealed copy")
    (store.data_dir / "view" / message_id).mkdir(parents=True)
    (store.data_dir / "view" / message_id / "plain.txt").write_bytes(b"plain")
    with store.transaction():
        store.add_message(message_id=message_id, peer=peer, sender=peer, sender_device="d",
                          outgoing=False, status=DeliveryStatus.SENT, text="hello",
                          server_received_ms=1000)
        timers.set_expiry(message_id, 5000)
        control.put_state(message_id, MessageState(edited=True, edits=[(2000, "edited")]))
        control.add_edit_id("E" + message_id, message_id)
        control.set_reactions(message_id, "carol", {"👍"})
        control.add_receipt(message_id, "carol", 1)
        control.mark_read_sent([message_id])


def _tables_with_message_ids(store: Store) -> list[str]:
    """Every table of the store with a ``message_id`` column, whoever made it."""
    db = store.connection
    names = [str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return [n for n in names
            if any(c[1] == "message_id" for c in db.execute(f"PRAGMA table_info({n})"))]


def _rows(store: Store, message_id: str) -> dict[str, int]:
    db = store.connection
    tables = _tables_with_message_ids(store)
    assert set(tables) <= set(PER_MESSAGE_TABLES), "a per-message table purge.py misses"
    return {t: int(db.execute(f"SELECT count(*) FROM {t} WHERE message_id = ?",
                              (message_id,)).fetchone()[0]) for t in tables}


def _on_disk(store: Store) -> list[Path]:
    return sorted(p for d in ("files", "view") for p in (store.data_dir / d).rglob("*")
                  if p.is_file())


def test_the_expiry_sweep_leaves_nothing_of_a_message(store: Store) -> None:
    _message_with_everything(store, "M1", "bob")
    rows = _rows(store, "M1")
    assert all(rows[t] == 1 for t in rows if t not in ("outbox", "unsent")), rows
    assert len(_on_disk(store)) == 2
    assert TimerStore(store).delete_expired(4999) == []
    assert TimerStore(store).delete_expired(5000) == ["M1"]
    assert set(_rows(store, "M1").values()) == {0} and _on_disk(store) == []


def test_forget_leaves_nothing_of_the_conversation(store: Store) -> None:
    _message_with_everything(store, "M1", "bob")
    _message_with_everything(store, "M2", "carol")
    with store.transaction():  # a reaction marker, kept beside the chat (client/control.py)
        store.add_message(message_id="R1", peer=control_peer("bob"), sender="bob",
                          sender_device="d", outgoing=False, status=DeliveryStatus.SENT,
                          text='{"v":1,"to":"M1","emoji":"x","on":true}',
                          content_type="reaction")
    assert Conversations(store, "me").forget("bob") == 1
    assert set(_rows(store, "M1").values()) == {0} and store.get_message("R1") is None
    assert _rows(store, "M2")["ctl_reactions"] == 1 and len(_on_disk(store)) == 2
