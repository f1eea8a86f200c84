"""What the call engine asks its caller to do.

The engine never performs I/O: each method of
:class:`~sottovoce.calls.machine.CallMachine` queues effects, and the client
takes them with ``effects()`` and carries them out in order. Only
:class:`SendSignal` leaves the device, and only end-to-end encrypted;
:class:`RecordMissedCall` is the one durable record.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sottovoce.calls.signals import CallSignal, Fingerprint


class CallState(Enum):
    IDLE = "idle"
    OUTGOING_RINGING = "outgoing_ringing"
    INCOMING_RINGING = "incoming_ringing"
    CONNECTING = "connecting"
    ACTIVE = "active"
    ENDED = "ended"


class EndReason(Enum):
    HUNG_UP = "hung_up"  # we hung up
    PEER_HUNG_UP = "peer_hung_up"
    CANCELLED = "cancelled"  # we (the caller) gave up before an answer
    DECLINED = "declined"  # we declined
    PEER_DECLINED = "peer_declined"
    DECLINED_ELSEWHERE = "declined_elsewhere"  # another of our devices declined
    BUSY = "busy"  # the callee is in another call
    NO_ANSWER = "no_answer"  # caller: nobody answered in time
    MISSED = "missed"  # callee: we did not answer in time, or the caller gave up
    ANSWERED_ELSEWHERE = "answered_elsewhere"  # another of our devices took the call
    SUPERSEDED = "superseded"  # glare: this call lost to the one the peer placed
    FAILED = "failed"  # media never came up, or a lost path was not restored in time


class Role(Enum):
    CALLER = "caller"
    CALLEE = "callee"


class MediaRole(Enum):
    """Which half of an offer/answer exchange the local media layer performs."""

    OFFER = "offer"
    ANSWER = "answer"


@dataclass(frozen=True, slots=True, kw_only=True)
class SendSignal:
    """Encrypt ``signal`` for exactly (``user``, ``device``) and send it ephemerally.

    Never send it in the clear, never store it: it may hold an SDP (addresses,
    fingerprints). Several effects for one user may share one ephemeral send.
    """

    user: str
    device: str
    signal: CallSignal

    @property
    def payload(self) -> bytes:
        return self.signal.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChanged:
    """For the UI: the call moved to ``state`` (``reason`` is set when it ended)."""

    call_id: bytes
    peer: str
    role: Role
    state: CallState
    reason: EndReason | None
    video: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRinging:
    """For the caller's UI: a callee device rings (ringback instead of "calling")."""

    call_id: bytes
    device: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateDescription:
    """Make the local half of generation ``generation``'s offer/answer.

    ``role`` OFFER: create a peer connection and an offer (a new one with the
    same DTLS certificate when ``generation`` > 0: an ICE restart). ``role``
    ANSWER: apply ``remote_sdp`` as the offer and create the answer. Report the
    result with :meth:`CallMachine.local_description`. ``expected_fingerprints``
    (ANSWER only) are the peer's, signalled end to end: the certificate of the
    DTLS handshake must match one of them or the media layer fails the call.
    """

    call_id: bytes
    generation: int
    role: MediaRole
    remote_sdp: str | None
    expected_fingerprints: tuple[Fingerprint, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyAnswer:
    """Apply the peer's answer for generation ``generation``; the DTLS handshake that
    follows must present a certificate matching ``expected_fingerprints``."""

    call_id: bytes
    generation: int
    remote_sdp: str
    expected_fingerprints: tuple[Fingerprint, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AddCandidates:
    """Add trickled remote candidates (RFC 8838) to generation ``generation``."""

    call_id: bytes
    generation: int
    candidates: tuple[tuple[str, str], ...]  # (mid, candidate line)
    complete: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLocalMedia:
    """Switch what this device sends: microphone, camera, screen share."""

    call_id: bytes
    audio_muted: bool
    camera_on: bool
    screen_on: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerMediaState:
    """For the UI: what the peer says it sends."""

    call_id: bytes
    audio_muted: bool
    camera_on: bool
    screen_on: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StopMedia:
    """Close every peer connection of the call and release the devices."""

    call_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordMissedCall:
    """Store a durable "missed call" entry in both histories.

    The client sends it as an ordinary (durable, end-to-end encrypted) message
    to the peer, so it lands in the caller's history, the callee's inbox and
    every other device's copy alike. Emitted once, by the caller's device.
    """

    call_id: bytes
    peer: str
    at_ms: int
    video: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingRequested:
    """For the UI: the peer asks to record this call; answer with
    :meth:`CallMachine.grant_recording` or :meth:`CallMachine.refuse_recording`."""

    call_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingPermission:
    """Whether this device may record the call now (the peer's current consent)."""

    call_id: bytes
    allowed: bool


Effect = (
    SendSignal
    | StateChanged
    | PeerRinging
    | CreateDescription
    | ApplyAnswer
    | AddCandidates
    | SetLocalMedia
    | PeerMediaState
    | StopMedia
    | RecordMissedCall
    | RecordingRequested
    | RecordingPermission
)
