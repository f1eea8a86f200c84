"""Ephemeral chats: messages/s and one-way latency on loopback, per path, beside the
durable 1:1 path measured in the same run (docs/protocol.md §Ephemeral chats).

    python bench/ephemeral.py [--messages 2000] [--samples 300]

Two accounts (alice, bob) on a real ``sottovoce server`` started by the bench on
127.0.0.1 (SQLite, WAL + synchronous=FULL), both clients in this process; a coturn
on 127.0.0.1 for the TURN path. For each path:

* **messages/s**: alice sends ``--messages`` texts of 100 characters one after
  the other (each ``send`` awaited: on the data channel that is a queued SCTP
  write, on the server paths the server's ack); the clock runs from the first
  send to bob's event for the last one.
* **latency**: ``--samples`` texts, each sent only after bob got the one before;
  per text the time from alice's ``send`` call to bob's event for it (one
  monotonic clock, one process). p50 and p99.

Paths: ``durable`` is ``client.send_text`` (Olm, stored, group commit and fsync on
the server: the baseline); ``server relay`` is an ephemeral chat whose frames go
through the server's ephemeral path (stored nowhere); ``P2P`` and ``TURN`` are an
ephemeral chat on the WebRTC data channel, 127.0.0.1 host candidates or
relay-only through coturn. ``group of 3`` is an ephemeral group chat of a room
(alice, bob, carol; client/ephemeral_group.py) over the server relay and over P2P
data channels: alice's texts fan out to both others, and a text counts as arrived
when both have it (messages/s counts texts alice sent, not copies delivered).
Ratios are against ``durable`` in the same run; compare the group rows with the
1:1 rows of the same path for the fan-out's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.integration

from tests.integration.calls_helpers import Coturn
from tests.integration.serverproc import ServerProcess

from sottovoce.client import Client, EventStream, MessageReceived
from sottovoce.client.calls import IceConfig
from sottovoce.client.calls.datachannel import DataPipe, pipe_maker
from sottovoce.client.ephemeral import Chat
from sottovoce.client.events import (
    EphemeralChatMessage,
    EphemeralChatRequested,
    EphemeralGroupMessage,
)
from sottovoce.client.store import TEST_KDF

PASSPHRASE = "bench passphrase"
TEXT = "x" * 92


async def _arrivals(stream: EventStream, n: int, kind: type) -> float:
    got = 0
    while got < n:
        if isinstance(await stream.next(60), kind):
            got += 1
    return time.perf_counter()


async def _all_arrive(streams: list[EventStream], n: int, kind: type) -> float:
    """When the last of ``streams`` has had ``n`` events of ``kind``."""
    return max(await asyncio.gather(*(_arrivals(s, n, kind) for s in streams)))


async def _measure(send: Callable[[str], Awaitable[object]], stream: EventStream | list[
                   EventStream], kind: type, messages: int, samples: int
                   ) -> tuple[float, float, float]:
    """(messages/s, p50 ms, p99 ms) of one path (all of ``stream`` must get each text)."""
    streams = stream if isinstance(stream, list) else [stream]
    waiter = asyncio.ensure_future(_all_arrive(streams, messages, kind))
    t0 = time.perf_counter()
    for i in range(messages):
        await send(f"{TEXT}{i:08d}")
    rate = messages / (await waiter - t0)
    latencies = []
    for i in range(samples):
        waiter = asyncio.ensure_future(_all_arrive(streams, 1, kind))
        start = time.perf_counter()
        await send(f"{TEXT}{i:08d}")
        latencies.append((await waiter - start) * 1000)
    q = statistics.quantiles(latencies, n=100)
    return rate, statistics.median(latencies), q[98]


async def _chat(alice: Client, bob: Client, ice: IceConfig | None) -> tuple[Chat, Chat]:
    for c in (alice, bob):
        if ice is None:
            c.ephemeral.pipe_maker = None
        else:
            async def config(ice: IceConfig = ice) -> IceConfig:
                return ice

            c.ephemeral.pipe_maker = pipe_maker(c.ephemeral, config)
    events = bob.events()
    asking = asyncio.ensure_future(alice.ephemeral.open("bob"))
    while not isinstance(await events.next(30), EphemeralChatRequested):
        pass
    events.close()
    b_chat = await bob.ephemeral.open("alice")
    a_chat = await asking
    if ice is not None:
        for _ in range(400):
            if all(isinstance(c.pipe, DataPipe) and c.pipe.is_open for c in (a_chat, b_chat)):
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the data channel did not open")
    return a_chat, b_chat


async def _groups(srv: ServerProcess, root: Path, alice: Client, bob: Client,
                  args: argparse.Namespace) -> list[tuple[str, tuple[float, float, float], str]]:
    """The group rows: a room of three, its ephemeral group chat on two paths."""
    carol = await Client.create_account(srv.url, "carol", root / "carol", PASSPHRASE,
                                        kdf=TEST_KDF)
    room = await alice.rooms.create_room("bench")
    for i, other in enumerate((bob, carol), 1):
        await alice.rooms.invite("bench", other.username)
        await other.rooms.wait_epoch(room.room_id, i)
    await bob.rooms.wait_epoch(room.room_id, 2)
    rows = []
    for name, ice in (("ephemeral group of 3, server relay", None),
                      ("ephemeral group of 3, data channel P2P", IceConfig(loopback=True))):
        for c in (alice, bob, carol):
            if ice is None:
                c.ephemeral.pipe_maker = None
            else:
                async def config(ice: IceConfig = ice) -> IceConfig:
                    return ice

                c.ephemeral.pipe_maker = pipe_maker(c.ephemeral, config)
        group = await alice.ephemeral.groups.open(room.room_id)
        others = [await c.ephemeral.groups.open(room.room_id, patience=10) for c in (bob, carol)]
        for _ in range(600):
            links = [link for g in (group, *others) for link in g.links.values()]
            ready = all(len(g.members()) == 2 for g in (group, *others)) and (
                ice is None or all(isinstance(x.pipe, DataPipe) and x.pipe.is_open
                                   for x in links))
            if ready:
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the group chat did not form")
        streams = [bob.events(), carol.events()]
        figures = await _measure(lambda t, g=group: alice.ephemeral.groups.send(g, t), streams,
                                 EphemeralGroupMessage, args.messages, args.samples)
        rows.append((name, figures, "host" if ice else ""))
        print(f"  measured: {name}", file=sys.stderr, flush=True)
        for s in streams:
            s.close()
        for c, g in zip((alice, bob, carol), (group, *others), strict=True):
            await c.ephemeral.groups.leave(g)
        await asyncio.sleep(0.3)
    await carol.close()
    return rows


async def run(args: argparse.Namespace) -> None:
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        srv = ServerProcess(root / "server").start()
        turn = Coturn(root / "turn").start()
        try:
            alice = await Client.create_account(srv.url, "alice", root / "alice", PASSPHRASE,
                                                kdf=TEST_KDF)
            bob = await Client.create_account(srv.url, "bob", root / "bob", PASSPHRASE,
                                              kdf=TEST_KDF)
            rows: list[tuple[str, tuple[float, float, float], str]] = []
            stream = bob.events()
            await alice.send_text("bob", "warm-up")
            await _arrivals(stream, 1, MessageReceived)
            rows.append(("durable 1:1 (Olm, stored)", await _measure(
                lambda t: alice.send_text("bob", t), stream, MessageReceived,
                args.messages, args.samples), ""))
            paths = (
                ("ephemeral, server relay", None),
                ("ephemeral, data channel P2P", IceConfig(loopback=True)),
                ("ephemeral, data channel TURN only",
                 IceConfig(turn=(turn.server(),), relay_only=True)),
            )
            for name, ice in paths:
                a_chat, _ = await _chat(alice, bob, ice)
                stream.close()
                stream = bob.events()
                figures = await _measure(lambda t, c=a_chat: alice.ephemeral.send(c, t), stream,
                                         EphemeralChatMessage, args.messages, args.samples)
                path = a_chat.pipe.path() if isinstance(a_chat.pipe, DataPipe) else ""
                assert a_chat.frames_via_pipe >= (args.messages if ice else 0)
                rows.append((name, figures, path))
                print(f"  measured: {name}", file=sys.stderr, flush=True)
                await alice.ephemeral.leave(a_chat)
                await asyncio.sleep(0.3)
            rows += await _groups(srv, root, alice, bob, args)
            await alice.close()
            await bob.close()
        finally:
            turn.stop()
            srv.stop()
    base = rows[0][1][0]
    print(f"{'path':36} {'msgs/s':>9} {'x durable':>9} {'p50 ms':>8} {'p99 ms':>8}  candidate")
    for name, (rate, p50, p99), path in rows:
        print(f"{name:36} {rate:9.0f} {rate / base:9.2f} {p50:8.2f} {p99:8.2f}  {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="texts per throughput run")
    parser.add_argument("--samples", type=int, default=300, help="texts per latency run")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} before; {args.messages} texts per rate, "
          f"{args.samples} per latency")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
