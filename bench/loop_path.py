"""The event loop's share of one 1:1 send, without sockets or a database: the frames
bench/relay.py sends (one 200-byte ciphertext) go through the relay's own code from
the read to the writes — the transport's frame parser, the session, the dispatch,
the send view, delivery, then, once a fake storage "commits" a batch (one loop
callback per batch, as the SQLite writer's ``call_soon_threadsafe``), the ack to the
sender and the inbox frame to the recipient, framed and handed to a fake transport.

    python bench/loop_path.py [--frames 20000] [--batch 256] [--per-read 32] [--src OTHER/src]
    python bench/loop_path.py --driver-only   # this script's own share, to subtract

The collector runs with the settings of ``sottovoce server`` (start-up objects frozen,
a young generation of 50,000), so that its collections are the server's. The fake
storage builds each outcome as the writer does (envelope text, stored
frames): that work and building the masked frames are this script's own, constant
from one checkout to another; ``--driver-only`` does just that work for the same
sends. The figure is CPU time of this process (``time.process_time``), not wall
time; for a figure that does not depend on the machine's load, count instructions:
``valgrind --tool=callgrind python bench/loop_path.py --frames N`` for two values of
N, and divide the difference by the difference of N.

``--src`` measures another checkout's code with this script (run it alternately from
one shell, each with that checkout's own Python).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class FakeTransport(asyncio.Transport):
    """Counts what the relay writes; its buffer is always empty (a fast reader)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.bytes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def writelines(self, data: Any) -> None:
        self.writes += 1
        self.bytes += sum(len(d) for d in data)

    def write(self, data: Any) -> None:
        self.writes += 1
        self.bytes += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class FakeStorage:
    """Queues appends; ``commit`` resolves them as the writer's batch does."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Any]] = []
        self.seq: dict[str, int] = {}
        self.inbox: dict[tuple[str, str], int] = {}

    def append(self, req: Any, callback: Any) -> None:
        self.pending.append((req, callback))

    def commit(self) -> list[tuple[Any, Any, None]]:
        from sottovoce.server.storage.base import StoredFrame

        jobs, self.pending = self.pending, []
        now = time.time_ns() // 1_000_000
        out = []
        for req, callback in jobs:
            seq = self.seq[req.conversation_id] = self.seq.get(req.conversation_id, 0) + 1
            frames = []
            for user, device, ct in req.targets:
                g = self.inbox[(user, device)] = self.inbox.get((user, device), 0) + 1
                frames.append(StoredFrame(user, device, g, req.envelope(ct, seq, now)))
            out.append((callback, req.stored(seq, now, tuple(frames)), None))
        return out


def resolve(results: list[tuple[Any, Any, None]]) -> None:
    for done, outcome, error in results:
        done(outcome, error)


async def run(args: argparse.Namespace) -> float:
    from bench._ksmp_load import mask_frame, send_parts  # after --src: it imports sottovoce

    from sottovoce.protocol.events import dm_conversation_id
    from sottovoce.server.app import ServerApp
    from sottovoce.server.config import ServerConfig
    from sottovoce.server.logs import JsonLogger
    from sottovoce.server.storage.base import AccountRecord, DeviceRecord, SendRequest
    from sottovoce.server.transport import Connection, TransportConfig

    loop = asyncio.get_running_loop()
    # The collector's settings of `sottovoce server` (src/sottovoce/cli/server_cmd.py):
    # start-up objects frozen, the young generation collected every 50,000 allocations.
    # Under Python's defaults this script would count collections the server never runs.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    cfg = ServerConfig(port=0, data_dir=Path(tempfile.mkdtemp(prefix="sv-loop-")),
                       device_rate=1e9, device_burst=10**9)
    app = ServerApp(cfg, logger=JsonLogger(open(os.devnull, "a")))  # noqa: SIM115
    storage = FakeStorage()
    app.delivery.storage = storage  # type: ignore[assignment]

    class Server:  # what a Connection reads of its LeanServer
        config = TransportConfig(max_size=1 << 20, write_limit=1 << 30, ping_interval=3600,
                                 ping_timeout=3600, server_header="bench")
        connections: ClassVar[set[Connection]] = set()

    conns, transports = [], []
    for user in ("alice", "bob"):
        # The directory's cache holds both accounts, as after their first sends.
        app.directory._accounts[user] = AccountRecord(
            user, b"k", (DeviceRecord("d1", b"c", False, None),))
        conn = Connection(Server())  # type: ignore[arg-type]
        t = FakeTransport()
        conn.connection_made(t)
        if conn._timer is not None:
            conn._timer.cancel()
        conn.open = True
        session = app._connected(conn)
        conn._peer = session
        session.user, session.device = user, "d1"
        app._end_preauth(session)
        if session.timer is not None:
            session.timer.cancel()
        app.presence.online[(user, "d1")] = session
        session.live = session.resumed = True
        conns.append(conn)
        transports.append(t)
    conv = dm_conversation_id("alice", "bob")
    ct = base64.b64encode(random.randbytes(200)).decode()
    a, b, c, d = send_parts(conv, "bob", f'{{"userId":"bob","deviceId":"d1","ciphertext":"{ct}"}}',
                            "p0")
    now = str(time.time_ns() // 1_000_000).encode()
    n = args.frames
    frames = [mask_frame(a + str(i).encode() + b + str(i).encode() + c + now + d)
              for i in range(n)]
    t0 = time.process_time()
    if args.driver_only:
        for i in range(n):
            storage.append(SendRequest(
                sender_user="alice", sender_device="d1", conversation_id=conv,
                message_id=f"m{i}-p0", idempotency_key=f"k{i}-p0", recipient_user="bob",
                content_type="text", client_created_at_ms=1, targets=(("bob", "d1", ct),),
            ), lambda outcome, error: None)
            if len(storage.pending) >= args.batch or i == n - 1:
                loop.call_soon(resolve, storage.commit())
                await asyncio.sleep(0)
        return time.process_time() - t0
    sent = 0
    while sent < n:
        conns[0].data_received(b"".join(frames[sent:sent + args.per_read]))
        sent += args.per_read
        if len(storage.pending) >= args.batch or sent >= n:
            loop.call_soon(resolve, storage.commit())
        await asyncio.sleep(0)  # the loop turn: the batch's callback, then the flushes
    await asyncio.sleep(0)
    spent = time.process_time() - t0
    m = app.metrics
    if m.sends_stored != n or m.deliveries_live != n or m.errors:
        raise SystemExit(f"stored {m.sends_stored}, delivered {m.deliveries_live} of {n} "
                         f"sends; errors {m.errors}")
    print(f"written: {transports[0].bytes:,} bytes of acks in {transports[0].writes} writes, "
          f"{transports[1].bytes:,} bytes of inbox frames in {transports[1].writes} writes")
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=256, help="sends per fake commit")
    ap.add_argument("--per-read", type=int, default=32, help="frames per socket read")
    ap.add_argument("--driver-only", action="store_true",
                    help="only this script's own work for the same sends")
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    args = ap.parse_args()
    sys.path.insert(0, str(args.src.resolve()))
    import uvloop

    spent = uvloop.run(run(args))
    what = "this script's own work" if args.driver_only else "read to writes"
    import sottovoce.server.app

    print(f"src: {Path(sottovoce.server.app.__file__).parents[2]}")
    print(f"{what}: {1e6 * spent / max(1, args.frames):.2f} µs of CPU per send "
          f"({args.frames} sends, {args.batch} per commit, {args.per_read} per read)")


if __name__ == "__main__":
    main()
