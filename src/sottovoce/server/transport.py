"""The relay's WebSocket transport: an asyncio Protocol around websockets' sans-IO core.

``websockets.asyncio`` gives every frame a future, a queue slot and a task
wake-up before the application sees it; at 10k+ frames/s that was a third of
the relay's event-loop time (docs/architecture.md §Hot path). Here the bytes of one
``data_received`` call go through :class:`websockets.server.ServerProtocol`
(``receive_data`` → ``events_received`` → ``data_to_send``) and every complete
message is handed to the :class:`Peer` synchronously, in order. Writes are
framed here and corked: everything queued in one loop turn leaves in one
``transport.write``.

    connection_made ──► CONNECTING ──request──► process_request ─┬─ None ──► 101 ──► OPEN
        (open timeout: abort)                                     └─ Response ──► EOF
    OPEN ──data──► frames ──► peer.message(text) ─► None: next frame
                                                 └► awaitable: later frames wait (in order)
    OPEN ──close(code) / peer's close / error / ping timeout──► CLOSING ──► EOF
        (close timeout: close, then abort)                              ──► connection_lost
                                                                           ──► peer.lost()

Backpressure: reading pauses while the peer's async work holds back more than
``MAX_PENDING_FRAMES`` frames, or while our write buffer is above its high
mark (the client is not reading its replies), so a client cannot make the
server buffer without bound. A client whose write buffer passes
``write_limit`` is reported to the peer (``peer.slow()``, which closes 1013).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from websockets.datastructures import Headers
from websockets.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PONG, OP_TEXT, CloseCode, Frame
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, State
from websockets.server import ServerProtocol

try:  # websockets' C unmasking, as its own frame parser uses
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a build without the extension
    from websockets.utils import apply_mask

from sottovoce.limits import (
    CLOSE_TIMEOUT_MS,
    MAX_PENDING_FRAMES,
    MAX_REQUEST_BYTES,
    OPEN_TIMEOUT_MS,
)

# websockets logs every open/close at INFO on this logger; the app logs its own events.
_WS_LOG = logging.getLogger("sottovoce.server.ws")
_WS_LOG.setLevel(logging.WARNING)

#: Unmasked text frame headers (RFC 6455 §5.2): the 2-byte ones for payloads under 126
#: bytes, and the packer of the 4-byte ones (126, then a 16-bit length).
_TEXT_HEADS = tuple(bytes((0x81, n)) for n in range(126))
_HEAD16 = struct.Struct(">BBH").pack

#: Reasons reading is paused (a bit each); reading resumes when none is left.
_HOLD_BACKLOG = 1
_HOLD_WRITES = 2


class Peer(Protocol):
    """What the transport calls; the server's :class:`~sottovoce.server.session.Session`."""

    def message(self, data: str | bytes) -> Awaitable[None] | None:
        """A complete message; an awaitable holds back the next ones until it is done."""

    def slow(self) -> None:
        """Our write buffer passed ``write_limit``: the client does not read."""

    def lost(self) -> None:
        """The TCP connection is gone (called once, for every opened connection)."""


