"""One device's calls: the sans-IO engine, the media of the current call, its timer.

    user ──dial/accept/hangup──►┐                 ┌──► send_signals(batch)   (E2EE, ephemeral)
    peer ──receive(bytes)──────►│  CallMachine    ├──► record_missed(effect) (E2EE, durable)
    media ──up/down, SDP ready─►│  (calls/)       ├──► media worker: MediaSession per call
    timer ──tick──────────────►┘                 └──► events (for the UI)

The controller is the whole boundary a client needs: it is given two
coroutines -- one that encrypts each :class:`SendSignal` for its (user,
device) and sends it ephemerally, one that stores a missed-call record as a
durable message -- and optionally a third that returns current TURN
credentials from the server; it hands decrypted call payloads to :meth:`receive`.
Every machine input runs synchronously on the event loop; media work runs in
one worker task per controller, in order.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

from sottovoce.calls.effects import (
    AddCandidates,
    ApplyAnswer,
    CallState,
    CreateDescription,
    Effect,
    MediaRole,
    PeerMediaState,
    PeerRinging,
    RecordingPermission,
    RecordingRequested,
    RecordMissedCall,
    SendSignal,
    SetLocalMedia,
    StateChanged,
    StopMedia,
)
from sottovoce.calls.machine import CallMachine, CallRecord
from sottovoce.client.calls.errors import MediaError
from sottovoce.client.calls.media import (
    CallStats,
    IceConfig,
    MediaDown,
    MediaEvent,
    MediaProblem,
    MediaSession,
    MediaUp,
    TurnServer,
)
from sottovoce.client.calls.sources import MediaSpec
from sottovoce.crypto.rng import Random
from sottovoce.errors import SottovoceError
from sottovoce.limits import CALL_RING_TIMEOUT_MS

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True, kw_only=True)
class SignalFailed:
    """For the UI: call signals could not leave (``recipient_offline``: no device of the
    peer is online; ``not_connected``: we are offline). The engine's timers end the
    call if it mattered; a UI may say why at once."""

    code: str


CallEvent = (
    StateChanged
    | PeerRinging
    | PeerMediaState
    | RecordingRequested
    | RecordingPermission
    | MediaProblem
    | SignalFailed
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOptions:
    """How this device takes part in calls.

    ``record_to``: write the peer's audio and camera to this file, once the peer
    consents (the controller asks when the call starts). ``recording_consent``:
    what to answer when the peer asks to record us -- "ask" leaves it to the UI
    (a :class:`RecordingRequested` event), bots say "grant" or "refuse".
    """

    media: MediaSpec = field(default_factory=MediaSpec)
    ice: IceConfig = field(default_factory=IceConfig)
    record_to: Path | None = None
    recording_consent: Literal["ask", "grant", "refuse"] = "ask"
    #: How long a call rings before "no answer" (at most the engine's 45 s).
    ring_timeout_ms: int = CALL_RING_TIMEOUT_MS
    #: How a call's media are made (``MediaSession``; the browser app's page has its own).
    media_session: Callable[..., MediaSession] = MediaSession


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def rearm_timer(
    timer: asyncio.TimerHandle | None,
    deadline_ms: int | None,
    clock_ms: Callable[[], int],
    fire: Callable[[], None],
) -> asyncio.TimerHandle | None:
    """Cancel an engine's ``timer`` and, if it has a next deadline, call ``fire`` then."""
    if timer is not None:
        timer.cancel()
    if deadline_ms is None:
        return None
    delay = max(0.0, (deadline_ms - clock_ms()) / 1000)
    return asyncio.get_running_loop().call_later(delay, fire)


