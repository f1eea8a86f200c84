"""File blobs' metadata, written once for every engine (:mod:`.txn`).

A row per blob (who uploaded it, for the quota; its sealed size and chunk count;
whether every chunk is in; when it expires) and a row per device it is for,
marked once that device has fetched it. The chunks are files in the server's
data directory (server/blobs.py): rows here never hold content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sottovoce.server.errors import WireFailure
from sottovoce.server.storage.txn import Txn, execute, many, one, rows, val


@dataclass(frozen=True, slots=True)
class BlobMeta:
    blob_id: str
    owner: str
    owner_device: str
    size: int
    chunks: int
    complete: bool
    expires_at: int
    recipients: frozenset[tuple[str, str]]


def create_blob(
    blob_id: str, owner: str, owner_device: str, size: int, chunks: int,
    recipients: Sequence[tuple[str, str]], now: int, expires_at: int, quota: int,
) -> Txn[BlobMeta]:
    """A new blob, or the same one again (a resumed upload: its stored metadata);
    ``blob_conflict`` if the id is taken otherwise, ``quota_exceeded`` past ``quota``."""
    found = yield from blob_meta(blob_id)
    if found is not None:
        if (found.owner, found.owner_device, found.size, found.chunks) != (
            owner, owner_device, size, chunks
        ):
            raise WireFailure("blob_conflict", "that blob id is taken")
        return found
    used = yield val(
        "SELECT coalesce(sum(size), 0) FROM blobs WHERE owner=? AND expires_at > ?", owner, now
    )
    if int(used) + size > quota:
        raise WireFailure("quota_exceeded", "your files on the server would pass your quota",
                          details={"quotaBytes": quota, "usedBytes": int(used)})
    yield execute(
        "INSERT INTO blobs(blob_id, owner, owner_device, size, chunks, complete, created_at, "
        "expires_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
        blob_id, owner, owner_device, size, chunks, now, expires_at,
    )
    yield many("INSERT INTO blob_recipients(blob_id, user_id, device_id) VALUES (?, ?, ?)",
               [(blob_id, u, d) for u, d in recipients])
    return BlobMeta(blob_id, owner, owner_device, size, chunks, False, expires_at,
                    frozenset(recipients))


def blob_meta(blob_id: str) -> Txn[BlobMeta | None]:
    row = yield one(
        "SELECT owner, owner_device, size, chunks, complete, expires_at FROM blobs "
        "WHERE blob_id=?", blob_id,
    )
    if row is None:
        return None
    found = yield rows(
        "SELECT user_id, device_id FROM blob_recipients WHERE blob_id=?", blob_id
    )
    return BlobMeta(blob_id, str(row[0]), str(row[1]), int(row[2]), int(row[3]), bool(row[4]),
                    int(row[5]), frozenset((str(u), str(d)) for u, d in found))


def complete_blob(blob_id: str) -> Txn[int]:
    changed = yield execute("UPDATE blobs SET complete=1 WHERE blob_id=?", blob_id)
    return int(changed)


def blob_fetched(blob_id: str, user: str, device: str) -> Txn[bool]:
    """Mark one recipient device done; True when none is left (the rows are then gone
    and the caller deletes the chunks)."""
    yield execute(
        "UPDATE blob_recipients SET fetched=1 WHERE blob_id=? AND user_id=? AND device_id=?",
        blob_id, user, device,
    )
    left = yield val(
        "SELECT count(*) FROM blob_recipients WHERE blob_id=? AND fetched=0", blob_id
    )
    if int(left):
        return False
    yield from _delete(blob_id)
    return True


def _delete(blob_id: str) -> Txn[None]:
    yield execute("DELETE FROM blob_recipients WHERE blob_id=?", blob_id)
    yield execute("DELETE FROM blobs WHERE blob_id=?", blob_id)


def expire_blobs(now: int, limit: int) -> Txn[list[str]]:
    """Delete up to ``limit`` blobs whose time is up; their ids (the chunks go next)."""
    found = yield rows(
        "SELECT blob_id FROM blobs WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
        now, limit,
    )
    ids = [str(r[0]) for r in found]
    for blob_id in ids:
        yield from _delete(blob_id)
    return ids


#: Ids asked about in one statement of :func:`known_blobs`.
_KNOWN_BATCH = 500


def known_blobs(blob_ids: Sequence[str]) -> Txn[set[str]]:
    """Which of ``blob_ids`` have a row (the others' files are orphans: server/blobs.py)."""
    found: set[str] = set()
    for start in range(0, len(blob_ids), _KNOWN_BATCH):
        part = blob_ids[start:start + _KNOWN_BATCH]
        marks = ",".join("?" * len(part))
        got = yield rows(f"SELECT blob_id FROM blobs WHERE blob_id IN ({marks})",  # noqa: S608
                         *part)
        found.update(str(r[0]) for r in got)
    return found
