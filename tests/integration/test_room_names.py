"""A room's shared name and topic through the real server and real clients
(docs/protocol.md §Rooms, "Room profile"): every member sees the same, a member
added by a Welcome and one joining by token are told them, a removed member does not
read a later rename, only an admin renames (the server refuses a forged commit), and
neither a name nor a topic, in any encoding, is in the server's files.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from sottovoce.audit_kit.needles import Scanner, needles_for
from sottovoce.client import Client
from sottovoce.client.errors import ServerError
from sottovoce.client.events import RoomInvited
from sottovoce.client.ids import new_id, now_ms
from sottovoce.client.rooms.rules import profile
from sottovoce.errors import UsageError
from sottovoce.mls.group import Group
from sottovoce.mls.messages import GroupContextExtensions
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.room_names import KEY_ID_BYTES, NONCE_BYTES, RoomNames
from sottovoce.protocol.room_names_seal import seal_names
from sottovoce.protocol.room_rules import with_profile
from sottovoce.secret import Secret
from tests.integration.client_helpers import accounts
from tests.integration.serverproc import ServerProcess


def _canary(what: str) -> str:
    return f"canary-{what}-{secrets.token_hex(8)}"


async def _sees(client: Client, room_id: str, name: str, topic: str = "") -> bool:
    """``client`` shows the room by ``name`` (and ``topic``) after some batch."""
    return await client.rooms.wait_until(
        lambda: (client.rooms.name(room_id), client.rooms.topic(room_id)) == (name, topic), 15
    )


def _forged_rename(bob: Client, room_id: str) -> pr.RoomCommit:
    """A member's commit of new sealed names, the admins unchanged, made past every
    client-side check (what a modified client could send)."""
    room = bob.rooms.get(room_id)
    current = profile(room)
    assert room.group is not None and current is not None
    copy = Group.from_state(room.group.to_state())
    sealed = seal_names(
        RoomNames("seized"), Secret(secrets.token_bytes(32)),
        key_id=secrets.token_bytes(KEY_ID_BYTES), nonce=secrets.token_bytes(NONCE_BYTES),
        group_id=copy.group_id,
    )
    ext = with_profile(copy.group_context.extensions, current.with_sealed(sealed))
    bundle = copy.commit(rng=secrets.token_bytes, now_ms=now_ms(),
                         proposals=[GroupContextExtensions(extensions=ext)])
    return pr.RoomCommit(
        roomId=room_id, epoch=copy.epoch, messageId=new_id(), idempotencyKey=new_id(),
        commit=bundle.commit, groupInfo=copy.staged_group_info(bundle.staged),
    )


def _assert_blind(server: ServerProcess, canaries: list[str]) -> None:
    """The blindness kit's search (raw, hex, base64 at every alignment) over every file
    the server keeps: its database (WAL included) and logs."""
    scanner = Scanner(
        n for i, c in enumerate(canaries)
        for n in needles_for(c.encode(), label=f"#{i}", kind="canary")
    )
    files = sorted(p for p in server.data_dir.rglob("*") if p.is_file())
    assert files
    for path in files:
        hits = scanner.scan(path.read_bytes())
        assert not hits, f"canary {hits[0].needle.label} in {path.name} ({hits[0].needle.encoding})"


async def test_shared_names_reach_members_and_joiners_never_the_server(
    server: ServerProcess, tmp_path: Path
) -> None:
    first, renamed, later = _canary("name"), _canary("renamed"), _canary("later")
    topic = _canary("topic")
    async with accounts(server, tmp_path, "alice", "bob", "carol", "dave") as clients:
        alice, bob, carol, dave = clients
        room = await alice.rooms.create_room(first)
        room_id = room.room_id
        await alice.rooms.invite(room_id, "bob")
        await alice.rooms.invite(room_id, "carol")
        for c in (bob, carol):
            await c.rooms.wait_epoch(room_id, 2)
            assert await _sees(c, room_id, first)

        # An admin's rename and topic: every member sees both, by the new name too.
        await alice.rooms.rename_room(room_id, renamed)
        done = await alice.rooms.set_topic(room_id, topic)
        assert done is not None
        for c in (alice, bob, carol):
            await c.rooms.wait_epoch(room_id, done.epoch)
            assert (c.rooms.name(room_id), c.rooms.topic(room_id)) == (renamed, topic)
            assert c.rooms.get(renamed).room_id == room_id

        # A member may not: a plain refusal, and the server refuses a forged commit.
        with pytest.raises(UsageError, match="only a room admin may rename"):
            await bob.rooms.rename_room(room_id, "mine")
        with pytest.raises(UsageError, match="only a room admin may set the room's topic"):
            await bob.rooms.set_topic(room_id, "mine")
        with pytest.raises(ServerError) as refused:
            await bob.rooms._link.request(
                _forged_rename(bob, room_id), frozenset({pr.ROOM_COMMITTED}), timeout=15
            )
        assert refused.value.code == "not_admin"

        # Added by a Welcome after the rename: dave is told the current name and topic,
        # and the invitation notice names the room by it.
        stream = dave.events()
        try:
            await alice.rooms.invite(room_id, "dave")
            await alice.rooms.announce_invite(room_id, "dave")
            while not isinstance(event := await stream.next(20), RoomInvited):
                pass
        finally:
            stream.close()
        assert (event.name, event.inviter) == (renamed, "alice")
        assert await _sees(dave, room_id, renamed, topic)

        # Removed, carol reads no later rename.
        removal = await alice.rooms.remove(room_id, "carol")
        assert removal is not None
        assert await carol.rooms.wait_until(lambda: carol.rooms.get(room_id).removed, 15)
        last = await alice.rooms.rename_room(room_id, later)
        assert last is not None
        for c in (bob, dave):
            await c.rooms.wait_epoch(room_id, last.epoch)
            assert await _sees(c, room_id, later, topic)
        await carol.sync()
        assert carol.rooms.name(room_id) == renamed

        # Back by token (an external commit): a member sends her the name key.
        token = await alice.rooms.create_token(room_id)
        await carol.rooms.join_with_token(token)
        assert await _sees(carol, room_id, later, topic)

        # An empty topic clears it, for every member.
        cleared = await alice.rooms.set_topic(room_id, "")
        assert cleared is not None
        assert await _sees(bob, room_id, later, "")

    _assert_blind(server, [first, renamed, later, topic])
