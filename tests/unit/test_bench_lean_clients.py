"""The relay bench's lean load clients (bench/_ksmp_load.py): the frames they write
are the frames the websockets client wrote, and their checks catch a wrong, missing,
reordered or duplicated ack or delivery. No server: the server's frames are fed in."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import relay
from bench._ksmp_load import (
    BenchError,
    LeanReceiver,
    LeanSender,
    mask_frame,
    split_frames,
    wait_all,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.speedups import apply_mask  # type: ignore[import-not-found]

from tests.conformance.rawclient import RawClient

PAYLOAD = relay.PAYLOAD


class FakeTransport:
    def __init__(self) -> None:
        self.out = b""
        self.writes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def server_frame(text: str) -> bytes:
    """A server→client text frame as the websockets server writes it (unmasked)."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])


def client_texts(data: bytes) -> list[str]:
    """What a websockets server reads from the client's bytes (masking undone)."""
    proto = ServerProtocol(state=State.OPEN, max_size=None)
    proto.receive_data(data)
    return [f.data.decode() for f in proto.events_received() if f.opcode == Opcode.TEXT]


def ack(i: int, tag: str, duplicate: bool = False) -> str:
    return ('{"event":"ksmpv3.send.ack","data":{"messageId":"m' + str(i) + "-" + tag
            + '","idempotencyKey":"k' + str(i) + "-" + tag + '","conversationId":"c",'
            '"serverSeq":' + str(i + 1) + ',"serverReceivedAtMs":1,"duplicate":'
            + ("true" if duplicate else "false") + "}}")


def inbox(i: int, tag: str, ciphertext: str = PAYLOAD) -> str:
    env = ('{"protocol":"ksmpv3","conversationId":"c","messageId":"m' + str(i) + "-" + tag
           + '","senderUserId":"a","senderDeviceId":"d1","recipientUserId":"b",'
           '"ciphertext":"' + ciphertext + '","contentType":"text","clientCreatedAtMs":1,'
           '"serverSeq":' + str(i + 1) + ',"serverReceivedAtMs":2,"idempotencyKey":"k'
           + str(i) + "-" + tag + '","ephemeral":false}')
    return '{"event":"ksmpv3.inbox.frame","data":{"globalInboxSeq":' + str(i + 7) \
        + ',"envelope":' + env + "}}"


def test_send_frame_text_is_the_old_bench_frame() -> None:
    targets = [("bob", "d1"), ("bob", "d2")]
    conv = relay.dm_conversation_id("alice", "bob")
    cts = ",".join(f'{{"userId":"bob","deviceId":"{d}","ciphertext":"{PAYLOAD}"}}'
                   for d in ("d1", "d2"))
    expected = (
        f'{{"event":"ksmpv3.send","data":{{"conversationId":"{conv}","messageId":"m42-ab12cd",'
        f'"idempotencyKey":"k42-ab12cd","recipientUserId":"bob","contentType":"text",'
        f'"clientCreatedAtMs":1700000000000,"ciphertexts":[{cts}]}}}}'
    )
    assert relay.send_frame("alice", "bob", targets, 42, "ab12cd", 1700000000000) == expected
    assert json.loads(expected)["data"]["ciphertexts"][1]["deviceId"] == "d2"


async def test_sender_writes_masked_frames_a_server_reads_as_the_same_text() -> None:
    conv = relay.dm_conversation_id("alice", "bob")
    s = LeanSender("s", conv, "bob", relay.ciphertexts([("bob", "d1")]), "ab12cd", window=3)
    t = FakeTransport()
    s.transport = t  # type: ignore[assignment]
    s.start_flood()
    texts = client_texts(t.out)
    assert texts == [relay.send_frame("alice", "bob", [("bob", "d1")], i, "ab12cd",
                                      json.loads(texts[i])["data"]["clientCreatedAtMs"])
                     for i in range(3)]
    assert t.writes == 3  # one write per frame, as the websockets client did
    # an ack opens the window by one: message 3 goes out, nothing more
    t.out = b""
    s.data_received(server_frame(ack(0, "ab12cd")))
    assert s.error is None and s.acked == 1 and s.sent == 4
    assert [json.loads(x)["data"]["messageId"] for x in client_texts(t.out)] == ["m3-ab12cd"]


async def test_coalesced_sender_writes_a_burst_in_one_call() -> None:
    s = LeanSender("s", "c", "bob", relay.ciphertexts([("bob", "d1")]), "ab12cd", window=5)
    s.coalesce = True
    t = FakeTransport()
    s.transport = t  # type: ignore[assignment]
    s.start_flood()
    assert t.writes == 1
    assert [json.loads(x)["data"]["messageId"] for x in client_texts(t.out)] == [
        f"m{i}-ab12cd" for i in range(5)]


