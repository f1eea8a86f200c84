"""Per-sender SFrame keys of a room call across epochs, and the frame layout
(docs/calls.md "Frame layout", "Epoch changes")."""

from __future__ import annotations

import hashlib

import pytest

from sottovoce.calls.frames import (
    OPUS_CLEAR,
    VP8_DELTA_CLEAR,
    VP8_KEYFRAME_CLEAR,
    Codec,
    clear_bytes,
    is_vp8_keyframe,
)
from sottovoce.calls.media_keys import CallKeys, Device, EpochKeys
from sottovoce.errors import UsageError
from sottovoce.limits import CALL_EPOCH_GRACE_MS
from sottovoce.secret import Secret
from sottovoce.sframe import FrameDecryptionError, ReplayError, Track, UnknownKeyId

ALICE: Device = ("alice", "a1")
BOB: Device = ("bob", "b1")
CAROL: Device = ("carol", "c1")


def exporter(epoch: int, salt: bytes = b"call") -> object:
    def export(label: bytes, context: bytes, length: int) -> Secret:
        data = salt + epoch.to_bytes(8, "big") + label + context
        return Secret(hashlib.shake_256(data).digest(length))

    return export


def keys_for(epoch: int, roster: dict[int, Device], me: Device, salt: bytes = b"call") -> EpochKeys:
    own = next(leaf for leaf, d in roster.items() if d == me)
    return EpochKeys.derive(
        epoch=epoch,
        exporter=exporter(epoch, salt),  # type: ignore[arg-type]
        roster=roster,
        own_leaf=own,
    )


def pair(roster: dict[int, Device], epoch: int = 0) -> dict[Device, CallKeys]:
    out = {}
    for d in roster.values():
        k = CallKeys()
        k.begin_epoch(keys_for(epoch, roster, d), 0)
        out[d] = k
    return out


R3 = {0: ALICE, 1: BOB, 2: CAROL}


def test_frames_decode_at_every_other_member_and_name_their_sender() -> None:
    keys = pair(R3)
    frame = keys[BOB].protect(Track.SCREEN, b"pixels", b"clear")
    assert keys[ALICE].sender_of(frame) == (BOB, Track.SCREEN)
    out = keys[CAROL].unprotect(frame, b"clear", 0)
    assert (out.sender, out.track, out.plaintext, out.epoch) == (BOB, Track.SCREEN, b"pixels", 0)
    assert "pixels" not in repr(out)
    # The clear bytes are authenticated: another prefix fails.
    with pytest.raises(FrameDecryptionError):
        keys[ALICE].unprotect(frame, b"CLEAR", 0)


def test_rfc9605_7_5_a_replayed_frame_is_refused() -> None:
    keys = pair(R3)
    frame = keys[ALICE].protect(Track.AUDIO, b"a", b"")
    keys[BOB].unprotect(frame, b"", 0)
    with pytest.raises(ReplayError):
        keys[BOB].unprotect(frame, b"", 0)
    # ... per key: carol has not seen it yet.
    assert keys[CAROL].unprotect(frame, b"", 0).plaintext == b"a"


def test_a_wrong_key_decodes_nothing() -> None:
    keys = pair(R3)
    stranger = CallKeys()
    stranger.begin_epoch(keys_for(0, R3, BOB, salt=b"another call"), 0)
    for _ in range(5):
        frame = keys[ALICE].protect(Track.VIDEO, b"v", b"")
        with pytest.raises(FrameDecryptionError):
            stranger.unprotect(frame, b"", 0)


def test_senders_switch_at_once_and_old_frames_count_until_the_senders_first_new_one() -> None:
    keys = pair(R3)
    old_a = [keys[ALICE].protect(Track.VIDEO, b"old%d" % i, b"") for i in range(3)]
    old_c = keys[CAROL].protect(Track.VIDEO, b"old carol", b"")
    for d, k in keys.items():
        k.begin_epoch(keys_for(1, R3, d), 1000)
    # Alice sends under epoch 1 at once.
    new_a = keys[ALICE].protect(Track.VIDEO, b"new", b"")
    assert keys[BOB].unprotect(old_a[0], b"", 1100).epoch == 0  # late old frame: fine
    assert keys[BOB].unprotect(new_a, b"", 1200).epoch == 1
    # Alice's first epoch-1 frame arrived: her epoch-0 keys are gone at bob.
    with pytest.raises(UnknownKeyId):
        keys[BOB].unprotect(old_a[1], b"", 1300)
    # Carol's epoch-0 keys are still held (no epoch-1 frame from her yet).
    assert keys[BOB].unprotect(old_c, b"", 1300).plaintext == b"old carol"
    assert keys[BOB].epochs() == (0, 1)


