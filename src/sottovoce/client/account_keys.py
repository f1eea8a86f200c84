"""The client's side of account-key succession and recovery (docs/protocol.md §Succession).

    contact's key changed ──► follow the chain from the pinned key (every link checked)
                              ──► KeysChanged, sessions with dropped devices forgotten
                              (a fork: AccountForked, nothing is sent to the account)
    device revoke         ──► succession old AK → new AK, the surviving devices re-certified,
                              the revocation, all in one upload
    account recover       ──► the recovery code's key signs a new AK and a new RK
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sottovoce.client.errors import IdentityChanged
from sottovoce.client.store import Contact
from sottovoce.crypto.rng import Random
from sottovoce.errors import DecodeError, IdentityError, RemoteError, UsageError
from sottovoce.identity import (
    AccountKey,
    DeviceCertificate,
    RevocationStatement,
)
from sottovoce.identity.succession import (
    ChainHead,
    Genesis,
    Recovery,
    Statement,
    Succession,
    decode_statement,
    follow,
    kind_of,
    new_recovery_code,
    recovery_key_from_code,
)
from sottovoce.protocol.events import SignedStatement
from sottovoce.secret import Secret


def directory_b64(value: Any, what: str) -> bytes:
    """A base64 field of a directory answer (``RemoteError`` naming ``what``)."""
    if not isinstance(value, str):
        raise RemoteError(f"directory {what} is not base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RemoteError(f"directory {what} is not base64") from None


def served_genesis(username: str, data: dict[str, Any]) -> Genesis | None:
    """The genesis keys a directory answer names (None: the server names none)."""
    raw = data.get("genesis")
    if not isinstance(raw, dict):
        return None
    ak = directory_b64(raw.get("accountKey"), "genesis key")
    rk = directory_b64(raw.get("recoveryKey", ""), "recovery key")
    if len(ak) != 32 or len(rk) not in (0, 32):
        raise RemoteError("directory genesis keys have the wrong length")
    return Genesis(username=username, account_key=ak, recovery_key=rk)


def served_chain(data: dict[str, Any]) -> list[Statement]:
    """The successions and recoveries of a directory answer (malformed ones are dropped:
    each is checked by its signatures anyway)."""
    out: list[Statement] = []
    items = data.get("chain")
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or item.get("kind") not in ("succession", "recovery"):
            continue
        try:
            raw = directory_b64(item.get("data"), "statement")
            out.append(decode_statement(str(item["kind"]), raw))
        except (DecodeError, RemoteError):
            continue
    return out


def check_change(
    pinned: Contact, served_key: bytes, data: dict[str, Any], *, now_ms: int
) -> ChainHead:
    """The served key is not the pinned one: accept it only if it is the head of a chain
    from the pinned genesis through the pinned key. Raises :class:`IdentityChanged`, or
    ``AccountForked`` while the account is forked."""
    username = pinned.username
    genesis = served_genesis(username, data)
    if genesis is None:
        raise IdentityChanged(username)
    if pinned.genesis_key and (pinned.genesis_key, pinned.recovery_key) != (
        genesis.account_key, genesis.recovery_key
    ):
        raise IdentityChanged(username)
    try:
        head = follow(genesis, served_chain(data), pinned_key=pinned.account_key, now_ms=now_ms)
    except IdentityError as exc:
        if exc.code == "account_forked":
            raise
        raise IdentityChanged(username) from None
    if head.account_key != served_key:
        raise IdentityChanged(username)
    return head


def to_wire(statements: Iterable[Statement]) -> tuple[SignedStatement, ...]:
    return tuple(SignedStatement(kind=kind_of(s), data=s.encode()) for s in statements)


@dataclass(frozen=True, slots=True)
class Rotation:
    """A new account key and the statements that hand the account over to it."""

    account_key: AccountKey
    statements: tuple[Statement, ...]
    #: This device's new certificate.
    certificate: DeviceCertificate


def recertify(
    key: AccountKey, devices: Iterable[DeviceCertificate], *, now_ms: int
) -> list[DeviceCertificate]:
    """The same devices, certified by ``key`` (their public keys unchanged)."""
    return [
        DeviceCertificate.issue(key, username=c.username, device_id=c.device_id, keys=c.keys,
                                now_ms=now_ms)
        for c in devices
    ]


def revoke_by_succession(
    old: AccountKey, own: DeviceCertificate, others: Iterable[DeviceCertificate],
    revoke: str, *, now_ms: int, rng: Random,
) -> Rotation:
    """``device revoke``: the statements that retire ``old`` (which the revoked device may
    still hold), re-certify every surviving device and revoke ``revoke``."""
    if revoke == own.device_id:
        raise UsageError("revoke this device from another device of the account")
    survivors = [c for c in others if c.device_id not in (revoke, own.device_id)]
    new = AccountKey.generate(rng)
    username = own.username
    mine, *theirs = recertify(new, [own, *survivors], now_ms=now_ms)
    statements: list[Statement] = [
        Succession.issue(old, new, username=username, now_ms=now_ms), mine, *theirs,
        RevocationStatement.issue(new, username=username, device_id=revoke, now_ms=now_ms),
    ]
    return Rotation(account_key=new, statements=tuple(statements), certificate=mine)


def recover(
    code: str, own: DeviceCertificate, *, now_ms: int, rng: Random
) -> tuple[Rotation, Secret]:
    """``account recover``: the recovery code's key names a new account key and a new
    recovery key (a new code, returned to be written down); only this device is certified
    under it (every other device is re-linked or revoked afterwards)."""
    username = own.username
    rk = recovery_key_from_code(code, username=username)
    new_code = new_recovery_code(rng)
    new_rk = recovery_key_from_code(new_code.expose().decode(), username=username)
    new = AccountKey.generate(rng)
    mine = recertify(new, [own], now_ms=now_ms)[0]
    recovery = Recovery.issue(rk, new, new_rk, username=username, now_ms=now_ms)
    return Rotation(account_key=new, statements=(recovery, mine), certificate=mine), new_code
