"""Call signals: what two devices say to each other to set up, run and end a call.

Every signal travels only inside an end-to-end encrypted payload (an Olm
message to one device for 1:1 calls), never in the clear: the server cannot
read an SDP, a candidate or a fingerprint, so it cannot swap a DTLS fingerprint
or learn an address. Each signal is encrypted for exactly one device and names
both ends, so a copy cannot be moved to another device or another call::

    struct {
        uint8  version = 1;
        uint8  type;                     // SignalType
        opaque call_id[16];
        opaque from_device<1..64>;       // must equal the device Olm authenticated
        opaque to_device<1..64>;         // must equal the device that decrypted it
        select (type) { ... }            // the body of each class below
    } CallSignal;

Offers and answers also carry fresh nonces (an answer echoes its offer's) and
the sender's DTLS certificate fingerprints (RFC 8122 §5), which must be exactly
the ``a=fingerprint`` lines of the SDP they carry; the media layer then checks
the certificate each DTLS handshake presents against them (docs/calls.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError, UsageError
from sottovoce.limits import (
    CALL_ID_BYTES,
    CALL_NONCE_BYTES,
    DEVICE_ID_MAX_LEN,
    MAX_CALL_CANDIDATE_BYTES,
    MAX_CALL_CANDIDATES,
    MAX_CALL_ICE_RESTARTS,
    MAX_CALL_SDP_BYTES,
)

_VERSION = 1
_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]+")
#: RFC 8843 §7: a MID is a short token; aiortc uses "0", "1", ...; browsers the same.
_MID_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
#: RFC 8839 §5.1: a candidate attribute value; printable ASCII, no line breaks.
_CANDIDATE_RE = re.compile(r"candidate:[\x21-\x7e][\x20-\x7e]*")


class SignalType(IntEnum):
    INVITE = 1
    RINGING = 2
    ACCEPT = 3
    DECLINE = 4
    BUSY = 5
    OFFER = 6
    ANSWER = 7
    ICE_CANDIDATES = 8
    HANGUP = 9
    CANCEL = 10
    MUTE_STATE = 11
    ANSWERED_ELSEWHERE = 12
    ICE_RESTART_OFFER = 13
    ICE_RESTART_ANSWER = 14
    RECORDING_CONSENT = 15


class HashAlgorithm(IntEnum):
    """RFC 8122 §5 hash functions (the names of the IANA "Hash Function Textual Names")."""

    SHA_256 = 1
    SHA_384 = 2
    SHA_512 = 3

    @property
    def sdp_name(self) -> str:
        return _HASH_NAMES[self]

    @property
    def digest_size(self) -> int:
        return _HASH_SIZES[self]

    @classmethod
    def from_sdp_name(cls, name: str) -> HashAlgorithm:
        for algorithm, known in _HASH_NAMES.items():
            if known == name.lower():
                return algorithm
        raise UsageError("unsupported fingerprint hash")


_HASH_NAMES = {
    HashAlgorithm.SHA_256: "sha-256",
    HashAlgorithm.SHA_384: "sha-384",
    HashAlgorithm.SHA_512: "sha-512",
}
_HASH_SIZES = {HashAlgorithm.SHA_256: 32, HashAlgorithm.SHA_384: 48, HashAlgorithm.SHA_512: 64}


class HangupReason(IntEnum):
    NORMAL = 0
    MEDIA_FAILED = 1
    SETUP_TIMEOUT = 2


class CancelReason(IntEnum):
    """Why a caller stops a callee device ringing."""

    CANCELLED = 0  # the caller gave up
    NO_ANSWER = 1  # nobody answered in time: a missed call
    DECLINED = 2  # another device of the callee declined
    BUSY = 3  # another device of the callee is in a call
    GLARE = 4  # both called each other; this call lost (docs/calls.md)


class ConsentState(IntEnum):
    """Recording consent, asked for and given per participant."""

    REQUEST = 0  # the sender wants to record and asks the receiver
    GRANT = 1  # the sender agrees to be recorded
    REFUSE = 2  # the sender refuses, or withdraws an earlier grant


@dataclass(frozen=True, slots=True, kw_only=True)
class Fingerprint:
    """One ``a=fingerprint`` value: a hash of the sender's DTLS certificate."""

    algorithm: HashAlgorithm
    digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.algorithm, HashAlgorithm):
            raise UsageError("fingerprint algorithm must be a HashAlgorithm")
        if not isinstance(self.digest, bytes) or len(self.digest) != self.algorithm.digest_size:
            raise UsageError("fingerprint digest has the wrong length for its hash")

    def sdp_value(self) -> str:
        """RFC 8122 §5: ``sha-256 AB:CD:...`` (upper-case hex pairs)."""
        return f"{self.algorithm.sdp_name} {':'.join(f'{b:02X}' for b in self.digest)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class IceCandidate:
    """One trickled candidate (RFC 8838 §4): the m-section it belongs to and its line."""

    mid: str
    line: str

    def __post_init__(self) -> None:
        if not isinstance(self.mid, str) or not _MID_RE.fullmatch(self.mid):
            raise UsageError("bad candidate mid")
        if (
            not isinstance(self.line, str)
            or len(self.line) > MAX_CALL_CANDIDATE_BYTES
            or not _CANDIDATE_RE.fullmatch(self.line)
        ):
            raise UsageError("bad candidate line")


