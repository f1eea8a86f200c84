"""Ephemeral group chats and photos against the real server, three clients
(client/ephemeral_group.py, client/ephemeral_media.py): a room's members form a mesh of
ephemeral chats over the relay path (and over P2P data channels), texts and a photo
reach everyone, nothing is left on any disk, a panic ends it for the others within a
second, and a request naming another room's group chat is refused."""

from __future__ import annotations

import asyncio
import secrets
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from sottovoce.client import Client, EventStream
from sottovoce.client.calls import IceConfig
from sottovoce.client.ephemeral_group import GroupChat
from sottovoce.client.ephemeral_media import MediaKind, read_once
from sottovoce.client.events import (
    EphemeralChatEnded,
    EphemeralChatMessage,
    EphemeralGroupEnded,
    EphemeralGroupLeft,
    EphemeralGroupMessage,
    EphemeralGroupOpened,
    EphemeralMediaReceived,
)
from sottovoce.pairwise.ephemeral import State
from tests.integration.client_helpers import accounts
from tests.integration.serverproc import ServerProcess
from tests.integration.test_ephemeral_chat import _files, _found, _next, _open
from tests.integration.test_ephemeral_datachannel import _piped, _use
from tests.waiting import until


async def _room(alice: Client, *others: Client) -> str:
    room = await alice.rooms.create_room("team")
    for i, other in enumerate(others, 1):
        await alice.rooms.invite("team", other.username)
        await other.rooms.wait_epoch(room.room_id, i)
    want = {c.username for c in (alice, *others)}
    for c in (alice, *others):
        await c.rooms.wait_until(
            lambda c=c: {u for u, _ in c.rooms.get(room.room_id).members()} == want, 10)
    return room.room_id


async def _linked(group: GroupChat, n: int, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while len(group.members()) < n:
        assert loop.time() < until, f"{group.members()} linked, {n} wanted"
        await asyncio.sleep(0.05)



async def _group(room_id: str, *clients: Client) -> list[GroupChat]:
    first = await clients[0].ephemeral.groups.open(room_id)
    rest = [await c.ephemeral.groups.open(room_id, patience=10) for c in clients[1:]]
    groups = [first, *rest]
    for g in groups:
        await _linked(g, len(clients) - 1)
    assert len({g.group_id for g in groups}) == 1
    return groups


async def _texts(stream: EventStream, n: int) -> list[tuple[str, str]]:
    got = []
    while len(got) < n:
        e = await _next(stream, EphemeralGroupMessage)
        assert isinstance(e, EphemeralGroupMessage)
        got.append((e.sender, e.text))
    return got


def _png(width: int, height: int, canary: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    # The canary as a private ancillary chunk, repeated: ~200 KiB that must not land on disk.
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"cnRy", canary * 3000)
            + chunk(b"IEND", b""))


