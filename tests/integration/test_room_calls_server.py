"""Room calls wired end to end: the real server (``--sfu``) and a real Janus on 127.0.0.1,
SDK clients in rooms of their own (docs/calls.md, "Room calls").

The engines (the call's MLS group, SFrame, the SFU driver) have their own tests;
these check the wiring: signals travel as MLS application messages of the room,
grants come from the server only for current members of the room's group, a
member the room removes has its feed kicked, and without an SFU the fifth
participant is told one is needed. Video is 320x240 at 15 fps.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from sottovoce.calls.errors import SfuRequired
from sottovoce.calls.room_effects import JoinRefused
from sottovoce.calls.room_signals import CallMode
from sottovoce.client import Client, ServerError
from sottovoce.client.calls.room_controller import RoomCallController, RoomCallOptions
from sottovoce.client.calls.sources import MediaSpec
from sottovoce.server.sfu import (
    JanusConnection,
    sfu_feed_id,
    sfu_room_name,
    sfu_room_secret,
)
from tests.integration.calls_cli_helpers import Cli, run, start
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.janus_helpers import Janus
from tests.integration.room_calls_helpers import (
    LOOPBACK,
    events_of,
    sent_and_decoded,
    watch_published,
)
from tests.integration.serverproc import ServerProcess
from tests.integration.test_tui import Tmux

QUIET = RoomCallOptions(media=MediaSpec(audio=False, video=False), ice=LOOPBACK.ice)


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def room_of(names: list[str], server: ServerProcess, root: Path) -> tuple[list[Client], str]:
    """Accounts for ``names``, the first one's room with all of them in it."""
    clients = list(await asyncio.gather(*(make_account(server, n, root) for n in names)))
    room = await clients[0].rooms.create_room("call-room")
    for name in names[1:]:
        await clients[0].rooms.invite(room.room_id, name)
    for c in clients[1:]:
        await c.rooms.wait_epoch(room.room_id, len(names) - 1, timeout=20)
    return clients, room.room_id


async def call_in(
    clients: list[Client], room_id: str, options: Iterable[RoomCallOptions]
) -> list[RoomCallController]:
    """The first client starts a call in the room, the others join it once they see it."""
    hubs = [c.start_room_calls(o) for c, o in zip(clients, options, strict=True)]
    ctls = [await hubs[0].start(room_id)]
    for hub in hubs[1:]:
        await until(lambda h=hub: room_id in h.seen)  # type: ignore[misc]
        ctls.append(hub.join(room_id))
    return ctls


def numbers(ctl: RoomCallController, who: tuple[str, str]) -> set[int]:
    return set() if ctl.media is None else ctl.media.sink(who, "camera").numbers