#: None: accept the WebSocket; a response (or, for a plain HTTP GET, an awaitable of
#: one) refuses it with that response.
RequestHook = Callable[[str, Request], Response | Awaitable[Response] | None]
Opener = Callable[["Connection"], Peer]


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportConfig:
    max_size: int  # per message; larger closes with 1009
    write_limit: int  # write buffer beyond which peer.slow() is called
    ping_interval: float  # seconds between keepalive pings
    ping_timeout: float  # seconds to wait for the pong before closing 1011
    server_header: str
    open_timeout: float = OPEN_TIMEOUT_MS / 1000
    close_timeout: float = CLOSE_TIMEOUT_MS / 1000


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; after the upgrade, one WebSocket."""

    def __init__(self, server: LeanServer) -> None:
        self._server = server
        self._cfg = server.config
        self._loop = asyncio.get_running_loop()
        self._proto = ServerProtocol(max_size=self._cfg.max_size, logger=_WS_LOG)
        self._transport: asyncio.Transport | None = None
        self._peer: Peer | None = None
        self.remote = "unknown"
        #: True from the 101 until we send or receive a close frame.
        self.open = False
        self._out: list[bytes] = []
        self._eof = False  # the protocol asked for end-of-stream after _out
        self._scheduled = False
        self._lost = False
        self._holds = 0
        self._backlog: deque[str | bytes] = deque()
        self._busy: asyncio.Future[None] | None = None
        self._fragments: list[bytes] | None = None
        self._fragment_text = False
        self._buf = b""  # unparsed bytes: a partial request or a partial frame
        self._sansio_only = False  # an odd handshake: websockets parses everything
        self._ping: bytes | None = None
        self._timer: asyncio.TimerHandle | None = None  # open / keepalive timer
        self._closer: asyncio.TimerHandle | None = None  # close timeout

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # create_server: a stream
        addr = transport.get_extra_info("peername")
        if isinstance(addr, tuple) and addr:
            self.remote = str(addr[0])
        self._server.connections.add(self)
        self._timer = self._loop.call_later(self._cfg.open_timeout, self.abort)
        high = min(self._cfg.write_limit // 2, 1 << 20)
        self._transport.set_write_buffer_limits(high=high, low=high // 4)

    def data_received(self, data: bytes) -> None:
        if self.open and not self._sansio_only:
            self._frames(data)
        elif self._peer is None and not self._sansio_only:
            self._request(data)
        else:
            self._feed(data)

    def _feed(self, data: bytes | bytearray) -> None:
        """The general route: websockets' parser for everything but whole text frames."""
        proto = self._proto
        try:
            proto.receive_data(data)
        except EOFError:  # data after the stream ended: nothing to parse
            return
        events = proto.events_received()
        if events:
            self._events(events)
        self._take_protocol_writes()

    def _request(self, data: bytes) -> None:
        """Give the protocol exactly the HTTP request (it has no body), nothing after it,
        so that its frame parser sits at a frame boundary once the connection is open."""
        buf = self._buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_REQUEST_BYTES:  # let websockets judge (and refuse) it
                self._sansio_only = True
                self._buf = b""
                self._feed(buf)
            else:
                self._buf = buf
            return
        self._buf = b""
        self._feed(buf[: end + 4])
        rest = buf[end + 4 :]
        if rest and self.open:
            self.data_received(rest)

    def _frames(self, data: bytes) -> None:
        """The hot path: whole, masked, unfragmented text and binary frames (RFC 6455
        §5.2) are unmasked and dispatched here; any other frame goes, whole, to the
        protocol (control frames, fragments, RSV bits, oversize, unmasked). The
        protocol is only ever given whole frames while open, so its parser is at a
        frame boundary whenever this path takes a frame.

        While reading is held (backlog full, or the client not reading our writes)
        nothing more is parsed: the rest of this read stays raw bytes in ``_buf``
        until the hold ends (``_release``), so one read full of tiny frames cannot
        become thousands of queued messages."""
        if self._buf:
            data = self._buf + data
            self._buf = b""
        view = memoryview(data)
        n = len(data)
        pos = 0
        max_size = self._cfg.max_size
        while self.open:
            if n - pos < 2 or self._holds:
                break
            b1 = data[pos]
            b2 = data[pos + 1]
            size = b2 & 0x7F
            head = pos + 2
            if size == 126:
                if n - pos < 4:
                    break
                size = (data[pos + 2] << 8) | data[pos + 3]
                head = pos + 4
            elif size == 127:
                if n - pos < 10:
                    break
                size = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = pos + 10
            if size > max_size or not b2 & 0x80:
                self._feed(data[pos:])  # the protocol closes: 1009 / 1002
                return
            end = head + 4 + size
            if end > n:
                break
            if b1 == 0x81 and self._fragments is None:
                pos = end
                try:
                    text = apply_mask(view[head + 4 : end], data[head : head + 4]).decode()
                except UnicodeDecodeError:
                    self._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                    return
                peer = self._peer
                if self._busy is None and not self._backlog and peer is not None:
                    # _message and _run inline: nothing waits ahead of this frame.
                    pending = peer.message(text)
                    if pending is not None:
                        self._busy = asyncio.ensure_future(pending)
                        self._busy.add_done_callback(self._done)
                else:
                    self._message(text)
            elif b1 == 0x82 and self._fragments is None:  # a file chunk (server/blobs.py)
                self._message(apply_mask(view[head + 4 : end], data[head : head + 4]))
                pos = end
            else:
                self._feed(data[pos:end])
                pos = end
        if pos < n:
            if self.open:
                # One partial frame (≤ max_size), or the unparsed rest of one read (held).
                self._buf = data[pos:]
            else:
                self._feed(data[pos:])

    def eof_received(self) -> bool | None:
        self._proto.receive_eof()
        self._take_protocol_writes()
        self._flush()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.open = False
        for t in (self._timer, self._closer):
            if t is not None:
                t.cancel()
        self._backlog.clear()
        self._out.clear()
        self._server.connections.discard(self)
        if self._peer is not None:
            peer, self._peer = self._peer, None
            peer.lost()

    def pause_writing(self) -> None:
        self._hold(_HOLD_WRITES)

    def resume_writing(self) -> None:
        self._release(_HOLD_WRITES)
        if self._closer is not None and not self.open and not self._lost:
            self._closer.cancel()
            self._closer = self._loop.call_later(self._cfg.close_timeout, self._close_timeout)

    # --- what the session uses ----------------------------------------------------------

    def write(self, text: str) -> None:
        """Queue one text frame; flushed at the end of this event-loop turn.

        No extensions are negotiated and we never fragment, so a frame is the
        RFC 6455 §5.2 header plus the payload, unmasked (server to client).
        """
        if not self.open:
            return
        data = text.encode()
        n = len(data)
        out = self._out
        if n < 126:
            out.append(_TEXT_HEADS[n])
        elif n < 65536:
            out.append(_HEAD16(0x81, 126, n))
        else:
            out.append(b"\x81\x7f" + n.to_bytes(8, "big"))
        out.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def write_binary(self, head: bytes, data: bytes = b"") -> None:
        """Queue one binary frame whose payload is ``head`` then ``data`` (a file chunk's
        message, server/blobs.py: the chunk is not copied into one buffer), flushed as
        ``write``."""
        if not self.open:
            return
        n = len(head) + len(data)
        if n < 126:
            self._out.append(bytes((0x82, n)))
        elif n < 65536:
            self._out.append(b"\x82\x7e" + n.to_bytes(2, "big"))
        else:
            self._out.append(b"\x82\x7f" + n.to_bytes(8, "big"))
        self._out.append(head)
        if data:
            self._out.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def buffered(self) -> int:
        t = self._transport
        return 0 if t is None else t.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        """Queued frames, then a close frame (RFC 6455 §5.5.1); the TCP close follows."""
        if not self.open or self._proto.state is not OPEN:
            return
        self._proto.send_close(code, reason)
        self._take_protocol_writes()
        self._flush()

    def abort(self) -> None:
        if self._transport is not None and not self._lost:
            self._transport.abort()

    # --- reading ------------------------------------------------------------------------

    def _events(self, events: list[Request | Response | Frame]) -> None:
        for ev in events:
            if type(ev) is not Frame:
                if isinstance(ev, Request):
                    self._handshake(ev)
                continue
            if not self.open:
                # Closing: the protocol still reports the peer's close frame and
                # control frames; data that raced our close frame is dropped.
                if ev.opcode is OP_CLOSE:
                    self._closing()
                continue
            op = ev.opcode
            if op is OP_TEXT or op is OP_BINARY:
                if not ev.fin:
                    self._fragments = [bytes(ev.data)]
                    self._fragment_text = op is OP_TEXT
                    continue
                if op is OP_TEXT:
                    try:
                        text = bytes(ev.data).decode()
                    except UnicodeDecodeError:
                        self._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                        return
                    self._message(text)
                else:
                    self._message(bytes(ev.data))
            elif op is OP_CONT:
                if self._fragments is None:  # ServerProtocol already refuses this
                    continue
                self._fragments.append(bytes(ev.data))
                if ev.fin:
                    whole = b"".join(self._fragments)
                    self._fragments = None
                    if self._fragment_text:
                        if not self._text(whole):
                            return
                    else:
                        self._message(whole)
            elif op is OP_PONG:
                if self._ping is not None and ev.data == self._ping:
                    self._ping = None
                    self._keepalive()
            elif op is OP_CLOSE:  # the protocol echoed it and asked for EOF
                self._closing()
            # OP_PING: the protocol queued the pong already.

    def _text(self, payload: bytes) -> bool:
        """A whole text message on to the peer; invalid UTF-8 fails the connection (1007)."""
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            self._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
            return False
        self._message(text)
        return True

    def _message(self, data: str | bytes) -> None:
        if self._busy is not None or self._backlog:
            # Earlier async work is not done: keep this connection's order.
            self._backlog.append(data)
            if len(self._backlog) >= MAX_PENDING_FRAMES:
                self._hold(_HOLD_BACKLOG)
            return
        self._run(data)

    def _run(self, data: str | bytes) -> None:
        peer = self._peer
        if peer is None:
            return
        pending = peer.message(data)
        if pending is not None:
            self._busy = asyncio.ensure_future(pending)
            self._busy.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[None]) -> None:
        self._busy = None
        if not fut.cancelled() and fut.exception() is not None:
            # The session turns handler errors into ksmpv3.error; this is a bug there.
            _WS_LOG.error("message handler failed: %s", type(fut.exception()).__name__)
        backlog = self._backlog
        while backlog and self._busy is None and self.open:
            self._run(backlog.popleft())
        if len(backlog) < MAX_PENDING_FRAMES // 2:
            self._release(_HOLD_BACKLOG)

    def _hold(self, reason: int) -> None:
        if not self._holds and self._transport is not None and not self._lost:
            self._transport.pause_reading()
        self._holds |= reason

    def _release(self, reason: int) -> None:
        if not self._holds & reason:
            return
        self._holds &= ~reason
        if self._holds or self._transport is None or self._lost:
            return
        if self._buf and self.open and not self._sansio_only:
            self._frames(b"")  # what was read but left unparsed while held
            if self._holds:
                return
        self._transport.resume_reading()

    # --- handshake ----------------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        proto = self._proto
        server = self._server
        response: Response | Awaitable[Response] | None
        try:
            response = server.process_request(self.remote, request)
        except Exception as exc:
            _WS_LOG.error("process_request failed: %s", type(exc).__name__)
            response = proto.reject(500, "Failed to open a WebSocket connection.\n")
        if response is not None and not isinstance(response, Response):
            task = self._loop.create_task(_settle(response))
            task.add_done_callback(lambda t: self._respond(request, t.result()))
            return
        self._respond(request, response)

    def _respond(self, request: Request, response: Response | None) -> None:
        proto = self._proto
        server = self._server
        if self._lost:
            return
        if response is None:
            if server.serving:
                response = proto.accept(request)
            else:
                response = proto.reject(503, "Server is shutting down.\n")
        response.headers["Server"] = self._cfg.server_header
        proto.send_response(response)
        # The response must precede anything the peer writes from opener().
        self._take_protocol_writes()
        if response.status_code != 101:
            return  # send_response queued the EOF
        if self._timer is not None:
            self._timer.cancel()
        self.open = True
        self._peer = server.opener(self)
        self._keepalive()

    # --- keepalive and closing ----------------------------------------------------------

    def _keepalive(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._cfg.ping_interval, self._send_ping)

    def _send_ping(self) -> None:
        if not self.open:
            return
        self._ping = secrets.token_bytes(4)
        self._proto.send_ping(self._ping)
        self._take_protocol_writes()
        self._timer = self._loop.call_later(self._cfg.ping_timeout, self._ping_timeout)

    def _ping_timeout(self) -> None:
        if self._ping is not None and self.open:
            self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")

    def _fail(self, code: int, reason: str) -> None:
        self._proto.fail(code, reason)
        self._take_protocol_writes()
        self._flush()

    def _closing(self) -> None:
        """Close frame sent or received: no more frames either way, TCP close soon."""
        self.open = False
        self._backlog.clear()
        if self._closer is None and not self._lost:
            cfg = self._cfg
            # A client still reading a full buffer (slow consumer, 1013) must get to the
            # close frame: the short timeout starts once our buffer drains
            # (resume_writing); until then a keepalive's worth of time.
            wait = (
                cfg.ping_interval + cfg.ping_timeout if self._holds & _HOLD_WRITES
                else cfg.close_timeout
            )
            self._closer = self._loop.call_later(wait, self._close_timeout)

    def _close_timeout(self) -> None:
        t = self._transport
        if t is None or self._lost:
            return
        if t.is_closing():
            t.abort()
        else:  # first give the buffered bytes a chance, then cut
            t.close()
            self._closer = self._loop.call_later(self._cfg.close_timeout, self._close_timeout)

    # --- writing ------------------------------------------------------------------------

    def _take_protocol_writes(self) -> None:
        """Move the protocol's bytes (handshake response, pong, close, EOF) into _out."""
        writes = self._proto.data_to_send()
        if not writes:
            return
        for chunk in writes:
            if chunk:
                self._out.append(chunk)
            else:
                self._eof = True
        if self.open and self._proto.state is not OPEN:
            self._closing()
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        t = self._transport
        if t is None or self._lost:
            return
        out = self._out
        if out:
            self._out = []
            # One gathered write (uvloop: writev): a file chunk is not copied again here.
            t.writelines(out)
        if self._eof:
            self._eof = False
            if self._proto.state is State.CONNECTING or not t.can_write_eof():
                t.close()  # an HTTP answer or rejected handshake: nothing follows
            else:
                t.write_eof()
                self._closing()
            return
        if self._peer is not None and t.get_write_buffer_size() > self._cfg.write_limit:
            self._peer.slow()


