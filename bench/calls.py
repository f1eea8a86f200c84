"""1:1 call setup time and media CPU on loopback (aiortc, synthetic media).

    python bench/calls.py [--calls 10] [--seconds 5] [--skip-relay] [--skip-cpu]

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
"""

from __future__ import annotations

import argparse
import asyncio
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

from sottovoce.calls.effects import CallState
from sottovoce.client.calls import CallController, CallOptions, IceConfig, MediaSpec


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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--skip-relay", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true")
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
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
