"""SFrame in aiortc's media path: frames sealed before packetization, checked between
depacketization and the decoder (client/calls/e2ee.py, the hooks in client/calls/hooks.py)."""

from __future__ import annotations

import hashlib
import queue

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.codecs.vpx import vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sottovoce.calls.frames import Codec, is_vp8_keyframe
from sottovoce.calls.media_keys import Device, EpochKeys
from sottovoce.client.calls import hooks
from sottovoce.client.calls.e2ee import FrameCrypto, SealingOpusEncoder, StreamGuard
from sottovoce.client.calls.sources import PatternTrack, ToneTrack
from sottovoce.secret import Secret
from sottovoce.sframe import Track

ALICE: Device = ("alice", "a1")
BOB: Device = ("bob", "b1")
CAROL: Device = ("carol", "c1")
ROSTER = {0: ALICE, 1: BOB, 2: CAROL}
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)


def crypto(me: Device, salt: bytes = b"call") -> FrameCrypto:
    def exporter(label: bytes, context: bytes, length: int) -> Secret:
        return Secret(hashlib.shake_256(salt + label + context).digest(length))

    fc = FrameCrypto()
    own = next(leaf for leaf, d in ROSTER.items() if d == me)
    fc.begin_epoch(EpochKeys.derive(epoch=0, exporter=exporter, roster=ROSTER, own_leaf=own))
    return fc


async def vp8_frames(n: int) -> list[bytes]:
    """Real encoded VP8 frames of the test pattern, as the encoder hands them over."""
    frames: list[bytes] = []
    encoder = hooks.FrameSealingVp8Encoder(lambda f: frames.append(f) or f)  # type: ignore[func-returns-value]
    track = PatternTrack()
    for _ in range(n):
        encoder.encode(await track.recv())
    return frames


async def guarded(expect: Device, track: Track, receiver_crypto: FrameCrypto):  # type: ignore[no-untyped-def]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = pc.addTransceiver("video").receiver
    guard = StreamGuard(receiver_crypto, sender=expect, track=track, receiver=receiver)
    q = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
    return pc, receiver, guard, q


def offer(q: queue.Queue, data: bytes) -> bytes | None:  # type: ignore[type-arg]
    q.put((VP8, JitterFrame(data=data, timestamp=0)))
    if q.empty():
        return None
    _, frame = q.get_nowait()
    return bytes(frame.data)


async def test_a_sealed_frame_reaches_the_decoder_as_the_encoder_made_it() -> None:
    alice, bob = crypto(ALICE), crypto(BOB)
    frames = await vp8_frames(3)
    pc, _, guard, q = await guarded(ALICE, Track.VIDEO, bob)
    try:
        for frame in frames:
            sealed = alice.seal(Track.VIDEO, Codec.VP8, frame)
            # The clear bytes are the codec header: the SFU still sees keyframes.
            assert is_vp8_keyframe(sealed) == is_vp8_keyframe(frame)
            assert sealed[10:] != frame[10:] and len(sealed) > len(frame)
            assert offer(q, sealed) == frame
        assert guard.counters.opened == 3 and guard.counters.dropped == 0
    finally:
        await pc.close()


async def test_replays_other_senders_wrong_keys_and_plain_frames_never_reach_the_decoder() -> None:
    alice, bob, carol = crypto(ALICE), crypto(BOB), crypto(CAROL)
    eve = crypto(CAROL, salt=b"another call")
    frame = (await vp8_frames(1))[0]
    pc, receiver, guard, q = await guarded(ALICE, Track.VIDEO, bob)
    try:
        sealed = alice.seal(Track.VIDEO, Codec.VP8, frame)
        assert offer(q, sealed) == frame
        assert offer(q, sealed) is None  # RFC 9605 §7.5: a replay
        # Carol's frame on the stream subscribed as alice's: refused before decryption.
        assert offer(q, carol.seal(Track.VIDEO, Codec.VP8, frame)) is None
        assert guard.counters.misbound == 1
        # Alice's screen frame on her camera's stream: refused too.
        assert offer(q, alice.seal(Track.SCREEN, Codec.VP8, frame)) is None
        assert guard.counters.misbound == 2
        # A wrong key with the right key id, and plain VP8: dropped, keyframe asked for.
        wrong = eve.seal(Track.VIDEO, Codec.VP8, frame)
        assert offer(q, wrong[:10] + b"\x08" + wrong[11:]) is None
        assert offer(q, frame) is None
        assert receiver._RTCRtpReceiver__decoder_error.is_set()  # type: ignore[attr-defined]
        assert guard.counters.opened == 1 and guard.counters.dropped == 5
        # Plain VP8 read as SFrame names no key bob holds: unkeyed; the rest failed.
        assert (guard.counters.unkeyed, guard.counters.failed) == (1, 4)
    finally:
        await pc.close()


