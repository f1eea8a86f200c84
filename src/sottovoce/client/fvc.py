"""Friend verification codes of this account (``client.fvc``; protocol/fvc.py).

The TOTP secret is made on first use and kept sealed in the store; every change (a new
secret, the last step used) goes to our other devices as an encrypted message to our
own account (content type ``fvc``), so each of them shows the same code and checks
the same way. A code is checked here, never on the server: a requester's proof is
compared with the codes of the current step and one either side, and a step that let
someone in is not accepted again (RFC 6238 §5.2: one use per code). Static codes are
made here, printed once and handed to the server only as scrypt hashes.

A request that waited on the server for us to come online carries the time the server
received it: its code is judged as of that stamp, if the stamp is no older than the
server keeps a request (a week) and not ahead of our clock (``fvc.STAMP_SKEW_S``).

The state also holds what lets any of our devices withdraw a capability later: the
key our grants are derived from (``fvc.grant_token``) and the hashes of the static
codes we handed out (a used one grants ``fvc.static_grant_token``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyotp

from sottovoce.client.ports import Link
from sottovoce.client.store import Store
from sottovoce.errors import DecodeError, RemoteError, UsageError
from sottovoce.protocol import fvc
from sottovoce.protocol.discovery import (
    FVC_STATIC_RESULT,
    MAX_STATIC_CODES,
    MAX_WITHDRAW_TOKENS,
    StaticCode,
    StaticCodes,
)

FVC_CONTENT_TYPE = "fvc"
_SECRET = "fvc-totp"  # noqa: S105 - the record's name, not a secret
SendOwn = Callable[[str, bytes], Awaitable[object]]
#: Hashes of static codes kept (withdrawing names one capability per code, plus one).
_KEPT_STATIC = MAX_WITHDRAW_TOKENS - 1


class FriendCodes:
    def __init__(self, store: Store, link: Link, me: str,
                 clock_s: Callable[[], float] = time.time) -> None:
        self._store, self._link, self._me, self._clock = store, link, me, clock_s
        #: Sends a body to our other devices (set by the client, as for contacts).
        self.send_own: SendOwn | None = None
        self._checking = asyncio.Lock()

    # --- state ------------------------------------------------------------------------

    def _state(self) -> dict[str, Any] | None:
        raw = self._store.get_secret(_SECRET)
        return None if raw is None else dict(json.loads(raw))

    def _save(self, state: dict[str, Any]) -> None:
        with self._store.transaction():
            self._store.put_secret(_SECRET, json.dumps(state).encode())

    async def _sync(self, state: dict[str, Any]) -> None:
        if self.send_own is not None:
            with contextlib.suppress(RemoteError):  # no other device of ours
                await self.send_own(FVC_CONTENT_TYPE, json.dumps(state).encode())

    async def _ensure(self) -> dict[str, Any]:
        state = self._state()
        if state is None or "grantKey" not in state:
            state = {"secret": pyotp.random_base32(), "lastStep": -1, **(state or {}),
                     "grantKey": secrets.token_hex(32), "static": []}
            self._save(state)
            await self._sync(state)
        return state

    def apply(self, body: bytes) -> None:
        """A change from one of our devices (authenticated: our own account's session)."""
        try:
            got = json.loads(body)
            secret, last = str(got["secret"]), int(got["lastStep"])
            pyotp.TOTP(secret).byte_secret()
            key = got.get("grantKey")
            static = [bytes.fromhex(h).hex() for h in got.get("static", [])]
            if key is not None and len(bytes.fromhex(key)) != 32:
                raise ValueError("grant key")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DecodeError("malformed friend-code change") from exc
        mine = self._state() or {}
        if mine.get("secret") == secret:
            last = max(last, int(mine["lastStep"]))
        # Both sides end with the same key (the smaller) and every code hash either had.
        keys = [k for k in (key, mine.get("grantKey")) if k is not None]
        merged = [*mine.get("static", []), *(h for h in static
                                             if h not in mine.get("static", []))]
        self._save({"secret": secret, "lastStep": last, "static": merged[-_KEPT_STATIC:],
                    **({"grantKey": min(keys)} if keys else {})})

    # --- capabilities (client/discovery.py grants and withdraws them) --------------------

    async def grant_token(self, username: str) -> bytes:
        """The capability this account grants ``username`` (the same on each device)."""
        state = await self._ensure()
        return fvc.grant_token(bytes.fromhex(state["grantKey"]), username)

    def withdraw_tokens(self, username: str) -> list[bytes]:
        """Every capability ``username`` may hold from us: our grant and one per static
        code we handed out (whichever they used); none if we never granted any."""
        state = self._state()
        if state is None or "grantKey" not in state:
            return []
        return [fvc.grant_token(bytes.fromhex(state["grantKey"]), username),
                *(fvc.static_grant_token(bytes.fromhex(h), username)
                  for h in state.get("static", []))]

    # --- TOTP -------------------------------------------------------------------------

    @staticmethod
    def _totp(state: dict[str, Any]) -> pyotp.TOTP:
        return pyotp.TOTP(state["secret"], digits=fvc.TOTP_DIGITS, interval=fvc.TOTP_STEP_S)

    async def current(self) -> tuple[str, int]:
        """The code to give a friend now, and the seconds it stays the current one."""
        state = await self._ensure()
        now = int(self._clock())
        left = fvc.TOTP_STEP_S - now % fvc.TOTP_STEP_S
        return self._totp(state).at(now), left

    def _window(self, at_s: int | None = None) -> list[tuple[int, str]]:
        """(step, code) of the window accepted at ``at_s`` (default: now) not used yet,
        its own step first."""
        state = self._state()
        if state is None:
            return []
        totp = self._totp(state)
        return [(step, totp.at(step * fvc.TOTP_STEP_S))
                for step in fvc.totp_steps(int(self._clock()) if at_s is None else at_s)
                if step > int(state["lastStep"])]

    def judged_at(self, received_ms: int | None) -> int | None:
        """The time (s) a request's code is judged at: the server's receive stamp if it
        is within bounds, now without one; None (refused) for a stamp out of bounds."""
        now = int(self._clock())
        if received_ms is None:
            return now
        stamp = received_ms // 1000
        if not now - fvc.REQUEST_MAX_AGE_S <= stamp <= now + fvc.STAMP_SKEW_S:
            return None
        return stamp

    def _spend(self, step: int) -> None:
        state = self._state()
        if state is not None:
            state["lastStep"] = max(step, int(state["lastStep"]))
            self._save(state)

    def check(self, code: str) -> bool:
        """Whether ``code`` itself is good now (then its step is spent)."""
        for step, expected in self._window():
            if hmac.compare_digest(code, expected):
                self._spend(step)
                return True
        return False

    async def check_proof(self, requester: str, proof: bytes,
                          received_ms: int | None = None) -> bool:
        """Whether ``requester``'s proof stands for a code of the window at the server's
        receive stamp (:meth:`judged_at`; then its step is spent). The three scrypts run
        in a worker thread, off the event loop."""
        async with self._checking:  # one at a time: two requests must not share a step
            return await self._check_proof(requester, proof, received_ms)

    async def _check_proof(self, requester: str, proof: bytes, received_ms: int | None,
                           ) -> bool:
        at = self.judged_at(received_ms)
        if at is None:
            return False
        window = self._window(at)

        def matching() -> int | None:
            for step, code in window:
                if hmac.compare_digest(
                        proof, fvc.code_proof(code, owner=self._me, requester=requester)):
                    return step
            return None

        step = await asyncio.to_thread(matching)
        if step is None:
            return False
        self._spend(step)
        return True

    async def spent_elsewhere(self) -> None:
        """Tell our other devices which step was used (after :meth:`check` said yes)."""
        state = self._state()
        if state is not None:
            await self._sync(state)

    # --- static codes and revocation ----------------------------------------------------

    async def new_static(self, count: int) -> list[str]:
        """``count`` new single-use codes (the old ones stop working); shown once."""
        if not 1 <= count <= MAX_STATIC_CODES:
            raise UsageError(f"make 1-{MAX_STATIC_CODES} static codes at a time")
        state = await self._ensure()
        codes, hashed = [], []
        for slot in range(count):
            digits = f"{secrets.randbelow(10**fvc.STATIC_DIGITS):0{fvc.STATIC_DIGITS}d}"
            code = fvc.static_code(slot, digits)
            salt = secrets.token_bytes(fvc.SALT_BYTES)
            codes.append(code)
            hashed.append(StaticCode(slot=slot, salt=salt, hash=fvc.static_hash(code, salt)))
        await self._link.request(StaticCodes(codes=tuple(hashed)),
                                 frozenset({FVC_STATIC_RESULT}))
        # Kept so that the capability a code grants can be withdrawn later.
        state = self._state() or state
        state["static"] = [*state.get("static", []), *(c.hash.hex() for c in hashed)]
        state["static"] = state["static"][-_KEPT_STATIC:]
        self._save(state)
        await self._sync(state)
        return codes

    async def revoke(self) -> None:
        """A new TOTP secret (the shown code dies) and no static codes left."""
        await self._link.request(StaticCodes(codes=()), frozenset({FVC_STATIC_RESULT}))
        state = {**(self._state() or {}), "secret": pyotp.random_base32(), "lastStep": -1}
        self._save(state)
        await self._sync(state)
