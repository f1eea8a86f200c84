"""Conversations over the local store (client/conversations.py), without a server.

Rules checked: the list has one entry per person and per room (control rows of a
room are not one), with unread = received after the read mark; marks only move
forward; search matches every word, case-insensitively, in text messages only,
and writes nothing; export holds every message of one conversation; forget
removes one conversation (and its queued sends) and leaves none of its sealed
bytes in the files; searching 10,000 messages by scanning and decrypting takes
well under a second (the figure is printed).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sottovoce.client.conversations import Conversations
from sottovoce.client.store import STORE_FILE, TEST_KDF, DeliveryStatus, Store
from sottovoce.errors import UsageError

ROOM = "r" * 22


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.create(tmp_path, "conversation tests", kdf=TEST_KDF)
    yield s
    s.close()


def _add(store: Store, n: int, peer: str, text: str, *, outgoing: bool = False,
         at: int = 0, content_type: str = "text", sender: str = "") -> None:
    store.add_message(
        message_id=f"{peer}-{n}", peer=peer, sender=sender or ("me" if outgoing else peer),
        sender_device="d", outgoing=outgoing, status=DeliveryStatus.SENT, text=text,
        content_type=content_type, server_received_ms=at or 1000 + n,
    )


def _world(store: Store) -> Conversations:
    store.add_room(ROOM, "team")
    with store.transaction():
        _add(store, 1, "bob", "hello Alice, lunch at noon?")
        _add(store, 2, "bob", "are you there?", at=5000)
        _add(store, 3, "bob", "yes, lunch", outgoing=True, at=6000)
        _add(store, 1, "carol", "Lunch tomorrow", at=2000)
        _add(store, 1, ROOM, "team lunch friday", at=3000, sender="dave")
        _add(store, 2, f"{ROOM}#control", "token shared", content_type="system", at=9000)
        _add(store, 9, "carol", "lunch call", content_type="call", at=2500)
    return Conversations(store, "me")


def test_the_list_counts_unread_until_shown(store: Store) -> None:
    convs = _world(store)
    listed = {c.label: c for c in convs.all()}
    assert set(listed) == {"bob", "carol", "team"}  # the room's control rows are no chat
    assert [c.label for c in convs.all()] == ["bob", "team", "carol"]  # newest first
    assert (listed["bob"].unread, listed["bob"].messages, listed["bob"].last_ms) == (2, 3, 6000)
    assert listed["team"].room and listed["team"].peer == ROOM and listed["team"].unread == 1
    convs.mark_read("bob", store.history("bob", limit=1))  # the newest shown: all read
    assert convs.unread("bob") == 0
    convs.mark_read("bob", 1)  # a mark never moves back
    assert convs.unread("bob") == 0
    with store.transaction():
        _add(store, 4, "bob", "one more", at=7000)
    assert convs.unread("bob") == 1
    store.add_room("s" * 22, "quiet")
    assert convs.all()[-1].label == "quiet" and convs.all()[-1].messages == 0


def test_search_matches_every_word_in_text_messages_only(store: Store, tmp_path: Path) -> None:
    convs = _world(store)
    before = (tmp_path / STORE_FILE).read_bytes() + (tmp_path / f"{STORE_FILE}-wal").read_bytes()
    hits = convs.search(["LUNCH"])
    assert [(h.conversation, h.message.text) for h in hits] == [
        ("bob", "yes, lunch"),
        ("team", "team lunch friday"),
        ("carol", "Lunch tomorrow"),
        ("bob", "hello Alice, lunch at noon?"),
    ]  # newest first; the call record is not text
    assert hits[1].room and not hits[0].room
    assert [h.message.text for h in convs.search(["lunch", "noon"])] == [
        "hello Alice, lunch at noon?"
    ]
    assert convs.search(["nothing-like-this"]) == []
    with pytest.raises(UsageError):
        convs.search(["  "])
    after = (tmp_path / STORE_FILE).read_bytes() + (tmp_path / f"{STORE_FILE}-wal").read_bytes()
    assert hashlib.sha256(after).digest() == hashlib.sha256(before).digest()  # wrote nothing


def test_export_holds_one_conversation(store: Store) -> None:
    convs = _world(store)
    out = convs.export("bob")
    assert out["conversation"] == {"kind": "direct", "name": "bob"}
    assert [m["text"] for m in out["messages"]] == [
        "hello Alice, lunch at noon?", "are you there?", "yes, lunch"
    ]
    assert out["messages"][2]["outgoing"] is True and out["messages"][0]["status"] == "sent"
    room = convs.export("#team")
    assert room["conversation"] == {"kind": "room", "name": "team", "roomId": ROOM}
    assert [m["sender"] for m in room["messages"]] == ["dave"]
    with pytest.raises(UsageError, match="no conversation with zed"):
        convs.export("zed")
    with pytest.raises(UsageError, match="no room named nope"):
        convs.export("#nope")


def test_forget_leaves_none_of_the_conversation_in_the_files(
    store: Store, tmp_path: Path
) -> None:
    convs = _world(store)
    with store.transaction():
        for n in range(5, 40):  # enough rows to fill pages of their own
            _add(store, n, "bob", f"bob canary {n} " + "x" * 200)
        store.add_outbox("bob-39", "idem-39", "a queued frame for bob")
    db = store.connection
    rows = db.execute("SELECT message_id, sealed FROM messages").fetchall()
    bobs = [bytes(s)[-40:] for mid, s in rows if str(mid).startswith("bob-")]
    others = [bytes(s)[-40:] for mid, s in rows if not str(mid).startswith("bob-")]
    assert len(bobs) == 38
    convs.mark_read("bob", 3)
    assert convs.forget("bob") == 38
    raw = b"".join(p.read_bytes() for p in tmp_path.glob(f"{STORE_FILE}*"))
    assert not [b for b in bobs if b in raw]  # no sealed byte of it left
    assert all(b in raw for b in others)  # the others are all there
    assert store.history("bob") == [] and store.outbox_size() == 0
    assert {c.label for c in convs.all()} == {"carol", "team"}
    with pytest.raises(UsageError):
        convs.forget("bob")


def test_searching_ten_thousand_messages_scans_fast_enough(store: Store) -> None:
    with store.transaction():
        for n in range(10_000):
            _add(store, n, f"user{n % 20}", f"message number {n} about topic {n % 97}")
    convs = Conversations(store, "me")
    start = time.perf_counter()
    hits = convs.search(["topic", "42"], limit=10_000)
    took = time.perf_counter() - start
    print(f"search over 10,000 messages: {took:.3f} s, {len(hits)} hits")
    assert len(hits) == len([n for n in range(10_000) if "42" in f"{n} {n % 97}"])
    assert took < 5.0  # ~0.7 s measured on a loaded 2-core machine
