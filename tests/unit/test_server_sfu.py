"""The server's SFU side without a Janus: --sfu parsing, pinning by hash and region,
keyed names, grants, and the driver's moves with SFUs that answer or not."""

from __future__ import annotations

import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sottovoce.calls.janus import (
    JanusProtocol,
    ReplyKind,
    SfuError,
    SfuNoSuchFeed,
    SfuNoSuchRoom,
    SfuUnauthorized,
    SfuUnavailable,
    error_for,
)
from sottovoce.errors import UsageError
from sottovoce.limits import MAX_SFU_MESSAGE_BYTES, SFU_GRANT_TTL_MS
from sottovoce.secret import Secret
from sottovoce.server.sfu import (
    GrantTable,
    SfuConfig,
    SfuDriver,
    SfuEndpoint,
    SfuNotAMember,
    SfuRegionUnavailable,
    parse_sfu_option,
    pick_sfu,
    ranked_sfus,
    read_sfu_key,
    room_pin,
    sfu_feed_id,
    sfu_room_name,
    sfu_room_secret,
)

KEY = Secret(b"k" * 32)
EU = tuple(SfuEndpoint(url=f"wss://eu{i}.example.org/", region="eu") for i in range(3))
CH = tuple(SfuEndpoint(url=f"wss://ch{i}.example.org/", region="ch") for i in range(2))


# --- options -------------------------------------------------------------------------


def test_sfu_option_takes_urls_or_region_labelled_urls() -> None:
    assert parse_sfu_option("wss://a.example.org/,ws://127.0.0.1:8188/") == (
        SfuEndpoint(url="wss://a.example.org/"),
        SfuEndpoint(url="ws://127.0.0.1:8188/"),
    )
    assert parse_sfu_option(" eu=wss://a.example.org/ , ch=wss://b.example.org:443/janus ") == (
        SfuEndpoint(url="wss://a.example.org/", region="eu"),
        SfuEndpoint(url="wss://b.example.org:443/janus", region="ch"),
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        ",",
        "http://a.example.org/",  # the WebSocket API, not HTTP
        "eu=wss://a/,wss://b/",  # labels on all or none
        "EU=wss://a/",  # lower-case labels
        "eu=wss://a/,ch=wss://a/",  # the same SFU twice
        "none=wss://a/",  # what a room without a residency says, never a label
        "wss://a b/",
        ",".join(f"wss://s{i}/" for i in range(17)),
    ],
)
def test_a_bad_sfu_option_is_a_plain_usage_error(value: str) -> None:
    with pytest.raises(UsageError):
        parse_sfu_option(value)


def test_the_key_file_holds_one_line_of_at_least_16_bytes(tmp_path: Path) -> None:
    path = tmp_path / "sfu-key"
    path.write_bytes(b"0123456789abcdef0123\n")
    assert read_sfu_key(path).expose() == b"0123456789abcdef0123"
    for bad in (b"short\n", b"0123456789abcdef\n0123456789abcdef\n"):
        path.write_bytes(bad)
        with pytest.raises(UsageError):
            read_sfu_key(path)
    with pytest.raises(UsageError, match="cannot read"):
        read_sfu_key(tmp_path / "missing")


# --- pinning -----------------------------------------------------------------------------


def test_a_room_is_pinned_to_one_sfu_and_rooms_spread_over_all() -> None:
    pins = [room_pin(KEY, f"room{i}") for i in range(300)]
    chosen = [pick_sfu(EU, pin, residency=None) for pin in pins]
    assert chosen == [pick_sfu(EU, pin, residency=None) for pin in pins]  # stable
    assert min(Counter(c.url for c in chosen).values()) > 60  # ~100 each


def test_when_the_pinned_sfu_is_down_only_its_rooms_move() -> None:
    pins = [room_pin(KEY, f"room{i}") for i in range(200)]
    before = [pick_sfu(EU, p, residency=None) for p in pins]
    down = {EU[0].url}
    after = [pick_sfu(EU, p, residency=None, down=down) for p in pins]
    for b, a in zip(before, after, strict=True):
        assert a.url not in down
        if b.url not in down:
            assert a == b  # rendezvous hashing: rooms on live SFUs stay put
    assert ranked_sfus(EU, pins[0], residency=None)[0] == before[0]


def test_region_pinning_never_uses_another_regions_sfu() -> None:
    both = EU + CH
    for i in range(100):
        pin = room_pin(KEY, f"room{i}")
        assert pick_sfu(both, pin, residency="ch").region == "ch"
        assert pick_sfu(both, pin, residency="eu").region == "eu"
        assert {e.region for e in ranked_sfus(both, pin, residency="ch")} == {"ch"}
    every_ch_down = {e.url for e in CH}
    with pytest.raises(SfuRegionUnavailable, match="not moved"):
        pick_sfu(both, room_pin(KEY, "r"), residency="ch", down=every_ch_down)
    with pytest.raises(SfuRegionUnavailable):
        pick_sfu(both, room_pin(KEY, "r"), residency="us")
    with pytest.raises(SfuUnavailable):
        pick_sfu(EU, room_pin(KEY, "r"), residency=None, down={e.url for e in EU})


