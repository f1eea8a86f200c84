"""Account-key succession, recovery, revocation and certificate renewal on the server
(docs/protocol.md §Succession).

    sottovoce.account.statements {statements}  (authenticated)      ──► sottovoce.account.head
    sottovoce.device.revoke {revocation}       (authenticated)      ──► sottovoce.device.revoked
    sottovoce.device.add {…, statements}       (before login: recovery on a new or revoked
                                                device, renewal of an expired certificate)

Every statement is checked before anything is stored: successions and recoveries by
their own signatures (they are kept whoever sends them and in whatever order, and the
ruling chain is what ``resolve()`` makes of the whole set: storage/statements.py);
certificates and revocations must be signed by the account key that rules once this
upload's successions are counted, so a key that was succeeded can certify, revoke and
renew nothing any more, and while the account is forked no account key is obeyed.
Devices that the new head no longer certifies are revoked at once: their connections
close, their rooms are asked to remove them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Protocol

from nacl.bindings import crypto_core_ed25519_is_valid_point

from sottovoce.errors import IdentityError
from sottovoce.identity import RevocationStatement
from sottovoce.identity.succession import (
    Recovery,
    Statement,
    Succession,
    decode_statement,
    kind_of,
    signed_revocation,
)
from sottovoce.protocol.events import DEVICE_REVOKED, KEYS_CHANGED, SignedStatement, b64, frame
from sottovoce.server.errors import WireFailure, decoded
from sottovoce.server.storage.base import (
    AccountRecord,
    Applied,
    StatementsFull,
    Storage,
    UnknownAccount,
)


class _Directory(Protocol):
    async def account(self, user_id: str) -> AccountRecord | None: ...
    async def refresh(self, user_id: str) -> AccountRecord | None: ...
    async def logged(self) -> None: ...


class _Presence(Protocol):
    def revoked(self, key: tuple[str, str], text: str) -> None: ...
    def notify_user(self, user: str, text: str, *, skip: Any = None) -> None: ...


class _Rooms(Protocol):
    def device_revoked(self, user: str, device: str) -> None: ...


class _Log(Protocol):
    def info(self, event: str, **fields: Any) -> None: ...


def check_recovery_key(key: bytes | None, account_key: bytes) -> None:
    """A registration's recovery key: an Ed25519 public key other than the account key."""
    if key is None:
        return
    if not crypto_core_ed25519_is_valid_point(key):  # on the curve, in the prime-order group
        raise WireFailure("invalid_recovery_key", "recovery key is not a public key")
    if key == account_key:
        raise WireFailure("invalid_recovery_key", "recovery key must differ from the account key")


def decode_statements(user: str, items: Iterable[SignedStatement]) -> list[Statement]:
    """Decode and check each statement's own signatures; all must be about ``user``."""
    out: list[Statement] = []
    for item in items:
        st = decoded(partial(decode_statement, item.kind), item.data, "invalid_statement",
                     item.kind)
        if st.username != user:
            raise WireFailure("invalid_statement", f"{item.kind} is about another account")
        if not _self_consistent(st):
            raise WireFailure("invalid_statement", f"{item.kind} signature is invalid")
        out.append(st)
    return out


def _self_consistent(st: Statement) -> bool:
    if isinstance(st, Succession | Recovery):
        return st.valid()
    if isinstance(st, RevocationStatement):
        return signed_revocation(st, st.account_key)
    try:  # a certificate, as of its own start (an expired one may still be uploaded)
        st.verify(now_ms=st.created_at_ms, account_key=st.account_key)
    except IdentityError:
        return False
    return True


_STALE = {
    "account_forked": "two successions of one account key: only the recovery code settles it",
    "stale_account_key": "signed by an account key that no longer rules this account",
}


def stale_key() -> WireFailure:
    """What statements for a name nobody holds get: the answer to a stranger's statements
    about an account that exists (a recertified device.add is no existence oracle)."""
    return WireFailure("stale_account_key", _STALE["stale_account_key"])


class AccountKeys:
    """Applies statements and what follows from them (revoked devices go at once)."""

    def __init__(self, storage: Storage, directory: _Directory, presence: _Presence,
                 rooms: _Rooms, log: _Log) -> None:
        self._storage, self._directory, self._presence = storage, directory, presence
        self._rooms, self._log = rooms, log

    async def apply(self, user: str, statements: Sequence[Statement], now_ms: int,
                    *, skip: Any = None) -> AccountRecord:
        """Keep ``statements`` (decoded and checked) and act on the result; returns the
        account as it now stands."""
        await self._store(user, statements, now_ms, skip)
        rec = await self._directory.account(user)
        if rec is None:
            raise WireFailure("unauthorized", "account no longer exists")
        return rec

    async def _store(self, user: str, statements: Sequence[Statement], now_ms: int,
                     skip: Any) -> Applied:
        before = await self._directory.account(user)
        try:
            applied = await self._storage.apply_statements(user, statements, now_ms)
        except UnknownAccount:
            raise WireFailure("unauthorized", "account no longer exists") from None
        except StatementsFull:
            raise WireFailure(
                "too_many_statements", "this account keeps no more statements; "
                "only a recovery is accepted"
            ) from None
        await self._directory.refresh(user)
        if applied.change is not None:
            await self._directory.logged()
        head = applied.head
        if before is None or (before.account_key, before.forked) != (head.account_key,
                                                                     head.forked):
            # Its contacts look it up again and follow the chain (or learn of the fork).
            text = frame(KEYS_CHANGED, {"username": user})
            for peer in await self._storage.correspondents(user):
                self._presence.notify_user(peer, text)
        self._log.info("account.statements", userId=user, count=len(statements),
                       forked=applied.head.forked, revoked=len(applied.revoked))
        for device in applied.revoked:
            self._rooms.device_revoked(user, device)
            text = frame(DEVICE_REVOKED, {"deviceId": device})
            self._presence.revoked((user, device), text)
            self._presence.notify_user(user, text, skip=skip)
        if applied.refused is not None:
            raise WireFailure(applied.refused, _STALE[applied.refused])
        return applied


def head_data(rec: AccountRecord) -> dict[str, Any]:
    """``sottovoce.account.head``'s fields."""
    return {
        "accountKey": b64(rec.account_key),
        "forked": rec.forked,
        "devices": [d.device_id for d in rec.active()],
        "revokedDeviceIds": [d.device_id for d in rec.devices if d.revoked],
    }


def chain_data(genesis_key: bytes, recovery_key: bytes,
               statements: Sequence[Statement]) -> dict[str, Any]:
    """The directory answer's account history: the genesis keys and every succession and
    recovery, for a contact to follow from the key it pinned (docs/protocol.md §Succession)."""
    return {
        "genesis": {"accountKey": b64(genesis_key), "recoveryKey": b64(recovery_key)},
        "chain": [{"kind": kind_of(s), "data": b64(s.encode())} for s in statements],
    }


