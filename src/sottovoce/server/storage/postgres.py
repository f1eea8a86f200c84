"""PostgreSQL storage (asyncpg): group commit, safe under several server processes
(docs/operations.md).

::

    event loop (any node)                 PostgreSQL
    ─────────────────────                 ──────────
    append(req, cb) ──► pending list
    writer task takes ≤ max_batch ──►     [careful path only: SELECT sends — retries]
                                          SELECT sv_append_batch(…arrays…)   one round trip:
                                            INSERT conversations … ON CONFLICT DO UPDATE
                                                RETURNING last_seq     (row locks, sorted)
                                            UPDATE devices SET last_inbox_seq …
                                                RETURNING              (row locks, sorted)
                                            INSERT sends  … ON CONFLICT DO NOTHING
                                            INSERT inbox  … (envelope = pre || seq || post)
    cb(outcome) for the whole batch ◄──   COMMIT (the statement's own transaction: durable)

Counters live only in the database. Each batch takes the row locks of the
conversation counters it advances, then those of the recipient devices, both
in sorted order (so two nodes never deadlock), and holds them until COMMIT:
a second node's batch for the same conversation or device waits, then reads
the committed value. serverSeq is therefore strictly increasing per
conversation, and a device's globalInboxSeq values commit in order, so a
replay ``after_seq`` can never skip a row that commits later.

Idempotency: the fast path assumes no key of the batch is stored yet. If one
is (a client retry, or the same key racing on another node), ``INSERT …
ON CONFLICT DO NOTHING`` on sends inserts fewer rows than planned; the batch
is rolled back and redone on the careful path, which first SELECTs the keys
and answers the stored ones with their original outcome (duplicate=True).
ON CONFLICT waits for a conflicting in-flight transaction, so by then the
other node's row is committed and visible.

Failures: a lost connection or a serialization/deadlock error fails the batch
with :class:`StorageError` (``unavailable``, retryable); the transaction
either committed or not, and a client retry with the same idempotency key
returns the original ack if it had. Other writes (accounts, prekeys, acks,
expiry) are short transactions on a connection pool.

Schema versions: :data:`MIGRATIONS`, applied in one transaction at start-up
under an advisory lock (several nodes may start at once); a database newer
than this code is refused (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from msgspec.structs import replace

from sottovoce.errors import RemoteError, UsageError
from sottovoce.server.errors import StorageError
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage import engine_postgres
from sottovoce.server.storage.base import (
    AppendCallback,
    SendOutcome,
    SendRequest,
    StoredFrame,
    UnknownAccount,
)
from sottovoce.server.storage.postgres_rooms import PostgresRooms
from sottovoce.server.storage.quota import InboxFull, InboxLimits, Usage, refusal
from sottovoce.server.storage.schema import POSTGRES_MIGRATIONS
from sottovoce.server.storage.shared import BatchStats, Op, SharedStorage

T = TypeVar("T")

#: SQLSTATE raised by sv_append_batch when a key of the batch is already stored
#: (written out in the function's text in storage/schema.py as well).
IDEMPOTENCY_SQLSTATE = "SV001"

#: Each entry upgrades the schema by one version (storage/schema.py); applied in order at start-up.
MIGRATIONS: tuple[str, ...] = POSTGRES_MIGRATIONS
SCHEMA_VERSION = len(MIGRATIONS)
#: A recipient device's cached inbox usage is read again after this long (other nodes
#: store and delete frames too): quotas hold within what a second of sends can add.
USAGE_FRESH_S = 1.0
#: Correspondents known NOT to exist are asked again after this long.
STRANGER_FRESH_S = 1.0

#: Connections in the pool used by reads and the short writes (the writer has its own).
POOL_SIZE = 8
#: Longest wait for a row lock held by another transaction (e.g. a hung node) before
#: the send fails as unavailable (retryable) instead of stalling.
LOCK_TIMEOUT_MS = 10_000
#: A session idle inside a transaction this long is ended by PostgreSQL, releasing its locks.
IDLE_IN_TRANSACTION_MS = 30_000
#: How long to wait for PostgreSQL when (re)connecting before a write fails as unavailable.
CONNECT_TIMEOUT_S = 5.0
#: Attempts of one batch: the fast path, then the careful path (again if it loses a race).
RACE_RETRIES = 4

# Errors meaning "the database is not reachable / the transaction could not
# commit now": the client is told to retry (StorageError), nothing was stored.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.LockNotAvailableError,
)
_DB_ERRORS: tuple[type[BaseException], ...] = (*_TRANSIENT, asyncpg.exceptions.PostgresError)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def redact_dsn(dsn: str) -> str:
    """The DSN without its password (for logs and the start-up banner)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, ""))


