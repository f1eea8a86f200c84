"""Writing a large file's data to disk while the file is still being written, so that
the fsync at its end (before it counts as complete) waits for the last few MiB, not for
the whole file (server/blobs.py on upload, client/files.py on download).

Python has no ``sync_file_range``; an ``fdatasync`` in a worker thread every
:data:`FLUSH_EVERY` bytes does the same job: the disk writes what has come while the
next chunks cross the network, and the final fsync has little left. One flush at a
time per file (a slow disk is not handed a queue of them). The worker syncs its own
duplicate of the descriptor, so the writer may close its file (or open it per write)
meanwhile. A flush that fails is not forgotten: :meth:`WriteBehind.wait` and
:meth:`WriteBehind.drain` raise its error, since on Linux a writeback error is
reported once, possibly to that duplicate only.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import Future, ThreadPoolExecutor

#: Bytes written between two background flushes.
FLUSH_EVERY = 8 << 20

# Its own small pool: flushes mostly wait for the disk, and must not take the threads
# that seal and check chunks (asyncio's default pool).
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sottovoce-write-behind")


def _sync_and_close(fd: int) -> None:
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


class WriteBehind:
    """The background flushes of one file being written."""

    __slots__ = ("_every", "_flushing", "_unflushed")

    def __init__(self, every: int = FLUSH_EVERY) -> None:
        self._every = every
        self._unflushed = 0
        self._flushing: Future[None] | None = None

    def wrote(self, fd: int, n: int) -> None:
        """``n`` more bytes are written through ``fd`` (in the kernel, not in a Python
        buffer): start a flush once enough has built up and none is running."""
        self._unflushed += n
        if self._unflushed < self._every:
            return
        running = self._flushing
        if running is not None and not running.done():
            return
        if running is not None:
            running.result()  # a failed flush is reported here, not lost
        self._unflushed = 0
        dup = os.dup(fd)
        try:
            self._flushing = _POOL.submit(_sync_and_close, dup)
        except BaseException:
            os.close(dup)
            raise

    def wait(self) -> None:
        """Block until the flush in progress (if any) ends; raise its error."""
        if self._flushing is not None:
            self._flushing.result()

    async def drain(self) -> None:
        """:meth:`wait` without blocking the event loop."""
        if self._flushing is not None:
            await asyncio.wrap_future(self._flushing)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file by its name (the writer opens it per write)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
