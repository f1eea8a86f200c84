"""SQLite storage: WAL, ``synchronous=FULL``, one writer thread doing group commit
(docs/architecture.md §Hot path).

::

    event loop                        writer thread (owns the only write connection)
    ──────────                        ───────────────────────────────────────────────
    append(req, cb) ──► queue ──►  take every job queued (≤ max_batch)
    await claim/ack/…               BEGIN IMMEDIATE
                                    run each job: sequences, inbox rows, …
                                    flush the sequence counters once per batch
                                    COMMIT  (fsync: the batch is durable)
    cb(outcome) ◄── call_soon_threadsafe(resolve whole batch)

Acks never precede the commit: callbacks run only after COMMIT returned. While
one batch is being fsynced the next one queues up, so batches grow with load
and latency stays at one fsync when idle. Reads (replay, directory) use their
own connections in a small thread pool; WAL lets them run beside the writer.

The writer keeps the per-conversation serverSeq and per-device globalInboxSeq
counters in memory (it is their only writer) and writes each touched counter
once per batch. Any unexpected failure rolls the batch back, forgets the
cached counters (they reload from the database) and retries the jobs one by
one, so one bad job cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from sottovoce.errors import RemoteError, UsageError
from sottovoce.private_files import private_dir, private_file
from sottovoce.server.errors import StorageError
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage import engine_sqlite
from sottovoce.server.storage.base import (
    AppendCallback,
    SendOutcome,
    SendRequest,
    StoredFrame,
    UnknownAccount,
    envelope_one,
    envelope_text,
    received_part,
)
from sottovoce.server.storage.quota import (
    UNKNOWN_SENDER,
    InboxFull,
    InboxLimits,
    Usage,
    refusal,
)
from sottovoce.server.storage.schema import SQLITE_MIGRATIONS
from sottovoce.server.storage.shared import BatchStats, Op, SharedStorage
from sottovoce.server.storage.sqlite_rooms import SqliteRooms

T = TypeVar("T")

__all__ = ["BatchStats", "SqliteStorage", "migrate"]  # BatchStats: the app imports it here

#: Each entry upgrades the schema by one version (storage/schema.py); applied in order at start-up.
MIGRATIONS: tuple[str, ...] = SQLITE_MIGRATIONS
SCHEMA_VERSION = len(MIGRATIONS)
#: How often the checkpointer looks at what the writer has done since its last checkpoint.
CHECKPOINT_INTERVAL_S = 0.5
#: It copies the WAL into the database file (and fsyncs that file) once this many jobs
#: were committed since the last copy, or once this long has passed with any committed.
#: Each copy makes the commits that overlap it wait on the disk for a few ms: under load
#: it runs at every look, as before; at a low rate (a few hundred sends a second) it runs
#: every few seconds instead of twice a second, so it no longer sets the tail latency.
CHECKPOINT_JOBS = 1_000
CHECKPOINT_MAX_WAIT_S = 5.0
#: Under sustained writes a passive checkpoint never catches up with the end of
#: the WAL, so the WAL would never restart; past this many frames (4 KiB pages,
#: 64 MiB) the writer truncates it itself between two batches.
WAL_TRUNCATE_FRAMES = 16_384


# bytes parameters bound as they are. sqlite3 binds int, float, str and bytearray
# directly but looks for an adapter for anything else, bytes included: a failed lookup
# of ``__adapt__`` on its protocol type that formats an AttributeError message, for each
# bytes parameter of each statement (~0.1 us; a lookup binds a few, a send more). With
# bytes itself as the adapter the lookup finds it, and the value bound is the same BLOB.
sqlite3.register_adapter(bytes, bytes)


#: Rows per statement at most. Each statement is one sqlite3_step, and the writer
#: thread gives up and retakes the GIL around each step (each retake can wait for the
#: event loop), so a batch's rows go in as few statements as possible.
_MAX_ROWS = 1024
_SQL_CACHE: dict[tuple[str, int, int], str] = {}


def _values(width: int, rows: Sequence[tuple[Any, ...]]) -> tuple[int, list[Any]]:
    """The parameters of a VALUES list for ``rows``, padded with rows of NULLs to a
    power of two up to 64, else to a multiple of 64 (so that at most 22 statements per
    table stay prepared, and padding costs little), and its number of rows."""
    n = len(rows)
    size = 1 << (n - 1).bit_length() if n <= 64 else -(-n // 64) * 64
    params = list(chain.from_iterable(rows))
    params.extend([None] * (width * (size - len(rows))))
    return size, params


def _sql(head: str, width: int, size: int, tail: str) -> str:
    key = (head + tail, width, size)
    sql = _SQL_CACHE.get(key)
    if sql is None:
        one = "(" + ",".join("?" * width) + ")"
        sql = _SQL_CACHE[key] = head + "VALUES " + ",".join([one] * size) + tail
    return sql


def insert_many(conn: sqlite3.Connection, head: str, width: int, rows: Sequence[tuple[Any, ...]],
                tail: str = "") -> None:
    """``head`` is "INSERT ... INTO t(cols)", ``tail`` what may follow (ON CONFLICT ...):
    one statement per 1,024 rows; the padding rows (first column NULL) are skipped."""
    for i in range(0, len(rows), _MAX_ROWS):
        size, params = _values(width, rows[i:i + _MAX_ROWS])
        sql = _sql(head + " SELECT * FROM (", width, size,  # noqa: S608 - constant heads
                   ") WHERE column1 IS NOT NULL" + tail)
        conn.execute(sql, params)


def update_many(conn: sqlite3.Connection, head: str, width: int,
                rows: Sequence[tuple[Any, ...]], where: str) -> None:
    """``head`` is "UPDATE t SET col=v.column2, ...", ``where`` matches v.column1 to the
    key: one statement per 1,024 rows (padding rows match nothing)."""
    for i in range(0, len(rows), _MAX_ROWS):
        size, params = _values(width, rows[i:i + _MAX_ROWS])
        conn.execute(_sql(head + " FROM (", width, size, ") AS v WHERE " + where), params)


def insert_flat(conn: sqlite3.Connection, head: str, width: int, params: list[Any],
                last: Any) -> None:
    """``head`` is "INSERT ... INTO t(cols)" whose last column is ``last`` in every row,
    ``params`` the other ``width`` columns' values, row after row (not one tuple per row):
    the rows as :func:`insert_many` writes them, ``last`` bound once per statement."""
    cols = ", ".join([f"column{k}" for k in range(1, width + 1)])
    step = width * _MAX_ROWS
    for i in range(0, len(params), step):
        chunk = [last]
        chunk += params[i:i + step]
        n = (len(chunk) - 1) // width
        size = 1 << (n - 1).bit_length() if n <= 64 else -(-n // 64) * 64
        chunk.extend([None] * (width * (size - n)))
        # ?1 is ``last``; each bare ? after it takes the next number (2, 3, ...).
        conn.execute(_sql(f"{head} SELECT {cols}, ?1 FROM (", width, size,  # noqa: S608
                          ") WHERE column1 IS NOT NULL"), chunk)


_INBOX_HEAD = "INSERT INTO inbox(dev, seq, received_at, envelope, sender"
InboxRow = tuple[int, int, int, str, int, int | None]
_EXPIRES_AT = itemgetter(5)
_NO_EXPIRY = itemgetter(0, 1, 2, 3, 4)


def insert_inbox(conn: sqlite3.Connection, rows: Sequence[InboxRow]) -> None:
    """Inbox rows (the last field: expires_at or None). Rows without an expiry, the
    common case, are written without the column: one bind fewer per row, and the
    column's default (NULL) keeps them out of the partial index on expires_at."""
    # itemgetter: both passes over the rows run in C (expires_at is None or > 0).
    if any(map(_EXPIRES_AT, rows)):
        insert_many(conn, _INBOX_HEAD + ", expires_at)", 6, rows)
    else:
        insert_many(conn, _INBOX_HEAD + ")", 5, list(map(_NO_EXPIRY, rows)))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _connect(path: Path, statements: int = 128) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30,
                           cached_statements=statements)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsynced at every commit, so an ack survives power loss.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    # Checkpoints run on their own thread (see _checkpointer), not inside a
    # commit, where they would add milliseconds to the acks that wait on it.
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; returns the version found before."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        found = 0 if row is None else int(row[0])
        if found > SCHEMA_VERSION:
            raise UsageError(
                f"database schema v{found} is newer than this server (v{SCHEMA_VERSION})"
            )
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO schema_version(version) VALUES (?)", (SCHEMA_VERSION,))
        else:
            conn.execute("UPDATE schema_version SET version=?", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
        return found
    except BaseException:
        conn.execute("ROLLBACK")
        raise


Done = Callable[[Any, BaseException | None], None]


class _Job(msgspec.Struct):
    """One write for the writer thread (one per send: a Struct's constructor runs in C)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    done: Done


_STOP = object()


class SqliteStorage(SharedStorage, SqliteRooms):
    def __init__(
        self,
        path: Path,
        *,
        logger: JsonLogger,
        commit_window_ms: float = 0.0,
        max_batch: int = 2048,
        readers: int = 2,
        limits: InboxLimits | None = None,
    ) -> None:
        self.path = path
        self.limits = limits or InboxLimits()
        self._log = logger
        self._window = commit_window_ms / 1000
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="sv-read")
        self._local = threading.local()
        self._closed = False
        self._stop_checkpoints = threading.Event()
        self._truncate_wal = False
        self.checkpoint_interval_s = CHECKPOINT_INTERVAL_S
        self.checkpoint_jobs = CHECKPOINT_JOBS
        self.checkpoint_max_wait_s = CHECKPOINT_MAX_WAIT_S
        self.wal_truncate_frames = WAL_TRUNCATE_FRAMES
        self._checkpoint_thread: threading.Thread | None = None
        self.stats = BatchStats()
        # Writer-thread state (touched only by the writer thread).
        self._devs: dict[tuple[str, str], int] = {}
        self._inbox_seq: dict[int, int] = {}
        self._conv_seq: dict[str, int] = {}
        self._dirty_devs: set[int] = set()
        self._dirty_convs: set[str] = set()
        self._last_received = 0
        # Inbox quotas (writer thread only): usage per recipient device, loaded on first
        # use; (dev, sender) entries changed in this batch; dev -> its account; and
        # (account, peer) pairs known to have written (a cache of `correspondents`).
        self._usage: dict[int, Usage] = {}
        self._dirty_usage: set[int] = set()  # devices with Usage.dirty senders
        self._dev_users: dict[int, str] = {}
        self._wrote: set[tuple[str, str]] = set()
        self._init_rooms()

    # --- life cycle ----------------------------------------------------------------

    async def open(self) -> None:
        # The app reports wider modes at start; here only: never create them wider.
        private_dir(self.path.parent)
        private_file(self.path)
        self._loop = asyncio.get_running_loop()
        # The writer keeps its multi-row statements prepared (insert_many: up to 22 per
        # table) beside everything else it runs.
        conn = _connect(self.path, statements=512)
        found = migrate(conn)
        if found != SCHEMA_VERSION:
            self._log.info("storage.migrated", version=SCHEMA_VERSION, count=found)
        self._thread = threading.Thread(
            target=self._writer_main, args=(conn,), name="sv-writer", daemon=True
        )
        self._thread.start()
        self._checkpoint_thread = threading.Thread(
            target=self._checkpointer, name="sv-checkpoint", daemon=True
        )
        self._checkpoint_thread.start()

    def _checkpointer(self) -> None:
        """Copy the WAL back into the database file beside the writer (PASSIVE never blocks
        it); SQLite restarts the WAL from its beginning once all of it is checkpointed."""
        conn = _connect(self.path)
        stats = self.stats
        done_jobs, done_at = stats.jobs, time.monotonic()
        try:
            while not self._stop_checkpoints.wait(self.checkpoint_interval_s):
                jobs, now = stats.jobs, time.monotonic()
                if jobs == done_jobs or (jobs - done_jobs < self.checkpoint_jobs
                                         and now - done_at < self.checkpoint_max_wait_s):
                    continue
                done_jobs, done_at = jobs, now
                try:
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    self._log.warning("storage.checkpoint_failed", error=type(exc).__name__)
                    continue
                stats.checkpoints += 1
                if row is not None and int(row[1]) > self.wal_truncate_frames:
                    self._truncate_wal = True
        finally:
            conn.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._stop_checkpoints.set()
        loop = asyncio.get_running_loop()
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join)
        if self._checkpoint_thread is not None:
            await loop.run_in_executor(None, self._checkpoint_thread.join)
        self._readers.shutdown(wait=True)

    # --- the writer ----------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None:
        if self._closed:
            done(None, StorageError("server is shutting down"))
            return
        self._queue.put(_Job(fn, args, done))

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        self._submit(fn, args, done)
        return await fut

    def _writer_main(self, conn: sqlite3.Connection) -> None:
        q = self._queue
        stopping = False
        while not stopping:
            first = q.get()
            if first is _STOP:
                break
            batch: list[_Job] = [first]  # type: ignore[list-item]
            if self._window:
                time.sleep(self._window)
            while len(batch) < self._max_batch:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            results = self._run_batch(conn, batch)
            elapsed = time.perf_counter() - t0
            self.stats.record(len(batch), elapsed)
            if self._loop is not None and not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(_resolve, results)
                except RuntimeError:  # loop closed while we committed
                    break
            if self._truncate_wal:  # after the acks of this batch went out
                self._truncate_wal = False
                try:
                    # Between batches: nothing of ours is in flight; readers are short.
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                    self.stats.truncations += 1
                except sqlite3.Error as exc:
                    self._log.warning("storage.truncate_failed", error=type(exc).__name__)
        conn.close()

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[_Job]
    ) -> list[tuple[Done, Any, BaseException | None]]:
        results: list[tuple[Done, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            i = 0
            w_append = self._w_append  # (a new bound method at every attribute access)
            while i < len(batch):
                job = batch[i]
                if job.fn == w_append:
                    # A run of sends: written with a few statements for the whole run.
                    j = i
                    while j < len(batch) and batch[j].fn == w_append:
                        j += 1
                    results.extend(self._append_run(conn, batch[i:j]))
                    i = j
                    continue
                try:
                    results.append((job.done, job.fn(conn, *job.args), None))
                except RemoteError as exc:
                    # Domain refusals are raised before a job writes anything.
                    results.append((job.done, None, exc))
                i += 1
            self._flush_counters(conn)
            conn.execute("COMMIT")
            return results
        except Exception as exc:
            self._rollback(conn)
            if len(batch) == 1:
                self._log.error("storage.failed", error=type(exc).__name__)
                return [(batch[0].done, None, StorageError())]
        # Retry one by one so that a single bad job fails alone.
        out: list[tuple[Done, Any, BaseException | None]] = []
        for job in batch:
            out.extend(self._run_batch(conn, [job]))
        return out

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self._devs.clear()
        self._inbox_seq.clear()
        self._conv_seq.clear()
        self._dirty_devs.clear()
        self._dirty_convs.clear()
        self._usage.clear()
        self._dirty_usage.clear()
        self._wrote.clear()
        self._rooms_reset()

    def _flush_counters(self, conn: sqlite3.Connection) -> None:
        self._flush_rooms(conn)
        if self._dirty_usage:
            keep: list[tuple[int, str, int, int]] = []
            drop: list[tuple[int, str]] = []
            for dev in self._dirty_usage:
                usage = self._usage.get(dev)
                if usage is None:
                    continue
                for sender in usage.dirty:
                    entry = usage.by_sender.get(sender)
                    if entry is None or entry == [0, 0]:
                        usage.by_sender.pop(sender, None)
                        drop.append((dev, sender))
                    else:
                        keep.append((dev, sender, entry[0], entry[1]))
                usage.dirty.clear()
            if keep:
                insert_many(
                    conn, "INSERT INTO inbox_usage(dev, sender, messages, bytes)", 4, keep,
                    " ON CONFLICT(dev, sender) DO UPDATE SET messages=excluded.messages, "
                    "bytes=excluded.bytes")
            if drop:
                conn.executemany("DELETE FROM inbox_usage WHERE dev=? AND sender=?", drop)
            self._dirty_usage.clear()
        # One statement per table, not one per row: each statement's step hands the GIL
        # to the event loop and back, which under load costs up to the switch interval.
        if self._dirty_devs:
            update_many(
                conn, "UPDATE devices SET last_inbox_seq=v.column2", 2,
                [(d, self._inbox_seq[d]) for d in self._dirty_devs], "devices.dev=v.column1",
            )
            self._dirty_devs.clear()
        if self._dirty_convs:
            insert_many(
                conn, "INSERT INTO conversations(conversation_id, last_seq)", 2,
                [(c, self._conv_seq[c]) for c in self._dirty_convs],
                " ON CONFLICT(conversation_id) DO UPDATE SET last_seq=excluded.last_seq",
            )
            self._dirty_convs.clear()

    def _dev(self, conn: sqlite3.Connection, user: str, device: str) -> int | None:
        key = (user, device)
        dev = self._devs.get(key)
        if dev is None:
            row = conn.execute(
                "SELECT dev, last_inbox_seq FROM devices WHERE user_id=? AND device_id=?", key
            ).fetchone()
            if row is None:
                return None
            dev = int(row[0])
            self._devs[key] = dev
            self._dev_users[dev] = user
            self._inbox_seq[dev] = int(row[1])
        return dev

    # --- inbox quotas (writer side, storage/quota.py) ------------------------------------

    def _usage_of(self, conn: sqlite3.Connection, dev: int) -> Usage:
        usage = self._usage.get(dev)
        if usage is None:
            usage = self._usage[dev] = Usage()
            for sender, messages, size in conn.execute(
                "SELECT sender, messages, bytes FROM inbox_usage WHERE dev=?", (dev,)
            ):
                usage.add(sender, int(messages), int(size))
        return usage

    def _account_of(self, conn: sqlite3.Connection, dev: int) -> str:
        """The account of a sending device (UNKNOWN_SENDER for 0: rows before quotas)."""
        user = self._dev_users.get(dev)
        if user is None:
            row = conn.execute("SELECT user_id FROM devices WHERE dev=?", (dev,)).fetchone()
            user = UNKNOWN_SENDER if row is None else str(row[0])
            if row is not None:
                self._dev_users[dev] = user
        return user

    def _has_written(self, conn: sqlite3.Connection, user: str, peer: str) -> bool:
        if (user, peer) in self._wrote:
            return True
        if conn.execute(
            "SELECT 1 FROM correspondents WHERE user_id=? AND peer=?", (user, peer)
        ).fetchone() is None:
            return False
        self._wrote.add((user, peer))
        return True

    def _note_written(self, conn: sqlite3.Connection, user: str, peer: str) -> bool:
        """Record that ``user`` wrote to ``peer``; True if this added it to the cache."""
        if (user, peer) in self._wrote:
            return False
        if len(self._wrote) > 100_000:
            self._wrote.clear()
        conn.execute("INSERT OR IGNORE INTO correspondents(user_id, peer) VALUES (?, ?)",
                     (user, peer))
        self._wrote.add((user, peer))
        return True

    def _charge(
        self, conn: sqlite3.Connection, req: SendRequest, devs: list[int], envs: list[str]
    ) -> InboxFull | None:
        """Count the send's frames in their devices' usage, or, if one would pass a quota,
        count none of them and return the refusal. The common case, far below every
        limit, is :meth:`Usage.take`'s, which needs no look-up."""
        lim = self.limits
        sender = req.sender_user
        usages = self._usage
        targets = zip(req.targets, devs, envs, strict=True)
        for charged, ((user, device, _), dev, env) in enumerate(targets):
            usage = usages.get(dev) or self._usage_of(conn, dev)
            size = len(env)
            if not usage.take(lim, sender, user == sender, size):
                scope = refusal(
                    lim, usage, sender=sender, own=user == sender, size=size,
                    known=lambda: self._has_written(conn, req.recipient_user, sender),
                )
                if scope is not None:
                    self._uncharge(sender, devs[:charged], envs[:charged])
                    return InboxFull(scope, user, device)
                usage.add(sender, 1, size)
                usage.dirty.add(sender)
            self._dirty_usage.add(dev)
        return None

    def _uncharge(self, sender: str, devs: list[int], envs: list[str]) -> None:
        for dev, env in zip(devs, envs, strict=True):
            self._usage[dev].remove(sender, 1, len(env))

    def _release(self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> None:
        """Inbox rows matching ``where`` are about to be deleted: stop counting them."""
        for dev, sender, messages, size in conn.execute(
            "SELECT dev, sender, count(*), sum(length(envelope)) FROM inbox "  # noqa: S608
            f"WHERE {where} GROUP BY dev, sender", args
        ).fetchall():
            account = self._account_of(conn, int(sender)) if sender else UNKNOWN_SENDER
            usage = self._usage_of(conn, int(dev))
            usage.remove(account, int(messages), int(size))
            usage.dirty.add(account)
            self._dirty_usage.add(int(dev))

    # --- delivery (writer side) ------------------------------------------------------

    def append(self, req: SendRequest, callback: AppendCallback) -> None:
        self._submit(self._w_append, (req,), callback)

    def _append_run(
        self, conn: sqlite3.Connection, jobs: list[_Job]
    ) -> list[tuple[Done, SendOutcome | None, BaseException | None]]:
        """Store a run of sends with one INSERT per table (the common case: no retries);
        returns each job's callback with its outcome or error.

        Idempotency records go in with INSERT OR IGNORE; if any was already there
        (a retry, or the same key twice in this run) the run is rolled back to
        its savepoint, the counters restored, and each send redone on its own
        by :meth:`_w_append`, which answers retries with the original ack. A send
        that would pass an inbox quota is answered alone: with its original ack if
        it is a retry, else refused (nothing of it is written).
        """
        conv_seq, inbox_seq, devs_get = self._conv_seq, self._inbox_seq, self._devs.get
        usages, dirty_usage, wrote_cache = self._usage, self._dirty_usage, self._wrote
        lim = self.limits
        conv_before: dict[str, int | None] = {}
        dev_before: dict[int, int] = {}
        charged: list[tuple[str, int, int]] = []  # (account, dev, size): undone with the run
        wrote: list[tuple[str, str]] = []  # correspondents cached, undone with the run
        results: list[tuple[Done, SendOutcome | None, BaseException | None]] = []
        # The rows' values one after the other, 5 per send and 4 per inbox row (their
        # received_at, the same for the whole run, is bound once per statement).
        sends_params: list[Any] = []
        inbox_params: list[Any] = []
        expiring: list[tuple[int, int]] = []  # (inbox row, expires_at) of the rows with one
        received = max(now_ms(), self._last_received)
        self._last_received = received
        received_text = received_part(received)
        conn.execute("SAVEPOINT sends_run")
        for job in jobs:
            req: SendRequest = job.args[0]
            account = req.sender_user
            sender = (devs_get((account, req.sender_device))
                      or self._dev(conn, account, req.sender_device))
            targets = req.targets
            conv = req.conversation_id
            # (0 is never cached: a conversation's first serverSeq is 1)
            seq = (conv_seq.get(conv) or self._last_conv_seq(conn, conv)) + 1
            if len(targets) == 1:
                # The common case written out inline: one frame, counted by Usage.take
                # when it is below every limit (_charge decides the rest).
                user, device, ct = targets[0]
                dev = devs_get((user, device)) or self._dev(conn, user, device)
                if sender is None or dev is None:
                    results.append((job.done, None, UnknownAccount("device is not registered")))
                    continue
                env = envelope_one(req, ct, seq, received_text)
                devs, envs = [dev], [env]
                usage = usages.get(dev) or self._usage_of(conn, dev)
                if usage.take(lim, account, user == account, len(env)):
                    dirty_usage.add(dev)
                    full = None
                else:
                    full = self._charge(conn, req, devs, envs)
            else:
                found = self._target_devs(conn, req)
                if sender is None or found is None:
                    results.append((job.done, None, UnknownAccount("device is not registered")))
                    continue
                devs = found
                head, tail = req.envelope_parts()
                envs = [envelope_text(req, head, tail, ct, seq, received) for _, _, ct in targets]
                full = self._charge(conn, req, devs, envs)
            if full is not None:
                results.append((job.done, *self._stored_or(conn, sender, req, full)))
                continue
            framed: list[StoredFrame] = []
            for (user, device, _), dev, env in zip(targets, devs, envs, strict=True):
                charged.append((account, dev, len(env)))
                if dev not in dev_before:
                    dev_before[dev] = inbox_seq[dev]
                g = inbox_seq[dev] + 1
                inbox_seq[dev] = g
                if req.expires_at_ms:
                    expiring.append((len(inbox_params) // 4, req.expires_at_ms))
                inbox_params += (dev, g, env, sender)
                framed.append(StoredFrame(user, device, g, env))
            if conv not in conv_before:
                conv_before[conv] = conv_seq.get(conv)
            conv_seq[conv] = seq
            sends_params += (sender, req.idempotency_key, conv, req.message_id, seq)
            peer = req.recipient_user
            if (account, peer) not in wrote_cache and self._note_written(conn, account, peer):
                wrote.append((account, peer))
            results.append((job.done, SendOutcome(conv, req.message_id, req.idempotency_key,
                                                  seq, received, False, tuple(framed)), None))
        before = conn.total_changes
        insert_flat(
            conn,
            "INSERT OR IGNORE INTO sends(sender_dev, idem_key, conversation_id, message_id, "
            "server_seq, received_at)",
            5,
            sends_params,
            received,
        )
        if conn.total_changes - before == len(sends_params) // 5:
            if expiring:
                insert_flat(conn, "INSERT INTO inbox(dev, seq, envelope, sender, expires_at, "
                            "received_at)", 5, _with_expiry(inbox_params, expiring), received)
            else:
                # Rows without an expiry, the common case, are written without the column:
                # its default (NULL) keeps them out of the partial index on expires_at.
                insert_flat(conn, "INSERT INTO inbox(dev, seq, envelope, sender, received_at)",
                            4, inbox_params, received)
            conn.execute("RELEASE sends_run")
            self._dirty_convs.update(conv_before)
            self._dirty_devs.update(dev_before)
            return results
        # A retry is in the run: undo it and take the careful path, one send at a time.
        conn.execute("ROLLBACK TO sends_run")
        conn.execute("RELEASE sends_run")
        for conv, old in conv_before.items():
            if old is None:
                conv_seq.pop(conv, None)
            else:
                conv_seq[conv] = old
        for dev, old_seq in dev_before.items():
            inbox_seq[dev] = old_seq
        for account, dev, size in charged:
            usages[dev].remove(account, 1, size)
        wrote_cache.difference_update(wrote)
        slow: list[tuple[Done, SendOutcome | None, BaseException | None]] = []
        for job in jobs:
            try:
                slow.append((job.done, self._w_append(conn, job.args[0]), None))
            except RemoteError as exc:
                slow.append((job.done, None, exc))
        return slow

    def _target_devs(self, conn: sqlite3.Connection, req: SendRequest) -> list[int] | None:
        """The internal ids of a send's target devices, in order; None if one is unknown."""
        devs = []
        for user, device, _ in req.targets:
            dev = self._dev(conn, user, device)
            if dev is None:
                return None
            devs.append(dev)
        return devs

    def _stored_or(
        self, conn: sqlite3.Connection, sender: int, req: SendRequest, error: RemoteError
    ) -> tuple[SendOutcome | None, BaseException | None]:
        """A retry's original outcome (duplicate), else ``error``."""
        stored = self._stored_send(conn, sender, req)
        return (stored, None) if stored is not None else (None, error)

    def _last_conv_seq(self, conn: sqlite3.Connection, conv: str) -> int:
        """The conversation's last serverSeq: the cached one, else the stored one (0: new)."""
        seq = self._conv_seq.get(conv)
        if seq is None:
            r = conn.execute(
                "SELECT last_seq FROM conversations WHERE conversation_id=?", (conv,)
            ).fetchone()
            seq = 0 if r is None else int(r[0])
        return seq

    @staticmethod
    def _stored_send(conn: sqlite3.Connection, sender: int, req: SendRequest) -> SendOutcome | None:
        row = conn.execute(
            "SELECT conversation_id, message_id, server_seq, received_at FROM sends "
            "WHERE sender_dev=? AND idem_key=?",
            (sender, req.idempotency_key),
        ).fetchone()
        if row is None:
            return None
        return req.retried(row[0], row[1], int(row[2]), int(row[3]))

    def _w_append(self, conn: sqlite3.Connection, req: SendRequest) -> SendOutcome:
        sender = self._dev(conn, req.sender_user, req.sender_device)
        if sender is None:
            raise UnknownAccount("sender device is not registered")
        stored = self._stored_send(conn, sender, req)
        if stored is not None:
            return stored
        devs: list[int] = []
        for user, device, _ in req.targets:
            dev = self._dev(conn, user, device)
            if dev is None:
                raise UnknownAccount("target device is not registered")
            devs.append(dev)
        conv = req.conversation_id
        seq = self._last_conv_seq(conn, conv) + 1
        # Monotonic in rowid order, which expiry relies on.
        received = max(now_ms(), self._last_received)
        head, tail = req.envelope_parts()
        envs = [envelope_text(req, head, tail, ct, seq, received) for _, _, ct in req.targets]
        full = self._charge(conn, req, devs, envs)
        if full is not None:
            raise full
        # Writes start here; nothing below raises a domain error.
        self._last_received = received
        self._conv_seq[conv] = seq
        self._dirty_convs.add(conv)
        conn.execute(
            "INSERT INTO sends(sender_dev, idem_key, conversation_id, message_id, server_seq, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?)",
            (sender, req.idempotency_key, conv, req.message_id, seq, received),
        )
        rows: list[InboxRow] = []
        frames: list[StoredFrame] = []
        inbox_seq = self._inbox_seq
        dirty = self._dirty_devs
        for (user, device, _), dev, env in zip(req.targets, devs, envs, strict=True):
            g = inbox_seq[dev] + 1
            inbox_seq[dev] = g
            dirty.add(dev)
            rows.append((dev, g, received, env, sender, req.expires_at_ms or None))
            frames.append(StoredFrame(user, device, g, env))
        self._note_written(conn, req.sender_user, req.recipient_user)
        insert_inbox(conn, rows)
        return req.stored(seq, received, tuple(frames))

    async def ack_read(self, user_id: str, device_id: str, up_to_seq: int) -> int:
        return await self._write(self._w_ack_read, user_id, device_id, up_to_seq)

    def _w_ack_read(self, conn: sqlite3.Connection, user: str, device: str, up_to: int) -> int:
        dev = self._dev(conn, user, device)
        if dev is None:
            return 0
        self._release(conn, "dev=? AND seq<=?", (dev, up_to))
        return conn.execute("DELETE FROM inbox WHERE dev=? AND seq<=?", (dev, up_to)).rowcount

    async def expire(self, before_ms: int) -> int:
        return await self._write(self._w_expire, before_ms)

    async def drop_expired(self, now_ms: int) -> int:
        return await self._write(self._w_drop_expired, now_ms)

    def _w_drop_expired(self, conn: sqlite3.Connection, now: int) -> int:
        self._release(conn, "expires_at <= ?", (now,))
        deleted = conn.execute("DELETE FROM inbox WHERE expires_at <= ?", (now,)).rowcount
        return deleted + conn.execute(
            "DELETE FROM room_messages WHERE expires_at <= ?", (now,)
        ).rowcount

    def _w_expire(self, conn: sqlite3.Connection, before: int) -> int:
        deleted = 0
        for table in ("inbox", "sends", "room_messages"):
            # received_at grows with rowid, so the expired rows are a rowid prefix:
            # find the first live row and delete everything before it.
            row = conn.execute(
                f"SELECT id FROM {table} WHERE received_at >= ? ORDER BY id LIMIT 1",  # noqa: S608
                (before,),
            ).fetchone()
            if table == "inbox":  # expired frames no longer wait: stop counting them
                if row is None:
                    self._release(conn, "1", ())
                else:
                    self._release(conn, "id < ?", (int(row[0]),))
            if row is None:
                n = conn.execute(f"DELETE FROM {table}").rowcount  # noqa: S608
            else:
                n = conn.execute(
                    f"DELETE FROM {table} WHERE id < ?",  # noqa: S608
                    (int(row[0]),),
                ).rowcount
            if table == "inbox":
                deleted = n
        return deleted

    # --- operations written once (storage/shared.py) ------------------------------------

    async def _write_op(
        self, op: Op[T], *args: Any, after: Callable[[T], Any] | None = None,
        atomic: bool = True,
    ) -> T:
        # Every write job runs inside the writer's batch transaction: ``atomic`` is moot.
        return await self._write(self._w_op, op, args, after)

    def _w_op(
        self, conn: sqlite3.Connection, op: Op[T], args: tuple[Any, ...],
        after: Callable[[T], Any] | None,
    ) -> T:
        # A fresh generator per run: a failed batch runs its jobs again one by one.
        result = engine_sqlite.run(op(*args), conn, self)
        if after is not None:
            after(result)
        return result

    async def _read_op(self, op: Op[T], *args: Any) -> T:
        return await self._read(_r_op, op, args)

    def _forget_inboxes(self, devs: Sequence[int], *, correspondents: bool) -> None:
        for dev in devs:  # (their inbox_usage rows were deleted with their inbox rows)
            self._usage.pop(dev, None)
            self._dirty_usage.discard(dev)
        if correspondents:
            self._wrote.clear()

    # --- reads (reader pool) ------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
        return conn

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()

        def run() -> T:
            try:
                return fn(self._reader(), *args)
            except sqlite3.Error as exc:
                self._log.error("storage.read_failed", error=type(exc).__name__)
                raise StorageError() from None

        return await loop.run_in_executor(self._readers, run)


def _with_expiry(params: list[Any], expiring: list[tuple[int, int]]) -> list[Any]:
    """Inbox rows of 4 values (dev, seq, envelope, sender) as rows of 5, with expires_at
    (None but for the rows in ``expiring``)."""
    expires: list[int | None] = [None] * (len(params) // 4)
    for row, at in expiring:
        expires[row] = at
    out: list[Any] = []
    for row, expires_at in enumerate(expires):
        out += params[4 * row:4 * row + 4]
        out.append(expires_at)
    return out


def _resolve(results: list[tuple[Done, Any, BaseException | None]]) -> None:
    for done, result, error in results:
        done(result, error)


def _r_op(conn: sqlite3.Connection, op: Op[T], args: tuple[Any, ...]) -> T:
    return engine_sqlite.run(op(*args), conn)
