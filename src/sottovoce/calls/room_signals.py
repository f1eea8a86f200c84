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
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError, UsageError
from sottovoce.identity.certificates import validate_device_id, validate_username
from sottovoce.limits import (
    CALL_ID_BYTES,
    CALL_NONCE_BYTES,
    MAX_CALL_SDP_BYTES,
    MAX_ROOM_CALL_SIGNAL_BYTES,
    MAX_SFU_ID_LEN,
)

_VERSION = 1
#: Janus ids (rooms, feeds) the server derives: lower-case hex, or any short token.
_SFU_ID_RE = re.compile(r"[A-Za-z0-9_-]+")


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


def _check_device(user: object, device: object) -> None:
    if not isinstance(user, str) or not isinstance(device, str):
        raise UsageError("user and device are strings")
    validate_username(user)
    validate_device_id(device)


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("non-ASCII identifier") from None


def _check_bytes(value: object, name: str, *, min_len: int = 1) -> None:
    if not isinstance(value, bytes) or not min_len <= len(value) <= MAX_ROOM_CALL_SIGNAL_BYTES:
        raise UsageError(f"{name} is {min_len}-{MAX_ROOM_CALL_SIGNAL_BYTES} bytes")


def _check_sdp(sdp: object) -> None:
    if not isinstance(sdp, str) or not sdp or "\x00" in sdp:
        raise UsageError("an SDP is a non-empty string")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_CALL_SDP_BYTES:
        raise UsageError("SDP too large")


def _read_sdp(r: Reader) -> str:
    raw = r.opaque_v()
    if len(raw) > MAX_CALL_SDP_BYTES:
        raise DecodeError("SDP too large")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("SDP is not UTF-8") from None


def _enum(kind: type[IntEnum], value: int) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise DecodeError(f"unknown {kind.__name__}") from None


def _redacted_repr(obj: object, hidden: tuple[str, ...]) -> str:
    shown = []
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.name in hidden:
            shown.append(f"{f.name}=<{len(value)} bytes>" if value else f"{f.name}=<none>")
        elif isinstance(value, bytes):
            shown.append(f"{f.name}={value.hex()[:16]}")
        else:
            shown.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(shown)})"


