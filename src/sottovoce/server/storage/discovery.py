"""Discovery modes and static friend verification codes (schema version 14), written once
for both engines (storage/txn.py).

An account in the default mode has no row in ``discovery``; a public or strict one has
its mode there. A prefix search compares the start of each public name with the
prefix (``substr``: the same on both engines, whatever the database's collation;
the table holds only the accounts that left the default mode) and skips deleted
accounts. Static codes are stored only as ``(salt, scrypt hash)`` per
slot; using one deletes its row in the transaction that checks it.

A TOTP contact request to a strict account waits in ``contact_requests`` (schema
version 16) with the time the server received it until one of the owner's devices
connects and takes it, at most ``max_age`` (a week) and ``max_rows`` per account.
"""

from __future__ import annotations

from collections.abc import Sequence

from sottovoce.server.storage.txn import Txn, blob, execute, one, rows, val

DEFAULT, PUBLIC, STRICT = 0, 1, 2
MODES = {"default": DEFAULT, "public": PUBLIC, "strict": STRICT}
NAMES = {v: k for k, v in MODES.items()}


def set_mode(user: str, mode: int) -> Txn[None]:
    if mode == DEFAULT:
        yield execute("DELETE FROM discovery WHERE user_id=?", user)
        return
    yield execute(
        "INSERT INTO discovery(user_id, mode) VALUES (?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET mode=excluded.mode", user, mode,
    )


def get_mode(user: str) -> Txn[int]:
    found = yield val("SELECT mode FROM discovery WHERE user_id=?", user)
    return DEFAULT if found is None else int(found)


def find_public(prefix: str, limit: int) -> Txn[list[str]]:
    found = yield rows(
        "SELECT d.user_id FROM discovery d JOIN accounts a ON a.user_id = d.user_id "
        "WHERE d.mode = ? AND substr(d.user_id, 1, ?) = ? AND a.deleted_at IS NULL "
        "ORDER BY d.user_id LIMIT ?",
        PUBLIC, len(prefix), prefix, limit,
    )
    return [str(r[0]) for r in found]


def visibility(user: str, grant_hash: bytes) -> Txn[tuple[int, bool]]:
    """(mode, whether ``grant_hash`` is granted) in one read, whether or not ``user``
    exists: the same work for every name."""
    found = yield one(
        "SELECT d.mode, (SELECT 1 FROM discovery_grants g WHERE g.user_id = d.user_id "
        "AND g.grant_hash = ?) FROM discovery d WHERE d.user_id = ?", grant_hash, user,
    )
    return (DEFAULT, False) if found is None else (int(found[0]), found[1] is not None)


def set_grant(user: str, grant_hash: bytes, granted: bool) -> Txn[None]:
    if granted:
        yield execute("INSERT INTO discovery_grants(user_id, grant_hash) VALUES (?, ?) "
                      "ON CONFLICT DO NOTHING", user, grant_hash)
    else:
        yield execute("DELETE FROM discovery_grants WHERE user_id=? AND grant_hash=?",
                      user, grant_hash)


def withdraw_grants(user: str, grant_hashes: Sequence[bytes]) -> Txn[int]:
    """Delete ``user``'s grants among ``grant_hashes``; how many there were."""
    count = 0
    for grant_hash in grant_hashes:
        n = yield execute("DELETE FROM discovery_grants WHERE user_id=? AND grant_hash=?",
                          user, grant_hash)
        count += int(n or 0)
    return count


def queue_request(user: str, requester: str, proof: bytes, received_ms: int,
                  max_age_ms: int, max_rows: int) -> Txn[None]:
    """Keep a contact request for ``user``'s devices (the oldest go past ``max_rows``)."""
    yield execute("DELETE FROM contact_requests WHERE user_id=? AND received_ms < ?",
                  user, received_ms - max_age_ms)
    yield execute("INSERT INTO contact_requests(user_id, received_ms, requester, proof) "
                  "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                  user, received_ms, requester, proof)
    yield execute(
        "DELETE FROM contact_requests WHERE user_id=? AND received_ms < (SELECT received_ms "
        "FROM contact_requests WHERE user_id=? ORDER BY received_ms DESC LIMIT 1 OFFSET ?)",
        user, user, max_rows - 1)


def has_requests(user: str) -> Txn[bool]:
    found = yield val("SELECT 1 FROM contact_requests WHERE user_id=? LIMIT 1", user)
    return found is not None


def take_requests(user: str, now_ms: int, max_age_ms: int,
                  ) -> Txn[list[tuple[str, bytes, int]]]:
    """The (requester, proof, received_ms) waiting for ``user``, oldest first; gone after."""
    found = yield rows("SELECT requester, proof, received_ms FROM contact_requests "
                       "WHERE user_id=? AND received_ms >= ? ORDER BY received_ms, requester",
                       user, now_ms - max_age_ms)
    yield execute("DELETE FROM contact_requests WHERE user_id=?", user)
    return [(str(r[0]), blob(r[1]), int(r[2])) for r in found]


def set_static_codes(user: str, hashed: Sequence[tuple[int, bytes, bytes]]) -> Txn[None]:
    """Replace the account's static codes by ``(slot, salt, hash)`` rows (none: revoke)."""
    yield execute("DELETE FROM fvc_static WHERE user_id=?", user)
    for slot, salt, digest in hashed:
        yield execute("INSERT INTO fvc_static(user_id, slot, salt, hash) VALUES (?, ?, ?, ?)",
                      user, slot, salt, digest)


def static_code(user: str, slot: int) -> Txn[tuple[bytes, bytes] | None]:
    found = yield one("SELECT salt, hash FROM fvc_static WHERE user_id=? AND slot=?", user, slot)
    return None if found is None else (blob(found[0]), blob(found[1]))


def burn_static_code(user: str, slot: int, digest: bytes) -> Txn[bool]:
    """Delete the code if it is still the one checked (a second use finds no row)."""
    n = yield execute("DELETE FROM fvc_static WHERE user_id=? AND slot=? AND hash=?",
                      user, slot, digest)
    return bool(n)
