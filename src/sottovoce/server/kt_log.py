"""The server's key-transparency log: checkpoints, witnesses, and the KT requests.

    directory change ──► storage (a queued row, in the change's own transaction)
                     ──► sync(): fold the queue into the log and map (a batch, one
                         leaf per change), sign a checkpoint of the new size, push it to every
                         witness (add-checkpoint), store it with their cosignatures;
                         that checkpoint is now the one every answer is built on
    sottovoce.kt.head / lookup / history ──► the served checkpoint, proofs built from
                         the tables as of its size (storage/kt.py); the log's part
                         once per checkpoint, the rows of the lookups waiting at once
                         in one reader round trip
    GET /kt/keys, /kt/checkpoint, /kt/consistency, /kt/leaves ──► witnesses, auditors

Checkpoints are signed per batch, not per leaf and not on a timer: a round covers
every leaf committed before it starts, and changes that commit while a round runs
wait for the next one (one round at a time), so under load one signature and one
witness exchange cover many changes, while a lone change is answered as soon as it
is durable and cosigned. A checkpoint is stored (and served) only once its witness
round is over, so what clients get always carries the cosignatures there are. With
no change for ``cosign_interval_ms``, the same size is cosigned again so that the
newest cosignature stays recent (clients refuse stale checkpoints).

The co-located witness (on by default, ``--no-local-witness`` turns it off) runs in
this process with its own key and state file in the data directory: it lets a
client that requires one cosignature work out of the box, but proves nothing a
compromised server could not forge. Independent witnesses (``--kt-witness URL=VKEY``)
run elsewhere (``sottovoce kt witness``, docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, InitVar, dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from sottovoce.errors import UsageError
from sottovoce.identity import validate_username
from sottovoce.kt.checkpoint import Checkpoint, NoteKey, NoteSignature, NoteSigner, SignedNote
from sottovoce.kt.errors import KTError
from sottovoce.kt.merkle import consistency_nodes, consistency_proof, fold_range, root_nodes
from sottovoce.kt.prover import LogProof, log_proof
from sottovoce.kt.vrf import VRFSecretKey
from sottovoce.limits import (
    KT_HISTORY_PAGE,
    KT_LOOKUPS_BURST,
    KT_LOOKUPS_PER_MINUTE,
    KT_MAX_LOG_SIZE,
    MAX_FRAME_BYTES,
)
from sottovoce.protocol.kt import (
    KT_HEAD_RESULT,
    KT_HISTORY_RESULT,
    KT_LOOKUP_RESULT,
    KTHead,
    KTHeadResult,
    KTHistory,
    KTLookup,
    KTResponse,
)
from sottovoce.server import kt_keys
from sottovoce.server.config import ServerConfig
from sottovoce.server.errors import StorageError, WireFailure
from sottovoce.server.kt_witness import (
    Conflict,
    RemoteWitness,
    WitnessService,
    add_checkpoint_body,
    parse_cosignature,
)
from sottovoce.server.logs import JsonLogger
from sottovoce.server.ratelimit import KeyedBuckets
from sottovoce.server.session import Session
from sottovoce.server.storage import kt as kt_tables
from sottovoce.server.storage.kt import FOLD_BATCH, AppendCache, KTWriter
from sottovoce.server.storage.shared import SharedStorage

if TYPE_CHECKING:  # the HTTP client is loaded by the first request to a remote witness
    import httpx

#: Leaves per /kt/leaves request, at most.
MAX_LEAVES_PER_REQUEST = 1000
#: How long a directory change waits for the checkpoint that covers it before it is
#: answered anyway (the change is durable either way; the client's lookup then sees it
#: with the next checkpoint).
SYNC_WAIT_S = 5.0
#: A witness that has not answered in this long is skipped for this round.
WITNESS_TIMEOUT_S = 3.0
#: How long another node's newer checkpoint may go unseen by this one.
REFRESH_S = 1.0
#: Answers kept for the served checkpoint, at most (about 2 KB each), and as many
#: without their log part (about 1 KB each).
MAX_CACHED_ANSWERS = 8192
#: Log proofs kept for the served checkpoint, one per size clients come from, at most.
MAX_CACHED_SINCE = 256
#: Lookups whose rows one reader round trip reads, at most; and such round trips at once
#: (the store's reader threads).
MAX_READ_BATCH = 32
READ_TASKS = 2
#: Leaves between two served checkpoints, at most, for the second to take the upper map
#: nodes the first read (past that, reading them again costs less than the leaves).
MAX_CARRIED_LEAVES = 4096
#: Map nodes per reader round trip of the background read of the upper map
#: (:meth:`KTService._fill`): each round trip holds a reader a few milliseconds.
FILL_STEP = 1024
#: Nodes whose lookup memos one step of :meth:`KTService._build_tops` makes (a few
#: milliseconds of the event loop).
TOPS_STEP = 256
#: An encoded response must fit a frame once in base64 inside its JSON.
MAX_RESPONSE_BYTES = MAX_FRAME_BYTES * 3 // 4 - 1024


@dataclass(frozen=True, slots=True)
class Served:
    """The checkpoint every answer is built on: its size and the note with cosignatures."""

    size: int
    note: bytes


@dataclass(eq=False, repr=False)
class KTService:
    storage: SharedStorage
    _: KW_ONLY
    signer: NoteSigner
    vrf: VRFSecretKey
    witnesses: tuple[RemoteWitness, ...] = ()
    local: WitnessService | None = None
    log: JsonLogger
    cosign_interval_ms: InitVar[int]
    clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
    #: Versions per history page (``sottovoce.kt.history`` with ``start``), at most.
    history_page: int = KT_HISTORY_PAGE

    def __post_init__(self, cosign_interval_ms: int) -> None:
        self._interval_s = cosign_interval_ms / 1000
        self._round_lock = asyncio.Lock()
        #: Rounds begun so far, and the number of the last one over: a change committed
        #: before round n began is folded (or left queued by a failed fold) by the time
        #: round n is over.
        self._begun = 0
        self._over = 0
        self._served: Served | None = None
        self._checked_at = 0.0
        #: The size each remote witness last cosigned, as far as this node knows.
        self._witness_size: dict[str, int] = {}
        self._buckets = KeyedBuckets(KT_LOOKUPS_PER_MINUTE / 60, KT_LOOKUPS_BURST)
        #: Checks (requester, username, proof of work, capability) before a lookup.
        self.gate: Callable[[str, str, bytes | None, bytes | None], Awaitable[None]] | None = (
            None)
        #: Answers built on the served checkpoint (the very note, cosignatures and all),
        #: by (username, since, history); the same by (username, history) without the
        #: log's part they begin with, which depends on the client's size only
        #: (``_parts``); and the upper map nodes as of its size.
        self._answers: dict[tuple[str, int, bool], bytes] = {}
        self._tails: dict[tuple[str, bool], bytes] = {}
        self._answers_for: Served | None = None
        self._parts: dict[int, LogProof] = {}
        self._map_cache = AppendCache()
        #: The last cache known to hold every map node down to its depth (:meth:`_fill`).
        self._filled: AppendCache | None = None
        #: Lookups waiting for their rows, and the task reading them.
        self._queue: list[tuple[str, bool, LogProof, int, asyncio.Future[bytes]]] = []
        self._reading: set[asyncio.Task[None]] = set()
        #: Tasks carrying the map cache over to a new checkpoint and filling it
        #: (:meth:`_prepare`).
        self._carrying: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    # --- keys ------------------------------------------------------------------------------

    @property
    def witness_keys(self) -> tuple[NoteKey, ...]:
        local = () if self.local is None else (self.local.signer.public,)
        return (*local, *(w.key for w in self.witnesses))

    def keys(self) -> dict[str, Any]:
        """What ``/kt/keys`` and ``sottovoce.kt.head`` say of the keys."""
        return {
            "log_key": self.signer.public.vkey(),
            "vrf_key": base64.b64encode(self.vrf.public).decode(),
            "witnesses": [k.vkey() for k in self.witness_keys],
            "colocated_witness": None if self.local is None else self.local.signer.public.vkey(),
        }

    # --- checkpoints ------------------------------------------------------------------------

    async def start(self) -> None:
        """Append the directory changes a stop left queued; load the served checkpoint;
        cosign the current size in the background (the witnesses may call back this
        server's HTTP endpoints, so it must be listening)."""
        await self.fold()
        await self._refresh(force=True)

    async def run(self) -> None:
        """The background task: a first round now, then one per cosign interval."""
        while True:
            try:
                await self.sync(again=True)
            except Exception as exc:
                self.log.error("kt.round_failed", error=type(exc).__name__)
            await asyncio.sleep(self._interval_s)

    async def changed(self) -> None:
        """A directory change committed: wait (bounded) for a checkpoint that covers it:
        the first round that begins from now on. Changes that wait meanwhile share it
        (they do not each run a round of their own, which finds nothing new to fold)."""
        try:
            await asyncio.wait_for(asyncio.shield(self.sync(after=self._begun)), SYNC_WAIT_S)
        except Exception as exc:  # the change is durable: answer it anyway
            self.log.warning("kt.sync_late", error=type(exc).__name__)

    async def sync(self, *, again: bool = False, after: int | None = None) -> Served | None:
        """Sign, cosign and store a checkpoint of the current size if it is newer than the
        served one (``again``: also if it is not, to refresh the cosignatures). ``after``:
        nothing to do if a round begun after that many rounds is over already."""
        async with self._round_lock:
            if after is not None and self._over > after:
                return self._served
            self._begun += 1
            number = self._begun
            await self.fold()
            # The newest stored checkpoint first, then the size: a size read before would
            # be older than a checkpoint another node stored meanwhile, and a round of it
            # would serve a smaller head than this node just took.
            await self._refresh(force=True)
            size = await self.storage.kt_size()
            served = self._served
            if served is None or size > served.size or again:
                self._served = await self._round(size)
                self._checked_at = time.monotonic()
            self._over = number  # a round that fails covers nothing: its waiters run another
            return self._served

    async def fold(self) -> int:
        """Append every queued directory change to the log (in batches of FOLD_BATCH, one
        transaction each); how many. A fold that fails is logged and leaves its changes
        queued for the next round, which still signs what was appended."""
        done = 0
        try:
            while True:
                leaves = await self.storage.kt_fold(FOLD_BATCH)
                done += len(leaves)
                if len(leaves) < FOLD_BATCH:
                    break
        except Exception as exc:
            self.log.error("kt.fold_failed", error=type(exc).__name__)
        if done:
            self.log.info("kt.folded", count=done)
        return done

    async def _round(self, size: int) -> Served:
        nodes = await self.storage.kt_log_nodes(set(root_nodes(size)))
        root = fold_range([nodes[n] for n in root_nodes(size)])
        signed = Checkpoint(origin=self.signer.public.name, size=size, root=root).sign(self.signer)
        note = signed.encode()
        lines: list[NoteSignature] = []
        if self.local is not None:
            sig = await self._ask_local(self.local, size, note)
            if sig is not None:
                lines.append(sig)
        results = await asyncio.gather(*(self._ask(w, size, note) for w in self.witnesses))
        lines.extend(s for s in results if s is not None)
        # The cosignatures first: another node serves a stored checkpoint at once.
        for sig in lines:
            ts = int.from_bytes(sig.signature[:8], "big")
            await self.storage.kt_store_cosignature(size, sig.name, ts, sig.line())
        await self.storage.kt_store_checkpoint(size, note, self.clock_ms())
        full = SignedNote(text=signed.text, signatures=(*signed.signatures, *lines)).encode()
        self.log.info("kt.checkpoint", size=size, count=len(lines))
        return Served(size=size, note=full)

    async def _proof(self, old: int, size: int) -> list[bytes]:
        if not 0 < old < size:
            return []
        wanted = consistency_nodes(old, size)
        return consistency_proof(old, size, await self.storage.kt_log_nodes(wanted))

    async def _ask_local(
        self, local: WitnessService, size: int, note: bytes
    ) -> NoteSignature | None:
        old = local.size
        if old > size:
            self.log.error("kt.witness_ahead", reason=local.signer.public.name)
            return None
        proof = await self._proof(old, size)
        try:  # in a thread: the witness fsyncs its state file
            return await asyncio.to_thread(local.add_checkpoint, old, proof, note)
        except (KTError, Conflict) as exc:
            self.log.error("kt.witness_refused", reason=local.signer.public.name,
                            error=type(exc).__name__)
            return None

    async def _ask(self, w: RemoteWitness, size: int, note: bytes) -> NoteSignature | None:
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(timeout=WITNESS_TIMEOUT_S)
        for _ in range(2):  # a 409 tells the witness's real size: one retry from it
            old = self._witness_size.get(w.url, 0)
            body = add_checkpoint_body(old, await self._proof(min(old, size), size), note)
            try:
                resp = await self._http.post(f"{w.url}/add-checkpoint", content=body)
            except httpx.HTTPError as exc:
                self.log.warning("kt.witness_unreachable", reason=w.key.name,
                                  error=type(exc).__name__)
                return None
            if resp.status_code == HTTPStatus.CONFLICT:
                text = resp.content.strip()
                if not text.isdigit() or int(text) > size:
                    break
                self._witness_size[w.url] = int(text)
                continue
            if resp.status_code != HTTPStatus.OK:
                break
            try:
                sig = parse_cosignature(resp.content, w.key, note, self.signer.public)
            except KTError:
                break
            self._witness_size[w.url] = size
            return sig
        self.log.warning("kt.witness_refused", reason=w.key.name, status=resp.status_code)
        return None

    async def _refresh(self, *, force: bool = False) -> None:
        """Take a newer checkpoint stored by another node (at most every REFRESH_S)."""
        if not force and time.monotonic() - self._checked_at < REFRESH_S:
            return
        self._checked_at = time.monotonic()
        found = await self.storage.kt_latest_checkpoint()
        if found is None:
            return
        size, note, cosigs = found
        if self._served is not None and self._served.size >= size:
            return
        self._served = Served(size=size, note=note + "".join(cosigs).encode())

    async def current(self, since: int = 0) -> Served:
        """The checkpoint to serve: the newest this node knows, read again from storage
        when a device has seen a newer one (another node signed it), so that no device
        is ever served a head older than one it holds; and while this node knows only the
        empty log, which another node may have grown since."""
        held = self._served.size if self._served is not None else 0
        await self._refresh(force=since > held or held == 0)
        if self._served is None:
            raise WireFailure("kt_unavailable", "the key-transparency log has no checkpoint yet",
                              retryable=True, retry_after_ms=1000)
        return self._served

    async def close(self) -> None:
        for task in (*self._reading, *self._carrying):
            task.cancel()
        for *_, fut in self._queue:
            fut.cancel()
        self._queue = []
        if self._http is not None:
            await self._http.aclose()

    # --- requests from devices ---------------------------------------------------------------

    def handlers(self) -> dict[type[Any], Callable[..., Any]]:
        return {KTHead: self.head, KTLookup: self.lookup, KTHistory: self.history}

    def _limit(self, session: Session) -> None:
        wait = self._buckets.take(session.key)
        if wait:
            raise WireFailure("rate_limited", "too many key-transparency requests",
                              retryable=True, retry_after_ms=wait)

    async def head(self, session: Session, ev: KTHead, data: dict[str, Any],
                   rid: str | None) -> None:
        self._limit(session)
        served = await self.current(ev.since)
        proof = await self._proof(ev.since, served.size)
        keys = self.keys()
        result = KTHeadResult(checkpoint=served.note.decode(), consistency=tuple(proof),
                              log_key=keys["log_key"], vrf_key=self.vrf.public,
                              witnesses=tuple(keys["witnesses"]))
        session.reply(KT_HEAD_RESULT, result.to_wire(), rid)

    async def _answer(self, user: str, since: int, *, history: bool) -> bytes:
        served = await self.current(since)
        if served.size == 0:
            raise WireFailure("kt_unavailable", "the key-transparency log is empty",
                              retryable=True, retry_after_ms=1000)
        # A client ahead of this checkpoint gets no proof: it sees the log shrank.
        since = since if since <= served.size else 0
        self._serve(served)
        # The caches of ``served`` (taken before any wait: another checkpoint may be
        # served meanwhile, and its answers must not be joined to this one's part).
        answers, tails, ask = self._answers, self._tails, (user, since, history)
        encoded = answers.get(ask)
        if encoded is None:
            part = self._parts.get(since)
            if part is None:
                part = await self._log_proof(served, since)
            # An answer is the log's part for the client's size, then what depends on
            # the name alone: that is kept, for this name asked from any other size.
            name = (user, history)
            tail = tails.get(name)
            if tail is not None:
                encoded = part.encoded + tail
            else:
                encoded = await self._read(user, history, part, served.size)
                if served is self._answers_for and encoded.startswith(part.encoded):
                    if len(tails) >= MAX_CACHED_ANSWERS:
                        tails.clear()
                    tails[name] = encoded[len(part.encoded):]
            if served is self._answers_for:  # not a checkpoint that was replaced meanwhile
                if len(answers) >= MAX_CACHED_ANSWERS:
                    answers.clear()
                answers[ask] = encoded
        if len(encoded) > MAX_RESPONSE_BYTES:
            raise WireFailure("kt_too_large", "this account's history does not fit one frame")
        return encoded

    def _serve(self, served: Served) -> None:
        """Answer from now on at ``served``: answers kept for the checkpoint before are
        dropped; a cache for its size is made, and prepared in the background."""
        if served is self._answers_for:
            return
        self._answers, self._answers_for, self._parts, self._tails = {}, served, {}, {}
        if self._map_cache.size != served.size:
            old, self._map_cache = self._map_cache, AppendCache(served.size)
            carried = 0 <= old.size < served.size <= old.size + MAX_CARRIED_LEAVES
            self._carrying = {t for t in self._carrying if not t.done()}
            self._carrying.add(asyncio.create_task(
                self._prepare(old if carried else None, self._map_cache)))

    async def _prepare(self, old: AppendCache | None, new: AppendCache) -> None:
        """Make ``new``, the served checkpoint's cache, hold the map's upper depths:
        what ``old`` knows that is still true, then the rest read in the background --
        if ``old`` held them all, only the nodes on the changed keys' paths and beside
        them (those the carry left out); else all that is missing, from the root."""
        if old is not None:
            changed = await self._carry(old, new)
            if changed is not None and old is self._filled:
                nodes = kt_tables.path_nodes(changed)
                try:
                    for i in range(0, len(nodes), FILL_STEP):
                        if self._map_cache is not new:
                            return
                        await self.storage.kt_fill_upper(new.size, nodes[i:i + FILL_STEP], new)
                except StorageError:
                    return
                # The lookup memos: carried over but for the few the changes reached,
                # which lookups remake as they need them.
                self._filled = new
                return
        if await self._fill(new):
            self._filled = new
            await self._build_tops(new)

    async def _build_tops(self, cache: AppendCache) -> None:
        """Make, in steps between which lookups run, the memos every lookup below a
        node at the memos' depth shares (its path down to there, its proof's siblings
        above it), which the first lookup below each node would make: so that the first
        lookups of a process, or after its cache was filled again, do not each pay for
        them (at 1,000,000 accounts 4,096 nodes, each shared by some 250 names; 0.13 s
        of CPU). A cache carried over takes most of them from the one before."""
        for first in range(0, kt_tables.TOPS, TOPS_STEP):
            if self._map_cache is not cache:
                return
            kt_tables.build_tops(cache, first, TOPS_STEP)
            await asyncio.sleep(0)

    async def _fill(self, cache: AppendCache) -> bool:
        """Read the map nodes down to the cache's depth that ``cache`` does not hold,
        depth by depth from the root, FILL_STEP a round trip, while it is the served
        checkpoint's: every lookup's path then starts below them (at 1,000,000 accounts
        about 130,000 nodes, a few tenths of a second of CPU once a process). Lookups
        meanwhile read what they need themselves, as without it. Whether it is whole."""
        nodes = [(0, 0)]
        try:
            while nodes:
                below = []
                for i in range(0, len(nodes), FILL_STEP):
                    if self._map_cache is not cache:
                        return False
                    below += await self.storage.kt_fill_upper(
                        cache.size, nodes[i:i + FILL_STEP], cache)
                nodes = below
        except StorageError:
            return False
        return True

    async def warm(self) -> None:
        """Serve the newest checkpoint and wait until its map cache is carried over and
        filled (what the first lookups at a checkpoint start; benchmarks wait for it)."""
        served = await self.current()
        if served.size:
            self._serve(served)
        await asyncio.gather(*self._carrying, return_exceptions=True)

    async def _carry(self, old: AppendCache, new: AppendCache) -> list[bytes] | None:
        """Fill ``new`` with what ``old`` knows that the leaves between their sizes did not
        change (:meth:`AppendCache.carry`), so a new checkpoint's first lookups do not all
        read the upper map nodes again. The cache stays correct without it. The keys
        the leaves between them changed (None if they could not be read)."""
        try:
            changed = await self.storage.kt_changed_keys(old.size, new.size)
        except StorageError:
            return None
        new.carry(old, changed)
        return changed

    async def _log_proof(self, served: Served, since: int) -> LogProof:
        """The log's part of every answer at ``served`` to clients at ``since``."""
        leaf, nodes = await self.storage.kt_log_part(served.size, since, self._map_cache)
        if leaf is None:
            raise WireFailure("kt_unavailable", "the key-transparency log is not readable yet",
                              retryable=True, retry_after_ms=1000)
        part = log_proof(served.note, served.size, since, leaf, nodes)
        if served is self._answers_for:
            if len(self._parts) >= MAX_CACHED_SINCE:
                self._parts.clear()
            self._parts[since] = part
        return part

    async def _read(self, user: str, history: bool, part: LogProof, size: int) -> bytes:
        """``user``'s answer at ``size``, read and built with the other lookups waiting
        meanwhile: one reader round trip serves all that queued while the previous one
        ran."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.append((user, history, part, size, fut))
        self._reading = {t for t in self._reading if not t.done()}
        if len(self._reading) < READ_TASKS:
            self._reading.add(asyncio.create_task(self._read_queued()))
        return await fut

    async def _read_queued(self) -> None:
        while self._queue:
            size = self._queue[0][3]
            batch = [q for q in self._queue if q[3] == size][:MAX_READ_BATCH]
            taken = {id(q) for q in batch}
            self._queue = [q for q in self._queue if id(q) not in taken]
            asks = [(user, history, part) for user, history, part, _, _ in batch]
            try:
                try:
                    found = await self.storage.kt_answers(asks, size, self._map_cache)
                except StorageError:
                    # A read fails every lookup it carries: once more, on a fresh
                    # connection (a read can be repeated; a dropped one often is).
                    found = await self.storage.kt_answers(asks, size, self._map_cache)
            except Exception as exc:
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (*_, fut), encoded in zip(batch, found, strict=True):
                if not fut.done():  # its asker may have gone
                    fut.set_result(encoded)

    async def lookup(self, session: Session, ev: KTLookup, data: dict[str, Any],
                     rid: str | None) -> None:
        self._limit(session)
        try:
            validate_username(ev.username)
        except UsageError as exc:
            raise WireFailure("invalid_username", str(exc)) from None
        if self.gate is not None:  # proof of work and discovery (server/app.py)
            await self.gate(session.key[0], ev.username, ev.pow, ev.cap)
        encoded = await self._answer(ev.username, ev.since, history=False)
        session.reply(KT_LOOKUP_RESULT, KTResponse(response=encoded).to_wire(), rid)

    async def history(self, session: Session, ev: KTHistory, data: dict[str, Any],
                      rid: str | None) -> None:
        self._limit(session)
        user, _ = session.key
        if ev.start is None:
            encoded = await self._answer(user, ev.since, history=True)
        else:
            encoded = await self._page(user, ev.since, ev.start)
        session.reply(KT_HISTORY_RESULT, KTResponse(response=encoded).to_wire(), rid)

    async def _page(self, user: str, since: int, start: int) -> bytes:
        """One page of ``user``'s history from version ``start`` (storage/kt_pages.py)."""
        served = await self.current(since)
        if served.size == 0:
            raise WireFailure("kt_unavailable", "the key-transparency log is empty",
                              retryable=True, retry_after_ms=1000)
        part = await self._log_proof(served, since if since <= served.size else 0)
        cache = self._map_cache if self._map_cache.size == served.size else None
        return await self.storage.kt_history_page(user, served.size, start, self.history_page,
                                                  part, MAX_RESPONSE_BYTES, cache)

    # --- read-only HTTP for witnesses and auditors ----------------------------------------------

    async def http_get(self, path: str, query: str) -> tuple[HTTPStatus, bytes, str]:
        """(status, body, content type) of one ``/kt/...`` GET."""
        params = parse_qs(query, keep_blank_values=True, max_num_fields=4)
        try:
            if path == "/kt/keys":
                return HTTPStatus.OK, _json(self.keys()), "application/json"
            if path == "/kt/checkpoint":
                return HTTPStatus.OK, (await self.current()).note, "text/plain; charset=utf-8"
            # Leaves and proofs reach every committed leaf: a witness asked to cosign a new
            # checkpoint reads up to its size before this node serves it.
            size = await self.storage.kt_size()
            if path == "/kt/consistency":
                old, new = _int(params, "old"), _int(params, "new")
                if not 0 <= old <= new <= size:
                    return _bad("old and new must be sizes with old <= new <= the log's")
                proof = await self._proof(old, new)
                return HTTPStatus.OK, _json({"proof": [_b64(h) for h in proof]}), _JSON
            if path == "/kt/leaves":
                start, count = _int(params, "start"), _int(params, "count")
                if not 0 < count <= MAX_LEAVES_PER_REQUEST or start >= size:
                    return _bad(f"count must be 1-{MAX_LEAVES_PER_REQUEST} and start below "
                                "the log's size")
                leaves = await self.storage.kt_leaves(start, min(count, size - start))
                return HTTPStatus.OK, _json({"leaves": [_b64(x) for x in leaves]}), _JSON
        except WireFailure as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, f"{exc.message}\n".encode(), "text/plain"
        except ValueError as exc:
            return _bad(str(exc))
        return HTTPStatus.NOT_FOUND, b"not found\n", "text/plain"


_JSON = "application/json"


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bad(why: str) -> tuple[HTTPStatus, bytes, str]:
    return HTTPStatus.BAD_REQUEST, f"{why}\n".encode(), "text/plain"


def _int(params: dict[str, list[str]], name: str) -> int:
    values = params.get(name)
    if not values or len(values) != 1 or not values[0].isdigit() or len(values[0]) > 16:
        raise ValueError(f"{name} must be one non-negative integer")
    value = int(values[0])
    if value > KT_MAX_LOG_SIZE:
        raise ValueError(f"{name} is out of range")
    return value


def local_witness_paths(data_dir: Path) -> tuple[Path, Path]:
    """The co-located witness's key file and state file in the server's data directory."""
    return data_dir / "kt-colocated-witness.key", data_dir / "kt-colocated-witness.state"


def from_config(config: ServerConfig, storage: SharedStorage, log: JsonLogger) -> KTService:
    """The log of this server: its keys read (or made at first start) now, so a bad key
    file is a plain error before the server listens; appends wired into ``storage``."""
    data = Path(config.data_dir)
    origin = config.kt_origin or f"{socket.gethostname()}/sottovoce-kt"
    signer = kt_keys.note_key(config.kt_log_key_file or data / "kt-log.key", origin,
                              cosigner=False, what="key-transparency log key file")
    vrf = kt_keys.vrf_key(config.kt_vrf_key_file or data / "kt-vrf.key")
    local = None
    if not config.no_local_witness:
        key_file, state_file = local_witness_paths(data)
        witness = kt_keys.note_key(key_file, f"{signer.public.name}/colocated-witness",
                                   cosigner=True, what="co-located witness key file")
        local = WitnessService(witness, state_file, log_key=signer.public,
                               clock_ms=lambda: time.time_ns() // 1_000_000)
    storage.kt_writer = KTWriter(vrf=vrf, rng=secrets.token_bytes)
    return KTService(storage, signer=signer, vrf=vrf, witnesses=config.kt_witness, local=local,
                     log=log, cosign_interval_ms=config.kt_cosign_interval_ms,
                     history_page=config.kt_history_page)
