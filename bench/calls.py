"""Call setup time and media CPU on loopback (aiortc, synthetic media): 1:1 and room calls.

    python bench/calls.py [--calls 10] [--seconds 5] [--skip-relay] [--skip-cpu]
                          [--skip-sfu] [--joins 20] [--eight]

Setup: ``--calls`` calls one after another, each between two fresh devices
(CallControllers in this process, signalling in memory with no added delay,
the callee accepting the moment it rings). A call's setup time is dial() on
the caller to the first *decoded* video frame at the callee (the caller's
pattern video), and likewise to the first decoded frame at the caller. It
covers: invite, ringing, accept, creating the offer (ICE gathering), the
answer, ICE checks, the DTLS handshake and our fingerprint check, the first
VP8 keyframe encoded, sent, decoded. P2P uses 127.0.0.1 host candidates; the
relay-only run starts its own coturn on 127.0.0.1 and both sides use ICE
policy "relay" (every packet goes through coturn twice). p50/p95 are over
the calls; 320x240 at 15 fps.

CPU: one call at a time for ``--seconds`` after a 1 s warm-up, at 640x480 30 fps
and at 320x240 15 fps, each side sending a tone (Opus CBR) and pattern video
(VP8) and decoding the other's. The figure is the process's CPU time
(all threads: aiortc encodes in worker threads) over the window divided by two
-- one call side -- as a share of one core. Both sides share this machine's
cores, so the per-side figure assumes the two sides cost the same (they do the
same work).

Room calls through Janus (started here on 127.0.0.1 from deploy/janus/, as the
tests do; skipped when janus is not installed), 320x240 at 15 fps:

* SFU join -> first decoded frame: ``--joins`` times a new subscriber joins the
  VideoRoom (subscriber join, Janus's offer, our answer, ICE, DTLS, the keyframe
  it asks for on join) and the time to its first decoded frame of the
  publisher's SFrame-protected video is taken; p50/p95.
* SFrame cost per frame: sealing (clear bytes + SFrame AES-GCM) and opening
  real encoded frames, against encoding them (VP8 at 320x240, Opus 20 ms), as a
  share of the encoder's time for the same frames.
* CPU per participant: a call of 3 through Janus (everyone sends audio and
  video and receives the others'), once with SFrame and once with a
  pass-through transform that exists only in this file (the product has no
  way to switch SFrame off), in this one run; the process's CPU over the window
  divided by the participants. ``--eight``: 8 participants, two of them sending
  video (everyone sends audio).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import shutil
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.integration helpers

from tests.integration.calls_helpers import Coturn, Net, wait_for, wait_state
from tests.integration.janus_helpers import Janus

from sottovoce.calls.effects import CallState
from sottovoce.calls.frames import Codec
from sottovoce.calls.media_keys import Device, EpochKeys
from sottovoce.client.calls import CallController, CallOptions, IceConfig, MediaSpec, hooks
from sottovoce.client.calls.e2ee import FrameCrypto, FrameTransform, SealingOpusEncoder
from sottovoce.client.calls.room_media import SfuAccess, SfuMedia
from sottovoce.client.calls.sources import PatternTrack, ToneTrack
from sottovoce.secret import Secret
from sottovoce.server.sfu import SfuConfig, SfuDriver, SfuEndpoint
from sottovoce.sframe import Track


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def one_setup(options_a: CallOptions, options_b: CallOptions) -> tuple[float, float]:
    net = Net(latency_s=0.0)
    alice = net.device("alice", "a1", options_a)
    bob = net.device("bob", "b1", options_b)
    loop = asyncio.get_running_loop()

    def pick_up() -> None:
        if bob.state is CallState.INCOMING_RINGING:
            bob.accept()

    try:
        start = loop.time()
        alice.dial("bob", ["b1"])
        await wait_for(lambda: bob.state is CallState.INCOMING_RINGING, timeout=10, step=0.001)
        pick_up()

        def first(ctl: CallController) -> float | None:
            s = ctl.session()
            return None if s is None else s.sinks["camera"].first_frame_at

        await wait_for(lambda: first(bob) is not None and first(alice) is not None, 15, 0.001)
        at_b, at_a = first(bob), first(alice)
        assert at_b is not None and at_a is not None
        return at_b - start, at_a - start
    finally:
        await net.close()


async def setups(label: str, calls: int, a: CallOptions, b: CallOptions) -> None:
    to_callee: list[float] = []
    to_caller: list[float] = []
    for _ in range(calls):
        x, y = await one_setup(a, b)
        to_callee.append(x)
        to_caller.append(y)

    def ms(values: list[float]) -> str:
        p50, p95 = statistics.median(values) * 1000, percentile(values, 0.95) * 1000
        return f"p50 {p50:5.0f} ms  p95 {p95:5.0f} ms"

    print(
        f"{label:<11} dial -> first decoded frame, callee: {ms(to_callee)}"
        f"  |  caller: {ms(to_caller)}   ({calls} calls)"
    )


async def cpu(width: int, height: int, fps: int, seconds: float) -> None:
    spec = MediaSpec(width=width, height=height, fps=fps)
    options = CallOptions(media=spec, ice=IceConfig(loopback=True))
    net = Net(latency_s=0.0)
    alice = net.device("alice", "a1", options)
    bob = net.device("bob", "b1", options)
    try:
        alice.dial("bob", ["b1"])
        await wait_state(bob, CallState.INCOMING_RINGING)
        bob.accept()
        await wait_state(alice, CallState.ACTIVE)
        await asyncio.sleep(1.0)  # warm-up: keyframes, bitrate estimate
        sink = bob.session().sinks["camera"]  # type: ignore[union-attr]
        await alice.stats()  # the bitrate is measured from here
        frames0, cpu0, wall0 = sink.frames, time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        frames1, cpu1, wall1 = sink.frames, time.process_time(), time.perf_counter()
        per_side = (cpu1 - cpu0) / (wall1 - wall0) / 2
        stats = await alice.stats()
        print(
            f"{width}x{height} {fps:>2} fps: {per_side * 100:5.1f} % of a core per call side; "
            f"callee decoded {(frames1 - frames0) / (wall1 - wall0):5.1f} frames/s; "
            f"one side sends {stats.send_kbps if stats else 0:.0f} kbit/s"
        )
    finally:
        await net.close()


# --- room calls through Janus --------------------------------------------------------


class Passthrough:
    """Bench only: a FrameTransform that does nothing, to measure what SFrame costs."""

    def seal(self, track: Track, codec: Codec, frame: bytes) -> bytes:
        return frame

    def open(self, codec: Codec, data: bytes, *, sender: Device, track: Track) -> bytes:
        return data


def _exporter(label: bytes, context: bytes, length: int) -> Secret:
    return Secret(hashlib.shake_256(b"bench" + label + context).digest(length))


def _crypto(roster: dict[int, Device], leaf: int) -> FrameCrypto:
    fc = FrameCrypto()
    fc.begin_epoch(EpochKeys.derive(epoch=0, exporter=_exporter, roster=roster, own_leaf=leaf))
    return fc


class BenchRoom:
    """One call's VideoRoom on the bench Janus, and the grants to get into it."""

    def __init__(self, janus: Janus) -> None:
        self.sfu = SfuDriver(
            SfuConfig(endpoints=(SfuEndpoint(url=janus.ws_url),), key=janus.admin_key)
        )
        self.call_id = os.urandom(16)
        self.medias: list[SfuMedia] = []

    async def enter(self, device: Device, transform: FrameTransform, spec: MediaSpec) -> SfuMedia:
        g = await self.sfu.admit("bench-room", self.call_id, device, [device])
        access = SfuAccess(
            url=g.url, room=g.room, feed_id=g.feed_id, token=g.token.expose().decode()
        )
        media = SfuMedia(access=access, spec=spec, ice=IceConfig(loopback=True), crypto=transform)
        await media.publish()
        self.medias.append(media)
        return media

    async def close(self) -> None:
        for media in self.medias:
            await media.close()
        await self.sfu.end_call("bench-room", self.call_id)
        await self.sfu.close()