def test_mask_frame_lengths_and_split_frames() -> None:
    for n in (5, 125, 126, 600, 70000):
        payload = b"x" * n
        frame = mask_frame(payload)
        assert client_texts(frame) == [payload.decode()]
        key_at = {True: 2, False: 4 if n < 65536 else 10}[n < 126]
        key = frame[key_at:key_at + 4]
        assert apply_mask(frame[key_at + 4:], key) == payload
    two = server_frame("a" * 200) + server_frame("b")
    frames, end = split_frames(two + two[:3])  # a partial third frame stays behind
    assert [(op, e - s) for op, s, e in frames] == [(1, 200), (1, 1)] and end == len(two)
    with pytest.raises(BenchError):
        split_frames(mask_frame(b"x"))  # the server never masks


async def test_sender_counts_acks_and_catches_reorder_and_duplicates() -> None:
    s = LeanSender("s", "c", "bob", "", "ab12cd")
    s.transport = FakeTransport()  # type: ignore[assignment]
    s.sent = 5
    data = b"".join(server_frame(ack(i, "ab12cd")) for i in range(3))
    s.data_received(data[:50])
    s.data_received(data[50:])  # a frame split across reads
    assert (s.acked, s.error) == (3, None)
    s.data_received(server_frame(ack(4, "ab12cd")))  # 3 is missing
    assert s.error is not None and "out of order" in s.error

    d = LeanSender("d", "c", "bob", "", "ab12cd")
    d.sent = 1
    d.data_received(server_frame(ack(0, "ab12cd", duplicate=True)))
    assert d.error is not None and "duplicate" in d.error

    e = LeanSender("e", "c", "bob", "", "ab12cd")
    e.data_received(server_frame('{"event":"ksmpv3.error","data":{"code":"rate_limited"}}'))
    assert e.error is not None and "rate_limited" in e.error


async def test_receiver_counts_checks_order_sample_and_acks_read() -> None:
    r = LeanReceiver("r", "ab12cd", PAYLOAD, ack_every=4)
    t = FakeTransport()
    r.transport = t  # type: ignore[assignment]
    r.data_received(b"".join(server_frame(inbox(i, "ab12cd")) for i in range(5)))
    assert (r.delivered, r.sampled, r.error) == (5, 1, None)
    assert json.loads(client_texts(t.out)[0]) == {
        "event": "ksmpv3.ack.read", "data": {"upToGlobalInboxSeq": 4 + 7}}

    gap = LeanReceiver("g", "ab12cd", PAYLOAD)
    gap.data_received(server_frame(inbox(0, "ab12cd")) + server_frame(inbox(2, "ab12cd")))
    assert gap.error is not None and "missing" in gap.error

    other = LeanReceiver("o", "ab12cd", PAYLOAD)
    other.data_received(server_frame(inbox(0, "ffffff")))
    assert other.error is not None

    wrong = LeanReceiver("w", "ab12cd", PAYLOAD)
    wrong.data_received(server_frame(inbox(0, "ab12cd", ciphertext="AAAA")))
    assert wrong.error is not None and "ciphertext" in wrong.error


async def test_receiver_answers_ping_and_reports_close() -> None:
    r = LeanReceiver("r", "ab12cd", PAYLOAD)
    t = FakeTransport()
    r.transport = t  # type: ignore[assignment]
    r.data_received(Frame(Opcode.PING, b"hi").serialize(mask=False, extensions=[]))
    assert t.out[0] == 0x8A and apply_mask(t.out[6:], t.out[2:6]) == b"hi"
    assert r.error is None
    r.data_received(Frame(Opcode.CLOSE, b"\x03\xe9going away").serialize(mask=False,
                                                                         extensions=[]))
    assert r.error is not None and "closed" in r.error and r.closed.done()


async def test_take_over_reads_off_queued_notices_then_drives_the_socket() -> None:
    """Against a bare local websockets server: notices queued before the take-over
    are read off; afterwards the lean receiver counts frames and acks with a frame
    the server reads as ordinary text."""
    got: asyncio.Queue[str] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        for _ in range(2):
            await ws.send('{"event":"sottovoce.device.added","data":{}}')
        await ws.recv()  # the client's go
        for i in range(3):
            await ws.send(inbox(i, "ab12cd"))
        await got.put(str(await ws.recv()))
        await ws.wait_closed()  # the client closes first

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}", compression=None, ping_interval=None)
        while len(ws.recv_messages.frames) < 2:
            await asyncio.sleep(0.01)
        r = await LeanReceiver.take_over(RawClient(ws), "r", "ab12cd", PAYLOAD, 3)
        r.send_frames([b'{"go":1}'])
        await wait_all([r], lambda: r.delivered == 3, 5)
        ack = json.loads(await asyncio.wait_for(got.get(), 5))
        assert ack == {"event": "ksmpv3.ack.read", "data": {"upToGlobalInboxSeq": 2 + 7}}
        assert r.error is None and r.sampled == 1
        r.close()


async def test_take_over_refuses_a_bench_frame_that_came_too_early() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(inbox(0, "ab12cd"))
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}", compression=None, ping_interval=None)
        while not len(ws.recv_messages.frames):
            await asyncio.sleep(0.01)
        with pytest.raises(BenchError, match="before the take-over"):
            await LeanReceiver.take_over(RawClient(ws), "r", "ab12cd", PAYLOAD)
        await ws.close()
