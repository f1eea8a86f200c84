"""Presence between contacts: online, away, offline and last seen (``client.presence``;
``client.contacts.presence(name)`` reads it).

A presence notice is an ordinary live 1:1 send (client/direct.py ``send_live``): end to
end encrypted for each device of the peer, inner content type ``"presence"``, body
``{"v":1,"state":"online"|"away"|"offline","ask":B}``. The envelope says ``"text"``
as for any message and the server relays it to the devices connected now, storing
nothing (docs/threat-model.md §Presence).

Who gets one (:meth:`Presence.eligible`): a *contact* (contact_list.py ``may_signal``:
never a stranger, a pending request or a blocked account) with whom this device has
exchanged a message, so the server learns no pair of accounts it did not already see
in the envelopes of their messages; and only while the setting is on. Both must allow
it: with the setting off a device sends none and drops every notice it receives
unread, so neither side sees the other.

    start() (the chat screen, `contacts`, an app) ──► while connected:
    "online" + ask ──► each eligible contact (a device online answers)
    receive ──► per device (state, when) ──► shown: online if a device is, else away,
                else offline; last seen kept sealed on this device
    no input for ``away_after_s`` ──► "away" ──► the contacts we heard from
    input (``activity``) ──► "online";  clean close ──► "offline"

A client that was not started (a one-shot command) sends nothing and answers nothing:
only a session someone is looking at is "present"; it still keeps the last seen of
the notices that reach it. Outgoing notices are rate limited per peer (at most one
per ``min_interval_s``; a change meanwhile is held and the latest state goes at the
next tick); a device's
"online" not refreshed for :data:`STALE_MS` shows as offline (its device vanished
without a clean close).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sottovoce.client.errors import NotConnected, ServerError
from sottovoce.client.events import ClientEvent, PresenceChanged
from sottovoce.client.ids import now_ms
from sottovoce.client.payload import json_body, read_json_body
from sottovoce.errors import DecodeError, SottovoceError

if TYPE_CHECKING:
    from sottovoce.client.store import Store

log = logging.getLogger(__name__)

PRESENCE_CONTENT_TYPE = "presence"
ONLINE, AWAY, OFFLINE = "online", "away", "offline"
#: What a peer's presence shows before anything was heard from them.
UNKNOWN = "unknown"
_STATES = (ONLINE, AWAY, OFFLINE)
#: Away after this long without input (the chat screen reports input).
AWAY_AFTER_S = 300.0
#: At most one notice to a peer in this many seconds (a change meanwhile waits).
MIN_INTERVAL_S = 10.0
#: The state is sent again this often to the contacts we heard from.
REFRESH_S = 240.0
#: A device's online or away not refreshed for this long shows as offline.
STALE_MS = 600_000
#: How often the idle, held-change and new-contact checks run.
TICK_S = 5.0
#: At most this long is spent on the offline notices of a clean close.
CLOSE_TIMEOUT_S = 2.0
_SETTINGS = "presence-settings"
_LAST_SEEN = "presence-last-seen"

class Contacts(Protocol):
    """What presence reads of the contact list (client/contact_list.py)."""

    def may_signal(self, peer: str) -> bool: ...
    def contacts(self) -> list[str]: ...
    def watch_presence(self, presence: Presence) -> None: ...


class Direct(Protocol):
    """The live 1:1 send (client/direct.py), which hands received notices back here."""

    presence: Presence | None

    async def send_live(self, username: str, bodies: bytes, content_type: str) -> str: ...


def presence_body(state: str, *, ask: bool) -> bytes:
    """A notice: our state, and whether the peer should answer with theirs."""
    if state not in _STATES:
        raise ValueError(state)
    return json_body(state=state, ask=ask).encode("utf-8")


def read_presence(body: bytes) -> tuple[str, bool]:
    """(state, ask) from a peer's notice; ``DecodeError`` for anything else."""
    data = read_json_body(body, ("state", "ask"), "a presence notice")
    if data["state"] not in _STATES or not isinstance(data["ask"], bool):
        raise DecodeError("a presence notice has a bad field")
    return data["state"], data["ask"]


@dataclass(frozen=True, slots=True)
class PeerPresence:
    """What this device shows of a contact: ``state`` is online, away, offline or
    unknown (never heard from); ``last_seen_ms`` the last notice from them, if any."""

    state: str
    last_seen_ms: int | None = None


