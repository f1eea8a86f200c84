"""Discovery modes, prefix search and static friend verification codes
(docs/protocol.md §Discovery, docs/threat-model.md §Discovery).

The server keeps of each account only its mode (default, public, strict: it needs it
to answer searches and to route) and, for static codes, their scrypt hashes; nothing
about its contacts. ``sottovoce.find`` lists public accounts only; each search pays a
proof of work of its own (no pass: one proof must not buy an enumeration) and one
account may search ``FIND_PER_MINUTE`` times a minute.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sottovoce.protocol.discovery import (
    DISCOVERY_RESULT,
    FIND_LIMIT,
    FIND_MIN_PREFIX,
    FIND_RESULT,
    FVC_STATIC_RESULT,
    DiscoverySet,
    Find,
    StaticCodes,
)
from sottovoce.protocol.spec import ClientEvent
from sottovoce.server.errors import RateLimited, WireFailure
from sottovoce.server.pow_gate import PowGate
from sottovoce.server.ratelimit import KeyedBuckets
from sottovoce.server.session import Session
from sottovoce.server.storage import discovery as modes
from sottovoce.server.storage.shared import SharedStorage

FIND_PER_MINUTE = 10


class DiscoveryService:
    def __init__(self, storage: SharedStorage, pow_gate: PowGate) -> None:
        self._storage = storage
        self._pow = pow_gate
        self._finds = KeyedBuckets(FIND_PER_MINUTE / 60, FIND_PER_MINUTE)

    def handlers(self) -> dict[type[ClientEvent], Callable[..., Awaitable[None]]]:
        return {DiscoverySet: self.mode, Find: self.find, StaticCodes: self.static_codes}

    async def mode(self, session: Session, ev: DiscoverySet, data: dict[str, Any],
                   rid: str | None) -> None:
        user, _ = session.key
        if ev.mode is not None:
            await self._storage.set_discovery(user, modes.MODES[ev.mode])
        current = await self._storage.discovery_mode(user)
        session.reply(DISCOVERY_RESULT, {"mode": modes.NAMES[current]}, rid)

    async def find(self, session: Session, ev: Find, data: dict[str, Any],
                   rid: str | None) -> None:
        user, _ = session.key
        if len(ev.prefix) < FIND_MIN_PREFIX:
            raise WireFailure("bad_request", f"prefix must be at least {FIND_MIN_PREFIX} "
                                             "characters")
        wait = self._finds.take(user)
        if wait:
            raise RateLimited("too many searches", wait)
        self._pow.spend(user, f"find:{ev.prefix}", ev.pow)
        found = await self._storage.find_public(ev.prefix, FIND_LIMIT)
        session.reply(FIND_RESULT, {"prefix": ev.prefix, "usernames": found}, rid)

    async def static_codes(self, session: Session, ev: StaticCodes, data: dict[str, Any],
                           rid: str | None) -> None:
        user, _ = session.key
        await self._storage.set_static_codes(user, [(c.slot, c.salt, c.hash) for c in ev.codes])
        session.reply(FVC_STATIC_RESULT, {"count": len(ev.codes)}, rid)
