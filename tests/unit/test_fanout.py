"""NATS fan-out between two server apps in one process that share one storage.

The real NATS at 127.0.0.1:4222 carries the traffic (skipped when it is down);
the two apps stand for two nodes on one database. Real sockets, raw KSMP.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from sottovoce.identity import RevocationStatement
from sottovoce.server.app import ServerApp
from sottovoce.server.config import ServerConfig
from sottovoce.server.fanout import FanoutPorts, InProcessFanout
from sottovoce.server.fanout.nats import (
    MAX_REMOVED_DEVICES,
    NatsFanout,
    device_token,
    parse_removal,
)
from sottovoce.server.logs import JsonLogger
from sottovoce.server.metrics import Metrics
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.conformance.rawclient import Device, RawClient, b64, logged_in, now_ms, registered

NATS_URL = "nats://127.0.0.1:4222"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


needs_nats = pytest.mark.skipif(
    not _reachable("127.0.0.1", 4222), reason="NATS is not reachable at 127.0.0.1:4222"
)


def shared(storage: SqliteStorage) -> SqliteStorage:
    """One storage opened once for several apps (two nodes, one database)."""
    users = 0
    inner_open, inner_close = storage.open, storage.close

    async def open_() -> None:
        nonlocal users
        if users == 0:
            await inner_open()
        users += 1

    async def close_() -> None:
        nonlocal users
        users -= 1
        if users == 0:
            await inner_close()

    storage.open = open_  # type: ignore[method-assign]
    storage.close = close_  # type: ignore[method-assign]
    return storage


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[ServerApp]]:
    log = JsonLogger(open(tmp_path / "log", "a"), level="debug")  # noqa: SIM115
    storage = shared(SqliteStorage(tmp_path / "db.sqlite3", logger=log))
    apps = []
    namespace = f"t{uuid.uuid4().hex[:12]}"  # tests running at once must not hear each other
    for name in ("a", "b"):
        cfg = ServerConfig(port=0, data_dir=tmp_path / name, nats=NATS_URL, node_id=f"n{name}",
                           nats_namespace=namespace, expiry_interval_ms=3_600_000)
        app = ServerApp(cfg, storage=storage, logger=log)
        await app.start()
        apps.append(app)
    try:
        yield apps
    finally:
        for app in apps:
            await app.stop()


def ws(app: ServerApp) -> str:
    return app.url + "/v3/ws"


async def pair(a: ServerApp, b: ServerApp) -> tuple[RawClient, RawClient]:
    """Alice registered on ``a``, Bob on ``b``, both resumed."""
    alice = await registered(ws(a), Device.new())
    bob = await registered(ws(b), Device.new())
    await alice.resume()
    await bob.resume()
    return alice, bob


def targets(client: RawClient, *devices: Device) -> list[tuple[str, str, bytes]]:
    return [(d.username, d.device_id, uuid.uuid4().bytes) for d in devices]


async def wait_closed(client: RawClient, timeout: float = 5.0) -> tuple[int | None, list[str]]:
    """The close code the server sent, and the frames that came before it."""
    frames: list[str] = []
    try:
        while True:
            frames.append(str(await asyncio.wait_for(client.ws.recv(), timeout)))
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd is not None else None), frames


def test_subject_tokens_hide_ids() -> None:
    tok = device_token("alice", "d1")
    assert len(tok) == 32 and int(tok, 16) >= 0
    assert "alice" not in tok and tok != device_token("alice", "d2")
    assert tok != device_token("alice", "d1", b"another deployment")
    # (user, device) pairs that concatenate alike stay apart.
    assert device_token("ab", "c") != device_token("a", "bc")


@pytest.mark.parametrize("data", [
    b"",
    b"not json",
    b"[]",
    b'{"room": "r", "devices": []}',
    b'{"room": "r", "devices": [["u"]]}',
    b'{"room": "r", "devices": [["u", 7]]}',
    b'{"room": "bad room", "devices": [["u", "d"]]}',
    b'{"room": "r", "devices": [["u", "d\\n"]]}',
    b'{"devices": [["u", "d"]]}',
    ('{"room": "r", "devices": [' + ",".join(['["u", "d"]'] * (MAX_REMOVED_DEVICES + 1))
     + "]}").encode(),
    b"\xff\xfe",
])
def test_a_removal_from_nats_is_checked_before_it_kicks_anything(data: bytes) -> None:
    assert parse_removal(data) is None


def test_a_removal_from_nats_names_the_room_and_devices() -> None:
    data = b'{"room": "room:00", "devices": [["alice", "d1"], ["bob", "d2"]]}'
    assert parse_removal(data) == ("room:00", [("alice", "d1"), ("bob", "d2")])


def test_single_node_uses_the_in_process_fanout(tmp_path: Path) -> None:
    app = ServerApp(ServerConfig(port=0, data_dir=tmp_path))
    assert isinstance(app.fanout, InProcessFanout) and not app.fanout.remote


@needs_nats
async def test_frame_crosses_nodes_in_order(nodes: list[ServerApp]) -> None:
    a, b = nodes
    alice, bob = await pair(a, b)
    assert alice.device and bob.device
    seqs = []
    for _ in range(20):
        ack = await alice.send_message(bob.device.username, targets(alice, bob.device))
        assert ack["event"] == "ksmpv3.send.ack", ack
        seqs.append(ack["data"]["serverSeq"])
    got = [await bob.wait_for("ksmpv3.inbox.frame") for _ in range(20)]
    assert [f["data"]["envelope"]["serverSeq"] for f in got] == seqs
    inbox = [f["data"]["globalInboxSeq"] for f in got]
    assert inbox == sorted(inbox) and len(set(inbox)) == 20
    await bob.nothing(0.2)


@needs_nats
async def test_ephemeral_crosses_nodes_and_offline_is_refused(nodes: list[ServerApp]) -> None:
    a, b = nodes
    alice, bob = await pair(a, b)
    assert alice.device and bob.device
    ack = await alice.send_message(bob.device.username, targets(alice, bob.device),
                                   ephemeral=True)
    assert ack["event"] == "ksmpv3.send.ack", ack
    f = await bob.wait_for("ksmpv3.inbox.frame")
    assert f["data"]["globalInboxSeq"] == 0 and f["data"]["envelope"]["ephemeral"] is True
    await bob.close()
    # Node b unsubscribes when it has seen the close (no event crosses nodes for this):
    # until then a send still finds bob's subscription.
    async def refused() -> dict[str, Any]:
        while True:
            reply = await alice.send_message(bob.device.username, targets(alice, bob.device),
                                             ephemeral=True)
            if reply["event"] == "ksmpv3.error":
                return reply
            await asyncio.sleep(0.02)
    reply = await asyncio.wait_for(refused(), 10)
    assert reply["data"]["code"] == "recipient_offline"


@needs_nats
async def test_device_added_on_one_node_is_seen_by_the_other(nodes: list[ServerApp]) -> None:
    a, b = nodes
    alice, bob = await pair(a, b)
    assert alice.device and bob.device
    # Node a caches bob's one device through a send.
    ack = await alice.send_message(bob.device.username, targets(alice, bob.device))
    assert ack["event"] == "ksmpv3.send.ack"
    bob2 = await RawClient.open(ws(b))
    d2 = bob.device.sibling("d2")
    assert (await bob2.add_device(d2))["event"] == "sottovoce.registered"
    # Node a must now demand the second device (its cache was invalidated via NATS).
    async def demanded() -> dict[str, Any]:
        while True:
            reply = await alice.send_message(bob.device.username, targets(alice, bob.device))
            if reply["event"] == "ksmpv3.error":
                return reply
            await asyncio.sleep(0.02)
    reply = await asyncio.wait_for(demanded(), 5)
    assert reply["data"]["code"] == "device_mismatch"
    assert reply["data"]["details"]["missing"] == [{"userId": d2.username, "deviceId": "d2"}]
    ack = await alice.send_message(bob.device.username, targets(alice, bob.device, d2))
    assert ack["event"] == "ksmpv3.send.ack"


@needs_nats
async def test_revocation_closes_the_socket_on_the_other_node(nodes: list[ServerApp]) -> None:
    a, b = nodes
    alice = Device.new()
    a1 = await registered(ws(a), alice)
    a2 = await RawClient.open(ws(b))
    assert (await a2.add_device(alice.sibling("d2")))["event"] == "sottovoce.registered"
    await a2.resume()
    stmt = RevocationStatement.issue(alice.account_key, username=alice.username,
                                     device_id="d2", now_ms=now_ms())
    reply = await a1.request("sottovoce.device.revoke", {"revocation": b64(stmt.encode())})
    assert reply["event"] == "sottovoce.device.revoked"
    code, frames = await wait_closed(a2)
    assert code == 4001
    assert any('"sottovoce.device.revoked"' in f for f in frames)


@needs_nats
async def test_newer_connection_on_another_node_replaces_the_older(
    nodes: list[ServerApp],
) -> None:
    a, b = nodes
    dev = Device.new()
    first = await registered(ws(a), dev)
    await first.resume()
    second = await logged_in(ws(b), dev)
    await second.resume()
    assert (await wait_closed(first))[0] == 4000
    await second.request("ping", {})  # the newer one stays


@needs_nats
async def test_frames_missed_while_nats_was_away_are_caught_up(nodes: list[ServerApp]) -> None:
    a, b = nodes
    alice, bob = await pair(a, b)
    assert alice.device and bob.device
    fan_b = b.fanout
    assert isinstance(fan_b, NatsFanout) and fan_b.nc is not None
    reconnects = fan_b.reconnects
    # nats-py awaits the disconnected callback before it reconnects; holding it there keeps
    # node b away from NATS while Alice sends. Without the hold a local reconnect takes a
    # few milliseconds, so on a loaded machine it can finish before the send.
    nc = fan_b.nc
    on_disconnected = nc._disconnected_cb
    away, back = asyncio.Event(), asyncio.Event()

    async def held() -> None:
        assert on_disconnected is not None
        await on_disconnected()
        away.set()
        await back.wait()

    nc._disconnected_cb = held
    nc._transport.close()  # type: ignore[union-attr]  # cut node b's connection
    await asyncio.wait_for(away.wait(), 10)
    assert not fan_b.connected
    ack = await alice.send_message(bob.device.username, targets(alice, bob.device))
    assert ack["event"] == "ksmpv3.send.ack"
    back.set()
    f = await bob.wait_for("ksmpv3.inbox.frame", timeout=10)
    assert f["data"]["envelope"]["messageId"] == ack["data"]["messageId"]
    assert fan_b.reconnects == reconnects + 1
    await bob.nothing(0.3)  # once, not twice


async def test_healthz_names_the_node(tmp_path: Path) -> None:
    cfg = ServerConfig(port=0, data_dir=tmp_path, node_id="node-7")
    app = ServerApp(cfg, logger=JsonLogger(open(tmp_path / "log", "a")))  # noqa: SIM115
    await app.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        body = await reader.read(65536)
        writer.close()
    finally:
        await app.stop()
    assert b'"node": "node-7"' in body


class _FakeSession:
    def __init__(self, last_sent: int) -> None:
        self.user, self.device = "u", "d"
        self.last_sent = last_sent
        self.closed = False
        self.written: list[str] = []

    def write(self, text: str) -> None:
        self.written.append(text)


def _fake_ports(tmp_path: Path) -> tuple[FanoutPorts, list[object]]:
    """What a NatsFanout is given, with a catch-up that only records its session."""
    caught_up: list[object] = []
    log = JsonLogger(open(tmp_path / "log", "a"))  # noqa: SIM115
    ports = FanoutPorts(online={}, catch_up=caught_up.append, invalidate=lambda user: None,
                        metrics=Metrics(), log=log)
    return ports, caught_up


async def test_frames_from_two_nodes_are_put_back_in_inbox_order(tmp_path: Path) -> None:
    ports, caught_up = _fake_ports(tmp_path)
    fan = NatsFanout(ports, NATS_URL, node_id="n")
    s = _FakeSession(last_sent=10)
    fan.deliver_live(s, 12, "f12")  # type: ignore[arg-type]  # node b's publish overtook node a's
    fan.deliver_live(s, 13, "f13")  # type: ignore[arg-type]
    assert s.written == []
    fan.deliver_live(s, 11, "f11")  # type: ignore[arg-type]
    assert s.written == ["f11", "f12", "f13"] and s.last_sent == 13
    fan.deliver_live(s, 14, "f14")  # type: ignore[arg-type]
    assert s.written[-1] == "f14" and not caught_up


async def test_a_gap_that_does_not_fill_is_read_from_storage(tmp_path: Path) -> None:
    ports, caught_up = _fake_ports(tmp_path)
    fan = NatsFanout(ports, NATS_URL, node_id="n")
    s = _FakeSession(last_sent=1)
    fan.deliver_live(s, 3, "f3")  # type: ignore[arg-type]  # frame 2 was lost (NATS away)
    await asyncio.sleep(0.2)
    assert caught_up == [s] and s.written == []
    assert fan.gaps == 1


@needs_nats
async def test_room_frames_cross_nodes_in_order(nodes: list[ServerApp]) -> None:
    from tests.conformance.test_rooms import (
        commit_data,
        member,
        new_room_id,
        room_frame,
        send_data,
    )

    a, b = nodes
    clients = [await registered(ws(n)) for n in (a, b, a, b)]
    for c in clients:
        await c.resume()
    room = new_room_id()
    created = await clients[0].request("sottovoce.room.create", {"roomId": room,
                                                                 "groupInfo": None})
    assert created["event"] == "sottovoce.room.created", created
    reply = await clients[0].request("sottovoce.room.commit", commit_data(
        room, 0, adds=[member(c) for c in clients[1:]], welcome=b64(b"welcome"),
    ))
    assert reply["event"] == "sottovoce.room.committed", reply
    await room_frame(clients[0], "commit")
    for c in clients[1:]:  # the Welcome is a stored inbox frame: it crosses nodes too
        f = await c.wait_for("ksmpv3.inbox.frame")
        assert f["data"]["envelope"]["roomKind"] == "welcome"
    # Members on both nodes send at once: every member sees every message once, in order.
    per = 15

    async def burst(c: RawClient) -> list[dict[str, Any]]:
        rids = {await c.send("sottovoce.room.send", send_data(room, 1, b"x"))
                for _ in range(per)}
        out = []
        while len(out) < per:
            f = await c._read(10)
            (out if f.get("requestId") in rids else c._backlog).append(f)
        return out

    acks = await asyncio.gather(*(burst(c) for c in clients))
    seqs = sorted(r["data"]["serverSeq"] for rs in acks for r in rs)
    assert len(set(seqs)) == per * len(clients)
    for c in clients:
        got = [(await room_frame(c, "message"))["serverSeq"] for _ in range(len(seqs))]
        assert got == seqs


def test_every_log_line_names_its_node_when_several_nodes_share_a_log() -> None:
    import io
    import json

    from sottovoce.server.logs import JsonLogger

    stream = io.StringIO()
    log = JsonLogger(stream)
    log.info("a.event", userId="alice")
    log.node = "node-b"
    log.info("b.event", userId="alice")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "node" not in first
    assert second["node"] == "node-b" and second["event"] == "b.event"