async def test_three_members_chat_over_the_relay_and_nothing_stays_anywhere(
    server: ServerProcess, tmp_path: Path
) -> None:
    started = time.time() - 1
    canary = "grpcanary" + secrets.token_hex(8)
    photo_canary = b"PHOTOCANARY" + secrets.token_bytes(53)
    keys: list[bytes] = []
    async with accounts(server, tmp_path, "alice", "bob", "carol") as clients:
        alice, bob, carol = clients
        room_id = await _room(alice, bob, carol)
        ga, gb, gc = await _group(room_id, alice, bob, carol)
        assert ga.starter and not gb.starter and ga.members() == ["bob", "carol"]
        assert gb.members() == ["alice", "carol"] and gc.members() == ["alice", "bob"]
        for g in (ga, gb, gc):
            for link in g.links.values():
                assert link.session.group[:16] == ga.group_id
                keys += link.session.key_material()
        streams = [c.events() for c in clients]
        assert await alice.ephemeral.groups.send(ga, f"{canary} from alice") == 2
        assert await carol.ephemeral.groups.send(gc, f"{canary} from carol") == 2
        assert sorted(await _texts(streams[1], 2)) == [
            ("alice", f"{canary} from alice"), ("carol", f"{canary} from carol")]
        assert await _texts(streams[2], 1) == [("alice", f"{canary} from alice")]
        assert await _texts(streams[0], 1) == [("carol", f"{canary} from carol")]
        # Group texts are not 1:1 texts: no link shows them as one.
        assert all(not link.messages() for g in (ga, gb, gc) for link in g.links.values())
        assert not any(isinstance(e, EphemeralChatMessage) for e in streams[1].pending())
        # A photo from memory: read once, fanned out in chunks, held in RAM by both.
        path = tmp_path / "photo.png"
        path.write_bytes(_png(640, 480, photo_canary))
        data = read_once(str(path))
        path.unlink()
        assert await bob.ephemeral.groups.send_media(gb, MediaKind.PHOTO, "photo.png",
                                                     data) == 2
        size = len(data)
        data[:] = bytes(len(data))
        for s in (streams[0], streams[2]):
            e = await _next(s, EphemeralMediaReceived, timeout=20)
            assert isinstance(e, EphemeralMediaReceived) and e.sender == "bob"
            assert e.about == f"photo 'photo.png': PNG image, 640×480, {size} bytes"
        assert photo_canary in bytes(ga.media[0].data)
        held = [ga.media[0].data, gc.media[0].data]
        await bob.ephemeral.groups.leave(gb)
        await until(lambda: ga.members() == ["carol"])  # alice and carol go on without bob
        told = await _next(streams[2], EphemeralGroupLeft)
        assert isinstance(told, EphemeralGroupLeft) and told.user == "bob"
        assert told.reason == "the other side left"
        assert not ga.ended.is_set() and gc.members() == ["alice"]
        await alice.ephemeral.groups.leave(ga)
        ended = await _next(streams[2], EphemeralGroupEnded)
        assert isinstance(ended, EphemeralGroupEnded) and ended.reason == "everyone else left"
        assert all(not any(buf) for buf in held)  # the photo's bytes zeroed on both sides
        assert gc.messages() == [] and ga.messages() == [] and not ga.media
        for s in streams:
            s.close()
        keys += [bytes(c.ephemeral._static or b"") for c in clients]
        assert all(len(k) >= 16 and any(k) for k in keys)
    server.stop()
    needles = [canary.encode(), photo_canary, *keys]
    roots = [server.data_dir, *(tmp_path / n for n in ("alice", "bob", "carol"))]
    assert _found(needles, _files(*roots)) == []
    assert _found(needles, _files(Path(tempfile.gettempdir()), since=started)) == []


