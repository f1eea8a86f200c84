"""Accounts and devices, written once for every engine (:mod:`.txn`).

An account row is never deleted: deletion leaves a tombstone (``deleted_at``)
so the name can never be registered again. Device rows are never deleted
either (revocation is a flag), which is what lets engines cache device ids.
"""

from __future__ import annotations

from sottovoce.kt.map import ChangeKind
from sottovoce.server.storage import kt as kt_tables
from sottovoce.server.storage.base import (
    AccountRecord,
    DeviceExists,
    DeviceRecord,
    UnknownAccount,
    UsernameTaken,
)
from sottovoce.server.storage.txn import DevId, Txn, blob, execute, one, rows

#: Tables whose rows belong to one device and go when it is revoked or its account deleted.
DEVICE_OWNED = ("prekeys", "fallback_keys", "inbox", "inbox_usage")
#: And, on account deletion, its KeyPackages too (a revoked device's stay unclaimable:
#: claims skip revoked devices).
ACCOUNT_OWNED = (
    *DEVICE_OWNED, "key_packages", "key_package_last_resorts", "key_package_devices"
)

_NEW_DEVICE = (
    "INSERT INTO devices(user_id, device_id, certificate, created_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)


_CERT_STATEMENT = (
    "INSERT INTO account_statements(user_id, kind, body, received_at) "
    "VALUES (?, 'certificate', ?, ?) ON CONFLICT DO NOTHING"
)


def logged(
    kt: kt_tables.KTWriter | None, user: str, kind: ChangeKind, now: int, *,
    account_key: bytes | None = None, recovery_key: bytes | None = None,
) -> Txn[None]:
    """The change just made, appended to the key-transparency log in the same transaction
    (when the server keeps one: storage tests without KT keys pass None); the keys as in
    :func:`kt_tables.record` (an empty recovery key: none registered)."""
    if kt is not None:
        yield from kt_tables.record(kt, user, kind, now, account_key=account_key,
                                    recovery_key=recovery_key or None)


def create_account(
    user: str, account_key: bytes, device: str, certificate: bytes, now: int,
    recovery_key: bytes | None = None,
    kt: kt_tables.KTWriter | None = None,
) -> Txn[None]:
    """The first certificate is kept as a statement too (storage/statements.py)."""
    if not (yield execute(
        "INSERT INTO accounts(user_id, account_key, genesis_key, recovery_key, created_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        user, account_key, account_key, recovery_key, now,
    )):
        raise UsernameTaken("username is taken")
    yield execute(_NEW_DEVICE, user, device, certificate, now)
    yield execute(_CERT_STATEMENT, user, certificate, now)
    yield from logged(kt, user, ChangeKind.REGISTRATION, now, recovery_key=recovery_key)


def add_device(
    user: str, device: str, certificate: bytes, now: int, kt: kt_tables.KTWriter | None = None
) -> Txn[None]:
    if (yield one("SELECT 1 FROM accounts WHERE user_id=? AND deleted_at IS NULL", user)) is None:
        raise UnknownAccount("no such account")
    if not (yield execute(_NEW_DEVICE, user, device, certificate, now)):
        raise DeviceExists("device id already registered")
    yield execute(_CERT_STATEMENT, user, certificate, now)
    yield from logged(kt, user, ChangeKind.DEVICE_ADDED, now)


def revoke_device(
    user: str, device: str, now: int, kt: kt_tables.KTWriter | None = None
) -> Txn[int]:
    """Returns the device's id: the engine forgets what it cached of its inbox usage."""
    dev = yield DevId(user, device)
    if dev is None:
        raise UnknownAccount("no such device")
    revoked = yield execute(
        "UPDATE devices SET revoked_at=?, push_endpoint=NULL WHERE dev=? AND revoked_at IS NULL",
        now, dev,
    )
    for table in DEVICE_OWNED:
        yield execute(f"DELETE FROM {table} WHERE dev=?", dev)  # noqa: S608 -- constants
    if revoked:  # revoking a revoked device again changes nothing to log
        yield from logged(kt, user, ChangeKind.DEVICE_REVOKED, now)
    return int(dev)


def delete_account(
    user: str, now: int, kt: kt_tables.KTWriter | None = None
) -> Txn[tuple[tuple[str, ...], list[int]]]:
    """(device ids it revoked, ids of all its devices) — see ``Storage.delete_account``."""
    # Row lock on the account: a concurrent add_device (FK check) waits for us.
    found = yield one("SELECT deleted_at FROM accounts WHERE user_id=? FOR UPDATE", user)
    if found is None or found[0] is not None:
        raise UnknownAccount("no such account")
    devices = yield rows(
        "SELECT dev, device_id, revoked_at FROM devices WHERE user_id=? ORDER BY dev FOR UPDATE",
        user,
    )
    # The row stays as a tombstone: the name is never handed out again (Storage docs).
    yield execute("UPDATE accounts SET deleted_at=? WHERE user_id=?", now, user)
    yield execute(
        "UPDATE devices SET revoked_at=coalesce(revoked_at, ?), push_endpoint=NULL "
        "WHERE user_id=?",
        now, user,
    )
    for table in ACCOUNT_OWNED:
        yield execute(
            f"DELETE FROM {table} WHERE dev IN (SELECT dev FROM devices WHERE user_id=?)",  # noqa: S608
            user,
        )
    yield execute("DELETE FROM correspondents WHERE user_id=? OR peer=?", user, user)
    yield execute("DELETE FROM blocks WHERE user_id=? OR blocked=?", user, user)
    yield from logged(kt, user, ChangeKind.DELETION, now)
    active = tuple(str(r[1]) for r in devices if r[2] is None)
    return active, [int(r[0]) for r in devices]


def get_account(user: str) -> Txn[AccountRecord | None]:
    found = yield one(
        "SELECT account_key, deleted_at, forked, genesis_key, recovery_key FROM accounts "
        "WHERE user_id=?", user
    )
    if found is None:
        return None
    devices = yield rows(
        "SELECT device_id, certificate, revoked_at, push_endpoint FROM devices "
        "WHERE user_id=? ORDER BY dev",
        user,
    )
    blocked = yield rows("SELECT blocked FROM blocks WHERE user_id=?", user)
    return AccountRecord(
        user_id=user,
        blocked=frozenset(str(r[0]) for r in blocked),
        account_key=blob(found[0]),
        devices=tuple(
            DeviceRecord(device_id=r[0], certificate=blob(r[1]), revoked=r[2] is not None,
                         push_endpoint=r[3])
            for r in devices
        ),
        deleted=found[1] is not None,
        forked=bool(found[2]),
        genesis_key=blob(found[3]) if found[3] is not None else blob(found[0]),
        recovery_key=blob(found[4]) if found[4] is not None else b"",
    )


def set_push_endpoint(user: str, device: str, endpoint: str | None) -> Txn[None]:
    yield execute(
        "UPDATE devices SET push_endpoint=? WHERE user_id=? AND device_id=?",
        endpoint, user, device,
    )


def set_block(user: str, peer: str, blocked: bool) -> Txn[None]:
    if blocked:
        yield execute(
            "INSERT INTO blocks(user_id, blocked) VALUES (?, ?) ON CONFLICT DO NOTHING",
            user, peer,
        )
    else:
        yield execute("DELETE FROM blocks WHERE user_id=? AND blocked=?", user, peer)
