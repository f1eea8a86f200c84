"""Room calls in the browser: what SFrame costs in the encoded-transform worker, per frame,
against what the browser's own VP8 encoder spends on the same frames.

    python bench/app_calls.py [--windows W] [--seconds S] [--size WxH]

Set-up (not timed): a Janus and a server (``--sfu``) on 127.0.0.1, `sottovoce app
--loopback` for alice in headless Chromium (Debian's /usr/bin/chromium, fake camera
and microphone), bob as an aiortc participant (320x240 at 15 fps); alice starts a
room call, bob joins, and both decode each other before measuring starts. The page
asks its camera for 640x480; ``--size`` makes the bench's copy of the page ask for
another size (an init script rewrites the page's getUserMedia video constraints; the
app is unchanged).

Then W windows of S seconds, each read from the page at its start and end:

* seal:     time inside the worker's send transform per video frame (WebCrypto
            AES-128-GCM, the SFrame header, the copies), from performance.now();
* open:     the same for bob's video frames received;
* encode:   the encoder's own ``totalEncodeTime / framesEncoded`` (getStats,
            outbound-rtp of the camera) over the same window -- the baseline;
* ratio:    seal / encode, per window; the figure is the median over windows.
* sync:     the worker's own time per sealed video frame: its code and the
            synchronous part of the WebCrypto call, without the wait for the crypto
            thread's result (absent, "nan", from a worker that does not count it);
* CPU:      the CPU time (``/proc/PID/task/TID/schedstat``, ns) of Chromium's
            worker thread ("DedicatedWorker": the SFrame worker, which seals and
            opens every stream) over the window, per frame the worker handled
            (sealed video and audio, opened video and audio), and that against
            encode. AES-GCM itself runs on the renderer's shared thread pool (this
            Chromium has no thread of its own for WebCrypto), with other work, so
            it is not in this figure; the synchronous part of the call (argument
            checks, copies, the post to the pool) is;
* size:     the encoder's frame width x height at the window's end (WebRTC scales
            a camera's picture down while its bandwidth estimate ramps up or when
            the CPU is overused, so the size asked for is not always the size
            encoded).

"seal" is wall-clock time from a frame's arrival in the worker to its enqueue, so
it counts the hop to the crypto thread pool and back and any wait for a core on a
busy machine: an upper bound on what SFrame costs. "sync" leaves the wait for the
result out but is still wall clock (a descheduled worker counts). Both come from
``performance.now()``, coarsened in a page that is not cross-origin isolated (about
0.1 ms, with jitter); over hundreds of frames per window the mean is still
meaningful. "CPU" is what the worker thread really ran, whatever the machine's
load, but per frame of every stream (audio frames are small and many), so it is not
a per-video-frame figure like the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def sframe_threads() -> dict[str, list[str]]:
    """schedstat paths of this process's descendants' (Chromium's) worker threads."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: dict[str, list[str]] = {"DedicatedWorker": []}
    todo = list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            except OSError:
                continue
            for name, paths in found.items():
                if comm.startswith(name):
                    paths.append(f"/proc/{pid}/task/{tid}/schedstat")
    return found


def cpu_ns(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):  # a thread that ended
            total += int(Path(path).read_text().split()[0])
    return total


def handled(s0: dict[str, Any], s1: dict[str, Any]) -> int:
    return sum(b["frames"] - s0["worker"].get(k, {"frames": 0})["frames"]
               for k, b in s1["worker"].items())


def sync_per_frame(s0: dict[str, Any], s1: dict[str, Any], stream: str) -> float:
    a, b = s0["worker"][stream], s1["worker"][stream]
    frames = b["frames"] - a["frames"]
    if "syncUs" not in b or not frames:
        return float("nan")
    return float((b["syncUs"] - a["syncUs"]) / frames)


SIZE_SCRIPT = """(() => {
  const size = %s;
  const orig = MediaDevices.prototype.getUserMedia;
  MediaDevices.prototype.getUserMedia = function (c) {
    if (c && c.video) c = { ...c, video: { ...c.video, width: size[0], height: size[1] } };
    return orig.call(this, c);
  };
})();"""


async def main(windows: int, seconds: float, size: tuple[int, int] | None) -> None:
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
                if size is not None:
                    await ctx.add_init_script(SIZE_SCRIPT % list(size))
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
                threads = sframe_threads()
                rows = []
                for _ in range(windows):
                    s0 = await page.evaluate("window.sottovoceCall.stats()")
                    w0 = cpu_ns(threads["DedicatedWorker"])
                    await asyncio.sleep(seconds)
                    w1 = cpu_ns(threads["DedicatedWorker"])
                    s1 = await page.evaluate("window.sottovoceCall.stats()")
                    seal, sealed = per_frame(s0, s1, "send video")
                    opened_us, opened = per_frame(s0, s1, f"recv {bob_name} video")
                    audio, _ = per_frame(s0, s1, "send audio")
                    enc, encoded, _ = encode_per_frame(s0, s1)
                    sync = sync_per_frame(s0, s1, "send video")
                    n = handled(s0, s1) or 1
                    wcpu = (w1 - w0) / 1e3 / n
                    e1 = next(iter(s1["encoder"].values()))
                    shape = f"{e1.get('frameWidth')}x{e1.get('frameHeight')}"
                    rows.append((seal, opened_us, audio, enc, seal / enc, sync, sync / enc,
                                 wcpu, wcpu / enc, sealed, encoded, opened, n, shape))
                await ctx.close()
            await hub.end(room_id)
        finally:
            await bob.close()
            app.stop()
            server.stop()
            janus.stop()

    print(f"load average before/after: {LOAD0} / {os.getloadavg()}")
    print(f"camera asked for {size or (640, 480)}; "
          f"{len(threads['DedicatedWorker'])} DedicatedWorker thread(s)")
    print("window  seal µs/frame  open µs/frame  audio seal µs  encode µs/frame  seal/encode"
          "  sync µs  sync/encode  worker CPU µs  CPU/encode"
          "  (frames sealed, encoded, opened, all; encoded size)")
    line = ("{0:>6}  {1:13.0f}  {2:13.0f}  {3:13.0f}  {4:15.0f}  {5:10.1%}  {6:7.0f}  {7:10.1%}"
            "  {8:13.1f}  {9:9.1%}")
    for i, r in enumerate(rows):
        print(line.format(i, *r[:9]) + f"  ({r[9]}, {r[10]}, {r[11]}, {r[12]}; {r[13]})")
    med = [statistics.median(float(r[i]) for r in rows) for i in range(9)]
    print(line.format("median", *med))


LOAD0 = os.getloadavg()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", default="", metavar="WxH",
                        help="the camera size the page asks for (default: the page's 640x480)")
    args = parser.parse_args()
    size = None
    if args.size:
        try:
            w, h = (int(x) for x in args.size.lower().split("x"))
        except ValueError:
            parser.error("--size takes WIDTHxHEIGHT, e.g. 1280x720")
        size = (w, h)
    asyncio.run(main(args.windows, args.seconds, size))
