"""One WebSocket connection of one device: auth state, limits, and corked writes.

Writes never await: a frame is appended to the connection's protocol buffer
and all frames queued in one turn of the event loop go out in one
``transport.write`` (a whole group-commit batch of acks and inbox frames
costs one syscall per socket, DESIGN §9). A client that cannot keep up —
its write buffer passes ``write_buffer_limit`` — is closed with 1013 and
resumes from its last globalInboxSeq; stored frames are never lost that way.

Stored frames reach a device in globalInboxSeq order, each exactly once per
connection:

    not resumed ──resume──► replaying ──replay.done──► live
    (buffer live frames)   (buffer live frames)       (write at once)

Live frames that arrive while replaying are buffered and written after
``sottovoce.replay.done`` unless the replay already carried them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from sottovoce.protocol.events import ERROR, WireError, frame
from sottovoce.server.auth import Challenge
from sottovoce.server.errors import CLOSE_SLOW_CONSUMER, WireFailure
from sottovoce.server.ratelimit import Strikes, TokenBucket

if TYPE_CHECKING:
    from sottovoce.server.app import ServerApp

#: Live frames buffered during a replay (at most write_buffer_limit bytes of them)
#: before we drop them and fall back to re-reading storage.
PENDING_MAX = 10_000


class Session:
    __slots__ = (
        "_limit",
        "_loop",
        "_out",
        "_scheduled",
        "app",
        "bucket",
        "challenge",
        "close_task",
        "closed",
        "device",
        "last_sent",
        "live",
        "overflow",
        "pending",
        "pending_bytes",
        "remote",
        "replay_task",
        "resumed",
        "room_pending",
        "room_sent",
        "strikes",
        "user",
        "ws",
    )

    def __init__(self, app: ServerApp, ws: ServerConnection, remote: str) -> None:
        cfg = app.config
        self.app = app
        self.ws = ws
        self.remote = remote
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
        self.close_task: asyncio.Task[None] | None = None
        self._limit = cfg.write_buffer_limit
        self._loop = asyncio.get_running_loop()
        self._scheduled = False
        self._out: list[bytes] = []

    @property
    def key(self) -> tuple[str, str]:
        if self.user is None or self.device is None:
            raise WireFailure("unauthorized", "authenticate first")
        return (self.user, self.device)

    # --- writing --------------------------------------------------------------------

    def write(self, text: str) -> None:
        """Queue one text frame; flushed at the end of this event-loop turn.

        The server runs without extensions (``compression=None``) and never
        fragments, so a frame is the RFC 6455 §5.2 header plus the payload,
        unmasked (server to client): built here, it costs a fraction of the
        generic path through ``protocol.send_text``.
        """
        if self.closed or self.ws.protocol.state is not State.OPEN:
            return
        data = text.encode()
        n = len(data)
        out = self._out
        if n < 126:
            out.append(bytes((0x81, n)))
        elif n < 65536:
            out.append(b"\x81\x7e" + n.to_bytes(2, "big"))
        else:
            out.append(b"\x81\x7f" + n.to_bytes(8, "big"))
        out.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        ws = self.ws
        # websockets' own frames (pong, close) first, then ours, unless it is closing:
        # after its close frame nothing may follow (RFC 6455 §5.5.1).
        chunks = ws.protocol.data_to_send()
        ours, self._out = self._out, []
        if ws.protocol.state is State.OPEN:
            chunks.extend(ours)
        if not chunks:
            return
        transport = ws.transport
        if all(chunks):
            transport.write(b"".join(chunks))
        else:  # the protocol is closing: an empty chunk means end of stream
            for c in chunks:
                if c:
                    transport.write(c)
                elif transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()
            return
        if transport.get_write_buffer_size() > self._limit:
            self.close(CLOSE_SLOW_CONSUMER, "client reads too slowly, resume")

    def buffered(self) -> int:
        return int(self.ws.transport.get_write_buffer_size())

    def reply(self, event: str, data: dict[str, Any], request_id: str | None) -> None:
        self.write(frame(event, data, request_id))

    def error(
        self, failure: WireFailure, request_id: str | None, message_id: str | None = None
    ) -> None:
        self.app.metrics.error(failure.code)
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
        self.app.metrics.closed(code)
        self.app.log.info(
            "connection.close", closeCode=code, reason=reason, userId=self.user,
            deviceId=self.device,
        )
        # Flush what is queued, then close without waiting for the peer.
        self._flush()
        # The connection handler awaits this before returning, so that our code
        # (not websockets' default 1000) is the one the client sees.
        self.close_task = self._loop.create_task(self.ws.close(code, reason))

    # --- stored frames, in globalInboxSeq order ----------------------------------------

    def deliver(self, seq: int, text: str) -> None:
        if seq <= self.last_sent:
            return
        if not self.live:
            if self.overflow:
                return
            self.pending_bytes += len(text)
            if len(self.pending) < PENDING_MAX and self.pending_bytes <= self._limit:
                self.pending.append((seq, text))
            else:
                # Stored frames only: drop the copies, the replay reads them again.
                self.overflow = True
                self.pending.clear()
                self.pending_bytes = 0
            return
        if self.app.fanout.remote:
            # Several nodes commit for this device: frames may arrive out of order.
            self.app.fanout.deliver_live(self, seq, text)
            return
        self.last_sent = seq
        self.write(text)

    def deliver_room(self, room_id: str, seq: int, text: str) -> None:
        """A stored room frame: per room in serverSeq order, once per connection (as
        :meth:`deliver`, with the room's serverSeq in place of the globalInboxSeq)."""
        if not self.live:
            if self.overflow:
                return
            self.pending_bytes += len(text)
            if len(self.room_pending) < PENDING_MAX and self.pending_bytes <= self._limit:
                self.room_pending.append((room_id, seq, text))
            else:
                # Stored frames only: the replay reads them again.
                self.overflow = True
                self.pending.clear()
                self.room_pending.clear()
                self.pending_bytes = 0
            return
        sent = self.room_sent
        if seq <= sent.get(room_id, 0):
            return
        if self.app.fanout.remote:
            # Several nodes commit for this room: frames may arrive out of order.
            self.app.fanout.deliver_room_live(self, room_id, seq, text)
            return
        sent[room_id] = seq
        self.write(text)

    def deliver_ephemeral(self, text: str) -> None:
        self.write(text)
