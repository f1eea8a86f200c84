"""Files and media, 1:1 and in rooms: ``client.files`` (docs/architecture.md §Files).

    send_file ──► random key and file id ──► blob.create (size limit and quota are
        checked before any chunk leaves) ──► seal and put chunk by chunk, a few in
        flight ──► a "file" message (key, SHA-256, size, name, type, thumbnail or
        duration) through the normal 1:1 or room path
    download ──► blob.get chunk by chunk ──► open and check each (crypto/file_chunks.py)
        ──► kept as it came (still sealed) in files/<id>.part ──► the whole checked
        ──► files/<id>, blob.fetched (the server deletes the blob once every device
        it was for has said so)
    save ──► not fetched yet: the download writes each chunk's plaintext beside DEST as
        it checks it (one pass); fetched before: open the local copy, check it, write
        the plaintext beside DEST ──► the whole checked, rename

A file streams through a fixed amount of memory (a few chunks) whatever its size.
A dropped connection does not end a transfer: both sides wait for the connection
and carry on from the chunk the server (upload) or the local copy (download) has.
A chunk that is tampered with, reordered, missing or extra ends the download with a
:class:`~sottovoce.crypto.file_chunks.FileIntegrityError` and nothing of the file is
kept. A view-once file (client/file_body.py) is opened by :meth:`Files.save` or
:meth:`Files.view` once; then its key and sealed copy are deleted and the message
keeps a tombstone. Plaintext for viewing (:meth:`Files.view`) goes to ``view/`` in the data
directory, wiped when the client closes and again when the next one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import io
import mimetypes
import os
import shutil
import time
import wave
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from sottovoce.client.connection import Connection
from sottovoce.client.errors import NotConnected, ServerError
from sottovoce.client.expiry import Expiries
from sottovoce.client.file_body import (
    FILE_CONTENT_TYPE,
    MAX_THUMBNAIL_BYTES,
    FileInfo,
    is_opened,
    opened_body,
    valid_name,
)
from sottovoce.client.rooms import RoomManager
from sottovoce.client.store import Store
from sottovoce.client.store_files import (
    FileChanged,
    FileTable,
    LocalFile,
    PendingUpload,
    TagLog,
    UploadTable,
)
from sottovoce.crypto.file_chunks import (
    CHUNK_SIZE,
    HEADER_SIZE,
    SEALED_CHUNK_SIZE,
    TAG_SIZE,
    ChunkOpener,
    ChunkSealer,
    FileExtended,
    FileIntegrityError,
    new_file_id,
    new_file_key,
    sealed_chunk_size,
    sealed_size,
)
from sottovoce.errors import DecodeError, UsageError
from sottovoce.limits import FILE_TTL_MS
from sottovoce.private_files import private_dir
from sottovoce.protocol import blobs as pb
from sottovoce.protocol import events as ev
from sottovoce.secret import Secret
from sottovoce.write_behind import WriteBehind

#: ``progress(done_bytes, total_bytes)`` after each chunk.
Progress = Callable[[int, int], None]
Device = tuple[str, str]
#: Chunk requests in flight at once (each chunk is 128 KiB: 2 MiB in flight).
WINDOW = 16
#: An upload seals more chunks once this many of the window are free (or at the end); a
#: download checks the chunks that came once this many are in (or the last ones).
REFILL = 8
#: How long a transfer waits for a lost connection to come back, each time.
RECONNECT_WAIT_S = 30.0
#: Times one transfer carries on after a lost connection before it gives up.
MAX_RESUMES = 20
#: How much longer than a chat's timer a blob is kept: the upload runs before the
#: message (whose expiry counts from its creation) is sent.
UPLOAD_GRACE_MS = 60_000
#: What a voice note made on this device is (client/media/voice.py).
VOICE_MEDIA_TYPE = "audio/ogg"
_CREATED = frozenset({pb.BLOB_CREATED})
_STORED = frozenset({pb.BLOB_STORED})
_CHUNK = frozenset({pb.BLOB_CHUNK})
_RELEASED = frozenset({pb.BLOB_RELEASED})


class Files:
    """Sending, fetching and saving files for one client."""

    def __init__(
        self,
        store: Store,
        link: Connection,
        me: Device,
        targets: Callable[[str], Awaitable[list[Device]]],
        send_record: Callable[[str, str, str], Awaitable[str]],
        rooms: RoomManager,
        expiries: Expiries | None = None,
    ) -> None:
        """``targets``: the devices a 1:1 message to a user goes to (ours included);
        ``send_record``: send a 1:1 message of a content type; ``rooms``: the rooms;
        ``expiries``: the chats' disappearing-message timers (a blob lives no longer)."""
        self._store = store
        self._link = link
        self._me = me
        self._targets = targets
        self._send_record = send_record
        self._rooms = rooms
        self._expiries = expiries
        self._table = FileTable(store)
        self._uploads = UploadTable(store)
        #: Uploads running in this process (another send of the same file begins anew).
        self._active: set[str] = set()
        self.view_dir = store.data_dir / "view"
        self.wipe_views()  # what a run that did not close left behind
        #: Chunks the last transfers resumed from after a lost connection or an earlier
        #: run that did not finish (for tests).
        self.resumed: list[int] = []

    # --- sending ----------------------------------------------------------------------

    async def send_file(
        self, peer: str, path: str | os.PathLike[str], *, progress: Progress | None = None,
        view_once: bool = False, voice_ms: int | None = None,
    ) -> str:
        """Upload ``path`` for ``peer``'s devices and our other ones (a ``view_once`` file:
        ``peer``'s only), then send the file message; returns its messageId. ``voice_ms``:
        ``path`` is an Ogg Opus voice note of that many milliseconds (client/media)."""
        targets = [d for d in await self._targets(peer) if d != self._me
                   and not (view_once and d[0] == self._me[0])]
        chat = ev.dm_conversation_id(self._me[0], peer)
        info = await self._upload(Path(path), targets, progress, chat, view_once, voice_ms)
        return await self._announce(info, self._send_record(peer, FILE_CONTENT_TYPE,
                                                            info.encode()))

    async def _announce(self, info: FileInfo, sending: Awaitable[str]) -> str:
        """Send the file message of an uploaded file; its messageId."""
        try:
            return self._sent(await sending, info)
        finally:
            self._active.discard(info.blob_id)

    def _sent(self, message_id: str, info: FileInfo) -> str:
        """The upload is over (a later send of the file is a new one); a view-once file
        leaves the sender nothing but its tombstone."""
        self._uploads.forget(info.blob_id)
        if info.view_once:
            with self._store.transaction():
                self._store.rewrite_text(message_id, opened_body(info))
        return message_id

    async def room_send_file(
        self, ref: str, path: str | os.PathLike[str], *, progress: Progress | None = None,
        view_once: bool = False, voice_ms: int | None = None,
    ) -> str:
        """Upload ``path`` for every other member device of room ``ref`` (a ``view_once``
        file: other members' only) and send it there (``voice_ms``: as for send_file)."""
        room = self._rooms.get(ref)
        members = [d for d in room.members() if d != self._me
                   and not (view_once and d[0] == self._me[0])]
        if not members:
            raise UsageError("the room has no other member to send a file to")
        info = await self._upload(Path(path), members, progress, room.room_id, view_once,
                                  voice_ms)
        return await self._announce(
            info, self._rooms.send_record(ref, FILE_CONTENT_TYPE, info.encode()))

    def _ttl(self, chat: str) -> int:
        """How long the server keeps the blob: the chat's disappearing-message timer
        (plus :data:`UPLOAD_GRACE_MS`, as the message's clock starts once the upload is
        done) if it is shorter than the server's own limit."""
        seconds = 0 if self._expiries is None else self._expiries.seconds(chat)
        return min(FILE_TTL_MS, seconds * 1000 + UPLOAD_GRACE_MS) if seconds else FILE_TTL_MS

    async def _upload(
        self, path: Path, recipients: list[Device], progress: Progress | None, chat: str,
        view_once: bool = False, voice_ms: int | None = None,
    ) -> FileInfo:
        """Upload ``path`` for ``recipients`` in ``chat``, carrying on an upload of the same
        file to the same devices that an earlier run began and did not finish."""
        name, media_type = describe(path)
        if voice_ms is not None:
            media_type = VOICE_MEDIA_TYPE
        try:
            f = open(path, "rb")  # noqa: SIM115 -- closed below, after the last chunk
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        with f:
            st = os.fstat(f.fileno())
            pending = PendingUpload(
                new_file_id(self._store.rng).hex(), new_file_key(self._store.rng),
                str(path.resolve()), st.st_size, st.st_mtime_ns, chat, tuple(sorted(recipients)),
                view_once, int(time.time() * 1000))
            earlier = self._uploads.find(pending.path, pending.size, pending.mtime_ns, chat,
                                         pending.recipients, view_once)
            sent: tuple[dict[str, Any], ChunkSealer] | None = None
            if earlier is not None and earlier.blob_id not in self._active:
                try:
                    sent = await self._send_chunks(f, path, earlier, progress)
                    pending = earlier
                except FileChanged:  # nothing of it left: start over, new key and id
                    self._uploads.forget(earlier.blob_id)
            if sent is None:
                self._uploads.begin(pending)
                sent = await self._send_chunks(f, path, pending, progress)
            created, sealer = sent
            thumbnail, duration = (make_thumbnail(path) if media_type.startswith("image/")
                                   else None), voice_ms or voice_duration(path, media_type)
        kind = ("image" if thumbnail is not None else
                "voice" if media_type.startswith("audio/") else "file")
        return FileInfo(
            blob_id=pending.blob_id, key=pending.key, sha256=sealer.digest(), size=sealer.size,
            name=name,
            media_type=media_type, kind=kind, thumbnail=thumbnail, duration_ms=duration,
            expires_at_ms=int(created["expiresAtMs"]), view_once=view_once,
        )

    async def _send_chunks(
        self, f: BinaryIO, path: Path, upload: PendingUpload, progress: Progress | None,
    ) -> tuple[dict[str, Any], ChunkSealer]:
        """Every chunk of ``upload`` the server lacks; its answer to the create and the
        sealer (which has hashed the whole file)."""
        sealer = ChunkSealer(upload.key, bytes.fromhex(upload.blob_id), upload.size)
        create = pb.BlobCreate(
            blobId=upload.blob_id, size=sealed_size(upload.size), chunks=sealer.chunks,
            ttlMs=self._ttl(upload.chat),
            recipients=tuple(pb.Recipient(userId=u, deviceId=d) for u, d in upload.recipients),
        )
        self._active.add(upload.blob_id)  # until its message is sent (_announce)
        try:
            return await self._send_missing(f, path, upload, sealer, create, progress)
        except BaseException:
            self._active.discard(upload.blob_id)
            raise

    async def _send_missing(
        self, f: BinaryIO, path: Path, upload: PendingUpload, sealer: ChunkSealer,
        create: pb.BlobCreate, progress: Progress | None,
    ) -> tuple[dict[str, Any], ChunkSealer]:
        created = await self._create(create, path)
        received = int(created["received"])
        log = TagLog(self._uploads.log_path(upload.blob_id))
        try:
            if received or len(log):  # an earlier run began it
                # The chunks the server has are sealed again only to hash them and to
                # check their tags (the file is unchanged); none of them leaves.
                await asyncio.to_thread(_seal_unsent, f, sealer, log, received)
                self.resumed.append(received)
            await self._put_all(f, sealer, log, received, create, path, progress)
        finally:
            log.close()
        return created, sealer

    async def _create(self, create: pb.BlobCreate, path: Path) -> dict[str, Any]:
        try:
            _, data = await self._link.request(create, _CREATED)
        except ServerError as exc:
            if exc.code == "file_too_large":
                limit = exc.details.get("maxBytes")
                raise UsageError(f"{path} is too large: the server takes files of at most "
                                 f"{_size_text(limit)}") from None
            if exc.code == "quota_exceeded":
                raise UsageError("your files waiting on the server would pass your quota "
                                 f"there ({_size_text(exc.details.get('quotaBytes'))}); "
                                 "try again once they have been fetched") from None
            raise
        return data

    async def _put_all(
        self, f: BinaryIO, sealer: ChunkSealer, log: TagLog, start: int,
        create: pb.BlobCreate, path: Path, progress: Progress | None,
    ) -> None:
        inflight: deque[asyncio.Future[Any]] = deque()
        try:
            await self._put_window(f, sealer, log, start, create, path, progress, inflight)
        finally:  # stopped early (an error, a cancel): no request outlives the transfer
            for fut in inflight:
                fut.cancel()

    async def _put_window(
        self, f: BinaryIO, sealer: ChunkSealer, log: TagLog, start: int,
        create: pb.BlobCreate, path: Path, progress: Progress | None,
        inflight: deque[asyncio.Future[Any]],
    ) -> None:
        chunks, size, blob_id = sealer.chunks, sealer.size, create.blobId
        acked = send_at = start
        resumes = 0
        # The next batch's put messages, read and sealed ahead in the worker thread while
        # the chunks before are on their way.
        ahead: asyncio.Future[list[tuple[str, bytearray]]] | None = None
        try:
            while acked < chunks:
                if ahead is None and send_at < chunks:
                    ahead = self._seal_ahead(f, sealer, log, send_at, blob_id)
                if ahead is not None and len(inflight) <= WINDOW - REFILL:
                    # A hop to the worker thread per REFILL chunks (each costs a switch).
                    for rid, message in await ahead:
                        inflight.append(asyncio.ensure_future(self._link.request_built(
                            functools.partial(_built, message), _STORED, request_id=rid)))
                        send_at += 1
                    ahead = (self._seal_ahead(f, sealer, log, send_at, blob_id)
                             if send_at < chunks else None)
                try:
                    await inflight.popleft()
                    acked = _acked(acked + 1, size, progress)
                    while inflight and _succeeded(inflight[0]):  # acks that came together
                        inflight.popleft()
                        acked = _acked(acked + 1, size, progress)
                except (NotConnected, ServerError) as exc:
                    await _cancel(inflight)
                    await _settled(ahead)  # sealed again from where the server is
                    ahead = None
                    resumes += 1
                    if ((isinstance(exc, ServerError) and exc.code != "bad_chunk")
                            or resumes > MAX_RESUMES):
                        raise
                    await self._link.wait_up(RECONNECT_WAIT_S)
                    created = await self._create(create, path)
                    acked = send_at = int(created["received"])
                    self.resumed.append(acked)
        finally:  # stopped early: the worker may still be reading the file
            await _settled(ahead)

    def _seal_ahead(
        self, f: BinaryIO, sealer: ChunkSealer, log: TagLog, start: int, blob_id: str,
    ) -> asyncio.Future[list[tuple[str, bytearray]]]:
        """Read and seal up to REFILL chunks from ``start`` in the worker thread, each in
        place in its binary put message (no copies), with its requestId."""
        rids = [self._link.new_request_id() for _ in range(min(REFILL, sealer.chunks - start))]
        return asyncio.ensure_future(asyncio.to_thread(
            lambda: list(zip(rids, _read_sealed(f, sealer, log, start, blob_id, rids),
                             strict=True))))

    # --- receiving --------------------------------------------------------------------

    def info(self, message_id: str) -> FileInfo:
        """The file a stored message carries (``UsageError`` if it carries none)."""
        stored = self._store.get_message(message_id)
        if stored is None:
            raise UsageError(f"no message {message_id}")
        if stored.content_type != FILE_CONTENT_TYPE:
            raise UsageError(f"message {message_id} is not a file")
        if is_opened(stored.text):
            raise UsageError(f"message {message_id} was a view-once file: "
                             f"{'sent' if stored.outgoing else 'already opened'}, none of it kept")
        try:
            return FileInfo.decode(stored.text)
        except DecodeError as exc:
            raise UsageError(f"message {message_id} holds no usable file ({exc})") from None

    def is_downloaded(self, message_id: str) -> bool:
        record = self._table.get(message_id)
        return record is not None and record.complete

    async def download(self, message_id: str, *, progress: Progress | None = None) -> None:
        """Fetch, check and keep (sealed) the file of ``message_id``; resumes a download
        cut off before. A :class:`FileIntegrityError` leaves nothing of the file."""
        await self._fetch(message_id, progress, None)

    async def _fetch(
        self, message_id: str, progress: Progress | None, plain: BinaryIO | None
    ) -> bool:
        """:meth:`download`, and each chunk's plaintext, in order, to ``plain`` as it is
        checked (``save`` writes the file in the same pass); ``False`` if the file was
        here already (then nothing went to ``plain``)."""
        info = self.info(message_id)
        file_id = bytes.fromhex(info.blob_id)
        record = self._table.get(message_id)
        if record is not None and record.complete:
            return False
        if record is None or not _opens_with(record, info.key, file_id):
            # A cut-off download that sealed each chunk again (an earlier version) starts
            # over: the chunks are now kept as they came.
            if record is not None:
                self._table.forget(record)
            record = self._table.new(message_id, info.key, file_id)
        private_dir(self._table.dir)
        opener = ChunkOpener(info.key, file_id, info.size, info.sha256)
        part = self._table.path(record, part=True)
        try:
            self._verified_part(record, opener, plain)
            with open(part, "ab") as out:
                behind = WriteBehind()
                try:
                    await self._get_all(info, opener, out, behind, progress, plain)
                finally:  # its duplicate descriptor is its own, but its error is ours
                    await behind.drain()
                opener.finish()
                out.flush()
                # Mostly on disk already (write_behind.py); the rest off the event loop.
                await asyncio.to_thread(os.fsync, out.fileno())
        except FileIntegrityError:
            self._table.forget(record)
            raise
        except ServerError as exc:
            if exc.code == "unknown_blob":  # expired, or fetched by all: nothing to resume
                self._table.forget(record)
            raise
        os.replace(part, self._table.path(record))
        self._table.mark_complete(message_id)
        with contextlib.suppress(NotConnected, ServerError):
            # The server deletes the blob once every device it is for has it.
            await self._link.request(pb.BlobFetched(blobId=info.blob_id), _RELEASED)
        return True

    def _verified_part(
        self, record: LocalFile, opener: ChunkOpener, plain: BinaryIO | None = None
    ) -> int:
        """Chunks of an earlier, cut-off download of this file: each opened and checked
        again by ``opener`` (which then carries on after them; their plaintext to
        ``plain``); a damaged rest is cut off."""
        part = self._table.path(record, part=True)
        try:
            length = part.stat().st_size
        except FileNotFoundError:
            return 0
        have = 0
        with open(part, "rb") as f:
            while have < opener.chunks - 1:  # the final chunk is never left in a .part
                sealed = f.read(SEALED_CHUNK_SIZE)
                if len(sealed) < SEALED_CHUNK_SIZE:
                    break
                try:
                    plaintext = opener.open(sealed)
                except FileIntegrityError:
                    break
                if plain is not None:
                    plain.write(plaintext)
                have += 1
        if length != have * SEALED_CHUNK_SIZE:
            with open(part, "ab") as f:
                f.truncate(have * SEALED_CHUNK_SIZE)
        return have

    async def _get_all(
        self, info: FileInfo, opener: ChunkOpener, out: BinaryIO, behind: WriteBehind,
        progress: Progress | None, plain: BinaryIO | None,
    ) -> None:
        inflight: deque[asyncio.Future[Any]] = deque()
        try:
            await self._get_window(info, opener, out, behind, progress, inflight, plain)
        finally:  # stopped early (an error, a cancel): no request outlives the transfer
            for fut in inflight:
                fut.cancel()

    async def _get_window(
        self, info: FileInfo, opener: ChunkOpener, out: BinaryIO, behind: WriteBehind,
        progress: Progress | None, inflight: deque[asyncio.Future[Any]],
        plain: BinaryIO | None,
    ) -> None:
        chunks = opener.chunks
        got = ask = opener.next_index  # got: chunks come in and handed to the check
        resumes = 0
        checking: asyncio.Future[None] | None = None
        try:
            while got < chunks:
                while ask < chunks and len(inflight) < WINDOW:
                    get = pb.BlobGet(blobId=info.blob_id, index=ask)
                    inflight.append(asyncio.ensure_future(self._link.request(get, _CHUNK)))
                    ask += 1
                try:
                    _, data = await inflight.popleft()
                    if len(inflight) >= REFILL - 1:
                        # Check a batch of at least REFILL chunks per thread hop (a failed
                        # request is left in place, to be awaited and handled below).
                        await asyncio.wait({inflight[REFILL - 2]})
                except NotConnected:
                    await _cancel(inflight)
                    resumes += 1
                    if resumes > MAX_RESUMES:
                        raise
                    await self._link.wait_up(RECONNECT_WAIT_S)
                    ask = got
                    self.resumed.append(ask)
                    continue
                except ServerError:
                    await _cancel(inflight)
                    raise
                batch = [_chunk_data(data, info.blob_id, got)]
                while inflight and _succeeded(inflight[0]):  # chunks that came together
                    batch.append(_chunk_data(inflight.popleft().result()[1], info.blob_id,
                                             got + len(batch)))
                got += len(batch)
                # Checked (and hashed) before they are kept as they came, off the event
                # loop and in one hop, after the batch before (in order); meanwhile the
                # window is refilled and the next chunks come in.
                await _checked(checking, opener, info.size, progress)
                checking = asyncio.ensure_future(asyncio.to_thread(
                    _keep_checked, opener, out, behind, batch, plain))
            done, checking = checking, None
            await _checked(done, opener, info.size, progress)
        finally:
            if checking is not None:  # stopped early: the thread still writes to ``out``
                await asyncio.wait({checking})
                if not checking.cancelled():
                    checking.exception()  # the error that stopped it comes first

    async def save(
        self, message_id: str, dest: str | os.PathLike[str], *,
        progress: Progress | None = None, overwrite: bool = False,
    ) -> Path:
        """Write the plaintext of ``message_id``'s file to ``dest`` (a directory: under
        the sender's file name), fetching it first if needed; returns the path written.
        The plaintext is written beside ``dest`` and renamed, so ``dest`` is never
        half-written."""
        info = self.info(message_id)
        target = Path(dest)
        if target.is_dir():
            target = target / valid_name(info.name)
        if target.exists() and not overwrite:
            raise UsageError(f"{target} exists (choose another destination)")
        if not target.parent.is_dir():
            raise UsageError(f"{target.parent} is not a directory")
        tmp = target.parent / f".{target.name}.part"
        try:
            streamed = False
            if not self.is_downloaded(message_id):
                # Fetched and written in one pass: each chunk's plaintext goes to the
                # temporary file as it is checked; the whole is checked before the rename.
                with open(tmp, "wb") as out:
                    os.fchmod(out.fileno(), 0o600)
                    streamed = await self._fetch(message_id, progress, out)
            record = self._table.get(message_id)
            if record is None or not record.complete:
                raise UsageError(f"the file of message {message_id} is not here")
            if not streamed:  # from the local copy, checked again
                await asyncio.to_thread(self._write_plain, record, info, tmp)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if info.view_once:  # opened once: its key and sealed copy go, a tombstone stays
            self._table.forget(record)
            with self._store.transaction():
                self._store.rewrite_text(message_id, opened_body(info))
        return target

    def _write_plain(self, record: LocalFile, info: FileInfo, tmp: Path) -> None:
        opener = ChunkOpener(record.key, record.local_id, info.size, info.sha256)
        sealed_total = sealed_size(info.size)
        with open(self._table.path(record), "rb") as src, open(tmp, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            for index in range(opener.chunks):
                out.write(opener.open(src.read(sealed_chunk_size(index, opener.chunks,
                                                                 sealed_total))))
            if src.read(1):
                raise FileExtended("the local copy has data past its final chunk")
            opener.finish()

    async def view(self, message_id: str, *, progress: Progress | None = None) -> Path:
        """The plaintext of the file in this run's viewing area (wiped on close)."""
        private_dir(self.view_dir)
        folder = self.view_dir / message_id
        folder.mkdir(mode=0o700, exist_ok=True)
        return await self.save(message_id, folder, progress=progress, overwrite=True)

    def wipe_views(self) -> None:
        shutil.rmtree(self.view_dir, ignore_errors=True)


async def _cancel(inflight: deque[asyncio.Future[Any]]) -> None:
    for fut in inflight:
        fut.cancel()
    await asyncio.gather(*inflight, return_exceptions=True)
    inflight.clear()


def _read_sealed(
    f: BinaryIO, sealer: ChunkSealer, log: TagLog, start: int, blob_id: str,
    rids: list[str],
) -> list[bytearray]:
    """The binary put messages (``rids``: their requestIds) of chunks ``start`` on of
    the file, each chunk sealed in place (again, the same bytes, if it was sent before a
    lost connection), each tag logged (or checked against the log) before any leaves."""
    plain = memoryview(bytearray(CHUNK_SIZE))
    out = []
    for index, rid in enumerate(rids, start):
        plaintext = _pread_into(f.fileno(), plain[:min(CHUNK_SIZE, sealer.size
                                                         - index * CHUNK_SIZE)],
                                index * CHUNK_SIZE)
        head = pb.chunk_head(pb.OP_PUT, blob_id, index, rid)
        message = bytearray(len(head) + HEADER_SIZE + len(plaintext) + TAG_SIZE)
        message[:len(head)] = head
        sealed = memoryview(message)[len(head):]
        if index < sealer.next_index:
            sealed[:] = sealer.reseal(index, plaintext)
        else:
            sealer.seal_into(plaintext, sealed)
            log.sealed(index, bytes(sealed[-TAG_SIZE:]))
        out.append(message)
    return out


def _pread_into(fd: int, buf: memoryview, offset: int) -> memoryview:
    """``buf`` filled from ``offset`` of ``fd`` (the part filled, if the file ends first)."""
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], offset + got)
        if not n:
            break
        got += n
    return buf[:got]


