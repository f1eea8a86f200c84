"""One WebSocket connection of one device: auth state, limits, and corked writes.

Writes never await: a frame is appended to the connection's buffer
(:class:`~sottovoce.server.transport.Connection`) and all frames queued in one
turn of the event loop go out in one ``transport.write`` (a whole group-commit
batch of acks and inbox frames costs one syscall per socket: docs/architecture.md §Hot path). A
client that cannot keep up — its write buffer passes ``write_buffer_limit`` —
is closed with 1013 and resumes from its last globalInboxSeq; stored frames are
never lost that way.

Stored frames reach a device in globalInboxSeq order, each exactly once per
connection:

    not resumed ──resume──► replaying ──replay.done──► live
    (buffer live frames)   (buffer live frames)       (write at once)

Live frames that arrive while replaying are buffered and written after
``sottovoce.replay.done`` unless the replay already carried them. Another
resume on the same connection supersedes the running replay and carries on
from the later of its position and ``last_sent`` (replay.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sottovoce.protocol.events import ERROR, WireError, frame
from sottovoce.server.auth import Challenge
from sottovoce.server.config import ServerConfig
from sottovoce.server.errors import CLOSE_SLOW_CONSUMER, WireFailure
from sottovoce.server.logs import JsonLogger
from sottovoce.server.metrics import Metrics
from sottovoce.server.ratelimit import Strikes, TokenBucket

if TYPE_CHECKING:
    from sottovoce.server.transport import Connection

#: Live frames buffered during a replay (at most write_buffer_limit bytes of them)
#: before we drop them and fall back to re-reading storage.
PENDING_MAX = 10_000


class LiveOrder(Protocol):
    """Puts live stored frames back in order when several nodes commit for one device
    (the NATS fan-out); a single node writes them as they come and has none."""

    def deliver_live(self, session: Session, seq: int, text: str) -> None: ...

    def deliver_room_live(self, session: Session, room_id: str, seq: int, text: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The per-connection budgets (from :class:`ServerConfig`)."""

    device_rate: float
    device_burst: int
    abuse_strikes: int
    write_buffer_limit: int

    @classmethod
    def of(cls, cfg: ServerConfig) -> SessionLimits:
        return cls(cfg.device_rate, cfg.device_burst, cfg.abuse_strikes, cfg.write_buffer_limit)


@dataclass(frozen=True, slots=True)
class SessionPorts:
    """Everything a session may call, the same for every connection of one app: it
    hands its frames to ``dispatch`` and its loss to ``lost``, and never sees the app."""

    dispatch: Callable[[Session, str | bytes], Awaitable[None] | None]
    lost: Callable[[Session], None]
    limits: SessionLimits
    metrics: Metrics
    log: JsonLogger
    #: ``None`` on a single node: live frames arrive in order and are written at once.
    order: LiveOrder | None = None


