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
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from sottovoce.calls.wire import (
    BOOL,
    CALL_ID,
    DEVICE,
    NONCE,
    SDP,
    Field,
    Fields,
    TaggedStruct,
    ascii_text,
    enum_u8,
    vector_of,
)
from sottovoce.codec.tls import Reader, Writer
from sottovoce.errors import DecodeError, UsageError
from sottovoce.limits import (
    MAX_CALL_CANDIDATE_BYTES,
    MAX_CALL_CANDIDATES,
    MAX_CALL_ICE_RESTARTS,
)

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


def _check_fingerprints(fps: object, name: str) -> None:
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


def _write_fingerprint(w: Writer, f: Fingerprint) -> None:
    w.u8(f.algorithm)
    w.opaque8(f.digest)


def _read_fingerprint(r: Reader) -> Fingerprint:
    try:
        algorithm = HashAlgorithm(r.u8())
    except ValueError:
        raise DecodeError("unknown fingerprint hash") from None
    return Fingerprint(algorithm=algorithm, digest=r.opaque8())


def _check_generation(generation: object, name: str) -> None:
    if not isinstance(generation, int) or not 0 <= generation <= MAX_CALL_ICE_RESTARTS:
        raise UsageError("ICE generation out of range")


def _check_candidates(candidates: object, name: str) -> None:
    if not isinstance(candidates, tuple) or len(candidates) > MAX_CALL_CANDIDATES:
        raise UsageError(f"at most {MAX_CALL_CANDIDATES} candidates per signal")
    if not all(isinstance(c, IceCandidate) for c in candidates):
        raise UsageError("candidates must be IceCandidate values")


def _write_candidate(w: Writer, c: IceCandidate) -> None:
    w.opaque8(c.mid.encode("ascii"))
    w.opaque16(c.line.encode("ascii"))


def _read_candidate(r: Reader) -> IceCandidate:
    return IceCandidate(mid=ascii_text(r.opaque8()), line=ascii_text(r.opaque16()))


FINGERPRINTS = vector_of(_check_fingerprints, _write_fingerprint, _read_fingerprint)
GENERATION: Field[int] = Field(_check_generation, Writer.u16, Reader.u16)
CANDIDATES = vector_of(
    _check_candidates, _write_candidate, _read_candidate, most=MAX_CALL_CANDIDATES
)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CallSignal(TaggedStruct):
    """Fields every signal carries; see the module docstring for the layout."""

    TYPE: ClassVar[SignalType]
    HEADER = (("call_id", CALL_ID), ("from_device", DEVICE), ("to_device", DEVICE))
    # SDPs and candidates hold addresses, fingerprints name a call's certificate:
    # keep them out of reprs, logs and tracebacks.
    HIDDEN = frozenset({"sdp", "candidates", "fingerprints"})
    WHAT = "call signal"

    call_id: bytes
    from_device: str
    to_device: str

    def describe(self) -> str:
        """Type and call id only: safe for logs (no SDP, candidate or fingerprint)."""
        return f"{type(self).__name__}(call={self.call_id.hex()[:8]})"


# --- the signals ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Invite(CallSignal):
    """Caller → every callee device: ring. Carries no SDP, so a device that never
    answers never learns the caller's addresses."""

    TYPE = SignalType.INVITE
    BODY = (("video", BOOL),)
    video: bool


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


_SDP_BODY: Fields = (("nonce", NONCE), ("fingerprints", FINGERPRINTS), ("sdp", SDP))


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class _SdpSignal(CallSignal):
    """What every offer and answer carries: a fresh nonce, the sender's DTLS
    certificate fingerprints and the SDP they must match (not a signal itself)."""

    BODY = _SDP_BODY
    nonce: bytes
    fingerprints: tuple[Fingerprint, ...]
    sdp: str


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Offer(_SdpSignal):
    """Caller → the accepting device only: the SDP offer, bound to both devices."""

    TYPE = SignalType.OFFER


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Answer(_SdpSignal):
    """Accepting device → caller: the SDP answer to the offer whose nonce it echoes."""

    TYPE = SignalType.ANSWER
    BODY = (("offer_nonce", NONCE), *_SDP_BODY)
    offer_nonce: bytes


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class IceRestartOffer(_SdpSignal):
    """Either side → the other: a new ICE transport for the same call (generation n)."""

    TYPE = SignalType.ICE_RESTART_OFFER
    BODY = (("generation", GENERATION), *_SDP_BODY)
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class IceRestartAnswer(_SdpSignal):
    """The answer to an :class:`IceRestartOffer`, echoing its nonce."""

    TYPE = SignalType.ICE_RESTART_ANSWER
    BODY = (("generation", GENERATION), ("offer_nonce", NONCE), *_SDP_BODY)
    generation: int
    offer_nonce: bytes


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class IceCandidates(CallSignal):
    """Trickle ICE (RFC 8838): more candidates for transport generation n."""

    TYPE = SignalType.ICE_CANDIDATES
    BODY = (("generation", GENERATION), ("candidates", CANDIDATES), ("complete", BOOL))
    generation: int
    candidates: tuple[IceCandidate, ...]
    complete: bool

    def _check_body(self) -> None:
        if not (self.candidates or self.complete):
            raise UsageError("a candidates signal carries candidates or end-of-candidates")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Hangup(CallSignal):
    """Either side → the other, once the call is set up or being set up: it is over."""

    TYPE = SignalType.HANGUP
    BODY = (("reason", enum_u8(HangupReason)),)
    reason: HangupReason


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Cancel(CallSignal):
    """Caller → a callee device that is (or may be) still ringing: stop."""

    TYPE = SignalType.CANCEL
    BODY = (("reason", enum_u8(CancelReason)),)
    reason: CancelReason


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MuteState(CallSignal):
    """Either side → the other: what the sender is sending now (for the peer's UI)."""

    TYPE = SignalType.MUTE_STATE
    BODY = (("audio_muted", BOOL), ("camera_on", BOOL), ("screen_on", BOOL))
    audio_muted: bool
    camera_on: bool
    screen_on: bool


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class RecordingConsent(CallSignal):
    """Either side → the other: ask for, give, or refuse/withdraw consent to record."""

    TYPE = SignalType.RECORDING_CONSENT
    BODY = (("state", enum_u8(ConsentState)),)
    state: ConsentState


CallSignal.KINDS = {
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
