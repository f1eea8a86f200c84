"""The opt-in recorder device: an ordinary account and device that joins room calls and
records them, only where a room asked for it and every participant consents.

::

    a call starts in room R (its start signal) ──► R's recorder setting (room.info)
        off ──► never joins
        on  ──► joins the call: a visible member of the call's MLS group (device id
                "recorder": every participant's list marks it) ──► asks to record,
                under the rule every participant follows: all present say yes, or
                no recording (any no, or 20 s of silence)
            ──► writes what it receives sealed with its store's key
                (DATA_DIR/recordings/<room>-<call>.rec) ──► leaves when the others
                have left, or when the recorder stops

The operator runs it beside the server (``sottovoce recorder``); a room's admin invites
its account like any member and turns the room's recorder setting on. It sends no
media of its own and consents when someone else asks to record. Nothing here is
trusted by the others beyond any member: the recording needs their consent, and the
server refuses it SFU grants in rooms whose setting is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sottovoce.calls.room_effects import (
    Joined,
    JoinRefused,
    Left,
    ParticipantsChanged,
    RecordingRefused,
    RecordingState,
)
from sottovoce.errors import SottovoceError
from sottovoce.protocol.fields import Device
from sottovoce.protocol.rooms import RECORDER_DEVICE_ID

if TYPE_CHECKING:
    from sottovoce.client.calls.room_calls import RoomCalls
    from sottovoce.client.calls.room_controller import RoomCallController
    from sottovoce.client.client import Client

log = logging.getLogger(__name__)

#: A call that does not let the recorder in within this long is given up (it ended).
RECORDER_JOIN_TIMEOUT_S = 20.0


def is_recorder(device: Device) -> bool:
    """Whether a participant is a recorder device (a label every client shows; what a
    recorder may record still needs every participant's consent)."""
    return device[1] == RECORDER_DEVICE_ID


def recording_path(out_dir: Path, room_id: str, call_id: bytes) -> Path:
    return out_dir / f"{room_id.removeprefix('room:')}-{call_id.hex()}.rec"


#: How often, in a call, it reads the room's setting again (turned off: it leaves).
RECORDER_RECHECK_S = 5.0
#: The participants must stay the same this long before the recorder asks (a device
#: that joins while consent is asked was never asked, and stops the recording).
RECORDER_SETTLE_S = 1.5


@dataclass(slots=True)
class _Attended:
    ctl: RoomCallController
    path: Path
    deadline: float
    joined: bool = False
    #: The participants when they last changed, and when.
    seen: frozenset[Device] = frozenset()
    since: float = 0.0
    #: The participants it last asked (it asks again only when they change).
    asked: frozenset[Device] | None = None
    #: A request of its own is out (no answer yet).
    pending: bool = False
    recording: bool = False
    #: When it last read the room's recorder setting.
    checked: float = 0.0


@dataclass(eq=False, repr=False)
class Recorder:
    """Joins and records the calls of the rooms that opted in (see the module docstring).

    ``client`` is connected and ``hub`` is its room calls, started with a ``record_to``
    (so that they hold the store's key); ``say`` reports each step to the operator.
    """

    client: Client
    hub: RoomCalls
    out_dir: Path
    _: dataclasses.KW_ONLY
    say: Callable[[str], None] = lambda _: None
    poll_s: float = 0.2
    _handled: set[tuple[str, bytes]] = dataclasses.field(init=False, default_factory=set)
    attending: dict[str, _Attended] = dataclasses.field(init=False, default_factory=dict)
    #: The sealed recordings written, in order.
    recordings: list[Path] = dataclasses.field(init=False, default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        """Attend calls until ``stop`` is set, then leave every call."""
        self.out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            while not stop.is_set():
                await self.step()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_s)
        finally:
            for room_id in list(self.attending):
                await self._leave(room_id)

    async def step(self) -> None:
        """Join the calls newly started in opted-in rooms; follow the ones attended."""
        me = self.hub.me
        for room_id, seen in list(self.hub.seen.items()):
            key = (room_id, seen.call_id)
            if key in self._handled or room_id in self.hub.active or seen.starter == me:
                continue
            self._handled.add(key)
            await self._consider(room_id, seen.call_id)
        for room_id, attended in list(self.attending.items()):
            await self._follow(room_id, attended)

    async def _consider(self, room_id: str, call_id: bytes) -> None:
        try:
            state = await self.client.rooms.info(room_id)
        except SottovoceError as exc:
            self.say(f"{room_id}: cannot read the room's settings ({exc}); not joining")
            return
        if state.get("recorder") is not True:
            self.say(f"{room_id}: a call started; the room's recorder setting is off: "
                      "not joining")
            return
        path = recording_path(self.out_dir, room_id, call_id)
        self.hub.options = dataclasses.replace(self.hub.options, record_to=path)
        try:
            ctl = self.hub.join(room_id)
        except SottovoceError as exc:
            self.say(f"{room_id}: cannot join the call ({exc})")
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.attending[room_id] = _Attended(ctl, path, now + RECORDER_JOIN_TIMEOUT_S,
                                            checked=now)
        self.say(f"{room_id}: joining the call (the room's recorder setting is on)")

    async def _follow(self, room_id: str, attended: _Attended) -> None:
        ctl = attended.ctl
        me = ctl.call.me
        now = asyncio.get_running_loop().time()
        while not ctl.events.empty():
            event = ctl.events.get_nowait()
            if isinstance(event, (Joined, ParticipantsChanged)) and me in ctl.participants:
                attended.joined = True
            if isinstance(event, ParticipantsChanged):
                attended.seen, attended.since = frozenset(event.participants), now
                if attended.joined and attended.seen <= {me}:
                    self.say(f"{room_id}: everyone else left the call")
                    await self._leave(room_id)
                    return
            elif isinstance(event, RecordingState):
                if event.by == me:
                    attended.pending, attended.recording = False, event.on
                state = "on" if event.on else "off"
                self.say(f"{room_id}: REC {state} ({event.by[0]}/{event.by[1]})")
            elif isinstance(event, RecordingRefused):
                attended.pending = False
                self.say(f"{room_id}: recording refused: "
                          + (", ".join(f"{u}/{d}" for u, d in event.refused_by)
                             or "nobody answered in time"))
            elif isinstance(event, JoinRefused):
                self.say(f"{room_id}: the call refused the recorder ({event.error})")
                await self._leave(room_id)
                return
            elif isinstance(event, Left):
                await self._leave(room_id)
                return
        if now - attended.checked >= RECORDER_RECHECK_S:
            attended.checked = now
            with contextlib.suppress(SottovoceError):  # unreadable now: read it next time
                if (await self.client.rooms.info(room_id)).get("recorder") is not True:
                    self.say(f"{room_id}: the room's recorder setting was turned off: "
                              "leaving the call")
                    await self._leave(room_id)
                    return
        if not attended.joined:
            if now > attended.deadline:
                self.say(f"{room_id}: the call did not let the recorder in; giving up")
                await self._leave(room_id)
            return
        # Ask once the participants have settled, and again when they change (a joiner
        # stops a recording; a refusal stands until someone new is in the call).
        if (
            not attended.pending
            and not attended.recording
            and len(attended.seen) >= 2
            and attended.seen != attended.asked
            and now - attended.since >= RECORDER_SETTLE_S
        ):
            attended.asked, attended.pending = attended.seen, True
            try:
                ctl.request_recording()
            except SottovoceError as exc:
                attended.pending = False
                self.say(f"{room_id}: cannot ask for recording now ({exc})")
                return
            self.say(f"{room_id}: in the call; asked every participant to consent to "
                      "recording")

    async def _leave(self, room_id: str) -> None:
        attended = self.attending.get(room_id)
        if attended is None:
            return
        recording = attended.ctl.recording
        if recording is not None and not recording.closed:
            # Stopped before leaving: "recording off" goes into the room's audit trail.
            with contextlib.suppress(SottovoceError):
                attended.ctl.stop_recording()
        try:
            await self.hub.end(room_id)
        except SottovoceError as exc:  # pragma: no cover - end() suppresses its own
            log.warning("recorder: leaving a call failed: %s", type(exc).__name__)
        if attended.path.exists():
            self.recordings.append(attended.path)
            self.say(f"{room_id}: recording sealed in {attended.path}")
        del self.attending[room_id]  # last: once it is gone, the call is wholly left
