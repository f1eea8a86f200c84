"""Typed events the :class:`~sottovoce.client.Client` hands to the application, and the
hub that hands them out (one queue per :class:`EventStream`).

Every event is emitted after the change it reports is durable in the local
store, so an application that re-reads the store on an event sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from sottovoce.client.store import DeliveryStatus, StoredMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """A message from a peer, or a copy of what another of our devices sent."""

    message: StoredMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageSent:
    """The server acknowledged a durable write of one of our messages (✓)."""

    message_id: str
    peer: str
    server_seq: int
    idempotency_key: str
    duplicate: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryStateChanged:
    message_id: str
    peer: str
    status: DeliveryStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent:
    """Something failed that the application should show (never contains content)."""

    code: str
    message: str
    message_id: str | None = None
    retryable: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionChanged:
    """The authenticated connection came up (after resume and replay) or went down."""

    connected: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralReceived:
    """An ephemeral message: held only in memory (never in the store)."""

    peer: str
    sender: str
    message_id: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralChatRequested:
    """``peer`` asks for an ephemeral chat: ``client.ephemeral.open(peer)`` accepts."""

    chat_id: str
    peer: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralChatOpened:
    """Both sides hold the chat's keys and confirmed them: messages may flow."""

    chat_id: str
    peer: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralChatMessage:
    """A text of an ephemeral chat (held in the chat's memory ring only)."""

    chat_id: str
    peer: str
    sender: str
    text: str

    def __repr__(self) -> str:
        return f"EphemeralChatMessage({self.peer}, <{len(self.text)} chars>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralChatEnded:
    """The chat is over (left, panic, peer gone): its keys and messages are wiped."""

    chat_id: str
    peer: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralMediaReceived:
    """A photo or clip arrived whole in an ephemeral chat (kept in memory only):
    ``about`` describes it, ``index`` is its number in the chat's media ring (1 = the
    oldest kept); ``peer`` is the room's id in a group chat."""

    chat_id: str
    peer: str
    sender: str
    index: int
    about: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralGroupInvited:
    """``peer`` asks this device into an ephemeral group chat of the room ``room_id``
    (``client.ephemeral.groups.open(room_id)`` joins)."""

    chat_id: str
    room_id: str
    peer: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralGroupOpened:
    """``user`` is linked into the group chat: messages reach them from now on."""

    chat_id: str
    room_id: str
    user: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralGroupLeft:
    """``user`` dropped out of the group chat (left, went offline, removed)."""

    chat_id: str
    room_id: str
    user: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralGroupMessage:
    """A text of an ephemeral group chat (held in the group's memory ring only)."""

    chat_id: str
    room_id: str
    sender: str
    text: str

    def __repr__(self) -> str:
        return f"EphemeralGroupMessage({self.sender}, <{len(self.text)} chars>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class EphemeralGroupEnded:
    """The group chat is over here (left, panic, everyone gone): everything wiped."""

    chat_id: str
    room_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageUpdated:
    """A control message changed how a stored message shows (an edit, a delete for
    everyone, a reaction, a receipt): read it again with ``client.controls.view``.

    ``conversation`` is the peer's username (1:1) or the room id; ``kind`` the control
    message's (``"edit"``, ``"delete"``, ``"reaction"``, ``"receipt"``) and ``sender``
    its authenticated sender, so a listener can say what happened; ``emoji`` and ``on``
    for a reaction (added or removed)."""

    conversation: str
    message_id: str
    kind: str = ""
    sender: str = ""
    emoji: str = ""
    on: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class TypingStarted:
    """``sender`` is typing in ``conversation`` (a username for 1:1); it stops showing
    at ``until_ms`` unless another notice follows. Never stored anywhere."""

    conversation: str
    sender: str
    until_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PresenceChanged:
    """What this device shows of contact ``user`` changed (client/presence.py):
    ``state`` online, away or offline; ``last_seen_ms`` when they were last heard."""

    user: str
    state: str
    last_seen_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomMessageReceived:
    """A room message from a member (or from another of our devices), stored.

    ``message.peer`` is the room id, so ``Client.history(room_id)`` lists it.
    """

    room_id: str
    message: StoredMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomJoined:
    """We are a member of a room now (created, invited by Welcome, or joined by token)."""

    room_id: str
    label: str
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomInvited:
    """A member told us, inside the room's encryption, that it invited us.

    ``name`` is the room's shared name (the inviter's name for a room without
    one, or while we lack the key of its names); ``label`` is the local name this
    device now uses for the room (that name, unless another room here already has
    it); ``inviter`` is the authenticated sender of the notice.
    """

    room_id: str
    label: str
    name: str
    inviter: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomMembershipChanged:
    """A commit moved the room to ``epoch``; ``added``/``removed`` are ``user/device``."""

    room_id: str
    epoch: int
    committer: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    #: This device was removed: nothing later in this room can be read by it.
    self_removed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomRecovered(ErrorEvent):
    """This device could not follow a commit of a room (it could not verify or process
    it) and rejoined the room by an external commit, so it is not left behind.

    Shown like an error (``code`` "room_recovered", ``message`` says what happened):
    ``skipped`` room frames between the last one it could read and its rejoin stay
    unreadable to it; ``removed`` are the devices (``user/device``) whose join it could
    not verify and that it removed again after rejoining.
    """

    room_id: str
    epoch: int
    skipped: int = 0
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceLinked:
    """A new device was added to this account (``device link`` on another of its devices,
    or the SDK's ``add_device``), seen in a verified lookup of the account (also after
    this device was offline; client/device_notices.py): if it was not you, revoke it."""

    device_id: str
    #: When its certificate was made.
    linked_at_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRevoked:
    """A device of this account is gone: revoked (``revoked``), or its certificate is no
    longer in the directory."""

    device_id: str
    revoked: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysChanged(ErrorEvent):
    """A contact's account key changed by succession or recovery, and every link from
    the key we had pinned was checked (identity/succession.py ``follow``). Shown like an
    error (``code`` "keys_changed"): the safety number changed, so the contact is no longer
    verified; ``dropped`` are the devices whose sessions were forgotten."""

    username: str
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesExpired:
    """Disappearing messages this device deleted because they expired: a UI drops them."""

    message_ids: tuple[str, ...]


