"""Received files kept in the account's data directory, sealed (client/files.py).

A downloaded file is never plaintext on disk: it is kept as it came, each chunk
sealed under the file's key (crypto/file_chunks.py) and checked before it is
written, so nothing is decrypted and sealed again on the way in. The key and file
id that open the local copy are in this table, sealed by the store's key (rows
written by earlier versions name a local key and id of their own; both kinds open
the same way). The file is ``files/<local id>`` (``.part`` while its download
runs; the verified chunks in it let a cut-off download resume). A row is keyed by
the message id; the key and id are sealed, ``complete`` is clear.

An upload under way has a row in ``uploads`` (sealed: the file's path, size and
modification time, who it is for, its key and id) and a log of the GCM tags of the
chunks sealed so far (``uploads/<id>.tags``), each appended before its chunk leaves.
A run that did not finish it (a crash, a kill) leaves both; the next upload of the same
file to the same devices carries on at the first chunk the server lacks
(client/files.py). A chunk's nonce is its index, so a chunk sealed again must be the same
bytes: every chunk sealed again is checked against its logged tag first, and a file that
changed starts over under a new key and id.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sottovoce.client.store import Store
from sottovoce.crypto.file_chunks import TAG_SIZE
from sottovoce.errors import UsageError
from sottovoce.limits import FILE_TTL_MS
from sottovoce.private_files import private_dir
from sottovoce.secret import Secret

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files(
    message_id TEXT PRIMARY KEY,
    complete INTEGER NOT NULL,
    sealed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads(
    blob_id TEXT PRIMARY KEY,
    sealed BLOB NOT NULL
);
"""
_KIND = b"file"
_UPLOAD = b"upload"


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


class FileChanged(UsageError):
    """A chunk sealed again is not the one sealed before under its nonce: the file
    changed since (nothing of it was sent)."""


class TagLog:
    """The GCM tags of one upload's chunks sealed so far, appended to a file before each
    chunk leaves (so a crash cannot lose the tag of a chunk that went out)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        data = bytearray()
        while block := os.read(self._fd, 1 << 16):
            data += block
        whole = len(data) // TAG_SIZE * TAG_SIZE
        if whole != len(data):  # a torn append: that chunk never left
            os.ftruncate(self._fd, whole)
            del data[whole:]
        self._tags = data

    def __len__(self) -> int:
        return len(self._tags) // TAG_SIZE

    def sealed(self, index: int, tag: bytes) -> None:
        """Chunk ``index`` is sealed with ``tag``: logged if new, else checked
        (:class:`FileChanged` if it differs; the caller must not send it then)."""
        have = len(self)
        if index < have:
            if not hmac.compare_digest(self._tags[index * TAG_SIZE:(index + 1) * TAG_SIZE],
                                       tag):
                raise FileChanged("the file changed since its upload began")
            return
        if index != have:
            raise UsageError("chunks are sealed in order")
        os.write(self._fd, tag)
        self._tags += tag

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """An upload begun and not finished (its file message not yet sent)."""

    blob_id: str
    key: Secret
    path: str
    size: int
    mtime_ns: int
    chat: str
    recipients: tuple[tuple[str, str], ...]
    view_once: bool
    started_ms: int


class UploadTable:
    """The ``uploads`` table of one store and the tag logs beside it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.dir = store.data_dir / "uploads"
        store.db.executescript(_SCHEMA)

    def find(self, path: str, size: int, mtime_ns: int, chat: str,
             recipients: tuple[tuple[str, str], ...], view_once: bool) -> PendingUpload | None:
        """The unfinished upload of this very file (same size and modification time) to
        these devices; uploads too old for the server to still hold are dropped."""
        now = int(time.time() * 1000)
        for pending in self._all():
            if pending.started_ms + FILE_TTL_MS < now:
                self.forget(pending.blob_id)
            elif (pending.path, pending.size, pending.mtime_ns, pending.chat,
                  pending.recipients, pending.view_once) == (
                    path, size, mtime_ns, chat, recipients, view_once):
                return pending
        return None

    def _all(self) -> list[PendingUpload]:
        out = []
        for blob_id, sealed in self._store.db.execute("SELECT blob_id, sealed FROM uploads"):
            raw = json.loads(self._store.unseal(_UPLOAD, str(blob_id).encode(), bytes(sealed)))
            out.append(PendingUpload(
                str(blob_id), Secret(base64.b64decode(raw["key"])), raw["path"], raw["size"],
                raw["mtime"], raw["chat"], tuple((u, d) for u, d in raw["recipients"]),
                raw["viewOnce"], raw["started"]))
        return out

    def begin(self, pending: PendingUpload) -> None:
        """Note an upload before any of it leaves (its key included, sealed)."""
        body = json.dumps({
            "key": base64.b64encode(pending.key.expose()).decode(), "path": pending.path,
            "size": pending.size, "mtime": pending.mtime_ns, "chat": pending.chat,
            "recipients": pending.recipients, "viewOnce": pending.view_once,
            "started": pending.started_ms}).encode()
        private_dir(self.dir)
        self.log_path(pending.blob_id).unlink(missing_ok=True)
        with self._store.transaction():
            self._store.db.execute(
                "INSERT OR REPLACE INTO uploads(blob_id, sealed) VALUES (?, ?)",
                (pending.blob_id, self._store.seal(_UPLOAD, pending.blob_id.encode(), body)))

    def log_path(self, blob_id: str) -> Path:
        return self.dir / f"{bytes.fromhex(blob_id).hex()}.tags"

    def forget(self, blob_id: str) -> None:
        """The upload is done (its message sent) or given up: row and log go."""
        with self._store.transaction():
            self._store.db.execute("DELETE FROM uploads WHERE blob_id = ?", (blob_id,))
        self.log_path(blob_id).unlink(missing_ok=True)
