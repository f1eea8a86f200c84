"""Multi-node benchmark: 1, 2 and 3 server processes on one PostgreSQL and one NATS.

    python bench/multinode.py [--nodes 1,2,3] [--pairs 6] [--seconds 8] [--window 256] [--rounds 3]
        [--database postgresql://postgres@127.0.0.1:5432/test] [--nats nats://127.0.0.1:4222]

Methodology (same load generator as ``bench/relay.py``; payloads are 200 opaque
random bytes):

* every phase gets a fresh PostgreSQL schema (dropped after) and its own NATS
  subject namespace; the nodes are real ``sottovoce server`` processes on this
  machine, started with ``--database`` (and ``--nats`` when there is more than one);
* ``--pairs`` sender/recipient pairs of raw KSMP v3 clients; pair *i*'s sender
  connects to node ``i mod N`` and its recipient to node ``(i+1) mod N``, so
  with two or more nodes **every** frame crosses nodes through NATS;
* each sender keeps ``--window`` sends in flight (a send leaves the window at
  its ``ksmpv3.send.ack``, i.e. after the commit); recipients ``ack.read``
  every 256 frames;
* figure: inbox frames delivered to recipients per second over ``--seconds``
  after a 1.5 s warm-up, plus the CPU used by all server processes together,
  by the bench clients, and by everything else (PostgreSQL, NATS) meanwhile.

Each configuration runs ``--rounds`` times, interleaved (1, 1+NATS, 2, 3, 1, …),
and the median is printed: on a shared machine outside load then hits every
configuration alike. The one-node phase runs without ``--nats`` (a single node never needs it); the
figure for one node *with* NATS configured is printed too, to show what the
fan-out layer itself costs when nothing crosses nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.relay import (
    BenchServer,
    Receiver,
    Sender,
    _cpu_model,
    cpu_seconds,
    machine_busy_seconds,
    online,
)
from tests.integration import pgschema
from tests.integration.serverproc import shared_kt_args


async def phase(nodes_n: int, nats: bool, args: argparse.Namespace, root: Path) -> dict:
    pgschema.BASE_DSN = args.database
    schema, dsn = await asyncio.to_thread(pgschema.create_schema, "sv_bench")
    ns = f"bench{secrets.token_hex(4)}"
    servers = []
    for i in range(nodes_n):
        extra = ["--database", dsn, "--node-id", f"node{i}",
                 *shared_kt_args(root / f"{nodes_n}-{int(nats)}-kt",
                                 root / f"{nodes_n}-{int(nats)}-node{i}")]
        if nats:
            extra += ["--nats", args.nats, "--nats-namespace", ns]
        servers.append(BenchServer(root / f"{nodes_n}-{int(nats)}-node{i}", profile=None,
                                   extra=extra))
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.to_thread(servers[0].start)
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers[1:]))
        senders, receivers = [], []
        for i in range(args.pairs):
            a = await online(servers[i % nodes_n].ws_url)
            b = await online(servers[(i + 1) % nodes_n].ws_url)
            bob = b.device.username  # type: ignore[union-attr]
            s = Sender(a, bob, [(bob, "d1")], args.window)
            r = Receiver(b)
            senders.append(s)
            receivers.append(r)
            tasks += [asyncio.create_task(s.read_acks()), asyncio.create_task(r.run()),
                      asyncio.create_task(s.flood())]
        await asyncio.sleep(1.5)  # warm-up
        pids = [s.proc.pid for s in servers if s.proc is not None]

        def delivered() -> int:
            return sum(r.delivered for r in receivers)

        c0, t0 = delivered(), time.perf_counter()
        srv0 = sum(cpu_seconds(p) for p in pids)
        bench0, all0 = cpu_seconds(), machine_busy_seconds()
        await asyncio.sleep(args.seconds)
        dt = time.perf_counter() - t0
        count = delivered() - c0
        srv = 100 * (sum(cpu_seconds(p) for p in pids) - srv0) / dt
        bench = 100 * (cpu_seconds() - bench0) / dt
        other = max(0.0, 100 * (machine_busy_seconds() - all0) / dt - srv - bench)
        for s in senders:
            s.stop = True
            s._room.set()
        for c in [s.client for s in senders] + [r.client for r in receivers]:
            await c.ws.close()
        return {"rate": count / dt, "servers": srv, "bench": bench, "other": other}
    finally:
        for t in tasks:
            t.cancel()
        for s in servers:
            await asyncio.to_thread(s.stop)
        await asyncio.to_thread(pgschema.drop_schema, schema)


async def run(args: argparse.Namespace) -> None:
    print(f"multinode bench {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  "
          f"{platform.node()}: {_cpu_model()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"  PostgreSQL {pgschema.BASE_DSN.split('@')[-1]}, NATS {args.nats}; "
          f"{args.pairs} pairs, window {args.window}, {args.seconds:.0f} s per phase")
    counts = [int(x) for x in args.nodes.split(",")]
    plan = [(n, n > 1) for n in counts]
    if 1 in counts:
        plan.insert(counts.index(1) + 1, (1, True))
    results: dict[tuple[int, bool], list[float]] = {}
    print(f"  load average before: {os.getloadavg()[0]:.2f}; CPU in % of one core "
          f"({os.cpu_count()} cores = {100 * (os.cpu_count() or 1)}%)")
    with tempfile.TemporaryDirectory(prefix="sv-multinode-") as tmp:
        for rnd in range(args.rounds):
            # Rounds interleave the configurations so that outside load hits them alike.
            for n, nats in plan:
                r = await phase(n, nats, args, Path(tmp) / f"r{rnd}")
                results.setdefault((n, nats), []).append(r["rate"])
                label = f"{n} node{'s' if n > 1 else ''}" + (" + NATS" if nats else "")
                print(f"  round {rnd + 1}  {label:<15} {r['rate']:>8,.0f} msgs/s 1:1 durable   "
                      f"CPU: servers {r['servers']:.0f}%, bench clients {r['bench']:.0f}%, "
                      f"PostgreSQL/NATS/other {r['other']:.0f}%", flush=True)
    print(f"  load average after: {os.getloadavg()[0]:.2f}")
    print("  median over rounds:")
    base = statistics.median(results[(1, False)]) if (1, False) in results else None
    for (n, nats), rates in results.items():
        label = f"{n} node{'s' if n > 1 else ''}" + (" + NATS" if nats else "")
        med = statistics.median(rates)
        ratio = f"  ({med / base:.2f}x one node)" if base and n > 1 else ""
        print(f"    {label:<15} {med:>8,.0f} msgs/s{ratio}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="1,2,3")
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--database", default=pgschema.BASE_DSN)
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    args = p.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
