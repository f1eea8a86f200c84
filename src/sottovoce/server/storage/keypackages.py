"""MLS KeyPackages, written once for every engine (:mod:`.txn`).

A one-time KeyPackage is handed out at most once (taken and deleted in one
statement, as prekeys are: :mod:`.prekeys`); the last-resort one is never consumed.
Both are kept per MLS cipher suite (RFC 9420 §17.1 code point): a device has a
one-time stock and a last-resort KeyPackage of each suite it uploads, and a claim
takes one of the suite it names.
"""

from __future__ import annotations

from collections.abc import Sequence

from sottovoce.server.storage.base import UnknownAccount
from sottovoce.server.storage.roombase import ClaimedKeyPackage, Member
from sottovoce.server.storage.rooms import refuse
from sottovoce.server.storage.txn import DevId, Lock, Txn, blob, execute, many, one, rows, val

_COUNT = "SELECT count(*) FROM key_packages WHERE dev=? AND suite=?"
#: Take-and-delete the oldest one-time KeyPackage of a suite; ``{}``: the row-lock clause.
_CLAIM = (
    "DELETE FROM key_packages WHERE dev=? AND id = ("
    "SELECT id FROM key_packages WHERE dev=? AND suite=? ORDER BY id LIMIT 1{}) "
    "RETURNING key_package"
)
_LAST_RESORT = "SELECT last_resort FROM key_package_last_resorts WHERE dev=? AND suite=?"


def store_key_packages(
    user: str, device: str, kps: Sequence[bytes], last_resort: bytes | None, max_stored: int,
    suite: int = 1,
) -> Txn[int]:
    dev = yield DevId(user, device)
    if dev is None:
        raise UnknownAccount("device is not registered")
    # Uploads of one device are serialized (on any node) so that the cap holds.
    yield Lock("kps", dev)
    have = int((yield val(_COUNT, dev, suite)))
    if have + len(kps) > max_stored:
        raise refuse("keypackages_full", f"at most {max_stored} KeyPackages per device and suite")
    # In order: claims hand out the oldest first.
    yield many("INSERT INTO key_packages(dev, suite, key_package) VALUES (?, ?, ?)",
               [(dev, suite, kp) for kp in kps])
    if last_resort is not None:
        yield execute(
            "INSERT INTO key_package_last_resorts(dev, suite, last_resort) VALUES (?, ?, ?) "
            "ON CONFLICT (dev, suite) DO UPDATE SET last_resort = excluded.last_resort",
            dev, suite, last_resort,
        )
    yield execute("INSERT INTO key_package_devices(dev) VALUES (?) ON CONFLICT DO NOTHING", dev)
    return have + len(kps)


def withdraw_key_packages(user: str, device: str) -> Txn[int]:
    """Delete the device's unclaimed one-time KeyPackages of every suite; how many there were."""
    dev = yield DevId(user, device)
    if dev is None:
        raise UnknownAccount("device is not registered")
    yield Lock("kps", dev)
    have = int((yield val("SELECT count(*) FROM key_packages WHERE dev=?", dev)))
    yield execute("DELETE FROM key_packages WHERE dev=?", dev)
    return have


def count_key_packages(user: str, device: str, suite: int = 1) -> Txn[int | None]:
    """One-time KeyPackages of ``suite`` stored; None if the device never uploaded any."""
    row = yield one(
        "SELECT d.dev, (SELECT count(*) FROM key_packages k WHERE k.dev = d.dev AND k.suite=?) "
        "FROM devices d JOIN key_package_devices kd ON kd.dev = d.dev "
        "WHERE d.user_id=? AND d.device_id=?",
        suite, user, device,
    )
    return None if row is None else int(row[1])


def key_package_stock(user: str, device: str) -> Txn[dict[int, int]]:
    """One-time KeyPackages stored per suite, for every suite the device has uploaded
    (a suite with only its last-resort KeyPackage left counts 0)."""
    found = yield rows(
        "SELECT s.suite, (SELECT count(*) FROM key_packages k "
        "                 WHERE k.dev = s.dev AND k.suite = s.suite) "
        "FROM (SELECT dev, suite FROM key_package_last_resorts UNION "
        "      SELECT dev, suite FROM key_packages) s "
        "JOIN devices d ON d.dev = s.dev WHERE d.user_id=? AND d.device_id=?",
        user, device,
    )
    return {int(suite): int(count) for suite, count in found}


def _take(dev: int, suite: int, one_time: bool) -> Txn[bytes | None]:
    """The device's next one-time KeyPackage of ``suite`` (deleted as it is taken), else
    its last-resort one (kept), else None; as :func:`.prekeys.take_one` takes a prekey."""
    key = None
    if one_time:
        key = yield val(_CLAIM.format(" FOR UPDATE SKIP LOCKED"), dev, dev, suite)
        if key is None:
            key = yield val(_CLAIM.format(" FOR UPDATE"), dev, dev, suite, locking=True)
    if key is None:
        key = yield val(_LAST_RESORT, dev, suite)
    return None if key is None else blob(key)


def claim_key_packages(
    user: str, exclude: Member | None, one_time: bool, suite: int = 1
) -> Txn[list[ClaimedKeyPackage]]:
    devices = yield rows(
        "SELECT dev, device_id FROM devices WHERE user_id=? AND revoked_at IS NULL ORDER BY dev",
        user,
    )
    out: list[ClaimedKeyPackage] = []
    for dev, device_id in devices:
        if exclude is not None and (user, device_id) == exclude:
            continue
        kp = yield from _take(dev, suite, one_time)
        if kp is not None:  # a device with none of this suite is passed over
            out.append(ClaimedKeyPackage(device_id, kp, int((yield val(_COUNT, dev, suite)))))
    return out
