"""Replay: what a device missed, read from storage in order (docs/protocol.md §Delivery).

::

    ksmpv3.resume{n} ──► inbox frames after n ──► each room after the device's read
                         position ──► sottovoce.replay.done ──► live (buffered frames)

A replay costs the server far more than the resume that asks for it, so one
device gets one at a time: a new resume supersedes the running replay (it
restarts from the new position, but never resends what this connection already
carried: those frames are on the wire, in order), and a device's replays past
``resume_burst`` wait ``resume_interval_ms`` each, over all its connections.

:meth:`Replay.catch_up` reads storage again without announcing it: the fan-out
calls it when this node may have missed live frames. Replay reads storage and
writes to the session only; it needs nothing of delivery, rooms or the app.
"""

from __future__ import annotations

import asyncio
from dataclasses import KW_ONLY, InitVar, dataclass, field

from sottovoce.limits import REPLAY_BATCH, ROOM_SYNC_BATCH
from sottovoce.protocol.events import REPLAY_DONE
from sottovoce.server.errors import WireFailure
from sottovoce.server.frames import inbox_frame_text
from sottovoce.server.logs import JsonLogger
from sottovoce.server.metrics import Metrics
from sottovoce.server.ratelimit import KeyedBuckets
from sottovoce.server.session import Session
from sottovoce.server.storage.base import Storage
from sottovoce.server.storage.roombase import RoomStorage, room_frame_text


async def drain(session: Session, budget: int) -> None:
    """Wait until the session's write buffer is back under ``budget`` bytes (or it closed)."""
    await asyncio.sleep(0)
    while not session.closed and session.buffered() > budget:
        await asyncio.sleep(0.002)


@dataclass(eq=False, repr=False)
class Replay:
    storage: Storage
    rooms: RoomStorage | None
    _: KW_ONLY
    #: Bytes written before waiting for the socket to drain (a quarter of its buffer).
    budget: int
    resume_interval_ms: InitVar[int]
    resume_burst: InitVar[int]
    metrics: Metrics
    log: JsonLogger
    _resumes: KeyedBuckets = field(init=False)

    def __post_init__(self, resume_interval_ms: int, resume_burst: int) -> None:
        self._resumes = KeyedBuckets(1000 / resume_interval_ms, resume_burst)

    def resume(self, session: Session, last_seq: int, rid: str | None) -> None:
        key = session.key
        if session.replay_task is not None:
            session.replay_task.cancel()  # superseded: one replay per connection
        again = session.resumed
        session.resumed = True
        session.live = False
        session.drop_held()  # all committed: the replay reads them
        if again:
            # What this connection carried is on its way to the client, in order: a
            # repeated resume never resends it (room frames likewise, by room_sent).
            session.last_sent = max(last_seq, session.last_sent)
        else:
            session.last_sent = last_seq  # rooms replay from the device's read positions
        wait = self._resumes.reserve(key)
        metrics = self.metrics
        metrics.resumes += 1
        if wait:
            metrics.resumes_deferred += 1
        task = asyncio.get_running_loop().create_task(self._replay(session, rid, delay_ms=wait))
        session.replay_task = task

    def catch_up(self, session: Session) -> None:
        """Re-read storage after ``session.last_sent`` without a replay.done frame.

        The fan-out calls this when this node may have missed live frames (its
        NATS connection dropped): the durable inbox covers the gap.
        """
        if session.closed or not session.resumed:
            return  # not resumed yet: its resume will read storage
        if not session.live:
            session.overflow = True  # a replay is running: make it read storage again
            return
        session.live = False
        task = asyncio.get_running_loop().create_task(self._replay(session, None, announce=False))
        session.replay_task = task

    async def _replay(
        self, session: Session, rid: str | None, *, announce: bool = True, delay_ms: int = 0
    ) -> None:
        user, device = session.key
        budget = self.budget
        replayed = 0
        try:
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)  # this device's turn (resume_interval_ms)
            while not session.closed:
                rows = await self.storage.read_inbox(
                    user, device, session.last_sent, REPLAY_BATCH
                )
                written = 0
                for seq, env in rows:
                    if seq <= session.last_sent:
                        continue
                    text = inbox_frame_text(seq, env)
                    session.write(text)
                    session.last_sent = seq
                    written += len(text)
                    replayed += 1
                    if written > budget:
                        written = 0
                        await drain(session, budget)
                if len(rows) == REPLAY_BATCH:
                    await drain(session, budget)
                    continue
                replayed += await self._replay_rooms(session)
                if session.overflow:
                    # Live frames were dropped from the buffer: they are stored, read again.
                    session.drop_held()
                    self.metrics.replay_rereads += 1
                    continue
                break
            if session.closed:
                return
            # No await from here on: switching to live cannot miss a frame.
            if announce:
                session.reply(REPLAY_DONE, {"upToGlobalInboxSeq": session.last_sent}, rid)
            session.live = True
            pending = sorted(session.pending)
            session.pending.clear()
            session.pending_bytes = 0
            for seq, text in pending:
                session.deliver(seq, text)
            room_pending, session.room_pending = session.room_pending, []
            for room_id, seq, text in room_pending:  # per room already in serverSeq order
                session.deliver_room(room_id, seq, text)
            self.metrics.deliveries_replay += replayed
            self.log.debug(
                "resume.done", userId=user, deviceId=device, count=replayed,
                seq=session.last_sent,
            )
        except WireFailure as exc:
            session.error(exc, rid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # our bug; the client may resume again
            self.log.error("resume.failed", error=type(exc).__name__)
            session.error(WireFailure("internal", "replay failed", retryable=True), rid)

    async def _replay_rooms(self, session: Session) -> int:
        """After the inbox replay: each room's frames after the device's read position."""
        st = self.rooms
        if st is None:
            return 0
        user, device = session.key
        budget = self.budget
        sent = session.room_sent
        n = 0
        for pos in await st.room_positions(user, device):
            after = max(pos.read_seq, sent.get(pos.room_id, 0))
            while not session.closed:
                rows = await st.room_replay(pos.room_id, after, pos.until_seq, ROOM_SYNC_BATCH)
                written = 0
                for seq, env in rows:
                    if seq <= sent.get(pos.room_id, 0):
                        continue
                    text = room_frame_text(env)
                    session.write(text)
                    sent[pos.room_id] = seq
                    n += 1
                    written += len(text)
                    if written > budget:
                        written = 0
                        await drain(session, budget)
                if len(rows) < ROOM_SYNC_BATCH:
                    break
                after = rows[-1][0]
                await drain(session, budget)
        self.metrics.room_deliveries_replay += n
        return n