async def migrate(conn: Any, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Bring the schema (in the connection's current schema) to ``len(migrations)``.

    One transaction under a transaction-scoped advisory lock keyed on the schema
    name: nodes starting together queue up, the first applies the migrations and
    the others find the schema current. Returns the version found before.
    """
    target = len(migrations)
    async with conn.transaction():
        # Waiting for another node's migration may take longer than a row lock.
        await conn.execute("SET LOCAL lock_timeout = 0")
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('sottovoce.migrate:' || current_schema()))"
        )
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version(version integer NOT NULL)")
        found_row = await conn.fetchval("SELECT max(version) FROM schema_version")
        found = 0 if found_row is None else int(found_row)
        if found > target:
            raise UsageError(
                f"database schema v{found} is newer than this server (v{target}); "
                "upgrade the server, or restore the backup taken before the upgrade"
            )
        for version in range(found, target):
            # One script per version (simple-query protocol runs several statements).
            await conn.execute(migrations[version])
        if found != target:
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version(version) VALUES ($1)", target)
        return found


def _release_sql(where: str) -> str:
    """Delete the inbox rows matching ``where`` and stop counting them in the quotas
    (rows of unknown senders counted nowhere); returns how many were deleted."""
    return (
        "WITH gone AS (DELETE FROM inbox WHERE " + where + " "  # noqa: S608 -- constants
        "RETURNING dev, sender, octet_length(envelope) AS size), "
        "agg AS (SELECT gone.dev, coalesce(d.user_id, '') AS sender, count(*) AS m, "
        "sum(gone.size) AS b FROM gone LEFT JOIN devices d ON d.dev = gone.sender "
        "GROUP BY 1, 2), "
        "upd AS (UPDATE inbox_usage q SET messages = greatest(q.messages - agg.m, 0), "
        "bytes = greatest(q.bytes - agg.b, 0) FROM agg "
        "WHERE q.dev = agg.dev AND q.sender = agg.sender) "
        "SELECT coalesce(sum(m), 0) FROM agg"
    )


def _sweep_sql(where: str) -> tuple[str, str]:
    """A sweep of the inbox rows matching ``where`` (one parameter, ``$1``): first lock
    the counter rows of the devices it touches, in the order send batches take them (so
    the two never lock those rows in opposite orders, as in ack_read), then release."""
    return (
        "SELECT 1 FROM devices WHERE dev IN (SELECT DISTINCT dev FROM inbox "  # noqa: S608
        "WHERE " + where + ") ORDER BY dev FOR UPDATE",
        _release_sql(where),
    )


async def _sweep(conn: Any, sql: tuple[str, str], ms: int) -> int:
    """Run a :func:`_sweep_sql` on ``conn`` (in its transaction); returns the rows deleted."""
    lock, release = sql
    await conn.execute(lock, ms)
    return int(await conn.fetchval(release, ms))


_ACK_RELEASE = _release_sql("dev=$1 AND seq<=$2")
_EXPIRE_SWEEP = _sweep_sql("received_at < $1")
_DROP_EXPIRED_SWEEP = _sweep_sql("expires_at <= $1")

#: Bytes of an envelope after its serverSeq but for the idempotency key (received-at
#: time, names, punctuation), plus ten digits of the serverSeq itself.
_POST_FIXED = len(',"serverReceivedAtMs":' + "0" * 13 + ',"idempotencyKey":"'
                  + '","ephemeral":false}') + 10

class _IdempotencyRace(Exception):
    """A key of this batch is already stored (a retry, or another node won a race).

    The transaction is rolled back and the batch run again on the careful path,
    which looks the keys up first.
    """


_Pending = tuple[SendRequest, AppendCallback]


async def _close_gracefully(closable: Any) -> None:
    """Close a connection or pool, waiting at most 5 s; if that fails, tear it down."""
    try:
        await asyncio.wait_for(closable.close(), timeout=5)
    except _TRANSIENT:
        closable.terminate()


class PostgresStorage(SharedStorage, PostgresRooms):
    def __init__(
        self,
        dsn: str,
        *,
        logger: JsonLogger,
        commit_window_ms: float = 0.0,
        max_batch: int = 2048,
        pool_size: int = POOL_SIZE,
        migrations: Sequence[str] = MIGRATIONS,
        limits: InboxLimits | None = None,
    ) -> None:
        self.dsn = dsn
        self.limits = limits or InboxLimits()
        self._log = logger
        self._window = commit_window_ms / 1000
        self._max_batch = max_batch
        self._pool_size = pool_size
        self._migrations = tuple(migrations)
        self._pool: Any = None
        self._writer_conn: Any = None
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._last_received = 0
        #: (user, device) -> dev id. Ids never change and device rows are never
        #: deleted (revocation is a flag), so the cache is safe across nodes.
        self._devs: dict[tuple[str, str], int] = {}
        #: Inbox quotas: per recipient device its usage and when it was read; per
        #: (account, peer) whether the account has written to the peer and when that
        #: was read (True is final, False is asked again after STRANGER_FRESH_S).
        self._usage: dict[int, tuple[Usage, float]] = {}
        self._wrote: dict[tuple[str, str], tuple[bool, float]] = {}
        self.stats = BatchStats()
        self._init_rooms()

    # --- life cycle ----------------------------------------------------------------

    @staticmethod
    async def _init_conn(conn: Any) -> None:
        # Short OLTP statements: JIT compilation would only add latency. A node that
        # hangs inside a transaction must not stall every other node's writer behind
        # its row locks: waits end with a retryable error, stuck sessions are ended.
        await conn.execute(
            "SET jit = off; "
            f"SET lock_timeout = {LOCK_TIMEOUT_MS}; "
            f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}"
        )

    async def _connect(self) -> Any:
        conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S)
        await self._init_conn(conn)
        return conn

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self._pool_size, init=self._init_conn,
                timeout=CONNECT_TIMEOUT_S,
            )
            async with self._pool.acquire() as conn:
                found = await migrate(conn, self._migrations)
            self._writer_conn = await self._connect()
        except _TRANSIENT as exc:
            await self._close_connections()
            raise UsageError(
                f"cannot connect to PostgreSQL at {redact_dsn(self.dsn)}: {type(exc).__name__}"
            ) from None
        except asyncpg.exceptions.PostgresError as exc:
            await self._close_connections()
            raise UsageError(
                f"PostgreSQL refused the schema set-up: {type(exc).__name__}: {exc}"
            ) from None
        except BaseException:
            await self._close_connections()
            raise
        if found != len(self._migrations):
            self._log.info("storage.migrated", version=len(self._migrations), count=found)
        self._writer = asyncio.get_running_loop().create_task(self._writer_main())

    async def _close_connections(self) -> None:
        if self._writer_conn is not None:
            self._writer_conn.terminate()
            self._writer_conn = None
        if self._pool is not None:
            await _close_gracefully(self._pool)
            self._pool = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await self._writer  # drains what was queued before close
        await self._drain_rooms()
        if self._writer_conn is not None:
            await _close_gracefully(self._writer_conn)
            self._writer_conn = None
        await self._close_connections()

    # --- the writer ----------------------------------------------------------------

    def append(self, req: SendRequest, callback: AppendCallback) -> None:
        if self._closed:
            callback(None, StorageError("server is shutting down"))
            return
        self._pending.append((req, callback))
        self._wake.set()

    async def _writer_main(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._window and not self._closed:
                await asyncio.sleep(self._window)
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                t0 = time.perf_counter()
                results = await self._run_batch(batch)
                elapsed = time.perf_counter() - t0
                try:  # a metrics or callback bug must not stop the writer
                    self.stats.record(len(batch), elapsed)
                except Exception as exc:
                    self._log.error("storage.observer_failed", error=type(exc).__name__)
                for (_, callback), (outcome, error) in zip(batch, results, strict=True):
                    try:
                        callback(outcome, error)
                    except Exception as exc:
                        self._log.error("storage.callback_failed", error=type(exc).__name__)
            if self._closed and not self._pending:
                return

    async def _writer_connection(self) -> Any:
        conn = self._writer_conn
        if conn is None or conn.is_closed():
            self._writer_conn = None
            conn = self._writer_conn = await self._connect()
        return conn

    def _drop_writer_connection(self) -> None:
        if self._writer_conn is not None:
            self._writer_conn.terminate()
            self._writer_conn = None

    async def _run_batch(
        self, batch: list[_Pending]
    ) -> list[tuple[SendOutcome | None, BaseException | None]]:
        careful = False
        for _ in range(RACE_RETRIES):
            try:
                conn = await self._writer_connection()
                return await self._append_batch(conn, [req for req, _ in batch], careful)
            except _IdempotencyRace:
                careful = True
                continue
            except _TRANSIENT as exc:
                # The connection may be gone or mid-transaction: start afresh next time.
                self._drop_writer_connection()
                self._log.warning("storage.unavailable", error=type(exc).__name__,
                                  batch=len(batch))
                return [(None, StorageError())] * len(batch)
            except Exception as exc:
                if len(batch) == 1:
                    self._log.error("storage.failed", error=type(exc).__name__)
                    return [(None, StorageError())]
                # Retry one by one so that a single bad send fails alone.
                out: list[tuple[SendOutcome | None, BaseException | None]] = []
                for item in batch:
                    out.extend(await self._run_batch([item]))
                return out
        self._log.warning("storage.idempotency_race", batch=len(batch))
        return [(None, StorageError())] * len(batch)

    async def _resolve_devs(self, conn: Any, keys: set[tuple[str, str]]) -> None:
        missing = [k for k in keys if k not in self._devs]
        if not missing:
            return
        rows = await conn.fetch(
            "SELECT d.user_id, d.device_id, d.dev FROM devices d "
            "JOIN unnest($1::text[], $2::text[]) AS u(user_id, device_id) "
            "ON d.user_id = u.user_id AND d.device_id = u.device_id",
            [u for u, _ in missing], [d for _, d in missing],
        )
        for user, device, dev in rows:
            self._devs[(user, device)] = int(dev)

    async def _append_batch(
        self, conn: Any, reqs: list[SendRequest], careful: bool
    ) -> list[tuple[SendOutcome | None, BaseException | None]]:
        """Store a batch in one transaction.

        Fast path (``careful`` false): assume no key is stored yet, which holds
        unless a client retried; the sends INSERT tells if that was wrong, and the
        batch is redone carefully, looking every key up first.
        """
        devs = self._devs
        keys: set[tuple[str, str]] = set()
        for req in reqs:
            keys.add((req.sender_user, req.sender_device))
            keys.update((u, d) for u, d, _ in req.targets)
        await self._resolve_devs(conn, keys)

        results: list[tuple[SendOutcome | None, BaseException | None] | None] = [None] * len(reqs)
        # Sends that pass the device check, by index.
        valid: list[int] = []
        sender_of: dict[int, int] = {}
        for i, req in enumerate(reqs):
            sender = devs.get((req.sender_user, req.sender_device))
            if sender is None or any((u, d) not in devs for u, d, _ in req.targets):
                results[i] = (None, UnknownAccount("device is not registered"))
                continue
            sender_of[i] = sender
            valid.append(i)

        stored: dict[tuple[int, str], tuple[str, str, int, int]] = {}
        if valid and careful:
            for d, k, conv, mid, seq, rec in await conn.fetch(
                "SELECT s.sender_dev, s.idem_key, s.conversation_id, s.message_id, "
                "s.server_seq, s.received_at FROM sends s "
                "JOIN unnest($1::bigint[], $2::text[]) AS u(d, k) "
                "ON s.sender_dev = u.d AND s.idem_key = u.k",
                [sender_of[i] for i in valid], [reqs[i].idempotency_key for i in valid],
            ):
                stored[(int(d), k)] = (conv, mid, int(seq), int(rec))
        # Inbox quotas (storage/quota.py): each target device's usage and whether each
        # recipient has written to its sender, unless read just before.
        now = time.monotonic()
        usage = await self._load_usage(
            conn, {devs[(u, d)] for i in valid for u, d, _ in reqs[i].targets}, now)
        await self._load_wrote(conn, {(reqs[i].recipient_user, reqs[i].sender_user)
                                      for i in valid}, now)
        touched: set[int] = set()
        # First occurrence of each (sender, key) not yet stored is new; the rest
        # are retries answered with the stored (or this batch's) outcome.
        fresh: list[int] = []
        first_in_batch: dict[tuple[int, str], int] = {}
        dup_of: dict[int, int] = {}
        conv_count: dict[str, int] = {}
        dev_count: dict[int, int] = {}
        for i in valid:
            req = reqs[i]
            key = (sender_of[i], req.idempotency_key)
            hit = stored.get(key)
            if hit is not None:
                conv, mid, seq, rec = hit
                results[i] = (req.retried(conv, mid, seq, rec), None)
                continue
            j = first_in_batch.get(key)
            if j is not None:
                dup_of[i] = j
                continue
            full = self._quota_refusal(req, usage, touched)
            if full is not None:
                # A retry of a stored send gets its ack (the careful path looked it up).
                dup = None if careful else await self._stored_send(conn, sender_of[i], req)
                results[i] = (dup, None) if dup is not None else (None, full)
                continue
            first_in_batch[key] = i
            fresh.append(i)
            conv_count[req.conversation_id] = conv_count.get(req.conversation_id, 0) + 1
            for u, d, _ in req.targets:
                dev = devs[(u, d)]
                dev_count[dev] = dev_count.get(dev, 0) + 1

        if fresh:
            try:
                await self._store_fresh(conn, reqs, fresh, sender_of, conv_count, dev_count,
                                        results)
            except BaseException:
                for dev in touched:  # the usage this batch added did not happen
                    self._usage.pop(dev, None)
                raise
            for i in fresh:
                self._wrote[(reqs[i].sender_user, reqs[i].recipient_user)] = (True, now)
        # Committed: in-batch retries take their first's outcome.
        for i, j in dup_of.items():
            first = results[j]
            if first is not None and first[0] is not None:
                results[i] = (replace(first[0], idempotency_key=reqs[i].idempotency_key,
                                      duplicate=True, frames=()), None)
        return [r if r is not None else (None, StorageError()) for r in results]

    async def _load_usage(self, conn: Any, devs: set[int], now: float) -> dict[int, Usage]:
        """The usage of ``devs``, read again where the cached one is not fresh."""
        cache = self._usage
        out = {d: cache[d][0] for d in devs if d in cache and now - cache[d][1] <= USAGE_FRESH_S}
        stale = [d for d in devs if d not in out]
        if stale:
            loaded = {d: Usage() for d in stale}
            for dev, sender, messages, size in await conn.fetch(
                "SELECT dev, sender, messages, bytes FROM inbox_usage "
                "WHERE dev = ANY($1::bigint[])", stale,
            ):
                loaded[int(dev)].add(sender, int(messages), int(size))
            for dev, usage in loaded.items():
                cache[dev] = (usage, now)
            out.update(loaded)
        return out

    async def _load_wrote(self, conn: Any, pairs: set[tuple[str, str]], now: float) -> None:
        cache = self._wrote
        ask = []
        for pair in pairs:
            hit = cache.get(pair)
            if pair[0] != pair[1] and (
                hit is None or (not hit[0] and now - hit[1] > STRANGER_FRESH_S)
            ):
                ask.append(pair)
        if not ask:
            return
        found = {
            (str(a), str(b)) for a, b in await conn.fetch(
                "SELECT c.user_id, c.peer FROM correspondents c "
                "JOIN unnest($1::text[], $2::text[]) AS u(a, b) "
                "ON c.user_id = u.a AND c.peer = u.b",
                [a for a, _ in ask], [b for _, b in ask],
            )
        }
        if len(cache) > 100_000:
            cache.clear()
        for pair in ask:
            cache[pair] = (pair in found, now)

    def _quota_refusal(
        self, req: SendRequest, usage: dict[int, Usage], touched: set[int]
    ) -> InboxFull | None:
        """Check the send against the cached usage; if it passes, count it there (the
        next sends of the batch see it; the database counts exact bytes itself)."""
        devs = self._devs
        known = self._wrote.get((req.recipient_user, req.sender_user), (False, 0.0))[0]
        head, tail = req.envelope_parts()
        # The envelope's tail after the serverSeq (see _store_fresh), estimated.
        base = len(head) + len(tail) + len(req.idempotency_key) + _POST_FIXED
        usages = [usage[devs[(u, d)]] for u, d, _ in req.targets]
        for (user, device, ct), used in zip(req.targets, usages, strict=True):
            scope = refusal(self.limits, used, sender=req.sender_user,
                            own=user == req.sender_user, size=base + len(ct),
                            known=lambda: known)
            if scope is not None:
                return InboxFull(scope, user, device)
        for (user, device, ct), used in zip(req.targets, usages, strict=True):
            used.add(req.sender_user, 1, base + len(ct))
            touched.add(devs[(user, device)])
        return None

    @staticmethod
    async def _stored_send(conn: Any, sender: int, req: SendRequest) -> SendOutcome | None:
        row = await conn.fetchrow(
            "SELECT conversation_id, message_id, server_seq, received_at FROM sends "
            "WHERE sender_dev=$1 AND idem_key=$2", sender, req.idempotency_key,
        )
        if row is None:
            return None
        return req.retried(row[0], row[1], int(row[2]), int(row[3]))

    async def _store_fresh(
        self,
        conn: Any,
        reqs: list[SendRequest],
        fresh: list[int],
        sender_of: dict[int, int],
        conv_count: dict[str, int],
        dev_count: dict[int, int],
        results: list[tuple[SendOutcome | None, BaseException | None] | None],
    ) -> None:
        """Store the new sends with ONE call of ``sv_append_batch`` (one round trip).

        The function takes the counter row locks (conversations, then devices, each
        in the sorted order given here), inserts the sends and inbox rows with the
        sequences it assigned, and returns each counter's new last value; the
        sequences follow from those the same way on both sides. Each inbox envelope
        is ``pre || serverSeq || post``: only the sequence is filled in by SQL.
        """
        devs = self._devs
        received = max(now_ms(), self._last_received)
        self._last_received = received
        convs = sorted(conv_count)
        conv_ix = {c: n for n, c in enumerate(convs)}
        dev_ids = sorted(dev_count)
        dev_ix = {d: n for n, d in enumerate(dev_ids)}
        conv_rank: dict[str, int] = {}
        dev_rank: dict[int, int] = {}
        # Per send: (sender dev, key, conv, message id, conv index, rank in conv).
        sends: list[tuple[int, str, str, str, int, int]] = []
        i_dev: list[int] = []
        i_di: list[int] = []
        i_rank: list[int] = []
        i_ci: list[int] = []
        i_srank: list[int] = []
        i_pre: list[str] = []
        i_post: list[str] = []
        i_sender: list[int] = []
        i_expires: list[int] = []
        # Per fresh send: its conv index, rank, and (user, device, dev index, rank, pre, post).
        plan: list[tuple[int, int, list[tuple[str, str, int, int, str, str]]]] = []
        rec = str(received)
        for i in fresh:
            req = reqs[i]
            conv = req.conversation_id
            ci = conv_ix[conv]
            sr = conv_rank.get(conv, 0)
            conv_rank[conv] = sr + 1
            sends.append((sender_of[i], req.idempotency_key, conv, req.message_id, ci, sr))
            head, tail = req.envelope_parts()
            # The same text as base.envelope_text, split around the serverSeq.
            post = (',"serverReceivedAtMs":' + rec + ',"idempotencyKey":"'
                    + req.idempotency_key
                    + ('","ephemeral":true}' if req.ephemeral else '","ephemeral":false}'))
            targets: list[tuple[str, str, int, int, str, str]] = []
            for user, device, ct in req.targets:
                dev = devs[(user, device)]
                di = dev_ix[dev]
                r = dev_rank.get(dev, 0)
                dev_rank[dev] = r + 1
                pre = head + ct + tail
                i_dev.append(dev)
                i_di.append(di + 1)
                i_rank.append(r)
                i_ci.append(ci + 1)
                i_srank.append(sr)
                i_pre.append(pre)
                i_post.append(post)
                i_sender.append(sender_of[i])
                i_expires.append(req.expires_at_ms)
                targets.append((user, device, di, r, pre, post))
            plan.append((ci, sr, targets))
        # Sorted by key so that two nodes inserting overlapping keys wait on each
        # other in one order (ON CONFLICT waits for in-flight inserts).
        sends.sort(key=lambda t: (t[0], t[1]))
        # Who has written to whom: only pairs not known here yet (the cache is final).
        wrote = sorted({
            (reqs[i].sender_user, reqs[i].recipient_user) for i in fresh
            if not self._wrote.get((reqs[i].sender_user, reqs[i].recipient_user), (False,))[0]
        })
        try:
            row = await conn.fetchrow(
                "SELECT conv_last, dev_last FROM sv_append_batch("
                "$1::text[], $2::bigint[], $3::bigint[], $4::bigint[], "
                "$5::bigint[], $6::text[], $7::text[], $8::text[], $9::int[], $10::bigint[], "
                "$11::bigint[], $12::int[], $13::bigint[], $14::int[], $15::bigint[], "
                "$16::text[], $17::text[], $18::bigint, $19::bigint[], $20::text[], $21::text[], "
                "$22::bigint[])",
                convs, [conv_count[c] for c in convs],
                dev_ids, [dev_count[d] for d in dev_ids],
                [t[0] for t in sends], [t[1] for t in sends], [t[2] for t in sends],
                [t[3] for t in sends], [t[4] + 1 for t in sends], [t[5] for t in sends],
                i_dev, i_di, i_rank, i_ci, i_srank, i_pre, i_post, received, i_sender,
                [u for u, _ in wrote], [p for _, p in wrote], i_expires,
            )
        except asyncpg.exceptions.PostgresError as exc:
            if getattr(exc, "sqlstate", None) == IDEMPOTENCY_SQLSTATE:
                raise _IdempotencyRace() from None  # nothing was written
            raise
        conv_first = [int(last) - conv_count[c] + 1 for c, last in zip(convs, row[0],
                                                                        strict=True)]
        dev_first = [int(last) - dev_count[d] + 1
                     for d, last in zip(dev_ids, row[1] or (), strict=True)]
        for i, (ci, sr, targets) in zip(fresh, plan, strict=True):
            req = reqs[i]
            seq = conv_first[ci] + sr
            seq_text = str(seq)
            frames = tuple(
                StoredFrame(user, device, dev_first[di] + r, pre + seq_text + post)
                for user, device, di, r, pre, post in targets
            )
            results[i] = (req.stored(seq, received, frames), None)

    # --- short writes and reads (pool) -----------------------------------------------

    async def _with(self, fn: Callable[[Any], Awaitable[T]], *, write: bool = True) -> T:
        """Run ``fn(conn)`` on a pooled connection, in a transaction if ``write``."""
        if self._pool is None:  # (room jobs queued before close() still run: it drains them)
            raise StorageError("server is shutting down")
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                if not write:
                    return await fn(conn)
                async with conn.transaction():
                    return await fn(conn)
        except RemoteError:
            raise  # domain refusals (UsernameTaken, …) and StorageError
        except _DB_ERRORS as exc:
            self._log.error("storage.failed", error=type(exc).__name__)
            raise StorageError() from None

    async def _dev(self, conn: Any, user: str, device: str) -> int | None:
        dev = self._devs.get((user, device))
        if dev is None:
            row = await conn.fetchval(
                "SELECT dev FROM devices WHERE user_id=$1 AND device_id=$2", user, device
            )
            if row is None:
                return None
            dev = self._devs[(user, device)] = int(row)
        return dev

    async def _write_op(
        self, op: Op[T], *args: Any, after: Callable[[T], Any] | None = None,
        atomic: bool = True,
    ) -> T:
        async def run(conn: Any) -> T:
            result = await engine_postgres.run(op(*args), conn, self)
            if after is not None:
                after(result)
            return result

        # One statement needs no transaction of its own (two round trips fewer).
        return await self._with(run, write=atomic)

    async def _read_op(self, op: Op[T], *args: Any) -> T:
        async def run(conn: Any) -> T:
            return await engine_postgres.run(op(*args), conn, self)

        return await self._with(run, write=False)

    def _forget_inboxes(self, devs: Sequence[int], *, correspondents: bool) -> None:
        for dev in devs:
            self._usage.pop(dev, None)
        if correspondents:
            self._wrote.clear()

    async def ack_read(self, user_id: str, device_id: str, up_to_seq: int) -> int:
        async def run(conn: Any) -> int:
            dev = await self._dev(conn, user_id, device_id)
            if dev is None:
                return 0
            # The device's counter row first, as a send batch takes it before its usage
            # rows: the two never lock those rows in opposite orders.
            await conn.execute("SELECT 1 FROM devices WHERE dev=$1 FOR UPDATE", dev)
            deleted = int(await conn.fetchval(_ACK_RELEASE, dev, up_to_seq))
            self._usage.pop(dev, None)
            return deleted

        return await self._with(run)

    async def drop_expired(self, now_ms: int) -> int:
        async def run(conn: Any) -> int:
            deleted = await _sweep(conn, _DROP_EXPIRED_SWEEP, now_ms)
            if deleted:
                self._usage.clear()
            rooms = await conn.execute("DELETE FROM room_messages WHERE expires_at <= $1", now_ms)
            return deleted + int(rooms.split()[-1])

        return await self._with(run)

    async def expire(self, before_ms: int) -> int:
        async def run(conn: Any) -> int:
            deleted = await _sweep(conn, _EXPIRE_SWEEP, before_ms)
            await conn.execute("DELETE FROM sends WHERE received_at < $1", before_ms)
            await conn.execute("DELETE FROM room_messages WHERE received_at < $1", before_ms)
            self._usage.clear()
            return deleted

        return await self._with(run)
