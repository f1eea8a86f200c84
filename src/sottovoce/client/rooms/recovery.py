"""Recovery: a member that cannot follow a commit rejoins, so it is never wedged for good.

    commit refused (unverifiable, wrong PSK, ...)  ─┐   or a frame of an epoch we
    and the server took it: the room moved on       ├── never entered, after a
                                                    │   complete room.sync
                                                    ▼   (RoomSync.start_recovery)
    recovering: hold the room's frames ──► groupinfo.get {roomId} (members only)
      ──► external commit removing our old leaf (RFC 9420 §12.2 resync), no token
      ──► room.commit (roster unchanged; the server checks it like any external
          commit) ──► commit_conflict: again on the newer GroupInfo
      ──► our group = the new one, position = our commit; held frames after it play
      ──► commit a Remove of every device the refused commit added ──► RoomRecovered

Frames between the last one we read and our rejoin stay unreadable to us (their
epochs' keys were never ours); the event says how many.
"""

from __future__ import annotations

from functools import partial

from sottovoce.client.errors import ServerError
from sottovoce.client.events import (
    ClientEvent,
    ErrorEvent,
    RoomMembershipChanged,
    RoomRecovered,
)
from sottovoce.client.ids import new_id
from sottovoce.client.ports import Link
from sottovoce.client.rooms.book import RoomBook, request_commit
from sottovoce.client.rooms.membership import Membership
from sottovoce.client.rooms.model import ROOM_REQUEST_TIMEOUT_S, Room
from sottovoce.client.rooms.sync import RoomSync
from sottovoce.errors import RemoteError, SottovoceError, UsageError
from sottovoce.limits import MAX_ROOM_GROUP_INFO_BYTES, ROOM_COMMIT_RETRIES
from sottovoce.mls.group import Group
from sottovoce.mls.public import check_group_info
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.fields import ProtocolError, req_b64, req_int


class Recovery:
    """Rejoins rooms this device fell out of; see the module docstring."""

    def __init__(
        self, book: RoomBook, link: Link, sync: RoomSync, membership: Membership
    ) -> None:
        self._book, self._store, self._link = book, book.store, link
        self._sync, self._membership = sync, membership

    async def recover(self, room: Room, reason: str) -> None:
        """Rejoin ``room`` (started by RoomSync.start_recovery once the batch is durable)."""
        try:
            rejoined = await self._rejoin(room)
        except (SottovoceError, UsageError, ProtocolError) as exc:
            # Held frames were never acked: the next resume brings them, and the next
            # frame we cannot follow starts over (up to ROOM_RECOVERIES).
            room.recovering = False
            room.held.clear()
            self._book.emit(
                ErrorEvent(
                    code=getattr(exc, "code", "room_recovery_failed"),
                    message=f"room {room.room_id}: {reason}; rejoining failed: {exc}",
                )
            )
            return
        if rejoined is None:
            return  # the server says we are no longer a member: nothing to rejoin
        removed: list[str] = []
        for user, device in sorted(room.refused):
            if (user, device) not in set(room.members()):
                continue
            try:
                done = await self._membership.commit(
                    room, partial(self._membership.remove_plan, room, username=user, device=device)
                )
            except (SottovoceError, UsageError) as exc:
                self._book.emit(
                    ErrorEvent(
                        code=getattr(exc, "code", "error"),
                        message=f"room {room.room_id}: could not remove {user}/{device}: {exc}",
                    )
                )
                continue
            if done is not None:
                removed.append(f"{user}/{device}")
        room.refused.clear()
        skipped = rejoined
        self._book.emit(
            RoomRecovered(
                code="room_recovered",
                message=(
                    f"room {room.room_id}: {reason}; this device rejoined at epoch "
                    f"{room.epoch}" + (f", {skipped} earlier frame(s) stay unreadable"
                                       if skipped else "")
                    + (f", removed {', '.join(removed)}" if removed else "")
                ),
                room_id=room.room_id,
                epoch=room.epoch,
                skipped=skipped,
                removed=tuple(removed),
            )
        )

    async def _rejoin(self, room: Room) -> int | None:
        """Rejoin by an external commit on the room's current GroupInfo; returns how many
        frames we skip (``None`` if we are no longer a member)."""
        async with room.lock:
            for attempt in range(ROOM_COMMIT_RETRIES):
                try:
                    _, data = await self._link.request(
                        pr.GroupInfoGet(roomId=room.room_id),
                        frozenset({pr.ROOM_GROUPINFO}),
                        timeout=ROOM_REQUEST_TIMEOUT_S,
                    )
                except ServerError as exc:
                    if exc.code != "not_member":
                        raise
                    self._left(room)
                    return None
                epoch = req_int(data, "epoch")
                info = req_b64(data, "groupInfo", max_bytes=MAX_ROOM_GROUP_INFO_BYTES)
                old = self._own_leaf_in(info)
                group, commit = self._book.external_join(
                    room.room_id, info, epoch, remove_leaf=old
                )
                request = pr.RoomCommit(
                    roomId=room.room_id, epoch=epoch, messageId=new_id(),
                    idempotencyKey=new_id(), commit=commit, groupInfo=group.group_info(),
                )
                reply = await request_commit(self._link, request, attempt)
                if reply is None:
                    continue
                return self._rejoined(room, group, req_int(reply, "serverSeq"))
        raise ServerError("commit_conflict", "the room kept changing; try again", retryable=True)

    def _own_leaf_in(self, group_info: bytes) -> int:
        """Our leaf in a GroupInfo's tree (the one a resync removes)."""
        view = check_group_info(group_info)
        mine = self._book.credential()
        for index, leaf in enumerate(view.leaves):
            if leaf is not None and leaf.credential == mine:
                return index
        raise RemoteError("this device is not in the room's group any more")

    def _rejoined(self, room: Room, group: Group, seq: int) -> int:
        """Our resync commit is frame ``seq``: continue from there with ``group``."""
        skipped = max(0, seq - room.last_seq - 1)
        events: list[ClientEvent] = []
        with self._store.transaction():
            room.group, room.last_seq = group, seq
            room.recovering = room.catching_up = room.held_overflow = False
            held, room.held = sorted(room.held.items()), {}
            self._book.touched.add(room.room_id)
            self._book.persist(room, seq=seq)
            self._book.acks[room.room_id] = seq
            for at, frame in held:
                if at > seq:
                    self._sync.apply(room, frame, events)
        self._book.emit_all(events)
        self._book.notify()
        return skipped

    def _left(self, room: Room) -> None:
        """The server no longer counts us in the room (a commit we could not read removed
        us): the room is read-only history now."""
        room.removed, room.recovering = True, False
        room.held.clear()
        with self._store.transaction():
            self._book.persist(room)
        self._book.emit(
            RoomMembershipChanged(
                room_id=room.room_id, epoch=room.epoch, committer="", self_removed=True
            )
        )
