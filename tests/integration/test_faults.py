"""Faults under load: kill -9 a node, restart NATS, cut PostgreSQL (docs/deploy.md).

Set-up per test (PostgreSQL): three ``sottovoce server`` processes on one
throw-away PostgreSQL schema, a *private* ``nats-server`` on a free port (so
restarting it disturbs nobody else), and a small TCP load balancer in front
(round robin, skipping nodes that refuse connections) so that SDK clients,
which know one URL, land on different nodes and move to another when theirs
dies. On SQLite (the embedded default) there is one node, alone on its data
directory: the kill is followed by a restart on the same directory and port.

The contract checked on every receiver's encrypted store afterwards:
every message the sender's outbox saw acknowledged arrived exactly once, in
serverSeq order, and the outbox is empty (nothing left unacknowledged).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sottovoce.client import Client, MessageSent
from sottovoce.client.rooms import RoomManager
from tests.integration.client_helpers import make_account
from tests.integration.pgschema import _run, create_schema, drop_schema, unreachable
from tests.integration.serverproc import ServerProcess, free_port, shared_kt_args

NATS_BIN = shutil.which("nats-server") or "/usr/sbin/nats-server"
PAIRS = 3  # sender/receiver pairs, spread over the three nodes
BURST = 240  # messages per sender
CHUNK = 20  # sends issued at once by one sender


class PrivateNats:
    """A nats-server of our own on a free port (restartable without harming others)."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.log = root / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [NATS_BIN, "-a", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ):
                return
            time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Balancer:
    """TCP proxy to the node with the fewest open connections (ties taken in turn), as a
    least-connections balancer does; a backend that refuses the connection is skipped.
    Short connections (a registration's proof of work is sent on a second one) come and
    go, so the clients' long-lived connections still spread over every node."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.next = 0
        self.open = [0] * len(ports)
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.tasks):
            t.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n, turn = len(self.ports), self.next
        self.next += 1
        for i in sorted(range(n), key=lambda i: (self.open[i], (i - turn) % n)):
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.ports[i])
            except OSError:
                continue
            self.open[i] += 1
            for src, dst in ((reader, up_w), (up_r, writer)):
                task = asyncio.get_running_loop().create_task(_pipe(src, dst))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            task.add_done_callback(lambda _, i=i: self._closed(i))  # the node's side ended
            return
        writer.close()

    def _closed(self, i: int) -> None:
        self.open[i] -= 1


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            dst.close()


@dataclass
class Setup:
    root: Path
    nats: PrivateNats | None
    nodes: list[ServerProcess]
    lb: Balancer
    app_name: str
    senders: list[Client] = field(default_factory=list)
    receivers: list[Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.lb.url


def _skip_reason() -> str | None:
    if not Path(NATS_BIN).exists():
        return f"nats-server binary not found ({NATS_BIN})"
    return unreachable()


@pytest.fixture
async def setup(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Setup]:
    """Three nodes on PostgreSQL + NATS, or (``indirect`` param "sqlite") one on SQLite."""
    # These tests are about 1:1 delivery: skip the MLS KeyPackage upload at enrolment
    # (it costs time and needs room storage, which is not the subject here).
    async def no_key_packages(self: RoomManager) -> None:
        return None

    monkeypatch.setattr(RoomManager, "ensure_key_packages", no_key_packages)
    if getattr(request, "param", "postgres") == "sqlite":
        node = ServerProcess(tmp_path / "node0")
        lite = Setup(tmp_path, None, [node], Balancer([node.port]), "")
        try:
            await asyncio.to_thread(node.start)
            await _enrol(lite)
            yield lite
        finally:
            await _teardown(lite)
        return
    reason = await asyncio.to_thread(_skip_reason)
    if reason is not None:
        pytest.skip(reason)
    nats = PrivateNats(tmp_path)
    await asyncio.to_thread(nats.start)
    schema, dsn = await asyncio.to_thread(create_schema, "sv_ft")
    # Names our PostgreSQL sessions so the PostgreSQL fault cuts only them.
    app_name = f"svfault{secrets.token_hex(4)}"
    dsn += f"&application_name={app_name}"
    nodes = [
        ServerProcess(tmp_path / f"node{i}", extra_args=[
            "--database", dsn, "--nats", nats.url, "--node-id", f"node{i}",
            *shared_kt_args(tmp_path / "kt", tmp_path / f"node{i}"),
        ])
        for i in range(3)
    ]
    lb = Balancer([n.port for n in nodes])
    s = Setup(tmp_path, nats, nodes, lb, app_name)
    try:
        await asyncio.to_thread(nodes[0].start)
        await asyncio.gather(*(asyncio.to_thread(n.start) for n in nodes[1:]))
        await _enrol(s)
        yield s
    finally:
        await _teardown(s)
        await asyncio.to_thread(drop_schema, schema)


async def _enrol(s: Setup) -> None:
    """Start the balancer and make the sender/receiver accounts through it."""
    await s.lb.start()
    for i in range(PAIRS):
        for group, name in ((s.senders, f"sender{i}"), (s.receivers, f"receiver{i}")):
            client = await make_account(_Url(s.lb.url), name, s.root)  # type: ignore[arg-type]
            client.configure_reconnect(base_s=0.05, cap_s=0.5)
            group.append(client)


async def _teardown(s: Setup) -> None:
    for c in s.senders + s.receivers:
        with contextlib.suppress(Exception):
            await c.close()
    await s.lb.close()
    for n in s.nodes:
        await asyncio.to_thread(n.stop)
    if s.nats is not None:
        await asyncio.to_thread(s.nats.stop)


@dataclass
class _Url:
    url: str


async def run_load(
    s: Setup, fault_at: int, fault: Callable[[], Awaitable[None]]
) -> tuple[list[list[str]], list[set[str]]]:
    """Every sender sends BURST messages to its receiver; ``fault`` runs after
    ``fault_at`` of them. Returns the ids sent and those acknowledged, per sender."""
    streams = [c.events() for c in s.senders]
    sent: list[list[str]] = [[] for _ in s.senders]

    async def one(i: int) -> None:
        sender, peer = s.senders[i], s.receivers[i].username
        for start in range(0, BURST, CHUNK):
            if i == 0 and start == fault_at:
                await fault()
            sent[i] += await asyncio.gather(
                *(sender.send_text(peer, f"{i}:{n}") for n in range(start, start + CHUNK))
            )
            await asyncio.sleep(0.01)  # a steady load, not one burst

    await asyncio.gather(*(one(i) for i in range(len(s.senders))))
    deadline = time.monotonic() + 60
    while any(c.pending_sends() for c in s.senders) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [c.pending_sends() for c in s.senders] == [0] * len(s.senders)
    acked = [{e.message_id for e in st.pending() if isinstance(e, MessageSent)} for st in streams]
    return sent, acked


async def check_delivered(s: Setup, sent: list[list[str]], acked: list[set[str]]) -> None:
    """Each receiver holds every acknowledged message once, in serverSeq order."""
    for i, receiver in enumerate(s.receivers):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = receiver.history(s.senders[i].username, limit=BURST * 2)
            if len(got) >= len(acked[i]):
                break
            await asyncio.sleep(0.1)
        got = receiver.history(s.senders[i].username, limit=BURST * 2)
        ids = [m.message_id for m in got]
        assert len(ids) == len(set(ids)), "a message was delivered twice"
        assert acked[i] <= set(ids), f"lost {len(acked[i] - set(ids))} acknowledged messages"
        assert set(ids) <= set(sent[i])
        assert acked[i] == set(sent[i])  # the outbox got everything acknowledged in the end
        seqs = [m.server_seq or 0 for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@pytest.mark.parametrize("setup", ["postgres", "sqlite"], indirect=True)
async def test_kill_9_one_node_under_load(setup: Setup) -> None:
    """PostgreSQL: a node of three dies and stays dead; its clients move to the others.
    SQLite: the only node dies mid-burst and is restarted on the same data directory;
    what it acknowledged before the kill survived it (the WAL was fsynced first)."""
    s = setup
    alone = len(s.nodes) == 1
    victim = s.nodes[-1 if alone else 1]
    on_victim = victim.health()["connections"]
    assert on_victim > 0, "the balancer should have put clients on every node"

    async def kill() -> None:
        await asyncio.to_thread(victim.kill)
        if alone:
            await asyncio.sleep(0.3)  # sends fail and wait in the outboxes meanwhile
            await asyncio.to_thread(victim.start)  # same port, same data directory

    sent, acked = await run_load(s, BURST // 3, kill)
    assert victim.running == alone
    await check_delivered(s, sent, acked)
    # The victim's clients now live on the survivors (or on the restarted node).
    assert sum(n.health()["connections"] for n in s.nodes if n.running) == 2 * PAIRS


async def test_nats_restart_under_load(setup: Setup) -> None:
    s = setup

    async def restart_nats() -> None:
        await asyncio.to_thread(s.nats.stop)
        await asyncio.sleep(0.5)  # sends go on; frames to other nodes are lost meanwhile
        await asyncio.to_thread(s.nats.start)

    sent, acked = await run_load(s, BURST // 3, restart_nats)
    await check_delivered(s, sent, acked)
    health = [n.health() for n in s.nodes]
    assert all(h["nats"] == "connected" and h["natsReconnects"] >= 1 for h in health)


async def test_postgres_connections_cut_under_load(setup: Setup) -> None:
    s = setup
    cut: list[int] = []

    async def terminate() -> None:
        # Only this test's sessions: the database is shared with other tests.
        sql = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE application_name = '{s.app_name}'"
        )
        await asyncio.to_thread(_run, sql)
        cut.append(1)

    sent, acked = await run_load(s, BURST // 3, terminate)
    assert cut
    await check_delivered(s, sent, acked)
    errors = sum(
        _metric(n.metrics(), 'sottovoce_errors_total{code="unavailable"}') for n in s.nodes
    )
    print(f"\n{errors:.0f} sends answered 'unavailable' (retryable) while PostgreSQL was cut")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
