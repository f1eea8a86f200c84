"""The page's side of a call, shared by room calls (calls_bridge.py) and 1:1 calls
(p2p_bridge.py): notices to the page, descriptions back from it by ref, and the check
every description from the page goes through like network input (it must be a
description; the RFC 6464 audio level is taken out; with ``--loopback`` every
candidate but 127.0.0.1 is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import Awaitable, Callable
from typing import Any

from sottovoce.calls.janus import SfuError
from sottovoce.client.calls.media import clean_sdp

Notify = Callable[[dict[str, Any]], Awaitable[None]]
#: How long the page may take to make a description (it asks for camera and microphone
#: first, which may wait on the user).
PAGE_SDP_TIMEOUT_S = 60.0
#: The longest description the page may send.
MAX_SDP = 64 * 1024
_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) ", re.I)
_RELATED = re.compile(r" raddr (\S+)")


class PageCallError(Exception):
    """A call request the page made that cannot be done, with its plain message."""


def page_sdp(sdp: object, *, loopback: bool) -> str:
    """A description from the page, checked and cleaned (see the module docstring)."""
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP:
        raise PageCallError("that is not a session description")
    sdp = clean_sdp(sdp)
    if not loopback:
        return sdp
    lines = []
    for line in sdp.splitlines():
        found = _CANDIDATE.match(line)
        related = _RELATED.search(line) if found else None
        if found and (found.group(1) != "127.0.0.1"
                      or (related and related.group(1) not in ("127.0.0.1", "0.0.0.0"))):  # noqa: S104
            continue  # a loopback call: no other address leaves this machine
        if line.startswith("c=IN IP4 ") and line[9:] not in ("127.0.0.1", "0.0.0.0"):  # noqa: S104
            line = "c=IN IP4 127.0.0.1"
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


class PageLink:
    """The calls' side of the page's socket: notices out, descriptions in (by ref)."""

    def __init__(self, notify: Notify, *, loopback: bool, event: str = "call",
                 scope: str = "room") -> None:
        self.notify = notify
        self.loopback = loopback
        self._event, self._scope = event, scope
        self._refs = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[str]] = {}
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._closed = False

    def post(self, room: str, kind: str, **fields: Any) -> None:
        """A notice from synchronous code (key changes), sent after the ones posted
        before it, in order."""
        self._queue.put_nowait({"event": self._event, self._scope: room, "kind": kind,
                                **fields})
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while not self._queue.empty():
            with contextlib.suppress(Exception):
                await self.notify(self._queue.get_nowait())

    async def send(self, room: str, kind: str, **fields: Any) -> None:
        await self.notify({"event": self._event, self._scope: room, "kind": kind, **fields})

    async def ask(self, room: str, kind: str, **fields: Any) -> str:
        """Send a notice that needs a description back (``call_sdp`` with its ref);
        refused at once while the link is closed (see :meth:`close`)."""
        if self._closed:
            raise PageCallError("the page left the call")
        ref = next(self._refs)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = future
        try:
            await self.send(room, kind, ref=ref, **fields)
            return await asyncio.wait_for(future, PAGE_SDP_TIMEOUT_S)
        except TimeoutError:
            raise SfuError("the page did not answer in time") from None
        finally:
            self._waiting.pop(ref, None)

    def answer(self, ref: object, sdp: object, error: object = None) -> None:
        future = self._waiting.get(ref) if isinstance(ref, int) else None
        if future is None or future.done():
            raise PageCallError("no description was asked for under that ref")
        if error is not None:
            text = error if isinstance(error, str) else "the page could not start its media"
            future.set_exception(PageCallError(text[:300]))
            return
        future.set_result(page_sdp(sdp, loopback=self.loopback))

    def cancel_all(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(PageCallError("the page went away"))

    def close(self) -> None:
        """The page left the call: what waits for a description fails now, and so does
        every later :meth:`ask` until :meth:`open`. The page's answer to an ask made
        while it leaves could only come as a request after the leave it is still
        waiting on, so the call's media work must not wait for one."""
        self._closed = True
        self.cancel_all()

    def open(self) -> None:
        """A new call: descriptions may be asked for again."""
        self._closed = False