S = TypeVar("S", bound="RoomCallSignal")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class RoomCallSignal:
    """Fields every room-call signal carries; see the module docstring for the layout."""

    TYPE: ClassVar[RoomSignalType]
    _HIDDEN: ClassVar[tuple[str, ...]] = ()

    call_id: bytes
    from_user: str
    from_device: str

    def __post_init__(self) -> None:
        if not isinstance(self.call_id, bytes) or len(self.call_id) != CALL_ID_BYTES:
            raise UsageError(f"a call id is {CALL_ID_BYTES} bytes")
        _check_device(self.from_user, self.from_device)
        self._check_body()

    @property
    def sender(self) -> tuple[str, str]:
        return (self.from_user, self.from_device)

    def _check_body(self) -> None:
        """Each body validates itself on construction."""

    def _write_body(self, w: Writer) -> None:
        """Bodiless signals write nothing."""

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {}

    def encode(self) -> bytes:
        w = Writer()
        w.u8(_VERSION)
        w.u8(self.TYPE)
        w.raw(self.call_id)
        w.opaque8(self.from_user.encode("ascii"))
        w.opaque8(self.from_device.encode("ascii"))
        self._write_body(w)
        return w.getvalue()

    @classmethod
    def decode(cls: type[S], data: bytes) -> S:
        """Decode any signal (on ``RoomCallSignal``) or one kind; only DecodeError escapes."""
        if len(data) > MAX_ROOM_CALL_SIGNAL_BYTES:
            raise DecodeError("room call signal too large")

        def read(r: Reader) -> RoomCallSignal:
            if r.u8() != _VERSION:
                raise DecodeError("unknown room call signal version")
            kind = _SIGNALS.get(r.u8())
            if kind is None:
                raise DecodeError("unknown room call signal type")
            header: dict[str, Any] = {
                "call_id": r.raw(CALL_ID_BYTES),
                "from_user": _ascii(r.opaque8()),
                "from_device": _ascii(r.opaque8()),
            }
            body = kind._read_body(r)
            try:
                return kind(**header, **body)
            except UsageError as exc:
                raise DecodeError(str(exc)) from None

        signal = decode(read, data)
        if not isinstance(signal, cls):
            raise DecodeError(f"expected a {cls.__name__} signal")
        return signal

    def describe(self) -> str:
        """Type and call id only: safe for logs."""
        return f"{type(self).__name__}(call={self.call_id.hex()[:8]})"

    def __repr__(self) -> str:
        return _redacted_repr(self, self._HIDDEN)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Start(RoomCallSignal):
    """A device started a call in the room (it is the call group's first member)."""

    TYPE = RoomSignalType.START
    mode: CallMode

    def _check_body(self) -> None:
        if not isinstance(self.mode, CallMode):
            raise UsageError("mode is a CallMode")

    def _write_body(self, w: Writer) -> None:
        w.u8(self.mode)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {"mode": _enum(CallMode, r.u8())}


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Join(RoomCallSignal):
    """A room member asks to join: its KeyPackage for the call group (signed with the
    same key as its leaf in the room's group, RFC 9420 §10) and the SFrame cipher
    suites (RFC 9605 §8.1) it can do."""

    TYPE = RoomSignalType.JOIN
    _HIDDEN = ("key_package",)
    key_package: bytes
    sframe_suites: tuple[int, ...]

    def _check_body(self) -> None:
        _check_bytes(self.key_package, "key_package")
        if (
            not isinstance(self.sframe_suites, tuple)
            or not 0 <= len(self.sframe_suites) <= 16
            or not all(isinstance(s, int) and 0 <= s <= 0xFFFF for s in self.sframe_suites)
        ):
            raise UsageError("sframe_suites is up to 16 uint16 values")

    def _write_body(self, w: Writer) -> None:
        w.opaque_v(self.key_package)
        w.vector_v(self.sframe_suites, lambda w, s: w.u16(s))

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        kp = r.opaque_v()
        suites = r.vector_v(lambda r: r.u16())
        if len(suites) > 16:
            raise DecodeError("too many SFrame suites")
        return {"key_package": kp, "sframe_suites": tuple(suites)}


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveProof:
    """A leaver's signed word that it left: the removed leaf and the signature from
    its :class:`Leave` (checked by every member against that leaf's key)."""

    leaf: int
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.leaf, int) or not 0 <= self.leaf < 1 << 32:
            raise UsageError("leaf is a uint32")
        if not isinstance(self.signature, bytes) or not 1 <= len(self.signature) <= 255:
            raise UsageError("a leave signature is 1-255 bytes")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Commit(RoomCallSignal):
    """A commit of the call group at ``epoch`` (an MLSMessage), the Welcome for the
    devices it adds (empty if none), and the proof that each removed device still in
    the room asked to leave. The first valid commit for an epoch in the room's
    order wins; later ones for that epoch are void."""

    TYPE = RoomSignalType.COMMIT
    _HIDDEN = ("commit", "welcome")
    epoch: int
    commit: bytes
    welcome: bytes
    leaves: tuple[LeaveProof, ...] = ()

    def _check_body(self) -> None:
        if not isinstance(self.epoch, int) or not 0 <= self.epoch < 1 << 64:
            raise UsageError("epoch is a uint64")
        _check_bytes(self.commit, "commit")
        _check_bytes(self.welcome, "welcome", min_len=0)
        if not isinstance(self.leaves, tuple) or not all(
            isinstance(p, LeaveProof) for p in self.leaves
        ):
            raise UsageError("leaves are LeaveProof values")
        if len({p.leaf for p in self.leaves}) != len(self.leaves):
            raise UsageError("one leave proof per leaf")

    def _write_body(self, w: Writer) -> None:
        w.u64(self.epoch)
        w.opaque_v(self.commit)
        w.opaque_v(self.welcome)

        def one(w: Writer, p: LeaveProof) -> None:
            w.u32(p.leaf)
            w.opaque8(p.signature)

        w.vector_v(self.leaves, one)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        def one(r: Reader) -> LeaveProof:
            try:
                return LeaveProof(leaf=r.u32(), signature=r.opaque8())
            except UsageError as exc:
                raise DecodeError(str(exc)) from None

        return {
            "epoch": r.u64(),
            "commit": r.opaque_v(),
            "welcome": r.opaque_v(),
            "leaves": tuple(r.vector_v(one)),
        }


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Leave(RoomCallSignal):
    """The sender leaves the call; the next committer removes it from the call group.

    ``signature`` is SignWithLabel(leaver's key, "sottovoce call leave", call_id ‖
    the encryption key of its leaf in the call group) (RFC 9420 §5.1.2): the
    committer passes it on in its :class:`Commit`, so members who never saw this
    signal (they joined later) can check that the removal was asked for.
    """

    TYPE = RoomSignalType.LEAVE
    signature: bytes

    def _check_body(self) -> None:
        if not isinstance(self.signature, bytes) or not 1 <= len(self.signature) <= 255:
            raise UsageError("a leave signature is 1-255 bytes")

    def _write_body(self, w: Writer) -> None:
        w.opaque8(self.signature)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {"signature": r.opaque8()}


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Refuse(RoomCallSignal):
    """A call member tells a joiner why it cannot join."""

    TYPE = RoomSignalType.REFUSE
    to_user: str
    to_device: str
    reason: RefuseReason

    def _check_body(self) -> None:
        _check_device(self.to_user, self.to_device)
        if not isinstance(self.reason, RefuseReason):
            raise UsageError("reason is a RefuseReason")

    def _write_body(self, w: Writer) -> None:
        w.opaque8(self.to_user.encode("ascii"))
        w.opaque8(self.to_device.encode("ascii"))
        w.u8(self.reason)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {
            "to_user": _ascii(r.opaque8()),
            "to_device": _ascii(r.opaque8()),
            "reason": _enum(RefuseReason, r.u8()),
        }


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Sealed(RoomCallSignal):
    """An MLS application message of the call group (a :class:`CallPayload` inside)."""

    TYPE = RoomSignalType.SEALED
    _HIDDEN = ("message",)
    message: bytes

    def _check_body(self) -> None:
        _check_bytes(self.message, "message")

    def _write_body(self, w: Writer) -> None:
        w.opaque_v(self.message)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {"message": r.opaque_v()}


