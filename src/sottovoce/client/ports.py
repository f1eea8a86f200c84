"""What the client's parts may ask of each other: small protocols, so that a part
receives exactly what it uses and never the :class:`~sottovoce.client.Client` that
owns it (docs/architecture.md, "Who may import what").

    Client (composition root) ──► Connection  satisfies Link
                              ──► Directory   satisfies Contacts
                              ──► Outbox      satisfies SendQueue
                              ──► DirectMessages, RoomManager: given the above
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from sottovoce.client.events import ClientEvent
from sottovoce.client.store import Contact, Store
from sottovoce.protocol import events as ev

#: Hand an event to the application (after the change it reports is durable).
Emit = Callable[[ClientEvent], None]
#: Run a coroutine in the background; the client cancels it when it closes.
Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class Link(Protocol):
    """The authenticated connection, as the client's parts use it."""

    @property
    def is_up(self) -> bool: ...

    def send_frame(self, text: str) -> bool:
        """Queue a frame on the live connection; ``False`` if there is none."""
        ...

    async def request(
        self, event: ev.ClientEvent, expect: frozenset[str], *, timeout: float = ...
    ) -> tuple[str, dict[str, Any]]:
        """Send ``event`` and wait for its reply; a ``ksmpv3.error`` raises ServerError."""
        ...

    async def wait_up(self, timeout: float, *, fail_fast: bool = ...) -> None: ...


class Contacts(Protocol):
    """The directory as this device has verified it (account keys pinned on first use)."""

    async def lookup(self, username: str) -> None:
        """Fetch, verify and pin ``username``'s devices (IdentityChanged if the key moved)."""
        ...

    def contact(self, username: str) -> Contact | None: ...


class SendQueue(Protocol):
    """The durable outbox: rows written in a local transaction go out from here."""

    def pump(self) -> None:
        """Write outbox rows not yet written on this connection (within the window)."""
        ...

    async def wait_sent(self, message_id: str, *, timeout: float) -> int: ...

    def fail(self, message_id: str, code: str, message: str) -> None:
        """Give up on a queued message: marked failed, told to the application."""
        ...


@dataclass(frozen=True, slots=True)
class LinkPort:
    """What linking a new device (client/linking.py) may use of the existing device."""

    link: Link
    store: Store
    #: Forget a user's looked-up devices (our own, once a device is added).
    forget: Callable[[str], None]
    contacts: Contacts
    #: Route one unsolicited server event (by name) to a handler of its data.
    route: Callable[[str, Callable[[dict[str, Any]], None]], None]
