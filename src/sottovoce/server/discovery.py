"""Discovery modes, prefix search and static friend verification codes
(docs/protocol.md §Discovery, docs/threat-model.md §Discovery).

The server keeps of each account only its mode (default, public, strict: it needs it
to answer searches and to route) and, for static codes, their scrypt hashes; nothing
about its contacts. ``sottovoce.find`` lists public accounts only; each search pays a
proof of work of its own (no pass: one proof must not buy an enumeration) and one
account may search ``FIND_PER_MINUTE`` times a minute.

A TOTP request to a strict account goes to its connected devices with the time the
server received it; if none is connected here it also waits (a week at most) for the
first of them to connect. The owner's devices withdraw grants by naming them; only
the authenticated account's own grants can go.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sottovoce.protocol import fvc
from sottovoce.protocol.discovery import (
    CONTACT_GRANTED,
    CONTACT_REQUEST_ACCEPTED,
    CONTACT_REQUEST_INCOMING,
    DISCOVERY_GRANTED,
    DISCOVERY_RESULT,
    DISCOVERY_WITHDRAWN,
    FIND_LIMIT,
    FIND_MIN_PREFIX,
    FIND_RESULT,
    FVC_STATIC_RESULT,
    ContactRequest,
    DiscoveryGrant,
    DiscoverySet,
    DiscoveryWithdraw,
    Find,
    StaticCodes,
)
from sottovoce.protocol.fields import b64
from sottovoce.protocol.spec import ClientEvent, frame
from sottovoce.server.directory import Directory
from sottovoce.server.errors import RateLimited, WireFailure
from sottovoce.server.pow_gate import PowGate
from sottovoce.server.presence import Presence
from sottovoce.server.ratelimit import KeyedBuckets
from sottovoce.server.session import Session
from sottovoce.server.storage import discovery as modes
from sottovoce.server.storage.base import AccountRecord
from sottovoce.server.storage.shared import SharedStorage

FIND_PER_MINUTE = 10
#: Contact requests (code attempts) about one name per hour, from everyone together: past
#: it they are answered as always and dropped (docs/threat-model.md §Discovery).
CODE_ATTEMPTS_PER_TARGET_HOUR = 20
#: How long a TOTP contact request waits for the owner's devices, and how many wait per
#: account; the owner's device accepts a code stamped no older than this (client/fvc.py).
REQUEST_MAX_AGE_MS = fvc.REQUEST_MAX_AGE_S * 1000
REQUESTS_QUEUED_PER_ACCOUNT = 200
#: A name no account can hold: reading it costs what reading a missing name costs.
_NO_NAME = "-"


def cap_hash(cap: bytes | None) -> bytes:
    """What the server keeps of a capability (and compares with): its SHA-256."""
    return hashlib.sha256(b"sottovoce cap v1" + (cap or b"")).digest()


class DiscoveryService:
    def __init__(self, storage: SharedStorage, pow_gate: PowGate, directory: Directory,
                 presence: Presence) -> None:
        self._storage = storage
        self._pow = pow_gate
        self._directory = directory
        self._presence = presence
        self._finds = KeyedBuckets(FIND_PER_MINUTE / 60, FIND_PER_MINUTE)
        self._attempts = KeyedBuckets(CODE_ATTEMPTS_PER_TARGET_HOUR / 3600,
                                      CODE_ATTEMPTS_PER_TARGET_HOUR)
        #: Background work after a reply (the reply's timing must not depend on it).
        self._tasks: set[asyncio.Task[None]] = set()

    def handlers(self) -> dict[type[ClientEvent], Callable[..., Awaitable[None]]]:
        return {DiscoverySet: self.mode, Find: self.find, StaticCodes: self.static_codes,
                ContactRequest: self.contact_request, DiscoveryGrant: self.grant,
                DiscoveryWithdraw: self.withdraw}

    # --- who sees a name ------------------------------------------------------------------

    async def hidden(self, requester: str, name: str, cap: bytes | None) -> bool:
        """Whether ``name`` must look like a name nobody holds to ``requester``: a strict
        account, asked about by another account without a capability it granted. One
        read, the same for every name (held, strict or free)."""
        if requester == name:
            return False
        mode, granted = await self._storage.visibility(name, cap_hash(cap))
        return mode == modes.STRICT and not granted

    async def account(self, requester: str, name: str, cap: bytes | None,
                      ) -> AccountRecord | None:
        """The live account as ``requester`` may see it (None: none, or hidden)."""
        if await self.hidden(requester, name, cap):
            await self._storage.get_account(_NO_NAME)  # the read a missing name costs
            return None
        return await self._directory.account(name)

    async def taken(self, requester: str, name: str) -> bool:
        """``username.check``: a hidden name reads as free (registering it still fails)."""
        if await self.hidden(requester, name, None):
            await self._storage.get_account(_NO_NAME)
            return False
        return await self._directory.exists(name)

    async def known(self, requester: str, name: str, cap: bytes | None) -> bool:
        """Key transparency about another account: only a name it may see (a deleted
        account's tombstone included); a free name and a hidden one alike are not."""
        if await self.hidden(requester, name, cap):
            await self._storage.get_account(_NO_NAME)
            return False
        return requester == name or await self._directory.exists(name)

    # --- contact requests to strict accounts ----------------------------------------------

    async def contact_request(self, session: Session, ev: ContactRequest, data: dict[str, Any],
                              rid: str | None) -> None:
        """Always the same reply once the proof of work is good; then, only for a strict
        account and within the per-name limit, the code goes on (a static one checked
        here, a TOTP proof to the owner's devices)."""
        user, _ = session.key
        self._pow.spend(user, f"contact:{ev.username}", ev.pow)
        session.reply(CONTACT_REQUEST_ACCEPTED, {}, rid)
        if self._attempts.take(ev.username):
            return
        task = asyncio.get_running_loop().create_task(self._forward(user, ev))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, user: str, ev: ContactRequest) -> None:
        mode, _ = await self._storage.visibility(ev.username, b"")
        strict = mode == modes.STRICT
        if ev.staticCode is not None:
            await self._static(user, ev.username, ev.staticCode, strict=strict)
        elif ev.proof is not None and strict:
            # Stamped with the time it came in: the owner's device checks the code against
            # it, so a request that waited for an offline owner is judged as of then.
            received = time.time_ns() // 1_000_000
            if not self._presence.connected(ev.username):
                await self._storage.queue_contact_request(
                    ev.username, user, ev.proof, received, REQUEST_MAX_AGE_MS,
                    REQUESTS_QUEUED_PER_ACCOUNT)
            self._presence.notify_user(ev.username, frame(CONTACT_REQUEST_INCOMING, {
                "from": user, "proof": b64(ev.proof), "receivedMs": received}))

    async def authenticated(self, session: Session) -> None:
        """A device of a strict account connected: the contact requests that waited."""
        user, _ = session.key
        if not await self._storage.has_contact_requests(user):
            return
        now = time.time_ns() // 1_000_000
        for requester, proof, received in await self._storage.take_contact_requests(
                user, now, REQUEST_MAX_AGE_MS):
            session.reply(CONTACT_REQUEST_INCOMING, {
                "from": requester, "proof": b64(proof), "receivedMs": received}, None)

    async def _static(self, user: str, name: str, code: str, *, strict: bool) -> None:
        """Check a static code with one scrypt whether or not the slot holds one; burn it;
        grant the requester a capability the server makes (the owner may be offline)."""
        slot = fvc.static_slot(code)
        row = await self._storage.static_code(name, slot) if slot is not None else None
        salt, digest = row if row is not None else (fvc.DUMMY_SALT, bytes(fvc.HASH_BYTES))
        good = await asyncio.to_thread(fvc.static_matches, code, salt, digest)
        if not (good and row is not None and slot is not None and strict):
            return
        if not await self._storage.burn_static_code(name, slot, digest):
            return  # used meanwhile
        token = fvc.static_grant_token(digest, user)  # the owner's devices can withdraw it
        await self._storage.set_grant(name, cap_hash(token), True)
        self._presence.notify_user(user, frame(CONTACT_GRANTED, {
            "userId": name, "token": b64(token)}))
        self._presence.notify_user(name, frame(CONTACT_REQUEST_INCOMING, {
            "from": user, "static": True}))

    async def grant(self, session: Session, ev: DiscoveryGrant, data: dict[str, Any],
                    rid: str | None) -> None:
        """The owner's device accepted ``userId``: keep the capability's hash, hand the
        capability to ``userId``'s devices."""
        user, _ = session.key
        await self._storage.set_grant(user, cap_hash(ev.token), True)
        session.reply(DISCOVERY_GRANTED, {}, rid)
        self._presence.notify_user(ev.userId, frame(CONTACT_GRANTED, {
            "userId": user, "token": b64(ev.token)}))

    async def withdraw(self, session: Session, ev: DiscoveryWithdraw, data: dict[str, Any],
                       rid: str | None) -> None:
        """The owner's device ends capabilities it (or a static code) granted: only rows
        of the authenticated account go."""
        user, _ = session.key
        count = await self._storage.withdraw_grants(user, [cap_hash(t) for t in ev.tokens])
        session.reply(DISCOVERY_WITHDRAWN, {"count": count}, rid)

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
