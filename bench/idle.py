"""Idle connections: memory per authenticated WebSocket on one server node.

    python bench/idle.py [--connections 10000] [--database postgresql://…]

How it is measured:

1. A fresh ``sottovoce server`` subprocess (embedded SQLite unless ``--database``),
   its per-IP limits raised so that one bench process may open every connection.
2. Every account is registered first over short-lived connections, which are
   then closed; the directory cache and the database hold the accounts from then
   on, so what follows measures connections, not accounts.
3. The server's resident memory (``VmRSS`` in ``/proc/PID/status``) is read after
   it settles: the baseline.
4. ``--connections`` devices authenticate (challenge signed by the device key) and
   resume, then stay idle; ``/healthz`` must report them all connected.
5. RSS is read again after a settle time; (after − baseline) / connections is the
   figure. The server's CPU time over ``--idle-seconds`` of idleness (keepalive
   pings included) is printed too.

The clients run in this process (uvloop), so the bench needs a file-descriptor
limit above the connection count (``ulimit -n``). The target is
10,000 idle connections at ≤ 30 KiB each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conformance.rawclient import Device, RawClient
from tests.integration.serverproc import ServerProcess


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def gather_bounded(coros: list, limit: int) -> list:  # type: ignore[type-arg]
    sem = asyncio.Semaphore(limit)

    async def one(c):  # type: ignore[no-untyped-def]
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def register(url: str, device: Device) -> None:
    client = await RawClient.open(url)
    reply = await client.register(device)
    if reply["event"] != "sottovoce.registered":
        raise RuntimeError(f"register failed: {reply}")
    await client.close()


async def connect_idle(url: str, device: Device) -> RawClient:
    client = await RawClient.open(url, ping_interval=None)
    reply = await client.auth(device)
    if reply["event"] != "ksmpv3.connected":
        raise RuntimeError(f"auth failed: {reply}")
    await client.resume(0)
    return client


async def settle(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def run(args: argparse.Namespace) -> None:
    n = args.connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    tmp = Path(tempfile.mkdtemp(prefix="sv-idle-"))
    extra = [
        "--ip-rate", "1000000", "--ip-burst", "1000000",
        "--max-preauth-per-ip", "100000",  # every connection logs in from 127.0.0.1
        "--max-connections", str(n + 1000), "--log-level", "warning",
    ]
    if args.database:
        extra += ["--database", args.database]
    server = ServerProcess(tmp / "server", extra_args=extra).start()
    assert server.proc is not None
    pid = server.proc.pid
    url = server.ws_url
    try:
        devices = [Device.new() for _ in range(n)]
        t0 = time.perf_counter()
        await gather_bounded([register(url, d) for d in devices], 64)
        reg_s = time.perf_counter() - t0
        await settle(args.settle)
        base = rss_kib(pid)
        t0 = time.perf_counter()
        clients = await gather_bounded([connect_idle(url, d) for d in devices], 64)
        conn_s = time.perf_counter() - t0
        connected = server.health()["connections"]
        await settle(args.settle)
        after = rss_kib(pid)
        c0 = cpu_s(pid)
        await asyncio.sleep(args.idle_seconds)
        idle_cpu = cpu_s(pid) - c0
        after2 = rss_kib(pid)
        per = (after - base) / n
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}, {stamp}")
        print(f"storage: {'PostgreSQL' if args.database else 'SQLite'}")
        print(f"registered {n} accounts in {reg_s:.1f} s; authenticated + resumed {n} "
              f"connections in {conn_s:.1f} s ({n / conn_s:,.0f}/s); /healthz connections: "
              f"{connected}")
        print(f"server RSS: {base / 1024:.1f} MiB before, {after / 1024:.1f} MiB with {n} idle "
              f"connections ({after2 / 1024:.1f} MiB {args.idle_seconds:.0f} s later)")
        print(f"memory per idle authenticated connection: {per:.1f} KiB (target ≤ 30 KiB)")
        print(f"server CPU while idle: {idle_cpu / args.idle_seconds * 100:.1f}% of one core")
        await gather_bounded([c.close() for c in clients], 256)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before reading RSS")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--database", help="postgresql://… (default: embedded SQLite)")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