class Presence:
    """Presence of one device, owned by :class:`~sottovoce.client.Client`."""

    def __init__(
        self, store: Store, contacts: Contacts, direct: Direct,
        emit: Callable[[ClientEvent], None], spawn: Callable[[Any], None],
        *, clock: Callable[[], float] = time.monotonic, clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._store, self._contacts, self._direct = store, contacts, direct
        self._emit, self._spawn, self._clock, self._clock_ms = emit, spawn, clock, clock_ms
        self.away_after_s, self.min_interval_s, self.tick_s = AWAY_AFTER_S, MIN_INTERVAL_S, TICK_S
        self.state = ONLINE
        self._last_input = clock()
        self._enabled: bool | None = None
        #: user -> device -> (state, when heard in ms): live only.
        self._heard: dict[str, dict[str, tuple[str, int]]] = {}
        self._last_seen: dict[str, int] | None = None
        self._sent_at: dict[str, float] = {}
        self._answered_at: dict[str, float] = {}
        self._held: dict[str, str] = {}
        self._announced: set[str] = set()
        self._refreshed = clock()
        self._loop: asyncio.Task[None] | None = None
        self._up = self._started = False
        #: Contacts whose devices took our announcement: their answer is due.
        self._awaiting: set[str] = set()
        self._announcing: asyncio.Task[None] | None = None
        contacts.watch_presence(self)
        direct.presence = self

    # --- the setting -------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        if self._enabled is None:
            raw = self._store.get_secret(_SETTINGS)
            self._enabled = True if raw is None else bool(json.loads(raw).get("presence", True))
        return self._enabled

    def set_enabled(self, on: bool) -> bool:
        """Off: nothing sent from now on (but one "offline" to the contacts that hear
        us, if sharing), nothing shown (what was heard is dropped)."""
        with self._store.transaction():
            self._store.put_secret(_SETTINGS, json.dumps({"presence": on}).encode())
        self._enabled = on
        if not on:
            if self._up and self._started:  # who sees us online is told we are gone
                for peer in self._listening():
                    self._spawn(self._to(peer, OFFLINE, ask=False, force=True))
            self._heard.clear()
            self._held.clear()
        return on

    # --- reading -----------------------------------------------------------------------

    def eligible(self, peer: str) -> bool:
        """A contact this device exchanged a message with (the server knows the pair)."""
        return self._contacts.may_signal(peer) and self._store.connection.execute(
            "SELECT 1 FROM messages WHERE peer_tag = ? LIMIT 1",
            (self._store.tag("user", peer),),
        ).fetchone() is not None

    def of(self, peer: str) -> PeerPresence:
        seen = self._seen().get(peer)
        if not self.enabled or not self._contacts.may_signal(peer):
            return PeerPresence(UNKNOWN if seen is None else OFFLINE, seen)
        devices = self._heard.get(peer, {})
        fresh = {s for s, at in devices.values() if self._clock_ms() - at < STALE_MS}
        state = next((s for s in (ONLINE, AWAY) if s in fresh), None)
        if state is None:
            state = UNKNOWN if seen is None else OFFLINE
        return PeerPresence(state, seen)

    def _seen(self) -> dict[str, int]:
        if self._last_seen is None:
            raw = self._store.get_secret(_LAST_SEEN)
            self._last_seen = {} if raw is None else {
                str(k): int(v) for k, v in json.loads(raw).items()
            }
        return self._last_seen

    # --- receiving (inside the batch transaction: no awaits) ---------------------------

    def incoming(self, sender: str, device: str, body: bytes, events: list[ClientEvent]) -> None:
        """A live notice from ``sender``'s ``device`` (authenticated by its session)."""
        if not self.enabled or not self.eligible(sender):
            return  # off, or not someone we share with: dropped unread
        try:
            state, ask = read_presence(body)
        except DecodeError as exc:
            log.info("presence notice dropped: %s", exc)
            return
        before = self.of(sender)
        at = self._clock_ms()
        self._heard.setdefault(sender, {})[device] = (state, at)
        self._seen()[sender] = at
        self._store.put_secret(_LAST_SEEN, json.dumps(self._seen()).encode())
        after = self.of(sender)
        if after.state != before.state:
            events.append(PresenceChanged(user=sender, state=after.state, last_seen_ms=at))
        self._awaiting.discard(sender)
        if ask and self._up and self._started:
            self._announced.add(sender)  # they asked: our answer is the announcement
            self._spawn(self._answer(sender))

    # --- sending -----------------------------------------------------------------------

    def start(self) -> None:
        """Share presence from now on (while connected, until :meth:`close`)."""
        self._started = True
        self._last_input = self._clock()
        if self._up:
            self._begin()

    def connected(self) -> None:
        """The connection came up: a started client announces itself again."""
        self._up = True
        self._announced.clear()
        self._heard.clear()  # what was heard before the gap may be stale
        if self._started:
            self._begin()

    def disconnected(self) -> None:
        self._up = False

    def _begin(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._ticks())
        self._announcing = asyncio.get_running_loop().create_task(self._announce())

    async def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for the answers of the contacts whose devices
        took our announcement (a contact with no device online is not waited for)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with contextlib.suppress(TimeoutError):
            if self._announcing is not None:
                await asyncio.wait_for(asyncio.shield(self._announcing), timeout)
            while self._awaiting and loop.time() < deadline:
                await asyncio.sleep(0.02)

    def activity(self) -> None:
        """Input from the user: back to online if we were away."""
        self._last_input = self._clock()
        if self.state == AWAY:
            self._change(ONLINE)

    def _change(self, state: str) -> None:
        self.state = state
        if self._up and self._started and self.enabled:
            for peer in self._listening():
                self._spawn(self._to(peer, state, ask=False))

    def _listening(self) -> list[str]:
        """The peers we heard from (online or away): the ones who want our changes."""
        return sorted(p for p, devices in self._heard.items()
                      if any(s != OFFLINE for s, _ in devices.values()) and self.eligible(p))

    async def _announce(self) -> None:
        if not self.enabled or not self._up or not self._started:
            return
        fresh = [p for p in self._contacts.contacts()
                 if p not in self._announced and self.eligible(p)]
        self._announced.update(fresh)
        took = await asyncio.gather(*(self._to(p, self.state, ask=True) for p in fresh))
        self._awaiting.update(p for p, ok in zip(fresh, took, strict=True) if ok)

    async def _answer(self, peer: str) -> None:
        """A peer asked (it just came online, so it has not heard us): our state now,
        whatever we sent before; at most one answer per ``min_interval_s`` per peer."""
        now = self._clock()
        last = self._answered_at.get(peer)
        if last is not None and now - last < self.min_interval_s:
            self._held[peer] = self.state
            return
        self._answered_at[peer] = now
        await self._to(peer, self.state, ask=False, force=True)

    async def _to(self, peer: str, state: str, *, ask: bool, force: bool = False) -> bool:
        """One notice (rate limited: a notice too soon is held for the next tick;
        ``force``: neither held nor stopped by the setting, for the last ones)."""
        if not (self.enabled or force) or not self.eligible(peer):
            return False
        now = self._clock()
        last = self._sent_at.get(peer)
        if not force and last is not None and now - last < self.min_interval_s:
            self._held[peer] = state
            return False
        self._sent_at[peer] = now
        self._held.pop(peer, None)
        try:
            await self._direct.send_live(peer, presence_body(state, ask=ask),
                                         PRESENCE_CONTENT_TYPE)
        except (NotConnected, ServerError):
            return False  # none of their devices online, or we went offline
        except SottovoceError as exc:
            log.info("presence notice not sent: %s", type(exc).__name__)
            return False
        return True

    async def tick(self) -> None:
        """Idle → away, held changes, contacts new since the connection, refreshes."""
        if not self._up or not self._started or not self.enabled:
            return
        if self.state == ONLINE and self._clock() - self._last_input >= self.away_after_s:
            self._change(AWAY)
        for peer, state in sorted(self._held.items()):
            if self._clock() - self._sent_at.get(peer, 0.0) >= self.min_interval_s:
                self._spawn(self._to(peer, state, ask=False))
        if self._clock() - self._refreshed >= REFRESH_S:
            self._refreshed = self._clock()
            for peer in self._listening():
                self._spawn(self._to(peer, self.state, ask=False))
        await self._announce()

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.tick()
            except SottovoceError as exc:
                log.info("presence tick failed: %s", type(exc).__name__)

    async def close(self) -> None:
        """A clean close: "offline" to the contacts we heard from (briefly, best effort)."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop
        if self._up and self._started and self.enabled:
            peers = self._listening()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(
                    *(self._to(p, OFFLINE, ask=False, force=True) for p in peers)
                ), CLOSE_TIMEOUT_S)
        self._up = self._started = False
