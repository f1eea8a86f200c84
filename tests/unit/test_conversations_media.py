"""Conversations with files and timer notices (client/conversations.py): search finds
a file by its name, export lists a file's name, size and type but never its key, and
the list does not count timer notices as unread."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sottovoce.client.conversations import Conversations
from sottovoce.client.expiry import TIMER_CONTENT_TYPE, timer_body
from sottovoce.client.file_body import FILE_CONTENT_TYPE, FileInfo
from sottovoce.client.store import TEST_KDF, DeliveryStatus, Store
from sottovoce.secret import Secret

KEY = bytes(range(32))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.create(tmp_path, "conversation media tests", kdf=TEST_KDF)
    yield s
    s.close()


def _file_body(name: str) -> str:
    return FileInfo(
        blob_id="ab" * 16, key=Secret(KEY), sha256=b"\x01" * 32, size=4096, name=name,
        media_type="application/pdf", kind="file", thumbnail=None, duration_ms=None,
        expires_at_ms=0,
    ).encode()


def _add(store: Store, n: int, text: str, content_type: str = "text") -> None:
    with store.transaction():
        store.add_message(
            message_id=f"bob-{n}", peer="bob", sender="bob", sender_device="d",
            outgoing=False, status=DeliveryStatus.SENT, text=text,
            content_type=content_type, server_received_ms=1000 + n,
        )


def test_search_finds_a_file_by_its_name(store: Store) -> None:
    _add(store, 1, "the report is attached")
    _add(store, 2, _file_body("Quarterly-Report.pdf"), FILE_CONTENT_TYPE)
    _add(store, 3, _file_body("holiday.jpg"), FILE_CONTENT_TYPE)
    convs = Conversations(store, "me")
    assert [h.message.message_id for h in convs.search(["report"])] == ["bob-2", "bob-1"]
    assert [h.message.message_id for h in convs.search(["quarterly"])] == ["bob-2"]
    assert convs.search(["blob"]) == [] and convs.search(["pdf", "application"]) == []


def test_export_lists_a_file_without_its_key(store: Store) -> None:
    _add(store, 1, _file_body("contract.pdf"), FILE_CONTENT_TYPE)
    _add(store, 2, "plain")
    out = Conversations(store, "me").export("bob")
    first, second = out["messages"]
    assert first["file"] == {"name": "contract.pdf", "size": 4096,
                             "type": "application/pdf", "kind": "file"}
    assert first["text"] == "" and "file" not in second and second["text"] == "plain"
    dumped = json.dumps(out)
    assert base64.b64encode(KEY).decode() not in dumped and "ab" * 16 not in dumped


def test_timer_notices_show_but_are_not_unread(store: Store) -> None:
    _add(store, 1, timer_body(60), TIMER_CONTENT_TYPE)
    _add(store, 2, "hello")
    _add(store, 3, _file_body("a.pdf"), FILE_CONTENT_TYPE)
    convs = Conversations(store, "me")
    (listed,) = convs.all()
    assert (listed.unread, listed.messages) == (2, 3)
    assert convs.unread("bob") == 2
    convs.mark_read("bob", 2)
    assert convs.unread("bob") == 1 and convs.all()[0].unread == 1