def _built(message: bytearray, request_id: str) -> bytearray:
    """A put message made with its requestId already in it (:func:`_read_sealed`)."""
    return message


def _seal_unsent(f: BinaryIO, sealer: ChunkSealer, log: TagLog, count: int) -> None:
    """The first ``count`` chunks (the server has them) through ``sealer`` and checked
    against ``log``: the whole file is hashed, and a file that changed is caught
    (:class:`FileChanged`) before anything more of it is sent."""
    f.seek(0)
    for index in range(count):
        sealed = sealer.seal(f.read(min(CHUNK_SIZE, sealer.size - index * CHUNK_SIZE)))
        log.sealed(index, sealed[-TAG_SIZE:])


def _acked(acked: int, size: int, progress: Progress | None) -> int:
    """``acked`` chunks are stored: say so (progress is reported after each chunk)."""
    if progress is not None:
        progress(min(acked * CHUNK_SIZE, size), size)
    return acked


def _keep_checked(
    opener: ChunkOpener, out: BinaryIO, behind: WriteBehind, batch: list[bytes | memoryview],
    plain: BinaryIO | None,
) -> None:
    for sealed in batch:
        plaintext = opener.open(sealed)
        if plain is not None:
            plain.write(plaintext)
        out.write(sealed)
    out.flush()
    behind.wrote(out.fileno(), sum(map(len, batch)))