class Session:
    __slots__ = (
        "_limit",
        "_ports",
        "bucket",
        "challenge",
        "closed",
        "conn",
        "device",
        "last_sent",
        "live",
        "overflow",
        "pending",
        "pending_bytes",
        "preauth",
        "remote",
        "replay_task",
        "resumed",
        "room_pending",
        "room_sent",
        "strikes",
        "timer",
        "user",
    )

    def __init__(self, conn: Connection, ports: SessionPorts) -> None:
        cfg = ports.limits
        self._ports = ports
        self.conn = conn
        self.remote = conn.remote
        self.user: str | None = None
        self.device: str | None = None
        self.challenge: Challenge | None = None
        self.bucket = TokenBucket(cfg.device_rate, cfg.device_burst)
        self.strikes = Strikes(cfg.abuse_strikes)
        self.resumed = False
        self.live = False
        self.pending: list[tuple[int, str]] = []
        self.pending_bytes = 0
        self.overflow = False
        self.last_sent = 0
        #: Rooms: the last serverSeq written per room, and live room frames held during replay.
        self.room_sent: dict[str, int] = {}
        self.room_pending: list[tuple[str, int, str]] = []
        self.replay_task: asyncio.Task[None] | None = None
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None  # the pre-auth deadline
        self.preauth = False  # counted in the app's pre-auth budget
        self._limit = cfg.write_buffer_limit

    @property
    def key(self) -> tuple[str, str]:
        if self.user is None or self.device is None:
            raise WireFailure("unauthorized", "authenticate first")
        return (self.user, self.device)

    # --- writing --------------------------------------------------------------------

    def write(self, text: str) -> None:
        """Queue one text frame; flushed at the end of this event-loop turn."""
        if not self.closed:
            self.conn.write(text)

    def write_binary(self, head: bytes, data: bytes = b"") -> None:
        """Queue one binary frame of ``head`` and ``data`` (a file chunk's message, not
        joined into one), flushed with the text frames."""
        if not self.closed:
            self.conn.write_binary(head, data)

    def buffered(self) -> int:
        return self.conn.buffered()

    # --- what the transport calls (transport.Peer) ------------------------------------

    def message(self, data: str | bytes) -> Awaitable[None] | None:
        if self.closed:
            return None
        return self._ports.dispatch(self, data)

    def slow(self) -> None:
        self.close(CLOSE_SLOW_CONSUMER, "client reads too slowly, resume")

    def lost(self) -> None:
        self._ports.lost(self)

    def reply(self, event: str, data: dict[str, Any], request_id: str | None) -> None:
        self.write(frame(event, data, request_id))

    def error(
        self, failure: WireFailure, request_id: str | None, message_id: str | None = None
    ) -> None:
        self._ports.metrics.error(failure.code)
        err = WireError(
            code=failure.code,
            message=failure.message,
            retryable=failure.retryable,
            retryAfterMs=failure.retry_after_ms,
            messageId=message_id,
            details=failure.details,
        )
        self.write(frame(ERROR, err.to_data(), request_id))

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._ports.metrics.closed(code)
        self._ports.log.info(
            "connection.close", closeCode=code, reason=reason, userId=self.user,
            deviceId=self.device,
        )
        # What is queued goes first, then the close frame; no waiting for the peer.
        self.conn.close(code, reason)

    # --- stored frames, in globalInboxSeq order ----------------------------------------

    def deliver(self, seq: int, text: str) -> None:
        if seq <= self.last_sent:
            return
        if not self.live:
            if self._may_hold(len(self.pending), text):
                self.pending.append((seq, text))
            return
        order = self._ports.order
        if order is not None:
            # Several nodes commit for this device: frames may arrive out of order.
            order.deliver_live(self, seq, text)
            return
        self.last_sent = seq
        if not self.closed:  # self.write, inline: once per live frame
            self.conn.write(text)

    def deliver_room(self, room_id: str, seq: int, text: str) -> None:
        """A stored room frame: per room in serverSeq order, once per connection (as
        :meth:`deliver`, with the room's serverSeq in place of the globalInboxSeq)."""
        if not self.live:
            if self._may_hold(len(self.room_pending), text):
                self.room_pending.append((room_id, seq, text))
            return
        sent = self.room_sent
        if seq <= sent.get(room_id, 0):
            return
        order = self._ports.order
        if order is not None:
            # Several nodes commit for this room: frames may arrive out of order.
            order.deliver_room_live(self, room_id, seq, text)
            return
        sent[room_id] = seq
        self.write(text)

    def _may_hold(self, held: int, text: str) -> bool:
        """Whether a live stored frame may wait for replay.done (``held`` of its kind wait
        already). Past the budget every held copy is dropped: they are stored frames
        only, and the replay reads them again (``overflow``)."""
        if self.overflow:
            return False
        self.pending_bytes += len(text)
        if held < PENDING_MAX and self.pending_bytes <= self._limit:
            return True
        self.drop_held()
        self.overflow = True
        return False

    def drop_held(self) -> None:
        """Forget the live frames held for replay.done: a replay about to read storage
        carries them (they are committed)."""
        self.pending.clear()
        self.room_pending.clear()
        self.pending_bytes = 0
        self.overflow = False

    def deliver_ephemeral(self, text: str) -> None:
        self.write(text)