async def sfu_joins(janus: Janus, joins: int) -> None:
    room = BenchRoom(janus)
    publisher = ("user0", "d0")
    times: list[float] = []
    loop = asyncio.get_running_loop()
    try:
        sender = await room.enter(publisher, _crypto({0: publisher}, 0), MediaSpec())
        await asyncio.sleep(1.0)  # the publisher is well past its first keyframe
        for i in range(joins):
            viewer = (f"viewer{i}", "v1")
            media = await room.enter(
                viewer, _crypto({0: publisher, 1: viewer}, 1), MediaSpec(audio=False, video=False)
            )
            start = loop.time()
            await media.subscribe(sender.access.feed_id, publisher)
            sink = media.sink(publisher, "camera")
            await wait_for(lambda: sink.first_frame_at is not None, 10, 0.001)  # noqa: B023
            assert sink.first_frame_at is not None
            times.append(sink.first_frame_at - start)
            await media.close()
            room.medias.remove(media)
    finally:
        await room.close()
    p50, p95 = statistics.median(times) * 1000, percentile(times, 0.95) * 1000
    print(
        f"SFU join -> first decoded frame (SFrame video, keyframe asked on join): "
        f"p50 {p50:4.0f} ms  p95 {p95:4.0f} ms  ({joins} joins)"
    )


