"""CPU time of the SQLite writer's group commit per 1:1 send, without the event loop.

    python bench/writer_batch.py [--rounds 5] [--batches 100] [--batch 64] [--src OTHER/src]
        [--keys counter|random] [--prefill N]

Each round builds ``--batches`` batches of ``--batch`` one-target sends (200-byte
ciphertext, as bench/relay.py sends) between two accounts, then hands each batch to
the writer's own ``_run_batch`` (BEGIN IMMEDIATE, the rows, the counters, COMMIT
with its fsync: WAL, ``synchronous=FULL``) on this thread, with the writer thread
idle. Inbox quotas are set out of reach, as in bench/relay.py. Printed: user and
system CPU time of this thread per send (``getrusage(RUSAGE_THREAD)``), median and
fastest round, so that other processes on a busy machine weigh on it less than on
wall time. ``--src`` measures another checkout's code with this script (an A/B:
run it alternately). Building each round's requests is outside the timed part.

``--keys``: the sends' idempotency keys (and message ids), numbered as bench/relay.py
numbers them (``counter``: consecutive sends land in the same leaves of the ``sends``
indexes) or random as the client makes them (``random``: 22 url-safe characters, 128
bits, so each send lands in its own leaf of a large index). ``--prefill N`` stores N
sends of that kind first (untimed), as a server holds its retention window's sends.
Also printed: the bytes this thread wrote per send (``wchar`` of /proc/thread-self/io,
the WAL's pages above all).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import resource
import secrets
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

CT = base64.b64encode(secrets.token_bytes(200)).decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--keys", choices=("counter", "random"), default="counter")
    ap.add_argument("--prefill", type=int, default=0, help="sends stored before the rounds")
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    args = ap.parse_args()
    sys.path.insert(0, str(args.src.resolve()))
    from sottovoce.protocol.events import dm_conversation_id
    from sottovoce.server.logs import JsonLogger
    from sottovoce.server.storage import sqlite as engine
    from sottovoce.server.storage.base import SendRequest
    from sottovoce.server.storage.quota import InboxLimits

    far = 10**12
    limits = InboxLimits(device_messages=far, device_bytes=far, contact_messages=far,
                         contact_bytes=far, stranger_messages=far, stranger_bytes=far)

    with tempfile.TemporaryDirectory(prefix="sv-writer-bench-") as tmp:
        path = Path(tmp) / "db.sqlite3"
        st = engine.SqliteStorage(path, logger=JsonLogger(io.StringIO()), limits=limits)

        async def setup() -> None:
            await st.open()
            for user in ("u-alice", "u-bob"):
                await st.create_account(user, b"k" * 32, "d1", b"c" * 64, 1)

        loop = asyncio.new_event_loop()
        loop.run_until_complete(setup())
        st._loop = None  # outcomes stay here: nothing is resolved on a loop
        conv = dm_conversation_id("u-alice", "u-bob")
        conn = engine._connect(path, 512)
        n = 0
        user_us: list[float] = []
        sys_us: list[float] = []
        wrote: list[float] = []

        def key(prefix: str, i: int) -> str:
            return f"{prefix}{i}-b" if args.keys == "counter" else secrets.token_urlsafe(16)

        if args.prefill:
            (dev,), = conn.execute("SELECT dev FROM devices WHERE user_id='u-alice'")
            # In the order they come (random keys leave the index's leaves part full, as a
            # server's index is), with a cache that holds the whole transaction.
            keys = [key("p", i) for i in range(args.prefill)]
            (cache,), = conn.execute("PRAGMA cache_size")
            conn.execute("PRAGMA cache_size=-262144")
            conn.execute("BEGIN")  # the connection is in autocommit mode
            conn.executemany(
                "INSERT INTO sends(sender_dev, idem_key, conversation_id, message_id, "
                "server_seq, received_at) VALUES (?, ?, ?, ?, 0, 0)",
                ((dev, k, conv, k) for k in keys))
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute(f"PRAGMA cache_size={int(cache)}")

        def done(result: Any, error: BaseException | None) -> None:
            pass

        for _ in range(args.rounds):
            batches = []
            for _ in range(args.batches):
                jobs = []
                for _ in range(args.batch):
                    n += 1
                    req = SendRequest("u-alice", "d1", conv, key("m", n), key("k", n), "u-bob",
                                      "text", 1765000000000, (("u-bob", "d1", CT),))
                    jobs.append(engine._Job(st._w_append, (req,), done))
                batches.append(jobs)
            w0 = _written()
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            for jobs in batches:
                for _, _, error in st._run_batch(conn, jobs):
                    if error is not None:
                        raise SystemExit(f"a send failed: {error!r}")
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            sends = args.batches * args.batch
            wrote.append((_written() - w0) / sends)
            user_us.append(1e6 * (r1.ru_utime - r0.ru_utime) / sends)
            sys_us.append(1e6 * (r1.ru_stime - r0.ru_stime) / sends)
        conn.close()
        loop.run_until_complete(st.close())
        loop.close()
    print(f"src: {args.src}")
    print(f"writer CPU per send: user median {statistics.median(user_us):.2f} µs "
          f"(fastest round {min(user_us):.2f}), system median {statistics.median(sys_us):.2f} µs "
          f"({args.rounds} rounds of {args.batches} batches of {args.batch} sends; "
          "getrusage of this thread)")
    print(f"written per send: median {statistics.median(wrote):,.0f} bytes "
          f"(keys: {args.keys}, {args.prefill:,} sends stored before)")


def _written() -> int:
    """Bytes this thread has written (write calls, to the WAL above all)."""
    with open("/proc/thread-self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


if __name__ == "__main__":
    main()
