"""The 1:1 call state machine: one literal transition table, sans-IO.

    IDLE/ENDED ─dial─► OUTGOING_RINGING ─peer accept─► CONNECTING ─media up─► ACTIVE
       │               │ decline, busy,                   │  ▲ offer, answer,  │ media down,
       │               │ cancel, 45 s                     │  │ ICE, DTLS       │ restart ICE
       │               ▼                                  │  └─────────────────┘
       │             ENDED(reason) ◄── hang-up, cancel, timeout, failure ─┘
       └─invite─► INCOMING_RINGING ─accept─► CONNECTING ─► ... (as above)
                       │ decline, cancel, answered elsewhere, timeout
                       ▼
                     ENDED(reason)

One :class:`CallMachine` per device holds at most one call. Every input -- a
local action, a signal from a peer, the local media layer's report, a timer --
is first *classified* into an :class:`Event` (pure checks: the signal's
binding, who sent it, glare), then looked up in :data:`TRANSITIONS`; a pair
that is not in the table is out of order and raises. The handler then checks
the rest (nonces, fingerprints, generations) on a copy of the call and queues
effects; the copy, the effects and the new state are committed only when every
check passed, so any error leaves the machine exactly as it was. ``effects()``
hands the queued effects to the caller (as websockets' sans-IO protocol hands
out ``data_to_send()``); ``next_deadline()`` says when to call ``tick()``.

Rules both ends compute identically (docs/calls.md):

* Ringing: the caller sends an :class:`Invite` (no SDP) to every callee device;
  the first :class:`Accept` that reaches the caller wins and only that device
  gets the :class:`Offer`; it then tells the callee's other devices
  :class:`AnsweredElsewhere`. Later accepts are ignored.
* Glare: two users ringing each other keep the call whose id is lower
  (bytewise); the other caller cancels its own call and accepts that one.
* ICE restart glare: the caller's restart wins.
* Missed calls: only the caller's device records one (:class:`RecordMissedCall`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from sottovoce.calls.effects import (
    AddCandidates,
    ApplyAnswer,
    CallState,
    CreateDescription,
    Effect,
    EndReason,
    MediaRole,
    PeerMediaState,
    PeerRinging,
    RecordingPermission,
    RecordingRequested,
    RecordMissedCall,
    Role,
    SendSignal,
    SetLocalMedia,
    StateChanged,
    StopMedia,
)
from sottovoce.calls.errors import (
    BindingError,
    CallUsageError,
    OutOfOrderSignal,
    StaleSignal,
    UnknownCall,
)
from sottovoce.calls.sdp import (
    AUDIO_LEVEL_URI,
    check_fingerprints,
    drop_header_extension,
    header_extensions,
)
from sottovoce.calls.sdp import fingerprints as sdp_fingerprints
from sottovoce.calls.signals import (
    Accept,
    Answer,
    AnsweredElsewhere,
    Busy,
    CallSignal,
    Cancel,
    CancelReason,
    ConsentState,
    Decline,
    Fingerprint,
    Hangup,
    HangupReason,
    IceCandidates,
    IceRestartAnswer,
    IceRestartOffer,
    Invite,
    MuteState,
    Offer,
    RecordingConsent,
    Ringing,
)
from sottovoce.crypto.rng import Random
from sottovoce.errors import InternalError
from sottovoce.identity.certificates import validate_device_id, validate_username
from sottovoce.limits import (
    CALL_ID_BYTES,
    CALL_NONCE_BYTES,
    CALL_RECENT_IDS,
    CALL_RECONNECT_TIMEOUT_MS,
    CALL_RING_GRACE_MS,
    CALL_RING_TIMEOUT_MS,
    CALL_SETUP_TIMEOUT_MS,
    MAX_CALL_DEVICES,
    MAX_CALL_ICE_RESTARTS,
)


class Event(Enum):
    """What an input means once classified; the keys of :data:`TRANSITIONS`."""

    # the local user
    DIAL = "dial"
    ACCEPT = "accept"
    DECLINE = "decline"
    HANGUP = "hangup"
    SET_MEDIA = "set_media"
    RESTART_ICE = "restart_ice"
    RECORDING = "recording"  # request, grant or refuse consent
    # the local media layer
    LOCAL_OFFER = "local_offer"
    LOCAL_ANSWER = "local_answer"
    MEDIA_UP = "media_up"
    MEDIA_DOWN = "media_down"
    MEDIA_STALE = "media_stale"  # a report about a transport the call has moved on from
    # the peer
    INVITE = "invite"
    INVITE_BUSY = "invite_busy"  # an invite for another call while this one runs
    INVITE_AGAIN = "invite_again"  # the caller that rings us rings again with a new call
    GLARE_WIN = "glare_win"  # the peer we ring rings us; our call id is lower
    GLARE_LOSE = "glare_lose"  # ... theirs is lower: answer theirs
    PEER_RINGING = "peer_ringing"
    PEER_ACCEPT = "peer_accept"
    PEER_LATE = "peer_late"  # ringing/accept/decline/busy from a device that lost the race
    PEER_DECLINE = "peer_decline"
    PEER_BUSY = "peer_busy"
    OFFER = "offer"
    ANSWER = "answer"
    CANDIDATES = "candidates"
    PEER_HANGUP = "peer_hangup"
    CANCEL = "cancel"
    PEER_MUTE = "peer_mute"
    ANSWERED_ELSEWHERE = "answered_elsewhere"
    ANSWERED_EARLY = "answered_early"  # ... for a call whose invite is still on its way
    CANCELLED_EARLY = "cancelled_early"  # the caller's cancel overtook its own invite
    RESTART_OFFER = "restart_offer"
    RESTART_OFFER_IGNORED = "restart_offer_ignored"  # restart glare: ours wins
    RESTART_ANSWER = "restart_answer"
    PEER_CONSENT = "peer_consent"
    # timers
    TIMEOUT = "timeout"


_S = CallState
_E = Event

# fmt: off
#: (state, event) → next state. A pair that is not here is out of order.
TRANSITIONS: dict[tuple[CallState, Event], CallState] = {
    (_S.IDLE, _E.DIAL): _S.OUTGOING_RINGING,
    (_S.IDLE, _E.INVITE): _S.INCOMING_RINGING,
    (_S.IDLE, _E.ANSWERED_EARLY): _S.IDLE,
    (_S.IDLE, _E.CANCELLED_EARLY): _S.IDLE,
    (_S.ENDED, _E.DIAL): _S.OUTGOING_RINGING,
    (_S.ENDED, _E.INVITE): _S.INCOMING_RINGING,
    (_S.ENDED, _E.ANSWERED_EARLY): _S.ENDED,
    (_S.ENDED, _E.CANCELLED_EARLY): _S.ENDED,

    (_S.OUTGOING_RINGING, _E.LOCAL_OFFER): _S.OUTGOING_RINGING,
    (_S.OUTGOING_RINGING, _E.MEDIA_STALE): _S.OUTGOING_RINGING,
    (_S.OUTGOING_RINGING, _E.PEER_RINGING): _S.OUTGOING_RINGING,
    (_S.OUTGOING_RINGING, _E.INVITE_BUSY): _S.OUTGOING_RINGING,
    (_S.OUTGOING_RINGING, _E.ANSWERED_EARLY): _S.OUTGOING_RINGING,
    (_S.OUTGOING_RINGING, _E.CANCELLED_EARLY): _S.OUTGOING_RINGING,
    (_S.OUTGOING_RINGING, _E.GLARE_WIN): _S.OUTGOING_RINGING,
    (_S.OUTGOING_RINGING, _E.GLARE_LOSE): _S.CONNECTING,
    (_S.OUTGOING_RINGING, _E.PEER_ACCEPT): _S.CONNECTING,
    (_S.OUTGOING_RINGING, _E.PEER_DECLINE): _S.ENDED,
    (_S.OUTGOING_RINGING, _E.PEER_BUSY): _S.ENDED,
    (_S.OUTGOING_RINGING, _E.HANGUP): _S.ENDED,
    (_S.OUTGOING_RINGING, _E.MEDIA_DOWN): _S.ENDED,
    (_S.OUTGOING_RINGING, _E.TIMEOUT): _S.ENDED,

    (_S.INCOMING_RINGING, _E.INVITE_BUSY): _S.INCOMING_RINGING,
    (_S.INCOMING_RINGING, _E.INVITE_AGAIN): _S.INCOMING_RINGING,
    (_S.INCOMING_RINGING, _E.ANSWERED_EARLY): _S.INCOMING_RINGING,
    (_S.INCOMING_RINGING, _E.CANCELLED_EARLY): _S.INCOMING_RINGING,
    (_S.INCOMING_RINGING, _E.ACCEPT): _S.CONNECTING,
    (_S.INCOMING_RINGING, _E.DECLINE): _S.ENDED,
    (_S.INCOMING_RINGING, _E.CANCEL): _S.ENDED,
    (_S.INCOMING_RINGING, _E.ANSWERED_ELSEWHERE): _S.ENDED,
    (_S.INCOMING_RINGING, _E.TIMEOUT): _S.ENDED,

    (_S.CONNECTING, _E.LOCAL_OFFER): _S.CONNECTING,
    (_S.CONNECTING, _E.LOCAL_ANSWER): _S.CONNECTING,
    (_S.CONNECTING, _E.MEDIA_STALE): _S.CONNECTING,
    (_S.CONNECTING, _E.INVITE_BUSY): _S.CONNECTING,
    (_S.CONNECTING, _E.ANSWERED_EARLY): _S.CONNECTING,
    (_S.CONNECTING, _E.CANCELLED_EARLY): _S.CONNECTING,
    (_S.CONNECTING, _E.PEER_RINGING): _S.CONNECTING,
    (_S.CONNECTING, _E.PEER_LATE): _S.CONNECTING,
    (_S.CONNECTING, _E.OFFER): _S.CONNECTING,
    (_S.CONNECTING, _E.ANSWER): _S.CONNECTING,
    (_S.CONNECTING, _E.CANDIDATES): _S.CONNECTING,
    (_S.CONNECTING, _E.RESTART_OFFER): _S.CONNECTING,
    (_S.CONNECTING, _E.RESTART_OFFER_IGNORED): _S.CONNECTING,
    (_S.CONNECTING, _E.RESTART_ANSWER): _S.CONNECTING,
    (_S.CONNECTING, _E.SET_MEDIA): _S.CONNECTING,
    (_S.CONNECTING, _E.PEER_MUTE): _S.CONNECTING,
    (_S.CONNECTING, _E.RECORDING): _S.CONNECTING,
    (_S.CONNECTING, _E.PEER_CONSENT): _S.CONNECTING,
    (_S.CONNECTING, _E.MEDIA_UP): _S.ACTIVE,
    (_S.CONNECTING, _E.MEDIA_DOWN): _S.ENDED,
    (_S.CONNECTING, _E.HANGUP): _S.ENDED,
    (_S.CONNECTING, _E.PEER_HANGUP): _S.ENDED,
    (_S.CONNECTING, _E.CANCEL): _S.ENDED,
    (_S.CONNECTING, _E.ANSWERED_ELSEWHERE): _S.ENDED,
    (_S.CONNECTING, _E.TIMEOUT): _S.ENDED,

    (_S.ACTIVE, _E.MEDIA_STALE): _S.ACTIVE,
    (_S.ACTIVE, _E.INVITE_BUSY): _S.ACTIVE,
    (_S.ACTIVE, _E.ANSWERED_EARLY): _S.ACTIVE,
    (_S.ACTIVE, _E.CANCELLED_EARLY): _S.ACTIVE,
    (_S.ACTIVE, _E.PEER_RINGING): _S.ACTIVE,
    (_S.ACTIVE, _E.PEER_LATE): _S.ACTIVE,
    (_S.ACTIVE, _E.CANDIDATES): _S.ACTIVE,
    (_S.ACTIVE, _E.SET_MEDIA): _S.ACTIVE,
    (_S.ACTIVE, _E.PEER_MUTE): _S.ACTIVE,
    (_S.ACTIVE, _E.RECORDING): _S.ACTIVE,
    (_S.ACTIVE, _E.PEER_CONSENT): _S.ACTIVE,
    (_S.ACTIVE, _E.RESTART_ICE): _S.CONNECTING,
    (_S.ACTIVE, _E.RESTART_OFFER): _S.CONNECTING,
    (_S.ACTIVE, _E.MEDIA_DOWN): _S.CONNECTING,
    (_S.ACTIVE, _E.HANGUP): _S.ENDED,
    (_S.ACTIVE, _E.PEER_HANGUP): _S.ENDED,
}
# fmt: on

#: How a cancel from the caller ends a ringing (or just accepted) callee device.
_CANCEL_ENDS = {
    CancelReason.CANCELLED: EndReason.MISSED,
    CancelReason.NO_ANSWER: EndReason.MISSED,
    CancelReason.DECLINED: EndReason.DECLINED_ELSEWHERE,
    CancelReason.BUSY: EndReason.MISSED,
    CancelReason.GLARE: EndReason.SUPERSEDED,
}

#: A callee device that refuses a call: the event, what the caller's other callee
#: devices are told, and how the call ends for the caller.
_REFUSALS: dict[type[CallSignal], tuple[Event, CancelReason, EndReason]] = {
    Decline: (Event.PEER_DECLINE, CancelReason.DECLINED, EndReason.PEER_DECLINED),
    Busy: (Event.PEER_BUSY, CancelReason.BUSY, EndReason.BUSY),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    """Everything the machine knows about its call. Immutable: a transition makes a new one."""

    call_id: bytes
    role: Role
    peer: str
    video: bool
    state: CallState
    reason: EndReason | None = None
    #: caller: the callee devices rung; callee: the caller's device
    peer_devices: tuple[str, ...]
    #: our own other devices (the winning callee device tells them AnsweredElsewhere)
    own_devices: tuple[str, ...] = ()
    #: the peer device the call is with (caller: the first to accept)
    selected: str | None = None
    deadline_ms: int | None = None
    #: ICE generation: 0 for the first transport, +1 per restart
    generation: int = 0
    #: do we make the offer of the current generation
    offerer: bool = False
    #: the nonce of the current generation's offer (ours or the peer's)
    offer_nonce: bytes | None = None
    #: our offer for the current generation, until it is sent
    pending_offer: str | None = None
    #: the offer of the current generation was sent / received
    offer_done: bool = False
    #: the current generation's answer was applied (offerer) or sent (answerer)
    answer_done: bool = False
    #: our DTLS fingerprints and the peer's, pinned by the first offer/answer;
    #: every later description (ICE restarts) must carry the same ones
    local_fingerprints: tuple[Fingerprint, ...] = ()
    peer_fingerprints: tuple[Fingerprint, ...] = ()
    audio_muted: bool = False
    camera_on: bool = True
    screen_on: bool = False
    recording_requested: bool = False
    recording_allowed: bool = False


@dataclass(slots=True)
class _Step:
    """Effects and ended call ids of one transition, committed only on success."""

    effects: list[Effect]
    ended: list[bytes]


#: A transition handler: takes a copy of the call, returns the new one.
_Handler = Callable[[CallRecord, _Step], CallRecord]


class CallMachine:
    """The call engine of one device (see the module docstring)."""

    def __init__(
        self, *, user: str, device: str, rng: Random, ring_timeout_ms: int = CALL_RING_TIMEOUT_MS
    ) -> None:
        self.user = validate_username(user)
        self.device = validate_device_id(device)
        self._rng = rng
        #: How long the caller rings before "no answer" (shorter only for tests and demos).
        self._ring_timeout_ms = min(max(1, ring_timeout_ms), CALL_RING_TIMEOUT_MS)
        self._call: CallRecord | None = None
        self._recent: deque[bytes] = deque(maxlen=CALL_RECENT_IDS)
        self._effects: list[Effect] = []

    # --- reading ------------------------------------------------------------------

    @property
    def state(self) -> CallState:
        return self._call.state if self._call else CallState.IDLE

    @property
    def call(self) -> CallRecord | None:
        return self._call

    def next_deadline(self) -> int | None:
        """When :meth:`tick` must next be called (ms, the clock ``now_ms`` comes from)."""
        return self._call.deadline_ms if self._call else None

    def effects(self) -> list[Effect]:
        """The effects queued since the last call, in order; the queue is emptied."""
        out, self._effects = self._effects, []
        return out

    def snapshot(self) -> tuple[object, ...]:
        """Everything an input may change; equal before and after any failed input."""
        return (self._call, tuple(self._recent), tuple(self._effects))

    # --- the local user -----------------------------------------------------------

    def dial(
        self,
        now_ms: int,
        *,
        peer: str,
        peer_devices: list[str] | tuple[str, ...],
        own_devices: list[str] | tuple[str, ...] = (),
        video: bool = True,
    ) -> bytes:
        """Ring every device of ``peer``; returns the new call id."""
        validate_username(peer)
        if peer == self.user:
            raise CallUsageError("call another user")
        devices = _devices(peer_devices)
        if not devices:
            raise CallUsageError("the callee has no device to ring")
        own = tuple(d for d in _devices(own_devices) if d != self.device)
        call_id = self._rng(CALL_ID_BYTES)
        if len(call_id) != CALL_ID_BYTES:
            raise InternalError("the random source returned the wrong length")
        record = CallRecord(
            call_id=call_id,
            role=Role.CALLER,
            peer=peer,
            video=video,
            state=CallState.OUTGOING_RINGING,
            peer_devices=devices,
            own_devices=own,
            deadline_ms=now_ms + self._ring_timeout_ms,
            offerer=True,
            camera_on=video,
        )

        def run(call: CallRecord, step: _Step) -> CallRecord:
            for device in devices:
                self._send(step, call, device, Invite, video=video)
            step.effects.append(_create_offer(call))
            return call

        self._apply(Event.DIAL, run, start=record, local=True)
        return call_id

    def accept(self, now_ms: int, *, own_devices: list[str] | tuple[str, ...] = ()) -> None:
        """Pick up the ringing call; the caller answers with its offer."""
        own = tuple(d for d in _devices(own_devices) if d != self.device)

        def run(call: CallRecord, step: _Step) -> CallRecord:
            call = replace(_connecting(call, now_ms), own_devices=own)
            self._send(step, call, call.selected, Accept)
            step.effects.append(_changed(call))
            return call

        self._local(Event.ACCEPT, run)

    def decline(self, now_ms: int) -> None:
        def run(call: CallRecord, step: _Step) -> CallRecord:
            self._send(step, call, call.selected, Decline)
            return self._end(call, step, EndReason.DECLINED)

        self._local(Event.DECLINE, run)

    def hangup(self, now_ms: int) -> None:
        """End the call: cancel it while it rings, hang up once it was accepted."""

        def run(call: CallRecord, step: _Step) -> CallRecord:
            if call.state is CallState.OUTGOING_RINGING:
                self._cancel_others(step, call, CancelReason.CANCELLED)
                return self._end(call, step, EndReason.CANCELLED)
            return self._hang_up(call, step, HangupReason.NORMAL, EndReason.HUNG_UP)

        self._local(Event.HANGUP, run)

    def set_media(
        self, now_ms: int, *, audio_muted: bool, camera_on: bool, screen_on: bool
    ) -> None:
        """Mute/unmute, camera on/off, screen share on/off; the peer is told."""

        def run(call: CallRecord, step: _Step) -> CallRecord:
            call = replace(call, audio_muted=audio_muted, camera_on=camera_on, screen_on=screen_on)
            step.effects.append(
                SetLocalMedia(
                    call_id=call.call_id,
                    audio_muted=audio_muted,
                    camera_on=camera_on,
                    screen_on=screen_on,
                )
            )
            self._send_mute(step, call)
            return call

        self._local(Event.SET_MEDIA, run)

    def restart_ice(self, now_ms: int) -> None:
        """Move the call to a new ICE transport (after a network change)."""

        def run(call: CallRecord, step: _Step) -> CallRecord:
            return self._begin_restart(call, step, now_ms)

        self._local(Event.RESTART_ICE, run)

    def request_recording(self, now_ms: int) -> None:
        """Ask the peer for consent to record; :class:`RecordingPermission` tells the answer."""
        self._consent(ConsentState.REQUEST)

    def grant_recording(self, now_ms: int) -> None:
        self._consent(ConsentState.GRANT)

    def refuse_recording(self, now_ms: int) -> None:
        """Refuse the peer's request, or withdraw an earlier grant."""
        self._consent(ConsentState.REFUSE)

    def _consent(self, consent: ConsentState) -> None:
        def run(call: CallRecord, step: _Step) -> CallRecord:
            if consent is ConsentState.REQUEST:
                call = replace(call, recording_requested=True)
            self._send(step, call, call.selected, RecordingConsent, state=consent)
            return call

        self._local(Event.RECORDING, run)

    # --- the local media layer ----------------------------------------------------

    def local_description(
        self, now_ms: int, *, call_id: bytes, generation: int, role: MediaRole, sdp: str
    ) -> None:
        """The media layer made the offer or answer a :class:`CreateDescription` asked for.

        Reports about a call that has ended, or a generation the call has moved
        on from, are ignored (the media layer runs behind the engine).
        """
        call = self._media_call(call_id)
        if call is None:
            return
        expected = MediaRole.OFFER if call.offerer else MediaRole.ANSWER
        if (
            generation != call.generation
            or role is not expected
            or call.state not in (CallState.OUTGOING_RINGING, CallState.CONNECTING)
            or (role is MediaRole.ANSWER and not call.offer_done)
            or call.answer_done
            or (role is MediaRole.OFFER and (call.offer_done or call.pending_offer is not None))
        ):
            self._apply(Event.MEDIA_STALE, lambda c, s: c, local=True)
            return
        if AUDIO_LEVEL_URI in header_extensions(sdp):
            raise CallUsageError("the local SDP negotiates the RFC 6464 audio level in the clear")
        fps = tuple(sorted(sdp_fingerprints(sdp), key=lambda f: f.algorithm))
        if call.local_fingerprints and frozenset(fps) != frozenset(call.local_fingerprints):
            raise CallUsageError("an ICE restart must keep the call's DTLS certificate")
        event = Event.LOCAL_OFFER if role is MediaRole.OFFER else Event.LOCAL_ANSWER

        def run(call: CallRecord, step: _Step) -> CallRecord:
            call = replace(call, local_fingerprints=fps)
            if role is MediaRole.ANSWER:
                return self._send_answer(call, step, sdp)
            call = replace(call, pending_offer=sdp)
            return self._flush_offer(call, step)

        self._apply(event, run, local=True)

    def media_up(self, now_ms: int, *, call_id: bytes, generation: int) -> None:
        """The transport of ``generation`` carries media (ICE and DTLS done and checked)."""
        call = self._media_call(call_id)
        if call is None:
            return
        if generation != call.generation or not call.answer_done:
            self._apply(Event.MEDIA_STALE, lambda c, s: c, local=True)
            return

        def run(call: CallRecord, step: _Step) -> CallRecord:
            call = replace(call, state=CallState.ACTIVE, deadline_ms=None)
            step.effects.append(_changed(call))
            return call

        self._apply(Event.MEDIA_UP, run, local=True)

    def media_down(self, now_ms: int, *, call_id: bytes, generation: int) -> None:
        """The transport of ``generation`` failed (ICE, DTLS or a fingerprint check)."""
        call = self._media_call(call_id)
        if call is None:
            return
        if generation != call.generation:
            self._apply(Event.MEDIA_STALE, lambda c, s: c, local=True)
            return

        def run(call: CallRecord, step: _Step) -> CallRecord:
            if call.state is CallState.OUTGOING_RINGING:
                self._cancel_others(step, call, CancelReason.CANCELLED)
                return self._end(call, step, EndReason.FAILED)
            if call.state is CallState.ACTIVE:
                # Keep the call on a new transport. Both sides may start it; when
                # both do, the caller's restart wins (see _on_restart_offer).
                return self._begin_restart(call, step, now_ms)
            return self._hang_up(call, step, HangupReason.MEDIA_FAILED, EndReason.FAILED)

        self._apply(Event.MEDIA_DOWN, run, local=True)

    # --- timers -------------------------------------------------------------------

    def tick(self, now_ms: int) -> None:
        """Fire the call's timer if ``now_ms`` reached :meth:`next_deadline`."""
        call = self._call
        if call is None or call.deadline_ms is None or now_ms < call.deadline_ms:
            return

        def run(call: CallRecord, step: _Step) -> CallRecord:
            if call.state is CallState.OUTGOING_RINGING:
                self._cancel_others(step, call, CancelReason.NO_ANSWER)
                step.effects.append(
                    RecordMissedCall(
                        call_id=call.call_id, peer=call.peer, at_ms=now_ms, video=call.video
                    )
                )
                return self._end(call, step, EndReason.NO_ANSWER)
            if call.state is CallState.INCOMING_RINGING:
                return self._end(call, step, EndReason.MISSED)
            return self._hang_up(call, step, HangupReason.SETUP_TIMEOUT, EndReason.FAILED)

        self._apply(Event.TIMEOUT, run)

    # --- the peer -----------------------------------------------------------------

    def receive(self, now_ms: int, *, from_user: str, from_device: str, data: bytes) -> None:
        """A signal decrypted from (``from_user``, ``from_device``), as the E2EE layer
        authenticated them. Raises :class:`~sottovoce.errors.DecodeError` or a
        :class:`~sottovoce.calls.errors.CallError`; either leaves the state unchanged."""
        signal = CallSignal.decode(data)
        if signal.to_device != self.device:
            raise BindingError("the signal is addressed to another device")
        if signal.from_device != from_device:
            raise BindingError("the signal names another sending device")
        if isinstance(signal, Invite):
            self._on_invite(now_ms, from_user, signal)
            return
        call = self._call
        early = self._early(signal, from_user, from_device)
        if early is not None and (call is None or call.call_id != signal.call_id):
            # The signal overtook its call's invite (they travel different paths, or
            # are reordered on the way): remember the call, so it never rings.
            if TRANSITIONS[(self.state, early)] is not self.state:
                raise InternalError(f"{early.value} must not change the state")
            self._recent.append(signal.call_id)
            return
        if call is None or call.call_id != signal.call_id:
            if signal.call_id in self._recent:
                raise StaleSignal("the call has ended")
            raise UnknownCall("no such call")
        if call.state is CallState.ENDED:
            raise StaleSignal("the call has ended")
        if isinstance(signal, AnsweredElsewhere):
            if from_user != self.user or from_device == self.device or call.role is not Role.CALLEE:
                raise BindingError("answered-elsewhere comes only from our own other devices")
            if call.offer_done:
                raise OutOfOrderSignal("this device already answered the call")
            self._apply(
                Event.ANSWERED_ELSEWHERE,
                lambda c, s: self._end(c, s, EndReason.ANSWERED_ELSEWHERE),
            )
            return
        if from_user != call.peer:
            raise BindingError("the signal comes from someone not in the call")
        if call.role is Role.CALLER:
            self._from_callee(now_ms, call, from_device, signal)
        else:
            if from_device != call.selected:
                raise BindingError("the signal comes from another device than the caller's")
            self._from_caller(now_ms, call, signal)

    def _early(self, signal: CallSignal, from_user: str, from_device: str) -> Event | None:
        """The event of a signal that can arrive before its call's invite, if it is one.

        Our other device answering (it won the call), or the caller cancelling: either
        way the call must never ring here. A call already over is not early.
        """
        if signal.call_id in self._recent:
            return None
        if (
            isinstance(signal, AnsweredElsewhere)
            and from_user == self.user
            and from_device != self.device
        ):
            return Event.ANSWERED_EARLY
        if isinstance(signal, Cancel) and from_user != self.user:
            return Event.CANCELLED_EARLY
        return None

    def _on_invite(self, now_ms: int, from_user: str, invite: Invite) -> None:
        if from_user == self.user:
            raise BindingError("a device cannot ring its own user")
        call = self._call
        if invite.call_id in self._recent or (call is not None and call.call_id == invite.call_id):
            raise StaleSignal("this call was already seen")
        record = CallRecord(
            call_id=invite.call_id,
            role=Role.CALLEE,
            peer=from_user,
            video=invite.video,
            state=CallState.INCOMING_RINGING,
            peer_devices=(invite.from_device,),
            selected=invite.from_device,
            deadline_ms=now_ms + CALL_RING_TIMEOUT_MS + CALL_RING_GRACE_MS,
            camera_on=invite.video,
        )
        if call is None or call.state is CallState.ENDED:

            def ring(call: CallRecord, step: _Step) -> CallRecord:
                self._send(step, call, call.selected, Ringing)
                return call

            self._apply(Event.INVITE, ring, start=record)
            return
        if call.state is CallState.INCOMING_RINGING and from_user == call.peer:
            # The same caller rings again: its cancel of the first call was lost
            # (or it redialled from another device). Ring for the new call only.
            def again(call: CallRecord, step: _Step) -> CallRecord:
                self._end(call, step, EndReason.MISSED)
                self._send(step, record, record.selected, Ringing)
                step.effects.append(_changed(record))
                return record

            self._apply(Event.INVITE_AGAIN, again)
            return

        def busy(call: CallRecord, step: _Step) -> CallRecord:
            step.effects.append(
                SendSignal(
                    user=from_user,
                    device=invite.from_device,
                    signal=Busy(
                        call_id=invite.call_id,
                        from_device=self.device,
                        to_device=invite.from_device,
                    ),
                )
            )
            step.ended.append(invite.call_id)
            return call

        if (
            call.state is CallState.OUTGOING_RINGING
            and call.role is Role.CALLER
            and from_user == call.peer
        ):
            if call.call_id < invite.call_id:
                # Glare, and ours survives: the peer computes the same and cancels theirs.
                def win(call: CallRecord, step: _Step) -> CallRecord:
                    step.ended.append(invite.call_id)
                    return call

                self._apply(Event.GLARE_WIN, win)
                return

            def lose(call: CallRecord, step: _Step) -> CallRecord:
                self._cancel_others(step, call, CancelReason.GLARE)
                self._end(call, step, EndReason.SUPERSEDED)
                answering = CallRecord(
                    call_id=invite.call_id,
                    role=Role.CALLEE,
                    peer=from_user,
                    video=invite.video or call.video,
                    state=CallState.CONNECTING,
                    peer_devices=(invite.from_device,),
                    own_devices=call.own_devices,
                    selected=invite.from_device,
                    deadline_ms=now_ms + CALL_SETUP_TIMEOUT_MS,
                    camera_on=call.camera_on,
                )
                # The user already chose to talk to this peer: accept at once.
                self._send(step, answering, answering.selected, Accept)
                step.effects.append(_changed(answering))
                return answering

            self._apply(Event.GLARE_LOSE, lose)
            return
        self._apply(Event.INVITE_BUSY, busy)

    def _from_callee(self, now_ms: int, call: CallRecord, device: str, signal: CallSignal) -> None:
        if device not in call.peer_devices:
            raise BindingError("the signal comes from a device this call did not ring")
        if call.selected is not None and device != call.selected:
            # A device that lost the race to answer, and may not know yet (its
            # sibling's AnsweredElsewhere is on the way): nothing it says matters.
            self._apply(Event.PEER_LATE, lambda c, s: c)
            return
        if isinstance(signal, Ringing):

            def ringing(call: CallRecord, step: _Step) -> CallRecord:
                if call.selected is None:
                    step.effects.append(PeerRinging(call_id=call.call_id, device=device))
                return call

            self._apply(Event.PEER_RINGING, ringing)
        elif isinstance(signal, Accept):

            def accepted(call: CallRecord, step: _Step) -> CallRecord:
                call = replace(_connecting(call, now_ms), selected=device)
                step.effects.append(_changed(call))
                return self._flush_offer(call, step)

            self._apply(Event.PEER_ACCEPT, accepted)
        elif isinstance(signal, Decline | Busy):
            event, cancel, end = _REFUSALS[type(signal)]

            def refused(call: CallRecord, step: _Step) -> CallRecord:
                self._cancel_others(step, call, cancel, skip=device)
                return self._end(call, step, end)

            self._apply(event, refused)
        elif call.selected is None:
            raise BindingError("the signal comes from a device that has not answered")
        elif isinstance(signal, Answer):
            self._on_answer(call, signal)
        else:
            self._in_call(now_ms, call, signal)

    def _from_caller(self, now_ms: int, call: CallRecord, signal: CallSignal) -> None:
        if isinstance(signal, Cancel):
            reason = _CANCEL_ENDS[signal.reason]
            self._apply(Event.CANCEL, lambda c, s: self._end(c, s, reason))
        elif isinstance(signal, Offer):
            self._on_offer(call, signal)
        elif isinstance(signal, Ringing | Accept | Decline | Busy | Answer):
            raise OutOfOrderSignal(f"a callee does not receive {type(signal).__name__}")
        else:
            self._in_call(now_ms, call, signal)

    def _in_call(self, now_ms: int, call: CallRecord, signal: CallSignal) -> None:
        """Signals either side may send once the call is being set up."""
        if isinstance(signal, Hangup):
            self._apply(Event.PEER_HANGUP, lambda c, s: self._end(c, s, EndReason.PEER_HUNG_UP))
        elif isinstance(signal, MuteState):

            def muted(call: CallRecord, step: _Step) -> CallRecord:
                step.effects.append(
                    PeerMediaState(
                        call_id=call.call_id,
                        audio_muted=signal.audio_muted,
                        camera_on=signal.camera_on,
                        screen_on=signal.screen_on,
                    )
                )
                return call

            self._apply(Event.PEER_MUTE, muted)
        elif isinstance(signal, IceCandidates):
            if signal.generation != call.generation or not call.offer_done:
                raise OutOfOrderSignal("candidates for another ICE generation")
            effect = AddCandidates(
                call_id=call.call_id,
                generation=signal.generation,
                candidates=tuple((c.mid, c.line) for c in signal.candidates),
                complete=signal.complete,
            )
            self._apply(Event.CANDIDATES, lambda c, s: _with(c, s, effect))
        elif isinstance(signal, IceRestartOffer):
            self._on_restart_offer(now_ms, call, signal)
        elif isinstance(signal, IceRestartAnswer):
            self._on_restart_answer(call, signal)
        elif isinstance(signal, RecordingConsent):
            self._on_consent(call, signal.state)
        else:
            raise OutOfOrderSignal(f"unexpected {type(signal).__name__}")

    def _on_offer(self, call: CallRecord, offer: Offer) -> None:
        if call.state is not CallState.CONNECTING or call.offer_done or call.generation != 0:
            raise OutOfOrderSignal("an offer before accept, or a second offer")
        check_fingerprints(offer.sdp, offer.fingerprints)

        def run(call: CallRecord, step: _Step) -> CallRecord:
            call = replace(
                call,
                offer_done=True,
                offer_nonce=offer.nonce,
                peer_fingerprints=offer.fingerprints,
            )
            # This device won the call: stop the others ringing.
            for device in call.own_devices:
                step.effects.append(
                    SendSignal(
                        user=self.user,
                        device=device,
                        signal=AnsweredElsewhere(
                            call_id=call.call_id, from_device=self.device, to_device=device
                        ),
                    )
                )
            step.effects.append(_answer_effect(call, offer.sdp))
            return call

        self._apply(Event.OFFER, run)

    def _on_answer(self, call: CallRecord, answer: Answer) -> None:
        if not call.offer_done or call.answer_done or call.generation != 0:
            raise OutOfOrderSignal("an answer without an outstanding offer")
        if answer.offer_nonce != call.offer_nonce:
            raise BindingError("the answer is for another offer")
        check_fingerprints(answer.sdp, answer.fingerprints)

        def run(call: CallRecord, step: _Step) -> CallRecord:
            call = replace(call, answer_done=True, peer_fingerprints=answer.fingerprints)
            step.effects.append(_apply_answer_effect(call, answer.sdp))
            return call

        self._apply(Event.ANSWER, run)

    def _on_restart_offer(self, now_ms: int, call: CallRecord, offer: IceRestartOffer) -> None:
        if not call.peer_fingerprints:
            raise OutOfOrderSignal("an ICE restart before the call was set up")
        restart_glare = (
            offer.generation == call.generation
            and call.generation > 0
            and call.offerer
            and not call.answer_done
        )
        if offer.generation != call.generation + 1 and not restart_glare:
            raise OutOfOrderSignal("an ICE restart for an unexpected generation")
        if offer.generation > MAX_CALL_ICE_RESTARTS:
            raise OutOfOrderSignal("too many ICE restarts")
        _check_pinned(offer.sdp, offer.fingerprints, call.peer_fingerprints)
        if restart_glare and call.role is Role.CALLER:
            self._apply(Event.RESTART_OFFER_IGNORED, lambda c, s: c)
            return

        def run(call: CallRecord, step: _Step) -> CallRecord:
            call = _restarting(call, now_ms, offer.generation, offer_nonce=offer.nonce)
            step.effects.append(_changed(call))
            step.effects.append(_answer_effect(call, offer.sdp))
            return call

        self._apply(Event.RESTART_OFFER, run)

    def _on_restart_answer(self, call: CallRecord, answer: IceRestartAnswer) -> None:
        if (
            answer.generation != call.generation
            or call.generation == 0
            or not call.offerer
            or not call.offer_done
            or call.answer_done
        ):
            raise OutOfOrderSignal("a restart answer without an outstanding restart offer")
        if answer.offer_nonce != call.offer_nonce:
            raise BindingError("the restart answer is for another offer")
        _check_pinned(answer.sdp, answer.fingerprints, call.peer_fingerprints)

        def run(call: CallRecord, step: _Step) -> CallRecord:
            call = replace(call, answer_done=True)
            step.effects.append(_apply_answer_effect(call, answer.sdp))
            return call

        self._apply(Event.RESTART_ANSWER, run)

    def _on_consent(self, call: CallRecord, consent: ConsentState) -> None:
        if consent is not ConsentState.REQUEST and not call.recording_requested:
            raise OutOfOrderSignal("a recording consent nobody asked for")

        def run(call: CallRecord, step: _Step) -> CallRecord:
            if consent is ConsentState.REQUEST:
                step.effects.append(RecordingRequested(call_id=call.call_id))
                return call
            allowed = consent is ConsentState.GRANT
            step.effects.append(RecordingPermission(call_id=call.call_id, allowed=allowed))
            return replace(call, recording_allowed=allowed, recording_requested=allowed)

        self._apply(Event.PEER_CONSENT, run)

    # --- shared steps -------------------------------------------------------------

    def _begin_restart(self, call: CallRecord, step: _Step, now_ms: int) -> CallRecord:
        if not call.answer_done or not call.peer_fingerprints:
            raise CallUsageError("ICE can be restarted once the call is set up")
        if call.generation >= MAX_CALL_ICE_RESTARTS:
            raise CallUsageError("too many ICE restarts in this call")
        call = _restarting(call, now_ms, call.generation + 1, offer_nonce=None)
        step.effects.append(_changed(call))
        step.effects.append(_create_offer(call))
        return call

    def _flush_offer(self, call: CallRecord, step: _Step) -> CallRecord:
        """Send our offer once there is both an offer and a device to send it to."""
        if call.pending_offer is None or call.selected is None:
            return call
        nonce = self._send_sdp(step, call, (Offer, IceRestartOffer), call.pending_offer)
        return replace(call, pending_offer=None, offer_nonce=nonce, offer_done=True)

    def _send_answer(self, call: CallRecord, step: _Step, sdp: str) -> CallRecord:
        if call.offer_nonce is None:
            raise InternalError("an answer without the offer's nonce")
        self._send_sdp(
            step, call, (Answer, IceRestartAnswer), sdp, offer_nonce=call.offer_nonce
        )
        return replace(call, answer_done=True)

    def _send_sdp(
        self,
        step: _Step,
        call: CallRecord,
        kinds: tuple[type[CallSignal], type[CallSignal]],
        sdp: str,
        **body: object,
    ) -> bytes:
        """Send our offer or answer under a fresh nonce, and return the nonce.

        ``kinds`` is (the call's first, an ICE restart's): a restart names its
        generation. The peer learns our mute state as soon as the call is being set up.
        """
        first, restart = kinds
        if call.generation:
            body["generation"] = call.generation
        nonce = self._rng(CALL_NONCE_BYTES)
        self._send(
            step,
            call,
            call.selected,
            restart if call.generation else first,
            nonce=nonce,
            fingerprints=call.local_fingerprints,
            sdp=sdp,
            **body,
        )
        if call.generation == 0:
            self._send_mute(step, call)
        return nonce

    def _send_mute(self, step: _Step, call: CallRecord) -> None:
        if call.selected is not None and call.state in (CallState.CONNECTING, CallState.ACTIVE):
            self._send(
                step,
                call,
                call.selected,
                MuteState,
                audio_muted=call.audio_muted,
                camera_on=call.camera_on,
                screen_on=call.screen_on,
            )

    def _hang_up(
        self, call: CallRecord, step: _Step, why: HangupReason, reason: EndReason
    ) -> CallRecord:
        self._send(step, call, call.selected, Hangup, reason=why)
        if call.role is Role.CALLER:
            # A device that accepted too late, or rang while the call was set up,
            # may not have heard from the winner yet.
            self._cancel_others(step, call, CancelReason.CANCELLED)
        return self._end(call, step, reason)

    def _cancel_others(
        self, step: _Step, call: CallRecord, why: CancelReason, *, skip: str | None = None
    ) -> None:
        for device in call.peer_devices:
            if device not in (skip, call.selected):
                self._send(step, call, device, Cancel, reason=why)

    def _end(self, call: CallRecord, step: _Step, reason: EndReason) -> CallRecord:
        ended = replace(
            call, state=CallState.ENDED, reason=reason, deadline_ms=None, pending_offer=None
        )
        step.effects.append(StopMedia(call_id=call.call_id))
        step.effects.append(_changed(ended))
        step.ended.append(call.call_id)
        return ended

    def _send(
        self,
        step: _Step,
        call: CallRecord,
        device: str | None,
        kind: type[CallSignal],
        **body: object,
    ) -> None:
        if device is None:
            raise InternalError("a signal without a destination device")
        signal = kind(call_id=call.call_id, from_device=self.device, to_device=device, **body)
        step.effects.append(SendSignal(user=call.peer, device=device, signal=signal))

    # --- the transaction ----------------------------------------------------------

    def _media_call(self, call_id: bytes) -> CallRecord | None:
        call = self._call
        if call is None or call.call_id != call_id or call.state is CallState.ENDED:
            return None
        return call

    def _local(self, event: Event, run: _Handler) -> None:
        self._apply(event, run, local=True)

    def _apply(
        self, event: Event, run: _Handler, *, start: CallRecord | None = None, local: bool = False
    ) -> None:
        """Look ``event`` up, run its handler on a copy, check, then commit.

        ``local``: the input came from this device (the user or the media layer),
        so a pair missing from the table is a :class:`CallUsageError`, not the
        peer's :class:`OutOfOrderSignal`.
        """
        before = self.state
        target = TRANSITIONS.get((before, event))
        if target is None:
            if local:
                raise CallUsageError(f"cannot {event.value} while {before.value}")
            raise OutOfOrderSignal(f"{event.value} is not valid while {before.value}")
        step = _Step(effects=[], ended=[])
        call = start if start is not None else self._call
        if call is None:
            raise InternalError("a transition without a call")
        if start is not None:
            step.effects.append(_changed(start))
        after = run(call, step)
        if after.state is not target:
            raise InternalError(
                f"{event.value} led {before.value} to {after.state.value}, not {target.value}"
            )
        if (after.state is not before or after.call_id != call.call_id) and not any(
            isinstance(e, StateChanged) and e.call_id == after.call_id and e.state is after.state
            for e in step.effects
        ):
            raise InternalError(f"{event.value} changed the state without telling the UI")
        # Commit: nothing above touched the machine.
        self._call = after
        self._recent.extend(i for i in step.ended if i not in self._recent)
        self._effects.extend(step.effects)


