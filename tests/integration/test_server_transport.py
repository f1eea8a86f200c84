"""The relay's WebSocket transport (server/transport.py) on 127.0.0.1, in process.

The contract-level behaviour (1009, 1013, 1008, TLS, 1001) is covered through
the real server elsewhere; these check what only the transport decides:
RFC 6455 framing details, message order around async work, backpressure,
keepalive and the handshake deadline. Raw sockets are used where a real
client would hide the behaviour (it answers pings, never sends bad UTF-8).
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sottovoce.limits import MAX_PENDING_FRAMES
from sottovoce.server.transport import Connection, LeanServer, TransportConfig


@dataclass
class EchoPeer:
    """Echoes every message; a message "hold" returns async work that waits for ``gate``."""

    conn: Connection
    seen: list[str | bytes] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    lost_calls: int = 0

    def message(self, data: str | bytes) -> Awaitable[None] | None:
        self.seen.append(data)
        if data == "hold":
            return self._wait()
        if data == "close":
            self.conn.close(4321, "asked to")
            return None
        self.conn.write(data if isinstance(data, str) else data.decode())
        return None

    async def _wait(self) -> None:
        await self.gate.wait()
        self.conn.write("released")

    def slow(self) -> None:
        self.conn.close(1013, "slow")

    def lost(self) -> None:
        self.lost_calls += 1


@dataclass
class Harness:
    server: LeanServer
    peers: list[EchoPeer]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])


def _hook(remote: str, request: Request) -> Response | None:
    if request.path == "/nope":
        body = b"not found\n"
        return Response(404, "Not Found", Headers({"Content-Length": str(len(body))}), body)
    return None


async def _harness(**overrides: float) -> AsyncIterator[Harness]:
    peers: list[EchoPeer] = []

    def opener(conn: Connection) -> EchoPeer:
        peers.append(EchoPeer(conn))
        return peers[-1]

    cfg = TransportConfig(
        max_size=64 * 1024, write_limit=1 << 20, server_header="sottovoce/test",
        ping_interval=overrides.get("ping_interval", 30.0),
        ping_timeout=overrides.get("ping_timeout", 30.0),
        open_timeout=overrides.get("open_timeout", 10.0),
    )
    server = LeanServer(cfg, _hook, opener)
    await server.start("127.0.0.1", 0, ssl=None, backlog=16)
    try:
        yield Harness(server, peers)
    finally:
        server.close()
        server.abort_all()
        await server.wait_closed()


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async for x in _harness():
        yield x


async def _raw_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v3/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def _masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + mask + body


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b1, b2 = await asyncio.wait_for(reader.readexactly(2), 5)
    n = b2 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    return b1 & 0x0F, await reader.readexactly(n)


async def test_messages_are_echoed_in_order_and_fragments_reassembled(h: Harness) -> None:
    async with connect(h.url + "/v3/ws") as ws:
        for i in range(50):
            await ws.send(f"m{i}")
        await ws.send(["frag", "ment", "ed"])  # RFC 6455 §5.4: one message in three frames
        got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(51)]
    assert got == [f"m{i}" for i in range(50)] + ["fragmented"]


async def test_async_work_holds_later_frames_back_and_pauses_reading(h: Harness) -> None:
    async with connect(h.url + "/v3/ws") as ws:
        await ws.send("hold")
        n = MAX_PENDING_FRAMES + 20
        for i in range(n):
            await ws.send(f"after{i}")
        peer = h.peers[0]
        transport = peer.conn._transport
        assert transport is not None
        for _ in range(200):  # until the server has read what it will read
            if not transport.is_reading():
                break
            await asyncio.sleep(0.01)
        assert peer.seen == ["hold"]  # nothing overtakes the pending work
        assert not transport.is_reading()  # MAX_PENDING_FRAMES held back: stop reading
        peer.gate.set()
        got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(n + 1)]
        assert got == ["released"] + [f"after{i}" for i in range(n)]
        assert transport.is_reading()


async def test_close_from_the_peer_reaches_the_client_with_its_code(h: Harness) -> None:
    async with connect(h.url + "/v3/ws") as ws:
        await ws.send("one")
        await ws.send("close")
        assert await ws.recv() == "one"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 4321
    for _ in range(100):
        if h.peers[0].lost_calls:
            break
        await asyncio.sleep(0.01)
    assert h.peers[0].lost_calls == 1
    assert not h.server.connections


async def test_invalid_utf8_text_closes_with_1007(h: Harness) -> None:
    reader, writer = await _raw_open(h.port)
    writer.write(_masked(0x1, b"\xff\xfe"))
    op, payload = await _read_frame(reader)
    assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 1007
    writer.close()


async def test_ping_is_answered_with_its_payload(h: Harness) -> None:
    reader, writer = await _raw_open(h.port)
    writer.write(_masked(0x9, b"abc"))
    assert await _read_frame(reader) == (0xA, b"abc")
    writer.close()


async def test_a_client_that_does_not_answer_pings_is_closed_with_1011() -> None:
    async for h in _harness(ping_interval=0.05, ping_timeout=0.1):
        reader, writer = await _raw_open(h.port)
        op, _ = await _read_frame(reader)
        assert op == 0x9
        op, payload = await _read_frame(reader)  # no pong sent
        assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 1011
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the TCP stream ends
        writer.close()


async def test_a_client_that_answers_pings_stays() -> None:
    async for h in _harness(ping_interval=0.05, ping_timeout=0.1):
        async with connect(h.url + "/v3/ws", ping_interval=None) as ws:
            await asyncio.sleep(0.4)  # several ping rounds; the client library pongs
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"


async def test_handshake_deadline_and_http_answers() -> None:
    async for h in _harness(open_timeout=0.2):
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # silent: cut at the deadline
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 404")
        assert b"Server: sottovoce/test" in answer
        writer.close()


async def test_frames_split_anywhere_and_mixed_with_control_frames(h: Harness) -> None:
    reader, writer = await _raw_open(h.port)
    stream = (
        _masked(0x1, b"first")
        + _masked(0x1, b"frag", fin=False)
        + _masked(0x9, b"p1")  # RFC 6455 §5.4: control frames may come between fragments
        + _masked(0x0, b"mented")
        + _masked(0x1, "ünïcode".encode())
        + _masked(0x2, b"binary")
    )
    for i in range(len(stream)):  # one byte per segment: every split point
        writer.write(stream[i : i + 1])
        await writer.drain()
        await asyncio.sleep(0)
    got = [await _read_frame(reader) for _ in range(5)]
    assert got == [
        (0x1, b"first"), (0xA, b"p1"), (0x1, b"fragmented"), (0x1, "ünïcode".encode()),
        (0x1, b"binary"),
    ]
    writer.close()


async def test_frames_in_the_same_segment_as_the_request(h: Harness) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    bird = _masked(0x1, b"bird")
    writer.write(
        b"GET /v3/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        + _masked(0x1, b"early") + bird[:3]
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.write(bird[3:])
    assert await _read_frame(reader) == (0x1, b"early")
    assert await _read_frame(reader) == (0x1, b"bird")
    writer.close()


async def test_oversize_and_unmasked_frames_close_the_connection(h: Harness) -> None:
    reader, writer = await _raw_open(h.port)
    writer.write(bytes((0x81, 0xFF)) + (1 << 20).to_bytes(8, "big"))  # 1 MiB > max_size
    op, payload = await _read_frame(reader)
    assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 1009
    writer.close()
    reader, writer = await _raw_open(h.port)
    writer.write(bytes((0x81, 0x02)) + b"hi")  # RFC 6455 §5.1: clients must mask
    op, payload = await _read_frame(reader)
    assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 1002
    writer.close()


# --- review finding (H11): a bound on what one client can make the server hold ---


async def test_a_burst_behind_async_work_stays_unparsed_bytes(h: Harness) -> None:
    """One read can carry thousands of tiny frames: past MAX_PENDING_FRAMES the rest must
    stay raw bytes (bounded by one read), not become queued messages (a ~8x blow-up)."""
    reader, writer = await _raw_open(h.port)
    n = 30 * MAX_PENDING_FRAMES
    writer.write(_masked(0x1, b"hold") + b"".join(_masked(0x1, b"x%d" % i) for i in range(n)))
    await writer.drain()
    for _ in range(500):  # until the server has read what it will read
        if h.peers and not h.peers[0].conn._transport.is_reading():  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    conn = h.peers[0].conn
    assert len(conn._backlog) <= MAX_PENDING_FRAMES
    assert h.peers[0].seen == ["hold"]
    h.peers[0].gate.set()
    got = [await _read_frame(reader) for _ in range(n + 1)]
    assert got == [(0x1, b"released")] + [(0x1, b"x%d" % i) for i in range(n)]
    writer.close()


# --- porting finding (H11): the loss is reported at once, handlers may still be running ---


async def test_a_connection_lost_during_registration_is_not_left_online(tmp_path: Path) -> None:
    """websockets.asyncio ran the app's cleanup only after the in-flight handler returned;
    the lean transport reports the loss at once. A registration that commits after the
    TCP connection is gone must not attach the dead session to its device (it would be
    'online' for good: frames written to nothing, no push tickle)."""
    from sottovoce.protocol.pow import solve as pow_solve
    from sottovoce.server.app import ServerApp
    from sottovoce.server.config import ServerConfig
    from sottovoce.server.logs import JsonLogger
    from tests.conformance.rawclient import Device, RawClient, b64

    log = JsonLogger(open(tmp_path / "log", "a"), level="debug")  # noqa: SIM115
    app = ServerApp(ServerConfig(port=0, data_dir=tmp_path / "srv",
                                 expiry_interval_ms=3_600_000), logger=log)
    await app.start()
    try:
        gate = asyncio.Event()
        inner_register = app.directory.register
        attached: list[object] = []
        inner_attach = app.presence.attach

        async def held_register(*args: Any) -> Any:
            await gate.wait()
            return await inner_register(*args)

        def recording_attach(session: Any) -> Any:
            attached.append(session)
            return inner_attach(session)

        app.directory.register = held_register  # type: ignore[method-assign]
        app.presence.attach = recording_attach  # type: ignore[method-assign]
        dev = Device.new()
        client = await RawClient.open(app.url + "/v3/ws")
        data = {"certificate": b64(dev.certificate.encode()),
                "signature": b64(dev.sign_challenge(client.nonce))}
        await client.send("sottovoce.register", data)
        refused = await client.recv()  # a registration pays a proof of work first
        challenge = base64.b64decode(refused["data"]["details"]["challenge"])
        await client.send("sottovoce.register", {**data, "pow": b64(pow_solve(challenge))})
        for _ in range(500):  # the handler is parked in register()
            if app.sessions and next(iter(app.sessions)).user is None and gate._waiters:
                break
            await asyncio.sleep(0.01)
        client.ws.transport.abort()  # TCP gone while the handler waits
        for _ in range(500):
            if not app.sessions:
                break
            await asyncio.sleep(0.01)
        assert not app.sessions
        gate.set()  # the registration commits now and the handler carries on
        for _ in range(500):
            if attached:
                break
            await asyncio.sleep(0.01)
        assert attached, "the handler never reached attach"
        assert await app.directory.exists(dev.username)
        assert (dev.username, dev.device_id) not in app.presence.online
    finally:
        await app.stop()


async def test_a_tls_handshake_that_never_finishes_is_cut_at_the_open_deadline(
    tmp_path: Path,
) -> None:
    """connection_made (and so the open deadline) comes after the TLS handshake; that
    handshake needs its own deadline (websockets' serve() set it; asyncio's is 60 s)."""
    import ssl

    from tests.integration.test_server_tls import self_signed

    cert, key = self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    cfg = TransportConfig(max_size=1024, write_limit=1 << 20, server_header="t",
                          ping_interval=30.0, ping_timeout=30.0, open_timeout=0.3)
    server = LeanServer(cfg, _hook, EchoPeer)
    await server.start("127.0.0.1", 0, ssl=ctx, backlog=16)
    try:
        port = int(server.sockets[0].getsockname()[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Silent after the TCP handshake: no ClientHello ever comes.
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    finally:
        server.close()
        server.abort_all()
        await server.wait_closed()