async def close_all(clients: Iterable[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def feeds_in(janus: Janus, key_room: str, call_id: bytes) -> set[str]:
    """The publisher ids in the call's VideoRoom, asked of Janus itself."""
    conn = await JanusConnection.open(janus.ws_url, rng=secrets.token_bytes)
    try:
        data = await conn.call({
            "request": "listparticipants",
            "room": sfu_room_name(janus.admin_key, key_room, call_id),
            "secret": sfu_room_secret(janus.admin_key, key_room, call_id).expose().decode(),
        })
    finally:
        await conn.close()
    return {p["id"] for p in data.get("participants", []) if isinstance(p, dict)}


async def test_a_call_of_three_through_the_servers_sfu_then_a_removed_member_is_kicked(
    sfu_server: ServerProcess, janus: Janus, tmp_path: Path
) -> None:
    clients, room_id = await room_of(["alice", "bob", "carol", "dave"], sfu_server, tmp_path)
    alice, bob, carol, dave = clients
    try:
        ctls = await call_in([alice, bob, carol], room_id, [LOOPBACK] * 3)
        devices = [(c.username, c.device_id) for c in (alice, bob, carol)]
        await until(lambda: all(len(c.participants) == 3 for c in ctls))
        assert all(c.call.mode is CallMode.SFU for c in ctls)
        # The participants come from the call's MLS group: dave, in the room, is not in it.
        assert all(set(c.participants) == set(devices) for c in ctls)
        pairs = [(x, w) for x in ctls for w in devices if w != x.call.me]
        await until(lambda: all(numbers(x, w) for x, w in pairs), 30)
        sent = {c.call.me: watch_published(c) for c in ctls}
        judged = await sent_and_decoded({(x, w): sent[w] for x, w in pairs},
                                        lambda pair: numbers(*pair), frames=45)
        for (x, w), (window, got) in judged.items():
            assert len(got) >= 0.95 * len(window), (x.call.me, w, sorted(window - got))
        call_id = ctls[0].call.call_id
        carol_feed = sfu_feed_id(janus.admin_key, room_id, call_id, devices[2])
        assert carol_feed in await feeds_in(janus, room_id, call_id)

        # The room removes carol: the server revokes her grant and kicks her feed.
        await alice.rooms.remove(room_id, "carol")
        await until(lambda: len(ctls[0].participants) == 2, 30)
        for _ in range(100):
            if carol_feed not in await feeds_in(janus, room_id, call_id):
                break
            await asyncio.sleep(0.1)
        assert carol_feed not in await feeds_in(janus, room_id, call_id)
        with pytest.raises(ServerError) as refused:
            await carol._ask_sfu_grant(room_id, call_id)
        assert refused.value.code == "sfu_not_member"
        # Dave, still a member, would get one; an account outside the room never does.
        assert (await dave._ask_sfu_grant(room_id, call_id))["url"] == janus.ws_url
    finally:
        await close_all(clients)


async def test_an_account_outside_the_room_gets_no_grant(
    sfu_server: ServerProcess, tmp_path: Path
) -> None:
    (alice,), room_id = await room_of(["alice"], sfu_server, tmp_path)
    mallory = await make_account(sfu_server, "mallory", tmp_path)
    try:
        for room in (room_id, "room:" + "0" * 32):  # someone else's room, no room at all
            with pytest.raises(ServerError) as refused:
                await mallory._ask_sfu_grant(room, secrets.token_bytes(16))
            assert refused.value.code == "sfu_not_member"
    finally:
        await close_all([alice, mallory])


async def test_without_an_sfu_a_room_calls_as_a_mesh_and_the_fifth_is_told_to_use_one(
    server: ServerProcess, tmp_path: Path
) -> None:
    names = ["alice", "bob", "carol", "dave", "erin"]
    clients, room_id = await room_of(names, server, tmp_path)
    try:
        with pytest.raises(ServerError) as no_sfu:
            await clients[0]._ask_sfu_grant(room_id, secrets.token_bytes(16))
        assert no_sfu.value.code == "sfu_unavailable"
        erin = clients[4].start_room_calls(QUIET)  # before the call starts: it sees the start
        ctls = await call_in(clients[:4], room_id, [QUIET] * 4)
        await until(lambda: all(len(c.participants) == 4 for c in ctls), 40)
        assert all(c.call.mode is CallMode.MESH for c in ctls)
        await until(lambda: room_id in erin.seen)
        fifth = erin.join(room_id)
        await until(lambda: any(isinstance(e, JoinRefused) for e in events_of(fifth)), 30)
        refused = next(e for e in events_of(fifth) if isinstance(e, JoinRefused))
        assert isinstance(refused.error, SfuRequired)
        assert refused.error.code == "call_sfu_required"
        assert fifth.participants == () and len(ctls[0].participants) == 4
    finally:
        await close_all(clients)


async def test_room_call_from_the_cli_three_processes_and_a_refused_recording(
    sfu_server: ServerProcess, tmp_path: Path
) -> None:
    clients, room_id = await room_of(["alice", "bob", "carol"], sfu_server, tmp_path)
    await close_all(clients)  # each account is opened again by its own command
    alice, bob, carol = (tmp_path / n for n in ("alice", "bob", "carol"))
    common = ("room", "call", room_id, "--loopback")
    running: list[Cli] = []
    try:
        # Alice and Bob stay until Carol has left (Ctrl-C), however slowly a loaded
        # machine starts Carol's process: Bob must still be there to refuse.
        a = start(alice, *common, "--new", "--allow-recording")
        running.append(a)
        a.wait_for(r"in the call: E2EE on, epoch 0")
        assert "through the server's SFU" in a.stdout()
        b = start(bob, *common)  # refuses recordings (the default)
        running.append(b)
        b.wait_for(r"in the call: E2EE on, epoch \d+")
        c = start(carol, *common, "--seconds", "8", "--record", "--record-to",
                  str(tmp_path / "carol.rec"))
        running.append(c)
        c.wait_for(r"participants \(3, epoch \d+\)", 60)
        assert await asyncio.to_thread(c.finish, 90) == 0, c.stderr()
        for cli in (b, a):
            cli.proc.send_signal(signal.SIGINT)
            assert await asyncio.to_thread(cli.finish, 90) == 0, cli.stderr()
    finally:
        for cli in running:
            if cli.proc.poll() is None:
                cli.proc.kill()
    said = {name: cli.stdout() + cli.stderr() for name, cli in zip("abc", running, strict=True)}
    assert "recording refused (bob/" in said["c"], said["c"]
    assert "REC on" not in said["a"] + said["b"]
    frames = {
        (name, m.group(2)): int(m.group(1))
        for name, text in said.items()
        for m in re.finditer(r"received (\d+) camera frames .* from (\w+)/", text)
    }
    # Carol, 8 s in the call, decoded the others' 15 fps; nothing failed to open.
    assert frames[("c", "alice")] >= 60 and frames[("c", "bob")] >= 60, said["c"]
    assert frames[("a", "bob")] >= 60 and frames[("b", "alice")] >= 60, said
    assert all(
        int(n) == 0 for n in re.findall(r"; (\d+) did not open", "".join(said.values()))
    ), said
    assert not (tmp_path / "carol.rec").exists()  # nothing recorded without everyone's yes


async def test_room_call_mistakes_are_plain_messages_and_a_nonzero_exit(
    server: ServerProcess, tmp_path: Path
) -> None:
    await (await make_account(server, "alice", tmp_path)).close()
    home = tmp_path / "alice"
    cases = [
        (("nosuch",), "no room 'nosuch' on this device"),
        (("r", "--record"), "--record needs --record-to FILE"),
        (("r", "--media", str(tmp_path / "none.webm")), "cannot use the media file"),
        (("r", "--record", "--record-to", str(tmp_path / "no" / "x.rec")), "no such directory"),
        (("r", "--seconds", "-1"), "--seconds"),
    ]
    for args, message in cases:
        done = await asyncio.to_thread(run, home, "room", "call", *args)
        assert done.returncode in (1, 2), (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_the_chat_screen_of_a_room_joins_its_call_with_f5_and_leaves_with_f6(
    server: ServerProcess, tmp_path: Path
) -> None:
    (alice, bob), room_id = await room_of(["alice", "bob"], server, tmp_path)
    await alice.close()
    tmux = Tmux()
    try:
        hub = bob.start_room_calls(QUIET)
        ctl = await hub.start(room_id)
        await until(lambda: len(ctl.participants) == 1)
        passfile = tmp_path / "passphrase"
        passfile.write_text(PASSPHRASE + "\n")
        tmux.start(
            f"env -u COLUMNS -u LINES {sys.executable} -m sottovoce chat '#{room_id}' "
            f"--loopback --data-dir {tmp_path / 'alice'} --passphrase-file {passfile}; "
            "echo EXIT=$?; sleep 60"
        )
        await tmux.wait_for("connected")
        tmux.keys("F5")
        # What the call's MLS group says: its epoch after alice's join, both of them.
        screen = await tmux.wait_for("E2EE on, epoch 1", timeout=30)
        line = next(row for row in screen.splitlines() if "E2EE on" in row)
        assert "2 in call:" in line and "alice" in line and "bob" in line, line
        assert "call signal" not in screen  # the signals stay out of the room's history
        await until(lambda: len(ctl.participants) == 2)
        tmux.keys("F6")
        await tmux.wait_for("left the room's call")
        await until(lambda: len(ctl.participants) == 1, 30)
        tmux.keys("C-q")
        await tmux.wait_for("EXIT=0")
    finally:
        tmux.kill()
        await bob.close()
