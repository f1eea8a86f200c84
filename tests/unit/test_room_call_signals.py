"""Room-call signals and call payloads: exact round trips, self-validation, and a decoder
that either accepts or raises DecodeError (calls/room_signals.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sottovoce.calls.room_signals import (
    CallMode,
    CallPayload,
    Commit,
    Feed,
    Join,
    Leave,
    LeaveProof,
    MediaState,
    MeshAnswer,
    MeshOffer,
    Recording,
    RecordingStep,
    Refuse,
    RefuseReason,
    RoomCallSignal,
    Sealed,
    Start,
)
from sottovoce.errors import DecodeError, UsageError

HDR = {"call_id": bytes(range(16)), "from_user": "alice", "from_device": "a1"}

SIGNALS: list[RoomCallSignal] = [
    Start(**HDR, mode=CallMode.MESH),
    Join(**HDR, key_package=b"kp" * 40, sframe_suites=(4, 5)),
    Commit(
        **HDR,
        epoch=7,
        commit=b"c" * 30,
        welcome=b"",
        leaves=(LeaveProof(leaf=2, signature=b"s" * 64),),
    ),
    Leave(**HDR, signature=b"s" * 64),
    Refuse(**HDR, to_user="erin", to_device="e1", reason=RefuseReason.SFU_REQUIRED),
    Sealed(**HDR, message=b"m" * 20),
]
PAYLOADS: list[CallPayload] = [
    MediaState(audio_muted=True, camera_on=False, screen_on=True),
    Feed(feed_id="0123abcd"),
    Recording(request_id=bytes(16), step=RecordingStep.GRANT),
    MeshOffer(to_user="bob", to_device="b1", nonce=bytes(16), sdp="v=0\r\n"),
    MeshAnswer(to_user="bob", to_device="b1", nonce=bytes(16), sdp="v=0\r\n"),
]


@pytest.mark.parametrize("signal", SIGNALS, ids=lambda s: type(s).__name__)
def test_every_signal_round_trips_exactly_and_hides_its_secrets_from_repr(
    signal: RoomCallSignal,
) -> None:
    data = signal.encode()
    assert RoomCallSignal.decode(data) == signal
    assert type(signal).decode(data) == signal
    with pytest.raises(DecodeError):
        RoomCallSignal.decode(data + b"\x00")
    assert "kpkp" not in repr(signal) and "cccc" not in repr(signal)
    assert signal.describe().startswith(type(signal).__name__)


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_every_payload_round_trips_exactly(payload: CallPayload) -> None:
    assert CallPayload.decode(payload.encode()) == payload
    assert "v=0" not in repr(payload)


def test_signals_validate_themselves() -> None:
    for bad in (
        lambda: Start(**{**HDR, "call_id": b"short"}, mode=CallMode.SFU),
        lambda: Start(**{**HDR, "from_user": "Alice!"}, mode=CallMode.SFU),
        lambda: Join(**HDR, key_package=b"", sframe_suites=()),
        lambda: Join(**HDR, key_package=b"k", sframe_suites=tuple(range(17))),
        lambda: Commit(**HDR, epoch=-1, commit=b"c", welcome=b""),
        lambda: Commit(
            **HDR,
            epoch=1,
            commit=b"c",
            welcome=b"",
            leaves=(LeaveProof(leaf=1, signature=b"s"), LeaveProof(leaf=1, signature=b"t")),
        ),
        lambda: Leave(**HDR, signature=b""),
        lambda: Feed(feed_id="no spaces"),
        lambda: MeshOffer(to_user="bob", to_device="b1", nonce=b"n", sdp="v=0"),
        lambda: MeshOffer(to_user="bob", to_device="b1", nonce=bytes(16), sdp="x" * 40_000),
    ):
        with pytest.raises(UsageError):
            bad()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_the_decoders_accept_or_raise_decode_error(data: bytes) -> None:
    for kind in (RoomCallSignal, CallPayload):
        try:
            decoded = kind.decode(data)
        except DecodeError:
            continue
        assert decoded.encode() == data  # one encoding per value: nothing else accepted


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SIGNALS), st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_a_mutated_signal_decodes_to_a_valid_signal_or_raises_decode_error(
    signal: RoomCallSignal, where: int, value: int
) -> None:
    data = bytearray(signal.encode())
    data[where % len(data)] = value
    try:
        decoded = RoomCallSignal.decode(bytes(data))
    except DecodeError:
        return
    assert decoded.encode() == bytes(data)