ClientEvent = (
    MessagesExpired
    | DeviceLinked
    | DeviceRevoked
    | RoomMessageReceived
    | RoomJoined
    | RoomInvited
    | RoomMembershipChanged
    | RoomRecovered
    | KeysChanged
    | MessageReceived
    | MessageSent
    | DeliveryStateChanged
    | ErrorEvent
    | ConnectionChanged
    | EphemeralReceived
    | EphemeralChatRequested
    | EphemeralChatOpened
    | EphemeralChatMessage
    | EphemeralChatEnded
    | EphemeralMediaReceived
    | EphemeralGroupInvited
    | EphemeralGroupOpened
    | EphemeralGroupLeft
    | EphemeralGroupMessage
    | EphemeralGroupEnded
    | MessageUpdated
    | TypingStarted
    | PresenceChanged
)


class EventHub:
    """Every open :class:`EventStream`; :meth:`emit` queues an event on each (never blocks)."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[ClientEvent]] = []

    def emit(self, event: ClientEvent) -> None:
        for queue in self._queues:
            queue.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[ClientEvent]:
        queue: asyncio.Queue[ClientEvent] = asyncio.Queue()
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ClientEvent]) -> None:
        with contextlib.suppress(ValueError):
            self._queues.remove(queue)


class EventStream:
    """An async iterator of client events; subscribed from creation on."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self._queue = hub.subscribe()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ClientEvent:
        return await self._queue.get()

    async def next(self, timeout: float | None = None) -> ClientEvent:
        return await asyncio.wait_for(self._queue.get(), timeout)

    def pending(self) -> list[ClientEvent]:
        """Everything already queued, without waiting."""
        out: list[ClientEvent] = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def close(self) -> None:
        self._hub.unsubscribe(self._queue)