async def test_panic_ends_the_group_chat_for_the_others_within_a_second(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob", "carol") as clients:
        alice, bob, carol = clients
        room_id = await _room(alice, bob, carol)
        ga, gb, gc = await _group(room_id, alice, bob, carol)
        await carol.ephemeral.groups.send(gc, "before the panic")
        streams = [bob.events(), carol.events()]
        t0 = time.monotonic()
        alice.ephemeral.panic()
        assert ga.ended.is_set() and ga.end_reason == "panic"
        for s in streams:
            e = await _next(s, EphemeralGroupEnded, timeout=1.0)
            assert isinstance(e, EphemeralGroupEnded) and e.reason == "alice panicked"
        assert time.monotonic() - t0 < 1.0
        assert gb.messages() == [] == gc.messages()
        for c in clients:
            assert c.ephemeral.groups.groups() == []
            assert [x for x in c.ephemeral.chats() if x.session.state is not State.CLOSED] == []


async def test_three_members_over_p2p_data_channels(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob", "carol") as clients:
        for c in clients:
            _use(c, IceConfig(loopback=True))
        alice, bob, carol = clients
        room_id = await _room(alice, bob, carol)
        ga, gb, gc = await _group(room_id, alice, bob, carol)
        for g in (ga, gb, gc):
            for link in g.links.values():
                await _piped(link)
        relayed = sum(link.frames_via_relay for link in gc.links.values())
        streams = [alice.events(), bob.events()]
        for i in range(20):
            await carol.ephemeral.groups.send(gc, f"p2p {i}")
        for s in streams:
            assert await _texts(s, 20) == [("carol", f"p2p {i}") for i in range(20)]
        assert sum(link.frames_via_relay for link in gc.links.values()) == relayed
        assert sum(link.frames_via_pipe for link in gc.links.values()) >= 40


async def test_a_non_member_is_neither_asked_nor_accepted(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Dave is online but not in the room: the starter never asks him, and his request
    naming the group chat is refused by every member (their MLS group says no)."""
    async with accounts(server, tmp_path, "alice", "bob", "dave") as clients:
        alice, bob, dave = clients
        room_id = await _room(alice, bob)
        refused: list[str] = []
        alice.ephemeral.groups.on_refused = refused.append
        ga = await alice.ephemeral.groups.open(room_id)
        b_events = bob.events()
        gb = await bob.ephemeral.groups.open(room_id, patience=10)
        await _linked(ga, 1)
        opened = await _next(b_events, EphemeralGroupOpened)
        assert isinstance(opened, EphemeralGroupOpened) and opened.user == "alice"
        assert not dave.ephemeral.group_requests()
        chat = await dave.ephemeral.request("alice", group=gb.links["alice"].session.group)
        loop = asyncio.get_running_loop()
        until = loop.time() + 5
        while not refused and loop.time() < until:
            await asyncio.sleep(0.05)
        assert refused == ["a group chat request from outside its room"]
        assert chat.session.state is State.REQUESTED and ga.members() == ["bob"]
        dave.ephemeral.end(chat, "done")


async def test_a_photo_crosses_a_one_to_one_chat_from_memory_and_leaves_no_trace(
    server: ServerProcess, tmp_path: Path
) -> None:
    started = time.time() - 1
    photo_canary = b"ONE2ONECANARY" + secrets.token_bytes(51)
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        a_chat, b_chat = await _open(alice, bob)
        path = tmp_path / "cat.png"
        path.write_bytes(_png(320, 200, photo_canary))
        data = read_once(str(path))
        path.unlink()
        b_events = bob.events()
        await alice.ephemeral.send_media(a_chat, MediaKind.PHOTO, "cat.png", data)
        size, data[:] = len(data), bytes(len(data))
        e = await _next(b_events, EphemeralMediaReceived, timeout=20)
        assert isinstance(e, EphemeralMediaReceived) and e.index == 1 and e.sender == "alice"
        assert e.about == f"photo 'cat.png': PNG image, 320×200, {size} bytes"
        held = b_chat.media[0].data
        assert photo_canary in bytes(held) and len(held) == size
        assert a_chat.frames_via_relay > size // (16 * 1024)  # it went in chunks
        await alice.ephemeral.leave(a_chat)
        await _next(b_events, EphemeralChatEnded)
        assert not any(held) and not b_chat.media
        b_events.close()
    server.stop()
    roots = [server.data_dir, tmp_path / "alice", tmp_path / "bob"]
    assert _found([photo_canary], _files(*roots)) == []
    assert _found([photo_canary], _files(Path(tempfile.gettempdir()), since=started)) == []


async def test_a_member_not_looked_up_yet_is_looked_up_then_let_in(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob's device does not know alice's devices yet: her first request is dropped, her
    devices are looked up (she is a member of the room it names), and her next resend
    is let in."""
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        room_id = await _room(alice, bob)
        directory = bob.ephemeral._contacts
        real_contact, real_lookup = directory.contact, directory.lookup
        looked: list[str] = []

        def contact(user: str) -> Any:
            return None if user == "alice" and not looked else real_contact(user)

        async def lookup(user: str) -> None:
            looked.append(user)
            await real_lookup(user)

        monkeypatch.setattr(directory, "contact", contact)
        monkeypatch.setattr(directory, "lookup", lookup)
        ga = await alice.ephemeral.groups.open(room_id)
        gb = await bob.ephemeral.groups.open(room_id, patience=10)
        await _linked(ga, 1)
        await _linked(gb, 1)
        assert looked == ["alice"]


async def test_a_member_removed_from_the_room_drops_out_and_is_told(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob", "carol") as clients:
        alice, bob, carol = clients
        room_id = await _room(alice, bob, carol)
        ga, gb, gc = await _group(room_id, alice, bob, carol)
        c_events = carol.events()
        await alice.rooms.remove(room_id, "carol")
        ended = await _next(c_events, EphemeralGroupEnded, timeout=15)
        assert isinstance(ended, EphemeralGroupEnded)
        assert ended.reason in ("you are no longer a member of the room",
                                "the other side left", "everyone else left")
        await until(lambda: ga.members() == ["bob"] and gb.members() == ["alice"], 15)
        assert gc.messages() == [] and not gc.links
        assert await alice.ephemeral.groups.send(ga, "without carol") == 1
