"""Relay benchmark: the real ``sottovoce server`` driven by raw KSMP v3 clients
(docs/architecture.md §Hot path).

    python bench/relay.py [--pairs 4] [--seconds 8] [--window 256] [--fanout 50] [--profile]
    python bench/relay.py --database postgresql://postgres@127.0.0.1:5432/test --only 1to1

With ``--database`` every phase runs twice, on embedded SQLite (the baseline)
and on PostgreSQL (a fresh schema in that database per phase, dropped after),
one after the other in the same run; ``--backends`` picks only one of them.

What is measured (payloads are 200 opaque random bytes; the relay never looks inside):

* **1:1 throughput** — ``--pairs`` sender/recipient pairs, each sender keeping
  ``--window`` sends in flight (a send leaves the window when its
  ``ksmpv3.send.ack`` arrives, i.e. after the group commit's fsync). Recipients
  are online and send ``ksmpv3.ack.read`` every 256 frames. Figure: inbox frames
  delivered to recipients per second over the measured interval (after a warm-up).
* **latency at 200 msgs/s** — one pair, sends paced at 5 ms on an absolute
  schedule, in ``--latency-blocks`` blocks; per message the time from writing the
  send to the socket to the recipient's socket read that carries the inbox frame
  (and to the sender's read carrying the ack), one monotonic clock in the bench
  process. p50/p99. After each block, with the server idle, the **disk probe**
  takes as many samples at the same rate: 16 KiB overwritten in a preallocated
  file in the server's own data directory, then fdatasync (what the WAL meets
  in steady state). So the latency p99 and the disk's p99 come from the same
  period, the same file system and the same number of samples; the line under
  the figures compares them with the goal (p99 ≤ 2 × disk p99 + 1 ms) and gives
  the run-queue waits of the server's threads and of the bench process
  (/proc/PID/task/*/schedstat: time runnable without a free core), which show
  when CPU starvation, not the disk, made the tail. ``--latency-trace CSV``
  writes every message's and every probe sample's time and latency.
* **50-recipient fan-out** — one user with ``--fanout`` devices, all online; each
  send carries one 200-byte ciphertext per device (one serverSeq, ``--fanout``
  inbox rows, one frame per device socket). Figure: inbox frames delivered per second.

The server runs in its own process (its data directory on the same disk as
/tmp, WAL + synchronous=FULL); the clients run in this process on uvloop, so
the two share the machine's cores the way a real deployment would not. The
clients are lean (bench/_ksmp_load.py): each connection is set up with the
conformance suite's websockets client, then its socket is driven by a bare
protocol writing pre-encoded frames (only the message number and the time
spliced in; the JSON text is the same as before) and counting the server's frames
by their headers, checking that acks and deliveries arrive complete, in order,
once, with the ciphertext sent (one frame in 512 parsed whole). A wrong or missing
frame stops the run. The
CPU time used by each process during every phase is printed so that it is
visible which side saturated (the server's also split between its event loop and
its other threads, the SQLite writer above all, user + system), and the bench
clients' CPU per frame. ``--profile``
runs the server under cProfile and prints where its event-loop thread spent its
time (the writer thread is not profiled; its commit time is in the /metrics
histogram, printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import pstats
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._ksmp_load import (
    BenchError,
    LeanReceiver,
    LeanSender,
    check,
    send_parts,
    wait_all,
)
from tests.conformance.rawclient import Device, RawClient
from tests.integration.serverproc import ServerProcess

from sottovoce.protocol.events import dm_conversation_id

PAYLOAD = base64.b64encode(secrets.token_bytes(200)).decode()
ACK_EVERY = 256
PROBE_BYTES = 16384
_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None = None) -> float:
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def thread_seconds(pid: int) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds used so far by the event loop (the main thread) and
    by all the other threads of ``pid`` (the SQLite writer, its checkpointer, readers)."""
    out: dict[str, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = "loop" if task.name == str(pid) else "threads"
        user, system = out.get(name, (0.0, 0.0))
        out[name] = (user + int(fields[11]) / _CLK, system + int(fields[12]) / _CLK)
    return out


def postgres_seconds() -> dict[str, float]:
    """CPU seconds used so far by each of the machine's PostgreSQL processes (by pid)."""
    out: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in text:
            fields = text.rsplit(")", 1)[1].split()
            out[stat.parent.name] = (int(fields[11]) + int(fields[12])) / _CLK
    return out


def postgres_used(before: dict[str, float]) -> float:
    """CPU seconds PostgreSQL used since ``before`` (backends that exited meanwhile are lost)."""
    return sum(v - before.get(pid, 0.0) for pid, v in postgres_seconds().items())


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used (from /proc/stat), to show outside load."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK


class BenchServer(ServerProcess):
    def __init__(self, data_dir: Path, *, profile: Path | None, extra: list[str]) -> None:
        super().__init__(data_dir, extra_args=[
            "--device-rate", "1000000", "--device-burst", "1000000",
            "--ip-rate", "100000", "--ip-burst", "100000", "--log-level", "warning",
            "--write-buffer-limit", str(64 * 1024 * 1024),
            # Receivers may fall behind a flood by more than a stranger's inbox quota:
            # quotas are checked on every send, but set far away (the relay is measured).
            *(f"--inbox-{name}={10**12}" for name in (
                "max-messages", "max-bytes", "contact-messages", "contact-bytes",
                "stranger-messages", "stranger-bytes")),
            *extra,
        ])
        self.profile = profile

    def command(self) -> list[str]:
        cmd = super().command()
        if self.profile is not None:
            cmd[1:1] = ["-m", "cProfile", "-o", str(self.profile)]
        return cmd


def send_frame(sender: str, recipient: str, targets: list[tuple[str, str]], i: int, tag: str,
               now_ms: int) -> str:
    """The ksmpv3.send text of message ``i`` (the lean senders splice ``i`` and the time
    into the same template, pre-encoded: see bench/_ksmp_load.py)."""
    a, b, c, d = send_parts(dm_conversation_id(sender, recipient), recipient,
                            ciphertexts(targets), tag)
    s = str(i).encode()
    return (a + s + b + s + c + str(now_ms).encode() + d).decode()


def ciphertexts(targets: list[tuple[str, str]]) -> str:
    return ",".join(
        f'{{"userId":"{u}","deviceId":"{d}","ciphertext":"{PAYLOAD}"}}' for u, d in targets
    )


async def online(url: str, device: Device | None = None, add: bool = False) -> RawClient:
    c = await RawClient.open(url, max_queue=None, ping_interval=None)
    reply = await (c.add_device(device) if add and device is not None
                   else c.register(device or Device.new()))
    if reply["event"] != "sottovoce.registered":
        raise RuntimeError(reply)
    await c.resume()
    return c


async def lean_sender(client: RawClient, recipient: str, targets: list[tuple[str, str]],
                      window: int = 0, track: bool = False,
                      coalesce: bool = False) -> LeanSender:
    me = client.device.username  # type: ignore[union-attr]
    s: LeanSender = await LeanSender.take_over(client, f"sender {me}",
                                         dm_conversation_id(me, recipient), recipient,
                                         ciphertexts(targets), secrets.token_hex(3), window,
                                         track)
    s.coalesce = coalesce
    return s


async def lean_receiver(client: RawClient, sender: LeanSender,
                        track: bool = False) -> LeanReceiver:
    name = f"receiver {client.device.username}/{client.device.device_id}"  # type: ignore[union-attr]
    r: LeanReceiver = await LeanReceiver.take_over(client, name, sender.tag.decode(), PAYLOAD,
                                                   ACK_EVERY, track)
    return r


# The websockets-library clients this bench used before the lean ones: bench/multinode.py
# still drives its nodes with them (its figures stay comparable with its earlier runs).
_SEQ = re.compile(r'"globalInboxSeq":(\d+)')
_MID = re.compile(r'"messageId":"m(\d+)-')


@dataclass
class Receiver:
    client: RawClient
    delivered: int = 0
    arrivals: dict[int, float] = field(default_factory=dict)
    track: bool = False

    async def run(self) -> None:
        ws = self.client.ws
        last_acked = 0
        try:
            async for msg in ws:
                if not isinstance(msg, str) or '"ksmpv3.inbox.frame"' not in msg[:40]:
                    continue
                self.delivered += 1
                if self.track:
                    m = _MID.search(msg)
                    if m:
                        self.arrivals[int(m.group(1))] = time.perf_counter()
                if self.delivered - last_acked >= ACK_EVERY:
                    seq = _SEQ.search(msg)
                    if seq:
                        last_acked = self.delivered
                        await ws.send(
                            '{"event":"ksmpv3.ack.read","data":{"upToGlobalInboxSeq":'
                            + seq.group(1) + "}}"
                        )
        except Exception:
            pass


@dataclass
class Sender:
    client: RawClient
    recipient: str
    targets: list[tuple[str, str]]
    window: int
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    acked: int = 0
    sent: int = 0
    ack_times: dict[int, float] = field(default_factory=dict)
    send_times: dict[int, float] = field(default_factory=dict)
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    stop: bool = False

    async def read_acks(self, track: bool = False) -> None:
        try:
            async for msg in self.client.ws:
                if isinstance(msg, str) and '"ksmpv3.send.ack"' in msg[:40]:
                    self.acked += 1
                    if track:
                        m = _MID.search(msg)
                        if m:
                            self.ack_times[int(m.group(1))] = time.perf_counter()
                    if self.sent - self.acked < self.window:
                        self._room.set()
                elif isinstance(msg, str) and '"ksmpv3.error"' in msg[:40]:
                    raise RuntimeError(f"server error: {msg[:300]}")
        except RuntimeError:
            raise
        except Exception:
            pass

    async def flood(self) -> None:
        ws = self.client.ws
        me = self.client.device.username  # type: ignore[union-attr]
        now = int(time.time() * 1000)
        while not self.stop:
            if self.sent - self.acked >= self.window:
                self._room.clear()
                await self._room.wait()
                continue
            burst = min(64, self.window - (self.sent - self.acked))
            for _ in range(burst):
                await ws.send(send_frame(me, self.recipient, self.targets, self.sent, self.tag,
                                         now))
                self.sent += 1

    async def paced(self, count: int, interval: float) -> None:
        ws = self.client.ws
        me = self.client.device.username  # type: ignore[union-attr]
        t0 = time.perf_counter()
        for i in range(count):
            target = t0 + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            text = send_frame(me, self.recipient, self.targets, i, self.tag,
                              int(time.time() * 1000))
            self.send_times[i] = time.perf_counter()
            await ws.send(text)
            self.sent += 1


@dataclass
class Cpu:
    """CPU used during a phase, in % of one core: server, bench clients, everything else."""

    pid: int
    t0: float = 0.0
    s0: float = 0.0
    b0: float = 0.0
    m0: float = 0.0
    p0: dict[str, float] = field(default_factory=dict)
    th0: dict[str, tuple[float, float]] = field(default_factory=dict)

    def start(self) -> None:
        self.th0 = thread_seconds(self.pid)
        self.t0, self.s0 = time.perf_counter(), cpu_seconds(self.pid)
        self.b0, self.m0 = cpu_seconds(), machine_busy_seconds()
        self.p0 = postgres_seconds()

    def stop(self, count: float = 0, exclude: float = 0.0) -> str:
        """``exclude``: CPU seconds of this process that were not the clients' (a probe)."""
        dt = time.perf_counter() - self.t0
        srv_s = cpu_seconds(self.pid) - self.s0
        srv = 100 * srv_s / dt
        bench_s = cpu_seconds() - self.b0 - exclude
        bench = 100 * bench_s / dt
        pg = 100 * postgres_used(self.p0) / dt
        other = max(0.0, 100 * (machine_busy_seconds() - self.m0) / dt - srv - bench - pg)
        per = ""
        if count:
            per = f" = {1e6 * srv_s / count:.0f} µs of server CPU per frame delivered"
            # Where the server's CPU went: the event loop, the other threads (the writer
            # above all); user + system, µs per frame.
            th = thread_seconds(self.pid)
            parts = []
            for name in ("loop", "threads"):
                u1, s1 = th.get(name, (0.0, 0.0))
                u0, s0 = self.th0.get(name, (0.0, 0.0))
                parts.append(f"{name} {1e6 * (u1 - u0) / count:.1f}+{1e6 * (s1 - s0) / count:.1f}")
            per += " (user+system µs: " + ", ".join(parts) + ")"
            per += f"; bench clients {1e6 * bench_s / count:.1f} µs of CPU per frame"
        return (f"CPU: server {srv:.0f}%, bench clients {bench:.0f}%, PostgreSQL {pg:.0f}%, "
                f"other processes {other:.0f}%{per}")


async def measure(pid: int, seconds: float, get: Callable[[], int]) -> tuple[float, str]:
    """Rate of ``get()`` over ``seconds`` and the CPU used meanwhile."""
    cpu = Cpu(pid)
    c0 = get()
    cpu.start()
    await asyncio.sleep(seconds)
    c1 = get()
    return (c1 - c0) / seconds, cpu.stop(c1 - c0)


async def bench_one_to_one(url: str, pid: int, pairs: int, window: int, seconds: float,
                           coalesce: bool = False) -> dict:
    senders, receivers = [], []
    for _ in range(pairs):
        a = await online(url)
        b = await online(url)
        bob = b.device.username  # type: ignore[union-attr]
        s = await lean_sender(a, bob, [(bob, "d1")], window, coalesce=coalesce)
        senders.append(s)
        receivers.append(await lean_receiver(b, s))
    conns = senders + receivers
    for s in senders:
        s.start_flood()
    await wait_all(conns, lambda: False, 1.5)  # warm-up
    rate, cpu = await measure(pid, seconds, lambda: sum(r.delivered for r in receivers))
    check(conns)
    for s in senders:
        s.running = False
    await wait_all(conns, lambda: all(r.delivered == s.sent == s.acked for s, r in
                                      zip(senders, receivers, strict=True)), 30)
    lost = sum(s.sent - r.delivered for s, r in zip(senders, receivers, strict=True))
    unacked = sum(s.sent - s.acked for s in senders)
    if lost or unacked:
        raise BenchError(f"30 s after the last send, {unacked} sends not acked and "
                         f"{lost} not delivered")
    for c in conns:
        c.close()
    return {"rate": rate, "cpu": cpu, "sent": sum(s.sent for s in senders), "lost": lost,
            "sampled": sum(r.sampled for r in receivers)}


async def paced(s: LeanSender, count: int, interval: float) -> None:
    """``count`` sends, one every ``interval`` s on an absolute schedule (a late send
    does not push the next ones back)."""
    t0 = time.perf_counter()
    for k in range(count):
        delay = t0 + k * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        s.send_times.append(time.perf_counter())
        s.send_next(1)


async def bench_latency(url: str, pid: int, rate: float, seconds: float, probe_dir: Path,
                        blocks: int, trace: Path | None = None) -> dict:
    """Latency in ``blocks`` blocks, each followed by as many fdatasyncs at the same
    rate in the server's data directory (the disk's floor, measured under the same
    conditions and over as many samples)."""
    a = await online(url)
    b = await online(url)
    bob = b.device.username  # type: ignore[union-attr]
    s = await lean_sender(a, bob, [(bob, "d1")], track=True)
    r = await lean_receiver(b, s, track=True)
    conns = [s, r]
    await paced(s, 200, 1 / rate)  # warm-up
    await wait_all(conns, lambda: r.delivered == s.acked == s.sent, 10)
    tag = secrets.token_hex(3)
    s.retag(tag)
    r.retag(tag)
    count = int(rate * seconds)
    per_block = max(1, count // blocks)
    probe = FsyncProbe(probe_dir)
    w0 = written_bytes(pid)
    q0 = run_delay(pid), run_delay(os.getpid())
    cpu = Cpu(pid)
    cpu.start()
    try:
        for _ in range(blocks):
            await paced(s, per_block, 1 / rate)
            await wait_all(conns, lambda: r.delivered == s.acked == s.sent, 10)
            await asyncio.to_thread(probe.run, per_block, 1 / rate)
    finally:
        probe.close()
    w1 = written_bytes(pid)
    waits = run_delay(pid) - q0[0], run_delay(os.getpid()) - q0[1]
    cpu_text = cpu.stop(s.sent, exclude=probe.cpu)
    check(conns)
    deliver = sorted(r.arrivals[i] - t for i, t in enumerate(s.send_times) if i in r.arrivals)
    ack = sorted(s.ack_times[i] - t for i, t in enumerate(s.send_times) if i in s.ack_times)
    for c in conns:
        c.close()
    if trace is not None:
        # one line per message (send time, send→delivered, send→ack) and per probe
        # fdatasync (its start, its duration); times in Unix seconds, durations in ms
        wall = time.time() - time.perf_counter()
        with trace.open("w") as f:
            f.write("kind,unix_s,ms,ack_ms\n")
            for i, t in enumerate(s.send_times):
                d, a = r.arrivals.get(i), s.ack_times.get(i)
                f.write(f"msg,{wall + t:.6f},{'' if d is None else f'{1000 * (d - t):.3f}'},"
                        f"{'' if a is None else f'{1000 * (a - t):.3f}'}\n")
            for t, x in zip(probe.started, probe.times, strict=True):
                f.write(f"fdatasync,{wall + t:.6f},{1000 * x:.3f},\n")

    def pct(xs: list[float], p: float) -> float:
        return 1000 * xs[min(len(xs) - 1, int(p * len(xs)))]

    return {
        "n": s.sent, "delivered": len(deliver),
        "p50": pct(deliver, 0.50), "p99": pct(deliver, 0.99), "max": 1000 * deliver[-1],
        "ack_p50": pct(ack, 0.50), "ack_p99": pct(ack, 0.99),
        "mean": 1000 * statistics.fmean(deliver), "cpu": cpu_text,
        "disk": probe.summary(), "disk_p99": 1000 * probe.p99(), "waits": waits,
        "disk_q99": 1000 * probe.p99(queued=True),
        "written": (w1 - w0) / max(1, s.sent) if w0 >= 0 and w1 >= 0 else -1.0,
    }


async def bench_fanout(url: str, pid: int, devices: int, window: int, seconds: float,
                       coalesce: bool = False) -> dict:
    fan = Device.new()
    clients = [await online(url, fan)]
    for i in range(1, devices):
        clients.append(await online(url, fan.sibling(f"d{i + 1}"), add=True))
    targets = [(fan.username, f"d{i + 1}") for i in range(devices)]
    s = await lean_sender(await online(url), fan.username, targets, window, coalesce=coalesce)
    receivers = [await lean_receiver(c, s) for c in clients]
    conns = [s, *receivers]
    s.start_flood()
    await wait_all(conns, lambda: False, 1.5)
    rate, cpu = await measure(pid, seconds, lambda: sum(r.delivered for r in receivers))
    s.running = False
    await wait_all(conns, lambda: s.acked == s.sent and all(r.delivered == s.sent
                                                              for r in receivers), 30)
    lost = sum(s.sent - r.delivered for r in receivers)
    if lost or s.acked != s.sent:
        raise BenchError(f"30 s after the last send, {s.sent - s.acked} sends not acked and "
                         f"{lost} deliveries missing")
    for c in conns:
        c.close()
    return {"rate": rate, "cpu": cpu, "lost": lost, "sampled": sum(r.sampled for r in receivers)}


def run_delay(pid: int) -> float:
    """Seconds the threads of ``pid`` have spent runnable but waiting for a core
    (/proc/PID/task/*/schedstat, second field): CPU starvation, not disk waits."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def written_bytes(pid: int) -> int:
    """Bytes ``pid`` caused to be written to storage so far (/proc/PID/io; -1 if unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


class FsyncProbe:
    """The disk's own durability latency, the way the server's WAL meets it in steady
    state: ``PROBE_BYTES`` overwritten in a preallocated 4 MiB file (no size change, as
    when SQLite restarts its WAL after a checkpoint), then fdatasync. Paced on an absolute
    schedule; only the fdatasync is timed."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "fsync-probe"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.size = 4 << 20
        os.write(self.fd, b"\0" * self.size)
        os.fsync(self.fd)
        self.offset = 0
        self.cpu = 0.0  # CPU seconds of the probe (not the clients')
        self.times: list[float] = []
        self.started: list[float] = []
        # completion - scheduled start: a sample due while an earlier one was stuck
        # counts the wait, as a message queued behind a stalled commit does
        self.queued: list[float] = []

    def run(self, count: int, interval: float) -> None:
        block = secrets.token_bytes(PROBE_BYTES)
        t0 = time.perf_counter()
        for k in range(count):
            due = t0 + k * interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            c = time.thread_time()
            os.pwrite(self.fd, block, self.offset)
            self.offset = (self.offset + PROBE_BYTES) % (self.size - PROBE_BYTES)
            t = time.perf_counter()
            os.fdatasync(self.fd)
            end = time.perf_counter()
            self.times.append(end - t)
            self.started.append(t)
            self.queued.append(end - due)
            self.cpu += time.thread_time() - c

    def p99(self, queued: bool = False) -> float:
        xs = sorted(self.queued if queued else self.times)
        return xs[min(len(xs) - 1, int(0.99 * len(xs)))]

    def summary(self) -> str:
        xs = sorted(self.times)
        n = len(xs)
        return (f"fdatasync of {PROBE_BYTES // 1024} KiB (overwrite) in the server's data "
                f"directory, interleaved: p50 {1000 * xs[n // 2]:.2f} ms, p99 "
                f"{1000 * self.p99():.2f} ms, max {1000 * xs[-1]:.2f} ms ({n} samples); "
                f"counting the wait behind a slow one (done - due): p99 "
                f"{1000 * self.p99(queued=True):.2f} ms")

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


def fsync_floor(directory: Path, n: int = 300) -> str:
    """The disk's own durability latency: 16 KiB write + fdatasync, paced like 200 msgs/s."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"\0" * 16384)
            t = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
            time.sleep(0.004)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return (f"disk: fdatasync of 16 KiB p50 {1000 * times[n // 2]:.2f} ms, "
            f"p99 {1000 * times[int(n * 0.99)]:.2f} ms, max {1000 * times[-1]:.2f} ms "
            f"(the floor under any durable ack)")


def commit_stats(metrics: str) -> str:
    vals = {}
    for name in ("sottovoce_commit_batch_jobs_sum", "sottovoce_commit_batch_jobs_count",
                 "sottovoce_commit_seconds_sum"):
        m = re.search(rf"^{name} ([0-9.e+]+)$", metrics, re.M)
        vals[name] = float(m.group(1)) if m else 0.0
    n = vals["sottovoce_commit_batch_jobs_count"] or 1
    return (f"{int(n)} commits, {vals['sottovoce_commit_batch_jobs_sum'] / n:.1f} jobs/commit, "
            f"{1000 * vals['sottovoce_commit_seconds_sum'] / n:.2f} ms/commit (writer thread)")


async def run(args: argparse.Namespace) -> None:
    """Each phase gets a fresh server and data directory, so that one phase's
    backlog (WAL checkpoints, inbox rows) cannot bleed into the next."""
    base = Path(tempfile.mkdtemp(prefix="sv-relay-bench-"))
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {_cpu_model()}; "
          f"Python {platform.python_version()}; Linux {platform.release()}; "
          f"load average {os.getloadavg()[0]:.2f} before the run")
    print(f"server: python -m sottovoce server, data under {base} ({_fs(base)}), WAL + "
          f"synchronous=FULL, uvloop; bench clients: this process (uvloop), 127.0.0.1")
    print(fsync_floor(base), flush=True)
    backends = [b for b in args.backends if b == "sqlite" or args.database]
    if "postgres" in args.backends and not args.database:
        print("postgres: skipped (give --database postgresql://...)")
    try:
        for phase in ("1to1", "latency", "fanout"):
            if phase in args.only:
                for backend in backends:
                    if backend == "sqlite":
                        await _phase(phase, base / phase, args)
                    else:
                        await _pg_phase(phase, base / f"{phase}-pg", args)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


async def _pg_phase(phase: str, data: Path, args: argparse.Namespace) -> None:
    import asyncpg

    schema = f"sv_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.database)
    try:
        version = await admin.fetchval("SHOW server_version")
        fsync = await admin.fetchval("SHOW synchronous_commit")
        await admin.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in args.database else "?"
        dsn = f"{args.database}{sep}search_path={schema}"
        print(f"[postgres {version}, synchronous_commit={fsync}, schema {schema}]", flush=True)
        await _phase(phase, data, args, database=dsn)
    finally:
        if not args.keep:
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def _phase(phase: str, data: Path, args: argparse.Namespace,
                 database: str | None = None) -> None:
    prof = data.parent / f"{data.name}.prof" if args.profile else None
    extra = list(args.server_arg or [])
    if database is not None:
        extra += ["--database", database]
    else:
        print("[sqlite]", flush=True)
    srv = BenchServer(data, profile=prof, extra=extra)
    srv.start()
    assert srv.proc is not None
    pid = srv.proc.pid
    print(f"    server pid {pid}", flush=True)
    try:
        if phase == "1to1":
            r = await bench_one_to_one(srv.ws_url, pid, args.pairs, args.window, args.seconds,
                                       args.coalesce_writes)
            writes = "a burst per write" if args.coalesce_writes else "one write per frame"
            print(f"1:1 throughput: {r['rate']:,.0f} msgs/s delivered (durable; {args.pairs} "
                  f"pairs, window {args.window}, {writes}, {args.seconds:.0f}s)\n    {r['cpu']}\n"
                  f"    checked: {r['sent']:,} sends acked in order, every frame delivered in "
                  f"order ({r['lost']} missing), {r['sampled']} frames parsed whole")
        elif phase == "latency":
            r = await bench_latency(srv.ws_url, pid, 200, args.latency_seconds, data,
                                    args.latency_blocks, args.latency_trace)
            target = 2 * r["disk_p99"] + 1
            print(f"latency @200 msgs/s: send→delivered p50 {r['p50']:.2f} ms, p99 "
                  f"{r['p99']:.2f} ms, max {r['max']:.2f} ms; send→ack p50 {r['ack_p50']:.2f} "
                  f"ms, p99 {r['ack_p99']:.2f} ms ({r['delivered']}/{r['n']} msgs, "
                  f"{args.latency_blocks} blocks)\n    {r['cpu']}\n    disk: {r['disk']}\n"
                  f"    p99 against 2 × disk p99 + 1 ms = {target:.2f} ms: "
                  f"{'met' if r['p99'] <= target else 'missed'} (ratio "
                  f"{r['p99'] / target:.2f}; against 2 × the queued disk p99 + 1 ms: "
                  f"{r['p99'] / (2 * r['disk_q99'] + 1):.2f}); server wrote "
                  f"{r['written'] / 1024:.1f} KiB per message\n"
                  f"    run-queue waits (runnable, no free core): server threads "
                  f"{1000 * r['waits'][0]:.0f} ms, bench process {1000 * r['waits'][1]:.0f} ms "
                  f"over the phase")
        else:
            r = await bench_fanout(srv.ws_url, pid, args.fanout, args.fanout_window,
                                   args.seconds, args.coalesce_writes)
            print(f"fan-out to {args.fanout} devices: {r['rate']:,.0f} deliveries/s "
                  f"({r['rate'] / args.fanout:,.0f} sends/s, window {args.fanout_window})\n"
                  f"    {r['cpu']}\n    checked: every device got every send in order "
                  f"({r['lost']} missing), {r['sampled']} frames parsed whole")
        print("    storage:", commit_stats(srv.metrics()), flush=True)
    finally:
        srv.stop(timeout=30)
    if prof is not None and prof.exists():
        print(f"\n{phase}: server event-loop profile (cProfile, top {args.profile_top} by own "
              "time):")
        pstats.Stats(str(prof)).sort_stats("tottime").print_stats(args.profile_top)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _fs(path: Path) -> str:
    best, fs = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, fs = parts[1], parts[2]
    except OSError:
        pass
    return fs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--latency-blocks", type=int, default=10,
                   help="latency sends in this many blocks, each followed by as many "
                        "fdatasyncs of the disk probe at the same rate")
    p.add_argument("--fanout", type=int, default=50)
    p.add_argument("--fanout-window", type=int, default=32)
    p.add_argument("--only", nargs="+", default=["1to1", "latency", "fanout"],
                   choices=["1to1", "latency", "fanout"])
    p.add_argument("--coalesce-writes", action="store_true",
                   help="senders write each burst of frames in one call (as the XMPP load "
                        "client does) instead of one call per frame (as before)")
    p.add_argument("--latency-trace", type=Path, metavar="CSV",
                   help="write every latency message's send time and latencies, and every "
                        "probe fdatasync, to this file")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-top", type=int, default=30)
    p.add_argument("--server-arg", action="append", help="extra server flag (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep the server's data directory")
    p.add_argument("--database", metavar="URL",
                   help="also run every phase on PostgreSQL (postgresql://...; a fresh schema "
                        "per phase)")
    p.add_argument("--backends", nargs="+", default=["sqlite", "postgres"],
                   choices=["sqlite", "postgres"], help="which storages to measure")
    args = p.parse_args()
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(run(args))
        else:
            uvloop.run(run(args))
    except BenchError as exc:  # the server answered what a correct relay would not
        raise SystemExit(f"relay.py: {exc}") from None


if __name__ == "__main__":
    main()
