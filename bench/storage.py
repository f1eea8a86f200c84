"""Storage ceiling: durable 1:1 appends straight into each adapter, no WebSocket in between.

    python bench/storage.py [--count 40000] [--window 1024] [--pairs 4]
                            [--database postgresql://postgres@127.0.0.1:5432/test]

Feeds ``Storage.append`` from one event loop (uvloop), keeping ``--window``
sends in flight, and reports appends per second, the group-commit batch size
and time per commit. SQLite runs in a temporary directory; PostgreSQL (when
``--database`` is given) in a fresh schema that is dropped afterwards. This is
the figure bench/relay.py's 1:1 throughput cannot exceed; the gap between the
two is the WebSocket, JSON and fan-out work of the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage.base import SendOutcome, SendRequest, Storage
from sottovoce.server.storage.sqlite import SqliteStorage

CT = base64.b64encode(secrets.token_bytes(200)).decode()


async def measure(st: Storage, count: int, window: int, pairs: int) -> str:
    await st.open()
    try:
        for p in range(pairs):
            await st.create_account(f"a{p}", b"a" * 32, "d1", b"cert", 0)
            await st.create_account(f"b{p}", b"b" * 32, "d1", b"cert", 0)
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(window)
        finished = loop.create_future()
        done = 0
        failed = 0

        def stored(outcome: SendOutcome | None, error: BaseException | None) -> None:
            nonlocal done, failed
            slots.release()
            done += 1
            failed += error is not None
            if done == count and not finished.done():
                finished.set_result(None)

        t0 = time.perf_counter()
        for i in range(count):
            await slots.acquire()
            p = i % pairs
            st.append(SendRequest(
                sender_user=f"a{p}", sender_device="d1", conversation_id=f"dm:a{p}:b{p}",
                message_id=f"m{i}", idempotency_key=f"k{i}", recipient_user=f"b{p}",
                content_type="text", client_created_at_ms=0, targets=[(f"b{p}", "d1", CT)],
            ), stored)
        await finished
        dt = time.perf_counter() - t0
        stats = getattr(st, "stats", None)
        batch = ""
        if stats is not None and stats.commits:
            batch = (f"; {stats.commits} commits, {stats.jobs / stats.commits:.0f} appends/commit, "
                     f"{1000 * stats.commit_seconds / stats.commits:.2f} ms/commit")
        return f"{count / dt:,.0f} appends/s ({failed} failed){batch}"
    finally:
        await st.close()


async def run(args: argparse.Namespace) -> None:
    log = JsonLogger(io.StringIO())
    with tempfile.TemporaryDirectory(prefix="sv-storage-bench-") as tmp:
        st = SqliteStorage(Path(tmp) / "db.sqlite3", logger=log)
        print("sqlite:    ", await measure(st, args.count, args.window, args.pairs), flush=True)
    if not args.database:
        return
    import asyncpg

    from sottovoce.server.storage.postgres import PostgresStorage

    schema = f"sv_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.database)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in args.database else "?"
        pg = PostgresStorage(f"{args.database}{sep}search_path={schema}", logger=log)
        print("postgresql:", await measure(pg, args.count, args.window, args.pairs), flush=True)
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=40_000)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--database", metavar="URL", help="also measure PostgreSQL (postgresql://…)")
    args = p.parse_args()
    try:
        import uvloop
        uvloop.run(run(args))
    except ImportError:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
