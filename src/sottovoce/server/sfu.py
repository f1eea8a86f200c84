"""The server's side of room calls through an SFU: Janus VideoRooms and who may use them.

::

    --sfu eu=wss://sfu-eu.example.org/,ch=wss://sfu-ch.example.org/   (or URL,URL)
    --sfu-key-file /etc/sottovoce/sfu-key   (the VideoRoom admin_key; also keys the names)

    room R, call C ──pin(R)──► SFU of R's region by rendezvous hash (next one if down;
                               never one of another region: SfuRegionUnavailable)
       open_call  ── create VideoRoom "hmac(R, C)": require_e2ee, require_pvtid,
                     an empty allowed list, no audio-level extension, private
       grant(D)   ── D must be a current member of R: a random token in the allowed
                     list for 60 s, and the publisher id D must use
       remove(D)  ── D left R: its tokens out of the allowed list, its feed kicked
                     (Janus then also cuts off the subscriptions made with its
                     private id)
       sweep(now) ── expired tokens out; a VideoRoom with no one in it and no live
                     grant destroyed

The SFU never learns room ids, user names or device ids: the VideoRoom's name, its
secret and each device's publisher id are keyed hashes. It relays SFrame ciphertext
(docs/calls.md says what it still sees). The pure parts -- option parsing, pinning,
names, the grant table -- are functions and a plain class; :class:`SfuDriver` is the
thin I/O around them, talking to each Janus over its WebSocket API with the
VideoRoom's ``admin_key`` (room creation) and each room's secret (everything else).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sottovoce.calls.janus import (
    SfuError,
    SfuNoSuchFeed,
    SfuNoSuchRoom,
    SfuUnavailable,
)
from sottovoce.crypto.rng import Random
from sottovoce.errors import RemoteError, UsageError
from sottovoce.limits import (
    ROOM_CALL_MAX_PARTICIPANTS,
    SFU_GRANT_TTL_MS,
    SFU_MAX_ENDPOINTS,
    SFU_REQUEST_TIMEOUT_S,
)
from sottovoce.protocol.fields import Device
from sottovoce.protocol.rooms import REGION_RE, RESIDENCY_NONE
from sottovoce.secret import Secret
from sottovoce.server.secret_file import read_secret_line

if TYPE_CHECKING:  # the WebSocket client is loaded by the first SFU connection
    from sottovoce.janus_session import JanusSession

log = logging.getLogger(__name__)

_URL_RE = re.compile(r"wss?://[A-Za-z0-9.\-\[\]:]+(?::[0-9]{1,5})?(?:/[\x21-\x7e]*)?")
#: An SFU that failed is skipped this long before it is tried again.
SFU_DOWN_MS = 30_000
#: The key file: at least 128 bits, one line.
SFU_KEY_MIN_BYTES = 16


class SfuRegionUnavailable(SfuError):
    """No SFU of the room's region is configured or up: the call is refused rather
    than moved out of the region."""

    code = "sfu_region_unavailable"


class SfuNotAMember(RemoteError):
    """The device asking for a grant is not a current member of the room."""

    code = "sfu_not_member"


# --- pure: configuration, pinning, names ------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SfuEndpoint:
    """One Janus: its WebSocket API URL (the server and clients both use it) and region."""

    url: str
    region: str | None = None

    def __post_init__(self) -> None:
        if not _URL_RE.fullmatch(self.url):
            raise UsageError(f"not an SFU WebSocket URL (ws:// or wss://): {self.url!r}")
        # A region label: short, lower-case (``eu``, ``ch``, ``us-east``); "none" is what
        # a room without a residency says.
        if self.region is not None and (
            not REGION_RE.fullmatch(self.region) or self.region == RESIDENCY_NONE
        ):
            raise UsageError(f"bad SFU region label (a-z, 0-9, -; not 'none'): {self.region!r}")


def parse_sfu_option(value: str) -> tuple[SfuEndpoint, ...]:
    """``--sfu``: ``URL[,URL...]`` or ``REGION=URL[,REGION=URL...]`` (all labelled or none)."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items or len(items) > SFU_MAX_ENDPOINTS:
        raise UsageError(f"--sfu takes 1-{SFU_MAX_ENDPOINTS} URLs separated by commas")
    endpoints = []
    for item in items:
        region, sep, url = item.partition("=")
        if sep and "://" not in region:
            endpoints.append(SfuEndpoint(url=url.strip(), region=region.strip()))
        else:
            endpoints.append(SfuEndpoint(url=item))
    if len({e.region is None for e in endpoints}) > 1:
        raise UsageError("--sfu: give a region to every SFU or to none (eu=URL,ch=URL)")
    if len({e.url for e in endpoints}) != len(endpoints):
        raise UsageError("--sfu: an SFU is listed twice")
    return tuple(endpoints)