S = TypeVar("S", bound="CallSignal")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CallSignal:
    """Fields every signal carries; see the module docstring for the layout."""

    TYPE: ClassVar[SignalType]

    call_id: bytes
    from_device: str
    to_device: str

    def __post_init__(self) -> None:
        if not isinstance(self.call_id, bytes) or len(self.call_id) != CALL_ID_BYTES:
            raise UsageError(f"a call id is {CALL_ID_BYTES} bytes")
        for device in (self.from_device, self.to_device):
            if (
                not isinstance(device, str)
                or not 1 <= len(device) <= DEVICE_ID_MAX_LEN
                or not _DEVICE_ID_RE.fullmatch(device)
            ):
                raise UsageError("bad device id in a call signal")
        self._check_body()

    def _check_body(self) -> None:
        """Each body validates itself on construction, so a malformed signal cannot exist."""

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
        w.opaque8(self.from_device.encode("ascii"))
        w.opaque8(self.to_device.encode("ascii"))
        self._write_body(w)
        return w.getvalue()

    @classmethod
    def decode(cls: type[S], data: bytes) -> S:
        """Decode any signal (on ``CallSignal``) or one kind (on a subclass).

        Only :class:`~sottovoce.errors.DecodeError` escapes.
        """

        def read(r: Reader) -> CallSignal:
            if r.u8() != _VERSION:
                raise DecodeError("unknown call signal version")
            kind = _CLASSES.get(r.u8())
            if kind is None:
                raise DecodeError("unknown call signal type")
            header: dict[str, Any] = {
                "call_id": r.raw(CALL_ID_BYTES),
                "from_device": _ascii(r.opaque8()),
                "to_device": _ascii(r.opaque8()),
            }
            body = kind._read_body(r)
            try:
                return kind(**header, **body)
            except UsageError as exc:  # self-validation of a decoded value
                raise DecodeError(str(exc)) from None

        signal = decode(read, data)
        if not isinstance(signal, cls):
            raise DecodeError(f"expected a {cls.__name__} signal")
        return signal

    def describe(self) -> str:
        """Type and call id only: safe for logs (no SDP, candidate or fingerprint)."""
        return f"{type(self).__name__}(call={self.call_id.hex()[:8]})"

    def __repr__(self) -> str:
        # SDPs and candidates hold addresses, fingerprints name a call's certificate:
        # keep them out of reprs, logs and tracebacks.
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("sdp", "candidates", "fingerprints"):
                shown.append(f"{f.name}=<redacted>")
            elif isinstance(value, bytes):
                shown.append(f"{f.name}={value.hex()[:16]}")
            else:
                shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("non-ASCII identifier") from None


