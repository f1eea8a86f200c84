"""Presence: which session holds each device on this node, and the one way a frame
reaches a device wherever it is (docs/architecture.md §Server)::

    frame for (user, device) ──► connected here? ──yes──► session.deliver / write
                                     │no
                                     ├─► Fanout (the node holding it, if any)
                                     └─► push tickle, unless another node holds it

Delivery (inbox frames), rooms (room frames, Welcomes) and the account handlers
(notices, revocation, deletion) all route through here, so the rule is written once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sottovoce.protocol.events import frame
from sottovoce.server.directory import Directory
from sottovoce.server.errors import CLOSE_ACCOUNT_DELETED, CLOSE_REPLACED, CLOSE_REVOKED
from sottovoce.server.fanout import Fanout
from sottovoce.server.frames import inbox_frame_text
from sottovoce.server.ports import DeviceKey
from sottovoce.server.push import Pusher
from sottovoce.server.session import Session
from sottovoce.server.storage.base import StoredFrame


@dataclass(eq=False, repr=False)
class Presence:
    #: This node's authenticated sessions by device (the fan-out reads the same map).
    online: dict[DeviceKey, Session]
    fanout: Fanout
    directory: Directory
    pusher: Pusher

    # --- attach and detach --------------------------------------------------------------

    def attach(self, session: Session) -> Awaitable[None] | None:
        """Returns what must finish before the device may resume (the fan-out's subscribe)."""
        if session.closed:
            # The connection closed while its auth handler awaited: detach() already ran
            # (the transport reports the loss at once), so registering now would leave a
            # dead session online for good, taking this device's frames and push tickles.
            return None
        old = self.online.get(session.key)
        if old is not None and old is not session:
            old.close(CLOSE_REPLACED, "replaced by a newer connection of this device")
        self.online[session.key] = session
        return self.fanout.attach(session)

    def detach(self, session: Session) -> None:
        if session.user is None or session.device is None:
            return
        key = (session.user, session.device)
        if self.online.get(key) is session:
            del self.online[key]
            self.fanout.detach(key)
        if session.replay_task is not None:
            session.replay_task.cancel()

    # --- stored frames ------------------------------------------------------------------

    def inbox_frames(
        self, frames: Iterable[StoredFrame], conversation_id: str, server_seq: int
    ) -> int:
        """Each committed inbox frame to its device; returns the live deliveries here.
        ``conversation_id`` and ``server_seq`` are the push tickle's hints."""
        online = self.online
        fanout = self.fanout
        live = 0
        for f in frames:
            key = (f.user_id, f.device_id)
            target = online.get(key)
            if target is not None:
                target.deliver(f.global_seq, inbox_frame_text(f.global_seq, f.envelope))
                live += 1
            else:
                if fanout.remote:  # the node holding the device, if any, writes it
                    fanout.frame(*key, f.global_seq, inbox_frame_text(f.global_seq, f.envelope))
                if not fanout.online_elsewhere(key):
                    self.tickle(key, conversation_id, server_seq)
        return live

    def room_frame(self, room_id: str, seq: int, text: str, members: Sequence[DeviceKey]) -> int:
        """ONE serialized room frame to every member device; returns the live deliveries."""
        online = self.online
        fanout = self.fanout
        live = 0
        for key in members:
            target = online.get(key)
            if target is not None:
                target.deliver_room(room_id, seq, text)
                live += 1
            else:
                if fanout.remote:
                    fanout.room_frame(key, room_id, seq, text)
                if not fanout.online_elsewhere(key):
                    self.tickle(key, room_id, seq)
        return live

    def tickle(self, key: DeviceKey, conversation_id: str, server_seq: int) -> None:
        """Wake the device by push, if it registered an endpoint (no content: hints only)."""
        rec = self.directory.cached(key[0])
        dev = rec.device(key[1]) if rec is not None else None
        if dev is None or dev.push_endpoint is None:
            return
        self.pusher.maybe_tickle(
            key, dev.push_endpoint, conversation_id=conversation_id, server_seq=server_seq,
            now=time.monotonic(),
        )

    # --- notices ------------------------------------------------------------------------

    def notice(self, key: DeviceKey, text: str) -> None:
        """An unsolicited frame (e.g. prekeys low) to one device, here or on another node."""
        target = self.online.get(key)
        if target is not None:
            target.write(text)
        elif self.fanout.remote:
            self.fanout.notice([key], text)

    def notice_low(
        self, user: str, claimed: Iterable[tuple[str, int]], below: int, event: str,
        *, extra: dict[str, Any] | None = None,
    ) -> None:
        """After a claim of ``user``'s keys, (device id, keys left) each: ``event`` to each
        device left with fewer than ``below``, so that it uploads more (``extra``: more
        fields of the notice, such as the KeyPackages' suite)."""
        for device_id, remaining in claimed:
            if remaining < below:
                data = {"remaining": remaining, **(extra or {})}
                self.notice((user, device_id), frame(event, data))

    def connected(self, user: str) -> bool:
        """Whether a device of ``user`` is connected to this node."""
        return any(u == user for u, _ in self.online)

    def notify_user(self, user: str, text: str, *, skip: Session | None = None) -> None:
        """A frame to every connected device of ``user`` (but ``skip``), on every node."""
        for (u, _), s in list(self.online.items()):
            if u == user and s is not skip:
                s.write(text)
        fanout = self.fanout
        if fanout.remote:
            rec = self.directory.cached(user)
            if rec is not None:
                fanout.notice(
                    [(user, d.device_id) for d in rec.active()
                     if (user, d.device_id) not in self.online], text,
                )

    def revoked(self, key: DeviceKey, text: str) -> None:
        """Tell the revoked device and close its socket, wherever it is."""
        target = self.online.get(key)
        if target is not None:
            target.write(text)
            target.close(CLOSE_REVOKED, "device revoked")
        else:
            self.fanout.revoked(key, text)  # held by another node, if any

    def account_deleted(self, key: DeviceKey, text: str, *, skip: Session) -> None:
        """Tell a device of a deleted account and close its socket, wherever it is
        (``skip``: the connection that asked, closed by its handler after the reply)."""
        target = self.online.get(key)
        if target is skip:
            return
        if target is not None:
            target.write(text)
            target.close(CLOSE_ACCOUNT_DELETED, "account deleted")
        else:
            self.fanout.account_deleted(key, text)  # held by another node, if any
