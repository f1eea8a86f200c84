"""What a room's admins and members do to the room itself (docs/architecture.md §Rooms,
"Room rules"): rename it, change its topic, promote and demote, and leave.

    rename / topic / promote / demote ──► one commit with a GroupContextExtensions
        proposal holding the new profile (protocol/room_rules.py) ──► every member
        sees the same name, topic and roles from that epoch on
    leave ──► a Remove proposal of each of our account's leaves (PublicMessages, sent
        as room messages) ──► our group state is deleted at once (no key of a later
        epoch ever reaches this device) ──► the next member to see the proposals
        commits them by reference, carrying them for the server to check

A self-remove is a plain RFC 9420 Remove proposal by reference, not the SelfRemove
proposal of the MLS extensions draft: every member and the server already parse
and check it, and the rules tell a leaver by the proposal's own signed sender.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable

from sottovoce.client.errors import ServerError
from sottovoce.client.events import ErrorEvent
from sottovoce.client.ids import new_id, now_ms
from sottovoce.client.payload import encode_log_head
from sottovoce.client.ports import Link
from sottovoce.client.rooms.book import RoomBook
from sottovoce.client.rooms.membership import Membership, Plan
from sottovoce.client.rooms.messages import RoomMessages
from sottovoce.client.rooms.model import ROOM_REQUEST_TIMEOUT_S, CommitResult, Room, device_of
from sottovoce.client.rooms.rules import profile, roles
from sottovoce.errors import SottovoceError, UsageError
from sottovoce.mls.group import Group
from sottovoce.mls.messages import GroupContextExtensions, Remove
from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.audit import AuditAction
from sottovoce.protocol.room_rules import RoomProfile, with_profile


class RoomAdmin:
    """Profile changes and leaving; see the module docstring."""

    def __init__(
        self, book: RoomBook, link: Link, membership: Membership, messages: RoomMessages
    ) -> None:
        self._book, self._link = book, link
        self._membership, self._messages = membership, messages
        messages.on_proposal = self._commit_soon

    def _head(self) -> bytes:
        return encode_log_head(self._messages.log_head())

    async def change(
        self, room: Room, change: Callable[[RoomProfile], RoomProfile]
    ) -> CommitResult | None:
        """Commit ``change`` of the room's profile (admins only; ``None``: no change)."""
        self._book.active(room)
        if roles(room).get(self._book.username) != "admin" and profile(room) is not None:
            raise UsageError("only a room admin may rename a room, set its topic or roles")

        def build(group: Group) -> Plan | None:
            current = profile(room) or RoomProfile(
                room.label[:100] or "room", "", (self._book.username,)
            )
            new = change(current)
            if new == current:
                return None
            extensions = with_profile(group.group_context.extensions, new)
            bundle = group.commit(
                rng=secrets.token_bytes, now_ms=now_ms(), authenticated_data=self._head(),
                proposals=[GroupContextExtensions(extensions=extensions)],
            )
            return Plan(bundle, (), ())

        return await self._membership.commit(room, build)

    async def rename(self, room: Room, name: str) -> CommitResult | None:
        return await self.change(room, lambda p: RoomProfile(name, p.topic, p.admins))

    async def set_topic(self, room: Room, topic: str) -> CommitResult | None:
        return await self.change(room, lambda p: RoomProfile(p.name, topic, p.admins))

    async def promote(self, room: Room, username: str) -> CommitResult | None:
        if username not in roles(room):
            raise UsageError(f"'{username}' is not a member of this room")
        return await self.change(room, lambda p: p.with_admins({*p.admins, username}))

    async def demote(self, room: Room, username: str) -> CommitResult | None:
        if username not in roles(room):
            raise UsageError(f"'{username}' is not a member of this room")
        return await self.change(room, lambda p: p.with_admins(set(p.admins) - {username}))

    # --- leaving ------------------------------------------------------------------------

    async def leave(self, room: Room) -> None:
        """Propose the removal of every leaf of our account, then forget the room's keys."""
        async with room.lock:
            group = self._book.active(room)
            me = self._book.username
            ours = [
                m.index for m in group.members()
                if (d := device_of(m.credential)) is not None and d[0] == me
                and m.index != group.own_leaf_index
            ]
            proposals = [group.propose_remove(i, rng=secrets.token_bytes) for i in ours]
            proposals.append(group.leave(rng=secrets.token_bytes))
            for proposal in proposals:
                await self._link.request(
                    pr.RoomSend(
                        roomId=room.room_id, epoch=group.epoch, messageId=new_id(),
                        idempotencyKey=new_id(), contentType="text", ciphertext=proposal,
                        clientCreatedAtMs=now_ms(),
                    ),
                    frozenset({ev.SEND_ACK}),
                    timeout=ROOM_REQUEST_TIMEOUT_S,
                )
            room.removed, room.group = True, None
            with self._book.store.transaction():
                self._book.persist(room)

    def _commit_soon(self, room: Room) -> None:
        self._book.spawn(self.commit_pending(room))

    async def commit_pending(self, room: Room) -> CommitResult | None:
        """Commit the proposals members sent this epoch (spread so one member wins)."""
        await asyncio.sleep(random.random() * 0.2)  # noqa: S311 - spread the herd

        def build(group: Group) -> Plan | None:
            pending = group.pending_proposals
            if not pending or any(
                isinstance(q.proposal, Remove) and q.proposal.removed == group.own_leaf_index
                for q in pending
            ):
                return None  # nothing to do, or we are leaving too: another member commits
            bundle = group.commit(
                rng=secrets.token_bytes, now_ms=now_ms(), authenticated_data=self._head()
            )
            if not bundle.staged.removes and not bundle.staged.proposals:
                group.clear_pending_commit()
                return None
            return Plan(bundle, (), (), AuditAction.MEMBER_REMOVED)

        try:
            if room.removed or room.group is None:
                return None
            return await self._membership.commit(room, build)
        except (SottovoceError, UsageError, ServerError) as exc:
            self._book.emit(ErrorEvent(code=getattr(exc, "code", "error"), message=str(exc)))
            return None
