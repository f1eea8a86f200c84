"""MLS KeyPackages, written once for every engine (:mod:`.txn`).

A one-time KeyPackage is handed out at most once (taken and deleted in one
statement, as prekeys are); the last-resort one is never consumed.
"""

from __future__ import annotations

from collections.abc import Sequence

from sottovoce.server.storage.base import UnknownAccount
from sottovoce.server.storage.prekeys import stored_count, take_from_each
from sottovoce.server.storage.roombase import ClaimedKeyPackage, Member
from sottovoce.server.storage.rooms import refuse
from sottovoce.server.storage.txn import DevId, Txn, execute, many, one, rows

_COUNT = "SELECT count(*) FROM key_packages WHERE dev=?"
_CLAIM = (
    "DELETE FROM key_packages WHERE dev=? AND id = ("
    "SELECT id FROM key_packages WHERE dev=? ORDER BY id LIMIT 1{}) RETURNING key_package"
)


def store_key_packages(
    user: str, device: str, kps: Sequence[bytes], last_resort: bytes | None, max_stored: int
) -> Txn[int]:
    dev = yield DevId(user, device)
    if dev is None:
        raise UnknownAccount("device is not registered")
    have = yield from stored_count("kps", _COUNT, dev)
    if have + len(kps) > max_stored:
        raise refuse("keypackages_full", f"at most {max_stored} KeyPackages per device")
    # In order: claims hand out the oldest first.
    yield many("INSERT INTO key_packages(dev, key_package) VALUES (?, ?)",
               [(dev, kp) for kp in kps])
    if last_resort is not None:
        yield execute(
            "INSERT INTO key_package_devices(dev, last_resort) VALUES (?, ?) "
            "ON CONFLICT (dev) DO UPDATE SET last_resort = excluded.last_resort",
            dev, last_resort,
        )
    else:
        yield execute("INSERT INTO key_package_devices(dev) VALUES (?) ON CONFLICT DO NOTHING",
                      dev)
    return have + len(kps)


def withdraw_key_packages(user: str, device: str) -> Txn[int]:
    """Delete the device's unclaimed one-time KeyPackages; how many there were."""
    dev = yield DevId(user, device)
    if dev is None:
        raise UnknownAccount("device is not registered")
    have = yield from stored_count("kps", _COUNT, dev)
    yield execute("DELETE FROM key_packages WHERE dev=?", dev)
    return have


def count_key_packages(user: str, device: str) -> Txn[int | None]:
    """One-time KeyPackages stored; None if the device never uploaded any."""
    row = yield one(
        "SELECT d.dev, (SELECT count(*) FROM key_packages k WHERE k.dev = d.dev) "
        "FROM devices d JOIN key_package_devices kd ON kd.dev = d.dev "
        "WHERE d.user_id=? AND d.device_id=?",
        user, device,
    )
    return None if row is None else int(row[1])


def claim_key_packages(
    user: str, exclude: Member | None, one_time: bool
) -> Txn[list[ClaimedKeyPackage]]:
    devices = yield rows(
        "SELECT dev, device_id FROM devices WHERE user_id=? AND revoked_at IS NULL ORDER BY dev",
        user,
    )
    taken = yield from take_from_each(
        user, exclude, devices,
        _CLAIM, "SELECT last_resort FROM key_package_devices WHERE dev=?", _COUNT, one_time,
    )
    return [ClaimedKeyPackage(row[1], kp, left) for row, kp, left in taken]
