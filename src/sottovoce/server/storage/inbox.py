"""Reading a device's inbox, written once for every engine (:mod:`.txn`).

A disappearing message's rows carry ``expires_at`` (NULL for the others): from
that time on they are never read, before a sweep deletes them.

Writing it (sends, acks, expiry) stays with each engine: those keep sequence
counters and inbox quotas where that engine keeps them (the SQLite writer's
memory, PostgreSQL rows under lock) and batch their statements their own way.
"""

from __future__ import annotations

from sottovoce.server.storage.txn import DevId, Txn, rows, val


def latest_inbox_seq(user: str, device: str) -> Txn[int]:
    seq = yield val("SELECT last_inbox_seq FROM devices WHERE user_id=? AND device_id=?",
                    user, device)
    return 0 if seq is None else int(seq)


def read_inbox(
    user: str, device: str, after: int, limit: int, now_ms: int
) -> Txn[list[tuple[int, str]]]:
    dev = yield DevId(user, device)
    if dev is None:
        return []
    found = yield rows(
        "SELECT seq, envelope FROM inbox WHERE dev=? AND seq>? "
        "AND (expires_at IS NULL OR expires_at > ?) ORDER BY seq LIMIT ?",
        dev, after, now_ms, limit,
    )
    return [(int(seq), str(env)) for seq, env in found]