def read_sfu_key(path: Path) -> Secret:
    """``--sfu-key-file``: the VideoRoom ``admin_key`` (one line, at least 16 bytes)."""
    return read_secret_line(path, "SFU key file", SFU_KEY_MIN_BYTES)


def _mac(key: Secret, label: bytes, *parts: bytes) -> bytes:
    msg = b"sottovoce sfu " + label
    for part in parts:
        msg += len(part).to_bytes(2, "big") + part
    return hmac.new(key.expose(), msg, hashlib.sha256).digest()


def room_pin(key: Secret, room_id: str) -> bytes:
    """What pins a room's calls to an SFU (the same for every call of the room)."""
    return _mac(key, b"pin", room_id.encode())


def sfu_room_name(key: Secret, room_id: str, call_id: bytes) -> str:
    """The VideoRoom's id: a keyed hash of (room, call), never the room id itself."""
    return _mac(key, b"room", room_id.encode(), call_id)[:16].hex()


def sfu_room_secret(key: Secret, room_id: str, call_id: bytes) -> Secret:
    """The VideoRoom's secret (needed to change its allowed list, kick or destroy it)."""
    return Secret(_mac(key, b"secret", room_id.encode(), call_id).hex().encode())


def sfu_feed_id(key: Secret, room_id: str, call_id: bytes, device: Device) -> str:
    """The publisher id a device must use in a call's VideoRoom."""
    who = f"{device[0]}/{device[1]}".encode()
    return _mac(key, b"feed", room_id.encode(), call_id, who)[:16].hex()


def pick_sfu(
    endpoints: Collection[SfuEndpoint],
    pin: bytes,
    *,
    residency: str | None,
    down: Collection[str] = (),
) -> SfuEndpoint:
    """The SFU a room's calls go to: rendezvous (highest random weight) hashing over the
    SFUs of the room's region, skipping those ``down``; so a room keeps its SFU while
    that one is up, moves to the next when it is down, and never leaves its region."""
    if residency is not None:
        candidates = [e for e in endpoints if e.region == residency]
        if not candidates:
            raise SfuRegionUnavailable(f"no SFU of region {residency!r} is configured")
    else:
        candidates = list(endpoints)
    if not candidates:
        raise SfuUnavailable("no SFU is configured")
    ranked = sorted(candidates, key=lambda e: hashlib.sha256(pin + e.url.encode()).digest())
    for endpoint in reversed(ranked):
        if endpoint.url not in down:
            return endpoint
    if residency is not None:
        raise SfuRegionUnavailable(
            f"every SFU of region {residency!r} is down; the call is refused, not moved "
            "out of the region"
        )
    raise SfuUnavailable("every SFU is down")


def ranked_sfus(
    endpoints: Collection[SfuEndpoint], pin: bytes, *, residency: str | None
) -> list[SfuEndpoint]:
    """Every SFU :func:`pick_sfu` may choose for ``pin``, best first."""
    out: list[SfuEndpoint] = []
    down: set[str] = set()
    while True:
        try:
            chosen = pick_sfu(endpoints, pin, residency=residency, down=down)
        except SfuError:
            return out
        out.append(chosen)
        down.add(chosen.url)


