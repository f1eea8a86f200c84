"""File blobs: sealed chunks parked on the server for the devices a file message goes to
(docs/protocol.md §Files; the events are in protocol/blobs.py).

The chunks of a blob are one file in ``--blob-dir`` (default ``<data dir>/blobs/``;
``<blobId>.part`` while the upload runs, ``<blobId>`` once complete), a directory that
nodes on one database share; its metadata (owner, sizes, expiry, the devices it is for)
are rows in the database (storage/blobs.py), on SQLite and PostgreSQL alike. Chunks are
AES-GCM ciphertext under a key the server never sees.

    create ──► rows (quota, size limit checked first) ──► put 0, 1, … in order ──►
        the last chunk: fsync, rename, complete ──► get (recipients, any index) ──►
        fetched by every recipient device ──► rows and file deleted
    expiry (file_ttl_ms at the latest, complete or not) ──► the sweep deletes both
    a file with no rows (a crash came between the two deletes) ──► the sweep deletes it
        too, once it has not changed for ORPHAN_GRACE_MS

An upload resumes where the file on disk ends (every chunk but the last has the same
length, so the number of whole chunks stored is its length divided by that). Only the
uploading device may put, only a recipient device or the uploader may get.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sottovoce.crypto.file_layout import (
    SEALED_CHUNK_SIZE,
    plain_size,
    sealed_chunk_size,
    valid_layout,
)
from sottovoce.private_files import private_dir
from sottovoce.protocol.blobs import (
    BLOB_CHUNK,
    BLOB_CREATED,
    BLOB_ID_RE,
    BLOB_RELEASED,
    BLOB_STORED,
    OP_CHUNK,
    OP_PUT,
    BlobCreate,
    BlobFetched,
    BlobGet,
    BlobPut,
    chunk_head,
    unpack_chunk,
)
from sottovoce.protocol.fields import ProtocolError, b64
from sottovoce.server.config import ServerConfig
from sottovoce.server.errors import WireFailure
from sottovoce.server.logs import JsonLogger
from sottovoce.server.session import Session
from sottovoce.server.storage.blobs import BlobMeta
from sottovoce.server.storage.shared import SharedStorage
from sottovoce.write_behind import WriteBehind, fsync_path

#: Blobs whose metadata is kept in memory (a download asks for it once per chunk).
_CACHED = 1024
#: Expired blobs deleted per sweep transaction.
_SWEEP_BATCH = 500
#: A file in the blob directory without rows is an orphan (a crash came between deleting
#: a blob's rows and its file) once it has not changed for this long: a younger one may be
#: a write still under way (on this node or another sharing the directory).
ORPHAN_GRACE_MS = 10 * 60_000
#: How often the sweep looks for orphans (the first sweep after start-up always does).
ORPHAN_EVERY_MS = 60 * 60_000

Handler = Callable[[Session, Any, dict[str, Any], str | None], Awaitable[None] | None]


class BlobService:
    """The blob events of one server node, its blob directory and the expiry sweep."""

    def __init__(
        self, storage: SharedStorage, config: ServerConfig, log: JsonLogger,
        now_ms: Callable[[], int],
    ) -> None:
        self._storage = storage
        self._cfg = config
        self._log = log
        self._now = now_ms
        self.root = config.blob_path
        self._meta: OrderedDict[str, BlobMeta] = OrderedDict()
        #: Chunks stored so far of uploads in progress on this node.
        self._received: dict[str, int] = {}
        #: The background flushes of those uploads' files (write_behind.py).
        self._behind: dict[str, WriteBehind] = {}
        self.deleted = 0
        self._orphans_at: int | None = None

    def handlers(self) -> dict[type, Handler]:
        return {BlobCreate: self._create, BlobPut: self._put, BlobGet: self._get,
                BlobFetched: self._fetched}

    def start(self) -> None:
        private_dir(self.root)

    # --- paths and metadata -------------------------------------------------------------

    def _path(self, blob_id: str, *, part: bool = False) -> Path:
        return self.root / (blob_id + ".part" if part else blob_id)

    def _remember(self, meta: BlobMeta) -> BlobMeta:
        self._meta[meta.blob_id] = meta
        self._meta.move_to_end(meta.blob_id)
        while len(self._meta) > _CACHED:
            self._meta.popitem(last=False)
        return meta

    async def _load(self, blob_id: str) -> BlobMeta:
        meta = self._meta.get(blob_id)
        if meta is None:
            found = await self._storage.blob_meta(blob_id)
            if found is None:
                raise WireFailure("unknown_blob", "no such file on the server (gone or expired)")
            meta = self._remember(found)
        if meta.expires_at <= self._now():
            raise WireFailure("unknown_blob", "no such file on the server (gone or expired)")
        return meta

    def _stored_chunks(self, meta: BlobMeta) -> int:
        """Whole chunks of an upload on disk (a torn last write is cut off)."""
        known = self._received.get(meta.blob_id)
        if known is not None:
            return known
        if meta.complete:
            return meta.chunks
        part = self._path(meta.blob_id, part=True)
        try:
            length = part.stat().st_size
        except FileNotFoundError:
            length = 0
        count = min(length // SEALED_CHUNK_SIZE, meta.chunks - 1)
        if length != count * SEALED_CHUNK_SIZE:
            with open(part, "ab") as f:
                f.truncate(count * SEALED_CHUNK_SIZE)
        self._received[meta.blob_id] = count
        return count

    # --- handlers -----------------------------------------------------------------------

    async def _create(
        self, session: Session, ev: BlobCreate, data: dict[str, Any], rid: str | None
    ) -> None:
        if not valid_layout(ev.size, ev.chunks):
            raise WireFailure("bad_request", "size and chunks do not make a sealed file")
        limit = self._cfg.max_file_size
        if plain_size(ev.size, ev.chunks) > limit:
            raise WireFailure("file_too_large",
                              f"the file is larger than this server's limit of {limit} bytes",
                              details={"maxBytes": limit})
        if not ev.recipients:
            raise WireFailure("bad_request", "a file is for at least one device")
        now = self._now()
        expires = now + min(ev.ttlMs, self._cfg.file_ttl_ms)
        meta = await self._storage.create_blob(
            ev.blobId, session.key, ev.size, ev.chunks,
            [(r.userId, r.deviceId) for r in ev.recipients], now, expires, self._cfg.file_quota,
        )
        self._remember(meta)
        session.reply(BLOB_CREATED, {
            "blobId": ev.blobId, "received": self._stored_chunks(meta),
            "expiresAtMs": meta.expires_at, "maxBytes": limit,
        }, rid)

    def binary(self, session: Session, message: bytes) -> tuple[BlobPut, str]:
        """A binary put (protocol/blobs.py) as the event it stands for, and its requestId;
        ``ProtocolError`` for anything else."""
        chunk = unpack_chunk(message)
        if chunk.op != OP_PUT:
            raise ProtocolError("bad_request", "a client sends only put chunks")
        return BlobPut(blobId=chunk.blob_id, index=chunk.index, data=chunk.data), \
            chunk.request_id

    def _put(
        self, session: Session, ev: BlobPut, data: dict[str, Any], rid: str | None
    ) -> Awaitable[None] | None:
        meta = self._meta.get(ev.blobId)
        if meta is None:  # not cached here (another node made it, or a restart): look it up
            return self._put_loaded(session, ev, rid)
        return self._store_chunk(session, meta, ev, rid)

    async def _put_loaded(self, session: Session, ev: BlobPut, rid: str | None) -> None:
        meta = await self._load(ev.blobId)
        pending = self._store_chunk(session, meta, ev, rid)
        if pending is not None:
            await pending

    def _store_chunk(
        self, session: Session, meta: BlobMeta, ev: BlobPut, rid: str | None
    ) -> Awaitable[None] | None:
        if session.key != (meta.owner, meta.owner_device):
            raise WireFailure("forbidden", "only the uploading device adds chunks")
        if meta.complete:
            raise WireFailure("bad_chunk", "the file is complete", details={"expected": None})
        expected = self._stored_chunks(meta)
        if ev.index != expected:
            raise WireFailure("bad_chunk", f"the next chunk is {expected}",
                              details={"expected": expected})
        if len(ev.data) != sealed_chunk_size(ev.index, meta.chunks, meta.size):
            raise WireFailure("bad_chunk", "the chunk has the wrong length",
                              details={"expected": expected})
        behind = self._behind.get(meta.blob_id)
        if behind is None:
            behind = self._behind[meta.blob_id] = WriteBehind()
        self._append(self._path(meta.blob_id, part=True), expected, ev.data, behind)
        # Counted at once, the last chunk too: a put of the same index while the last
        # one is being made durable is refused, never appended a second time.
        self._received[meta.blob_id] = expected + 1
        if ev.index != meta.chunks - 1:
            session.reply(BLOB_STORED,
                          {"blobId": meta.blob_id, "index": ev.index, "complete": False}, rid)
            return None
        return self._complete(session, meta, ev.index, rid)

    @staticmethod
    def _append(part: Path, index: int, data: bytes | memoryview, behind: WriteBehind) -> None:
        """Chunk ``index`` at the end of ``part``, in one write; a failed write is cut off
        again, so the file never holds a torn chunk that the next one would follow."""
        fd = os.open(part, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                os.ftruncate(fd, index * SEALED_CHUNK_SIZE)
                raise
            behind.wrote(fd, len(data))
        finally:
            os.close(fd)

    async def _complete(
        self, session: Session, meta: BlobMeta, index: int, rid: str | None
    ) -> None:
        part = self._path(meta.blob_id, part=True)
        try:
            # Durable before it counts as complete; most of it was flushed on the way
            # (write_behind.py), and the rest is waited for off the event loop.
            behind = self._behind.pop(meta.blob_id, None)
            if behind is not None:
                await behind.drain()
            await asyncio.to_thread(fsync_path, part)
        except BaseException:
            self._received.pop(meta.blob_id, None)  # counted again from the file
            raise
        os.replace(part, self._path(meta.blob_id))
        await self._storage.complete_blob(meta.blob_id)
        self._received.pop(meta.blob_id, None)
        self._remember(BlobMeta(meta.blob_id, meta.owner, meta.owner_device, meta.size,
                                meta.chunks, True, meta.expires_at, meta.recipients))
        session.reply(BLOB_STORED, {"blobId": meta.blob_id, "index": index, "complete": True},
                      rid)

    def _may_read(self, session: Session, meta: BlobMeta) -> None:
        key = session.key
        if key not in meta.recipients and key != (meta.owner, meta.owner_device):
            # The same answer as for no blob at all: an id alone reveals nothing.
            raise WireFailure("unknown_blob", "no such file on the server (gone or expired)")

    def _get(
        self, session: Session, ev: BlobGet, data: dict[str, Any], rid: str | None
    ) -> Awaitable[None] | None:
        meta = self._meta.get(ev.blobId)
        if meta is None or not meta.complete:  # a complete blob never changes: cache it
            return self._get_loaded(session, ev, rid)
        self._send_chunk(session, meta, ev.index, rid)
        return None

    async def _get_loaded(self, session: Session, ev: BlobGet, rid: str | None) -> None:
        self._meta.pop(ev.blobId, None)
        meta = await self._load(ev.blobId)
        self._send_chunk(session, meta, ev.index, rid)

    def _send_chunk(self, session: Session, meta: BlobMeta, index: int, rid: str | None) -> None:
        self._may_read(session, meta)
        if meta.expires_at <= self._now():
            raise WireFailure("unknown_blob", "no such file on the server (gone or expired)")
        if not meta.complete:
            raise WireFailure("blob_incomplete", "the file is still being uploaded",
                              retryable=True, retry_after_ms=1000)
        if index >= meta.chunks:
            raise WireFailure("bad_request", f"the file has {meta.chunks} chunks")
        try:
            fd = os.open(self._path(meta.blob_id), os.O_RDONLY)
        except FileNotFoundError:
            raise WireFailure("unknown_blob",
                              "no such file on the server (gone or expired)") from None
        try:
            chunk = os.pread(fd, sealed_chunk_size(index, meta.chunks, meta.size),
                             index * SEALED_CHUNK_SIZE)
        finally:
            os.close(fd)
        if rid is None:
            session.reply(BLOB_CHUNK, {"blobId": meta.blob_id, "index": index,
                                       "data": b64(chunk)}, rid)
        else:  # raw bytes in a binary message: no base64, no JSON
            session.write_binary(chunk_head(OP_CHUNK, meta.blob_id, index, rid), chunk)

    async def _fetched(
        self, session: Session, ev: BlobFetched, data: dict[str, Any], rid: str | None
    ) -> None:
        meta = await self._load(ev.blobId)
        self._may_read(session, meta)
        deleted = False
        if session.key in meta.recipients:
            deleted = await self._storage.blob_fetched(meta.blob_id, *session.key)
        if deleted:
            self._forget(meta.blob_id)
            self._log.info("blob.deleted", reason="fetched")
        session.reply(BLOB_RELEASED, {"blobId": meta.blob_id, "deleted": deleted}, rid)

    def _forget(self, blob_id: str) -> None:
        self._meta.pop(blob_id, None)
        self._received.pop(blob_id, None)
        self._behind.pop(blob_id, None)
        for path in (self._path(blob_id), self._path(blob_id, part=True)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.deleted += 1

    # --- expiry -------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Delete every blob whose time is up (rows, then chunks); how many went."""
        total = 0
        while True:
            ids = await self._storage.expire_blobs(self._now(), _SWEEP_BATCH)
            for blob_id in ids:
                self._forget(blob_id)
            total += len(ids)
            if len(ids) < _SWEEP_BATCH:
                break
        if total:
            self._log.info("blob.expired", deleted=total)
        if self._orphans_at is None or self._now() - self._orphans_at >= ORPHAN_EVERY_MS:
            await self.sweep_orphans()
        return total

    async def sweep_orphans(self) -> int:
        """Delete the blob files that have no rows and have not changed for
        :data:`ORPHAN_GRACE_MS`; how many files went. Rows are always written before a
        blob's file and deleted before it, so a file without rows is left over."""
        now = self._orphans_at = self._now()
        old = self._old_files(now - ORPHAN_GRACE_MS)
        if not old:
            return 0
        known = await self._storage.known_blobs(sorted(old))
        removed = 0
        for blob_id, paths in old.items():
            if blob_id in known or blob_id in self._received:
                continue
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime_ns // 1_000_000 <= now - ORPHAN_GRACE_MS:
                        path.unlink()  # still untouched: no write started meanwhile
                        removed += 1
        if removed:
            self._log.info("blob.orphans_deleted", deleted=removed)
        return removed

    def _old_files(self, before_ms: int) -> dict[str, list[Path]]:
        """The blob files (``<id>``, ``<id>.part``) last changed before ``before_ms``, by
        blob id; anything else in the directory is not ours to judge."""
        found: dict[str, list[Path]] = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                blob_id = entry.name.removesuffix(".part")
                if not BLOB_ID_RE.fullmatch(blob_id):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    changed = entry.stat(follow_symlinks=False).st_mtime_ns // 1_000_000
                except FileNotFoundError:
                    continue
                if changed <= before_ms:
                    found.setdefault(blob_id, []).append(Path(entry.path))
        return found

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.expiry_interval_ms / 1000)
            try:
                await self.sweep()
            except Exception as exc:
                self._log.error("blob.sweep_failed", error=type(exc).__name__)
