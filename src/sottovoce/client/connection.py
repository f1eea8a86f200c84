"""The authenticated WebSocket of one device, kept up for as long as the client runs.

    ┌──────────── run loop ────────────────────────────────────────────────┐
    │ connect ─► challenge ─► auth ─► connected ─► on_open (resume, outbox)│
    │    ▲                                          │                      │
    │    │                          reader ─► requests' futures / on_event │
    │    │                          writer ◄─ one queue (order preserved)  │
    │    │                          keepalive: ping every heartbeatMs      │
    │    └── backoff: min(cap, base·2^n), half jitter, ≥ retryAfterMs ◄── closed
    └──────────────────────────────────────────────────────────────────────┘

This module only moves frames: what a frame means is decided by the event table in
``client.py`` (thin edges: docs/architecture.md §Rules). It is written against a
tiny :class:`Transport` so that the client logic can be tested with an in-memory
transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from sottovoce.client.errors import NotConnected, ServerError
from sottovoce.client.proof_of_work import with_cap, with_proof
from sottovoce.connect_failure import describe_failure
from sottovoce.errors import UsageError
from sottovoce.identity import DeviceSigningKey
from sottovoce.limits import KEEPALIVE_INTERVAL_MS, MAX_FRAME_BYTES
from sottovoce.protocol import events as ev
from sottovoce.protocol.blobs import BLOB_CHUNK, OP_CHUNK, unpack_chunk
from sottovoce.protocol.fields import ProtocolError, req_b64

WS_PATH = "/v3/ws"
#: How long a handshake step or a request may take before the attempt is abandoned.
REQUEST_TIMEOUT_S = 15.0
#: Reconnect backoff: first delay, ceiling.
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 15.0

_jitter = secrets.SystemRandom()


def ws_url(server_url: str) -> str:
    """``ws://host:port`` → ``ws://host:port/v3/ws`` (a URL already ending in it is kept)."""
    url = server_url.rstrip("/")
    if not url.startswith(("ws://", "wss://")) or len(url) <= len("wss://"):
        raise BadServerUrl(server_url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not 0-65535
    except ValueError:
        raise BadServerUrl(server_url, "is not ws://HOST:PORT (a port is 1-65535)") from None
    if "@" in parts.netloc:
        # Devices sign in with their keys; a password in the URL would be stored and shown.
        raise BadServerUrl("", "must not hold a user name or password (devices sign in "
                               "with their keys)")
    if not parts.hostname:
        raise BadServerUrl(server_url, "has no host (ws://HOST:PORT)")
    return url if url.endswith(WS_PATH) else url + WS_PATH


class BadServerUrl(UsageError, ValueError):
    """A server URL that is not ``ws://HOST:PORT`` or ``wss://HOST:PORT``; ``url`` is what
    was given (empty when it must not be shown), ``problem`` what is wrong with it."""

    def __init__(self, url: str, problem: str = "") -> None:
        super().__init__(f"the server URL {problem or 'must start with ws:// (or wss:// for TLS)'}")
        self.url = url
        self.problem = problem


def backoff_delay(
    attempt: int,
    retry_after_ms: int = 0,
    *,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
) -> float:
    """Exponential backoff with half jitter, never shorter than the server's retryAfterMs."""
    ceiling = min(cap_s, base_s * (2 ** min(attempt, 16)))
    delay: float = ceiling / 2 + _jitter.uniform(0, ceiling / 2)
    return max(delay, retry_after_ms / 1000)


# =============================================================================
# Transport
# =============================================================================


class TransportClosed(Exception):
    """The connection is gone (closed by either side, or the network failed)."""


class Transport(Protocol):
    async def send(self, text: str | bytes | bytearray) -> None: ...

    async def recv(self) -> str | bytes: ...

    async def close(self) -> None: ...


Connector = Callable[[str], Awaitable[Transport]]


class _WebSocketTransport:
    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    async def send(self, text: str | bytes | bytearray) -> None:
        try:
            await self._ws.send(text)
        except websockets.ConnectionClosed:
            raise TransportClosed from None

    async def recv(self) -> str | bytes:
        try:
            return await self._ws.recv()
        except websockets.ConnectionClosed:
            raise TransportClosed from None

    async def close(self) -> None:
        await self._ws.close()


async def websocket_connector(url: str) -> Transport:
    try:
        ws = await ws_connect(
            url,
            max_size=MAX_FRAME_BYTES,
            open_timeout=REQUEST_TIMEOUT_S,
            compression=None,  # ciphertext does not compress; deflate only costs CPU
            ping_interval=KEEPALIVE_INTERVAL_MS / 1000,
            ping_timeout=KEEPALIVE_INTERVAL_MS / 1000,
            close_timeout=2,
        )
    except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
        raise TransportClosed(describe_failure(exc)) from None
    return _WebSocketTransport(ws)


# =============================================================================
# Handshake
# =============================================================================


async def recv_event(
    transport: Transport, timeout: float = REQUEST_TIMEOUT_S
) -> tuple[str, str | None, dict[str, Any]]:
    try:
        text = await asyncio.wait_for(transport.recv(), timeout)
    except TimeoutError:
        raise TransportClosed("timed out waiting for the server") from None
    return ev.parse_frame(text)


def server_error(data: dict[str, Any]) -> ServerError:
    try:
        err = ev.WireError.from_data(data)
    except ProtocolError:
        return ServerError("bad_error", "malformed error from the server")
    return ServerError(
        err.code,
        err.message,
        retryable=err.retryable,
        retry_after_ms=err.retryAfterMs,
        details=err.details,
    )


async def read_challenge(transport: Transport) -> bytes:
    event, _, data = await recv_event(transport)
    if event == ev.ERROR:
        raise server_error(data)
    if event != ev.CHALLENGE:
        raise ServerError("bad_handshake", f"expected {ev.CHALLENGE}, got {event}")
    try:
        return req_b64(data, "nonce", max_bytes=256)
    except ProtocolError:
        raise ServerError("bad_handshake", "challenge has no nonce") from None


def sign_challenge(key: DeviceSigningKey, nonce: bytes, username: str, device_id: str) -> bytes:
    return key.sign(ev.auth_message(nonce, username, device_id))


async def expect_reply(transport: Transport, wanted: frozenset[str]) -> tuple[str, dict[str, Any]]:
    """Read frames until one of ``wanted`` arrives (handshake only: nothing else is pending)."""
    while True:
        event, _, data = await recv_event(transport)
        if event == ev.ERROR:
            raise server_error(data)
        if event in wanted:
            return event, data


# =============================================================================
# The connection
# =============================================================================


@dataclass(frozen=True, slots=True)
class ConnectedInfo:
    user_id: str
    device_id: str
    latest_global_inbox_seq: int
    heartbeat_ms: int


FrameHandler = Callable[[str, str | None, dict[str, Any]], None]


@dataclass(eq=False, repr=False)
class Connection:
    """Keeps one authenticated connection up; hands unsolicited frames to ``on_frame``."""

    url: str
    _: KW_ONLY
    username: str
    device_id: str
    device_key: DeviceSigningKey
    on_frame: FrameHandler
    on_open: Callable[[ConnectedInfo], Awaitable[None]]
    on_down: Callable[[BaseException | None], None]
    connector: Connector = websocket_connector

    def __post_init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._transport: Transport | None = None
        self._outq: asyncio.Queue[str | bytes | bytearray] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[tuple[str, dict[str, Any]]]] = {}
        self._next_request = 0
        self._up = asyncio.Event()
        self._closing = False
        self._retry_after_ms = 0
        self._last_rx = 0.0
        self.backoff_base_s = BACKOFF_BASE_S
        #: The capability a strict account granted us, by its name (client/discovery.py).
        self.cap_for: Callable[[str], bytes | None] | None = None
        self.backoff_cap_s = BACKOFF_CAP_S
        self.fatal: ServerError | None = None
        self.info: ConnectedInfo | None = None
        self.attempts = 0
        #: Why the last attempt that never came up failed (``None`` once up again).
        self.last_failure: str | None = None
        self._failed = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sottovoce-conn")

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    async def wait_up(self, timeout: float, *, fail_fast: bool = False) -> None:
        """Wait until connected; ``fail_fast``: give up at the first failed attempt.

        The connection keeps retrying in the background either way.
        """
        if self.fatal is not None:
            raise self.fatal
        if self._up.is_set():
            return
        up = asyncio.ensure_future(self._up.wait())
        waiters = [up]
        if fail_fast:
            self._failed.clear()
            waiters.append(asyncio.ensure_future(self._failed.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if up.done() and not up.cancelled():
            return  # it was up (it may be down again already: the caller's request says so)
        if self.fatal is not None:
            raise self.fatal
        if fail_fast and self.last_failure is not None:
            raise NotConnected(f"cannot reach the server: {self.last_failure}")
        raise NotConnected("the server is not reachable")

    async def close(self) -> None:
        self._closing = True
        transport = self._transport
        if transport is not None:
            with contextlib.suppress(Exception):
                await transport.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def drop(self) -> None:
        """Close the current connection (the run loop reconnects); for tests and keepalive."""
        transport = self._transport
        if transport is not None:
            with contextlib.suppress(Exception):
                await transport.close()

    # --- sending --------------------------------------------------------------------

    def send_frame(self, text: str) -> bool:
        """Queue a frame on the live connection; ``False`` if there is none."""
        if not self._up.is_set():
            return False
        self._outq.put_nowait(text)
        return True

    def send_frame_opening(self, text: str) -> None:
        """Queue a frame during ``on_open`` (before the connection is marked up)."""
        self._outq.put_nowait(text)

    def mark_up(self) -> None:
        """Called by ``on_open`` once resume is sent and the outbox is queued."""
        self.last_failure = None
        self._up.set()

    async def request(
        self,
        event: ev.ClientEvent,
        expect: frozenset[str],
        *,
        timeout: float = REQUEST_TIMEOUT_S,
        wait_up: bool = True,
    ) -> tuple[str, dict[str, Any]]:
        """Send ``event`` and wait for its reply (matched by requestId); a request the
        server wants a proof of work for is solved and sent again (client/proof_of_work.py)."""
        async def ask(e: ev.ClientEvent) -> tuple[str, dict[str, Any]]:
            return await self.request_built(e.to_frame, expect, timeout=timeout,
                                            wait_up=wait_up)

        return await with_proof(with_cap(event, self.cap_for), ask)

    async def request_built(
        self,
        build: Callable[[str], str | bytes | bytearray],
        expect: frozenset[str],
        *,
        timeout: float = REQUEST_TIMEOUT_S,
        wait_up: bool = True,
        request_id: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Send the frame ``build(requestId)`` makes (text, or a binary file chunk:
        protocol/blobs.py) and wait for its reply; ``request_id``: one taken before from
        :meth:`new_request_id` (a chunk's message is made with it, off the event loop)."""
        if wait_up:
            await self.wait_up(timeout)
        if request_id is None:
            request_id = self.new_request_id()
        future: asyncio.Future[tuple[str, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[request_id] = future
        try:
            self._outq.put_nowait(build(request_id))
            name, data = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise NotConnected("the server did not answer in time") from None
        finally:
            self._pending.pop(request_id, None)
        if name == ev.ERROR:
            raise server_error(data)
        if name not in expect:
            raise ServerError("unexpected_reply", f"expected {sorted(expect)}, got {name}")
        return name, data

    def new_request_id(self) -> str:
        self._next_request += 1
        return f"r{self._next_request}"

    # --- the run loop -----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            error: BaseException | None = None
            try:
                await self._session()
                attempt = 0
            except ServerError as exc:
                error = exc
                self._retry_after_ms = max(self._retry_after_ms, exc.retry_after_ms)
                if not exc.retryable and exc.code not in ("server_busy", "unavailable"):
                    self.fatal = exc
            except (TransportClosed, OSError, ProtocolError) as exc:
                error = exc
            except Exception as exc:  # a bug on our side must not end reconnecting
                error = exc
            finally:
                self._teardown(error)
            if self.fatal is not None or self._closing:
                return
            delay = backoff_delay(
                attempt, self._retry_after_ms, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s
            )
            self._retry_after_ms = 0
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        self.attempts += 1
        transport = await self.connector(self.url)
        self._transport = transport
        nonce = await read_challenge(transport)
        auth = ev.Auth(
            username=self.username,
            deviceId=self.device_id,
            signature=sign_challenge(self.device_key, nonce, self.username, self.device_id),
        )
        await transport.send(auth.to_frame())
        _, data = await expect_reply(transport, frozenset({ev.CONNECTED}))
        heartbeat = data.get("heartbeatMs")
        latest = data.get("latestGlobalInboxSeq")
        self.info = ConnectedInfo(
            user_id=str(data.get("userId", self.username)),
            device_id=str(data.get("deviceId", self.device_id)),
            latest_global_inbox_seq=latest if isinstance(latest, int) else 0,
            heartbeat_ms=heartbeat
            if isinstance(heartbeat, int) and heartbeat > 0
            else KEEPALIVE_INTERVAL_MS,
        )
        self._outq = asyncio.Queue()
        self._last_rx = time.monotonic()
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self._writer(transport, self._outq))
        reader = loop.create_task(self._reader(transport))
        keepalive = loop.create_task(self._keepalive(transport, self.info.heartbeat_ms))
        try:
            await self.on_open(self.info)
            done, _ = await asyncio.wait(
                {writer, reader, keepalive}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            for task in (writer, reader, keepalive):
                task.cancel()
            for task in (writer, reader, keepalive):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await transport.close()

    def _teardown(self, error: BaseException | None) -> None:
        was_up = self._up.is_set()
        self._up.clear()
        self._transport = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NotConnected("the connection dropped"))
        self._pending.clear()
        if error is not None and not was_up:
            # Only our own wording: TransportClosed holds describe_failure()'s text.
            said = str(error) if isinstance(error, TransportClosed | ServerError) else ""
            self.last_failure = said or type(error).__name__
            self._failed.set()
        if was_up or error is not None:
            self.on_down(error)

    async def _writer(
        self, transport: Transport, queue: asyncio.Queue[str | bytes | bytearray]
    ) -> None:
        while True:
            text = await queue.get()
            await transport.send(text)

    async def _reader(self, transport: Transport) -> None:
        while True:
            text = await transport.recv()
            self._last_rx = time.monotonic()
            if isinstance(text, bytes):
                self._binary(text)
                continue
            try:
                event, request_id, data = ev.parse_frame(text)
            except ProtocolError:
                continue  # a broken frame from the server is dropped, not fatal
            if event == ev.PONG:
                continue
            if request_id is not None and request_id in self._pending:
                future = self._pending.pop(request_id)
                if not future.done():
                    future.set_result((event, data))
                continue
            if event == ev.ERROR and not data.get("messageId") and request_id is None:
                # A connection-level error: honour retryAfterMs on the next reconnect.
                retry_after = data.get("retryAfterMs")
                if isinstance(retry_after, int):
                    self._retry_after_ms = max(self._retry_after_ms, retry_after)
            self.on_frame(event, request_id, data)

    def _binary(self, message: bytes) -> None:
        """A file chunk answering a ``sottovoce.blob.get``; anything else is dropped."""
        try:
            chunk = unpack_chunk(message)
        except ProtocolError:
            return
        future = self._pending.pop(chunk.request_id, None)
        if chunk.op == OP_CHUNK and future is not None and not future.done():
            future.set_result((BLOB_CHUNK, {"blobId": chunk.blob_id, "index": chunk.index,
                                            "data": chunk.data}))

    async def _keepalive(self, transport: Transport, heartbeat_ms: int) -> None:
        interval = heartbeat_ms / 1000
        ping = ev.Ping().to_frame()
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_rx > 2 * interval + 5:
                raise TransportClosed("keepalive timed out")
            self._outq.put_nowait(ping)