# --- pure: grants -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SfuGrant:
    """What a device gets to take part in one call through the SFU: where, under which
    publisher id, and the token that lets it in until ``expires_ms``."""

    url: str
    room: str
    feed_id: str
    token: Secret
    expires_ms: int

    def to_wire(self) -> dict[str, object]:
        return {
            "url": self.url,
            "room": self.room,
            "feedId": self.feed_id,
            "token": self.token.expose().decode("ascii"),
            "expiresAt": self.expires_ms,
        }


@dataclass(slots=True)
class _Grant:
    device: Device
    token: str
    expires_ms: int


@dataclass(slots=True)
class GrantTable:
    """The live grants of one VideoRoom (pure: time and randomness are parameters)."""

    grants: list[_Grant] = field(default_factory=list)

    def issue(self, device: Device, *, now_ms: int, ttl_ms: int, rng: Random) -> str:
        token = rng(16).hex()
        self.grants.append(_Grant(device, token, now_ms + ttl_ms))
        return token

    def expired(self, now_ms: int) -> list[str]:
        """Take out and return the tokens whose time is up."""
        gone = [g.token for g in self.grants if g.expires_ms <= now_ms]
        self.grants = [g for g in self.grants if g.expires_ms > now_ms]
        return gone

    def revoke(self, device: Device) -> list[str]:
        """Take out and return every token of ``device``."""
        gone = [g.token for g in self.grants if g.device == device]
        self.grants = [g for g in self.grants if g.device != device]
        return gone

    def __bool__(self) -> bool:
        return bool(self.grants)


# --- I/O: one Janus ------------------------------------------------------------------


