"""Friend verification codes of this account (``client.fvc``; protocol/fvc.py).

The TOTP secret is made on first use and kept sealed in the store; every change (a new
secret, the last step used) goes to our other devices as an encrypted message to our
own account (content type ``fvc``), so each of them shows the same code and checks
the same way. A code is checked here, never on the server: a requester's proof is
compared with the codes of the current step and one either side, and a step that let
someone in is not accepted again (RFC 6238 §5.2: one use per code). Static codes are
made here, printed once and handed to the server only as scrypt hashes.
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
    StaticCode,
    StaticCodes,
)

FVC_CONTENT_TYPE = "fvc"
_SECRET = "fvc-totp"  # noqa: S105 - the record's name, not a secret
SendOwn = Callable[[str, bytes], Awaitable[object]]


class FriendCodes:
    def __init__(self, store: Store, link: Link, me: str,
                 clock_s: Callable[[], float] = time.time) -> None:
        self._store, self._link, self._me, self._clock = store, link, me, clock_s
        #: Sends a body to our other devices (set by the client, as for contacts).
        self.send_own: SendOwn | None = None

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
        if state is None:
            state = {"secret": pyotp.random_base32(), "lastStep": -1}
            self._save(state)
            await self._sync(state)
        return state

    def apply(self, body: bytes) -> None:
        """A change from one of our devices (authenticated: our own account's session)."""
        try:
            got = json.loads(body)
            secret, last = str(got["secret"]), int(got["lastStep"])
            pyotp.TOTP(secret).byte_secret()
        except (ValueError, KeyError, TypeError) as exc:
            raise DecodeError("malformed friend-code change") from exc
        mine = self._state()
        if mine is not None and mine["secret"] == secret:
            last = max(last, int(mine["lastStep"]))
        self._save({"secret": secret, "lastStep": last})

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

    def _window(self) -> list[tuple[int, str]]:
        """(step, code) of the accepted window not used yet, the current step first."""
        state = self._state()
        if state is None:
            return []
        totp = self._totp(state)
        return [(step, totp.at(step * fvc.TOTP_STEP_S))
                for step in fvc.totp_steps(int(self._clock()))
                if step > int(state["lastStep"])]

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

    async def check_proof(self, requester: str, proof: bytes) -> bool:
        """Whether ``requester``'s proof stands for a code of the window (then its step is
        spent). The three scrypts run in a worker thread, off the event loop."""
        window = self._window()

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
        codes, hashed = [], []
        for slot in range(count):
            digits = f"{secrets.randbelow(10**fvc.STATIC_DIGITS):0{fvc.STATIC_DIGITS}d}"
            code = fvc.static_code(slot, digits)
            salt = secrets.token_bytes(fvc.SALT_BYTES)
            codes.append(code)
            hashed.append(StaticCode(slot=slot, salt=salt, hash=fvc.static_hash(code, salt)))
        await self._link.request(StaticCodes(codes=tuple(hashed)),
                                 frozenset({FVC_STATIC_RESULT}))
        return codes

    async def revoke(self) -> None:
        """A new TOTP secret (the shown code dies) and no static codes left."""
        await self._link.request(StaticCodes(codes=()), frozenset({FVC_STATIC_RESULT}))
        state = {"secret": pyotp.random_base32(), "lastStep": -1}
        self._save(state)
        await self._sync(state)
