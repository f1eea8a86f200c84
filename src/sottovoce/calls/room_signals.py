"""Room-call signals: what devices say about a call in a room, and inside the call.

Two layers, both end-to-end encrypted:

* :class:`RoomCallSignal` travels as an MLS application message of the **room**
  (docs/calls.md "Room calls"), so every room member -- and no one else -- can
  read it, and the room's MLS layer authenticates its sender. It carries what a
  device outside the call must be able to send or read: that a call exists
  (start), a request to join it with a KeyPackage for the call's own MLS
  group, a refusal, the call group's commits and Welcomes, a leave, and
  sealed messages of the call group::

      struct {
          uint8  version = 1;
          uint8  type;                    // RoomSignalType
          opaque call_id[16];
          opaque from_user<1..255>;       // must be the room sender MLS authenticated
          opaque from_device<1..255>;
          select (type) { ... }           // the body of each class below
      } RoomCallSignal;

* :class:`CallPayload` travels *inside* :class:`Sealed`: an MLS application
  message of the **call's** group, readable by the devices in the call only
  (media state, the SFU feed a device publishes, recording consent, mesh SDPs).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from sottovoce.calls.wire import (
    BOOL,
    CALL_ID,
    DEVICE,
    NONCE,
    SDP,
    USER,
    Field,
    TaggedStruct,
    ascii8,
    enum_u8,
    vector_of,
)
from sottovoce.codec.tls import Reader, Writer
from sottovoce.errors import UsageError
from sottovoce.limits import MAX_ROOM_CALL_SIGNAL_BYTES, MAX_SFU_ID_LEN

#: Janus ids (rooms, feeds) the server derives: lower-case hex, or any short token.
_SFU_ID_RE = re.compile(r"[A-Za-z0-9_-]+")
#: RFC 9605 §8.1: a joiner names at most this many SFrame cipher suites.
_MAX_SFRAME_SUITES = 16


class RoomSignalType(IntEnum):
    START = 1
    JOIN = 2
    COMMIT = 3
    LEAVE = 4
    REFUSE = 5
    SEALED = 6


class CallMode(IntEnum):
    """How media flows: through the server's SFU, or a full mesh of P2P connections."""

    SFU = 1
    MESH = 2


class RefuseReason(IntEnum):
    """Why a join was refused (each maps to a typed error at the joiner)."""

    SFU_REQUIRED = 1  # a mesh call is full; more participants need an SFU
    FULL = 2  # the call has the most participants an SFU call may have
    NOT_A_MEMBER = 3  # the KeyPackage is not the room member's own
    NO_SFRAME = 4  # the joiner cannot do SFrame (no unencrypted mode)


class PayloadType(IntEnum):
    MEDIA_STATE = 1
    FEED = 2
    RECORDING = 3
    MESH_OFFER = 4
    MESH_ANSWER = 5


class RecordingStep(IntEnum):
    REQUEST = 0  # the requester asks every present participant
    GRANT = 1  # a participant agrees
    REFUSE = 2  # a participant refuses, or withdraws an earlier grant
    START = 3  # the requester: everyone agreed, recording runs
    STOP = 4  # the requester: recording stopped, or the request is over


def _bytes_field(*, min_len: int = 1) -> Field[bytes]:
    """An opaque<V> of at most a signal's size (a KeyPackage, a commit, a message)."""

    def check(value: object, name: str) -> None:
        if not isinstance(value, bytes) or not min_len <= len(value) <= MAX_ROOM_CALL_SIGNAL_BYTES:
            raise UsageError(f"{name} is {min_len}-{MAX_ROOM_CALL_SIGNAL_BYTES} bytes")

    return Field(check, Writer.opaque_v, Reader.opaque_v)


def _check_uint(bits: int) -> Callable[[object, str], None]:
    def check(value: object, name: str) -> None:
        if not isinstance(value, int) or not 0 <= value < 1 << bits:
            raise UsageError(f"{name} is a uint{bits}")

    return check


def _check_signature(value: object, name: str) -> None:
    if not isinstance(value, bytes) or not 1 <= len(value) <= 255:
        raise UsageError("a leave signature is 1-255 bytes")


def _check_suites(suites: object, name: str) -> None:
    if (
        not isinstance(suites, tuple)
        or not 0 <= len(suites) <= _MAX_SFRAME_SUITES
        or not all(isinstance(s, int) and 0 <= s <= 0xFFFF for s in suites)
    ):
        raise UsageError(f"{name} is up to {_MAX_SFRAME_SUITES} uint16 values")


def _check_leaves(leaves: object, name: str) -> None:
    if not isinstance(leaves, tuple) or not all(isinstance(p, LeaveProof) for p in leaves):
        raise UsageError("leaves are LeaveProof values")


def _write_leave(w: Writer, p: LeaveProof) -> None:
    w.u32(p.leaf)
    w.opaque8(p.signature)


def _read_leave(r: Reader) -> LeaveProof:
    return LeaveProof(leaf=r.u32(), signature=r.opaque8())


def _check_feed_id(value: object, name: str) -> None:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_SFU_ID_LEN
        or not _SFU_ID_RE.fullmatch(value)
    ):
        raise UsageError("bad SFU feed id")