class CallController:
    """See the module docstring."""

    def __init__(
        self,
        *,
        user: str,
        device: str,
        send_signals: Callable[[list[SendSignal]], Awaitable[None]],
        record_missed: Callable[[RecordMissedCall], Awaitable[None]],
        options: CallOptions | None = None,
        turn_servers: Callable[[], Awaitable[tuple[TurnServer, ...]]] | None = None,
        rng: Random = secrets.token_bytes,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.options = options or CallOptions()
        self.machine = CallMachine(
            user=user, device=device, rng=rng, ring_timeout_ms=self.options.ring_timeout_ms
        )
        self.events: asyncio.Queue[CallEvent] = asyncio.Queue()
        self.media: dict[bytes, MediaSession] = {}
        #: The last media failure (for a plain message: "TURN refused the credentials").
        self.last_error: SottovoceError | None = None
        self._turn_servers = turn_servers
        self._send_signals = send_signals
        self._record_missed = record_missed
        self._clock = clock_ms
        self._outbox: asyncio.Queue[list[SendSignal] | RecordMissedCall | None] = asyncio.Queue()
        self._media_ops: asyncio.Queue[Effect | None] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._recording_asked: set[bytes] = set()
        self._workers = [
            asyncio.ensure_future(self._send_worker()),
            asyncio.ensure_future(self._media_worker()),
        ]
        self._closed = False

    # --- what the UI reads ------------------------------------------------------------

    @property
    def state(self) -> CallState:
        return self.machine.state

    @property
    def call(self) -> CallRecord | None:
        return self.machine.call

    def session(self) -> MediaSession | None:
        call = self.machine.call
        return self.media.get(call.call_id) if call else None

    async def stats(self) -> CallStats | None:
        session = self.session()
        return await session.stats() if session else None

    # --- what the user does -----------------------------------------------------------

    def dial(
        self,
        peer: str,
        peer_devices: list[str],
        *,
        own_devices: list[str] | None = None,
        video: bool | None = None,
    ) -> bytes:
        with_video = self.options.media.video if video is None else video
        call_id = self.machine.dial(
            self._clock(),
            peer=peer,
            peer_devices=peer_devices,
            own_devices=own_devices or [],
            video=with_video,
        )
        self._drain()
        return call_id

    def _act(self, action: Callable[..., object], **kwargs: object) -> None:
        """One local action: the engine at the current time, then its effects."""
        action(self._clock(), **kwargs)
        self._drain()

    def accept(self, *, own_devices: list[str] | None = None) -> None:
        self._act(self.machine.accept, own_devices=own_devices or [])

    def decline(self) -> None:
        self._act(self.machine.decline)

    def hangup(self) -> None:
        self._act(self.machine.hangup)

    def set_media(self, *, audio_muted: bool, camera_on: bool, screen_on: bool) -> None:
        self._act(
            self.machine.set_media,
            audio_muted=audio_muted,
            camera_on=camera_on,
            screen_on=screen_on,
        )

    def restart_ice(self) -> None:
        self._act(self.machine.restart_ice)

    def grant_recording(self) -> None:
        self._act(self.machine.grant_recording)

    def refuse_recording(self) -> None:
        self._act(self.machine.refuse_recording)

    # --- what the peer says -----------------------------------------------------------

    def receive(self, *, from_user: str, from_device: str, data: bytes) -> None:
        """A call payload that the E2EE layer decrypted from (``from_user``, ``from_device``).

        Raises the engine's typed errors (a late or bad signal); the state is unchanged.
        """
        self.machine.receive(self._clock(), from_user=from_user, from_device=from_device, data=data)
        self._drain()

    # --- effects ----------------------------------------------------------------------

    def _drain(self) -> None:
        # Handling an effect may feed the machine again (consent answered by
        # policy, recording asked for): loop until it has nothing more to say.
        while effects := self.machine.effects():
            self._dispatch(effects)
        self._arm_timer()

    def _dispatch(self, effects: list[Effect]) -> None:
        batch: list[SendSignal] = []
        for effect in effects:
            if isinstance(effect, SendSignal):
                batch.append(effect)
                continue
            if batch:
                self._outbox.put_nowait(batch)
                batch = []
            if isinstance(effect, RecordMissedCall):
                self._outbox.put_nowait(effect)
            elif isinstance(
                effect, CreateDescription | ApplyAnswer | AddCandidates | SetLocalMedia | StopMedia
            ):
                self._media_ops.put_nowait(effect)
            elif isinstance(effect, RecordingRequested):
                self._on_recording_request(effect)
            elif isinstance(effect, RecordingPermission):
                session = self.media.get(effect.call_id)
                if session is not None:
                    session.allow_recording(effect.allowed)
                self.events.put_nowait(effect)
            else:
                if isinstance(effect, StateChanged):
                    self._on_state(effect)
                self.events.put_nowait(effect)
        if batch:
            self._outbox.put_nowait(batch)

    def _on_state(self, change: StateChanged) -> None:
        if (
            change.state is CallState.ACTIVE
            and self.options.record_to is not None
            and change.call_id not in self._recording_asked
        ):
            self._recording_asked.add(change.call_id)
            self.machine.request_recording(self._clock())

    def _on_recording_request(self, effect: RecordingRequested) -> None:
        policy = self.options.recording_consent
        if policy == "grant":
            self.machine.grant_recording(self._clock())
        elif policy == "refuse":
            self.machine.refuse_recording(self._clock())
        else:
            self.events.put_nowait(effect)

    def _arm_timer(self) -> None:
        deadline = None if self._closed else self.machine.next_deadline()
        self._timer = rearm_timer(self._timer, deadline, self._clock, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.machine.tick(self._clock())
        self._drain()

    async def _send_worker(self) -> None:
        while (item := await self._outbox.get()) is not None:
            try:
                if isinstance(item, RecordMissedCall):
                    await self._record_missed(item)
                else:
                    await self._send_signals(item)
            except (SottovoceError, OSError) as exc:
                # A signal that cannot leave is like one lost on the way: the
                # engine's timers end the call if it mattered.
                log.warning("calls: could not send a call signal: %s", type(exc).__name__)
                self.events.put_nowait(SignalFailed(code=getattr(exc, "code", "network")))

    async def _media_worker(self) -> None:
        while (op := await self._media_ops.get()) is not None:
            try:
                await self._media_op(op)
            except SottovoceError as exc:
                self._media_failed(op, exc)
            except Exception as exc:  # aiortc refusing a description, or our bug: fail the call
                log.warning("calls: media step failed: %s", type(exc).__name__)
                self._media_failed(op, MediaError(f"media step failed ({type(exc).__name__})"))

    async def _media_op(self, op: Effect) -> None:
        if isinstance(op, CreateDescription):
            session = self.media.get(op.call_id)
            if session is None:
                session = self.options.media_session(
                    spec=self.options.media,
                    ice=self.options.ice,
                    record_to=self.options.record_to,
                    on_event=partial(self._on_media, op.call_id),
                )
                call = self.machine.call
                if call is not None and call.call_id == op.call_id and not call.camera_on:
                    # An audio call: no camera video from either side, even where a
                    # camera source is open (the user may still turn it on later).
                    session.set_local_media(
                        audio_muted=call.audio_muted, camera_on=False, screen_on=session.screen_on
                    )
                self.media[op.call_id] = session
            if self._turn_servers is not None:
                # TURN credentials live minutes; every new connection (an ICE
                # restart late in a long call too) allocates with fresh ones.
                session.ice = replace(session.ice, turn=await self._turn_servers())
            if op.role is MediaRole.OFFER:
                sdp = await session.create_offer(op.generation)
            else:
                sdp = await session.create_answer(
                    op.generation, op.remote_sdp or "", op.expected_fingerprints
                )
            self.machine.local_description(
                self._clock(), call_id=op.call_id, generation=op.generation, role=op.role, sdp=sdp
            )
            self._drain()
        elif isinstance(op, ApplyAnswer):
            session = self.media.get(op.call_id)
            if session is not None:
                await session.apply_answer(op.generation, op.remote_sdp, op.expected_fingerprints)
        elif isinstance(op, AddCandidates):
            session = self.media.get(op.call_id)
            if session is not None:
                await session.add_candidates(op.generation, op.candidates, op.complete)
        elif isinstance(op, SetLocalMedia):
            session = self.media.get(op.call_id)
            if session is not None:
                session.set_local_media(
                    audio_muted=op.audio_muted, camera_on=op.camera_on, screen_on=op.screen_on
                )
        elif isinstance(op, StopMedia):
            session = self.media.get(op.call_id)
            if session is not None:
                # Leave ``media`` only once closed: the recording is whole by then.
                try:
                    await session.close()
                finally:
                    if self.media.get(op.call_id) is session:
                        del self.media[op.call_id]

    def _media_failed(self, op: Effect, exc: SottovoceError) -> None:
        self.last_error = exc
        log.warning("calls: media failed: %s", exc.code)
        self.events.put_nowait(MediaProblem(where="media", error=str(exc)))
        call_id = getattr(op, "call_id", None)
        generation = getattr(op, "generation", None)
        if call_id is not None and generation is not None:
            self.machine.media_down(self._clock(), call_id=call_id, generation=generation)
            self._drain()

    def _on_media(self, call_id: bytes, event: MediaEvent) -> None:
        if isinstance(event, MediaUp):
            self.machine.media_up(self._clock(), call_id=call_id, generation=event.generation)
        elif isinstance(event, MediaDown):
            if event.error is not None:
                self.last_error = event.error
                self.events.put_nowait(MediaProblem(where="transport", error=str(event.error)))
            self.machine.media_down(self._clock(), call_id=call_id, generation=event.generation)
        else:
            self.events.put_nowait(event)
        self._drain()

    async def close(self) -> None:
        """Hang up any call, close its media and stop the workers."""
        if self._closed:
            return
        if self.machine.state in (
            CallState.OUTGOING_RINGING,
            CallState.CONNECTING,
            CallState.ACTIVE,
        ):
            self.hangup()
        elif self.machine.state is CallState.INCOMING_RINGING:
            self.decline()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._outbox.put_nowait(None)
        self._media_ops.put_nowait(None)
        await asyncio.gather(*self._workers, return_exceptions=True)
        for session in list(self.media.values()):
            await session.close()
        self.media.clear()