def test_the_sfu_learns_no_room_or_device_id() -> None:
    call = bytes(16)
    name = sfu_room_name(KEY, "room-secret-id", call)
    feed = sfu_feed_id(KEY, "room-secret-id", call, ("alice", "a1"))
    assert len(name) == 32 and "room" not in name and "alice" not in feed
    assert name != sfu_room_name(KEY, "room-secret-id", bytes([1]) * 16)  # per call
    assert name != sfu_room_name(Secret(b"x" * 32), "room-secret-id", call)  # keyed
    assert feed != sfu_feed_id(KEY, "room-secret-id", call, ("alice", "a2"))
    assert sfu_room_secret(KEY, "r", call) != sfu_room_secret(KEY, "r", bytes([1]) * 16)
    assert "k" not in repr(sfu_room_secret(KEY, "r", call))


def test_grants_expire_and_are_revoked_per_device() -> None:
    table = GrantTable()
    a = table.issue(("alice", "a1"), now_ms=0, ttl_ms=1000, rng=secrets.token_bytes)
    b = table.issue(("bob", "b1"), now_ms=500, ttl_ms=1000, rng=secrets.token_bytes)
    assert a != b and len(a) == 32
    assert table.expired(999) == []
    assert table.expired(1000) == [a]
    assert table.revoke(("bob", "b1")) == [b]
    assert not table


def test_sfu_config_bounds() -> None:
    with pytest.raises(UsageError):
        SfuConfig(endpoints=(), key=KEY)
    with pytest.raises(UsageError):
        SfuConfig(endpoints=EU, key=Secret(b"short"))
    with pytest.raises(UsageError):
        SfuConfig(endpoints=EU, key=KEY, grant_ttl_ms=SFU_GRANT_TTL_MS + 1)


# --- the Janus protocol ------------------------------------------------------------------


def test_janus_replies_are_typed_and_errors_carry_janus_codes() -> None:
    proto = JanusProtocol(secrets.token_bytes)
    text, txn = proto.request({"janus": "create"})
    assert f'"transaction":"{txn}"' in text
    reply = proto.receive(
        '{"janus":"event","sender":7,"transaction":"t","plugindata":'
        '{"plugin":"janus.plugin.videoroom","data":{"error_code":433,"error":"Unauthorized\\u001b[0m"}}}'
    )
    assert reply.kind is ReplyKind.EVENT and reply.sender == 7
    error = reply.plugin_error()
    assert isinstance(error, SfuUnauthorized) and error.janus_code == 433
    assert "\x1b" not in str(error)
    core = proto.receive('{"janus":"error","transaction":"t","error":{"code":403,"reason":"no"}}')
    assert isinstance(core.plugin_error(), SfuUnauthorized)
    assert isinstance(error_for(426, ""), SfuNoSuchRoom)
    assert isinstance(error_for(428, ""), SfuNoSuchFeed)
    sdp = proto.receive(
        '{"janus":"event","jsep":{"type":"offer","sdp":"v=0"},"plugindata":{"data":{}}}'
    )
    assert sdp.jsep == {"type": "offer", "sdp": "v=0"} and "v=0" not in repr(sdp)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"janus":"whatever"}',
        '{"janus":"event","plugindata":{"data":[]}}',
        '{"janus":"event","jsep":{"type":"pranswer","sdp":"v=0"}}',
        '{"janus":"event","jsep":{"type":"offer","sdp":7}}',
        "x" * (MAX_SFU_MESSAGE_BYTES + 1),
    ],
)
def test_anything_else_from_the_sfu_is_a_typed_error(text: str) -> None:
    with pytest.raises(SfuError):
        JanusProtocol(secrets.token_bytes).receive(text)


# --- the driver with stand-in SFUs ------------------------------------------------------


class FakeJanus:
    """Answers VideoRoom requests like Janus, remembering rooms, allowed lists and feeds."""

    def __init__(self, url: str, log: list[tuple[str, dict[str, Any]]]) -> None:
        self.url = url
        self.log = log
        self.rooms: dict[str, dict[str, Any]] = {}
        self.closed = False

    async def call(self, body: dict[str, Any]) -> dict[str, Any]:
        self.log.append((self.url, body))
        request, room = body["request"], body.get("room")
        if request == "create":
            self.rooms[room] = {"allowed": set(), "feeds": set(), "secret": body["secret"]}
            return {"videoroom": "created"}
        if room not in self.rooms:
            raise SfuNoSuchRoom("no such room", 426)
        entry = self.rooms[room]
        if body.get("secret") != entry["secret"]:
            raise SfuUnauthorized("wrong secret", 433)
        if request == "allowed":
            change = set(body["allowed"])
            if body["action"] == "add":
                entry["allowed"] |= change
            else:
                entry["allowed"] -= change
            return {"videoroom": "success"}
        if request == "kick":
            if body["id"] not in entry["feeds"]:
                raise SfuNoSuchFeed("no such feed", 428)
            entry["feeds"].discard(body["id"])
            return {"videoroom": "success"}
        if request == "listparticipants":
            return {"participants": [{"id": f} for f in sorted(entry["feeds"])]}
        if request == "destroy":
            del self.rooms[room]
            return {"videoroom": "destroyed"}
        raise AssertionError(request)

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def rig(endpoints: tuple[SfuEndpoint, ...], down: set[str] = frozenset()):  # type: ignore[no-untyped-def,assignment]
    log: list[tuple[str, dict[str, Any]]] = []
    sfus: dict[str, FakeJanus] = {}
    clock = Clock()

    async def opener(url: str) -> FakeJanus:
        if url in down:
            raise SfuUnavailable("down")
        sfus.setdefault(url, FakeJanus(url, log))
        return sfus[url]

    driver = SfuDriver(SfuConfig(endpoints=endpoints, key=KEY), opener=opener, clock_ms=clock)
    return driver, sfus, log, clock