OPAQUE = _bytes_field()
SIGNATURE: Field[bytes] = Field(_check_signature, Writer.opaque8, Reader.opaque8)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class RoomCallSignal(TaggedStruct):
    """Fields every room-call signal carries; see the module docstring for the layout."""

    TYPE: ClassVar[RoomSignalType]
    HEADER = (("call_id", CALL_ID), ("from_user", USER), ("from_device", DEVICE))
    WHAT = "room call signal"
    MAX_BYTES = MAX_ROOM_CALL_SIGNAL_BYTES

    call_id: bytes
    from_user: str
    from_device: str

    @property
    def sender(self) -> tuple[str, str]:
        return (self.from_user, self.from_device)

    def describe(self) -> str:
        """Type and call id only: safe for logs."""
        return f"{type(self).__name__}(call={self.call_id.hex()[:8]})"


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Start(RoomCallSignal):
    """A device started a call in the room (it is the call group's first member)."""

    TYPE = RoomSignalType.START
    BODY = (("mode", enum_u8(CallMode)),)
    mode: CallMode


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Join(RoomCallSignal):
    """A room member asks to join: its KeyPackage for the call group (signed with the
    same key as its leaf in the room's group, RFC 9420 §10) and the SFrame cipher
    suites (RFC 9605 §8.1) it can do."""

    TYPE = RoomSignalType.JOIN
    BODY = (
        ("key_package", OPAQUE),
        (
            "sframe_suites",
            vector_of(_check_suites, Writer.u16, Reader.u16, most=_MAX_SFRAME_SUITES),
        ),
    )
    HIDDEN = frozenset({"key_package"})
    key_package: bytes
    sframe_suites: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveProof:
    """A leaver's signed word that it left: the removed leaf and the signature from
    its :class:`Leave` (checked by every member against that leaf's key)."""

    leaf: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_uint(32)(self.leaf, "leaf")
        _check_signature(self.signature, "signature")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Commit(RoomCallSignal):
    """A commit of the call group at ``epoch`` (an MLSMessage), the Welcome for the
    devices it adds (empty if none), and the proof that each removed device still in
    the room asked to leave. The first valid commit for an epoch in the room's
    order wins; later ones for that epoch are void."""

    TYPE = RoomSignalType.COMMIT
    BODY = (
        ("epoch", Field(_check_uint(64), Writer.u64, Reader.u64)),
        ("commit", OPAQUE),
        ("welcome", _bytes_field(min_len=0)),
        ("leaves", vector_of(_check_leaves, _write_leave, _read_leave)),
    )
    HIDDEN = frozenset({"commit", "welcome"})
    epoch: int
    commit: bytes
    welcome: bytes
    leaves: tuple[LeaveProof, ...] = ()

    def _check_body(self) -> None:
        if len({p.leaf for p in self.leaves}) != len(self.leaves):
            raise UsageError("one leave proof per leaf")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Leave(RoomCallSignal):
    """The sender leaves the call; the next committer removes it from the call group.

    ``signature`` is SignWithLabel(leaver's key, "sottovoce call leave", call_id ‖
    the encryption key of its leaf in the call group) (RFC 9420 §5.1.2): the
    committer passes it on in its :class:`Commit`, so members who never saw this
    signal (they joined later) can check that the removal was asked for.
    """

    TYPE = RoomSignalType.LEAVE
    BODY = (("signature", SIGNATURE),)
    signature: bytes


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Refuse(RoomCallSignal):
    """A call member tells a joiner why it cannot join."""

    TYPE = RoomSignalType.REFUSE
    BODY = (("to_user", USER), ("to_device", DEVICE), ("reason", enum_u8(RefuseReason)))
    to_user: str
    to_device: str
    reason: RefuseReason


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Sealed(RoomCallSignal):
    """An MLS application message of the call group (a :class:`CallPayload` inside)."""

    TYPE = RoomSignalType.SEALED
    BODY = (("message", OPAQUE),)
    HIDDEN = frozenset({"message"})
    message: bytes


RoomCallSignal.KINDS = {cls.TYPE: cls for cls in (Start, Join, Commit, Leave, Refuse, Sealed)}


# --- inside the call group -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CallPayload(TaggedStruct):
    """What call members say to each other inside the call group::

    struct { uint8 version = 1; uint8 type; select (type) { ... } } CallPayload;
    """

    TYPE: ClassVar[PayloadType]
    WHAT = "call payload"


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MediaState(CallPayload):
    """What the sender sends now (for the others' UI)."""

    TYPE = PayloadType.MEDIA_STATE
    BODY = (("audio_muted", BOOL), ("camera_on", BOOL), ("screen_on", BOOL))
    audio_muted: bool
    camera_on: bool
    screen_on: bool


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Feed(CallPayload):
    """The SFU publisher id the sender publishes under: receivers subscribe to it
    expecting the sender's SFrame keys, never trusting the SFU's own list."""

    TYPE = PayloadType.FEED
    BODY = (("feed_id", ascii8(_check_feed_id)),)
    feed_id: str


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Recording(CallPayload):
    """One step of the recording consent round (docs/calls.md "Recording")."""

    TYPE = PayloadType.RECORDING
    BODY = (("request_id", NONCE), ("step", enum_u8(RecordingStep)))
    request_id: bytes
    step: RecordingStep


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MeshOffer(CallPayload):
    """Mesh calls: the SDP offer of the sender's connection to one other participant."""

    TYPE = PayloadType.MESH_OFFER
    BODY = (("to_user", USER), ("to_device", DEVICE), ("nonce", NONCE), ("sdp", SDP))
    HIDDEN = frozenset({"sdp"})
    to_user: str
    to_device: str
    nonce: bytes
    sdp: str


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MeshAnswer(MeshOffer):
    """Mesh calls: the answer to the offer whose nonce it echoes."""

    TYPE = PayloadType.MESH_ANSWER


CallPayload.KINDS = {cls.TYPE: cls for cls in (MediaState, Feed, Recording, MeshOffer, MeshAnswer)}
