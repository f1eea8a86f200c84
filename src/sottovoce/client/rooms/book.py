"""The rooms of one device, in memory and in the store, and what the room code
shares: this member's MLS identity, the bookkeeping of one batch of frames, and
the request helpers that survive reconnects and commit races.

Every change to a group is written in the same transaction as the messages or
epoch it produced (:meth:`RoomBook.persist`): inside the client's batch
transaction for received frames, in a transaction of its own for what this
device commits or sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sottovoce.client.errors import NotConnected, ServerError
from sottovoce.client.events import ClientEvent
from sottovoce.client.ids import now_ms
from sottovoce.client.payload import encode_log_head
from sottovoce.client.ports import Emit, Link, Spawn
from sottovoce.client.rooms.model import (
    ROOM_REQUEST_TIMEOUT_S,
    Device,
    Room,
    identity_of,
    room_id_of,
)
from sottovoce.client.rooms.names import display_name, load_key
from sottovoce.client.rooms.rules import ROOM_CAPABILITIES
from sottovoce.client.rooms.tokens import TokenBook
from sottovoce.client.store import Store
from sottovoce.crypto.sign import SigningKey
from sottovoce.errors import DecodeError, RemoteError, UsageError
from sottovoce.mls.common import PreSharedKeyID
from sottovoce.mls.group import Group, GroupConfig
from sottovoce.mls.messages import Credential
from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr


async def request_retrying(link: Link, request: ev.ClientEvent, reply: str) -> dict[str, Any]:
    """A request that is safe to repeat (same messageId/idempotencyKey) over reconnects."""
    for attempt in range(3):
        try:
            _, data = await link.request(
                request, frozenset({reply}), timeout=ROOM_REQUEST_TIMEOUT_S
            )
            return data
        except NotConnected:
            if attempt == 2:
                raise
            await link.wait_up(ROOM_REQUEST_TIMEOUT_S)
    raise NotConnected("no answer")  # pragma: no cover - loop returns or raises


async def request_commit(
    link: Link, request: ev.ClientEvent, attempt: int
) -> dict[str, Any] | None:
    """room.commit; ``None`` if another commit won the epoch (after backing off: rebuild
    on the new epoch and retry, up to ROOM_COMMIT_RETRIES attempts)."""
    try:
        return await request_retrying(link, request, pr.ROOM_COMMITTED)
    except ServerError as exc:
        if exc.code != "commit_conflict":
            raise
        await backoff(attempt, exc.retry_after_ms)
        return None


async def backoff(attempt: int, retry_after_ms: int) -> None:
    """Before retrying a race we lost (commit_conflict, audit_conflict): jittered."""
    base = max(retry_after_ms / 1000, 0.005 * (2 ** min(attempt, 6)))
    await asyncio.sleep(base * (1 + random.random()))  # noqa: S311 - jitter, not crypto


class RoomBook:
    """Every room of this device and the state its room code shares."""

    def __init__(
        self, *, store: Store, username: str, device_id: str, signing_key: SigningKey | None,
        emit: Emit, spawn: Spawn,
    ) -> None:
        self.store, self.username, self.device_id = store, username, device_id
        self._signing_key = signing_key
        self.emit, self.spawn = emit, spawn
        self.tokens = TokenBook(store)
        self.rooms: dict[str, Room] = {}
        #: Our transparency-log head (size, root), carried by every commit we make,
        #: external joins included, so that members compare views.
        self.log_head: Callable[[], tuple[int, bytes] | None] = lambda: None
        # --- one batch of received frames (see flush / discard_unflushed) ---
        #: Rooms the batch changed in memory (restored from the store on a rollback).
        self.touched: set[str] = set()
        #: Rooms whose state the batch transaction must write.
        self.dirty: set[str] = set()
        #: room.ack to send per room once the batch is durable.
        self.acks: dict[str, int] = {}
        #: Work to start once the batch is durable (commits, syncs, rejoins).
        self.after: list[Callable[[], None]] = []
        #: Users whose directory lookup failed for want of a connection (this batch).
        self.unreachable: set[str] = set()
        self._progress = asyncio.Event()
        self._load()

    # --- this member ----------------------------------------------------------------

    @property
    def me(self) -> Device:
        return (self.username, self.device_id)

    @property
    def signing_key(self) -> SigningKey:
        key = self._signing_key
        if key is None:
            raise UsageError(
                "this device was made before rooms existed and has no MLS signature key "
                "in its certificate; create a new account to use rooms"
            )
        return key

    @property
    def has_signing_key(self) -> bool:
        return self._signing_key is not None

    def credential(self) -> Credential:
        return Credential.basic(identity_of(self.username, self.device_id))

    def group_config(self, room_id: str) -> GroupConfig:
        return self.tokens.group_config(room_id)

    def external_join(
        self, room_id: str, group_info: bytes, epoch: int, *,
        psks: Sequence[PreSharedKeyID] = (), remove_leaf: int | None = None,
    ) -> tuple[Group, bytes]:
        """Our group after an external commit (RFC 9420 §12.4.3.2) on the room's GroupInfo
        at ``epoch``, and that commit; the group is real once the server accepts it. Like
        a member's commit, it carries our log head in its authenticated data."""
        join = Group.join_by_external_commit(
            group_info, credential=self.credential(), signing_key=self.signing_key,
            rng=secrets.token_bytes, now_ms=now_ms(), psks=psks, remove_leaf=remove_leaf,
            authenticated_data=encode_log_head(self.log_head()),
            config=self.group_config(room_id), capabilities=ROOM_CAPABILITIES,
        )
        if room_id_of(join.group.group_id) != room_id or join.group.epoch != epoch + 1:
            raise RemoteError("the GroupInfo is for another room or epoch")
        return join.group, join.commit

    # --- rooms ----------------------------------------------------------------------

    def _restore_group(self, room_id: str, state: bytes) -> Group | None:
        try:
            group = Group.from_state(state, psk_lookup=self.tokens.psk_lookup(room_id))
        except DecodeError:
            return None  # damaged record: the room is unusable, the rest of the account is not
        # A room saved before its commits were public: the server now reads them.
        group.use_handshake_wire_format(self.group_config(room_id).handshake_wire_format)
        return group

    def _load(self) -> None:
        for row in self.store.rooms():
            group = None
            if row.state is not None and not row.removed:
                group = self._restore_group(row.room_id, row.state)
            if group is None and not row.removed:
                continue  # damaged state: the room is unusable, the rest of the account is not
            self.rooms[row.room_id] = Room(
                room_id=row.room_id,
                label=row.label,
                group=group,
                last_seq=row.last_seq,
                removed=row.removed,
                name_key=load_key(self.store, row.room_id),
            )

    def get(self, ref: str) -> Room:
        """A room by id, by this device's name for it, or else by its shared name
        (unambiguous)."""
        room = self.rooms.get(ref)
        if room is not None:
            return room
        matches = [self.rooms[r] for r in self.store.rooms_by_label(ref) if r in self.rooms]
        if not matches:  # the shared name (client/rooms/names.py)
            matches = [r for r in self.rooms.values() if display_name(r) == ref]
        live = [room for room in matches if not room.removed]
        if len(matches) == 1 or len(live) == 1:  # a room we were removed from yields its name
            return matches[0] if len(matches) == 1 else live[0]
        if matches:
            raise UsageError(f"more than one room is called '{ref}'; use its id")
        raise UsageError(f"no room '{ref}' on this device")

    def active(self, room: Room) -> Group:
        if room.group is None or room.removed or not room.group.is_active:
            raise UsageError(f"this device is no longer a member of {room.room_id}")
        return room.group

    def persist(self, room: Room, *, seq: int | None = None) -> None:
        """Write the room's epoch, position and group state (call inside a transaction)."""
        group = room.group
        state = None if group is None or room.removed else group.to_state()
        self.store.update_room(
            room.room_id,
            epoch=room.epoch if group is not None else None,
            last_seq=seq,
            state=state,
            removed=room.removed,
        )
        if group is not None and not room.removed and group.is_active:
            self.store.put_epoch_authenticator(
                room.room_id, group.epoch, group.epoch_authenticator.expose()
            )

    def emit_all(self, events: Iterable[ClientEvent]) -> None:
        for event in events:
            self.emit(event)

    # --- one batch ------------------------------------------------------------------

    def flush(self) -> None:
        """Inside the batch transaction: write every room the batch changed, once."""
        dirty, self.dirty = self.dirty, set()
        for room_id in dirty:
            room = self.rooms.get(room_id)
            if room is not None:
                self.persist(room, seq=room.last_seq)

    def discard_unflushed(self) -> None:
        """The batch transaction rolled back: forget in-memory group changes it made."""
        for room_id in self.touched:
            row = self.store.get_room(room_id)
            room = self.rooms.get(room_id)
            if row is None or room is None:
                self.rooms.pop(room_id, None)
                continue
            if row.state is not None:
                group = self._restore_group(room_id, row.state)
                if group is not None:
                    room.group = group
            room.last_seq = row.last_seq
            room.removed = row.removed
            room.label = row.label  # an invitation notice may have renamed it
            room.name_key = load_key(self.store, room_id)
            # Held frames were never acked: the resume after the rollback brings them again.
            room.catching_up, room.held_overflow = False, False
            room.held.clear()
        self.touched.clear()
        self.dirty.clear()
        self.acks.clear()
        self.after.clear()
        self.unreachable.clear()

    def notify(self) -> None:
        """Wake everything waiting in :meth:`wait` (a batch, a join or a rejoin landed)."""
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait (without polling) until ``done()`` holds after some batch; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            progress = self._progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), remaining)
        return True