def test_a_new_audio_frame_does_not_drop_an_old_video_frame_still_in_flight() -> None:
    # Tracks are separate streams: a video frame sealed just before the switch may
    # arrive after the sender's first new-epoch audio frame.
    keys = pair(R3)
    old_video = keys[ALICE].protect(Track.VIDEO, b"old video", b"")
    old_audio = keys[ALICE].protect(Track.AUDIO, b"old audio", b"")
    for d, k in keys.items():
        k.begin_epoch(keys_for(1, R3, d), 1000)
    new_audio = keys[ALICE].protect(Track.AUDIO, b"new audio", b"")
    assert keys[BOB].unprotect(new_audio, b"", 1010).epoch == 1
    assert keys[BOB].unprotect(old_video, b"", 1020).plaintext == b"old video"
    # ... while the audio track's old key went with its first new frame.
    with pytest.raises(UnknownKeyId):
        keys[BOB].unprotect(old_audio, b"", 1030)
    new_video = keys[ALICE].protect(Track.VIDEO, b"new video", b"")
    assert keys[BOB].unprotect(new_video, b"", 1040).epoch == 1
    assert keys[BOB].epochs() == (0, 1)  # carol's old keys are still held
    late = keys[ALICE].protect(Track.SCREEN, b"s", b"")  # her screen never sent in epoch 0
    assert keys[BOB].unprotect(late, b"", 1050).epoch == 1


def test_old_epoch_frames_stop_counting_after_the_grace_even_without_a_new_frame() -> None:
    keys = pair(R3)
    old = [keys[CAROL].protect(Track.AUDIO, b"x", b"") for _ in range(2)]
    for d, k in keys.items():
        k.begin_epoch(keys_for(1, R3, d), 1000)
    assert keys[BOB].unprotect(old[0], b"", 1000 + CALL_EPOCH_GRACE_MS).epoch == 0
    with pytest.raises(UnknownKeyId):
        keys[BOB].unprotect(old[1], b"", 1001 + CALL_EPOCH_GRACE_MS)
    assert keys[BOB].epochs() == (1,)


def test_a_removed_sender_loses_every_key_at_the_epoch_change() -> None:
    keys = pair(R3)
    late = keys[CAROL].protect(Track.VIDEO, b"sent before the commit", b"")
    r2 = {0: ALICE, 1: BOB}
    for d in (ALICE, BOB):
        keys[d].begin_epoch(keys_for(1, r2, d), 1000)
    # Carol is no longer in the call: even her old-epoch frame is refused now.
    with pytest.raises(UnknownKeyId):
        keys[BOB].unprotect(late, b"", 1001)
    # ... and carol, who holds no epoch-1 key, decodes nothing new.
    with pytest.raises(UnknownKeyId):
        keys[CAROL].unprotect(keys[ALICE].protect(Track.VIDEO, b"new", b""), b"", 1001)


def test_revoke_cuts_a_sender_off_before_the_commit() -> None:
    keys = pair(R3)
    frame = keys[CAROL].protect(Track.AUDIO, b"x", b"")
    keys[BOB].revoke(CAROL)
    with pytest.raises(UnknownKeyId):
        keys[BOB].sender_of(frame)
    assert keys[BOB].unprotect(keys[ALICE].protect(Track.AUDIO, b"y", b""), b"", 0).sender == ALICE


def test_epochs_move_forward_only_and_the_device_must_be_in_the_roster() -> None:
    keys = pair(R3)
    with pytest.raises(UsageError):
        keys[ALICE].begin_epoch(keys_for(0, R3, ALICE), 0)
    with pytest.raises(UsageError):
        EpochKeys.derive(
            epoch=1,
            exporter=exporter(1),  # type: ignore[arg-type]
            roster={0: BOB},
            own_leaf=1,
        )
    keys[ALICE].wipe()
    with pytest.raises(UsageError):
        keys[ALICE].protect(Track.AUDIO, b"", b"")
    assert repr(keys_for(0, R3, ALICE)) == "EpochKeys(epoch=0, members=3)"


@pytest.mark.parametrize(
    ("codec", "frame", "clear"),
    [
        (
            Codec.VP8,
            bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00]) + bytes(90),
            VP8_KEYFRAME_CLEAR,
        ),
        (Codec.VP8, bytes([0x31, 0x02, 0x00]) + bytes(50), VP8_DELTA_CLEAR),
        (Codec.VP8, bytes([0x10, 0x02]), 2),
        (Codec.OPUS, bytes([0xFC]) + bytes(79), OPUS_CLEAR),
        (Codec.OPUS, b"", 0),
    ],
)
def test_clear_bytes_are_the_codec_header_and_nothing_more(
    codec: Codec, frame: bytes, clear: int
) -> None:
    assert clear_bytes(codec, frame) == clear


def test_keyframes_are_readable_in_the_clear_bytes() -> None:
    key = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00])
    assert is_vp8_keyframe(key)
    assert not is_vp8_keyframe(bytes([0x11]) + key[1:])
    assert not is_vp8_keyframe(key[:6])
    assert Codec.from_name("VP8") is Codec.VP8 and Codec.from_name("H264") is None
