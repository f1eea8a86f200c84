"""A connection to Janus: one API session over the WebSocket transport, for both ends.

The protocol itself (requests, typed replies and errors) is
:mod:`sottovoce.calls.janus`; this is the asyncio loop around it: one reader
task that routes each reply to the request waiting for it (by transaction) or to
the handle it is about (``events``), and a keepalive well inside Janus's
session timeout. A participant (``client/calls/room_media.py``) attaches a
handle per PeerConnection; the server's SFU driver (``server/sfu.py``) one handle
for its VideoRoom requests. It imports neither side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from sottovoce.calls.janus import (
    PLUGIN,
    SUBPROTOCOL,
    JanusProtocol,
    JanusReply,
    ReplyKind,
    SfuError,
    SfuUnavailable,
)
from sottovoce.crypto.rng import Random
from sottovoce.limits import MAX_SFU_MESSAGE_BYTES, SFU_KEEPALIVE_S, SFU_REQUEST_TIMEOUT_S

log = logging.getLogger(__name__)

#: Unsolicited events kept per handle before the oldest are dropped.
_MAX_QUEUED_EVENTS = 256


class JanusSession:
    """One Janus session; :meth:`attach` a VideoRoom handle per PeerConnection."""

    def __init__(self, url: str, *, rng: Random, timeout_s: float) -> None:
        self.url = url
        self._proto = JanusProtocol(rng)
        self._timeout = timeout_s
        self._ws: ClientConnection | None = None
        self.session_id: int | None = None
        self._pending: dict[str, asyncio.Future[JanusReply]] = {}
        self._events: dict[int, asyncio.Queue[JanusReply]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        rng: Random = secrets.token_bytes,
        timeout_s: float = SFU_REQUEST_TIMEOUT_S,
    ) -> JanusSession:
        session = cls(url, rng=rng, timeout_s=timeout_s)
        try:
            session._ws = await asyncio.wait_for(
                ws_connect(
                    url,
                    subprotocols=[websockets.Subprotocol(SUBPROTOCOL)],
                    max_size=MAX_SFU_MESSAGE_BYTES,
                    open_timeout=timeout_s,
                    ping_interval=None,
                ),
                timeout_s,
            )
            session._tasks.append(asyncio.ensure_future(session._read()))
            reply = await session._request({"janus": "create"})
            session.session_id = _id_of(reply)
            session._tasks.append(asyncio.ensure_future(session._keepalive()))
        except (OSError, TimeoutError, websockets.WebSocketException):
            await session.close()
            raise SfuUnavailable(f"the SFU at {url} does not answer") from None
        except SfuError:
            await session.close()
            raise
        return session

    async def attach(self) -> int:
        """A new VideoRoom plugin handle in this session."""
        reply = await self._request(
            {"janus": "attach", "plugin": PLUGIN, "session_id": self.session_id}
        )
        handle = _id_of(reply)
        self._events[handle] = asyncio.Queue(maxsize=_MAX_QUEUED_EVENTS)
        return handle

    def events(self, handle: int) -> asyncio.Queue[JanusReply]:
        """Unsolicited replies about ``handle`` (webrtcup, hangup, plugin events)."""
        return self._events[handle]

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> JanusReply:
        """A VideoRoom request on ``handle`` and its answer (an event or a success);
        the plugin's error, if any, is raised as a typed :class:`SfuError`."""
        request: dict[str, Any] = {
            "janus": "message",
            "session_id": self.session_id,
            "handle_id": handle,
            "body": body,
        }
        if jsep is not None:
            request["jsep"] = jsep
        return await self._request(request)

    async def detach(self, handle: int) -> None:
        with contextlib.suppress(SfuError):
            await self._request(
                {"janus": "detach", "session_id": self.session_id, "handle_id": handle}
            )
        self._events.pop(handle, None)

    async def _request(self, body: dict[str, Any]) -> JanusReply:
        ws = self._ws
        if ws is None:
            raise SfuUnavailable("not connected to the SFU")
        text, txn = self._proto.request(body)
        future: asyncio.Future[JanusReply] = asyncio.get_running_loop().create_future()
        self._pending[txn] = future
        try:
            await ws.send(text)
            reply = await asyncio.wait_for(future, self._timeout)
        except (TimeoutError, websockets.WebSocketException):
            raise SfuUnavailable("the SFU did not answer in time") from None
        finally:
            self._pending.pop(txn, None)
        error = reply.plugin_error()
        if error is not None:
            raise error
        return reply

    async def _read(self) -> None:
        ws = self._ws
        if ws is None:  # pragma: no cover - set before the task starts
            return
        try:
            async for text in ws:
                try:
                    reply = self._proto.receive(text)
                except SfuError as exc:
                    log.warning("sfu: dropped a frame from the SFU: %s", exc.code)
                    continue
                if reply.kind is ReplyKind.ACK:
                    continue
                future = self._pending.pop(reply.transaction or "", None)
                if future is not None and not future.done():
                    future.set_result(reply)
                    continue
                queue = self._events.get(reply.sender or 0)
                if queue is not None:
                    if queue.full():
                        queue.get_nowait()
                    queue.put_nowait(reply)
        except websockets.WebSocketException:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(SfuUnavailable("lost the connection to the SFU"))
            self._pending.clear()

    async def _keepalive(self) -> None:
        while self._ws is not None and self.session_id is not None:
            await asyncio.sleep(SFU_KEEPALIVE_S)
            with contextlib.suppress(websockets.WebSocketException):
                await self._ws.send(self._proto.keepalive(self.session_id))

    @property
    def closed(self) -> bool:
        return self._ws is None

    async def close(self) -> None:
        """Destroy the session (Janus then drops its handles: our publisher leaves the
        room at once, so the same publisher id can join again) and disconnect."""
        if self._ws is not None and self.session_id is not None:
            with contextlib.suppress(SfuError):
                await self._request({"janus": "destroy", "session_id": self.session_id})
        ws = self._ws
        for task in self._tasks:
            task.cancel()
        self._ws = None
        if ws is not None:
            with contextlib.suppress(websockets.WebSocketException, OSError):
                await ws.close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []


def _id_of(reply: JanusReply) -> int:
    value = reply.data.get("id")
    if not isinstance(value, int) or isinstance(value, bool):
        raise SfuError("the SFU answered without an id")
    return value