MEMBERS = {("alice", "a1"), ("bob", "b1")}


async def test_open_call_creates_an_e2ee_only_room_named_by_hash_and_grants_members_only() -> None:
    driver, sfus, log, _ = rig(EU)
    call = bytes(16)
    url = await driver.open_call("room1", call)
    create = log[0][1]
    assert create["require_e2ee"] is True and create["require_pvtid"] is True
    assert create["audiolevel_ext"] is False and create["opus_dtx"] is False
    assert create["lock_record"] is True and create["permanent"] is False
    assert create["allowed"] == [] and create["room"] == sfu_room_name(KEY, "room1", call)
    assert "room1" not in str(create)
    grant = await driver.grant("room1", call, ("alice", "a1"), MEMBERS)
    assert grant.url == url and grant.feed_id == sfu_feed_id(KEY, "room1", call, ("alice", "a1"))
    room = sfus[url].rooms[grant.room]
    assert room["allowed"] == {grant.token.expose().decode()}
    assert grant.token.expose().decode() not in repr(grant)
    # A new grant for a device whose earlier publisher is still there kicks that one.
    room["feeds"].add(grant.feed_id)
    again = await driver.grant("room1", call, ("alice", "a1"), MEMBERS)
    assert again.feed_id == grant.feed_id and grant.feed_id not in room["feeds"]
    with pytest.raises(SfuNotAMember):
        await driver.grant("room1", call, ("mallory", "m1"), MEMBERS)
    with pytest.raises(SfuNotAMember):
        await driver.admit("room1", call, ("mallory", "m1"), MEMBERS)
    assert len(room["allowed"]) == 2


async def test_grants_expire_removed_members_are_kicked_and_empty_rooms_destroyed() -> None:
    driver, sfus, _, clock = rig(EU)
    call = bytes(16)
    url = await driver.open_call("room1", call)
    g = await driver.grant("room1", call, ("bob", "b1"), MEMBERS)
    room = sfus[url].rooms[g.room]
    room["feeds"].add(g.feed_id)  # bob joined
    await driver.remove_member("room1", ("bob", "b1"))
    assert room["allowed"] == set() and room["feeds"] == set()
    g2 = await driver.grant("room1", call, ("alice", "a1"), MEMBERS)
    clock.now += SFU_GRANT_TTL_MS
    await driver.sweep()
    assert g2.token.expose().decode() not in room["allowed"]
    assert g.room not in sfus[url].rooms  # nobody in it, nobody may join: destroyed


async def test_an_sfu_that_is_down_moves_the_room_within_its_region_only() -> None:
    both = EU + CH
    pin = room_pin(KEY, "room1")
    first, second = ranked_sfus(both, pin, residency="eu")[:2]
    driver, _, _, _ = rig(both, down={first.url})
    assert await driver.open_call("room1", bytes(16), residency="eu") == second.url
    assert first.url in driver.down()
    driver2, _, log2, _ = rig(both, down={e.url for e in CH})
    with pytest.raises(SfuRegionUnavailable):
        await driver2.open_call("room1", bytes(16), residency="ch")
    assert log2 == []  # no request ever went to an SFU of another region


async def test_a_call_opened_before_its_room_was_pinned_elsewhere_is_refused_not_moved() -> None:
    both = EU + CH
    driver, _, _, _ = rig(both)
    call = bytes(16)
    url = await driver.open_call("room1", call, residency="eu")
    assert url in {e.url for e in EU}
    # The same call asked for again in its region: the same SFU; pinned elsewhere: refused.
    assert await driver.open_call("room1", call, residency="eu") == url
    assert await driver.open_call("room1", call) == url
    with pytest.raises(SfuRegionUnavailable):
        await driver.admit("room1", call, ("alice", "a1"), MEMBERS, residency="ch")
    # A new call of the room goes to the room's new region.
    moved = await driver.open_call("room1", bytes([1]) * 16, residency="ch")
    assert moved in {e.url for e in CH}
