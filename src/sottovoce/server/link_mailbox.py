"""Device-linking mailboxes (protocol/link.py): where an existing device and a new one
meet to run the linking PAKE and the handover, relayed as opaque bodies.

* Opened by an authenticated device (at most two per connection: the QR code's and the
  short code's; a third ends the oldest), named by the short
  code's nameplate or the QR code's mailbox id; joined by exactly one other connection,
  which may be unauthenticated: the narrow pre-auth exception. Such a connection may
  then put to and close that one mailbox and nothing else; every other request before
  auth is still refused by the dispatcher.
* Bounded: LINK_MAX_MESSAGES relayed in all, LINK_MAX_QUEUED held for a joiner not yet
  there, LINK_MESSAGE_MAX_BYTES each (the event's field), LINK_MAX_MAILBOXES per node.
* Closed and deleted, with ``sottovoce.link.closed`` to both sides, when either side
  closes it (done, failed, cancelled), when it expires (``link_ttl_ms`` after opening),
  when either connection is lost, or when too many messages passed. A wrong code is a
  failed PAKE: the devices close the mailbox, so one code buys one guess.
* In this node's memory only: nothing of a link is ever written to storage, so nothing
  is left behind after a crash either. With several nodes, both devices must reach the
  node that holds the mailbox; the joiner on another node gets ``link_not_found``,
  whose message says so (docs/operations.md, several nodes).

Nothing about a mailbox is logged but the reason it closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sottovoce.limits import LINK_MAX_MAILBOXES, LINK_MAX_MESSAGES, LINK_MAX_QUEUED
from sottovoce.protocol.fields import b64
from sottovoce.protocol.link import (
    LINK_CLOSED,
    LINK_JOINED,
    LINK_MESSAGE,
    LINK_OPENED,
    LINK_SENT,
    LinkClose,
    LinkJoin,
    LinkOpen,
    LinkPut,
)
from sottovoce.protocol.spec import frame
from sottovoce.server.errors import WireFailure
from sottovoce.server.logs import JsonLogger
from sottovoce.server.session import Session

#: (session, delay in ms or None for the default pre-auth timeout): re-arm the deadline
#: by which an unauthenticated connection must log in.
Rearm = Callable[[Session, int | None], None]
#: Mailboxes one connection may hold open: the QR code's and the short code's.
OPENED_MAX = 2

NOT_FOUND = (
    "no linking code with this number is open on this server: check the code (it may have "
    "expired or been used); with several server nodes, both devices must reach the same node"
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False, slots=True)
class _Box:
    mailbox: str
    opener: Session
    expires_at_ms: int
    timer: asyncio.TimerHandle | None = None
    joiner: Session | None = None
    held: list[bytes] = field(default_factory=list)
    relayed: int = 0

    def other(self, session: Session) -> Session | None:
        return self.joiner if session is self.opener else self.opener


class LinkMailboxes:
    """Every mailbox this node holds; the app routes the four link events here."""

    def __init__(
        self, *, ttl_ms: int, log: JsonLogger, rearm: Rearm,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._ttl_ms = ttl_ms
        self._log = log
        self._rearm = rearm
        self._clock = clock_ms
        self._boxes: dict[str, _Box] = {}
        #: The mailboxes of each connection: an opener's (up to OPENED_MAX), a joiner's one.
        self._by_session: dict[Session, list[_Box]] = {}

    def __len__(self) -> int:
        return len(self._boxes)

    def handlers(self) -> dict[type[Any], Callable[..., None]]:
        return {LinkOpen: self.open, LinkJoin: self.join, LinkPut: self.put,
                LinkClose: self.close}

    # --- the four requests -------------------------------------------------------------

    def open(self, session: Session, ev: LinkOpen, _: dict[str, Any], rid: str | None) -> None:
        session.key  # noqa: B018 - raises "unauthorized" for a connection not logged in
        if ev.mailbox in self._boxes:
            raise WireFailure("link_mailbox_taken", "that linking code is in use: make another",
                              retryable=True)
        mine = self._by_session.get(session, [])
        if mine and mine[0].joiner is session:
            raise WireFailure("bad_request", "this connection is already linking")
        if len(mine) >= OPENED_MAX:
            self._end(mine[0], "cancelled")
        if len(self._boxes) >= LINK_MAX_MAILBOXES:
            raise WireFailure("link_busy", "too many devices are linking: try again soon",
                              retryable=True, retry_after_ms=10_000)
        box = _Box(ev.mailbox, session, self._clock() + self._ttl_ms)
        box.timer = asyncio.get_running_loop().call_later(
            self._ttl_ms / 1000, self._end, box, "expired")
        self._boxes[ev.mailbox] = box
        self._by_session.setdefault(session, []).append(box)
        self._log.info("link.opened")
        session.reply(LINK_OPENED, {"mailbox": box.mailbox, "expiresAtMs": box.expires_at_ms},
                      rid)

    def join(self, session: Session, ev: LinkJoin, _: dict[str, Any], rid: str | None) -> None:
        if session in self._by_session:
            raise WireFailure("bad_request", "this connection is already linking")
        box = self._boxes.get(ev.mailbox)
        if box is None or box.joiner is not None:
            raise WireFailure("link_not_found", NOT_FOUND)
        box.joiner = session
        self._by_session[session] = [box]
        if session.user is None:  # it may stay unauthenticated while the code lives
            self._rearm(session, max(1, box.expires_at_ms - self._clock()))
        data = {"mailbox": box.mailbox, "expiresAtMs": box.expires_at_ms}
        session.reply(LINK_JOINED, data, rid)
        box.opener.reply(LINK_JOINED, data, None)
        for body in box.held:
            session.write(frame(LINK_MESSAGE, {"mailbox": box.mailbox, "body": b64(body)}))
        box.held.clear()

    def put(self, session: Session, ev: LinkPut, _: dict[str, Any], rid: str | None) -> None:
        box = self._mine(session, ev.mailbox)
        box.relayed += 1
        if box.relayed > LINK_MAX_MESSAGES:
            self._end(box, "too_many")
            raise WireFailure("link_closed", "too many linking messages: the attempt is over")
        other = box.other(session)
        if other is None:
            if len(box.held) >= LINK_MAX_QUEUED:
                raise WireFailure("link_not_joined", "the other device has not joined yet",
                                  retryable=True, retry_after_ms=1000)
            box.held.append(ev.body)
        else:
            other.write(frame(LINK_MESSAGE, {"mailbox": box.mailbox, "body": b64(ev.body)}))
        session.reply(LINK_SENT, {"mailbox": box.mailbox}, rid)

    def close(self, session: Session, ev: LinkClose, _: dict[str, Any], rid: str | None) -> None:
        box = self._mine(session, ev.mailbox)
        self._end(box, ev.reason, closer=session, rid=rid)

    # --- the end of a mailbox ------------------------------------------------------------

    def lost(self, session: Session) -> None:
        """A connection is gone: a mailbox it was in ends."""
        for box in list(self._by_session.get(session, [])):
            self._end(box, "peer_gone")

    def _mine(self, session: Session, mailbox: str) -> _Box:
        box = next((b for b in self._by_session.get(session, []) if b.mailbox == mailbox), None)
        if box is None:
            if session.user is None:
                raise WireFailure("unauthorized", "authenticate first")
            raise WireFailure("link_not_found", NOT_FOUND)
        return box

    def _end(self, box: _Box, reason: str, *, closer: Session | None = None,
             rid: str | None = None) -> None:
        if self._boxes.get(box.mailbox) is not box:
            return  # ended already
        del self._boxes[box.mailbox]
        if box.timer is not None:
            box.timer.cancel()
        box.held.clear()
        data = {"mailbox": box.mailbox, "reason": reason}
        for side in (box.opener, box.joiner):
            if side is None:
                continue
            left = [b for b in self._by_session.get(side, []) if b is not box]
            if left:
                self._by_session[side] = left
            else:
                self._by_session.pop(side, None)
            side.reply(LINK_CLOSED, data, rid if side is closer else None)
            if side.user is None and not side.closed:
                self._rearm(side, None)  # back to the ordinary pre-auth deadline
        self._log.info("link.closed", reason=reason)
