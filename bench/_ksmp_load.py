"""Lean KSMP v3 load connections for bench/relay.py.

A connection is opened, registered and resumed with the conformance suite's
``RawClient`` (websockets); then its socket is taken over by a bare asyncio
protocol that writes pre-encoded WebSocket frames and walks the server's frames
by their headers, so that the load clients cost about as little CPU per message
as the XMPP load client (bench/peers/xmpp_load.py), which only counts bodies.

The server sees exactly what the websockets client sent: the same JSON text per
send (``send_frame`` below is the one template), one masked text frame per send.

Checks kept, so that a wrong or missing delivery cannot go unnoticed:

* every ``ksmpv3.send.ack`` is counted and its messageId must be the next one the
  sender sent (acks of one connection arrive in send order), never a duplicate;
* every ``ksmpv3.inbox.frame`` is counted and its messageId must be the next one
  of the pair's sender (one conversation's frames arrive in order);
* one delivered frame in ``SAMPLE_EVERY`` is parsed whole (json) and must carry
  the sender's ciphertext for this device, unchanged;
* a ``ksmpv3.error`` or a close frame stops the bench with the server's text.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Callable
from typing import Any

from tests.conformance.rawclient import RawClient
from websockets.speedups import apply_mask  # type: ignore[import-not-found]

SAMPLE_EVERY = 512
_ACK = b'{"event":"ksmpv3.send.ack"'
_INBOX = b'{"event":"ksmpv3.inbox.frame"'
_ERROR = b'"ksmpv3.error"'
_MID = re.compile(rb'"messageId":"m(\d+)-([0-9a-f]+)"')
_SEQ = b'"globalInboxSeq":'


class BenchError(Exception):
    """The server answered something a correct relay would not."""


def send_parts(conv: str, recipient: str, cts: str, tag: str) -> tuple[bytes, bytes, bytes, bytes]:
    """The ksmpv3.send text of message ``i`` is ``a + str(i) + b + str(i) + c + str(ms) + d``."""
    return (
        f'{{"event":"ksmpv3.send","data":{{"conversationId":"{conv}","messageId":"m'.encode(),
        f'-{tag}","idempotencyKey":"k'.encode(),
        f'-{tag}","recipientUserId":"{recipient}","contentType":"text","clientCreatedAtMs":'
        .encode(),
        f',"ciphertexts":[{cts}]}}}}'.encode(),
    )


def mask_frame(payload: bytes, rand: Callable[[int], bytes] = random.randbytes) -> bytes:
    """One client→server text frame (FIN, opcode 1, masked; RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = b"\x81\xfe" + n.to_bytes(2, "big")
    else:
        head = b"\x81\xff" + n.to_bytes(8, "big")
    key = rand(4)
    return head + key + apply_mask(payload, key)


def split_frames(buf: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """(opcode, start, end) of every complete server frame in ``buf`` and where the
    complete part ends. Server frames are unmasked (RFC 6455 §5.1)."""
    out = []
    i, n = 0, len(buf)
    while i + 2 <= n:
        b0, b1 = buf[i], buf[i + 1]
        ln = b1 & 0x7F
        h = 2
        if ln == 126:
            if i + 4 > n:
                break
            ln, h = int.from_bytes(buf[i + 2:i + 4], "big"), 4
        elif ln == 127:
            if i + 10 > n:
                break
            ln, h = int.from_bytes(buf[i + 2:i + 10], "big"), 10
        if b1 & 0x80 or not b0 & 0x80:
            raise BenchError("masked or fragmented server frame")
        if i + h + ln > n:
            break
        out.append((b0 & 0x0F, i + h, i + h + ln))
        i += h + ln
    return out, i


class LeanConn(asyncio.Protocol):
    """A taken-over websocket: counts and checks frames, sends pre-encoded ones.

    ``coalesce``: write a burst of frames in one call (as the XMPP load client writes
    up to 64 stanzas at once) rather than one call per frame (as the websockets client
    did, the default): the server then reads more frames per ``recv``."""

    coalesce = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.error: str | None = None
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def take_over(cls, client: RawClient, *args: Any) -> Any:
        """Drive ``client``'s socket from now on. Frames websockets has already read
        (notices such as ``sottovoce.device.added``; no bench frame can be among them,
        nothing was sent yet) are read off first, so that none is lost mid-frame."""
        ws = client.ws
        for _ in range(100):
            if not ws.protocol.reader.buffer and not len(ws.recv_messages.frames):
                break
            if len(ws.recv_messages.frames):
                text = await ws.recv()
                if isinstance(text, str) and ('"ksmpv3.inbox.frame"' in text
                                              or '"ksmpv3.send.ack"' in text):
                    raise BenchError(f"{args[0]}: a bench frame arrived before the take-over")
            else:  # part of a frame read: let the rest arrive
                await asyncio.sleep(0.01)
        else:
            raise BenchError(f"{args[0]}: frames still buffered before the take-over")
        conn = cls(*args)
        transport = ws.transport
        conn.transport = transport
        transport.set_protocol(conn)
        return conn

    def send_frames(self, payloads: list[bytes]) -> None:
        assert self.transport is not None
        if self.coalesce:
            self.transport.write(b"".join(mask_frame(p) for p in payloads))
        else:
            for p in payloads:
                self.transport.write(mask_frame(p))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        frames, end = split_frames(buf)
        self.buf = buf[end:]
        if not frames:
            return
        for op, s, e in frames:
            if op != 1:
                self._control(op, buf[s:e])
        region = buf[:end]
        if _ERROR in region:
            i = region.index(_ERROR)
            self.fail(f"server error: {region[max(0, i - 20):i + 300]!r}")
            return
        self.frames(region, frames)

    def frames(self, region: bytes, frames: list[tuple[int, int, int]]) -> None:
        raise NotImplementedError

    def _control(self, op: int, payload: bytes) -> None:
        if op == 9:  # ping: answer with a masked pong carrying the same data
            assert self.transport is not None
            key = random.randbytes(4)
            self.transport.write(bytes((0x8A, 0x80 | len(payload))) + key
                                 + apply_mask(payload, key))
        elif op == 8:
            self.fail(f"server closed the connection: {payload[2:200]!r}")
        elif op != 10:
            self.fail(f"unexpected opcode {op}")

    def fail(self, why: str) -> None:
        if self.error is None:
            self.error = f"{self.name}: {why}"
        if not self.closed.done():
            self.closed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            key = random.randbytes(4)
            self.transport.write(b"\x88\x82" + key + apply_mask(b"\x03\xe8", key))
            self.transport.close()


class LeanSender(LeanConn):
    """Sends message i = 0, 1, ... to one recipient; counts and checks the acks.

    With ``window`` set, the sender refills its window from ``data_received`` as acks
    arrive (no task, no queue): ``window`` sends are never more than that many ahead
    of their acks. ``track`` records each ack's arrival time by message number."""

    def __init__(self, name: str, conv: str, recipient: str, cts: str, tag: str,
                 window: int = 0, track: bool = False) -> None:
        super().__init__(name)
        self.tag = tag.encode()
        self.parts = send_parts(conv, recipient, cts, tag)
        self.conv, self.recipient, self.cts = conv, recipient, cts
        self.window, self.track = window, track
        self.sent = self.acked = 0
        self.running = False
        self.send_times: list[float] = []
        self.ack_times: dict[int, float] = {}

    def retag(self, tag: str) -> None:
        """Start again at message 0 under a new tag (after a warm-up, all acked)."""
        self.tag = tag.encode()
        self.parts = send_parts(self.conv, self.recipient, self.cts, tag)
        self.sent = self.acked = 0
        self.send_times, self.ack_times = [], {}

    def frame(self, i: int, now_ms: int) -> bytes:
        a, b, c, d = self.parts
        s = str(i).encode()
        return a + s + b + s + c + str(now_ms).encode() + d

    def send_next(self, count: int) -> None:
        now = time.time_ns() // 1_000_000
        first = self.sent
        self.sent += count
        self.send_frames([self.frame(i, now) for i in range(first, first + count)])

    def start_flood(self) -> None:
        self.running = True
        self.send_next(self.window)

    def frames(self, region: bytes, frames: list[tuple[int, int, int]]) -> None:
        now = time.perf_counter()
        n = region.count(_ACK)
        if not n:
            return
        ids = _MID.findall(region)
        if len(ids) != n or any(t != self.tag for _, t in ids):
            self.fail(f"{n} acks carry {len(ids)} bench message ids")
            return
        first = int(ids[0][0])
        if first != self.acked or int(ids[-1][0]) != first + n - 1 or (
                n > 1 and [int(i) for i, _ in ids] != list(range(first, first + n))):
            self.fail(f"acks out of order: expected m{self.acked}.., got m{first}..")
            return
        if b'"duplicate":true' in region:
            self.fail("an ack says duplicate: the bench sent an id twice")
            return
        if self.track:
            for i, _ in ids:
                self.ack_times[int(i)] = now
        self.acked += n
        if self.running and self.window:
            room = self.window - (self.sent - self.acked)
            if room > 0:
                self.send_next(room)


class LeanReceiver(LeanConn):
    """Counts the inbox frames from one sender (``tag``), checks their ids run in
    order, sample-verifies the ciphertext, and acks every ``ack_every`` frames
    (``ksmpv3.ack.read`` up to the last frame's globalInboxSeq)."""

    def __init__(self, name: str, tag: str, ciphertext: str, ack_every: int = 256,
                 track: bool = False) -> None:
        super().__init__(name)
        self.tag, self.ciphertext = tag.encode(), ciphertext
        self.ack_every, self.track = ack_every, track
        self.delivered = self.last_acked = self.sampled = 0
        self.arrivals: dict[int, float] = {}

    def retag(self, tag: str) -> None:
        """The sender restarts at message 0 under a new tag (after a warm-up)."""
        self.tag, self.delivered, self.last_acked = tag.encode(), 0, 0
        self.arrivals = {}

    def frames(self, region: bytes, frames: list[tuple[int, int, int]]) -> None:
        now = time.perf_counter()
        n = region.count(_INBOX)
        if not n:
            return
        ids = [int(i) for i, t in _MID.findall(region) if t == self.tag]
        if len(ids) != n:  # a frame from elsewhere, or one without a bench id
            if self.track and not ids:
                return  # warm-up frames still arriving under the previous tag
            self.fail(f"{n} inbox frames carry {len(ids)} ids of this sender")
            return
        first = self.delivered
        if ids[0] != first or ids[-1] != first + n - 1 or (
                n > 1 and ids != list(range(first, first + n))):
            self.fail(f"inbox frames out of order or missing: expected m{first}.., "
                      f"got m{ids[0]}..m{ids[-1]} ({n} frames)")
            return
        if self.track:
            for i in ids:
                self.arrivals[i] = now
        before = self.delivered
        self.delivered += n
        if before // SAMPLE_EVERY != self.delivered // SAMPLE_EVERY or before == 0:
            self._sample(region, frames)
        if self.delivered - self.last_acked >= self.ack_every:
            i = region.rindex(_SEQ) + len(_SEQ)
            j = i
            while region[j:j + 1].isdigit():
                j += 1
            self.last_acked = self.delivered
            self.send_frames([b'{"event":"ksmpv3.ack.read","data":{"upToGlobalInboxSeq":'
                              + region[i:j] + b"}}"])

    def _sample(self, region: bytes, frames: list[tuple[int, int, int]]) -> None:
        """Parse the last inbox frame whole: it must be this sender's, for this device,
        with the ciphertext sent."""
        for op, s, e in reversed(frames):
            if op == 1 and region.startswith(_INBOX, s):
                env = json.loads(region[s:e])["data"]["envelope"]
                if (env.get("ciphertext") != self.ciphertext
                        or not str(env.get("messageId")).endswith("-" + self.tag.decode())):
                    self.fail(f"inbox frame without the sent ciphertext: {str(env)[:300]}")
                self.sampled += 1
                return


async def wait_all(conns: list[LeanConn], until: Callable[[], bool], limit: float) -> None:
    """Wait (polling every 10 ms, at most ``limit`` s) for ``until()``; raise on a failure."""
    end = time.monotonic() + limit
    while not until() and time.monotonic() < end:
        check(conns)
        await asyncio.sleep(0.01)
    check(conns)


def check(conns: list[LeanConn]) -> None:
    for c in conns:
        if c.error:
            raise BenchError(c.error)
