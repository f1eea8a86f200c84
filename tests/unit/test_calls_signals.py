"""Call signals on the wire and the SDP checks of the engine (docs/calls.md)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sottovoce.calls import sdp
from sottovoce.calls.errors import BindingError
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
    HashAlgorithm,
    IceCandidate,
    IceCandidates,
    IceRestartAnswer,
    IceRestartOffer,
    Invite,
    MuteState,
    Offer,
    RecordingConsent,
    Ringing,
    SignalType,
)
from sottovoce.errors import DecodeError, UsageError
from tests.unit.call_sim import fake_sdp

CALL = bytes(range(16))
HEAD = {"call_id": CALL, "from_device": "a1", "to_device": "b_2-x"}
FP = Fingerprint(algorithm=HashAlgorithm.SHA_256, digest=bytes(range(100, 132)))
FP384 = Fingerprint(algorithm=HashAlgorithm.SHA_384, digest=bytes(48))
SDP = fake_sdp(FP, "tok")
CAND = IceCandidate(mid="0", line="candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host")

SAMPLE_SIGNALS: list[CallSignal] = [
    Invite(**HEAD, video=True),
    Ringing(**HEAD),
    Accept(**HEAD),
    Decline(**HEAD),
    Busy(**HEAD),
    Offer(**HEAD, nonce=b"n" * 16, fingerprints=(FP, FP384), sdp=SDP),
    Answer(**HEAD, offer_nonce=b"n" * 16, nonce=b"m" * 16, fingerprints=(FP,), sdp=SDP),
    IceCandidates(**HEAD, generation=3, candidates=(CAND, CAND), complete=True),
    Hangup(**HEAD, reason=HangupReason.MEDIA_FAILED),
    Cancel(**HEAD, reason=CancelReason.GLARE),
    MuteState(**HEAD, audio_muted=True, camera_on=False, screen_on=True),
    AnsweredElsewhere(**HEAD),
    IceRestartOffer(**HEAD, generation=1, nonce=b"r" * 16, fingerprints=(FP,), sdp=SDP),
    IceRestartAnswer(
        **HEAD, generation=1, offer_nonce=b"r" * 16, nonce=b"s" * 16, fingerprints=(FP,), sdp=SDP
    ),
    RecordingConsent(**HEAD, state=ConsentState.GRANT),
]


def test_every_signal_type_has_an_example() -> None:
    assert {type(s).TYPE for s in SAMPLE_SIGNALS} == set(SignalType)


@pytest.mark.parametrize("signal", SAMPLE_SIGNALS, ids=lambda s: type(s).__name__)
def test_roundtrip(signal: CallSignal) -> None:
    data = signal.encode()
    assert CallSignal.decode(data) == signal
    assert type(signal).decode(data) == signal
    # Trailing bytes and truncation are refused.
    with pytest.raises(DecodeError):
        CallSignal.decode(data + b"\x00")
    with pytest.raises(DecodeError):
        CallSignal.decode(data[:-1])


def test_decoding_as_the_wrong_kind_is_refused() -> None:
    with pytest.raises(DecodeError):
        Offer.decode(Ringing(**HEAD).encode())


def test_reprs_and_descriptions_never_show_sdp_or_candidates() -> None:
    offer = SAMPLE_SIGNALS[5]
    cands = SAMPLE_SIGNALS[7]
    for text in (repr(offer), repr(cands), offer.describe(), str(offer)):
        assert "127.0.0.1" not in text and "candidate:" not in text
        assert FP.digest.hex()[:16] not in text and "x00" not in text
    assert "<redacted>" in repr(offer)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Ringing(call_id=b"short", from_device="a", to_device="b"),
        lambda: Ringing(call_id=CALL, from_device="a b", to_device="b"),
        lambda: Ringing(call_id=CALL, from_device="", to_device="b"),
        lambda: Offer(**HEAD, nonce=b"n" * 15, fingerprints=(FP,), sdp=SDP),
        lambda: Offer(**HEAD, nonce=b"n" * 16, fingerprints=(), sdp=SDP),
        lambda: Offer(**HEAD, nonce=b"n" * 16, fingerprints=(FP384,), sdp=SDP),  # no SHA-256
        lambda: Offer(**HEAD, nonce=b"n" * 16, fingerprints=(FP, FP), sdp=SDP),
        lambda: Offer(**HEAD, nonce=b"n" * 16, fingerprints=(FP,), sdp=""),
        lambda: Offer(**HEAD, nonce=b"n" * 16, fingerprints=(FP,), sdp="x" * 40_000),
        lambda: Fingerprint(algorithm=HashAlgorithm.SHA_256, digest=b"x" * 31),
        lambda: IceCandidate(mid="0", line="candidate:1\r\na=evil"),
        lambda: IceCandidate(mid="", line=CAND.line),
        lambda: IceCandidates(**HEAD, generation=0, candidates=(), complete=False),
        lambda: IceCandidates(**HEAD, generation=0, candidates=(CAND,) * 33, complete=False),
        lambda: IceRestartOffer(
            **HEAD, generation=70_000, nonce=b"r" * 16, fingerprints=(FP,), sdp=SDP
        ),
        lambda: Invite(**HEAD, video=1),
    ],
)
def test_a_malformed_signal_cannot_be_built(build: object) -> None:
    with pytest.raises(UsageError):
        build()  # type: ignore[operator]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        CallSignal.decode(data)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SAMPLE_SIGNALS), st.integers(0, 10_000), st.integers(0, 255))
def test_a_flipped_byte_decodes_or_raises_decode_error(
    signal: CallSignal, where: int, value: int
) -> None:
    data = bytearray(signal.encode())
    data[where % len(data)] = value
    try:
        again = CallSignal.decode(bytes(data))
    except DecodeError:
        return
    assert CallSignal.decode(again.encode()) == again  # whatever decodes is well formed


# --- SDP ---------------------------------------------------------------------


def test_fingerprints_are_read_from_every_section() -> None:
    assert sdp.fingerprints(SDP) == {FP}
    two = SDP + SDP[SDP.index("m=audio") :].replace("m=audio", "m=video")
    assert sdp.fingerprints(two) == {FP}
    sdp.check_fingerprints(two, (FP,))
    with pytest.raises(BindingError):
        sdp.check_fingerprints(two, (FP, FP384))


def test_a_section_with_another_fingerprint_is_refused() -> None:
    other = Fingerprint(algorithm=HashAlgorithm.SHA_256, digest=b"m" * 32)
    mixed = SDP + fake_sdp(other, "x")[fake_sdp(other, "x").index("m=audio") :]
    with pytest.raises(BindingError):
        sdp.fingerprints(mixed)


def test_a_session_level_fingerprint_applies_to_sections_without_one() -> None:
    line = f"a=fingerprint:{FP.sdp_value()}\r\n"
    moved = SDP.replace(line, "").replace("m=audio", line + "m=audio")
    assert sdp.fingerprints(moved) == {FP}


@pytest.mark.parametrize(
    "bad",
    ["a=fingerprint:sha-256 ZZ:00", "a=fingerprint:md5 00:11", "a=fingerprint:sha-256 00:11"],
)
def test_malformed_fingerprint_lines_are_decode_errors(bad: str) -> None:
    with pytest.raises(DecodeError):
        sdp.fingerprints(SDP.replace(f"a=fingerprint:{FP.sdp_value()}", bad))


def test_no_fingerprint_or_no_section_is_refused() -> None:
    with pytest.raises(BindingError):
        sdp.fingerprints(SDP.replace(f"a=fingerprint:{FP.sdp_value()}\r\n", ""))
    with pytest.raises(DecodeError):
        sdp.fingerprints("v=0\r\n")


def test_the_audio_level_extension_is_dropped_and_others_kept() -> None:
    with_level = SDP.replace(
        "a=rtpmap", f"a=extmap:2 {sdp.AUDIO_LEVEL_URI}\r\na=extmap:3/sendonly x:y\r\na=rtpmap"
    )
    assert sdp.AUDIO_LEVEL_URI in sdp.header_extensions(with_level)
    dropped = sdp.drop_header_extension(with_level, sdp.AUDIO_LEVEL_URI)
    assert sdp.header_extensions(dropped) == {"urn:ietf:params:rtp-hdrext:sdes:mid", "x:y"}
    assert dropped.count("\r\n") == with_level.count("\r\n") - 1


def test_candidates_and_codecs_are_read() -> None:
    relay = "a=candidate:2 1 udp 16777215 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 9"
    text = SDP + relay + "\r\n"
    found = sdp.candidates(text)
    assert [(c.type, c.address, c.port) for c in found] == [
        ("host", "127.0.0.1", 9),
        ("relay", "127.0.0.1", 50000),
    ]
    assert found[1].related_address == "0.0.0.0"
    assert sdp.connection_addresses(SDP) == ["127.0.0.1"]
    assert sdp.codecs(SDP) == {"audio:0": "opus"}
    with pytest.raises(DecodeError):
        sdp.parse_candidate("candidate:1 1 udp x 127.0.0.1 9 typ host")
