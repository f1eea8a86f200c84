"""XMPP load client for the side-by-side benchmark (Prosody, ejabberd), loopback only.

A thin asyncio client speaking raw XMPP over TCP (no TLS, SASL PLAIN, resource
binding, XEP-0077 in-band registration, XEP-0045 rooms). It parses only what it
needs, so that the client costs less CPU than the server it measures.

    python bench/peers/xmpp_load.py --port 15222 register --users 52
    python bench/peers/xmpp_load.py --port 15222 run --server-pid PID --label prosody-plain/r1

``run`` prints one JSON line per test:

* ``throughput`` — u0 sends ``--n`` chat messages to u1, at most ``--window`` not yet
  received by u1; figure: messages received per second.
* ``latency`` — u0 sends to u1 at ``--rate`` messages/s for ``--seconds``; one-way
  send→received p50/p99 (both ends in this process, one monotonic clock).
* ``fanout`` — ``--members`` users join one room; one of them sends ``--fanout-n``
  groupchat messages, never more than ``--fanout-window`` ahead of the slowest member;
  figure: deliveries per second summed over members (the sender's reflection counts).

Every wait is bounded; the server's CPU seconds (from /proc/PID/stat) and this
client's own (``client_cpu_s``, process_time over the test) are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from bench.peers.stats import percentile

DOMAIN = "localhost"
MUC = "conference.localhost"
PASSWORD = "bench-pass"
_BODY = re.compile(rb"<body>(\d+):(\d+):")
_CLK = os.sysconf("SC_CLK_TCK")
PHASE_LIMIT = 120.0  # no measured phase may run longer


def server_cpu(pid: int) -> float | None:
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK


def stream_header(domain: str = DOMAIN) -> bytes:
    return (f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()


def chat(to: str, seq: int, size: int, kind: str = "chat") -> str:
    """One message stanza whose body starts with "seq:send_ns:" and is padded to ``size``."""
    head = f"{seq}:{time.monotonic_ns()}:"
    body = head + "x" * max(0, size - len(head))
    return f"<message to='{to}' type='{kind}' id='b{seq}'><body>{body}</body></message>"


def count_bodies(data: bytes) -> tuple[int, list[int]]:
    """Number of bench bodies in ``data`` and their send timestamps (ns)."""
    stamps = [int(m.group(2)) for m in _BODY.finditer(data)]
    return len(stamps), stamps


def check_loopback(host: str) -> None:
    if not (host.startswith("127.") or host == "::1"):
        raise SystemExit(f"xmpp_load: {host} is not a loopback address")


class Conn:
    def __init__(self, host: str, port: int, user: str, resource: str = "b") -> None:
        self.host, self.port, self.user, self.resource = host, port, user, resource
        self.buf = b""
        self.received = 0
        self.stamps: list[int] = []
        self.lat_ns: list[int] = []
        self.record = False
        self.event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _until(self, token: bytes, limit: float = 20.0) -> bytes:
        end = time.monotonic() + limit
        while token not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.user}: no {token!r} (have {self.buf[-200:]!r})")
            chunk = await asyncio.wait_for(self.reader.read(65536), left)
            if not chunk:
                raise ConnectionError(f"{self.user}: server closed ({self.buf[-200:]!r})")
            self.buf += chunk
        i = self.buf.index(token) + len(token)
        head, self.buf = self.buf[:i], self.buf[i:]
        return head

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), 10)
        self.writer.write(stream_header())
        await self._until(b"</stream:features>")

    async def register(self) -> bool:
        await self.open()
        self.writer.write(
            f"<iq type='set' id='reg1'><query xmlns='jabber:iq:register'><username>{self.user}"
            f"</username><password>{PASSWORD}</password></query></iq>".encode())
        reply = await self._until(b"reg1")
        tail = await self._until(b">")
        reply += tail + (b"" if tail.endswith(b"/>") else await self._until(b"</iq>"))
        self.writer.close()
        return b"type='result'" in reply or b'type="result"' in reply or b"conflict" in reply

    async def login(self) -> None:
        await self.open()
        cred = base64.b64encode(f"\0{self.user}\0{PASSWORD}".encode()).decode()
        self.writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
                          f"mechanism='PLAIN'>{cred}</auth>".encode())
        head = await self._until(b"success")
        if b"failure" in head:
            raise RuntimeError(f"{self.user}: SASL PLAIN refused")
        await self._until(b">")
        self.writer.write(stream_header())
        await self._until(b"</stream:features>")
        self.writer.write(f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:"
                          f"xmpp-bind'><resource>{self.resource}</resource></bind></iq>".encode())
        await self._until(b"</iq>")
        self.writer.write(b"<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:"
                          b"xmpp-session'/></iq><presence/>")
        self.writer.write(f"<iq type='get' id='ready-{self.user}' to='{DOMAIN}'>"
                          "<ping xmlns='urn:xmpp:ping'/></iq>".encode())
        await self._until(f"ready-{self.user}".encode())
        await self._until(b">")
        self.buf = b""
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        pending = b""
        while True:
            chunk = await self.reader.read(262144)
            if not chunk:
                return
            pending += chunk
            j = pending.rfind(b"</message>")
            if j < 0:
                continue
            done, pending = pending[: j + 10], pending[j + 10:]
            now = time.monotonic_ns()
            n, stamps = count_bodies(done)
            if self.record:
                self.lat_ns.extend(now - s for s in stamps)
            if n:
                self.received += n
                self.event.set()

    def reset(self, record: bool) -> None:
        self.received, self.lat_ns, self.record = 0, [], record

    async def wait_for(self, target: int, deadline: float) -> bool:
        while self.received < target:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.event.clear()
            if self.received >= target:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), min(left, 1.0))
        return True

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
        try:
            self.writer.write(b"</stream:stream>")
            self.writer.close()
        except (OSError, AttributeError):
            pass


def result(test: str, target: int, got: int, elapsed: float, lat_ns: list[int],
           cpu: tuple[float | None, float | None], **extra: Any) -> dict[str, Any]:
    ms = sorted(x / 1e6 for x in lat_ns)
    out: dict[str, Any] = {
        "test": test, "target": target, "delivered": got, "elapsed_s": round(elapsed, 3),
        "per_s": round(got / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": round(percentile(ms, 50), 3) if ms else None,
        "p99_ms": round(percentile(ms, 99), 3) if ms else None,
        "server_cpu_s": (round(cpu[1] - cpu[0], 2)
                         if cpu[0] is not None and cpu[1] is not None else None),
    }
    out.update(extra)
    return out


async def _flood(sender: Conn, to: str, n: int, window: int, size: int, kind: str,
                 lowest: Callable[[], int], slowest: Callable[[], Conn]) -> None:
    sent, deadline = 0, time.monotonic() + PHASE_LIMIT
    while sent < n and time.monotonic() < deadline:
        room = window - (sent - lowest())
        if room <= 0:
            c = slowest()
            c.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.event.wait(), 1.0)
            continue
        k = min(room, n - sent, 64)
        sender.writer.write("".join(chat(to, sent + i, size, kind) for i in range(k)).encode())
        sent += k
        await sender.writer.drain()


async def throughput(a: Conn, b: Conn, args: argparse.Namespace, n: int) -> dict[str, Any]:
    b.reset(record=False)
    pid = args.server_pid
    cpu0, t0, own0 = server_cpu(pid), time.monotonic(), time.process_time()
    await _flood(a, f"{b.user}@{DOMAIN}", n, args.window, args.size, "chat",
                 lambda: b.received, lambda: b)
    await b.wait_for(n, t0 + PHASE_LIMIT)
    t1 = time.monotonic()
    return result("throughput", n, b.received, t1 - t0, [], (cpu0, server_cpu(pid)),
                  window=args.window, size=args.size,
                  client_cpu_s=round(time.process_time() - own0, 3))


async def latency(a: Conn, b: Conn, args: argparse.Namespace) -> dict[str, Any]:
    b.reset(record=True)
    n, to = int(args.rate * args.seconds), f"{b.user}@{DOMAIN}"
    cpu0, t0, own0 = server_cpu(args.server_pid), time.monotonic(), time.process_time()
    for i in range(n):
        delay = t0 + i / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        a.writer.write(chat(to, i, args.size).encode())
    await b.wait_for(n, time.monotonic() + 30)
    t1 = time.monotonic()
    return result("latency", n, b.received, t1 - t0, b.lat_ns, (cpu0, server_cpu(args.server_pid)),
                  rate=args.rate, size=args.size,
                  client_cpu_s=round(time.process_time() - own0, 3))


async def fanout(args: argparse.Namespace) -> dict[str, Any]:
    room = f"bench{secrets.token_hex(4)}@{MUC}"
    members = [Conn(args.host, args.port, f"u{i + 2}", "f") for i in range(args.members)]
    await asyncio.gather(*(c.login() for c in members))
    try:
        for i, c in enumerate(members):
            c.writer.write(f"<presence to='{room}/n{i}'><x xmlns='http://jabber.org/protocol/muc'>"
                           "<history maxstanzas='0'/></x></presence>".encode())
            if i == 0:  # the first member creates the room; accept the default configuration
                await asyncio.sleep(0.3)
                c.writer.write(f"<iq type='set' to='{room}' id='cfg1'><query xmlns='http://"
                               "jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' "
                               "type='submit'/></query></iq>".encode())
                await asyncio.sleep(0.3)
        await asyncio.sleep(1.0)
        for c in members:
            c.reset(record=False)
        owner = members[0]
        owner.writer.write(chat(room, 0, args.size, "groupchat").encode())
        warm = [await c.wait_for(1, time.monotonic() + 15) for c in members]
        if not all(warm):
            return {"test": "fanout", "error": f"warm-up reached {sum(warm)}/{len(members)}"}
        for c in members:
            c.reset(record=False)
        k = args.fanout_n
        cpu0, t0, own0 = server_cpu(args.server_pid), time.monotonic(), time.process_time()
        await _flood(owner, room, k, args.fanout_window, args.size, "groupchat",
                     lambda: min(c.received for c in members),
                     lambda: min(members, key=lambda c: c.received))
        for c in members:
            await c.wait_for(k, t0 + PHASE_LIMIT)
        t1 = time.monotonic()
        got = sum(c.received for c in members)
        return result("fanout", k * len(members), got, t1 - t0, [],
                      (cpu0, server_cpu(args.server_pid)), members=len(members), size=args.size,
                      window=args.fanout_window,
                      client_cpu_s=round(time.process_time() - own0, 3))
    finally:
        for c in members:
            await c.close()


async def register(args: argparse.Namespace) -> int:
    bad = 0
    for i in range(args.users):
        if not await Conn(args.host, args.port, f"u{i}").register():
            bad += 1
    print(json.dumps({"registered": args.users - bad, "of": args.users}), flush=True)
    return 1 if bad else 0


async def run(args: argparse.Namespace) -> int:
    a = Conn(args.host, args.port, "u0", "s")
    b = Conn(args.host, args.port, "u1", "r")
    await a.login()
    await b.login()
    out: list[dict[str, Any]] = []
    tests = args.tests.split(",")
    await throughput(a, b, args, 200)  # warm-up
    if "throughput" in tests:
        out.append(await throughput(a, b, args, args.n))
    if "latency" in tests:
        out.append(await latency(a, b, args))
    await a.close()
    await b.close()
    if "fanout" in tests:
        out.append(await fanout(args))
    for r in out:
        r["label"] = args.label
        print(json.dumps(r), flush=True)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=15222)
    sub = p.add_subparsers(dest="cmd", required=True)
    reg = sub.add_parser("register", help="in-band register u0..u{N-1}")
    reg.add_argument("--users", type=int, default=52)
    r = sub.add_parser("run", help="throughput, latency and room fan-out")
    r.add_argument("--tests", default="throughput,latency,fanout")
    r.add_argument("--n", type=int, default=30000)
    r.add_argument("--window", type=int, default=1000)
    r.add_argument("--size", type=int, default=200)
    r.add_argument("--rate", type=float, default=200.0)
    r.add_argument("--seconds", type=float, default=10.0)
    r.add_argument("--members", type=int, default=50)
    r.add_argument("--fanout-n", type=int, default=2000)
    r.add_argument("--fanout-window", type=int, default=256)
    r.add_argument("--server-pid", type=int, default=0)
    r.add_argument("--label", default="")
    args = p.parse_args()
    check_loopback(args.host)
    coro = register(args) if args.cmd == "register" else run(args)
    try:
        import uvloop
        runner: Callable[..., int] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        code = runner(asyncio.wait_for(coro, 600))
    except (OSError, TimeoutError, RuntimeError) as exc:
        print(json.dumps({"error": str(exc)[:300], "label": getattr(args, "label", "")}))
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