class LeanServer:
    """The listening socket and its connections."""

    def __init__(
        self, config: TransportConfig, process_request: RequestHook, opener: Opener
    ) -> None:
        self.config = config
        self.process_request = process_request
        self.opener = opener
        self.connections: set[Connection] = set()
        self.serving = False
        self._server: asyncio.Server | None = None

    async def start(
        self, host: str, port: int, *, ssl: ssl.SSLContext | None, backlog: int
    ) -> None:
        loop = asyncio.get_running_loop()
        # The open deadline starts at connection_made, i.e. after the TLS handshake:
        # bound that handshake (and the TLS shutdown) too, as websockets' serve() did,
        # or a peer that never finishes it holds a socket for asyncio's 60 s default.
        tls = ssl is not None
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, ssl=ssl, backlog=backlog,
            ssl_handshake_timeout=self.config.open_timeout if tls else None,
            ssl_shutdown_timeout=self.config.close_timeout if tls else None,
        )
        self.serving = True

    @property
    def sockets(self) -> tuple[Any, ...]:
        return () if self._server is None else tuple(self._server.sockets)

    def close(self) -> None:
        """Stop accepting; connections not yet upgraded are cut, open ones stay."""
        self.serving = False
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn._peer is None:
                conn.abort()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()


async def _settle(pending: Awaitable[Response]) -> Response | None:
    """An awaited HTTP response; a failure is answered 500 (and logged), never raised."""
    try:
        return await pending
    except Exception as exc:
        _WS_LOG.error("process_request failed: %s", type(exc).__name__)
        headers = Headers([("Content-Length", "0"), ("Connection", "close")])
        return Response(500, "Internal Server Error", headers, b"")
