"""Push: wake-up tickles only, never content (docs/protocol.md §Push).

A tickle tells an offline device "you have mail; reconnect and resume". The
payload is exactly ``{"type": "ksmpv3_tickle"}``; with ``push_hints`` on, the
conversation id and serverSeq may be added — never ciphertext, previews or keys.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from sottovoce.server.errors import WireFailure
from sottovoce.server.logs import JsonLogger

TICKLE_TYPE = "ksmpv3_tickle"


def tickle_payload(
    *, hints: bool, conversation_id: str | None = None, server_seq: int | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": TICKLE_TYPE}
    if hints:
        if conversation_id is not None:
            payload["conversationId"] = conversation_id
        if server_seq is not None:
            payload["serverSeq"] = server_seq
    return payload


class TickleSender(Protocol):
    async def tickle(self, endpoint: str, payload: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


@dataclass
class InMemoryTickleSender:
    """Records tickles instead of sending them (tests, and servers without push)."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def tickle(self, endpoint: str, payload: dict[str, Any]) -> None:
        self.sent.append((endpoint, dict(payload)))

    async def close(self) -> None:
        return None


class WebhookTickleSender:
    """UnifiedPush-style: an HTTP POST of the JSON payload to the device's endpoint."""

    def __init__(self, *, timeout_ms: int, logger: JsonLogger) -> None:
        self._client = httpx.AsyncClient(
            timeout=timeout_ms / 1000, follow_redirects=False, trust_env=False
        )
        self._log = logger

    async def tickle(self, endpoint: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            resp = await self._client.post(
                endpoint, content=body, headers={"content-type": "application/json"}
            )
            self._log.debug("push.sent", status=resp.status_code)
        except httpx.HTTPError as exc:
            self._log.warning("push.failed", error=type(exc).__name__)

    async def close(self) -> None:
        await self._client.aclose()


async def check_endpoint(endpoint: str, *, allow_private: bool) -> None:
    """Refuse endpoints that would make the server call into its own network (SSRF)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WireFailure("bad_request", "push endpoint must be an http(s) URL")
    if allow_private:
        return
    host = parts.hostname
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError:
        raise WireFailure("bad_request", "push endpoint host does not resolve") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global:
            raise WireFailure("forbidden", "push endpoint is on a private network")


class Pusher:
    """Debounces tickles per device and sends them in the background."""

    def __init__(
        self, sender: TickleSender, *, hints: bool, min_interval_ms: int, logger: JsonLogger
    ) -> None:
        self.sender = sender
        self._hints = hints
        self._interval = min_interval_ms / 1000
        self._last: dict[tuple[str, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = logger
        self.count = 0

    def maybe_tickle(
        self,
        key: tuple[str, str],
        endpoint: str,
        *,
        conversation_id: str | None,
        server_seq: int | None,
        now: float,
    ) -> None:
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return
        self._last[key] = now
        if len(self._last) > 100_000:
            self._last.clear()
        payload = tickle_payload(
            hints=self._hints, conversation_id=conversation_id, server_seq=server_seq
        )
        self.count += 1
        task = asyncio.get_running_loop().create_task(self.sender.tickle(endpoint, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        await self.sender.close()