async def _settled(ahead: asyncio.Future[Any] | None) -> None:
    """Wait until a batch sealed ahead is done with the file and the sealer, and drop it
    (an error in it comes again when those chunks are sealed anew)."""
    if ahead is not None:
        await asyncio.wait({ahead})
        if not ahead.cancelled():
            ahead.exception()


async def _checked(
    checking: asyncio.Future[None] | None, opener: ChunkOpener, size: int,
    progress: Progress | None,
) -> None:
    """Wait for the check of the batch before (its error is raised here), then say how
    far the download is."""
    if checking is None:
        return
    await checking
    if progress is not None:
        progress(min(opener.next_index * CHUNK_SIZE, size), size)


def _succeeded(fut: asyncio.Future[Any]) -> bool:
    """Whether a request has its answer already (a failed one is left to be awaited)."""
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _opens_with(record: LocalFile, key: Secret, file_id: bytes) -> bool:
    """Whether a local copy's chunks are the file's own, sealed under ``key``."""
    return record.local_id == file_id and hmac.compare_digest(record.key.expose(),
                                                              key.expose())


def _chunk_data(data: dict[str, Any], blob_id: str, index: int) -> bytes | memoryview:
    """The chunk of a ``sottovoce.blob.chunk`` reply, which must be the one asked for."""
    if data.get("blobId") != blob_id or data.get("index") != index:
        raise DecodeError("the server answered with another chunk")
    chunk = data.get("data")
    if isinstance(chunk, bytes | memoryview):  # a binary message (the usual answer)
        return chunk
    return pb.CHUNK_DATA.parse(chunk, "data")


