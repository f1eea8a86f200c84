"""Raw websockets ceiling for the side-by-side benchmark: what the Python stack the
relay is built on (websockets + uvloop) does with no protocol, storage or crypto.

    python bench/peers/ws_ceiling.py serve --port 18799 --max-seconds 200
    python bench/peers/ws_ceiling.py echo --conns 4 --window 256 --n 100000 --server-pid PID
    python bench/peers/ws_ceiling.py relay --members 50 --n 2000 --window 256 --server-pid PID

``/echo`` sends every frame back; ``/relay/G`` sends every frame to every member of
group G (the sender too: the room reflection). Frames are 200 bytes. The clients
are Python too, as the sottovoce bench clients are, so the client stack is the same.
One JSON line per load run, in the format of xmpp_load.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from bench.peers.xmpp_load import PHASE_LIMIT, result, server_cpu

FRAME = b"x" * 200


async def serve(port: int, max_seconds: float) -> None:
    from websockets.asyncio.server import ServerConnection
    from websockets.asyncio.server import serve as ws_serve

    groups: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        if path == "/echo":
            async for msg in ws:
                await ws.send(msg)
        elif path.startswith("/relay/"):
            g = groups.setdefault(path, set())
            g.add(ws)
            try:
                async for msg in ws:
                    for peer in list(g):
                        await peer.send(msg)
            finally:
                g.discard(ws)

    async with ws_serve(handler, "127.0.0.1", port, compression=None, max_size=1 << 20,
                        ping_interval=None):
        print(f"ready pid={os.getpid()}", flush=True)
        await asyncio.sleep(max_seconds)


async def echo(args: argparse.Namespace) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{args.port}/echo"
    per = args.n // args.conns

    async def one() -> int:
        async with connect(url, compression=None, max_size=1 << 20, ping_interval=None) as ws:
            sent = got = 0
            deadline = time.monotonic() + PHASE_LIMIT
            moved = asyncio.Event()

            async def reader() -> None:
                nonlocal got
                async for _ in ws:
                    got += 1
                    moved.set()
                    if got >= per:
                        return

            rt = asyncio.ensure_future(reader())
            while sent < per and time.monotonic() < deadline:
                if sent - got >= args.window:
                    moved.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(moved.wait(), 1.0)
                    continue
                await ws.send(FRAME)
                sent += 1
            await asyncio.wait_for(rt, max(1.0, deadline - time.monotonic()))
            return got

    cpu0, t0, own0 = server_cpu(args.server_pid), time.monotonic(), time.process_time()
    got = sum(await asyncio.gather(*(one() for _ in range(args.conns))))
    t1 = time.monotonic()
    return result("throughput", per * args.conns, got, t1 - t0, [],
                  (cpu0, server_cpu(args.server_pid)), conns=args.conns, window=args.window,
                  client_cpu_s=round(time.process_time() - own0, 3))


async def relay(args: argparse.Namespace) -> dict[str, Any]:
    from websockets.asyncio.client import ClientConnection, connect

    url = f"ws://127.0.0.1:{args.port}/relay/g{os.getpid()}"
    conns: list[ClientConnection] = [
        await connect(url, compression=None, max_size=1 << 20, ping_interval=None)
        for _ in range(args.members)]
    counts = [0] * args.members
    moved = asyncio.Event()

    async def reader(i: int) -> None:
        async for _ in conns[i]:
            counts[i] += 1
            moved.set()
            if counts[i] >= args.n:
                return

    try:
        tasks = [asyncio.ensure_future(reader(i)) for i in range(args.members)]
        cpu0, t0, own0 = server_cpu(args.server_pid), time.monotonic(), time.process_time()
        deadline = t0 + PHASE_LIMIT
        sent = 0
        while sent < args.n and time.monotonic() < deadline:
            if sent - min(counts) >= args.window:
                moved.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(moved.wait(), 1.0)
                continue
            await conns[0].send(FRAME)
            sent += 1
        await asyncio.wait_for(asyncio.gather(*tasks), max(1.0, deadline - time.monotonic()))
        t1 = time.monotonic()
    finally:
        for c in conns:
            await c.close()
    return result("fanout", args.n * args.members, sum(counts), t1 - t0, [],
                  (cpu0, server_cpu(args.server_pid)), members=args.members, window=args.window,
                  client_cpu_s=round(time.process_time() - own0, 3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["serve", "echo", "relay"])
    p.add_argument("--port", type=int, default=18799)
    p.add_argument("--max-seconds", type=float, default=300)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--members", type=int, default=50)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--server-pid", type=int, default=0)
    p.add_argument("--label", default="")
    args = p.parse_args()
    run: Callable[..., Any]
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    if args.mode == "serve":
        run(serve(args.port, args.max_seconds))
        return
    coro = echo(args) if args.mode == "echo" else relay(args)
    try:
        out = run(asyncio.wait_for(coro, 300))
    except (OSError, TimeoutError) as exc:
        out = {"error": str(exc)[:300]}
    out["label"] = args.label
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
