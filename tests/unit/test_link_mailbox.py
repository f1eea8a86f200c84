"""The server's device-linking mailboxes in memory (server/link_mailbox.py), driven with
stand-in sessions: relaying, the bounds, the endings, and the narrow pre-auth exception."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from sottovoce.limits import LINK_MAX_MESSAGES, LINK_MAX_QUEUED
from sottovoce.protocol.link import LinkClose, LinkJoin, LinkOpen, LinkPut
from sottovoce.server.errors import WireFailure
from sottovoce.server.link_mailbox import LinkMailboxes
from sottovoce.server.logs import JsonLogger


class FakeSession:
    def __init__(self, user: str | None = None) -> None:
        self.user = user
        self.device = "d1" if user else None
        self.closed = False
        self.frames: list[tuple[str, dict[str, Any], str | None]] = []

    @property
    def key(self) -> tuple[str, str]:
        if self.user is None or self.device is None:
            raise WireFailure("unauthorized", "authenticate first")
        return (self.user, self.device)

    def reply(self, event: str, data: dict[str, Any], rid: str | None) -> None:
        self.frames.append((event, data, rid))

    def write(self, text: str) -> None:
        obj = json.loads(text)
        self.frames.append((obj["event"], obj["data"], obj.get("requestId")))

    def events(self) -> list[str]:
        return [e for e, _, _ in self.frames]

    def bodies(self) -> list[bytes]:
        return [base64.b64decode(d["body"]) for e, d, _ in self.frames
                if e == "sottovoce.link.message"]


class Harness:
    def __init__(self, ttl_ms: int = 60_000) -> None:
        self.rearmed: list[tuple[FakeSession, int | None]] = []
        self.boxes = LinkMailboxes(ttl_ms=ttl_ms, log=JsonLogger(level="error"),
                                   rearm=lambda s, d: self.rearmed.append((s, d)))  # type: ignore[arg-type]

    def open(self, s: FakeSession, mailbox: str) -> None:
        self.boxes.open(s, LinkOpen(mailbox=mailbox), {}, "o")  # type: ignore[arg-type]

    def join(self, s: FakeSession, mailbox: str) -> None:
        self.boxes.join(s, LinkJoin(mailbox=mailbox), {}, "j")  # type: ignore[arg-type]

    def put(self, s: FakeSession, mailbox: str, body: bytes) -> None:
        self.boxes.put(s, LinkPut(mailbox=mailbox, body=body), {}, "p")  # type: ignore[arg-type]

    def close(self, s: FakeSession, mailbox: str, reason: str = "done") -> None:
        self.boxes.close(s, LinkClose(mailbox=mailbox, reason=reason), {}, "c")  # type: ignore[arg-type]


def code_of(exc: pytest.ExceptionInfo[WireFailure]) -> str:
    return exc.value.code


async def test_relay_both_ways_and_held_messages_reach_the_joiner() -> None:
    h = Harness()
    a, b = FakeSession("alice"), FakeSession()
    h.open(a, "1234")
    h.put(a, "1234", b"first")
    h.join(b, "1234")
    assert b.bodies() == [b"first"] and "sottovoce.link.joined" in a.events()
    h.put(b, "1234", b"second")
    assert a.bodies() == [b"second"]
    assert h.rearmed and h.rearmed[0][0] is b and h.rearmed[0][1] is not None
    h.close(a, "1234", "done")
    assert len(h.boxes) == 0
    assert b.frames[-1][0] == "sottovoce.link.closed" and b.frames[-1][1]["reason"] == "done"
    assert h.rearmed[-1] == (b, None)  # the joiner is back on the ordinary deadline


async def test_only_authenticated_devices_open_and_one_joiner_per_mailbox() -> None:
    h = Harness()
    with pytest.raises(WireFailure) as exc:
        h.open(FakeSession(), "1234")
    assert code_of(exc) == "unauthorized"
    a = FakeSession("alice")
    h.open(a, "1234")
    with pytest.raises(WireFailure) as exc:
        h.open(FakeSession("bob"), "1234")
    assert code_of(exc) == "link_mailbox_taken"
    h.join(FakeSession(), "1234")
    with pytest.raises(WireFailure) as exc:
        h.join(FakeSession(), "1234")
    assert code_of(exc) == "link_not_found"
    with pytest.raises(WireFailure) as exc:
        h.join(FakeSession(), "9999")
    assert code_of(exc) == "link_not_found"


async def test_a_joined_connection_touches_its_own_mailbox_only() -> None:
    h = Harness()
    a, other, b = FakeSession("alice"), FakeSession("carol"), FakeSession()
    h.open(a, "1234")
    h.open(other, "5678")
    h.join(b, "1234")
    for act in (lambda: h.put(b, "5678", b"x"), lambda: h.close(b, "5678")):
        with pytest.raises(WireFailure) as exc:
            act()
        assert code_of(exc) == "unauthorized"
    with pytest.raises(WireFailure) as exc:
        h.join(b, "5678")
    assert code_of(exc) == "bad_request"
    with pytest.raises(WireFailure) as exc:
        h.put(a, "5678", b"x")  # an authenticated device, not its mailbox
    assert code_of(exc) == "link_not_found"
    assert len(h.boxes) == 2


async def test_two_open_per_connection_a_third_ends_the_oldest() -> None:
    h = Harness()
    a = FakeSession("alice")
    h.open(a, "1111")
    h.open(a, "2222")
    h.open(a, "3333")
    assert len(h.boxes) == 2
    closed = [d for e, d, _ in a.frames if e == "sottovoce.link.closed"]
    assert closed == [{"mailbox": "1111", "reason": "cancelled"}]


async def test_bounds_held_and_relayed() -> None:
    h = Harness()
    a, b = FakeSession("alice"), FakeSession()
    h.open(a, "1234")
    for i in range(LINK_MAX_QUEUED):
        h.put(a, "1234", bytes([i + 1]))
    with pytest.raises(WireFailure) as exc:
        h.put(a, "1234", b"one too many")
    assert code_of(exc) == "link_not_joined" and exc.value.retryable
    h.join(b, "1234")
    for _ in range(LINK_MAX_MESSAGES - LINK_MAX_QUEUED - 1):
        h.put(b, "1234", b"x")
    with pytest.raises(WireFailure) as exc:
        h.put(b, "1234", b"x")
    assert code_of(exc) == "link_closed"
    assert len(h.boxes) == 0
    assert ("sottovoce.link.closed", {"mailbox": "1234", "reason": "too_many"}, None) in a.frames


async def test_expiry_and_a_lost_connection_end_the_mailbox() -> None:
    h = Harness(ttl_ms=50)
    a, b = FakeSession("alice"), FakeSession()
    h.open(a, "1234")
    await asyncio.sleep(0.15)
    assert len(h.boxes) == 0
    assert a.frames[-1][1] == {"mailbox": "1234", "reason": "expired"}
    with pytest.raises(WireFailure):
        h.join(b, "1234")

    h2 = Harness()
    h2.open(a, "1234")
    h2.join(b, "1234")
    b.closed = True
    h2.boxes.lost(b)
    assert len(h2.boxes) == 0
    assert a.frames[-1][1] == {"mailbox": "1234", "reason": "peer_gone"}


# --- two nodes: the mailbox on one, the joiner on the other (through the fan-out) --------


class Bus:
    """What NATS does for the link subjects of two nodes, in memory."""

    def __init__(self) -> None:
        self.listeners: dict[str, Any] = {}


class BusFanout:
    """One node's link channels on the :class:`Bus` (delivery on a later loop turn)."""

    remote = True

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def link_listen(self, channel: str, handler: Any) -> None:
        self.bus.listeners[channel] = handler

    def link_unlisten(self, channel: str) -> None:
        self.bus.listeners.pop(channel, None)

    def link_publish(self, channel: str, data: bytes) -> None:
        handler = self.bus.listeners.get(channel)
        if handler is not None:
            asyncio.get_running_loop().create_task(handler(data))

    async def link_request(self, channel: str, data: bytes) -> bytes | None:
        handler = self.bus.listeners.get(channel)
        return None if handler is None else await handler(data)  # type: ignore[no-any-return]


