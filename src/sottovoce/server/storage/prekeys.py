"""Olm prekeys, written once for every engine (:mod:`.txn`).

A one-time prekey is handed out at most once: it is taken and deleted in one
statement (:func:`take_one`; :func:`take_from_each` does it for each device of an
account, for KeyPackages too). Where several writers
run (PostgreSQL), ``SKIP LOCKED`` lets concurrent claims take different keys;
only when every key left is held by another claim does the claim wait for them,
so the fallback key is handed out only when no one-time key remains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sottovoce.server.storage.base import ClaimedPrekey, PrekeysFull, UnknownAccount
from sottovoce.server.storage.txn import DevId, Lock, Txn, blob, execute, many, rows, val

_COUNT = "SELECT count(*) FROM prekeys WHERE dev=?"
#: Take-and-delete the first one-time key; ``{}``: the row-lock clause.
_CLAIM = (
    "DELETE FROM prekeys WHERE dev=? AND key_id = ("
    "SELECT key_id FROM prekeys WHERE dev=? ORDER BY key_id LIMIT 1{}) RETURNING prekey"
)


def take_one(claim: str, fallback: str, dev: int, one_time: bool) -> Txn[bytes | None]:
    """A device's next one-time key (deleted as it is taken), else its fallback (kept), else
    None. ``claim`` has ``{}`` where its subquery's row-lock clause goes and two ``?`` for
    ``dev``; ``fallback`` one. ``one_time=False``: the fallback only (a limited requester)."""
    key = None
    if one_time:
        # SKIP LOCKED lets concurrent claims (any node) take different keys without
        # waiting; only if every key left is locked, wait for those claims to finish.
        key = yield val(claim.format(" FOR UPDATE SKIP LOCKED"), dev, dev)
        if key is None:
            key = yield val(claim.format(" FOR UPDATE"), dev, dev, locking=True)
    if key is None:
        key = yield val(fallback, dev)
    return None if key is None else blob(key)


def take_from_each(
    user: str, exclude: tuple[str, str] | None, devices: Sequence[Sequence[Any]],
    claim: str, fallback: str, count: str, one_time: bool,
) -> Txn[list[tuple[Sequence[Any], bytes, int]]]:
    """One key from each of the account's ``devices`` (rows that start with dev, device_id)
    but ``exclude``, as :func:`take_one` takes it: (the row, the key, the one-time keys it
    has left by ``count``). A device with no key at all is passed over."""
    out: list[tuple[Sequence[Any], bytes, int]] = []
    for row in devices:
        dev, device_id = row[0], row[1]
        if exclude is not None and (user, device_id) == exclude:
            continue
        key = yield from take_one(claim, fallback, dev, one_time)
        if key is not None:
            out.append((row, key, int((yield val(count, dev)))))
    return out


def stored_count(name: str, count: str, dev: int) -> Txn[int]:
    """What the device has stored (``count`` with one ``?``), its uploads serialized (on
    any node) until the transaction ends, so that a cap checked against it holds."""
    yield Lock(name, dev)
    return int((yield val(count, dev)))


def store_prekeys(
    user: str, device: str, one_time: Sequence[tuple[str, bytes]], fallback: bytes | None,
    max_stored: int,
) -> Txn[int]:
    dev = yield DevId(user, device)
    if dev is None:
        raise UnknownAccount("no such device")
    have = yield from stored_count("prekeys", _COUNT, dev)
    if have + len(one_time) > max_stored:
        raise PrekeysFull("too many one-time keys stored")
    yield many(
        "INSERT INTO prekeys(dev, key_id, prekey) VALUES (?, ?, ?) "
        "ON CONFLICT (dev, key_id) DO UPDATE SET prekey = excluded.prekey",
        [(dev, kid, key) for kid, key in one_time],
    )
    if fallback is not None:
        yield execute(
            "INSERT INTO fallback_keys(dev, prekey) VALUES (?, ?) "
            "ON CONFLICT (dev) DO UPDATE SET prekey = excluded.prekey",
            dev, fallback,
        )
    return int((yield val(_COUNT, dev)))


def count_prekeys(user: str, device: str) -> Txn[int]:
    return int((yield val(
        "SELECT count(*) FROM prekeys JOIN devices USING(dev) WHERE user_id=? AND device_id=?",
        user, device,
    )))


def claim_prekeys(
    user: str, exclude: tuple[str, str] | None, one_time: bool
) -> Txn[list[ClaimedPrekey]]:
    devices = yield rows(
        "SELECT dev, device_id, certificate FROM devices WHERE user_id=? "
        "AND revoked_at IS NULL ORDER BY dev",
        user,
    )
    taken = yield from take_from_each(
        user, exclude, devices,
        _CLAIM, "SELECT prekey FROM fallback_keys WHERE dev=?", _COUNT, one_time,
    )
    return [ClaimedPrekey(row[1], blob(row[2]), prekey, left) for row, prekey, left in taken]
