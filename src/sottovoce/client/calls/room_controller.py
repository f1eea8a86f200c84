"""One device's room call: the sans-IO engine, SFrame, SFU or mesh media, recording.

::

    room MLS layer ─ receive(bytes, sender) ─►┐            ┌─► send_signal(bytes)  (room MLS)
    room changes ─── room_changed() ─────────►│  RoomCall  ├─► append_audit(action)
    user ─── leave / media / recording ──────►│  (calls/)  ├─► sfu_grant(call_id)  (server)
    timer ── tick ───────────────────────────►┘            ├─► FrameCrypto (keys, at once)
                                                           └─► SfuMedia | MeshMedia, recording

This is the whole boundary a client needs for room calls. It is given: a
coroutine that sends a room-call signal as an MLS application message of the
room; a function that returns the room's members now (device -> the signature
key of its leaf in the room's group); a coroutine that appends an entry to the
room's audit trail; and, for calls through an SFU, a coroutine that asks the
server for a grant. The client hands every room-call signal of the room to
:meth:`receive` in the room's order (its own too), and calls
:meth:`room_changed` after each change of the room's group.

Keys change synchronously, in the order the engine emits them (a frame sealed
after a commit uses the new epoch); everything that waits on the network runs in
one worker task, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from sottovoce.calls.errors import CallError
from sottovoce.calls.frames import Codec
from sottovoce.calls.media_keys import Device
from sottovoce.calls.room_call import CALL_MLS_SUITE, Phase, RoomCall, RoomView
from sottovoce.calls.room_effects import (
    AppendAudit,
    EpochChanged,
    FeedAnnounced,
    Joined,
    JoinRefused,
    Left,
    MeshDescription,
    ParticipantsChanged,
    PeerMediaState,
    RecordingPermission,
    RecordingRefused,
    RecordingRequested,
    RecordingState,
    RoomCallEffect,
    SendersRevoked,
    SendRoomSignal,
)
from sottovoce.calls.room_signals import CallMode
from sottovoce.client.calls.controller import rearm_timer, wall_clock_ms
from sottovoce.client.calls.e2ee import FrameCrypto
from sottovoce.client.calls.media import IceConfig, MediaProblem
from sottovoce.client.calls.recording import SealedRecording
from sottovoce.client.calls.room_media import MeshMedia, RoomMedia, SfuAccess, SfuMedia
from sottovoce.client.calls.sources import MediaSpec
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.errors import DecodeError, RemoteError, SottovoceError, UsageError
from sottovoce.limits import CALL_NONCE_BYTES
from sottovoce.protocol.audit import AuditAction
from sottovoce.secret import Secret
from sottovoce.sframe import Track

log = logging.getLogger(__name__)

RoomCallEvent = (
    Joined
    | JoinRefused
    | Left
    | ParticipantsChanged
    | PeerMediaState
    | RecordingRequested
    | RecordingState
    | RecordingRefused
    | MediaProblem
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomCallOptions:
    """How this device takes part in room calls.

    ``recording_consent``: what to answer when someone asks to record -- "ask"
    leaves it to the UI (a :class:`RecordingRequested` event; no answer in 20 s
    is no), bots and the recorder device say "grant" or "refuse". ``record_to``
    and ``storage_key``: where this device writes its own consented recordings,
    sealed with that key.
    """

    media: MediaSpec = field(default_factory=MediaSpec)
    ice: IceConfig = field(default_factory=IceConfig)
    recording_consent: Literal["ask", "grant", "refuse"] = "ask"
    record_to: Path | None = None
    storage_key: Secret | None = None
    #: How SFU media are made (``SfuMedia``; the browser app hands media to its page).
    sfu_media: Callable[..., SfuMedia] = SfuMedia


class RoomCallController:
    """See the module docstring. Build with :meth:`start` or :meth:`join`."""

    def __init__(
        self,
        *,
        call: RoomCall,
        send_signal: Callable[[bytes], Awaitable[None]],
        room_view: Callable[[], RoomView],
        append_audit: Callable[[AuditAction], Awaitable[None]],
        sfu_grant: Callable[[bytes], Awaitable[SfuAccess]] | None = None,
        options: RoomCallOptions | None = None,
        crypto: FrameCrypto | None = None,
        rng: Random = secrets.token_bytes,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        if call.mode is CallMode.SFU and sfu_grant is None:
            raise UsageError("a call through an SFU needs a way to get grants from the server")
        self.call = call
        self.options = options or RoomCallOptions()
        self.crypto = crypto or FrameCrypto()
        self.events: asyncio.Queue[RoomCallEvent] = asyncio.Queue()
        self.media: RoomMedia | None = None
        self.recording: SealedRecording | None = None
        self.errors: list[SottovoceError] = []
        self._send_signal = send_signal
        self._room_view = room_view
        self._append_audit = append_audit
        self._sfu_grant = sfu_grant
        self._rng = rng
        self._clock = clock_ms
        self._work: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self._worker = asyncio.ensure_future(self._run())
        self._timer: asyncio.TimerHandle | None = None
        self._feeds: dict[Device, str] = {}
        self._own_feed: str | None = None
        self._participants: tuple[Device, ...] = ()
        self._mesh_nonces: dict[Device, bytes] = {}
        self._media_state: tuple[bool, bool, bool] | None = None
        self._apply(call.effects())

    @classmethod
    def start(
        cls,
        *,
        room_id: str,
        me: Device,
        signing_key: SigningKey,
        mode: CallMode,
        rng: Random = secrets.token_bytes,
        clock_ms: Callable[[], int] = wall_clock_ms,
        call_id: bytes | None = None,
        suite: int = CALL_MLS_SUITE,
        **kwargs: object,
    ) -> RoomCallController:
        call = RoomCall.start(
            room_id=room_id, mode=mode, me=me, signing_key=signing_key, rng=rng,
            now_ms=clock_ms(), call_id=call_id, suite=suite,
        )
        return cls(call=call, rng=rng, clock_ms=clock_ms, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def join(
        cls,
        *,
        room_id: str,
        call_id: bytes,
        mode: CallMode,
        me: Device,
        signing_key: SigningKey,
        rng: Random = secrets.token_bytes,
        clock_ms: Callable[[], int] = wall_clock_ms,
        suite: int = CALL_MLS_SUITE,
        **kwargs: object,
    ) -> RoomCallController:
        call = RoomCall.join(
            room_id=room_id,
            call_id=call_id,
            mode=mode,
            me=me,
            signing_key=signing_key,
            rng=rng,
            now_ms=clock_ms(),
            suite=suite,
        )
        return cls(call=call, rng=rng, clock_ms=clock_ms, **kwargs)  # type: ignore[arg-type]

    # --- inputs -------------------------------------------------------------------------

    def receive(self, data: bytes, sender: Device) -> None:
        """A room-call signal of this call, decrypted by the room's MLS layer, in order."""
        if self.call.phase in (Phase.LEFT, Phase.REFUSED):
            return  # out of the call: what the others say next is not for us
        try:
            self.call.receive(data, sender=sender, room=self._room_view(), now_ms=self._clock())
        except (CallError, DecodeError, RemoteError) as exc:
            # Logged without content; the call's state is unchanged.
            log.warning("room call: refused a signal: %s", exc.code)
            self.errors.append(exc)
        self._apply(self.call.effects())

    def room_changed(self) -> None:
        self.call.room_changed(self._room_view(), self._clock())
        self._apply(self.call.effects())

    def signal_lost(self, payload: bytes) -> None:
        """The room refused or lost a signal this controller sent."""
        self.call.signal_lost(payload, self._room_view(), self._clock())
        self._apply(self.call.effects())

    def leave(self) -> None:
        self.call.leave()
        self._apply(self.call.effects())

    def set_media(self, *, audio_muted: bool, camera_on: bool, screen_on: bool) -> None:
        if self.media is not None:
            self.media.set_local_media(
                audio_muted=audio_muted, camera_on=camera_on, screen_on=screen_on
            )
        self._media_state = (audio_muted, camera_on, screen_on)
        self.call.set_media(audio_muted=audio_muted, camera_on=camera_on, screen_on=screen_on)
        self._apply(self.call.effects())

    def request_recording(self) -> None:
        """Ask every participant to consent to this device recording the call."""
        if self.options.record_to is None or self.options.storage_key is None:
            raise UsageError("recording needs a file to write to and the store's key")
        self.call.request_recording(self._clock())
        self._apply(self.call.effects())

    def answer_recording(self, grant: bool) -> None:
        self.call.answer_recording(grant)
        self._apply(self.call.effects())

    def stop_recording(self) -> None:
        self.call.stop_recording()
        self._apply(self.call.effects())

    @property
    def participants(self) -> tuple[Device, ...]:
        """From the call's MLS group, never from the SFU or the server."""
        return self.call.participants()

    # --- effects ------------------------------------------------------------------------

    def _apply(self, effects: list[RoomCallEffect]) -> None:
        for effect in effects:
            self._apply_one(effect)
        self._arm_timer()

    def _apply_one(self, effect: RoomCallEffect) -> None:
        if isinstance(effect, SendRoomSignal):
            self._do(partial(self._send_signal, effect.payload))
        elif isinstance(effect, EpochChanged):
            self.crypto.begin_epoch(effect.keys)  # at once: senders switch now
        elif isinstance(effect, SendersRevoked):
            for device in effect.devices:
                self.crypto.revoke(device)
        elif isinstance(effect, AppendAudit):
            self._do(partial(self._append_audit, effect.action))
        elif isinstance(effect, Joined):
            self.events.put_nowait(effect)
            self._do(self._start_media)
        elif isinstance(effect, ParticipantsChanged):
            self._participants_changed(effect)
            self.events.put_nowait(effect)
        elif isinstance(effect, FeedAnnounced):
            self._feeds[effect.device] = effect.feed_id
            self._do(partial(self._subscribe, effect.device, effect.feed_id))
        elif isinstance(effect, MeshDescription):
            self._do(partial(self._mesh_description, effect))
        elif isinstance(effect, RecordingPermission):
            self._recording(effect.allowed)
        elif isinstance(effect, RecordingRequested):
            policy = self.options.recording_consent
            if policy == "ask":
                self.events.put_nowait(effect)
            else:
                self.call.answer_recording(policy == "grant")
                self._apply(self.call.effects())
        elif isinstance(effect, Left):
            self.crypto.wipe()
            self._recording(False)
            self.events.put_nowait(effect)
            self._do(self._stop_media)
        else:  # JoinRefused, PeerMediaState, RecordingState, RecordingRefused
            self.events.put_nowait(effect)

    def _participants_changed(self, effect: ParticipantsChanged) -> None:
        me = self.call.me
        before = set(self._participants)
        now = set(effect.participants)
        self._participants = effect.participants
        if self.media is None and me in now and not before:
            self._do(self._start_media)  # the call's starter
        new = now - before - {me}
        for device in before - now:
            self._feeds.pop(device, None)
            self._do(partial(self._drop_peer, device))
        if new:
            # Newcomers cannot read what was sealed before they joined: say again
            # which feed is ours and what we send.
            if self._own_feed is not None:
                self.call.announce_feed(self._own_feed)
            if self._media_state is not None:
                audio, camera, screen = self._media_state
                self.call.set_media(audio_muted=audio, camera_on=camera, screen_on=screen)
            if self.call.mode is CallMode.MESH:
                for device in sorted(new):
                    if me < device:
                        self._do(partial(self._mesh_offer, device))
            self._apply(self.call.effects())

    # --- media (in the worker) ------------------------------------------------------------

    def _do(self, job: Callable[[], Awaitable[None]]) -> None:
        self._work.put_nowait(job)

    async def _run(self) -> None:
        while True:
            job = await self._work.get()
            if job is None:
                return
            try:
                await job()
            except SottovoceError as exc:
                log.warning("room call: %s", exc.code)
                self.errors.append(exc)
                self.events.put_nowait(MediaProblem(where="call", error=exc.code))
            except Exception as exc:  # keep the worker alive; report, without content
                log.warning("room call: media step failed: %s", type(exc).__name__)
                self.events.put_nowait(MediaProblem(where="call", error=type(exc).__name__))

    def _media_kwargs(self) -> dict[str, object]:
        return {
            "spec": self.options.media,
            "ice": self.options.ice,
            "crypto": self.crypto,
            "on_problem": self.events.put_nowait,
            "tap": self._tap,
        }

    async def _start_media(self) -> None:
        if self.media is not None or self.call.epoch is None:
            return
        if self.call.mode is CallMode.SFU:
            if self._sfu_grant is None:  # pragma: no cover - checked in __init__
                return
            access = await self._sfu_grant(self.call.call_id)
            media = self.options.sfu_media(access=access, **self._media_kwargs())
            self.media = media
            await media.publish()
            self._own_feed = access.feed_id
            self.call.announce_feed(access.feed_id)
            self._apply(self.call.effects())
            for device, feed in list(self._feeds.items()):
                await self._subscribe(device, feed)
        else:
            self.media = MeshMedia(**self._media_kwargs())
            me = self.call.me
            for device in sorted(set(self._participants) - {me}):
                if me < device:
                    await self._mesh_offer(device)

    async def _subscribe(self, device: Device, feed: str) -> None:
        media = self.media
        if not isinstance(media, SfuMedia) or device not in self._participants:
            return  # subscribed once published (see _start_media), or gone
        if self._feeds.get(device) == feed and device in media.subscribed():
            return
        await media.subscribe(feed, device)

    async def _mesh_offer(self, device: Device) -> None:
        media = self.media
        if not isinstance(media, MeshMedia):
            return
        nonce = self._rng(CALL_NONCE_BYTES)
        self._mesh_nonces[device] = nonce
        sdp = await media.offer(device)
        if self.call.epoch is not None:
            self.call.mesh_offer(device, nonce, sdp)
            self._apply(self.call.effects())

    async def _mesh_description(self, d: MeshDescription) -> None:
        media = self.media
        if not isinstance(media, MeshMedia) or d.device not in self._participants:
            return
        if d.offer:
            sdp = await media.answer(d.device, d.sdp)
            if self.call.epoch is not None:
                self.call.mesh_answer(d.device, d.nonce, sdp)
                self._apply(self.call.effects())
        elif self._mesh_nonces.get(d.device) == d.nonce:
            await media.accept(d.device, d.sdp)

    async def _drop_peer(self, device: Device) -> None:
        media = self.media
        if isinstance(media, SfuMedia):
            await media.unsubscribe(device)
        elif isinstance(media, MeshMedia):
            await media.drop(device)

    async def _stop_media(self) -> None:
        media, self.media = self.media, None
        if media is not None:
            await media.close()

    # --- recording ------------------------------------------------------------------------

    def _recording(self, allowed: bool) -> None:
        if allowed and self.recording is None:
            path, key = self.options.record_to, self.options.storage_key
            if path is None or key is None:
                return
            self.recording = SealedRecording(
                path, storage_key=key, rng=self._rng, clock_ms=self._clock
            )
            if self.media is not None:
                self.media.request_keyframes()  # each participant's file starts on one
        elif not allowed and self.recording is not None:
            self.recording.close()

    def _tap(self, sender: Device, track: Track, codec: Codec, timestamp: int, data: bytes) -> None:
        recording = self.recording
        if recording is not None and not recording.closed:
            recording.write(sender, track, codec, timestamp, data)

    # --- time and the end ------------------------------------------------------------------

    def _arm_timer(self) -> None:
        self._timer = rearm_timer(self._timer, self.call.next_deadline(), self._clock, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.call.tick(self._room_view(), self._clock())
        self._apply(self.call.effects())

    async def close(self) -> None:
        """Stop everything this controller runs (leave the call first to tell the others)."""
        if self._timer is not None:
            self._timer.cancel()
        self._recording(False)
        self._work.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        await self._stop_media()
        self.crypto.wipe()
