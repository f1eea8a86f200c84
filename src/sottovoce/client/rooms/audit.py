"""The room's audit trail: appending entries and verifying the chain (protocol/audit.py).

    each membership or token change ──► an entry after our copy of the chain's head,
        signed by us, bound to the epoch through its epoch authenticator
        ──► sent with the change (or room.audit.append) ──► audit_conflict: the head
            moved, fetch it again and re-sign (bounded, backed off)
    audit(room) ──► fetch the whole chain ──► verify links, signatures, every binding
        to an epoch this device saw, and the head it verified before
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sottovoce.client.errors import ServerError
from sottovoce.client.ids import now_ms
from sottovoce.client.ports import Link
from sottovoce.client.rooms.book import RoomBook, backoff, request_retrying
from sottovoce.client.rooms.model import ROOM_REQUEST_TIMEOUT_S, Device, Room
from sottovoce.errors import UsageError
from sottovoce.limits import MAX_ROOM_AUDIT_ENTRY_BYTES, ROOM_AUDIT_BATCH, ROOM_COMMIT_RETRIES
from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.audit import AuditAction, AuditTrail, chain_head, make_entry, verify_trail
from sottovoce.protocol.fields import req_b64
from sottovoce.secret import Secret

#: What a member may append by itself, outside a commit or a token change.
_STANDALONE = (
    AuditAction.CALL_STARTED,
    AuditAction.CALL_STOPPED,
    AuditAction.RECORDING_ON,
    AuditAction.RECORDING_OFF,
)


def _head_record(room_id: str) -> str:
    return f"audit-head:{room_id}"


class AuditLog:
    """This device's copy of each room's chain, and the entries it signs."""

    def __init__(self, book: RoomBook, link: Link) -> None:
        self._book, self._store, self._link = book, book.store, link

    def entry(
        self,
        room: Room,
        action: AuditAction,
        subjects: Iterable[Device],
        *,
        epoch: int | None = None,
        authenticator: Secret | None = None,
        leaf: int | None = None,
    ) -> bytes:
        """The next entry after our copy of the chain's head, signed by us."""
        group = self._book.active(room)
        auth = authenticator if authenticator is not None else group.epoch_authenticator
        entry = make_entry(
            signing_key=self._book.signing_key,
            suite=group.suite.id,
            prev=room.audit[-1] if room.audit else None,
            room_id=room.room_id,
            epoch=group.epoch if epoch is None else epoch,
            epoch_authenticator=auth,
            action=action,
            actor_user_id=self._book.username,
            actor_device_id=self._book.device_id,
            actor_leaf_index=group.own_leaf_index if leaf is None else leaf,
            now_ms=now_ms(),
            subjects=tuple(subjects),
        )
        return entry.encode()

    async def fetch(self, room: Room) -> list[bytes]:
        """Bring our copy of the chain up to the server's head (members only)."""
        while True:
            _, data = await self._link.request(
                pr.AuditGet(roomId=room.room_id, afterIndex=len(room.audit) - 1),
                frozenset({pr.ROOM_AUDIT}),
                timeout=ROOM_REQUEST_TIMEOUT_S,
            )
            raw = data.get("entries")
            batch = [
                req_b64({"e": e}, "e", max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES)
                for e in (raw if isinstance(raw, list) else [])
            ]
            room.audit.extend(batch)
            # The server cuts a reply by bytes as well as by count and says so.
            if not batch or (data.get("more") is not True and len(batch) < ROOM_AUDIT_BATCH):
                return room.audit

    async def with_entry(
        self,
        room: Room,
        action: AuditAction,
        make: Callable[[bytes], ev.ClientEvent],
        reply: str,
        subjects: tuple[Device, ...] = (),
    ) -> dict[str, Any]:
        """A request carrying an audit entry; audit_conflict → refetch the head, retry."""
        for attempt in range(ROOM_COMMIT_RETRIES):
            async with room.lock:
                await self.fetch(room)
                entry = self.entry(room, action, subjects)
                try:
                    data = await request_retrying(self._link, make(entry), reply)
                except ServerError as exc:
                    if exc.code != "audit_conflict":
                        raise
                    await backoff(attempt, exc.retry_after_ms)
                    continue
                room.audit.append(entry)
                return data
        raise ServerError("audit_conflict", "the audit chain kept moving", retryable=True)

    async def append(
        self, room: Room, action: AuditAction, subjects: tuple[Device, ...] = ()
    ) -> int:
        """Append one entry by itself (room.audit.append); returns its index."""
        data = await self.with_entry(
            room,
            action,
            lambda entry: pr.AuditAppend(roomId=room.room_id, entry=entry),
            pr.ROOM_AUDIT_APPENDED,
            subjects,
        )
        index = data.get("index")
        return index if isinstance(index, int) else len(room.audit) - 1

    async def record_event(self, ref: str, action: AuditAction) -> int:
        """Append a call start/stop or recording on/off entry; returns its index."""
        if action not in _STANDALONE:
            raise UsageError("only call and recording events are appended by themselves")
        room = self._book.get(ref)
        self._book.active(room)
        return await self.append(room, action)

    async def audit(self, room: Room) -> AuditTrail:
        """Fetch and verify the room's whole audit trail (see :meth:`verify`)."""
        room.audit = []
        entries = await self.fetch(room)
        return self.verify(room.room_id, entries)

    def verify(self, room_id: str, entries: list[bytes]) -> AuditTrail:
        """Offline verification of ``entries`` with what this device has kept."""
        known = self._store.get_secret(_head_record(room_id))
        known_head = None
        if known is not None and len(known) == 40:
            known_head = (int.from_bytes(known[:8], "big"), known[8:])
        verified = verify_trail(
            entries,
            room_id=room_id,
            authenticators=self._store.epoch_authenticators(room_id),
            known_head=known_head,
            # From the first epoch this device knows on, every entry's binding must
            # check: otherwise a server could sign an entry with its own key and claim
            # an epoch we never saw.
            strict=True,
        )
        head = chain_head(entries)
        if head is not None:
            with self._store.transaction():
                self._store.put_secret(_head_record(room_id), head[0].to_bytes(8, "big") + head[1])
        return verified