async def sframe_cost(frames: int = 150) -> None:
    """SFrame sealing and opening per frame against encoding the same frame."""
    devices = {0: ("a", "1"), 1: ("b", "1")}
    alice, bob = _crypto(devices, 0), _crypto(devices, 1)
    captured: list[bytes] = []
    encoder = hooks.FrameSealingVp8Encoder(lambda f: captured.append(f) or f)  # type: ignore[func-returns-value]
    pattern = PatternTrack()
    pattern._period = 0  # as fast as the encoder goes
    video = [await pattern.recv() for _ in range(frames)]
    t0 = time.perf_counter()
    for frame in video:
        encoder.encode(frame)
    encode = (time.perf_counter() - t0) / frames
    t0 = time.perf_counter()
    sealed = [alice.seal(Track.VIDEO, Codec.VP8, f) for f in captured]
    seal = (time.perf_counter() - t0) / frames
    t0 = time.perf_counter()
    for data in sealed:
        bob.open(Codec.VP8, data, sender=devices[0], track=Track.VIDEO)
    open_ = (time.perf_counter() - t0) / frames
    size = statistics.mean(len(f) for f in captured)
    print(
        f"VP8 320x240 ({size:.0f} B/frame): encode {encode * 1e6:6.0f} us, SFrame seal "
        f"{seal * 1e6:4.1f} us ({100 * seal / encode:.2f} % of encode), open {open_ * 1e6:4.1f} us"
    )
    tone = ToneTrack()
    tone._period = 0
    audio = [await tone.recv() for _ in range(500)]
    opus = SealingOpusEncoder(Passthrough())
    packets: list[bytes] = []
    t0 = time.perf_counter()
    for frame in audio:
        packets += opus.encode(frame)[0]
    encode = (time.perf_counter() - t0) / len(packets)
    t0 = time.perf_counter()
    sealed = [alice.seal(Track.AUDIO, Codec.OPUS, p) for p in packets]
    seal = (time.perf_counter() - t0) / len(packets)
    t0 = time.perf_counter()
    for data in sealed:
        bob.open(Codec.OPUS, data, sender=devices[0], track=Track.AUDIO)
    open_ = (time.perf_counter() - t0) / len(packets)
    print(
        f"Opus 20 ms ({len(packets[0])} B/frame): encode {encode * 1e6:5.0f} us, SFrame seal "
        f"{seal * 1e6:4.1f} us ({100 * seal / encode:.2f} % of encode), open {open_ * 1e6:4.1f} us"
    )