async def test_a_frame_of_an_epoch_not_held_yet_is_unkeyed_not_failed() -> None:
    # Alice processed a commit bob has not yet: her next frame names epoch 1.
    def exporter(label: bytes, context: bytes, length: int) -> Secret:
        return Secret(hashlib.shake_256(b"epoch 1" + label + context).digest(length))

    alice, bob = crypto(ALICE), crypto(BOB)
    alice.begin_epoch(EpochKeys.derive(epoch=1, exporter=exporter, roster=ROSTER, own_leaf=0))
    frame = (await vp8_frames(1))[0]
    pc, _, guard, q = await guarded(ALICE, Track.VIDEO, bob)
    try:
        assert offer(q, alice.seal(Track.VIDEO, Codec.VP8, frame)) is None
        counters = guard.counters
        assert (counters.dropped, counters.unkeyed, counters.failed) == (1, 1, 0)
    finally:
        await pc.close()


async def test_a_frame_is_sealed_before_packetization_and_opus_stays_constant_size() -> None:
    alice = crypto(ALICE)
    encoder = hooks.FrameSealingVp8Encoder(lambda f: alice.seal(Track.VIDEO, Codec.VP8, f))
    payloads, _ = encoder.encode(await PatternTrack().recv())
    packetized = b"".join(vp8_depayload(p) for p in payloads)
    bob = crypto(BOB)
    assert bob.open(Codec.VP8, packetized, sender=ALICE, track=Track.VIDEO)[:3] == packetized[:3]
    opus = SealingOpusEncoder(alice)
    tone = ToneTrack()
    sizes = []
    for _ in range(20):
        out, _ = opus.encode(await tone.recv())
        sizes += [len(p) for p in out]
        for p in out:
            assert bob.open(Codec.OPUS, p, sender=ALICE, track=Track.AUDIO)
    # CBR stays CBR: every sealed packet the same size, except that the SFrame header
    # grows a byte when CTR reaches 8 (and 256, 65536...: by count, never by content).
    assert len(set(sizes[8:])) == 1 and set(sizes[:8]) == {sizes[8] - 1}


async def test_the_frame_filter_must_be_installed_before_the_receiver_starts() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = pc.addTransceiver("video").receiver
    receiver._RTCRtpReceiver__decoder_thread = object()  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError):
        hooks.filter_frames(receiver, lambda codec, frame: frame)
    receiver._RTCRtpReceiver__decoder_thread = None  # type: ignore[attr-defined]
    await pc.close()


async def test_a_sender_whose_keys_were_wiped_ends_its_stream_quietly_and_sends_nothing() -> None:
    """Leaving wipes the keys at once and closes the media a moment later: a frame the
    encoder hands over in between ends the stream with the error aiortc ends a sender on
    without a traceback. Before any epoch, sealing stays a usage error (a bug)."""
    from aiortc.mediastreams import MediaStreamError

    from sottovoce.errors import UsageError

    with pytest.raises(UsageError):
        FrameCrypto().seal(Track.AUDIO, Codec.OPUS, b"\x00" * 40)
    alice = crypto(ALICE)
    opus = SealingOpusEncoder(alice)
    tone = ToneTrack()
    assert opus.encode(await tone.recv())[0]
    alice.wipe()
    with pytest.raises(MediaStreamError):
        opus.encode(await tone.recv())
    vp8 = hooks.FrameSealingVp8Encoder(lambda f: alice.seal(Track.VIDEO, Codec.VP8, f))
    with pytest.raises(MediaStreamError):
        vp8.encode(await PatternTrack().recv())
    # New keys (a later call with the same object): frames are sealed again.
    alice.begin_epoch(EpochKeys.derive(
        epoch=0, own_leaf=0, roster=ROSTER,
        exporter=lambda label, ctx, n: Secret(hashlib.shake_256(b"x" + label + ctx).digest(n))))
    assert opus.encode(await tone.recv())[0]