def _devices(devices: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(validate_device_id(d) for d in devices))
    if len(out) > MAX_CALL_DEVICES:
        raise CallUsageError(f"at most {MAX_CALL_DEVICES} devices per call")
    return out


def _changed(call: CallRecord) -> StateChanged:
    return StateChanged(
        call_id=call.call_id,
        peer=call.peer,
        role=call.role,
        state=call.state,
        reason=call.reason,
        video=call.video,
    )


def _connecting(call: CallRecord, now_ms: int) -> CallRecord:
    """``call`` picked up (here or by the peer): media setup starts, with its timer."""
    return replace(call, state=CallState.CONNECTING, deadline_ms=now_ms + CALL_SETUP_TIMEOUT_MS)


def _restarting(
    call: CallRecord, now_ms: int, generation: int, *, offer_nonce: bytes | None
) -> CallRecord:
    """``call`` setting up ICE generation ``generation`` (RFC 8445 §9): we offer
    (``offer_nonce`` None), or we answer the peer's offer, which carried the nonce."""
    answering = offer_nonce is not None
    return replace(
        call,
        state=CallState.CONNECTING,
        generation=generation,
        offerer=not answering,
        offer_nonce=offer_nonce,
        pending_offer=None,
        offer_done=answering,
        answer_done=False,
        deadline_ms=now_ms + CALL_RECONNECT_TIMEOUT_MS,
    )


