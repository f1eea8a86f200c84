"""A room's rules through the real server and real clients (docs/architecture.md §Rooms,
"Room rules"): the creator is admin; a member's remove of another member, or a change of the
room's profile, is refused by the server and cannot block the room; admins promote and
demote; every member sees the same roles, and the server never the room's name; a member
leaves by a self-remove proposal another member commits, and reads nothing sent after.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from pathlib import Path

import pytest

from sottovoce.client import Client
from sottovoce.client.errors import ServerError
from sottovoce.client.events import RoomInvited
from sottovoce.client.ids import new_id, now_ms
from sottovoce.client.rooms.rules import profile
from sottovoce.client.store import TEST_KDF
from sottovoce.errors import UsageError
from sottovoce.mls.common import WireFormat
from sottovoce.mls.config import GroupConfig
from sottovoce.mls.group import Group
from sottovoce.mls.messages import GroupContextExtensions
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.room_rules import RoomProfile, with_profile
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess
from tests.integration.test_rooms_e2e import close_all, members, room_messages


async def _three(
    server: ServerProcess, root: Path, label: str = "team"
) -> tuple[Client, Client, Client, str]:
    alice, bob, carol = await asyncio.gather(
        *(make_account(server, n, root) for n in ("alice", "bob", "carol"))
    )
    room = await alice.rooms.create_room(label)
    await alice.rooms.invite(label, "bob")
    await alice.rooms.invite(label, "carol")
    await asyncio.gather(*(c.rooms.wait_epoch(room.room_id, 2) for c in (bob, carol)))
    return alice, bob, carol, room.room_id


def _forge(client: Client, room_id: str, build: str, *, private: bool = False) -> pr.RoomCommit:
    """A commit made straight from a copy of ``client``'s group, past every client-side
    check: what a modified client could send."""
    group = client.rooms.get(room_id).group
    assert group is not None
    copy = Group.from_state(group.to_state())
    if private:  # a test double: the same group, handshakes as PrivateMessages
        copy._state = replace(
            copy._state,
            config=GroupConfig(handshake_wire_format=WireFormat.PRIVATE_MESSAGE),
        )
    carol = next(m.index for m in copy.members() if m.credential.identity.startswith(b"carol/"))
    if build == "remove":
        bundle = copy.remove_members([carol], rng=secrets.token_bytes, now_ms=now_ms())
        removes = tuple(
            pr.MemberRef(userId=u, deviceId=d) for u, d in members(client, room_id)
            if u == "carol"
        )
    else:
        current = profile(client.rooms.get(room_id))
        assert current is not None
        seized = RoomProfile(("bob",), current.sealed)
        ext = with_profile(copy.group_context.extensions, seized)
        bundle = copy.commit(rng=secrets.token_bytes, now_ms=now_ms(),
                             proposals=[GroupContextExtensions(extensions=ext)])
        removes = ()
    return pr.RoomCommit(
        roomId=room_id, epoch=copy.epoch, messageId=new_id(), idempotencyKey=new_id(),
        commit=bundle.commit, removes=removes,
        groupInfo=copy.staged_group_info(bundle.staged),
    )


async def _refused(client: Client, request: pr.RoomCommit) -> ServerError:
    with pytest.raises(ServerError) as caught:
        await client.rooms._link.request(
            request, frozenset({pr.ROOM_COMMITTED}), timeout=15
        )
    return caught.value


async def test_a_members_remove_is_refused_and_cannot_block_the_room(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, carol, room_id = await _three(server, tmp_path)
    clients = [alice, bob, carol]
    try:
        assert alice.rooms.roles(room_id) == {"alice": "admin", "bob": "member",
                                              "carol": "member"}
        with pytest.raises(ServerError) as caught:
            await bob.rooms.remove(room_id, "carol")
        assert caught.value.code == "not_admin"
        # Forged commits straight to the server: a remove, a seized profile, and a
        # commit the server cannot read (PrivateMessage).
        refused = await _refused(bob, _forge(bob, room_id, "remove"))
        assert refused.code == "not_admin"
        refused = await _refused(bob, _forge(bob, room_id, "profile"))
        assert refused.code == "not_admin"
        refused = await _refused(bob, _forge(bob, room_id, "remove", private=True))
        assert refused.code == "invalid_commit"
        # alice's own (admin) commit, relayed by bob: the leaf that signed it is not his.
        relayed = _forge(alice, room_id, "remove")
        refused = await _refused(bob, relayed)
        assert refused.code == "invalid_commit" and "not this device's" in refused.message
        with pytest.raises(UsageError):
            await bob.rooms.promote(room_id, "bob")
        # Nothing stalled: the next valid commits, a member's own update and a member's
        # invite, go through.
        result = await bob.rooms.self_update(room_id)
        assert result is not None and result.epoch == 3
        dave = await make_account(server, "dave", tmp_path)
        clients.append(dave)
        invited = await bob.rooms.invite(room_id, "dave")
        assert invited is not None and invited.epoch == 4
        await asyncio.gather(*(c.rooms.wait_epoch(room_id, 4) for c in (alice, carol, dave)))
        assert dave.rooms.roles(room_id)["alice"] == "admin"
        assert len({c.rooms.epoch_authenticator(room_id) for c in (alice, bob, carol)}) == 1
        assert ("carol", carol.device_id) in members(alice, room_id)
        # The admin's remove works.
        removal = await alice.rooms.remove(room_id, "carol")
        assert removal is not None
        await carol.rooms.wait_until(lambda: carol.rooms.get(room_id).removed)
        await bob.rooms.wait_epoch(room_id, removal.epoch)
        assert {u for u, _ in members(bob, room_id)} == {"alice", "bob", "dave"}
    finally:
        await close_all(clients)


def _server_bytes(server: ServerProcess) -> bytes:
    """Every file the server keeps (its SQLite database, WAL included, and logs)."""
    files = sorted(p for p in server.data_dir.rglob("*") if p.is_file())
    return b"".join(p.read_bytes() for p in files)


async def test_every_member_sees_the_same_roles_and_the_server_no_name(
    server: ServerProcess, tmp_path: Path
) -> None:
    canary = f"canary-{secrets.token_hex(8)}"
    alice, bob, carol, room_id = await _three(server, tmp_path, canary)
    try:
        last = await alice.rooms.promote(room_id, "bob")
        assert last is not None
        for c in (alice, bob, carol):
            await c.rooms.wait_epoch(room_id, last.epoch)
            assert c.rooms.roles(room_id) == {
                "alice": "admin", "bob": "admin", "carol": "member"
            }
            # Every member sees the shared name; the profile holds it only sealed.
            assert c.rooms.name(room_id) == canary
            shared = profile(c.rooms.get(room_id))
            assert shared is not None and canary.encode() not in shared.encode()
        # A local name is this device's own: bob's changes nobody else's, nor the
        # shared name he is shown.
        bob.rooms.rename(room_id, "ours")
        assert (bob.rooms.name(room_id), alice.rooms.get(room_id).label) == (canary, canary)
        assert bob.rooms.get("ours").room_id == room_id
        # An invitee is told the shared name, inside the room's encryption.
        dave = await make_account(server, "dave", tmp_path)
        stream = dave.events()
        try:
            await alice.rooms.invite(room_id, "dave")
            await alice.rooms.announce_invite(room_id, "dave")
            while not isinstance(event := await stream.next(20), RoomInvited):
                pass
        finally:
            stream.close()
            await dave.close()
        assert (event.name, event.inviter, event.label) == (canary, "alice", canary)
        # bob, now admin, may remove; then alice demotes him.
        removal = await bob.rooms.remove(room_id, "carol")
        assert removal is not None
        demoted = await alice.rooms.demote(room_id, "bob")
        assert demoted is not None
        await bob.rooms.wait_epoch(room_id, demoted.epoch)
        assert bob.rooms.roles(room_id) == {"alice": "admin", "bob": "member", "dave": "member"}
        # The server holds the room (its id, its group info) but never its name.
        stored = _server_bytes(server)  # (a failure names no server bytes: keys are there)
        held, leaked = room_id.encode() in stored, canary.encode() in stored
        assert held and not leaked
    finally:
        await close_all([alice, bob, carol])


async def test_a_leaver_reads_nothing_sent_after_it_left(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, carol = await asyncio.gather(
        *(make_account(server, n, tmp_path) for n in ("alice", "bob", "carol"))
    )
    tablet = await carol.add_device(tmp_path / "carol-tablet", PASSPHRASE, kdf=TEST_KDF)
    room = await alice.rooms.create_room("team")
    room_id = room.room_id
    await alice.rooms.invite(room_id, "bob")
    await alice.rooms.invite(room_id, "carol")  # both of carol's devices
    try:
        await asyncio.gather(*(c.rooms.wait_epoch(room_id, 2) for c in (bob, carol, tablet)))
        await alice.rooms.send(room_id, "before carol left")
        assert await room_messages(carol, room_id, 1) == ["before carol left"]
        assert await carol.rooms.leave(room_id)  # a member committed it meanwhile
        gone = carol.rooms.get(room_id)
        assert gone.removed and gone.group is None  # its keys are gone at once
        # Another member commits carol's self-remove (no admin needed).
        for c in (alice, bob):
            assert await c.rooms.wait_until(
                lambda c=c: "carol" not in {u for u, _ in members(c, room_id)}, 20
            )
        await alice.rooms.send(room_id, "after carol left")
        assert await room_messages(bob, room_id, 2) == ["before carol left", "after carol left"]
        await carol.sync()
        assert [m.text for m in carol.rooms.history(room_id) if m.text.startswith("after")] == []
        info = await alice.rooms.info(room_id)
        assert "carol" not in {m["userId"] for m in info["members"]}
        # carol's other device was removed by the same commit: it left too.
        assert await tablet.rooms.wait_until(lambda: tablet.rooms.get(room_id).removed, 20)
    finally:
        await close_all([alice, bob, carol, tablet])