def _enum(make: Callable[[int], IntEnum], value: int) -> IntEnum:
    try:
        return make(value)
    except ValueError:
        raise DecodeError("unknown enum value") from None


# --- shared pieces of bodies ---------------------------------------------------


def _check_nonce(value: object, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != CALL_NONCE_BYTES:
        raise UsageError(f"{name} is {CALL_NONCE_BYTES} bytes")


def _check_fingerprints(fps: object) -> None:
    if not isinstance(fps, tuple) or not 1 <= len(fps) <= len(HashAlgorithm):
        raise UsageError("between one and three fingerprints")
    if not all(isinstance(f, Fingerprint) for f in fps):
        raise UsageError("fingerprints must be Fingerprint values")
    algorithms = [f.algorithm for f in fps]
    if len(set(algorithms)) != len(algorithms):
        raise UsageError("one fingerprint per hash algorithm")
    # RFC 8827 §6.5: every WebRTC endpoint supports SHA-256 fingerprints.
    if HashAlgorithm.SHA_256 not in algorithms:
        raise UsageError("a SHA-256 fingerprint is required")


def _check_sdp(sdp: object) -> None:
    if not isinstance(sdp, str) or not sdp:
        raise UsageError("an SDP is a non-empty string")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_CALL_SDP_BYTES or "\x00" in sdp:
        raise UsageError("SDP too large or not text")


def _check_generation(generation: object) -> None:
    if not isinstance(generation, int) or not 0 <= generation <= MAX_CALL_ICE_RESTARTS:
        raise UsageError("ICE generation out of range")


def _write_fingerprints(w: Writer, fps: tuple[Fingerprint, ...]) -> None:
    def one(w: Writer, f: Fingerprint) -> None:
        w.u8(f.algorithm)
        w.opaque8(f.digest)

    w.vector_v(fps, one)


def _read_fingerprints(r: Reader) -> tuple[Fingerprint, ...]:
    def one(r: Reader) -> Fingerprint:
        try:
            algorithm = HashAlgorithm(r.u8())
        except ValueError:
            raise DecodeError("unknown fingerprint hash") from None
        return Fingerprint(algorithm=algorithm, digest=r.opaque8())

    try:
        return tuple(r.vector_v(one))
    except UsageError as exc:
        raise DecodeError(str(exc)) from None


def _read_sdp(r: Reader) -> str:
    raw = r.opaque_v()
    if len(raw) > MAX_CALL_SDP_BYTES:
        raise DecodeError("SDP too large")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("SDP is not UTF-8") from None


# --- the signals ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Invite(CallSignal):
    """Caller → every callee device: ring. Carries no SDP, so a device that never
    answers never learns the caller's addresses."""

    TYPE = SignalType.INVITE
    video: bool

    def _check_body(self) -> None:
        if not isinstance(self.video, bool):
            raise UsageError("video is a bool")

    def _write_body(self, w: Writer) -> None:
        w.boolean(self.video)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {"video": r.boolean()}


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Ringing(CallSignal):
    """Callee device → caller: this device is ringing."""

    TYPE = SignalType.RINGING


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Accept(CallSignal):
    """Callee device → caller: the user picked up here; send me the offer."""

    TYPE = SignalType.ACCEPT


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Decline(CallSignal):
    """Callee device → caller: the user declined."""

    TYPE = SignalType.DECLINE


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Busy(CallSignal):
    """Callee device → caller: this device is already in a call."""

    TYPE = SignalType.BUSY


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class AnsweredElsewhere(CallSignal):
    """Callee device → the callee's own other devices: I won the call; stop ringing."""

    TYPE = SignalType.ANSWERED_ELSEWHERE


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Offer(CallSignal):
    """Caller → the accepting device only: the SDP offer, bound to both devices."""

    TYPE = SignalType.OFFER
    nonce: bytes
    fingerprints: tuple[Fingerprint, ...]
    sdp: str

    def _check_body(self) -> None:
        _check_nonce(self.nonce, "nonce")
        _check_fingerprints(self.fingerprints)
        _check_sdp(self.sdp)

    def _write_body(self, w: Writer) -> None:
        w.raw(self.nonce)
        _write_fingerprints(w, self.fingerprints)
        w.opaque_v(self.sdp.encode("utf-8"))

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {
            "nonce": r.raw(CALL_NONCE_BYTES),
            "fingerprints": _read_fingerprints(r),
            "sdp": _read_sdp(r),
        }


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Answer(CallSignal):
    """Accepting device → caller: the SDP answer to the offer whose nonce it echoes."""

    TYPE = SignalType.ANSWER
    offer_nonce: bytes
    nonce: bytes
    fingerprints: tuple[Fingerprint, ...]
    sdp: str

    def _check_body(self) -> None:
        _check_nonce(self.offer_nonce, "offer_nonce")
        _check_nonce(self.nonce, "nonce")
        _check_fingerprints(self.fingerprints)
        _check_sdp(self.sdp)

    def _write_body(self, w: Writer) -> None:
        w.raw(self.offer_nonce)
        w.raw(self.nonce)
        _write_fingerprints(w, self.fingerprints)
        w.opaque_v(self.sdp.encode("utf-8"))

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {
            "offer_nonce": r.raw(CALL_NONCE_BYTES),
            "nonce": r.raw(CALL_NONCE_BYTES),
            "fingerprints": _read_fingerprints(r),
            "sdp": _read_sdp(r),
        }


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class IceRestartOffer(CallSignal):
    """Either side → the other: a new ICE transport for the same call (generation n)."""

    TYPE = SignalType.ICE_RESTART_OFFER
    generation: int
    nonce: bytes
    fingerprints: tuple[Fingerprint, ...]
    sdp: str

    def _check_body(self) -> None:
        _check_generation(self.generation)
        _check_nonce(self.nonce, "nonce")
        _check_fingerprints(self.fingerprints)
        _check_sdp(self.sdp)

    def _write_body(self, w: Writer) -> None:
        w.u16(self.generation)
        w.raw(self.nonce)
        _write_fingerprints(w, self.fingerprints)
        w.opaque_v(self.sdp.encode("utf-8"))

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {
            "generation": r.u16(),
            "nonce": r.raw(CALL_NONCE_BYTES),
            "fingerprints": _read_fingerprints(r),
            "sdp": _read_sdp(r),
        }


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class IceRestartAnswer(CallSignal):
    """The answer to an :class:`IceRestartOffer`, echoing its nonce."""

    TYPE = SignalType.ICE_RESTART_ANSWER
    generation: int
    offer_nonce: bytes
    nonce: bytes
    fingerprints: tuple[Fingerprint, ...]
    sdp: str

    def _check_body(self) -> None:
        _check_generation(self.generation)
        _check_nonce(self.offer_nonce, "offer_nonce")
        _check_nonce(self.nonce, "nonce")
        _check_fingerprints(self.fingerprints)
        _check_sdp(self.sdp)

    def _write_body(self, w: Writer) -> None:
        w.u16(self.generation)
        w.raw(self.offer_nonce)
        w.raw(self.nonce)
        _write_fingerprints(w, self.fingerprints)
        w.opaque_v(self.sdp.encode("utf-8"))

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {
            "generation": r.u16(),
            "offer_nonce": r.raw(CALL_NONCE_BYTES),
            "nonce": r.raw(CALL_NONCE_BYTES),
            "fingerprints": _read_fingerprints(r),
            "sdp": _read_sdp(r),
        }


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class IceCandidates(CallSignal):
    """Trickle ICE (RFC 8838): more candidates for transport generation n."""

    TYPE = SignalType.ICE_CANDIDATES
    generation: int
    candidates: tuple[IceCandidate, ...]
    complete: bool

    def _check_body(self) -> None:
        _check_generation(self.generation)
        if not isinstance(self.candidates, tuple) or len(self.candidates) > MAX_CALL_CANDIDATES:
            raise UsageError(f"at most {MAX_CALL_CANDIDATES} candidates per signal")
        if not all(isinstance(c, IceCandidate) for c in self.candidates):
            raise UsageError("candidates must be IceCandidate values")
        if not isinstance(self.complete, bool) or not (self.candidates or self.complete):
            raise UsageError("a candidates signal carries candidates or end-of-candidates")

    def _write_body(self, w: Writer) -> None:
        def one(w: Writer, c: IceCandidate) -> None:
            w.opaque8(c.mid.encode("ascii"))
            w.opaque16(c.line.encode("ascii"))

        w.u16(self.generation)
        w.vector_v(self.candidates, one)
        w.boolean(self.complete)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        def one(r: Reader) -> IceCandidate:
            try:
                return IceCandidate(mid=_ascii(r.opaque8()), line=_ascii(r.opaque16()))
            except UsageError as exc:
                raise DecodeError(str(exc)) from None

        generation = r.u16()
        candidates = r.vector_v(one)
        if len(candidates) > MAX_CALL_CANDIDATES:
            raise DecodeError("too many candidates")
        return {"generation": generation, "candidates": tuple(candidates), "complete": r.boolean()}


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Hangup(CallSignal):
    """Either side → the other, once the call is set up or being set up: it is over."""

    TYPE = SignalType.HANGUP
    reason: HangupReason

    def _check_body(self) -> None:
        if not isinstance(self.reason, HangupReason):
            raise UsageError("reason is a HangupReason")

    def _write_body(self, w: Writer) -> None:
        w.u8(self.reason)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {"reason": _enum(HangupReason, r.u8())}


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Cancel(CallSignal):
    """Caller → a callee device that is (or may be) still ringing: stop."""

    TYPE = SignalType.CANCEL
    reason: CancelReason

    def _check_body(self) -> None:
        if not isinstance(self.reason, CancelReason):
            raise UsageError("reason is a CancelReason")

    def _write_body(self, w: Writer) -> None:
        w.u8(self.reason)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {"reason": _enum(CancelReason, r.u8())}


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MuteState(CallSignal):
    """Either side → the other: what the sender is sending now (for the peer's UI)."""

    TYPE = SignalType.MUTE_STATE
    audio_muted: bool
    camera_on: bool
    screen_on: bool

    def _check_body(self) -> None:
        if not all(isinstance(v, bool) for v in (self.audio_muted, self.camera_on, self.screen_on)):
            raise UsageError("mute flags are bools")

    def _write_body(self, w: Writer) -> None:
        w.boolean(self.audio_muted)
        w.boolean(self.camera_on)
        w.boolean(self.screen_on)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {"audio_muted": r.boolean(), "camera_on": r.boolean(), "screen_on": r.boolean()}


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class RecordingConsent(CallSignal):
    """Either side → the other: ask for, give, or refuse/withdraw consent to record."""

    TYPE = SignalType.RECORDING_CONSENT
    state: ConsentState

    def _check_body(self) -> None:
        if not isinstance(self.state, ConsentState):
            raise UsageError("state is a ConsentState")

    def _write_body(self, w: Writer) -> None:
        w.u8(self.state)

    @classmethod
    def _read_body(cls, r: Reader) -> dict[str, Any]:
        return {"state": _enum(ConsentState, r.u8())}


_CLASSES: dict[int, type[CallSignal]] = {
    cls.TYPE: cls
    for cls in (
        Invite,
        Ringing,
        Accept,
        Decline,
        Busy,
        Offer,
        Answer,
        IceCandidates,
        Hangup,
        Cancel,
        MuteState,
        AnsweredElsewhere,
        IceRestartOffer,
        IceRestartAnswer,
        RecordingConsent,
    )
}
