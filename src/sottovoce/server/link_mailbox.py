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
* In memory only: nothing of a link is ever written to storage, so nothing is left
  behind after a crash either.
* Several nodes: the node the opener reached holds the mailbox. A joiner that reached
  another node asks it through the fan-out (server/fanout/, NATS), on a subject per
  mailbox side: the joiner's node listens on ``j``, asks ``o`` to join (a request: no
  answer is ``link_not_found``), then relays bodies and the close both ways::

      joiner ─► node J: listen <box>.j, request <box>.o "J" ─► node O: one joiner? "1<exp>"
      put     ─► node J: publish <box>.o "P<body>"          ─► node O: counted, to opener
      opener's put on O: publish <box>.j "M<body>"          ─► node J: to the joiner
      either side ends:  publish the other side "C<reason>" ─► that node ends it too

  Every rule holds as on one node: node O counts the messages and keeps the one joiner;
  node J keeps its own expiry too, so a lost node O still ends the attempt there.

Nothing about a mailbox is logged but the reason it closed.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sottovoce.limits import (
    LINK_MAX_MAILBOXES,
    LINK_MAX_MESSAGES,
    LINK_MAX_QUEUED,
    LINK_MESSAGE_MAX_BYTES,
)
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
from sottovoce.server.fanout import Fanout
from sottovoce.server.logs import JsonLogger
from sottovoce.server.session import Session

#: (session, delay in ms or None for the default pre-auth timeout): re-arm the deadline
#: by which an unauthenticated connection must log in.
Rearm = Callable[[Session, int | None], None]
#: Mailboxes one connection may hold open: the QR code's and the short code's.
OPENED_MAX = 2

NOT_FOUND = (
    "no linking code with this number is open on this server: check the code (it may have "
    "expired or been used)"
)
#: The joiner node's nonce in a join over the fan-out.
_NONCE = re.compile(rb"[0-9a-f]{32}")
#: Reasons a close may carry from another node (anything else is "closed").
REASONS = frozenset({"done", "failed", "cancelled", "expired", "peer_gone", "too_many",
                     "closed"})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _OneNode:
    """No other node (what the in-process fan-out does for links)."""

    remote = False

    def link_listen(self, channel: str, handler: object) -> Awaitable[None] | None:
        return None

    def link_unlisten(self, channel: str) -> None:
        return None

    def link_publish(self, channel: str, data: bytes) -> None:
        return None

    async def link_request(self, channel: str, data: bytes) -> bytes | None:
        return None


@dataclass(eq=False, slots=True)
class _Box:
    mailbox: str
    #: None on a joiner's node: the opener is on the node that holds the mailbox.
    opener: Session | None
    expires_at_ms: int
    timer: asyncio.TimerHandle | None = None
    joiner: Session | None = None
    held: list[bytes] = field(default_factory=list)
    relayed: int = 0
    #: The other side is on another node (holding node: a remote joiner joined).
    remote: bool = False
    #: A joiner's node: joined (the holding node said yes); before, bodies are held.
    joined: bool = True
    ended: bool = False

    #: This node's side of the mailbox on the fan-out, and the other node's: ``<id>.o``
    #: on the holding node, ``<id>.j.<nonce>`` on the joiner's (one per join attempt).
    own_channel: str = ""
    peer_channel: str = ""

    def other(self, session: Session) -> Session | None:
        return self.joiner if session is self.opener else self.opener


