"""`sottovoce timer` and `sottovoce room timer` as a user types them, against the real
server; `history` and `room history` show the timer changes and each message's time left."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(SOTTOVOCE_HOME=str(home), SOTTOVOCE_PASSPHRASE=PASSPHRASE)
    return subprocess.run(
        [sys.executable, "-m", "sottovoce", *args], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def test_timer_commands_and_history(server: ServerProcess, tmp_path: Path) -> None:
    async def accounts() -> str:
        alice = await make_account(server, "alice", tmp_path)
        bob = await make_account(server, "bob", tmp_path)
        room = await alice.rooms.create_room("team")
        await alice.rooms.invite("team", "bob")
        await alice.close()
        await bob.close()
        return room.room_id

    room_id = asyncio.run(accounts())
    alice, bob = tmp_path / "alice", tmp_path / "bob"

    assert _ok(_cli("timer", "bob", "1h", home=alice)) == (
        "disappearing messages with bob: 1 h after sending\n")
    _ok(_cli("send", "bob", "fading words", home=alice))
    history = _ok(_cli("history", "alice", home=bob))
    assert re.search(r"^\d\d:\d\d — alice set disappearing messages to 1 h$", history, re.M)
    assert re.search(r"^\d\d:\d\d alice: fading words ⏱ (59|60) min left$", history, re.M)
    assert _ok(_cli("timer", "alice", home=bob)) == (
        "disappearing messages with alice: 1 h (set by alice)\n")

    wrong = _cli("timer", "bob", "2m", home=alice)
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.strip() == (
        "sottovoce: error: a timer is one of off, 5s, 1m, 1h, 1d, 1w (not '2m')")

    assert _ok(_cli("room", "timer", "team", "1d", home=alice)) == (
        "disappearing messages with team: 1 day after sending\n")
    assert _ok(_cli("room", "timer", "team", home=alice)) == (
        "disappearing messages in team: 1 day (set by you)\n")
    room_history = _ok(_cli("room", "history", room_id, home=bob))
    assert "— alice set disappearing messages to 1 day" in room_history
    assert _ok(_cli("timer", "bob", "off", home=alice)) == (
        "disappearing messages with bob: off\n")

    server.stop()  # no server: the timer message is queued (exit 75), as `send` does
    queued = _cli("timer", "bob", "5s", "--timeout", "2", home=alice)
    assert queued.returncode == 75, (queued.stdout, queued.stderr)
    assert queued.stdout.startswith("disappearing messages with bob: 5 s after sending\n"
                                    "queued for bob")
