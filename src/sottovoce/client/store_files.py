"""Received files kept in the account's data directory, sealed (client/files.py).

A downloaded file is never plaintext on disk: it is kept as it came, each chunk
sealed under the file's key (crypto/file_chunks.py) and checked before it is
written, so nothing is decrypted and sealed again on the way in. The key and file
id that open the local copy are in this table, sealed by the store's key (rows
written by earlier versions name a local key and id of their own; both kinds open
the same way). The file is ``files/<local id>`` (``.part`` while its download
runs; the verified chunks in it let a cut-off download resume). A row is keyed by
the message id; the key and id are sealed, ``complete`` is clear.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from sottovoce.client.store import Store
from sottovoce.secret import Secret

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files(
    message_id TEXT PRIMARY KEY,
    complete INTEGER NOT NULL,
    sealed BLOB NOT NULL
);
"""
_KIND = b"file"


@dataclass(frozen=True, slots=True)
class LocalFile:
    message_id: str
    local_id: bytes
    key: Secret
    complete: bool


def local_copies(store: Store, message_ids: list[str]) -> list[Path]:
    """The sealed local copies (whole and ``.part``) of these messages' files on disk."""
    if not message_ids or store.db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'files'"
    ).fetchone() is None:
        return []
    marks = ",".join("?" * len(message_ids))
    rows = store.db.execute(
        f"SELECT message_id, sealed FROM files WHERE message_id IN ({marks})",  # noqa: S608
        message_ids,
    ).fetchall()
    out: list[Path] = []
    for message_id, sealed in rows:
        raw = json.loads(store.unseal(_KIND, str(message_id).encode(), bytes(sealed)))
        name = bytes.fromhex(raw["id"]).hex()
        out += [store.data_dir / "files" / name, store.data_dir / "files" / f"{name}.part"]
    return out


class FileTable:
    """The ``files`` table of one store, and where its files live."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.dir = store.data_dir / "files"
        store.db.executescript(_SCHEMA)

    def path(self, record: LocalFile, *, part: bool = False) -> Path:
        name = record.local_id.hex()
        return self.dir / (name + ".part" if part else name)

    def get(self, message_id: str) -> LocalFile | None:
        row = self._store.db.execute(
            "SELECT complete, sealed FROM files WHERE message_id = ?", (message_id,)
        ).fetchone()
        if row is None:
            return None
        raw = json.loads(self._store.unseal(_KIND, message_id.encode(), bytes(row[1])))
        return LocalFile(message_id, bytes.fromhex(raw["id"]),
                         Secret(base64.b64decode(raw["key"])), bool(row[0]))

    def new(self, message_id: str, key: Secret, file_id: bytes) -> LocalFile:
        """A row for a download starting now: its chunks open under ``key`` and
        ``file_id`` (the file's own, so the chunks are kept as they came)."""
        record = LocalFile(message_id, file_id, key, False)
        body = json.dumps({"id": record.local_id.hex(),
                           "key": base64.b64encode(record.key.expose()).decode()}).encode()
        with self._store.transaction():
            self._store.db.execute(
                "INSERT OR REPLACE INTO files(message_id, complete, sealed) VALUES (?, 0, ?)",
                (message_id, self._store.seal(_KIND, message_id.encode(), body)),
            )
        return record

    def mark_complete(self, message_id: str) -> None:
        with self._store.transaction():
            self._store.db.execute("UPDATE files SET complete = 1 WHERE message_id = ?",
                                   (message_id,))

    def forget(self, record: LocalFile) -> None:
        """The row and whatever of the file is on disk (a refused download keeps nothing)."""
        for path in (self.path(record, part=True), self.path(record)):
            path.unlink(missing_ok=True)
        with self._store.transaction():
            self._store.db.execute("DELETE FROM files WHERE message_id = ?",
                                   (record.message_id,))