def _janus_cpu(janus: Janus) -> float:
    assert janus.proc is not None
    fields = Path(f"/proc/{janus.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def room_cpu(janus: Janus, n: int, video_senders: int, seconds: float) -> None:
    results = {}
    for sframe in (True, False):
        room = BenchRoom(janus)
        devices = [(f"user{i}", f"d{i}") for i in range(n)]
        roster = dict(enumerate(devices))
        try:
            for i, d in enumerate(devices):
                transform: FrameTransform = _crypto(roster, i) if sframe else Passthrough()
                await room.enter(d, transform, MediaSpec(video=i < video_senders))
            for a, media in zip(devices, room.medias, strict=True):
                for b, other in zip(devices, room.medias, strict=True):
                    if a != b:
                        await media.subscribe(other.access.feed_id, b)
            await asyncio.sleep(1.5)  # warm-up: keyframes, bitrate estimates
            frames0 = sum(s.frames for m in room.medias for s in m.sinks.values())
            cpu0, janus0, wall0 = time.process_time(), _janus_cpu(janus), time.perf_counter()
            await asyncio.sleep(seconds)
            cpu1, janus1, wall1 = time.process_time(), _janus_cpu(janus), time.perf_counter()
            frames1 = sum(s.frames for m in room.medias for s in m.sinks.values())
            dropped = sum(m.dropped() for m in room.medias)
        finally:
            await room.close()
        wall = wall1 - wall0
        results[sframe] = (cpu1 - cpu0) / wall / n
        print(
            f"{n} participants, {video_senders} sending video, "
            f"SFrame {'on ' if sframe else 'off'}: "
            f"{100 * results[sframe]:5.1f} % of a core per participant; Janus "
            f"{100 * (janus1 - janus0) / wall:4.1f} %; {(frames1 - frames0) / wall:6.0f} frames/s "
            f"decoded in all; {dropped} dropped"
        )
    print(f"  CPU with SFrame / without: {results[True] / results[False]:.3f}x")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--skip-relay", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-sfu", action="store_true")
    parser.add_argument("--joins", type=int, default=20)
    parser.add_argument("--eight", action="store_true", help="also 8 participants, 2 video")
    args = parser.parse_args()
    print(__doc__)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, aiortc {metadata.version('aiortc')}, "
        f"av {metadata.version('av')}; load average before: {os.getloadavg()[0]:.2f}"
    )
    p2p = CallOptions(ice=IceConfig(loopback=True))
    await setups("P2P", args.calls, p2p, p2p)
    if not args.skip_relay:
        if shutil.which("turnserver") is None:
            print("relay-only: skipped (coturn's turnserver is not installed)")
        else:
            with TemporaryDirectory() as tmp:
                turn = Coturn(Path(tmp)).start()
                try:
                    # Fresh credentials per device, as the server would issue them.
                    await setups(
                        "relay-only",
                        args.calls,
                        CallOptions(ice=IceConfig(turn=(turn.server(),), relay_only=True)),
                        CallOptions(ice=IceConfig(turn=(turn.server(),), relay_only=True)),
                    )
                finally:
                    turn.stop()
    if not args.skip_cpu:
        await cpu(640, 480, 30, args.seconds)
        await cpu(320, 240, 15, args.seconds)
    await sframe_cost()
    if not args.skip_sfu:
        if shutil.which("janus") is None:
            print("room calls through Janus: skipped (janus is not installed)")
        else:
            with TemporaryDirectory() as tmp:
                janus = Janus(Path(tmp)).start()
                try:
                    await sfu_joins(janus, args.joins)
                    await room_cpu(janus, 3, 3, args.seconds)
                    if args.eight:
                        await room_cpu(janus, 8, 2, args.seconds)
                finally:
                    janus.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
