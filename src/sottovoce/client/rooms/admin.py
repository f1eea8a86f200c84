"""What a room's admins and members do to the room itself (docs/architecture.md §Rooms,
"Room rules"): rename it, set its topic, promote and demote, and leave.

    rename / topic / promote / demote ──► one commit with a GroupContextExtensions
        proposal holding the new profile (protocol/room_rules.py) ──► every member
        sees the same name, topic and roles from that epoch on; the name and topic
        are sealed under a name key from this epoch's exporter (names.py), so the
        server, which reads the profile, sees only that they changed
    a room made before profiles ──► each device, when it connects, self-updates where
        its leaf lacks the profile capability; the first profile change waits (a plain
        refusal naming who is behind) until every leaf lists it (RFC 9420 §12.1.7)
    leave ──► a Remove proposal of our own leaf (a PublicMessage, sent as a room
        message) ──► the next member to see it commits it by reference (carrying it
        for the server to check) with Removes of our account's other devices ──► we
        wait up to LEAVE_WAIT_S for that commit (proposing again in a new epoch if
        one came without it), then delete our group state whatever happened: no
        key of a later epoch stays on this device

A self-remove is a plain RFC 9420 Remove proposal by reference, not the SelfRemove
proposal of the MLS extensions draft: every member and the server already parse
and check it, and the rules tell a leaver by the proposal's own signed sender.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable
from functools import partial

from sottovoce.client.errors import ServerError
from sottovoce.client.events import ErrorEvent
from sottovoce.client.ids import new_id, now_ms
from sottovoce.client.payload import encode_log_head
from sottovoce.client.ports import Link
from sottovoce.client.rooms.book import RoomBook
from sottovoce.client.rooms.membership import Membership, Plan
from sottovoce.client.rooms.messages import RoomMessages
from sottovoce.client.rooms.model import ROOM_REQUEST_TIMEOUT_S, CommitResult, Room, device_of
from sottovoce.client.rooms.names import derived_key, display_name, seal, shared_names, topic
from sottovoce.client.rooms.rules import lacks_capabilities, not_upgraded, profile, roles
from sottovoce.errors import SottovoceError, UsageError
from sottovoce.mls.group import Group
from sottovoce.mls.messages import Credential, GroupContextExtensions, Remove
from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.audit import AuditAction
from sottovoce.protocol.room_names import KEY_ID_BYTES, RoomNames
from sottovoce.protocol.room_rules import RoomProfile, with_profile

#: Proposals a leaving device sends, each after the epoch moved on without its removal.
LEAVE_PROPOSALS = 3
#: Seconds a leaving device waits for a member to commit its removal, per proposal.
LEAVE_WAIT_S = 3.0


def _moved_on(room: Room, epoch: int) -> bool:
    return room.removed or room.epoch != epoch


def _leaf_credential(group: Group, index: int) -> Credential | None:
    member = group.member(index)
    return None if member is None else member.credential


class RoomAdmin:
    """Profile changes and leaving; see the module docstring."""

    def __init__(
        self, book: RoomBook, link: Link, membership: Membership, messages: RoomMessages
    ) -> None:
        self._book, self._link = book, link
        self._membership, self._messages = membership, messages
        messages.on_proposal = self._commit_soon
        messages.commit_first = partial(self.commit_pending, spread=False)

    def _head(self) -> bytes:
        return encode_log_head(self._messages.log_head())

    async def change(
        self, room: Room, change: Callable[[RoomProfile, Group], RoomProfile],
        what: str = "change roles",
    ) -> CommitResult | None:
        """Commit ``change`` of the room's profile (admins only; ``None``: no change)."""
        group = self._book.active(room)
        self._require_admin(room, what)
        if profile(room) is None:
            await self._upgrade(room, group)

        def build(group: Group) -> Plan | None:
            current = profile(room) or RoomProfile((self._book.username,))
            new = change(current, group)
            if new == current:
                return None
            extensions = with_profile(group.group_context.extensions, new)
            # New names never share a commit with a member's pending removal: that
            # member would process it in this epoch and derive the names' key.
            bundle = group.commit(
                rng=secrets.token_bytes, now_ms=now_ms(), authenticated_data=self._head(),
                proposals=[GroupContextExtensions(extensions=extensions)],
                include_pending=new.sealed == current.sealed,
            )
            return Plan(bundle, (), ())

        return await self._membership.commit(room, build)

    def _require_admin(self, room: Room, what: str) -> None:
        if roles(room).get(self._book.username) != "admin" and profile(room) is not None:
            raise UsageError(f"only a room admin may {what}")

    async def _upgrade(self, room: Room, group: Group) -> None:
        """A room made before room profiles: every leaf must list the profile extension
        before one can be set (RFC 9420 §12.1.7). Ours gains it by a self-update; the
        others' at their next commit (each device refreshes its leaf when it connects)."""
        if lacks_capabilities(group, group.own_leaf_index):
            await self._membership.self_update(room, only_old_leaf=True)
        behind = not_upgraded(self._book.active(room))
        if behind:
            raise UsageError(
                "this room was made before rooms had admins; "
                f"a device of {', '.join(behind)} has not been updated for them yet. "
                "It updates when it next connects: try again then"
            )

    async def refresh_leaves(self) -> None:
        """Self-update in every room where our leaf predates the room profile capability,
        so that its admins can set a profile (errors become events; the next connection
        tries again)."""
        for room in list(self._book.rooms.values()):
            group = room.group
            if room.removed or group is None:
                continue
            if not lacks_capabilities(group, group.own_leaf_index):
                continue
            try:
                await self._membership.self_update(room, only_old_leaf=True)
            except (SottovoceError, UsageError) as exc:
                self._book.emit(ErrorEvent(
                    code=getattr(exc, "code", "error"),
                    message=f"room {room.room_id}: could not refresh our leaf: {exc}",
                ))

    async def promote(self, room: Room, username: str) -> CommitResult | None:
        if username not in roles(room):
            raise UsageError(f"'{username}' is not a member of this room")
        return await self.change(room, lambda p, _: p.with_admins({*p.admins, username}))

    async def demote(self, room: Room, username: str) -> CommitResult | None:
        if username not in roles(room):
            raise UsageError(f"'{username}' is not a member of this room")
        return await self.change(room, lambda p, _: p.with_admins(set(p.admins) - {username}))

    async def rename(self, room: Room, name: str) -> CommitResult | None:
        """Commit a new shared name (admins only), keeping the topic."""
        if shared_names(room) == RoomNames(name, topic(room)):
            return None
        return await self._set_names(room, lambda: RoomNames(name, topic(room)),
                                     "rename the room")

    async def set_topic(self, room: Room, text: str) -> CommitResult | None:
        """Commit a new shared topic (admins only), keeping the name (this device's
        label becomes the shared name of a room that had none)."""
        if shared_names(room) == RoomNames(display_name(room), text):
            return None
        return await self._set_names(room, lambda: RoomNames(display_name(room), text),
                                     "set the room's topic")

    async def _set_names(
        self, room: Room, names: Callable[[], RoomNames], what: str
    ) -> CommitResult | None:
        """Seal ``names()`` under a fresh name key of the epoch the commit is made in:
        every member of that epoch derives it; one removed before cannot. Members'
        pending proposals (a leaver's removal) are committed first, on their own."""
        self._require_admin(room, what)
        await self.commit_pending(room, spread=False)

        def sealed(current: RoomProfile, group: Group) -> RoomProfile:
            key = derived_key(group, secrets.token_bytes(KEY_ID_BYTES))
            return current.with_sealed(seal(group.group_id, names(), key))

        return await self.change(room, sealed, what)

    # --- leaving ------------------------------------------------------------------------

    async def leave(self, room: Room) -> bool:
        """Propose our own removal, wait a little for a member to commit it (proposing
        again if the epoch moved on without it), then forget the room's keys either
        way. True when the removal was committed while we waited; else the proposal
        waits for the next member to come online (it stays valid in its epoch)."""
        for _ in range(LEAVE_PROPOSALS):
            async with room.lock:
                group = self._book.active(room)
                epoch = group.epoch
                proposal = group.leave(rng=secrets.token_bytes)
            try:
                await self._link.request(
                    pr.RoomSend(
                        roomId=room.room_id, epoch=epoch, messageId=new_id(),
                        idempotencyKey=new_id(), contentType="text", ciphertext=proposal,
                        clientCreatedAtMs=now_ms(),
                    ),
                    frozenset({ev.SEND_ACK}),
                    timeout=ROOM_REQUEST_TIMEOUT_S,
                )
            except ServerError as exc:
                if exc.code != "stale_epoch":
                    raise
            await self._book.wait(partial(_moved_on, room, epoch), LEAVE_WAIT_S)
            if room.removed or room.epoch == epoch:
                break
        done = room.removed
        room.removed, room.group = True, None
        with self._book.store.transaction():
            self._book.persist(room)
        return done

    def _commit_soon(self, room: Room) -> None:
        self._book.spawn(self.commit_pending(room))

    async def commit_pending(self, room: Room, *, spread: bool = True) -> CommitResult | None:
        """Commit the proposals members sent this epoch (spread so one member wins,
        unless we are about to send and must commit them first)."""
        if spread:
            await asyncio.sleep(random.random() * 0.2)  # noqa: S311 - spread the herd

        def build(group: Group) -> Plan | None:
            pending = group.pending_proposals
            if not pending or any(
                isinstance(q.proposal, Remove) and q.proposal.removed == group.own_leaf_index
                for q in pending
            ):
                return None  # nothing to do, or we are leaving too: another member commits
            # An account that leaves takes its other devices along (protocol/room_rules.py).
            leaving = {
                who[0] for q in pending
                if isinstance(q.proposal, Remove) and q.proposal.removed == q.sender.index
                and (who := device_of(_leaf_credential(group, q.sender.index))) is not None
            }
            proposed = {q.proposal.removed for q in pending if isinstance(q.proposal, Remove)}
            along = [
                Remove(removed=m.index) for m in group.members()
                if (d := device_of(m.credential)) is not None and d[0] in leaving
                and m.index not in proposed
            ]
            bundle = group.commit(
                rng=secrets.token_bytes, now_ms=now_ms(), authenticated_data=self._head(),
                proposals=along,
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