class LinkMailboxes:
    """Every mailbox this node holds; the app routes the four link events here."""

    def __init__(
        self, *, ttl_ms: int, log: JsonLogger, rearm: Rearm,
        clock_ms: Callable[[], int] = _now_ms, fanout: Fanout | None = None,
    ) -> None:
        self._ttl_ms = ttl_ms
        self._log = log
        self._rearm = rearm
        self._clock = clock_ms
        self._boxes: dict[str, _Box] = {}
        #: The mailboxes of each connection: an opener's (up to OPENED_MAX), a joiner's one.
        self._by_session: dict[Session, list[_Box]] = {}
        #: Reaches the other nodes (the in-process one, which reaches none, by default).
        self._fanout: Fanout | _OneNode = fanout if fanout is not None else _OneNode()
        #: Joiners here of mailboxes held by another node.
        self._proxies: set[_Box] = set()

    def __len__(self) -> int:
        return len(self._boxes) + len(self._proxies)

    def handlers(self) -> dict[type[Any], Callable[..., Awaitable[None] | None]]:
        return {LinkOpen: self.open, LinkJoin: self.join, LinkPut: self.put,
                LinkClose: self.close}

    # --- the four requests -------------------------------------------------------------

    def open(self, session: Session, ev: LinkOpen, _: dict[str, Any],
             rid: str | None) -> Awaitable[None] | None:
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
        box = _Box(ev.mailbox, session, self._clock() + self._ttl_ms,
                   own_channel=f"{ev.mailbox}.o")
        box.timer = asyncio.get_running_loop().call_later(
            self._ttl_ms / 1000, self._end, box, "expired")
        self._boxes[ev.mailbox] = box
        self._by_session.setdefault(session, []).append(box)
        self._log.info("link.opened")
        listening = self._fanout.link_listen(box.own_channel,
                                             lambda data: self._from_joiner_node(box, data))
        if listening is None:
            self._opened(box, rid)
            return None
        return self._open_when_listening(box, listening, rid)

    async def _open_when_listening(self, box: _Box, listening: Awaitable[None],
                                   rid: str | None) -> None:
        """Tell the opener only once a joiner on another node can find the mailbox."""
        await listening
        if box.ended:
            self._fanout.link_unlisten(box.own_channel)
        else:
            self._opened(box, rid)

    def _opened(self, box: _Box, rid: str | None) -> None:
        assert box.opener is not None  # noqa: S101 - the holding node's box
        box.opener.reply(LINK_OPENED, {"mailbox": box.mailbox,
                                       "expiresAtMs": box.expires_at_ms}, rid)

    def join(self, session: Session, ev: LinkJoin, _: dict[str, Any],
             rid: str | None) -> Awaitable[None] | None:
        if session in self._by_session:
            raise WireFailure("bad_request", "this connection is already linking")
        box = self._boxes.get(ev.mailbox)
        if box is None and self._fanout.remote:
            return self._join_elsewhere(session, ev.mailbox, rid)
        if box is None or box.joiner is not None or box.remote:
            raise WireFailure("link_not_found", NOT_FOUND)
        box.joiner = session
        self._by_session[session] = [box]
        self._joined(session, box, rid)
        assert box.opener is not None  # noqa: S101 - the holding node's box
        box.opener.reply(LINK_JOINED, {"mailbox": box.mailbox,
                                       "expiresAtMs": box.expires_at_ms}, None)
        for body in box.held:
            session.write(frame(LINK_MESSAGE, {"mailbox": box.mailbox, "body": b64(body)}))
        box.held.clear()
        return None

    def _joined(self, session: Session, box: _Box, rid: str | None) -> None:
        if session.user is None:  # it may stay unauthenticated while the code lives
            self._rearm(session, max(1, box.expires_at_ms - self._clock()))
        session.reply(LINK_JOINED, {"mailbox": box.mailbox, "expiresAtMs": box.expires_at_ms},
                      rid)

    # --- a mailbox held by another node --------------------------------------------------

    async def _join_elsewhere(self, session: Session, mailbox: str, rid: str | None) -> None:
        """Join through the fan-out: listen on our side first, then ask the holding node
        (no answer, or no: ``link_not_found``)."""
        nonce = secrets.token_hex(16)
        box = _Box(mailbox, None, self._clock() + self._ttl_ms, joiner=session, remote=True,
                   joined=False, own_channel=f"{mailbox}.j.{nonce}", peer_channel=f"{mailbox}.o")
        self._by_session[session] = [box]  # one join at a time on this connection
        self._proxies.add(box)
        listening = self._fanout.link_listen(box.own_channel,
                                             lambda data: self._from_holding_node(box, data))
        if listening is not None:
            await listening
        answer = None if box.ended else await self._fanout.link_request(box.peer_channel,
                                                                         b"J" + nonce.encode())
        expires = _expiry(answer)
        if box.ended or expires is None:
            self._drop_proxy(box)
            raise WireFailure("link_not_found", NOT_FOUND)
        box.expires_at_ms = min(expires, self._clock() + self._ttl_ms)
        box.timer = asyncio.get_running_loop().call_later(
            max(0.0, (box.expires_at_ms - self._clock()) / 1000), self._end, box, "expired")
        box.joined = True
        self._joined(session, box, rid)
        for body in box.held:
            session.write(frame(LINK_MESSAGE, {"mailbox": mailbox, "body": b64(body)}))
        box.held.clear()

    def _drop_proxy(self, box: _Box) -> None:
        box.ended = True
        self._proxies.discard(box)
        self._fanout.link_unlisten(box.own_channel)
        if box.joiner is not None and self._by_session.get(box.joiner) == [box]:
            del self._by_session[box.joiner]

    async def _from_holding_node(self, box: _Box, data: bytes) -> bytes | None:
        """A body for the joiner here, or the end of the mailbox."""
        kind, rest = data[:1], data[1:]
        if box.ended or box.joiner is None:
            return None
        if kind == b"M" and len(rest) <= LINK_MESSAGE_MAX_BYTES:
            if not box.joined:
                if len(box.held) < LINK_MAX_QUEUED:
                    box.held.append(rest)
                return None
            box.joiner.write(frame(LINK_MESSAGE, {"mailbox": box.mailbox, "body": b64(rest)}))
        elif kind == b"C":
            self._end(box, _reason(rest), from_peer=True)
        return None

    async def _from_joiner_node(self, box: _Box, data: bytes) -> bytes | None:
        """A joiner on another node: its join (answered), its bodies, its close."""
        kind, rest = data[:1], data[1:]
        if box.ended or box.opener is None:
            return b"0" if kind == b"J" else None
        if kind == b"J":
            if box.joiner is not None or box.remote or _NONCE.fullmatch(rest) is None:
                return b"0"  # one joiner only
            box.remote = True
            box.peer_channel = f"{box.mailbox}.j.{rest.decode('ascii')}"
            box.opener.reply(LINK_JOINED, {"mailbox": box.mailbox,
                                           "expiresAtMs": box.expires_at_ms}, None)
            for body in box.held:
                self._fanout.link_publish(box.peer_channel, b"M" + body)
            box.held.clear()
            return b"1" + str(box.expires_at_ms).encode()
        if not box.remote:
            return None
        if kind == b"P" and len(rest) <= LINK_MESSAGE_MAX_BYTES:
            box.relayed += 1
            if box.relayed > LINK_MAX_MESSAGES:
                self._end(box, "too_many")
            else:
                box.opener.write(frame(LINK_MESSAGE, {"mailbox": box.mailbox, "body": b64(rest)}))
        elif kind == b"C":
            self._end(box, _reason(rest), from_peer=True)
        return None

    def put(self, session: Session, ev: LinkPut, _: dict[str, Any], rid: str | None) -> None:
        box = self._mine(session, ev.mailbox)
        box.relayed += 1
        if box.relayed > LINK_MAX_MESSAGES:
            self._end(box, "too_many")
            raise WireFailure("link_closed", "too many linking messages: the attempt is over")
        other = box.other(session)
        if box.remote:
            self._fanout.link_publish(box.peer_channel, (b"M" if other is None and
                                      box.opener is session else b"P") + ev.body)
        elif other is None:
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
             rid: str | None = None, from_peer: bool = False) -> None:
        if box.ended:
            return  # ended already
        box.ended = True
        if self._boxes.get(box.mailbox) is box:
            del self._boxes[box.mailbox]
        self._proxies.discard(box)
        if box.timer is not None:
            box.timer.cancel()
        box.held.clear()
        if self._fanout.remote:
            self._fanout.link_unlisten(box.own_channel)
            if box.remote and not from_peer:
                self._fanout.link_publish(box.peer_channel, b"C" + reason.encode())
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


def _expiry(answer: bytes | None) -> int | None:
    """The holding node's yes to a join: ``1<expiresAtMs>``."""
    if answer is None or answer[:1] != b"1" or not 1 < len(answer) <= 21:
        return None
    try:
        return int(answer[1:])
    except ValueError:
        return None


def _reason(raw: bytes) -> str:
    reason = raw.decode("ascii", errors="replace")
    return reason if reason in REASONS else "closed"
