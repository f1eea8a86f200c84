"""`sottovoce room members|rename|topic|promote|demote|leave` as a user types them,
against the real server (each command its own process, as in test_rooms_cli.py): roles
are shown, a member's remove or rename ends in one plain line and a non-zero exit, an
admin's rename and topic reach every member, `rename --local` is this device's only, a
promoted member may remove, a leaver's list drops the room.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.client_helpers import make_account
from tests.integration.serverproc import ServerProcess
from tests.integration.test_rooms_cli import _ok, _room


def _fails(*args: str, home: Path) -> str:
    done = _room(*args, home=home)
    assert done.returncode != 0, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_room_roles_rename_and_leave(server: ServerProcess, tmp_path: Path) -> None:
    async def setup() -> str:
        """Three accounts in one room alice made (through the SDK: the CLI's own
        create and invite are test_rooms_cli.py's)."""
        alice, bob, carol = [await make_account(server, n, tmp_path)
                             for n in ("alice", "bob", "carol")]
        room = await alice.rooms.create_room("friends")
        await alice.rooms.invite("friends", "bob")
        await alice.rooms.invite("friends", "carol")
        await asyncio.gather(*(c.rooms.wait_epoch(room.room_id, 2) for c in (bob, carol)))
        await asyncio.gather(*(c.close() for c in (alice, bob, carol)))
        return room.room_id

    room_id = asyncio.run(setup())
    alice, bob, carol = (tmp_path / n for n in ("alice", "bob", "carol"))

    members = _ok(_room("members", room_id, home=bob)).splitlines()
    assert members[0].startswith("alice  admin  devices: ")
    assert members[1].startswith("bob  member  devices: ")
    assert len(members) == 3
    assert "only a room admin" in _fails("remove", room_id, "carol", home=bob)

    assert "renamed the room to 'old friends' for every member (room epoch 3)" in _ok(
        _room("rename", "friends", "old friends", home=alice)
    )
    assert "topic set for every member (room epoch 4)" in _ok(
        _room("topic", "old friends", "dinner on friday", home=alice)
    )
    # Only an admin renames for everyone (or sets the topic): one plain line for bob.
    assert "only a room admin may rename the room" in _fails(
        "rename", room_id, "mine", home=bob
    )
    # Anyone may rename a room for themselves; nobody else sees it.
    assert "on this device only" in _ok(_room("rename", "--local", room_id, "pals", home=bob))
    assert "bob is now an admin" in _ok(_room("promote", room_id, "bob", home=alice))
    listed = _ok(_room("list", home=bob))
    assert f"old friends [pals]  {room_id}" in listed and "mine" not in listed
    assert listed.rstrip().endswith("topic: dinner on friday")
    assert listed.count(room_id) == 1
    info = _ok(_room("info", "pals", home=bob)).splitlines()
    assert info[0].startswith(f"old friends  {room_id}")
    assert info[1] == "topic: dinner on friday"
    assert f"old friends  {room_id}" in _ok(_room("list", "--offline", home=alice))

    left = _ok(_room("leave", "old friends", home=carol))
    assert "left the room 'old friends'" in left
    assert "the next one to connect will" in left  # nobody else was online
    assert room_id not in _ok(_room("list", "--offline", home=carol))
    # The next commit of any member carries carol's self-remove.
    assert "bob is now a member" in _ok(_room("demote", room_id, "bob", home=alice))
    after = _ok(_room("members", room_id, home=alice))
    assert "carol" not in after and "bob  member" in after
