"""Fan-out: how a committed frame reaches the node holding the target device (docs/deploy.md).

:class:`~sottovoce.server.presence.Presence` first looks in its own node's
``online`` map; only what is *not* connected here goes through the :class:`Fanout`:

    send commits on this node
        │
        ├─ target connected here ──► session.deliver()          (both implementations)
        └─ not here ──► Fanout.frame()
                          InProcessFanout: nobody else can hold it (no-op)
                          NatsFanout:      publish to the device's subject; the
                                           node holding the device writes it
                     ──► push tickle unless Fanout.online_elsewhere()

The in-process implementation is what a single node runs with no ``--nats``:
every method is a no-op or the old local behaviour, so the single-node hot
path costs one method call more than before.

A fan-out is given :class:`~sottovoce.server.ports.FanoutPorts` (the online map, a
catch-up callable, the directory cache's invalidate, metrics, the log) and nothing else.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Collection, Sequence

from sottovoce.server.ports import DeviceKey, FanoutPorts
from sottovoce.server.session import Session

__all__ = ["DeviceKey", "Fanout", "InProcessFanout", "LinkHandler"]

#: What a node does with a link message from another node: the reply to a request.
LinkHandler = Callable[[bytes], Awaitable[bytes | None]]


class Fanout(abc.ABC):
    #: True when other nodes may hold devices (a non-local device may be online elsewhere).
    remote: bool = False

    def __init__(self, ports: FanoutPorts) -> None:
        self.ports = ports
        #: Told of the devices a commit on *another* node removed from a room (the SFU
        #: handler: this node revokes the grants and kicks the feeds of calls it opened).
        self.on_members_removed: Callable[[str, Sequence[DeviceKey]], None] | None = None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def status(self) -> dict[str, object]:
        """Extra fields for ``/healthz``."""
        return {}

    # --- presence ---------------------------------------------------------------------

    @abc.abstractmethod
    def attach(self, session: Session) -> Awaitable[None] | None:
        """``session`` is now this node's connection of its device.

        The returned awaitable (if any) must finish before the device may resume:
        once it has, any frame committed later on any node reaches this node.
        """

    @abc.abstractmethod
    def detach(self, key: DeviceKey) -> None:
        """The device has no connection on this node any more."""

    # --- frames for devices not connected here ----------------------------------------

    def online_elsewhere(self, key: DeviceKey) -> bool:
        """Whether another node holds this device (decides push tickles only)."""
        return False

    @abc.abstractmethod
    def frame(self, user: str, device: str, seq: int, text: str) -> None:
        """A stored inbox frame (``text`` is the whole ``ksmpv3.inbox.frame``)."""

    @abc.abstractmethod
    def room_frame(self, key: DeviceKey, room_id: str, seq: int, text: str) -> None:
        """A stored room frame: one serialized text for all members."""

    @abc.abstractmethod
    def ephemeral(self, targets: Collection[tuple[DeviceKey, str]]) -> Awaitable[set[DeviceKey]]:
        """Relay ephemeral frames; resolves to the devices that were online to take them."""

    @abc.abstractmethod
    def notice(self, keys: Collection[DeviceKey], text: str) -> None:
        """An unsolicited notice (device added/revoked, prekeys low) to these devices."""

    @abc.abstractmethod
    def revoked(self, key: DeviceKey, text: str) -> None:
        """Write ``text`` to the revoked device and close its socket, wherever it is."""

    @abc.abstractmethod
    def account_deleted(self, key: DeviceKey, text: str) -> None:
        """Write ``text`` to the device of a deleted account and close its socket with
        4002, wherever it is."""

    @abc.abstractmethod
    def directory_changed(self, user: str) -> None:
        """``user``'s account record changed in storage: other nodes drop their cached copy."""

    def members_removed(self, room_id: str, devices: Sequence[DeviceKey]) -> None:
        """A commit stored here removed ``devices`` from ``room_id``: tell the other nodes
        (each kicks the feeds of the calls it opened). One node: nothing to tell."""
        return None

    # --- link mailboxes whose other side is on another node (server/link_mailbox.py) ---

    def link_listen(self, channel: str, handler: LinkHandler) -> Awaitable[None] | None:
        """Receive what other nodes send on ``channel`` (a mailbox's side); the awaitable
        finishes once other nodes can reach it. ``handler``'s answer is the reply to a
        request. One node: nobody else can send (no-op)."""
        return None

    def link_unlisten(self, channel: str) -> None:
        return None

    def link_publish(self, channel: str, data: bytes) -> None:
        """Send ``data`` to whoever listens on ``channel`` (lost if nobody does)."""
        return None

    async def link_request(self, channel: str, data: bytes) -> bytes | None:
        """Ask whoever listens on ``channel``; ``None``: nobody answered."""
        return None

    def deliver_live(self, session: Session, seq: int, text: str) -> None:
        """Write a stored frame to a live session (``seq`` > ``session.last_sent``).

        Only called when :attr:`remote`: frames committed on other nodes may
        arrive out of globalInboxSeq order and need putting back in order.
        """
        session.last_sent = seq
        session.write(text)

    def deliver_room_live(self, session: Session, room_id: str, seq: int, text: str) -> None:
        """As :meth:`deliver_live` for a room frame (``seq`` is the room's serverSeq)."""
        session.room_sent[room_id] = seq
        session.write(text)


class InProcessFanout(Fanout):
    """One node: a device not connected here is offline (today's behaviour)."""

    remote = False

    def attach(self, session: Session) -> Awaitable[None] | None:
        return None

    def detach(self, key: DeviceKey) -> None:
        return None

    def frame(self, user: str, device: str, seq: int, text: str) -> None:
        return None

    def room_frame(self, key: DeviceKey, room_id: str, seq: int, text: str) -> None:
        return None

    async def ephemeral(self, targets: Collection[tuple[DeviceKey, str]]) -> set[DeviceKey]:
        return set()

    def notice(self, keys: Collection[DeviceKey], text: str) -> None:
        return None

    def revoked(self, key: DeviceKey, text: str) -> None:
        return None

    def account_deleted(self, key: DeviceKey, text: str) -> None:
        return None

    def directory_changed(self, user: str) -> None:
        return None
