"""Room frames in serverSeq order: gap detection, room.sync, and the start of a rejoin.

    room frame (inside the client's batch transaction, no awaits)
        ──► room unknown yet: kept (ROOM_EARLY_FRAMES) until we join it
        ──► at or before our position: a replay, dropped
        ──► rejoining: held for the rejoin
        ──► a gap before it (a serverSeq past the next one, or a commit or message
            of a later epoch than ours: a commit frame was lost)
              ──► catching up: hold every frame of the room (by serverSeq)
              ──► room.sync after our position ──► its frames are held too
              ──► SyncedMark queued behind them ──► play held frames in serverSeq
                  order (repeats collapse by seq, messages by messageId); again
                  while upToServerSeq < latestServerSeq
        ──► otherwise: its kind's handler (commit, message, notice), position moves
    a frame of an epoch we never entered after a complete sync ──► rejoin
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from sottovoce.client.errors import NotConnected
from sottovoce.client.events import ClientEvent, ErrorEvent
from sottovoce.client.ports import Link
from sottovoce.client.rooms.book import RoomBook
from sottovoce.client.rooms.model import (
    ROOM_REQUEST_TIMEOUT_S,
    Device,
    Room,
    RoomFrame,
    SyncedMark,
    parse_room_frame,
)
from sottovoce.errors import RemoteError, SottovoceError, UsageError
from sottovoce.limits import ROOM_EARLY_FRAMES
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.fields import ProtocolError, req_int

#: How long a loser waits for the winning commit to arrive before asking room.sync.
CATCH_UP_WAIT_S = 3.0
#: room.sync rounds in a row without progress before a catch-up gives up (a server
#: that keeps answering without the missing frames must not keep us looping).
ROOM_SYNC_ROUNDS = 3
#: Rejoins of one room per session after commits we could not follow: a server that
#: keeps sending commits no member can process must not make us commit forever.
ROOM_RECOVERIES = 3

#: What one kind of frame does to its room (inside the batch transaction).
FrameHandler = Callable[[Room, RoomFrame, list[ClientEvent]], None]


def _marked_after(room: Room, marks: int) -> Callable[[], bool]:
    """A room.sync round (the one queued after ``marks`` rounds) has been played."""
    return lambda: room.sync_marks > marks


class RoomSync:
    """Orders every room's frames and fills the gaps; see the module docstring."""

    def __init__(
        self, book: RoomBook, link: Link, queue_marker: Callable[[SyncedMark], None]
    ) -> None:
        self._book, self._link, self._queue_marker = book, link, queue_marker
        #: Frames of rooms we are not in yet (a Welcome may still come), by room.
        self._early: dict[str, list[RoomFrame]] = {}
        #: Gaps (a frame of a later epoch than ours) filled by room.sync.
        self.catch_ups = 0
        # Set by wire(): the parts that handle frames and rejoin need this one.
        self._kinds: Mapping[str, FrameHandler]
        self._rejoin: Callable[[Room, str], Coroutine[Any, Any, None]]

    def wire(
        self,
        *,
        kinds: Mapping[str, FrameHandler],
        rejoin: Callable[[Room, str], Coroutine[Any, Any, None]],
    ) -> None:
        """What each kind of frame does, and how a room we cannot follow is rejoined."""
        self._kinds = kinds
        self._rejoin = rejoin

    # =========================================================================
    # Frames in serverSeq order (inside the client's batch transaction)
    # =========================================================================

    def accept_frame(self, data: dict[str, Any], events: list[ClientEvent]) -> None:
        """One ``sottovoce.room.frame``."""
        frame = parse_room_frame(data, events, "frame")
        if frame is None:
            return
        room = self._book.rooms.get(frame.room_id)
        if room is None:
            early = self._early.setdefault(frame.room_id, [])
            if len(early) < ROOM_EARLY_FRAMES:
                early.append(frame)
            return
        self.apply(room, frame, events)

    def play_early(self, room: Room, events: list[ClientEvent]) -> None:
        """We just joined ``room``: play the frames that came before we knew it."""
        for frame in self._early.pop(room.room_id, []):
            self.apply(room, frame, events)

    def apply(self, room: Room, frame: RoomFrame, events: list[ClientEvent]) -> None:
        if frame.server_seq <= room.last_seq:
            return  # replayed or already covered (e.g. before our Welcome)
        if room.recovering:
            self._hold_for_rejoin(room, frame)
            return
        if room.catching_up or self._is_gap(room, frame):
            self._hold(room, frame)
            return
        self._apply_now(room, frame, events)

    def _apply_now(self, room: Room, frame: RoomFrame, events: list[ClientEvent]) -> None:
        """Process one frame (the next one in serverSeq order) and move the position."""
        self._book.touched.add(room.room_id)
        group = room.group
        if (
            frame.kind in ("commit", "message")
            and group is not None and group.is_active and not room.removed
            and frame.epoch > group.epoch
        ):
            # Nothing fills the gap (a complete sync did not): the room is in an epoch
            # we never entered. Rejoin rather than fail every later frame.
            self.start_recovery(room, f"the room is at epoch {frame.epoch}, we at {group.epoch}")
            self._hold_for_rejoin(room, frame)
            return
        handler = self._kinds.get(frame.kind)
        if handler is not None:
            handler(room, frame, events)
        room.last_seq = frame.server_seq
        self._book.dirty.add(room.room_id)
        self._book.acks[room.room_id] = frame.server_seq

    def _is_gap(self, room: Room, frame: RoomFrame) -> bool:
        """A frame is missing before this one: a commit or message of a later epoch
        than ours (a commit is missing), or a serverSeq past the next one (a room's
        serverSeqs are contiguous and every member gets every one from its join on,
        so any frame, even one of our own epoch, was lost)."""
        group = room.group
        if group is None or room.removed or not group.is_active:
            return False
        if frame.server_seq > room.last_seq + 1:
            return True
        return frame.kind in ("commit", "message") and frame.epoch > group.epoch

    def _hold(self, room: Room, frame: RoomFrame) -> None:
        """Keep ``frame`` until room.sync filled the gap (see :meth:`accept_synced`)."""
        self._book.touched.add(room.room_id)
        if frame.server_seq not in room.held:
            if len(room.held) >= ROOM_EARLY_FRAMES:
                room.held_overflow = True  # not acked: the next sync round fetches it again
            else:
                room.held[frame.server_seq] = frame
        if not room.catching_up:
            room.catching_up = True
            self.catch_ups += 1
            self._book.after.append(lambda: self._book.spawn(self._fill_gap(room)))

    def accept_synced(self, mark: SyncedMark, events: list[ClientEvent]) -> None:
        """Every frame of one room.sync round was accepted: play the held ones in order.

        If the sync did not reach the room's latest frame (it sends at most
        ROOM_SYNC_BATCH), only frames up to ``up_to`` play and the sync task asks
        again from there; frames past it may have holes (live ones held meanwhile).
        """
        room = self._book.rooms.get(mark.room_id)
        if room is None:
            return
        room.sync_marks += 1
        if not room.catching_up:
            return
        self._book.touched.add(room.room_id)
        complete = mark.up_to >= mark.latest and not room.held_overflow
        room.held_overflow = False
        for seq in sorted(room.held):
            if not complete and seq > mark.up_to:
                break
            frame = room.held.pop(seq)
            if seq <= room.last_seq:
                continue  # the same frame live and by sync
            if self._is_gap(room, frame) and not complete:
                room.held[seq] = frame
                break
            # After a complete sync a remaining gap cannot be filled (the commit was
            # refused): the frame is processed as before and reports its error.
            self._apply_now(room, frame, events)
        if complete:
            room.held.clear()
            room.catching_up = False

    # =========================================================================
    # room.sync
    # =========================================================================

    async def sync(self, room: Room) -> None:
        """Fetch the room's frames after our position (room.sync) and play them in order."""
        if room.catching_up:
            # A sync task runs already: wait for it.
            await self._book.wait(lambda: not room.catching_up, CATCH_UP_WAIT_S * 2)
            return
        room.catching_up = True
        try:
            await self._sync_room(room)
        except (SottovoceError, ProtocolError):
            room.catching_up = False

    async def catch_up(self, room: Room, *, epoch: int, seq: int | None = None) -> None:
        """Wait until the room reached ``epoch`` or processed frame ``seq`` (the winning
        commit); room.sync if that does not happen soon."""

        def there() -> bool:
            return room.epoch >= epoch or (seq is not None and room.last_seq >= seq)

        if await self._book.wait(there, CATCH_UP_WAIT_S):
            return
        await self.sync(self._book.get(room.room_id))
        await self._book.wait(there, CATCH_UP_WAIT_S)

    async def _fill_gap(self, room: Room) -> None:
        """The sync task of a room in catch-up: room.sync rounds until the gap is gone."""
        try:
            await self._sync_room(room)
        except (SottovoceError, UsageError, ProtocolError) as exc:
            self._book.emit(
                ErrorEvent(
                    code=getattr(exc, "code", "room_sync_failed"),
                    message=f"room {room.room_id}: catching up failed: {exc}",
                )
            )

    async def _sync_room(self, room: Room) -> None:
        """room.sync from our position, round after round, until caught up.

        Each round's frames arrive as room frames (held, since the room is
        catching up); a :class:`SyncedMark` queued behind them plays them.
        """
        try:
            await self._sync_rounds(room)
        except Exception:
            # Give up for now: held frames were never acked, so the next resume
            # replays them, and the next frame of a later epoch starts over.
            room.held.clear()
            room.catching_up = room.held_overflow = False
            raise

    async def _sync_rounds(self, room: Room) -> None:
        rounds = 0
        while room.catching_up:
            rounds += 1
            if rounds > ROOM_SYNC_ROUNDS:
                raise RemoteError("room.sync made no progress")
            before, marks = room.last_seq, room.sync_marks
            try:
                _, data = await self._link.request(
                    pr.RoomSync(roomId=room.room_id, afterServerSeq=before),
                    frozenset({pr.ROOM_SYNCED}),
                    timeout=ROOM_REQUEST_TIMEOUT_S,
                )
            except NotConnected:
                await self._link.wait_up(ROOM_REQUEST_TIMEOUT_S)
                continue
            up_to = req_int(data, "upToServerSeq")
            latest = data.get("latestServerSeq")
            if not isinstance(latest, int) or isinstance(latest, bool) or latest < up_to:
                latest = up_to  # a relay without latestServerSeq: one round is all
            self._queue_marker(SyncedMark(room_id=room.room_id, up_to=up_to, latest=latest))
            await self._book.wait(_marked_after(room, marks), ROOM_REQUEST_TIMEOUT_S)
            if room.last_seq > before:
                rounds = 0  # progress: keep going as long as it takes

    # =========================================================================
    # A room we cannot follow: hold its frames and rejoin (client/rooms/recovery.py)
    # =========================================================================

    def _hold_for_rejoin(self, room: Room, frame: RoomFrame) -> None:
        self._book.touched.add(room.room_id)
        if frame.server_seq not in room.held and len(room.held) < ROOM_EARLY_FRAMES:
            room.held[frame.server_seq] = frame  # more: not acked, room.sync brings them

    def start_recovery(self, room: Room, reason: str, refused: Iterable[Device] = ()) -> None:
        """Rejoin ``room`` after this batch (once at a time, ROOM_RECOVERIES per session)."""
        me = self._book.me
        room.refused.update(d for d in refused if d != me)
        if room.recovering or room.removed or room.recoveries >= ROOM_RECOVERIES:
            return
        room.recovering = True
        room.recoveries += 1
        self._book.after.append(lambda: self._book.spawn(self._rejoin(room, reason)))
