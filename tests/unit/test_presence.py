"""Presence's rules on a real store, with the contact list and the live send faked
(client/presence.py): its body, who may get and show it, the per-device view, the
rate limit, idle → away, the setting, the last seen kept sealed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sottovoce.client.errors import ServerError
from sottovoce.client.events import ClientEvent, PresenceChanged
from sottovoce.client.presence import (
    AWAY,
    OFFLINE,
    ONLINE,
    REFRESH_S,
    STALE_MS,
    UNKNOWN,
    PeerPresence,
    Presence,
    presence_body,
    read_presence,
)
from sottovoce.client.store import TEST_KDF, DeliveryStatus, Store
from sottovoce.errors import DecodeError


class _Contacts:
    def __init__(self, contacts: list[str]) -> None:
        self.list = contacts
        self.watched: Any = None

    def may_signal(self, peer: str) -> bool:
        return peer in self.list

    def contacts(self) -> list[str]:
        return list(self.list)

    def watch_presence(self, presence: Presence) -> None:
        self.watched = presence


class _Direct:
    """Records each live send; ``offline`` peers refuse like the server does."""

    def __init__(self) -> None:
        self.presence: Presence | None = None
        self.sent: list[tuple[str, tuple[str, bool]]] = []
        self.offline: set[str] = set()

    async def send_live(self, username: str, bodies: bytes, content_type: str) -> str:
        assert content_type == "presence"
        if username in self.offline:
            raise ServerError("recipient_offline", "no device of the recipient is online")
        self.sent.append((username, read_presence(bodies)))
        return "id"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def ms(self) -> int:
        return int(self.now * 1000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.create(tmp_path / "me", "passphrase for tests", kdf=TEST_KDF)
    try:
        yield s
    finally:
        s.close()


def _wrote_with(store: Store, *peers: str) -> None:
    """A message with each peer, as after a conversation (the server saw the pair)."""
    with store.transaction():
        for i, peer in enumerate(peers):
            store.add_message(
                message_id=f"message{i:04d}", peer=peer, sender=peer, sender_device="d1",
                outgoing=False, status=DeliveryStatus.SENT, text="hi", content_type="text",
                client_created_ms=1, server_received_ms=1, local_at_ms=1, server_seq=i + 1,
                inbox_seq=i + 1, idempotency_key=None,
            )


def _presence(store: Store, contacts: list[str], clock: _Clock) -> tuple[Presence, _Direct]:
    direct = _Direct()
    spawned: list[Any] = []
    presence = Presence(store, _Contacts(contacts), direct, lambda e: None, spawned.append,
                        clock=clock, clock_ms=clock.ms)
    presence.spawned = spawned  # type: ignore[attr-defined]
    return presence, direct


async def _run_spawned(presence: Presence) -> None:
    spawned: list[Any] = presence.spawned  # type: ignore[attr-defined]
    while spawned:
        await spawned.pop(0)


def test_body_round_trip_and_rejects() -> None:
    assert presence_body(AWAY, ask=False) == b'{"v":1,"state":"away","ask":false}'
    assert read_presence(presence_body(ONLINE, ask=True)) == (ONLINE, True)
    for bad in (
        b'{"v":1,"state":"busy","ask":false}',
        b'{"v":1,"state":"online","ask":"yes"}',
        b'{"v":1,"state":"online"}',
        b'{"v":1,"state":"online","ask":true,"at":5}',
        b'{"v":2,"state":"online","ask":true}',
        b"\xff",
    ):
        with pytest.raises(DecodeError):
            read_presence(bad)
    with pytest.raises(ValueError):
        presence_body(UNKNOWN, ask=False)


async def test_only_contacts_the_server_saw_us_write_with_get_it(store: Store) -> None:
    _wrote_with(store, "bob", "carol")
    # bob: a contact with messages; carol: messages but not a contact (a request);
    # erin: a contact never written with (the server must not learn that pair).
    presence, direct = _presence(store, ["bob", "erin"], _Clock())
    assert presence.eligible("bob")
    assert not presence.eligible("carol") and not presence.eligible("erin")
    presence.connected()
    presence.start()
    await presence.settle(0.1)
    assert direct.sent == [("bob", (ONLINE, True))]
    await presence.close()


async def test_received_notices_are_shown_per_device_and_last_seen_is_kept(
    store: Store, tmp_path: Path
) -> None:
    _wrote_with(store, "bob", "carol")
    presence, direct = _presence(store, ["bob"], _Clock())
    events: list[ClientEvent] = []
    assert presence.of("bob") == PeerPresence(UNKNOWN, None)
    presence.incoming("bob", "phone", presence_body(ONLINE, ask=False), events)
    presence.incoming("bob", "laptop", presence_body(AWAY, ask=False), events)
    assert presence.of("bob").state == ONLINE  # a device online: online
    assert [type(e) for e in events] == [PresenceChanged]
    presence.incoming("bob", "phone", presence_body(OFFLINE, ask=False), events)
    assert presence.of("bob").state == AWAY
    presence.incoming("bob", "laptop", presence_body(OFFLINE, ask=False), events)
    shown = presence.of("bob")
    assert shown.state == OFFLINE and shown.last_seen_ms is not None
    assert [e.state for e in events if isinstance(e, PresenceChanged)] == [
        ONLINE, AWAY, OFFLINE]
    # A request's notice, and a malformed one, change nothing; nothing is answered
    # while this client does not share presence.
    presence.incoming("carol", "d1", presence_body(ONLINE, ask=True), events)
    presence.incoming("bob", "phone", b'{"v":1,"state":"online"}', events)
    assert presence.of("carol") == PeerPresence(UNKNOWN, None)
    assert presence.of("bob").state == OFFLINE
    assert direct.sent == [] and presence.spawned == []  # type: ignore[attr-defined]
    # The last seen is sealed in the store: a new tracker on it reads it back.
    again, _ = _presence(store, ["bob"], _Clock())
    assert again.of("bob") == PeerPresence(OFFLINE, shown.last_seen_ms)


async def test_asks_are_answered_and_notices_are_rate_limited(store: Store) -> None:
    _wrote_with(store, "bob")
    clock = _Clock()
    presence, direct = _presence(store, ["bob"], clock)
    presence.connected()
    presence.start()
    await presence.settle(0.1)
    assert direct.sent == [("bob", (ONLINE, True))]
    events: list[ClientEvent] = []
    # bob comes online and asks: answered at once, although we just sent.
    presence.incoming("bob", "phone", presence_body(ONLINE, ask=True), events)
    await _run_spawned(presence)
    assert direct.sent[-1] == ("bob", (ONLINE, False))
    # Asking again and again within the interval gets no more answers.
    for _ in range(5):
        presence.incoming("bob", "phone", presence_body(ONLINE, ask=True), events)
        await _run_spawned(presence)
    assert len(direct.sent) == 2
    # Idle: away goes to bob, but only after the interval; the latest state wins.
    presence.away_after_s = 60.0
    clock.now += 61
    await presence.tick()
    await _run_spawned(presence)
    assert direct.sent[-1] == ("bob", (AWAY, False)) and presence.state == AWAY
    presence.activity()  # back within the interval: held
    await _run_spawned(presence)
    assert direct.sent[-1] == ("bob", (AWAY, False)) and presence.state == ONLINE
    await presence.tick()
    await _run_spawned(presence)
    assert len(direct.sent) == 3  # still too soon
    clock.now += presence.min_interval_s
    await presence.tick()
    await _run_spawned(presence)
    assert direct.sent[-1] == ("bob", (ONLINE, False)) and len(direct.sent) == 4
    # A clean close: offline to the peers that hear us, not held back by the limit.
    await presence.close()
    assert direct.sent[-1] == ("bob", (OFFLINE, False))


async def test_off_sends_nothing_and_shows_nothing(store: Store) -> None:
    _wrote_with(store, "bob")
    presence, direct = _presence(store, ["bob"], _Clock())
    events: list[ClientEvent] = []
    presence.incoming("bob", "phone", presence_body(ONLINE, ask=False), events)
    assert presence.set_enabled(False) is False
    assert presence.of("bob").state == OFFLINE  # what was heard is dropped; last seen kept
    presence.connected()
    presence.start()
    await presence.settle(0.1)
    presence.incoming("bob", "phone", presence_body(ONLINE, ask=True), events)
    await _run_spawned(presence)
    await presence.tick()
    await presence.close()
    assert direct.sent == []
    assert presence.of("bob").state == OFFLINE
    again, _ = _presence(store, ["bob"], _Clock())
    assert again.enabled is False  # kept in the store


async def test_an_offline_contact_is_not_waited_for(store: Store) -> None:
    _wrote_with(store, "bob")
    presence, direct = _presence(store, ["bob"], _Clock())
    direct.offline.add("bob")
    presence.connected()
    presence.start()
    await presence.settle(5)  # returns at once: nobody took the announcement
    assert direct.sent == [] and presence.of("bob").state == UNKNOWN
    await presence.close()


async def test_refreshes_go_to_peers_heard_and_silence_turns_to_offline(store: Store) -> None:
    _wrote_with(store, "bob", "dave")
    clock = _Clock()
    presence, direct = _presence(store, ["bob", "dave"], clock)
    direct.offline.add("dave")  # dave is not online: never heard, never refreshed
    presence.away_after_s = 10 * REFRESH_S
    presence.connected()
    presence.start()
    await presence.settle(0.1)
    events: list[ClientEvent] = []
    presence.incoming("bob", "phone", presence_body(ONLINE, ask=False), events)
    clock.now += REFRESH_S
    await presence.tick()
    await _run_spawned(presence)
    assert direct.sent == [("bob", (ONLINE, True)), ("bob", (ONLINE, False))]
    assert presence.of("bob").state == ONLINE
    # bob's device vanished without a clean close: after STALE_MS it shows offline.
    clock.now += STALE_MS / 1000
    assert presence.of("bob") == PeerPresence(OFFLINE, int((clock.now - REFRESH_S
                                                              - STALE_MS / 1000) * 1000))
    await presence.close()


async def test_turning_it_off_while_sharing_tells_who_sees_us_once(store: Store) -> None:
    _wrote_with(store, "bob")
    presence, direct = _presence(store, ["bob"], _Clock())
    presence.connected()
    presence.start()
    await presence.settle(0.1)
    events: list[ClientEvent] = []
    presence.incoming("bob", "phone", presence_body(ONLINE, ask=False), events)
    presence.set_enabled(False)
    await _run_spawned(presence)
    assert direct.sent == [("bob", (ONLINE, True)), ("bob", (OFFLINE, False))]
    presence.activity()
    await presence.tick()
    await presence.close()
    assert len(direct.sent) == 2  # and nothing after
