"""Welcomes too large for one frame: the ratchet tree out of band (docs/protocol.md,
"Large Welcomes"; client/rooms/tree_blob.py), through the real server.

A real X-Wing Welcome over MAX_ROOM_WELCOME_BYTES needs a room of about a hundred
registered devices (tests/unit/test_tree_blob.py builds one in-process and joins it);
here the inviter's threshold is lowered so a room of real clients takes the same path:
the tree sealed into the server's blob store for the new device, the Welcome without
it, the joiner fetching, checking and joining, then reading and sending.

* The new member joins from a Welcome without its tree, reads and sends; the server
  kept only sealed chunks and dropped them once fetched.
* A tree tampered with on the server is refused with ``bad_welcome_tree`` and the
  device does not join.
* A small Welcome keeps its tree inline and no blob is made.
* A commit whose GroupInfo (which keeps the tree) is over the frame cap is refused
  on the client with ``room_too_large`` before anything is sent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sottovoce.client.events import ErrorEvent
from sottovoce.client.rooms import joins, tree_blob
from sottovoce.crypto.mls_suites import XWING_SUITE_ID
from sottovoce.limits import MAX_ROOM_WELCOME_BYTES
from tests.integration.serverproc import ServerProcess
from tests.integration.test_rooms_e2e import close_all, make_accounts, members, room_messages


def _count_fetches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    fetched: list[int] = []
    real = joins.fetch_tree

    async def counting(link: Any, ref: tree_blob.TreeRef) -> bytes:
        tree = await real(link, ref)
        fetched.append(len(tree))
        return tree

    monkeypatch.setattr(joins, "fetch_tree", counting)
    return fetched


def _count_welcomes(client: Any) -> list[int]:
    """Sizes of the Welcomes ``client`` sends in its commits."""
    sizes: list[int] = []
    link = client.rooms._membership._link
    real = link.request

    async def tapping(event: Any, *args: Any, **kwargs: Any) -> Any:
        welcome = getattr(event, "welcome", None)
        if welcome is not None:
            sizes.append(len(welcome))
        return await real(event, *args, **kwargs)

    link.request = tapping
    return sizes


async def test_a_welcome_without_its_tree_joins_through_the_blob_store(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, carol = await make_accounts(server, ["alice", "bob", "carol"], tmp_path)
    fetched = _count_fetches(monkeypatch)
    try:
        room = await alice.rooms.create_room("pq", XWING_SUITE_ID)
        sent = _count_welcomes(alice)
        # A small Welcome: inline, as before.
        await alice.rooms.invite("pq", "carol")
        await carol.rooms.wait_epoch(room.room_id, 1, 20)
        assert fetched == [] and len(sent) == 1
        monkeypatch.setattr(tree_blob, "INLINE_WELCOME_MAX", 1000)
        await alice.rooms.invite("pq", "bob")
        await bob.rooms.wait_epoch(room.room_id, 2, 20)
        assert len(fetched) == 1 and fetched[0] > 2000  # two X-Wing leaves and more
        # The Welcome that went is much smaller than one with the tree: the tree is not in it.
        assert len(sent) == 2 and sent[1] < sent[0] < MAX_ROOM_WELCOME_BYTES
        everyone = members(alice, room.room_id)
        assert members(bob, room.room_id) == everyone and len(everyone) == 3
        await alice.rooms.send("pq", "hello bob")
        assert await room_messages(bob, room.room_id, 1, 20) == ["hello bob"]
        await bob.rooms.send(room.room_id, "hi all")
        for c in (alice, carol):
            assert sorted(await room_messages(c, room.room_id, 2, 20)) == ["hello bob", "hi all"]
        assert len({c.rooms.epoch_authenticator(room.room_id) for c in (alice, bob, carol)}) == 1
    finally:
        await close_all([alice, bob, carol])


async def test_a_tampered_tree_is_refused_with_a_typed_error(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    monkeypatch.setattr(tree_blob, "INLINE_WELCOME_MAX", 1000)
    real_upload = tree_blob.TreeCarrier.upload

    async def tampering(self: tree_blob.TreeCarrier, link: Any, devices: Any) -> None:
        first = bytearray(self.sealed[0])
        first[len(first) // 2] ^= 1  # what a server that alters stored chunks would serve
        self.sealed[0] = bytes(first)
        await real_upload(self, link, devices)

    monkeypatch.setattr(tree_blob.TreeCarrier, "upload", tampering)
    events = bob.events()
    try:
        room = await alice.rooms.create_room("pq", XWING_SUITE_ID)
        await alice.rooms.invite("pq", "bob")
        codes: list[str] = []
        while "bad_welcome_tree" not in codes:
            event = await events.next(20)
            if isinstance(event, ErrorEvent):
                codes.append(event.code)
        await asyncio.sleep(0.5)
        assert room.room_id not in {r.room_id for r in bob.rooms.all()}
    finally:
        events.close()
        await close_all([alice, bob])


async def test_a_commit_the_relay_would_refuse_is_a_plain_error_and_changes_nothing(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The GroupInfo a commit publishes keeps its tree (the server checks commits with it):
    # over the frame cap the inviter is told before anything leaves, and the room is as it was.
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    try:
        room = await alice.rooms.create_room("pq", XWING_SUITE_ID)
        monkeypatch.setattr(tree_blob, "FRAME_GROUP_INFO_MAX", 1000)
        with pytest.raises(tree_blob.RoomTooLarge, match=r"GroupInfo of \d+ KiB") as info:
            await alice.rooms.invite("pq", "bob")
        assert info.value.code == "room_too_large"
        assert alice.rooms.get(room.room_id).epoch == 0
        monkeypatch.undo()
        await alice.rooms.invite("pq", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1, 20)
        await bob.rooms.send(room.room_id, "in")
        assert await room_messages(alice, room.room_id, 1, 20) == ["in"]
    finally:
        await close_all([alice, bob])