class JanusAdmin(Protocol):
    """What the driver needs of a connection to one Janus (a VideoRoom handle)."""

    @property
    def closed(self) -> bool: ...

    async def call(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class JanusConnection:
    """A Janus session with one VideoRoom handle (the shared :class:`JanusSession`)."""

    def __init__(self, session: JanusSession, handle: int) -> None:
        self.url = session.url
        self._session = session
        self._handle = handle

    @classmethod
    async def open(
        cls, url: str, *, rng: Random, timeout_s: float = SFU_REQUEST_TIMEOUT_S
    ) -> JanusConnection:
        from sottovoce.janus_session import JanusSession

        session = await JanusSession.connect(url, rng=rng, timeout_s=timeout_s)
        try:
            return cls(session, await session.attach())
        except SfuError:
            await session.close()
            raise

    async def call(self, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous VideoRoom request; its answer's plugin data (typed errors raised)."""
        return (await self._session.message(self._handle, body)).data

    @property
    def closed(self) -> bool:
        return self._session.closed

    async def close(self) -> None:
        await self._session.close()


# --- I/O: the driver -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SfuConfig:
    """The server's SFUs and the key shared with them (the VideoRoom ``admin_key``)."""

    endpoints: tuple[SfuEndpoint, ...]
    key: Secret
    grant_ttl_ms: int = SFU_GRANT_TTL_MS

    def __post_init__(self) -> None:
        if not 1 <= len(self.endpoints) <= SFU_MAX_ENDPOINTS:
            raise UsageError(f"give 1-{SFU_MAX_ENDPOINTS} SFUs")
        if len(self.key) < SFU_KEY_MIN_BYTES:
            raise UsageError(f"the SFU key must be at least {SFU_KEY_MIN_BYTES} bytes")
        if not 1_000 <= self.grant_ttl_ms <= SFU_GRANT_TTL_MS:
            raise UsageError(f"SFU grants live 1-{SFU_GRANT_TTL_MS // 1000} s")


@dataclass(slots=True)
class _Call:
    room_id: str
    call_id: bytes
    endpoint: SfuEndpoint
    name: str
    secret: Secret
    grants: GrantTable = field(default_factory=GrantTable)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SfuDriver:
    """Creates, guards and ends the VideoRooms of room calls (see the module docstring).

    Each method is given what it needs (room and call ids, the room's current member
    devices, its data-residency region); none keeps room state of its own beyond
    the calls it opened.
    """

    def __init__(
        self,
        config: SfuConfig,
        *,
        rng: Random = secrets.token_bytes,
        clock_ms: Callable[[], int] = wall_clock_ms,
        opener: Callable[[str], Awaitable[JanusAdmin]] | None = None,
    ) -> None:
        self.config = config
        self._rng = rng
        self._clock = clock_ms
        self._open: Callable[[str], Awaitable[JanusAdmin]] = opener or (
            lambda url: JanusConnection.open(url, rng=rng)
        )
        self._admins: dict[str, JanusAdmin] = {}
        self._down_until: dict[str, int] = {}
        self._calls: dict[tuple[str, bytes], _Call] = {}

    def down(self) -> frozenset[str]:
        now = self._clock()
        return frozenset(url for url, until in self._down_until.items() if until > now)

    async def _admin(self, endpoint: SfuEndpoint) -> JanusAdmin:
        admin = self._admins.get(endpoint.url)
        if admin is None or admin.closed:
            admin = await self._open(endpoint.url)
            self._admins[endpoint.url] = admin
        return admin

    async def _call_on(self, call: _Call, body: dict[str, Any]) -> dict[str, Any]:
        admin = await self._admin(call.endpoint)
        try:
            return await admin.call(
                {**body, "room": call.name, "secret": call.secret.expose().decode()}
            )
        except SfuUnavailable:
            await self._mark_down(call.endpoint)
            raise

    async def _mark_down(self, endpoint: SfuEndpoint) -> None:
        self._down_until[endpoint.url] = self._clock() + SFU_DOWN_MS
        admin = self._admins.pop(endpoint.url, None)
        if admin is not None:
            await admin.close()

    async def open_call(self, room_id: str, call_id: bytes, *, residency: str | None = None) -> str:
        """Create the call's VideoRoom on the room's SFU (or the next one up in its
        region); returns that SFU's URL. Idempotent for a call already open."""
        existing = self._calls.get((room_id, call_id))
        if existing is not None:
            if residency is not None and existing.endpoint.region != residency:
                # Opened before the room was pinned: it does not follow the room out of
                # its old place, it is refused (a new call goes to the region).
                raise SfuRegionUnavailable(
                    f"this call runs outside region {residency!r}; start a new call"
                )
            return existing.endpoint.url
        key = self.config.key
        pin = room_pin(key, room_id)
        name = sfu_room_name(key, room_id, call_id)
        secret = sfu_room_secret(key, room_id, call_id)
        last: SfuError | None = None
        down = set(self.down())
        while True:
            endpoint = pick_sfu(self.config.endpoints, pin, residency=residency, down=down)
            call = _Call(room_id, call_id, endpoint, name, secret)
            try:
                admin = await self._admin(endpoint)
                await admin.call(self._create_body(call))
            except SfuUnavailable as exc:
                await self._mark_down(endpoint)
                down.add(endpoint.url)
                last = exc
                log.warning("sfu: %s is down; trying the next SFU", endpoint.url)
                continue
            self._calls[(room_id, call_id)] = call
            if last is not None:
                log.info("sfu: a call moved to %s", endpoint.url)
            return endpoint.url

    def _create_body(self, call: _Call) -> dict[str, Any]:
        return {
            "request": "create",
            "room": call.name,
            "admin_key": self.config.key.expose().decode(),
            "secret": call.secret.expose().decode(),
            "description": "sottovoce call",
            "is_private": True,
            "permanent": False,
            # Only SFrame-protected media (the "e2ee" flag of the JSEP), and
            # subscriptions only by someone who joined as a publisher (with a grant).
            "require_e2ee": True,
            "require_pvtid": True,
            "allowed": [],
            "publishers": ROOM_CALL_MAX_PARTICIPANTS,
            "audiocodec": "opus",
            "videocodec": "vp8",
            # No audio level in the clear (RFC 6464), no DTX (silence would show).
            "audiolevel_ext": False,
            "audiolevel_event": False,
            "opus_dtx": False,
            "videoorient_ext": False,
            "playoutdelay_ext": False,
            "lock_record": True,
            "notify_joining": False,
        }

    async def grant(
        self,
        room_id: str,
        call_id: bytes,
        device: Device,
        members: Collection[Device],
    ) -> SfuGrant:
        """Let ``device`` into the call's VideoRoom for a short while, if it is a current
        member of the room (``members``: the room's member devices now)."""
        if device not in members:
            raise SfuNotAMember("only a current member of the room may join its calls")
        call = self._calls.get((room_id, call_id))
        if call is None:
            raise SfuNoSuchRoom("the call has no SFU room (open it first)")
        feed = sfu_feed_id(self.config.key, room_id, call_id, device)
        # One presence per device: a publisher left over from an earlier session of
        # this device (a crash, a lost connection) would hold its publisher id.
        with contextlib.suppress(SfuNoSuchFeed):
            await self._call_on(call, {"request": "kick", "id": feed})
        now = self._clock()
        token = call.grants.issue(
            device, now_ms=now, ttl_ms=self.config.grant_ttl_ms, rng=self._rng
        )
        try:
            await self._call_on(call, {"request": "allowed", "action": "add", "allowed": [token]})
        except SfuError:
            call.grants.revoke(device)
            raise
        return SfuGrant(
            url=call.endpoint.url,
            room=call.name,
            feed_id=feed,
            token=Secret(token.encode()),
            expires_ms=now + self.config.grant_ttl_ms,
        )

    async def admit(
        self,
        room_id: str,
        call_id: bytes,
        device: Device,
        members: Collection[Device],
        *,
        residency: str | None = None,
    ) -> SfuGrant:
        """What a device asking to take part in a call gets: the call's VideoRoom is
        opened (pinned, in the room's region) if it is not yet, then a grant."""
        if device not in members:
            raise SfuNotAMember("only a current member of the room may join its calls")
        await self.open_call(room_id, call_id, residency=residency)
        return await self.grant(room_id, call_id, device, members)

    async def remove_member(self, room_id: str, device: Device) -> None:
        """``device`` left the room: no more grants for it, and its feeds (and the
        subscriptions made with them) kicked from every call of the room."""
        for call in [c for c in self._calls.values() if c.room_id == room_id]:
            tokens = call.grants.revoke(device)
            if tokens:
                await self._call_on(
                    call, {"request": "allowed", "action": "remove", "allowed": tokens}
                )
            feed = sfu_feed_id(self.config.key, room_id, call.call_id, device)
            with contextlib.suppress(SfuNoSuchFeed):
                await self._call_on(call, {"request": "kick", "id": feed})

    async def participants(self, room_id: str, call_id: bytes) -> list[str]:
        """The publisher ids in the call's VideoRoom now (for operations only: clients
        take their participant list from the call's MLS group)."""
        call = self._calls.get((room_id, call_id))
        if call is None:
            return []
        data = await self._call_on(call, {"request": "listparticipants"})
        listed = data.get("participants")
        return (
            [p["id"] for p in listed if isinstance(p, dict) and isinstance(p.get("id"), str)]
            if isinstance(listed, list)
            else []
        )

    async def sweep(self) -> None:
        """Expire grants; destroy VideoRooms nobody is in and nobody may still join."""
        now = self._clock()
        for key, call in list(self._calls.items()):
            try:
                expired = call.grants.expired(now)
                if expired:
                    await self._call_on(
                        call, {"request": "allowed", "action": "remove", "allowed": expired}
                    )
                if not call.grants and not await self.participants(call.room_id, call.call_id):
                    await self.end_call(call.room_id, call.call_id)
            except SfuNoSuchRoom:
                self._calls.pop(key, None)
            except SfuError as exc:
                log.warning("sfu: sweep of a call failed: %s", exc.code)

    async def end_call(self, room_id: str, call_id: bytes) -> None:
        """Destroy the call's VideoRoom (everyone in it is disconnected)."""
        call = self._calls.pop((room_id, call_id), None)
        if call is None:
            return
        with contextlib.suppress(SfuNoSuchRoom):
            await self._call_on(call, {"request": "destroy"})

    async def close(self) -> None:
        for admin in self._admins.values():
            await admin.close()
        self._admins.clear()
