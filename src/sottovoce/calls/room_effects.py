"""What a :class:`~sottovoce.calls.room_call.RoomCall` asks its caller to do.

The engine performs no I/O: every input queues effects, and the client takes
them with ``effects()`` and carries them out in order. Only
:class:`SendRoomSignal` leaves the device, as an MLS application message of
the room; :class:`AppendAudit` goes into the room's signed audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.calls.errors import RoomCallRefused
from sottovoce.calls.media_keys import Device, EpochKeys
from sottovoce.protocol.audit import AuditAction


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRoomSignal:
    """Encrypt ``payload`` (an encoded room-call signal) as an MLS application message of
    the room and send it. The engine must later get it back through ``receive`` at its
    place in the room's order, like everyone else's (commits race on that order)."""

    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochChanged:
    """The call group moved to a new epoch: hand ``keys`` to the media layer now
    (``CallKeys.begin_epoch``); senders switch at once."""

    keys: EpochKeys


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantsChanged:
    """For the UI: who is in the call -- the call group's members, nothing else."""

    epoch: int
    participants: tuple[Device, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendersRevoked:
    """Accept no more media from these devices (they left the room); the commit that
    removes them from the call group follows."""

    devices: tuple[Device, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Joined:
    """This device is in the call (a Welcome of the call group was accepted, or it
    started the call)."""

    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Left:
    """This device is out of the call: stop media, close SFU sessions, forget keys."""

    removed: bool  # True: the others removed it (it left the room), not its own leave


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinRefused:
    """The request to join was refused; ``error`` says why in plain words."""

    error: RoomCallRefused


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerMediaState:
    """For the UI: what a participant says it sends."""

    device: Device
    audio_muted: bool
    camera_on: bool
    screen_on: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedAnnounced:
    """A participant publishes on the SFU under ``feed_id``: subscribe to it and accept
    on it only frames whose SFrame key id names ``device``."""

    device: Device
    feed_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshDescription:
    """Mesh calls: an SDP from ``device`` for the connection between it and us."""

    device: Device
    offer: bool
    nonce: bytes
    sdp: str

    def __repr__(self) -> str:
        kind = "offer" if self.offer else "answer"
        return f"MeshDescription(device={self.device}, {kind}, sdp=<redacted>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingRequested:
    """For the UI (or a bot's policy): ``by`` asks to record the call; answer with
    ``RoomCall.answer_recording``. No answer within 20 s counts as no."""

    by: Device
    request_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingState:
    """For every client's REC badge: a recording by ``by`` runs (``on``) or stopped.
    ``consented`` is False when this device never agreed to the recording it is told
    about (the requester broke the rule; the UI should say so)."""

    on: bool
    by: Device
    consented: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingPermission:
    """For the requester only: write the call's media to the recording now (or stop)."""

    allowed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingRefused:
    """For the requester: the recording did not start (``refused_by`` said no, or
    nobody answered in time when it is empty)."""

    refused_by: tuple[Device, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendAudit:
    """Append ``action`` to the room's signed audit trail (signed by this device)."""

    action: AuditAction


RoomCallEffect = (
    SendRoomSignal
    | EpochChanged
    | ParticipantsChanged
    | SendersRevoked
    | Joined
    | Left
    | JoinRefused
    | PeerMediaState
    | FeedAnnounced
    | MeshDescription
    | RecordingRequested
    | RecordingState
    | RecordingPermission
    | RecordingRefused
    | AppendAudit
)