def _size_text(value: object) -> str:
    if not isinstance(value, int):
        return "its limit"
    return f"{value} bytes ({value / (1 << 20):.1f} MiB)"


def describe(path: Path) -> tuple[str, str]:
    """The name and media type a file is sent with (the type guessed from its name)."""
    try:
        name = valid_name(path.name)
    except DecodeError:
        raise UsageError(f"{path} has no name that can be sent") from None
    guessed = (mimetypes.guess_type(name)[0] or "application/octet-stream").lower()
    return name, guessed


def make_thumbnail(path: Path) -> bytes | None:
    """A small JPEG of an image, made here on the sender's device (``None`` if Pillow
    cannot read it or no small enough one comes out)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.thumbnail((160, 160))
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    for quality in (70, 40):
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=quality)
        if buf.tell() <= MAX_THUMBNAIL_BYTES:
            return buf.getvalue()
    return None


def voice_duration(path: Path, media_type: str) -> int | None:
    """Milliseconds of a WAV voice note (other formats: ``None``)."""
    if media_type not in ("audio/wav", "audio/x-wav", "audio/wave"):
        return None
    try:
        with wave.open(str(path), "rb") as w:
            rate = w.getframerate()
            return None if rate <= 0 else w.getnframes() * 1000 // rate
    except (OSError, EOFError, wave.Error):
        return None
