"""Room calls in the browser: what SFrame costs in the encoded-transform worker, per frame,
against what the browser's own VP8 encoder spends on the same frames.

    python bench/app_calls.py [--windows W] [--seconds S]

Set-up (not timed): a Janus and a server (``--sfu``) on 127.0.0.1, `sottovoce app
--loopback` for alice in headless Chromium (Debian's /usr/bin/chromium, fake camera
and microphone), bob as an aiortc participant (320x240 at 15 fps); alice starts a
room call, bob joins, and both decode each other before measuring starts.

Then W windows of S seconds, each read from the page at its start and end:

* seal:     time inside the worker's send transform per video frame (WebCrypto
            AES-128-GCM, the SFrame header, the copies), from performance.now();
* open:     the same for bob's video frames received;
* encode:   the encoder's own ``totalEncodeTime / framesEncoded`` (getStats,
            outbound-rtp of the camera) over the same window -- the baseline;
* ratio:    seal / encode, per window; the figure is the median over windows.

The worker times wall-clock time across the awaited WebCrypto call, so it counts
the hop to the browser's crypto thread and any wait for a core on a busy machine:
an upper bound on the CPU SFrame costs. ``performance.now()`` is coarsened in a page
that is not cross-origin isolated (about 0.1 ms, with jitter); over hundreds of
frames per window the mean is still meaningful.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.test_app_calls import (  # noqa: E402
    MEDIA_FLAGS,
    CallApp,
    open_room,
    page_until,
    room_with_alice,
    sink_frames,
    until,
)
from tests.integration.janus_helpers import Janus  # noqa: E402
from tests.integration.serverproc import ServerProcess  # noqa: E402

from sottovoce.client.calls.media import IceConfig  # noqa: E402
from sottovoce.client.calls.room_controller import RoomCallOptions  # noqa: E402
from sottovoce.client.calls.sources import MediaSpec  # noqa: E402


def per_frame(s0: dict[str, Any], s1: dict[str, Any], stream: str) -> tuple[float, int]:
    a, b = s0["worker"][stream], s1["worker"][stream]
    frames = b["frames"] - a["frames"]
    return ((b["busyUs"] - a["busyUs"]) / frames if frames else float("nan")), frames


def encode_per_frame(s0: dict[str, Any], s1: dict[str, Any]) -> tuple[float, int, str]:
    mid = next(iter(s1["encoder"]))
    a, b = s0["encoder"][mid], s1["encoder"][mid]
    frames = b["framesEncoded"] - a["framesEncoded"]
    us = (b["totalEncodeTime"] - a["totalEncodeTime"]) * 1e6
    return (us / frames if frames else float("nan")), frames, mid


async def main(windows: int, seconds: float) -> None:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="bench-app-calls-") as tmp:
        root = Path(tmp)
        janus = Janus(root / "janus").start()
        key = janus.key_file(root)
        server = ServerProcess(root / "server",
                               extra_args=["--sfu", janus.ws_url, "--sfu-key-file", str(key)])
        server.start()
        (bob,), room_id, alice_dir = await room_with_alice(server, root)
        app = CallApp(alice_dir).start()
        try:
            hub = bob.start_room_calls(RoomCallOptions(
                media=MediaSpec(width=320, height=240, fps=15), ice=IceConfig(loopback=True)))
            async with async_playwright() as pw:
                ctx = await pw.chromium.launch_persistent_context(
                    str(root / "profile"), executable_path="/usr/bin/chromium", headless=True,
                    args=[*MEDIA_FLAGS, "--use-fake-ui-for-media-stream"])
                page = await open_room(ctx, app)
                await page.click("#call-button")
                await until(lambda: room_id in hub.seen)
                ctl = hub.join(room_id)
                await until(lambda: len(ctl.participants) == 2)
                alice = next(d for d in ctl.participants if d[0] == "alice")
                await page_until(page, "window.sottovoceCall.stats().then(s => "
                                       "Object.values(s.decoded).some(n => n > 5))")
                await until(lambda: sink_frames(ctl, alice) > 5)
                await asyncio.sleep(2.0)  # past the first keyframes
                bob_name = f"{bob.username}/{bob.device_id}"
                rows = []
                for _ in range(windows):
                    s0 = await page.evaluate("window.sottovoceCall.stats()")
                    await asyncio.sleep(seconds)
                    s1 = await page.evaluate("window.sottovoceCall.stats()")
                    seal, sealed = per_frame(s0, s1, "send video")
                    opened_us, opened = per_frame(s0, s1, f"recv {bob_name} video")
                    audio, _ = per_frame(s0, s1, "send audio")
                    enc, encoded, _ = encode_per_frame(s0, s1)
                    rows.append((seal, opened_us, audio, enc, seal / enc, sealed, encoded, opened))
                await ctx.close()
            await hub.end(room_id)
        finally:
            await bob.close()
            app.stop()
            server.stop()
            janus.stop()

    print(f"load average before/after: {LOAD0} / {os.getloadavg()}")
    print("window  seal µs/frame  open µs/frame  audio seal µs  encode µs/frame  seal/encode"
          "  (frames sealed, encoded, opened)")
    for i, r in enumerate(rows):
        print(f"{i:6d}  {r[0]:13.0f}  {r[1]:13.0f}  {r[2]:13.0f}  {r[3]:15.0f}  {r[4]:10.1%}"
              f"  ({r[5]}, {r[6]}, {r[7]})")
    med = [statistics.median(r[i] for r in rows) for i in range(5)]
    print(f"median  {med[0]:13.0f}  {med[1]:13.0f}  {med[2]:13.0f}  {med[3]:15.0f}  "
          f"{med[4]:10.1%}")


LOAD0 = os.getloadavg()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main(args.windows, args.seconds))