def _with(call: CallRecord, step: _Step, effect: Effect) -> CallRecord:
    step.effects.append(effect)
    return call


def _create_offer(call: CallRecord) -> CreateDescription:
    return _describe(call, MediaRole.OFFER, None, ())


def _answer_effect(call: CallRecord, sdp: str) -> CreateDescription:
    return _describe(call, MediaRole.ANSWER, _from_peer(sdp), call.peer_fingerprints)


def _describe(
    call: CallRecord,
    role: MediaRole,
    remote_sdp: str | None,
    expected: tuple[Fingerprint, ...],
) -> CreateDescription:
    return CreateDescription(
        call_id=call.call_id,
        generation=call.generation,
        role=role,
        remote_sdp=remote_sdp,
        expected_fingerprints=expected,
    )


def _apply_answer_effect(call: CallRecord, sdp: str) -> ApplyAnswer:
    return ApplyAnswer(
        call_id=call.call_id,
        generation=call.generation,
        remote_sdp=_from_peer(sdp),
        expected_fingerprints=call.peer_fingerprints,
    )


def _from_peer(sdp: str) -> str:
    """The peer's SDP as our media layer takes it: without the RFC 6464 audio level,
    which SRTP leaves in the clear (it would tell the network who speaks when)."""
    return drop_header_extension(sdp, AUDIO_LEVEL_URI)


def _check_pinned(
    sdp: str, signalled: tuple[Fingerprint, ...], pinned: tuple[Fingerprint, ...]
) -> None:
    """A restart keeps the certificate: the signalled set is the pinned one and the SDP's."""
    if frozenset(signalled) != frozenset(pinned):
        raise BindingError("an ICE restart with another DTLS certificate")
    check_fingerprints(sdp, signalled)
