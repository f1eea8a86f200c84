"""Room settings and SFU regions (docs/calls.md, "Regions"; docs/protocol.md, "Room
settings"): only the room's admin changes a setting, every member sees it, each change
is an entry of the room's audit trail, and a room pinned to a region gets grants only
from that region's SFUs -- or a typed refusal when none of them is up.

One real Janus stands for two regions: the server is given it under two URLs that
differ in their path (Janus's WebSocket transport ignores the path), so the grant's
URL says which label it came from. A third region's URL is a port nobody listens on:
an SFU that is down.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sottovoce.client import Client, ServerError
from sottovoce.errors import UsageError
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.audit import AuditAction
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.janus_helpers import Janus
from tests.integration.serverproc import ServerProcess


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nobody listens there


class Regions:
    def __init__(self, janus: Janus) -> None:
        self.eu = janus.ws_url + "eu"
        self.ch = janus.ws_url + "ch"
        self.us = f"ws://127.0.0.1:{_dead_port()}/"

    def option(self) -> str:
        return f"eu={self.eu},ch={self.ch},us={self.us}"


@pytest.fixture
def regions(janus: Janus) -> Regions:
    return Regions(janus)


@pytest.fixture
def region_server(janus: Janus, regions: Regions, tmp_path: Path) -> Iterator[ServerProcess]:
    key = janus.key_file(tmp_path)
    args = ["--sfu", regions.option(), "--sfu-key-file", str(key)]
    srv = ServerProcess(tmp_path / "server", extra_args=args).start()
    try:
        yield srv
    finally:
        srv.stop()


async def grant_urls(clients: list[Client], room_id: str, calls: int) -> set[str]:
    """Where ``calls`` new calls of the room are granted (each device may ask 10 times
    in a burst: the asks go round the members)."""
    urls = set()
    for i in range(calls):
        granted = await clients[i % len(clients)]._ask_sfu_grant(
            room_id, secrets.token_bytes(16)
        )
        urls.add(granted["url"])
    return urls


async def test_a_pinned_room_gets_grants_from_its_region_only_and_is_refused_when_it_is_down(
    region_server: ServerProcess, regions: Regions, tmp_path: Path
) -> None:
    alice = await make_account(region_server, "alice", tmp_path)
    bob = await make_account(region_server, "bob", tmp_path)
    try:
        room = await alice.rooms.create_room("eu-room")
        await alice.rooms.invite(room.room_id, "bob")
        await bob.rooms.wait_epoch(room.room_id, 1, timeout=20)
        # Without the setting: pinned by hash over every SFU, failing over from the dead one.
        assert (await bob.rooms.info(room.room_id))["residency"] is None
        assert await grant_urls([alice, bob], room.room_id, 4) <= {regions.eu, regions.ch}

        # Bob is a member, not the admin: refused, and nothing changes.
        with pytest.raises(ServerError) as refused:
            await bob.rooms.set_setting(room.room_id, "residency", "ch")
        assert refused.value.code == "not_admin"
        with pytest.raises(UsageError):
            await alice.rooms.set_setting(room.room_id, "residency", "EU!")
        # The server checks too: a value outside the setting's values, and an audit
        # entry that states another change than the one asked, are refused.
        own = alice.rooms.get(room.room_id)
        for setting, value, stated, code in (
            ("recorder", "maybe", ("recorder", "maybe"), "bad_request"),
            ("residency", "ch", ("residency", "eu"), "invalid_audit_entry"),
            ("recorder", "on", ("recorder", "off"), "invalid_audit_entry"),
        ):
            with pytest.raises(ServerError) as wrong:
                await alice.rooms._audit.with_entry(
                    own, AuditAction.ROOM_SETTING,
                    lambda entry, s=setting, v=value: pr.RoomSettingSet(  # type: ignore[misc]
                        roomId=room.room_id, setting=s, value=v, audit=entry),
                    pr.ROOM_SETTING_UPDATED, (stated,),
                )
            assert wrong.value.code == code
        assert (await bob.rooms.info(room.room_id))["recorder"] is False

        await alice.rooms.set_setting(room.room_id, "residency", "eu")
        info = await bob.rooms.info(room.room_id)
        assert (info["admin"], info["residency"], info["recorder"]) == ("alice", "eu", False)
        assert await grant_urls([alice, bob], room.room_id, 4) == {regions.eu}
        await alice.rooms.set_setting(room.room_id, "residency", "ch")
        assert await grant_urls([alice, bob], room.room_id, 4) == {regions.ch}

        # Pinned to a region whose only SFU is down: refused, never moved elsewhere.
        await alice.rooms.set_setting(room.room_id, "residency", "us")
        for member in (alice, bob):
            with pytest.raises(ServerError) as down:
                await member._ask_sfu_grant(room.room_id, secrets.token_bytes(16))
            assert down.value.code == "sfu_region_unavailable"
        # A region no SFU of this server has: the same refusal.
        await alice.rooms.set_setting(room.room_id, "residency", "mars")
        with pytest.raises(ServerError) as nowhere:
            await bob._ask_sfu_grant(room.room_id, secrets.token_bytes(16))
        assert nowhere.value.code == "sfu_region_unavailable"

        await alice.rooms.set_setting(room.room_id, "residency", "none")
        assert (await bob.rooms.info(room.room_id))["residency"] is None
        # Every change is in the signed trail, as every member verifies it.
        trail = await bob.rooms.audit(room.room_id)
        changes = [(e.actor_user_id, e.subjects[0].device_id) for e in trail
                   if e.action is AuditAction.ROOM_SETTING]
        assert changes == [("alice", "eu"), ("alice", "ch"), ("alice", "us"),
                           ("alice", "mars"), ("alice", "none")]
        await alice.rooms.set_setting(room.room_id, "residency", "us")
    finally:
        await asyncio.gather(alice.close(), bob.close(), return_exceptions=True)
    # `room call` in a room whose region is down: a plain refusal, exit 1, no mesh.
    done = await asyncio.to_thread(
        _room, "call", room.room_id, "--loopback", "--seconds", "1", home=tmp_path / "alice"
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "region 'us'" in done.stderr and "not moved out of the region" in done.stderr
    assert "Traceback" not in done.stderr and "mesh" not in done.stdout


def _room(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(SOTTOVOCE_HOME=str(home), SOTTOVOCE_PASSPHRASE=PASSPHRASE)
    return subprocess.run([sys.executable, "-m", "sottovoce", "room", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def test_room_set_info_and_audit_from_the_command_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    async def accounts() -> str:
        alice = await make_account(server, "alice", tmp_path)
        bob = await make_account(server, "bob", tmp_path)
        room = await alice.rooms.create_room("friends")
        await alice.rooms.invite(room.room_id, "bob")
        await bob.rooms.wait_epoch(room.room_id, 1, timeout=20)
        await asyncio.gather(alice.close(), bob.close())
        return room.room_id

    room_id = asyncio.run(accounts())
    alice, bob = tmp_path / "alice", tmp_path / "bob"

    out = _ok(_room("set", "friends", "--residency", "eu", "--recorder", "on", home=alice))
    assert "friends: data residency: eu" in out and "friends: recorder: on" in out
    info = _ok(_room("info", room_id, home=bob))
    assert "admin: alice" in info and "data residency: eu" in info
    assert "recorder: on" in info and re.search(r"members: .*alice/.*bob/", info)
    audit = _ok(_room("audit", room_id, home=bob))
    assert re.search(r"alice/\S+: room setting data residency: eu", audit)
    assert re.search(r"alice/\S+: room setting recorder: on", audit)

    # Mistakes: plain one-line messages, non-zero exits, no traceback.
    refused = _room("set", room_id, "--residency", "ch", home=bob)
    assert refused.returncode == 1 and "admin" in refused.stderr
    assert "Traceback" not in refused.stderr
    for bad in (["--residency", "Not A Region"], []):
        done = _room("set", "friends", *bad, home=alice)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert done.stderr.strip(), done
    assert _room("set", "friends", "--recorder", "maybe", home=alice).returncode == 2
    assert "data residency: eu" in _ok(_room("info", "friends", home=alice))
    _ok(_room("set", "friends", "--residency", "none", home=alice))
    assert "data residency: none (any SFU)" in _ok(_room("info", room_id, home=bob))

    # Every --help line of the two commands.
    set_help = _ok(_room("set", "--help", home=alice))
    flat = " ".join(set_help.split())
    for line in ("--residency REGION", "('none': any SFU)", "--recorder {on,off}",
                 "Only the room's admin", "sottovoce room set friends --residency eu",
                 "never moved out of it"):
        assert line in flat, line
    info_help = _ok(_room("info", "--help", home=alice))
    assert "admin, data residency, recorder" in " ".join(info_help.split())
    assert "sottovoce room info friends" in info_help
