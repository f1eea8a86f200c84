"""Who may find this account (``client.discovery``): its discovery mode on the server,
and the prefix search over public accounts (docs/protocol.md §Discovery).

* **public**: found by a prefix search (``find``) and by its exact name;
* **default**: found only by its exact name (a lookup, with a proof of work);
* **strict**: the server answers about it as about a name that does not exist,
  except to the account's own devices.

The mode is the only thing about its reach the account tells the server. A search
pays a proof of work of its own each time (client/proof_of_work.py solves it).

Reaching a strict account with a friend verification code (:meth:`Discovery.reach`)::

    requester ── contact.request {proof of the code | static code} ──► server ── accepted
    server ── contact.request.incoming {from, proof} ──► owner's devices (strict only)
    owner's device: code good (client/fvc.py) ── discovery.grant {userId, token} ──► server
    server ── contact.granted {userId: owner, token} ──► requester's devices
    requester: lookups and claims of owner carry ``cap: token`` from then on

The capability is kept sealed in the store and attached to every lookup, claim (prekeys
and room KeyPackages) and key-transparency lookup of that account
(:meth:`Discovery.cap_for`). It is derived from a key our devices share
(client/fvc.py), so when we remove, block or decline someone, any of our devices
withdraws what they may hold (:meth:`Discovery.withdraw`); a withdrawal made offline,
or that the server could not take, is kept and sent at the next connect or with the
next withdrawal.

A TOTP request that waited on the server while we were offline carries the server's
receive stamp (``receivedMs``); the code is judged as of then (client/fvc.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from sottovoce.client.connection import Connection
from sottovoce.client.contact_list import ContactList
from sottovoce.client.errors import ServerError
from sottovoce.client.fvc import FVC_CONTENT_TYPE, FriendCodes
from sottovoce.client.store import Store
from sottovoce.errors import RemoteError, SottovoceError, UsageError
from sottovoce.protocol import fvc
from sottovoce.protocol.discovery import (
    CAP_BYTES,
    CONTACT_GRANTED,
    CONTACT_REQUEST_ACCEPTED,
    CONTACT_REQUEST_INCOMING,
    DISCOVERY_GRANTED,
    DISCOVERY_RESULT,
    DISCOVERY_WITHDRAWN,
    FIND_LIMIT,
    FIND_MIN_PREFIX,
    FIND_RESULT,
    MODES,
    ContactRequest,
    DiscoveryGrant,
    DiscoverySet,
    DiscoveryWithdraw,
    Find,
)
from sottovoce.protocol.fields import ID_RE

Spawn = Callable[[Coroutine[Any, Any, None]], None]
_MODE = "discovery-mode"
_PENDING = "discovery-withdraw-pending"
#: How long :meth:`Discovery.reach` waits for the owner's devices to answer.
REACH_TIMEOUT_S = 20.0


def _b64(value: object) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        return None


class Discovery:
    def __init__(self, link: Connection, store: Store, codes: FriendCodes,
                 contacts: ContactList, lookup: Callable[[str], Awaitable[None]]) -> None:
        self._link, self._store, self._codes = link, store, codes
        self._contacts, self._lookup = contacts, lookup
        self._me = contacts.me
        self._granted: dict[str, asyncio.Event] = {}
        codes.send_own = contacts.send_own
        contacts.own_sync[FVC_CONTENT_TYPE] = codes.apply
        contacts.on_drop = self.withdraw
        link.cap_for = self.cap_for

    def handlers(self, spawn: Spawn) -> dict[str, Callable[[str | None, dict[str, Any]], None]]:
        """The unsolicited server events of strict discovery, for the client's router."""
        return {CONTACT_GRANTED: lambda _, data: self._on_granted(data),
                CONTACT_REQUEST_INCOMING: lambda _, data: spawn(self._on_incoming(data))}

    # --- capabilities ---------------------------------------------------------------------

    def cap_for(self, username: str) -> bytes | None:
        """The capability ``username`` (a strict account) granted us, if any."""
        return self._store.get_secret(f"cap:{username}")

    def holds_cap(self, message_id: str) -> bool:
        """Whether the peer of our 1:1 message ``message_id`` let us in: a send to a strict
        account with an old device list is refused as to a name nobody holds, and we
        look its devices up again with the capability."""
        stored = self._store.get_message(message_id)
        return stored is not None and self.cap_for(stored.peer) is not None

    def _on_granted(self, data: dict[str, Any]) -> None:
        owner, token = data.get("userId"), _b64(data.get("token"))
        if not isinstance(owner, str) or token is None or len(token) != CAP_BYTES:
            return
        with self._store.transaction():
            self._store.put_secret(f"cap:{owner}", token)
        self._granted.setdefault(owner, asyncio.Event()).set()

    async def _on_incoming(self, data: dict[str, Any]) -> None:
        """A contact request to us (strict): check the code's proof here, then let the
        requester in and make them a contact. A static code the server checked arrives
        already granted; the server's word adds no contact (their first message is a
        request, as any stranger's)."""
        requester, proof = data.get("from"), _b64(data.get("proof"))
        if not isinstance(requester, str) or requester == self._me or proof is None:
            return  # a static code: the server let them in; their message is a request
        stamp = data.get("receivedMs")
        received = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else None
        with contextlib.suppress(SottovoceError):
            if not await self._codes.check_proof(requester, proof, received):
                return
            await self.grant(requester)
            await self._codes.spent_elsewhere()
            await self._contacts.add(requester)

    async def grant(self, username: str) -> None:
        """Let ``username`` find this account while it is strict (a capability of its own,
        the same from each of our devices)."""
        token = await self._codes.grant_token(username)
        self._set_pending([n for n in self._pending() if n != username])
        await self._link.request(DiscoveryGrant(userId=username, token=token),
                                 frozenset({DISCOVERY_GRANTED}))

    async def withdraw(self, username: str) -> None:
        """``username`` is no contact of ours any more (removed, blocked, declined): the
        capabilities they may hold from us end, on the server, so they are a stranger
        to lookups and claims again. Nothing to do if we never granted any."""
        if not self._codes.withdraw_tokens(username):
            return
        self._set_pending([*(n for n in self._pending() if n != username), username])
        if self._link.is_up:  # else at the next connect (:meth:`send_pending`)
            await self._withdraw_pending()

    async def send_pending(self) -> None:
        """After a connect: the withdrawals made offline (kept for the next try if the
        server cannot take them now)."""
        with contextlib.suppress(SottovoceError):
            await self._withdraw_pending()

    async def _withdraw_pending(self) -> None:
        for name in self._pending():
            tokens = tuple(self._codes.withdraw_tokens(name))
            await self._link.request(DiscoveryWithdraw(tokens=tokens),
                                     frozenset({DISCOVERY_WITHDRAWN}))
            self._set_pending([n for n in self._pending() if n != name])

    def _pending(self) -> list[str]:
        raw = self._store.get_secret(_PENDING)
        return [] if raw is None else [str(n) for n in json.loads(raw)]

    def _set_pending(self, names: list[str]) -> None:
        with self._store.transaction():
            self._store.put_secret(_PENDING, json.dumps(names).encode())

    async def reach(self, username: str, code: str, *, timeout: float = REACH_TIMEOUT_S,
                    ) -> None:
        """Ask ``username`` (if strict) to let us in with a friend verification code, and
        wait until it did; a name we can look up already needs nothing. The server's
        answer is the same whether or not the name exists; only the owner's grant tells."""
        code = code.strip()
        if fvc.is_totp(code):
            proof = fvc.code_proof(code, owner=username, requester=self._me)
            request = ContactRequest(username=username, proof=proof)
        elif fvc.static_slot(code) is not None:
            request = ContactRequest(username=username, staticCode=code)
        else:
            raise UsageError("a friend verification code is 8 digits, or NN-NNNNNNNN "
                             "(a static code)")
        try:
            await self._lookup(username)
            return  # found already (not strict, or it let us in): no code needed
        except ServerError as exc:
            if exc.code != "unknown_user":
                raise
        event = self._granted.setdefault(username, asyncio.Event())
        event.clear()
        await self._link.request(request, frozenset({CONTACT_REQUEST_ACCEPTED}))
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            raise UsageError(
                f"{username} did not let you in: the code may be wrong, used or expired, or "
                "none of their devices is online (ask for a new code and try again)"
            ) from None

    async def mode(self, new: str | None = None) -> str:
        """The account's mode on the server, after setting it to ``new`` if given."""
        if new is not None and new not in MODES:
            raise UsageError(f"discovery mode must be one of {', '.join(MODES)}")
        was = self._cached()
        _, data = await self._link.request(DiscoverySet(mode=new),
                                           frozenset({DISCOVERY_RESULT}))
        mode = data.get("mode")
        if mode not in MODES:
            raise RemoteError("the server answered with an unknown discovery mode")
        with self._store.transaction():
            self._store.put_secret(_MODE, str(mode).encode())
        if mode == "strict" and was != "strict":
            # Our contacts must keep finding us: each gets a capability of its own (the
            # server learns whom it hands them to; see docs/threat-model.md §Discovery).
            for name in self._contacts.contacts():
                await self.grant(name)
        return str(mode)

    def _cached(self) -> str | None:
        raw = self._store.get_secret(_MODE)
        return None if raw is None else raw.decode()

    async def let_in(self, username: str) -> bool:
        """After we made ``username`` a contact: if we are strict, let them find us."""
        if self._cached() != "strict" or username == self._me:
            return False
        await self.grant(username)
        return True

    async def find(self, prefix: str) -> list[str]:
        """The public accounts whose name starts with ``prefix`` (at most FIND_LIMIT)."""
        if len(prefix) < FIND_MIN_PREFIX:
            raise UsageError(f"a search needs at least {FIND_MIN_PREFIX} characters")
        _, data = await self._link.request(Find(prefix=prefix), frozenset({FIND_RESULT}))
        names = data.get("usernames")
        if not isinstance(names, list) or len(names) > FIND_LIMIT or not all(
            isinstance(n, str) and ID_RE.fullmatch(n) and n.startswith(prefix) for n in names
        ):
            raise RemoteError("the server answered a search with a malformed list")
        return [str(n) for n in names]
