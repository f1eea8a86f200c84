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
ACCOUNT_OWNED = (*DEVICE_OWNED, "key_packages", "key_package_devices")

_NEW_DEVICE = (
    "INSERT INTO devices(user_id, device_id, certificate, created_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)


def _logged(kt: kt_tables.KTWriter | None, user: str, kind: ChangeKind, now: int) -> Txn[None]:
    """The change just made, appended to the key-transparency log in the same transaction
    (when the server keeps one: storage tests without KT keys pass None)."""
    if kt is not None:
        yield from kt_tables.record(kt, user, kind, now)


def create_account(
    user: str, account_key: bytes, device: str, certificate: bytes, now: int,
    kt: kt_tables.KTWriter | None = None,
) -> Txn[None]:
    if not (yield execute(
        "INSERT INTO accounts(user_id, account_key, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        user, account_key, now,
    )):
        raise UsernameTaken("username is taken")
    yield execute(_NEW_DEVICE, user, device, certificate, now)
    yield from _logged(kt, user, ChangeKind.REGISTRATION, now)


def add_device(
    user: str, device: str, certificate: bytes, now: int, kt: kt_tables.KTWriter | None = None
) -> Txn[None]:
    if (yield one("SELECT 1 FROM accounts WHERE user_id=? AND deleted_at IS NULL", user)) is None:
        raise UnknownAccount("no such account")
    if not (yield execute(_NEW_DEVICE, user, device, certificate, now)):
        raise DeviceExists("device id already registered")
    yield from _logged(kt, user, ChangeKind.DEVICE_ADDED, now)


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
        yield from _logged(kt, user, ChangeKind.DEVICE_REVOKED, now)
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
    yield from _logged(kt, user, ChangeKind.DELETION, now)
    active = tuple(str(r[1]) for r in devices if r[2] is None)
    return active, [int(r[0]) for r in devices]


def get_account(user: str) -> Txn[AccountRecord | None]:
    found = yield one("SELECT account_key, deleted_at FROM accounts WHERE user_id=?", user)
    if found is None:
        return None
    devices = yield rows(
        "SELECT device_id, certificate, revoked_at, push_endpoint FROM devices "
        "WHERE user_id=? ORDER BY dev",
        user,
    )
    return AccountRecord(
        user_id=user,
        account_key=blob(found[0]),
        devices=tuple(
            DeviceRecord(device_id=r[0], certificate=blob(r[1]), revoked=r[2] is not None,
                         push_endpoint=r[3])
            for r in devices
        ),
        deleted=found[1] is not None,
    )


def set_push_endpoint(user: str, device: str, endpoint: str | None) -> Txn[None]:
    yield execute(
        "UPDATE devices SET push_endpoint=? WHERE user_id=? AND device_id=?",
        endpoint, user, device,
    )
