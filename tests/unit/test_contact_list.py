"""The contact list's rules and its sync body (client/contact_list.py), on a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sottovoce.client.contact_list import (
    CONTACTS_CONTENT_TYPE,
    ContactList,
    read_sync_body,
    sync_body,
)
from sottovoce.client.conversations import Conversations
from sottovoce.client.store import TEST_KDF, Store
from sottovoce.errors import DecodeError, UsageError


class _Offline:
    is_up = False

    def send_frame(self, text: str) -> bool:
        return False

    async def request(self, *a: Any, **k: Any) -> Any:
        raise AssertionError("no request offline")

    async def wait_up(self, timeout: float, *, fail_fast: bool = False) -> None:
        raise AssertionError("offline")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.create(tmp_path / "me", "passphrase for tests", kdf=TEST_KDF)
    try:
        yield s
    finally:
        s.close()


def test_sync_body_round_trip_and_rejects() -> None:
    body = sync_body("bob", "contact")
    assert body == b'{"v":1,"user":"bob","state":"contact"}'
    assert read_sync_body(body) == ("bob", "contact")
    for bad in (
        b'{"v":1,"user":"bob","state":"request"}',  # requests are never synced
        b'{"v":1,"user":"Bob Smith","state":"contact"}',
        b'{"v":1,"user":"bob"}',
        b'{"v":2,"user":"bob","state":"contact"}',
        b'{"v":1,"user":7,"state":"contact"}',
        b"\xff",
    ):
        with pytest.raises(DecodeError):
            read_sync_body(bad)


async def test_rules_requests_contacts_and_blocks(store: Store) -> None:
    contacts = ContactList(store, _Offline(), "myself")  # type: ignore[arg-type]
    sent: list[tuple[str, bytes]] = []

    async def send_own(content_type: str, body: bytes) -> str:
        sent.append((content_type, body))
        return "m"

    convs = Conversations(store, "myself", contacts.hidden)
    contacts.attach(send_own, convs)
    # Someone this device wrote to before there was a contact list is a contact.
    store.add_outgoing("m0", peer="olga", sender="myself", sender_device="d", text="hi",
                       created_ms=1, idempotency_key="k0", content_type="text")
    contacts.received("olga", False, "text", b"hello back")
    assert contacts.state("olga") == "contact"
    # A stranger's message makes a request; nothing may go back to them.
    contacts.received("bob", False, "text", b"hi")
    assert contacts.requests() == ["bob"] and not contacts.may_signal("bob")
    assert "bob" in contacts.hidden() and "myself" in contacts.hidden()
    contacts.received("bob", False, "text", b"again")  # still one request
    assert contacts.requests() == ["bob"]
    # Accepting: a contact, synced to our other devices.
    await contacts.accept("bob")
    assert contacts.contacts() == ["bob", "olga"] and contacts.may_signal("bob")
    assert sent[-1] == (CONTACTS_CONTENT_TYPE, sync_body("bob", "contact"))
    # Writing to someone (from any of our devices) makes a contact.
    contacts.before_send("carol")
    contacts.received("dave", True, "text", b"from my laptop")
    assert contacts.contacts() == ["bob", "carol", "dave", "olga"]
    # A change from our own device is applied; a blocked account is not admitted.
    contacts.received("myself", True, CONTACTS_CONTENT_TYPE, sync_body("erin", "blocked"))
    assert contacts.blocked() == ["erin"] and not contacts.admit("erin")
    assert contacts.admit("bob") and contacts.admit("myself")
    with pytest.raises(UsageError, match="blocked"):
        contacts.before_send("erin")
    contacts.received("myself", True, CONTACTS_CONTENT_TYPE, sync_body("erin", "none"))
    assert contacts.state("erin") is None
    # A change we cannot read is ignored, not fatal; a peer cannot sync for us.
    contacts.received("myself", True, CONTACTS_CONTENT_TYPE, b"garbage")
    contacts.received("mallory", False, CONTACTS_CONTENT_TYPE, sync_body("bob", "none"))
    assert contacts.state("bob") == "contact" and contacts.state("mallory") == "request"
    # User mistakes are plain errors.
    with pytest.raises(UsageError, match="no message request"):
        await contacts.decline("carol")
    with pytest.raises(UsageError, match="own account"):
        await contacts.add("myself")
    with pytest.raises(UsageError, match="connection"):
        await contacts.block("mallory")  # blocking asks the server
    await contacts.remove("bob")
    assert contacts.state("bob") is None


def test_contact_list_is_sealed_on_disk(store: Store, tmp_path: Path) -> None:
    contacts = ContactList(store, _Offline(), "myself")  # type: ignore[arg-type]
    contacts.received("zanzibar-friend", False, "text", b"")
    raw = b"".join(p.read_bytes() for p in (tmp_path / "me").iterdir() if p.is_file())
    assert b"zanzibar-friend" not in raw
