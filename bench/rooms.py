"""Rooms benchmark: fan-out deliveries/s through the real ``sottovoce server``.

    python bench/rooms.py [--members 50 500] [--messages 4000] [--window 256]

What is measured, per room size M (a fresh server and data directory each):

* M member devices (M accounts, one device each) are registered, connected and
  resumed (live); the first creates a room and adds the others with one commit.
* That first device (a member too) sends N ``sottovoce.room.send`` of 200 opaque
  random bytes, keeping ``--window`` sends in flight (a send leaves the window when
  its ``ksmpv3.send.ack`` arrives, i.e. after the group commit's fsync).
* Every member device, the sender included, counts the ``sottovoce.room.frame``s it
  receives and acks its read position (``sottovoce.room.ack``) every 512 frames.
* Figure: deliveries/s = room frames received by all M devices / the time from the
  first send until the last of the N × M frames arrived (after a warm-up of 200
  messages). The server stores ONE row per message and writes one serialized
  frame to M sockets.

The server runs in its own process (WAL + synchronous=FULL); the clients run in
this process on uvloop, so both share the machine's cores. CPU time of each
process during the measured interval is printed so it is visible which side
saturated. The SFrame section (bench/sframe.py) is printed after the rooms
figures when that module provides ``measure``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import re
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conformance.rawclient import Device, RawClient
from tests.integration.serverproc import ServerProcess

PAYLOAD = base64.b64encode(secrets.token_bytes(200)).decode()
ACK_EVERY = 512
FRAME_PREFIX = '{"event":"sottovoce.room.frame"'
_SEQ = re.compile(r'"serverSeq":(\d+)')
_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None = None) -> float:
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used (from /proc/stat), to show outside load."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK


class BenchServer(ServerProcess):
    def __init__(self, data_dir: Path, extra: list[str]) -> None:
        super().__init__(data_dir, extra_args=[
            "--device-rate", "1000000", "--device-burst", "1000000",
            "--ip-rate", "100000", "--ip-burst", "100000", "--log-level", "warning",
            "--max-preauth-per-ip", "100000",  # every member logs in from 127.0.0.1 at once
            "--write-buffer-limit", str(64 * 1024 * 1024), *extra,
        ])


@dataclass
class Member:
    client: RawClient
    room: str
    delivered: int = 0
    target: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    acked: int = 0
    window_open: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        ws = self.client.ws
        since_ack = 0
        try:
            async for msg in ws:
                if not isinstance(msg, str):
                    continue
                if msg.startswith(FRAME_PREFIX):
                    self.delivered += 1
                    since_ack += 1
                    if self.target and self.delivered >= self.target:
                        self.done.set()
                    if since_ack >= ACK_EVERY:
                        m = _SEQ.search(msg)
                        if m:
                            since_ack = 0
                            await ws.send('{"event":"sottovoce.room.ack","data":{"roomId":"'
                                          + self.room + '","upToServerSeq":' + m.group(1) + "}}")
                elif '"ksmpv3.send.ack"' in msg[:40]:
                    self.acked += 1
                    self.window_open.set()
                elif '"ksmpv3.error"' in msg[:40]:
                    raise RuntimeError(f"server error: {msg[:300]}")
        except RuntimeError:
            raise
        except Exception:
            pass


def send_frame(room: str, epoch: int, i: int, tag: str, now_ms: int) -> str:
    """A room.send frame built by string formatting (the bench must not be the bottleneck)."""
    return (
        '{"event":"sottovoce.room.send","data":{"roomId":"' + room + '","epoch":' + str(epoch)
        + ',"messageId":"m' + str(i) + "-" + tag + '","idempotencyKey":"k' + str(i) + "-" + tag
        + '","contentType":"text","clientCreatedAtMs":' + str(now_ms)
        + ',"ciphertext":"' + PAYLOAD + '"}}'
    )


async def flood(sender: Member, epoch: int, count: int, window: int) -> None:
    ws = sender.client.ws
    tag = secrets.token_hex(3)
    now = int(time.time() * 1000)
    base = sender.acked
    sent = 0
    while sent < count:
        in_flight = sent - (sender.acked - base)
        if in_flight >= window:
            sender.window_open.clear()
            await sender.window_open.wait()
            continue
        for _ in range(min(64, window - in_flight, count - sent)):
            await ws.send(send_frame(sender.room, epoch, sent, tag, now))
            sent += 1


async def online(url: str) -> RawClient:
    c = await RawClient.open(url, max_queue=None)
    reply = await c.register(Device.new())
    if reply["event"] != "sottovoce.registered":
        raise RuntimeError(reply)
    await c.resume()
    return c


async def setup_room(url: str, n: int) -> tuple[list[Member], int]:
    clients = list(await asyncio.gather(*(online(url) for _ in range(n))))
    room = "room:" + secrets.token_hex(16)
    creator = clients[0]
    reply = await creator.request("sottovoce.room.create", {"roomId": room, "groupInfo": None})
    if reply["event"] != "sottovoce.room.created":
        raise RuntimeError(reply)
    adds = [{"userId": c.device.username, "deviceId": "d1"} for c in clients[1:]]  # type: ignore[union-attr]
    reply = await creator.request("sottovoce.room.commit", {
        "roomId": room, "epoch": 0, "messageId": "c-setup", "idempotencyKey": "c-setup",
        "commit": base64.b64encode(b"opaque commit").decode(),
        "welcome": base64.b64encode(b"opaque welcome").decode(), "adds": adds, "removes": [],
    })
    if reply["event"] != "sottovoce.room.committed":
        raise RuntimeError(reply)
    for c in clients[1:]:  # the Welcome, in each added device's inbox
        await c.wait_for("ksmpv3.inbox.frame")
    await creator.wait_for("sottovoce.room.frame")  # the add commit (creator was a member)
    return [Member(c, room) for c in clients], 1


async def bench_fanout(url: str, pid: int, members: int, messages: int, window: int
                       ) -> dict[str, Any]:
    t_setup = time.perf_counter()
    group, epoch = await setup_room(url, members)
    setup_s = time.perf_counter() - t_setup
    tasks = [asyncio.create_task(m.run()) for m in group]
    sender = group[0]

    async def round_of(count: int) -> float:
        for m in group:
            m.target = m.delivered + count
            m.done.clear()
        t0 = time.perf_counter()
        await flood(sender, epoch, count, window)
        await asyncio.wait_for(asyncio.gather(*(m.done.wait() for m in group)), timeout=300)
        return time.perf_counter() - t0

    await round_of(200)  # warm-up
    s0, b0, m0 = cpu_seconds(pid), cpu_seconds(), machine_busy_seconds()
    before = sum(m.delivered for m in group)
    elapsed = await round_of(messages)
    delivered = sum(m.delivered for m in group) - before
    srv_cpu, bench_cpu = cpu_seconds(pid) - s0, cpu_seconds() - b0
    other = max(0.0, machine_busy_seconds() - m0 - srv_cpu - bench_cpu)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*(m.client.ws.close() for m in group), return_exceptions=True)
    return {
        "rate": delivered / elapsed, "msgs": messages / elapsed, "elapsed": elapsed,
        "delivered": delivered, "setup": setup_s,
        "cpu": f"CPU: server {100 * srv_cpu / elapsed:.0f}%, bench clients "
               f"{100 * bench_cpu / elapsed:.0f}%, other processes {100 * other / elapsed:.0f}% "
               f"(% of one core; 2 cores = 200%) "
               f"({1e6 * srv_cpu / max(1, delivered):.1f} µs of server CPU per delivery)",
    }


def commit_stats(metrics: str) -> str:
    vals = {}
    for name in ("sottovoce_commit_batch_jobs_sum", "sottovoce_commit_batch_jobs_count",
                 "sottovoce_commit_seconds_sum"):
        m = re.search(rf"^{name} ([0-9.e+]+)$", metrics, re.M)
        vals[name] = float(m.group(1)) if m else 0.0
    n = vals["sottovoce_commit_batch_jobs_count"] or 1
    return (f"{int(n)} commits, {vals['sottovoce_commit_batch_jobs_sum'] / n:.1f} jobs/commit, "
            f"{1000 * vals['sottovoce_commit_seconds_sum'] / n:.2f} ms/commit (writer thread)")


# =============================================================================
# SFrame section — owned by the media helper (H3). bench/sframe.py exposes
# ``measure(frames, size) -> dict``; this prints it in the same run. Edit here only.
# =============================================================================


def sframe_section(args: argparse.Namespace) -> None:
    try:
        from bench import sframe as sframe_bench
    except ImportError as exc:
        print(f"sframe: bench/sframe.py not importable ({exc})")
        return
    measure = getattr(sframe_bench, "measure", None)
    if measure is None:
        print("sframe: bench/sframe.py has no measure() yet")
        return
    r = measure(args.sframe_frames, 1200)
    print(f"sframe protect+unprotect, 1,200-byte frames: {r.get('sframe_fps', 0):,.0f} frames/s; "
          f"raw AES-GCM {r.get('raw_gcm_fps', 0):,.0f} frames/s in the same run "
          f"(ratio {r.get('ratio', 0):.2f})\n    {r.get('methodology', '')}", flush=True)


# =============================================================================


async def run(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="sv-rooms-bench-"))
    print(f"machine: {platform.machine()} {os.cpu_count()} cores; Python "
          f"{platform.python_version()}; load average {os.getloadavg()[0]:.2f} before the run")
    print(f"server: python -m sottovoce server, SQLite WAL + synchronous=FULL under {base}; "
          f"bench clients: this process (uvloop), 127.0.0.1; payload 200 bytes; "
          f"window {args.window}; {args.messages} messages per room size", flush=True)
    try:
        for n in args.members:
            srv = BenchServer(base / f"m{n}", list(args.server_arg or []))
            srv.start()
            assert srv.proc is not None
            try:
                r = await bench_fanout(srv.ws_url, srv.proc.pid, n, args.messages, args.window)
                print(f"room fan-out to {n} member devices: {r['rate']:,.0f} deliveries/s "
                      f"({r['msgs']:,.0f} msgs/s; {r['delivered']:,} frames in "
                      f"{r['elapsed']:.2f}s; room set up in {r['setup']:.1f}s)\n    {r['cpu']}")
                print("    storage:", commit_stats(srv.metrics()), flush=True)
            finally:
                srv.stop(timeout=30)
        if not args.no_sframe:
            sframe_section(args)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--members", type=int, nargs="+", default=[50, 500])
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--sframe-frames", type=int, default=20000)
    p.add_argument("--no-sframe", action="store_true")
    p.add_argument("--server-arg", action="append", help="extra server flag (repeatable)")
    args = p.parse_args()
    try:
        import uvloop
        uvloop.run(run(args))
    except ImportError:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
