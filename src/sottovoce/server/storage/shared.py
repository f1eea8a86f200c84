"""The storage API written once: each method runs an operation of :mod:`.accounts`,
:mod:`.statements`, :mod:`.prekeys`, :mod:`.inbox`, :mod:`.keypackages` or :mod:`.rooms`
on the engine.

An engine provides only where an operation runs (:meth:`SharedStorage._write_op`,
:meth:`SharedStorage._read_op`) and what it caches of the inbox quotas (forgotten
when a device's inbox goes). Sends, acks, expiry and the room writes that produce
messages stay in the engine modules (see :mod:`.inbox` and :mod:`.rooms`).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sottovoce.identity.succession import Genesis, Statement
from sottovoce.kt.map import ChangeKind, LogLeaf
from sottovoce.kt.merkle import NodeId
from sottovoce.kt.prover import KTStores, LogProof
from sottovoce.limits import MAX_ACCOUNT_STATEMENTS
from sottovoce.server.errors import StorageError
from sottovoce.server.storage import (
    accounts,
    blobs,
    discovery,
    inbox,
    keypackages,
    kt_pages,
    prekeys,
    room_writes,
    rooms,
)
from sottovoce.server.storage import kt as kt_tables
from sottovoce.server.storage import statements as statements_ops
from sottovoce.server.storage.base import AccountRecord, Applied, ClaimedPrekey, Storage
from sottovoce.server.storage.roombase import (
    AuditAppendage,
    ClaimedKeyPackage,
    CommitRequest,
    Member,
    RoomCallback,
    RoomFrames,
    RoomPosition,
    RoomSendRequest,
    RoomState,
    RoomStorage,
    RoomSummary,
)
from sottovoce.server.storage.txn import Txn

T = TypeVar("T")
Op = Callable[..., Txn[T]]


class BatchStats:
    """Group-commit counters the app exports as metrics (read on the loop, written by the
    engine's writer)."""

    def __init__(self) -> None:
        self.commits = 0
        self.jobs = 0
        self.commit_seconds = 0.0
        self.last_batch = 0
        self.truncations = 0
        self.checkpoints = 0  # SQLite: WAL copies into the database file
        self.observers: list[Callable[[int, float], None]] = []

    def record(self, jobs: int, seconds: float) -> None:
        """One commit of ``jobs`` jobs took ``seconds``; the observers hear of it."""
        self.commits += 1
        self.jobs += jobs
        self.commit_seconds += seconds
        self.last_batch = jobs
        for observe in self.observers:
            observe(jobs, seconds)


class Engine(abc.ABC):
    """Where operations run: the engine's write transaction, or a read."""

    @abc.abstractmethod
    async def _write_op(
        self, op: Op[T], *args: Any, after: Callable[[T], Any] | None = None,
        atomic: bool = True,
    ) -> T:
        """Run ``op(*args)`` in a write transaction; ``after(result)`` runs in it too, where
        the engine's writer-side caches may be touched (before any later write).
        ``atomic=False``: the operation is one statement, atomic by itself."""

    @abc.abstractmethod
    async def _read_op(self, op: Op[T], *args: Any) -> T: ...

    @abc.abstractmethod
    def _submit_op(
        self, op: Op[Any], args: tuple[Any, ...], callback: RoomCallback,
        rooms: Callable[[], Txn[list[str]]] | list[str],
    ) -> None:
        """Run ``op(*args)`` in a write transaction after the jobs queued before it for the
        same ``rooms`` (or the rooms that op finds), then ``callback(result, error)``."""


class SharedStorage(Storage, Engine):
    """Accounts, devices, prekeys and inbox reads of :class:`Storage`, and the
    key-transparency tables."""

    #: Set by the server before it serves (its VRF key): every directory change is then
    #: appended to the key-transparency log in its own transaction.
    kt_writer: kt_tables.KTWriter | None = None

    @abc.abstractmethod
    def _forget_inboxes(self, devs: Sequence[int], *, correspondents: bool) -> None:
        """Every inbox row of ``devs`` is gone (and, if ``correspondents``, some accounts'
        correspondents): drop what the engine cached of their quota usage."""

    async def create_account(
        self, user_id: str, account_key: bytes, device_id: str, certificate: bytes, now_ms: int,
        recovery_key: bytes | None = None,
    ) -> None:
        await self._write_op(
            accounts.create_account, user_id, account_key, device_id, certificate, now_ms,
            recovery_key, self.kt_writer,
        )

    async def add_device(
        self, user_id: str, device_id: str, certificate: bytes, now_ms: int
    ) -> None:
        await self._write_op(accounts.add_device, user_id, device_id, certificate, now_ms,
                             self.kt_writer)

    async def revoke_device(self, user_id: str, device_id: str, now_ms: int) -> None:
        await self._write_op(
            accounts.revoke_device, user_id, device_id, now_ms, self.kt_writer,
            after=lambda dev: self._forget_inboxes([dev], correspondents=False),
        )

    async def apply_statements(
        self, user_id: str, statements: Sequence[Statement], now_ms: int
    ) -> Applied:
        return await self._write_op(
            statements_ops.apply_statements, user_id, tuple(statements), now_ms,
            MAX_ACCOUNT_STATEMENTS, self.kt_writer,
            after=lambda applied: self._forget_inboxes(applied.devs, correspondents=False),
        )

    async def account_chain(self, user_id: str) -> tuple[Genesis, list[Statement]] | None:
        return await self._read_op(statements_ops.genesis_of, user_id)

    async def correspondents(self, user_id: str) -> list[str]:
        return await self._read_op(statements_ops.correspondents, user_id)

    async def delete_account(self, user_id: str, now_ms: int) -> tuple[str, ...]:
        active, _ = await self._write_op(
            accounts.delete_account, user_id, now_ms, self.kt_writer,
            after=lambda found: self._forget_inboxes(found[1], correspondents=True),
        )
        return active

    async def get_account(self, user_id: str) -> AccountRecord | None:
        return await self._read_op(accounts.get_account, user_id)

    # --- key transparency (storage/kt.py) ------------------------------------------------

    async def kt_record(
        self, user_id: str, kind: ChangeKind, now_ms: int, *,
        account_key: bytes | None = None, recovery_key: bytes | None = None,
    ) -> None:
        """Queue a change for the log (as a directory change does in its transaction)."""
        if self.kt_writer is None:
            raise StorageError("this server keeps no key-transparency log")
        op = functools.partial(kt_tables.record, account_key=account_key, recovery_key=recovery_key)
        await self._write_op(op, self.kt_writer, user_id, kind, now_ms)

    async def kt_fold(self, limit: int = kt_tables.FOLD_BATCH) -> list[LogLeaf]:
        """Append up to ``limit`` queued changes to the log in one transaction (the new
        names' VRF labels computed first, outside it); their leaves, in log order."""
        kt = self.kt_writer
        if kt is None:
            return []
        names = await self._read_op(kt_tables.pending_unlabelled, limit)
        if names:
            found = await asyncio.to_thread(
                lambda: [(n, kt.vrf.evaluate(n.encode("utf-8"))) for n in names])
            for name, label in found:
                kt.remember(name, label)
        return await self._write_op(kt_tables.fold, kt, limit)

    async def kt_pending(self) -> int:
        """How many changes wait for the log."""
        return await self._read_op(kt_tables.pending_count)

    async def kt_size(self) -> int:
        return await self._read_op(kt_tables.log_size)

    async def kt_snapshot(
        self, user_id: str, size: int, since: int, *, every_version: bool,
        cache: kt_tables.AppendCache | None = None,
    ) -> KTStores:
        if self.kt_writer is None:
            raise StorageError("this server keeps no key-transparency log")
        op = functools.partial(kt_tables.snapshot, every_version=every_version, cache=cache)
        return await self._read_op(op, self.kt_writer.vrf, user_id, size, since)

    async def kt_answers(
        self, asks: list[tuple[str, bool, LogProof]], size: int,
        cache: kt_tables.AppendCache | None,
    ) -> list[bytes]:
        if self.kt_writer is None:
            raise StorageError("this server keeps no key-transparency log")
        return await self._read_op(kt_tables.answers, self.kt_writer.vrf, asks, size, cache)

    async def kt_fill_upper(
        self, size: int, nodes: list[NodeId], cache: kt_tables.AppendCache
    ) -> list[NodeId]:
        return await self._read_op(kt_tables.fill_upper, size, nodes, cache)

    async def kt_changed_keys(self, start: int, end: int) -> list[bytes]:
        return await self._read_op(kt_tables.changed_keys, start, end)

    async def kt_log_part(
        self, size: int, since: int, cache: kt_tables.AppendCache | None
    ) -> tuple[bytes | None, dict[NodeId, bytes]]:
        return await self._read_op(kt_tables.log_part, size, since, cache)

    async def kt_history_page(
        self, user_id: str, size: int, start: int, limit: int, part: LogProof, budget: int,
        cache: kt_tables.AppendCache | None,
    ) -> bytes:
        if self.kt_writer is None:
            raise StorageError("this server keeps no key-transparency log")
        return await self._read_op(kt_pages.page, self.kt_writer.vrf, user_id, size, start,
                                   limit, part, budget, cache)

    async def kt_leaves(self, start: int, count: int) -> list[bytes]:
        return await self._read_op(kt_tables.leaves, start, count)

    async def kt_log_nodes(self, wanted: set[NodeId]) -> dict[NodeId, bytes]:
        return await self._read_op(kt_tables.log_nodes, wanted)

    async def kt_store_checkpoint(self, size: int, note: bytes, now_ms: int) -> None:
        await self._write_op(kt_tables.store_checkpoint, size, note, now_ms, atomic=False)

    async def kt_store_cosignature(
        self, size: int, witness: str, timestamp_s: int, line: str
    ) -> None:
        await self._write_op(kt_tables.store_cosignature, size, witness, timestamp_s, line,
                             atomic=False)

    async def kt_latest_checkpoint(self) -> tuple[int, bytes, list[str]] | None:
        return await self._read_op(kt_tables.latest_checkpoint)

    # --- discovery (storage/discovery.py) -----------------------------------------------

    async def set_discovery(self, user_id: str, mode: int) -> None:
        await self._write_op(discovery.set_mode, user_id, mode, atomic=False)

    async def discovery_mode(self, user_id: str) -> int:
        return await self._read_op(discovery.get_mode, user_id)

    async def find_public(self, prefix: str, limit: int) -> list[str]:
        return await self._read_op(discovery.find_public, prefix, limit)

    async def visibility(self, user_id: str, grant_hash: bytes) -> tuple[int, bool]:
        return await self._read_op(discovery.visibility, user_id, grant_hash)

    async def set_grant(self, user_id: str, grant_hash: bytes, granted: bool) -> None:
        await self._write_op(discovery.set_grant, user_id, grant_hash, granted, atomic=False)

    async def withdraw_grants(self, user_id: str, grant_hashes: Sequence[bytes]) -> int:
        return await self._write_op(discovery.withdraw_grants, user_id, grant_hashes)

    async def queue_contact_request(self, user_id: str, requester: str, proof: bytes,
                                    received_ms: int, max_age_ms: int, max_rows: int) -> None:
        await self._write_op(discovery.queue_request, user_id, requester, proof, received_ms,
                             max_age_ms, max_rows)

    async def has_contact_requests(self, user_id: str) -> bool:
        return await self._read_op(discovery.has_requests, user_id)

    async def take_contact_requests(self, user_id: str, now_ms: int, max_age_ms: int,
                                    ) -> list[tuple[str, bytes, int]]:
        return await self._write_op(discovery.take_requests, user_id, now_ms, max_age_ms)

    async def set_static_codes(self, user_id: str, hashed: Sequence[tuple[int, bytes, bytes]],
                               ) -> None:
        await self._write_op(discovery.set_static_codes, user_id, hashed)

    async def static_code(self, user_id: str, slot: int) -> tuple[bytes, bytes] | None:
        return await self._read_op(discovery.static_code, user_id, slot)

    async def burn_static_code(self, user_id: str, slot: int, digest: bytes) -> bool:
        return await self._write_op(discovery.burn_static_code, user_id, slot, digest)

    async def set_block(self, user_id: str, peer: str, blocked: bool) -> None:
        await self._write_op(accounts.set_block, user_id, peer, blocked, atomic=False)

    async def set_push_endpoint(self, user_id: str, device_id: str, endpoint: str | None) -> None:
        await self._write_op(
            accounts.set_push_endpoint, user_id, device_id, endpoint, atomic=False
        )

    async def store_prekeys(
        self,
        user_id: str,
        device_id: str,
        one_time: Sequence[tuple[str, bytes]],
        fallback: bytes | None,
        max_stored: int,
    ) -> int:
        return await self._write_op(
            prekeys.store_prekeys, user_id, device_id, list(one_time), fallback, max_stored
        )

    async def count_prekeys(self, user_id: str, device_id: str) -> int:
        return await self._read_op(prekeys.count_prekeys, user_id, device_id)

    async def claim_prekeys(
        self, user_id: str, exclude_device: tuple[str, str] | None, *, one_time: bool = True
    ) -> list[ClaimedPrekey]:
        return await self._write_op(prekeys.claim_prekeys, user_id, exclude_device, one_time)

    async def latest_inbox_seq(self, user_id: str, device_id: str) -> int:
        return await self._read_op(inbox.latest_inbox_seq, user_id, device_id)

    async def read_inbox(
        self, user_id: str, device_id: str, after_seq: int, limit: int
    ) -> list[tuple[int, str]]:
        now = time.time_ns() // 1_000_000
        return await self._read_op(inbox.read_inbox, user_id, device_id, after_seq, limit, now)

    # --- file blobs' metadata (storage/blobs.py; the chunks are files: server/blobs.py) ---

    async def create_blob(
        self, blob_id: str, owner: tuple[str, str], size: int, chunks: int,
        recipients: Sequence[tuple[str, str]], now_ms: int, expires_at: int, quota: int,
    ) -> blobs.BlobMeta:
        return await self._write_op(blobs.create_blob, blob_id, owner[0], owner[1], size,
                                    chunks, list(recipients), now_ms, expires_at, quota)

    async def blob_meta(self, blob_id: str) -> blobs.BlobMeta | None:
        return await self._read_op(blobs.blob_meta, blob_id)

    async def complete_blob(self, blob_id: str) -> None:
        await self._write_op(blobs.complete_blob, blob_id, atomic=False)

    async def blob_fetched(self, blob_id: str, user_id: str, device_id: str) -> bool:
        return await self._write_op(blobs.blob_fetched, blob_id, user_id, device_id)

    async def expire_blobs(self, now_ms: int, limit: int) -> list[str]:
        return await self._write_op(blobs.expire_blobs, now_ms, limit)

    async def known_blobs(self, blob_ids: Sequence[str]) -> set[str]:
        return await self._read_op(blobs.known_blobs, list(blob_ids))


class SharedRooms(RoomStorage, Engine):
    """:class:`RoomStorage`: KeyPackages, rooms, their messages and reads."""

    async def store_key_packages(
        self,
        user_id: str,
        device_id: str,
        key_packages: Sequence[bytes],
        last_resort: bytes | None,
        max_stored: int,
        suite: int = 1,
    ) -> int:
        return await self._write_op(
            keypackages.store_key_packages, user_id, device_id, list(key_packages),
            last_resort, max_stored, suite,
        )

    async def withdraw_key_packages(self, user_id: str, device_id: str) -> int:
        return await self._write_op(keypackages.withdraw_key_packages, user_id, device_id)

    async def count_key_packages(
        self, user_id: str, device_id: str, suite: int = 1
    ) -> int | None:
        return await self._read_op(keypackages.count_key_packages, user_id, device_id, suite)

    async def key_package_stock(self, user_id: str, device_id: str) -> dict[int, int]:
        return await self._read_op(keypackages.key_package_stock, user_id, device_id)

    async def claim_key_packages(
        self, user_id: str, exclude_device: Member | None, *, one_time: bool = True,
        suite: int = 1,
    ) -> list[ClaimedKeyPackage]:
        return await self._write_op(
            keypackages.claim_key_packages, user_id, exclude_device, one_time, suite
        )

    async def create_room(
        self, room_id: str, user_id: str, device_id: str, group_info: bytes | None, now_ms: int
    ) -> None:
        await self._write_op(rooms.create_room, room_id, user_id, device_id, group_info, now_ms)

    async def room_read(
        self, room_id: str, user_id: str, device_id: str, after_seq: int, limit: int
    ) -> RoomFrames:
        now = time.time_ns() // 1_000_000
        return await self._read_op(
            rooms.room_read, room_id, user_id, device_id, after_seq, limit, now
        )

    async def room_positions(self, user_id: str, device_id: str) -> list[RoomPosition]:
        return await self._read_op(rooms.room_positions, user_id, device_id)

    async def room_replay(
        self, room_id: str, after_seq: int, until_seq: int | None, limit: int
    ) -> list[tuple[int, str]]:
        now = time.time_ns() // 1_000_000
        return await self._read_op(rooms.room_replay, room_id, after_seq, until_seq, limit, now)

    async def room_state(self, room_id: str, user_id: str, device_id: str) -> RoomState:
        return await self._read_op(rooms.room_state, room_id, user_id, device_id)

    async def rooms_of(self, user_id: str, device_id: str, limit: int) -> list[RoomSummary]:
        return await self._read_op(rooms.rooms_of, user_id, device_id, limit)

    async def group_info_by_token(self, token_hash: bytes) -> tuple[str, int, bytes] | None:
        return await self._read_op(rooms.group_info_by_token, token_hash)

    async def room_group_info(
        self, room_id: str, user_id: str, device_id: str
    ) -> tuple[int, bytes]:
        return await self._read_op(rooms.room_group_info, room_id, user_id, device_id)

    async def audit_get(
        self, room_id: str, user_id: str, device_id: str, after_index: int, limit: int
    ) -> list[bytes]:
        return await self._read_op(rooms.audit_get, room_id, user_id, device_id, after_index,
                                   limit)

    def room_commit(self, req: CommitRequest, callback: RoomCallback) -> None:
        self._submit_op(room_writes.commit, (req,), callback, [req.room_id])

    def room_send(self, req: RoomSendRequest, callback: RoomCallback) -> None:
        self._submit_op(room_writes.send, (req,), callback, [req.room_id])

    def room_join_request(
        self, token_hash: bytes, user_id: str, device_id: str, key_package_b64: str,
        callback: RoomCallback,
    ) -> None:
        self._submit_op(
            room_writes.join_request, (token_hash, user_id, device_id, key_package_b64),
            callback, lambda: room_writes.token_rooms(token_hash),
        )

    def room_device_revoked(self, user_id: str, device_id: str, callback: RoomCallback) -> None:
        self._submit_op(room_writes.device_revoked, (user_id, device_id), callback,
                        lambda: room_writes.device_rooms(user_id, device_id))

    async def room_ack(self, room_id: str, user_id: str, device_id: str, up_to_seq: int) -> int:
        return await self._write_op(room_writes.ack, room_id, user_id, device_id, up_to_seq)

    async def set_room_token(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        token_hash: bytes | None,
        audit: AuditAppendage | None,
    ) -> None:
        await self._write_op(room_writes.set_token, room_id, user_id, device_id, token_hash,
                             audit)

    async def set_room_setting(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        setting: str,
        value: str,
        audit: AuditAppendage,
    ) -> None:
        await self._write_op(room_writes.set_setting, room_id, user_id, device_id, setting,
                             value, audit)

    async def audit_append(
        self, room_id: str, user_id: str, device_id: str, audit: AuditAppendage
    ) -> int:
        return await self._write_op(room_writes.audit_append, room_id, user_id, device_id, audit)