class Node(Harness):
    def __init__(self, bus: Bus, ttl_ms: int = 60_000) -> None:
        self.rearmed = []
        self.boxes = LinkMailboxes(ttl_ms=ttl_ms, log=JsonLogger(level="error"),
                                   rearm=lambda s, d: self.rearmed.append((s, d)),  # type: ignore[arg-type]
                                   fanout=BusFanout(bus))  # type: ignore[arg-type]

    async def aopen(self, s: FakeSession, mailbox: str) -> None:
        await self.boxes.open(s, LinkOpen(mailbox=mailbox), {}, "o")  # type: ignore[arg-type,misc]

    async def ajoin(self, s: FakeSession, mailbox: str) -> None:
        await self.boxes.join(s, LinkJoin(mailbox=mailbox), {}, "j")  # type: ignore[arg-type,misc]


async def _turns() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_across_nodes_relay_one_joiner_and_the_bound() -> None:
    bus = Bus()
    holding, other = Node(bus), Node(bus)
    a, b, late = FakeSession("alice"), FakeSession(), FakeSession()
    with pytest.raises(WireFailure) as exc:
        await other.ajoin(b, "1234")  # opened nowhere
    assert code_of(exc) == "link_not_found" and len(other.boxes) == 0
    await holding.aopen(a, "1234")
    assert a.events() == ["sottovoce.link.opened"]
    holding.put(a, "1234", b"first")
    await other.ajoin(b, "1234")
    await _turns()
    assert b.events()[:2] == ["sottovoce.link.joined", "sottovoce.link.message"]
    assert b.bodies() == [b"first"] and "sottovoce.link.joined" in a.events()
    for node in (holding, other):  # one joiner, on either node
        with pytest.raises(WireFailure) as exc:
            await node.ajoin(late, "1234")
        assert code_of(exc) == "link_not_found"
    other.put(b, "1234", b"second")
    holding.put(a, "1234", b"third")
    await _turns()
    assert a.bodies() == [b"second"] and b.bodies() == [b"first", b"third"]
    sent = 0
    with pytest.raises(WireFailure):  # the holding node ended it: the joiner's node knows
        for _ in range(LINK_MAX_MESSAGES):
            other.put(b, "1234", b"x")
            sent += 1
            await _turns()
    assert sent == LINK_MAX_MESSAGES - 2  # the bound counts both sides' messages
    assert a.frames[-1][1].get("reason") == "too_many"
    assert b.frames[-1][1].get("reason") == "too_many"
    assert len(holding.boxes) == len(other.boxes) == 0 and not bus.listeners