_SIGNALS: dict[int, type[RoomCallSignal]] = {
    cls.TYPE: cls for cls in (Start, Join, Commit, Leave, Refuse, Sealed)
}


# --- inside the call group -------------------------------------------------------

P = TypeVar("P", bound="CallPayload")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CallPayload:
    """What call members say to each other inside the call group::

    struct { uint8 version = 1; uint8 type; select (type) { ... } } CallPayload;
    """

    TYPE: ClassVar[PayloadType]
    _HIDDEN: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self._check_body()

    def _check_body(self) -> None:
        """Each body validates itself on construction."""

    def _write_body(self, w: Writer) -> None:
        raise NotImplementedError

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self) -> bytes:
        w = Writer()
        w.u8(_VERSION)
        w.u8(self.TYPE)
        self._write_body(w)
        return w.getvalue()

    @classmethod
    def decode(cls: type[P], data: bytes) -> P:
        def read(r: Reader) -> CallPayload:
            if r.u8() != _VERSION:
                raise DecodeError("unknown call payload version")
            kind = _PAYLOADS.get(r.u8())
            if kind is None:
                raise DecodeError("unknown call payload type")
            try:
                return kind(**kind._read_body(r))
            except UsageError as exc:
                raise DecodeError(str(exc)) from None

        payload = decode(read, data)
        if not isinstance(payload, cls):
            raise DecodeError(f"expected a {cls.__name__} payload")
        return payload

    def __repr__(self) -> str:
        return _redacted_repr(self, self._HIDDEN)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MediaState(CallPayload):
    """What the sender sends now (for the others' UI)."""

    TYPE = PayloadType.MEDIA_STATE
    audio_muted: bool
    camera_on: bool
    screen_on: bool

    def _check_body(self) -> None:
        if not all(isinstance(v, bool) for v in (self.audio_muted, self.camera_on, self.screen_on)):
            raise UsageError("media flags are bools")

    def _write_body(self, w: Writer) -> None:
        w.boolean(self.audio_muted)
        w.boolean(self.camera_on)
        w.boolean(self.screen_on)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {"audio_muted": r.boolean(), "camera_on": r.boolean(), "screen_on": r.boolean()}


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Feed(CallPayload):
    """The SFU publisher id the sender publishes under: receivers subscribe to it
    expecting the sender's SFrame keys, never trusting the SFU's own list."""

    TYPE = PayloadType.FEED
    feed_id: str

    def _check_body(self) -> None:
        if (
            not isinstance(self.feed_id, str)
            or not 1 <= len(self.feed_id) <= MAX_SFU_ID_LEN
            or not _SFU_ID_RE.fullmatch(self.feed_id)
        ):
            raise UsageError("bad SFU feed id")

    def _write_body(self, w: Writer) -> None:
        w.opaque8(self.feed_id.encode("ascii"))

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {"feed_id": _ascii(r.opaque8())}


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Recording(CallPayload):
    """One step of the recording consent round (docs/calls.md "Recording")."""

    TYPE = PayloadType.RECORDING
    request_id: bytes
    step: RecordingStep

    def _check_body(self) -> None:
        if not isinstance(self.request_id, bytes) or len(self.request_id) != CALL_NONCE_BYTES:
            raise UsageError(f"request_id is {CALL_NONCE_BYTES} bytes")
        if not isinstance(self.step, RecordingStep):
            raise UsageError("step is a RecordingStep")

    def _write_body(self, w: Writer) -> None:
        w.raw(self.request_id)
        w.u8(self.step)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {"request_id": r.raw(CALL_NONCE_BYTES), "step": _enum(RecordingStep, r.u8())}


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MeshOffer(CallPayload):
    """Mesh calls: the SDP offer of the sender's connection to one other participant."""

    TYPE = PayloadType.MESH_OFFER
    _HIDDEN = ("sdp",)
    to_user: str
    to_device: str
    nonce: bytes
    sdp: str

    def _check_body(self) -> None:
        _check_device(self.to_user, self.to_device)
        if not isinstance(self.nonce, bytes) or len(self.nonce) != CALL_NONCE_BYTES:
            raise UsageError(f"nonce is {CALL_NONCE_BYTES} bytes")
        _check_sdp(self.sdp)

    def _write_body(self, w: Writer) -> None:
        w.opaque8(self.to_user.encode("ascii"))
        w.opaque8(self.to_device.encode("ascii"))
        w.raw(self.nonce)
        w.opaque_v(self.sdp.encode("utf-8"))

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {
            "to_user": _ascii(r.opaque8()),
            "to_device": _ascii(r.opaque8()),
            "nonce": r.raw(CALL_NONCE_BYTES),
            "sdp": _read_sdp(r),
        }


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MeshAnswer(MeshOffer):
    """Mesh calls: the answer to the offer whose nonce it echoes."""

    TYPE = PayloadType.MESH_ANSWER


_PAYLOADS: dict[int, type[CallPayload]] = {
    cls.TYPE: cls for cls in (MediaState, Feed, Recording, MeshOffer, MeshAnswer)
}
