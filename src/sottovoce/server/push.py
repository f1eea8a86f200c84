"""Push: wake-up tickles only, never content (docs/protocol.md §Push).

A tickle tells an offline device "you have mail; reconnect and resume". The
payload is exactly ``{"type": "ksmpv3_tickle"}``; with ``push_hints`` on, the
conversation id and serverSeq may be added — never ciphertext, previews or keys.

Endpoints are chosen by devices, so the server must not be talked into calling
its own network (SSRF). The check at registration is not enough: the name may
resolve elsewhere by the time a tickle is sent (DNS rebinding). So every
delivery resolves the name once, checks the address, and connects to exactly
that address, with the endpoint's own name in the Host header and, for https,
in TLS SNI and the certificate check::

    endpoint https://push.example/p ──resolve──► 203.0.113.7 ──allowed?──► POST
        https://203.0.113.7:443/p   Host: push.example   SNI: push.example
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import SplitResult, urlsplit, urlunsplit

from sottovoce.server.errors import WireFailure
from sottovoce.server.logs import JsonLogger

if TYPE_CHECKING:  # the HTTP client is loaded by the first push
    import httpx

TICKLE_TYPE = "ksmpv3_tickle"
#: HTTP clients kept, one per endpoint origin (scheme, name, port): a pooled
#: connection is only ever reused for the name it was opened (and verified) for.
PUSH_CLIENTS = 64

#: Resolves (host, port) to the addresses to try, in order.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def address_allowed(text: str) -> bool:
    """A public unicast address: not private, loopback, link-local, reserved, multicast."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return addr.is_global and not addr.is_multicast


@dataclass(frozen=True, slots=True, kw_only=True)
class PushTarget:
    """One delivery's pinned destination."""

    url: str  # the endpoint with its host replaced by the checked address
    origin: tuple[str, str, int]  # (scheme, name, port) of the endpoint
    host_header: str
    server_name: str | None  # TLS SNI and certificate name (https with a name)


def _split(endpoint: str) -> tuple[SplitResult, str, int]:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WireFailure("bad_request", "push endpoint must be an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WireFailure("bad_request", "push endpoint has a bad port") from None
    return parts, parts.hostname, port


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def pin_endpoint(endpoint: str, *, allow_private: bool, resolve: Resolver) -> PushTarget:
    """Resolve the endpoint once and pick an allowed address to connect to."""
    parts, host, port = _split(endpoint)
    try:
        found = [host] if _literal(host) else await resolve(host, port)
    except OSError:
        raise WireFailure("bad_request", "push endpoint host does not resolve") from None
    usable = [a for a in found if allow_private or address_allowed(a)]
    if not usable:
        raise WireFailure("forbidden", "push endpoint is on a private network")
    address = usable[0]
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + (
        f"[{address}]" if ":" in address else address
    ) + f":{port}"
    return PushTarget(
        url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        origin=(parts.scheme, host, port),
        host_header=parts.netloc.rpartition("@")[2],
        server_name=host if parts.scheme == "https" and not _literal(host) else None,
    )


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
    """UnifiedPush-style: an HTTP POST of the JSON payload to the device's endpoint,
    at an address resolved and checked for this delivery (see the module docstring)."""

    def __init__(
        self,
        *,
        timeout_ms: int,
        logger: JsonLogger,
        allow_private: bool = False,
        resolve: Resolver = system_resolve,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._timeout = timeout_ms / 1000
        self._log = logger
        self._allow_private = allow_private
        self._resolve = resolve
        self._verify = verify
        self._clients: OrderedDict[tuple[str, str, int], httpx.AsyncClient] = OrderedDict()

    def _client(self, origin: tuple[str, str, int]) -> httpx.AsyncClient:
        import httpx

        client = self._clients.get(origin)
        if client is not None:
            self._clients.move_to_end(origin)
            return client
        client = self._clients[origin] = httpx.AsyncClient(
            timeout=self._timeout, follow_redirects=False, trust_env=False, verify=self._verify
        )
        if len(self._clients) > PUSH_CLIENTS:
            _, old = self._clients.popitem(last=False)
            asyncio.get_running_loop().create_task(old.aclose())
        return client

    async def tickle(self, endpoint: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            target = await pin_endpoint(
                endpoint, allow_private=self._allow_private, resolve=self._resolve
            )
        except WireFailure as exc:
            self._log.warning("push.refused", code=exc.code)
            return
        import httpx

        extensions = {} if target.server_name is None else {"sni_hostname": target.server_name}
        try:
            resp = await self._client(target.origin).post(
                target.url,
                content=body,
                headers={"content-type": "application/json", "host": target.host_header},
                extensions=extensions,
            )
            self._log.debug("push.sent", status=resp.status_code)
        except httpx.HTTPError as exc:
            self._log.warning("push.failed", error=type(exc).__name__)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            await client.aclose()


async def check_endpoint(
    endpoint: str, *, allow_private: bool, resolve: Resolver = system_resolve
) -> None:
    """At registration: refuse endpoints that would make the server call into its own
    network (SSRF), whichever of the name's addresses a later delivery would use."""
    _, host, port = _split(endpoint)
    if allow_private:
        return
    try:
        found = [host] if _literal(host) else await resolve(host, port)
    except OSError:
        raise WireFailure("bad_request", "push endpoint host does not resolve") from None
    if not found or not all(address_allowed(a) for a in found):
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