async def test_across_nodes_either_side_s_loss_or_the_joiner_node_s_expiry_ends_both() -> None:
    bus = Bus()
    holding, other = Node(bus), Node(bus)
    a, b = FakeSession("alice"), FakeSession()
    await holding.aopen(a, "1234")
    await other.ajoin(b, "1234")
    other.boxes.lost(b)
    await _turns()
    assert a.frames[-1][1] == {"mailbox": "1234", "reason": "peer_gone"}
    assert len(holding.boxes) == len(other.boxes) == 0

    await holding.aopen(a, "5678")
    b2 = FakeSession()
    await other.ajoin(b2, "5678")
    holding.boxes.lost(a)
    await _turns()
    assert b2.frames[-1][1] == {"mailbox": "5678", "reason": "peer_gone"}
    assert len(other.boxes) == 0 and not bus.listeners

    # The holding node goes silent: the joiner's node still ends it when the code expires.
    short = Node(bus, ttl_ms=50)
    await holding.aopen(a, "9999")
    b3 = FakeSession()
    await short.ajoin(b3, "9999")
    bus.listeners.pop("9999.o")
    await asyncio.sleep(0.2)
    assert b3.frames[-1][1] == {"mailbox": "9999", "reason": "expired"}
    assert len(short.boxes) == 0
