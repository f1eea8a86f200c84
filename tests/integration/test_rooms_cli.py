"""The `sottovoce room …` commands as a user types them, against the real server.

Accounts are made through the SDK (cheap Argon2 parameters, tests only); every
room command then runs as its own `python -m sottovoce` process, so the room
state must survive in each account's sealed store between commands.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess


def _room(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(SOTTOVOCE_HOME=str(home), SOTTOVOCE_PASSPHRASE=PASSPHRASE)
    return subprocess.run(
        [sys.executable, "-m", "sottovoce", "room", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def test_room_create_invite_send_join_audit(server: ServerProcess, tmp_path: Path) -> None:
    async def accounts() -> None:
        for name in ("alice", "bob", "carol"):
            client = await make_account(server, name, tmp_path)
            await client.close()

    asyncio.run(accounts())
    alice, bob, carol = (tmp_path / n for n in ("alice", "bob", "carol"))

    out = _ok(_room("create", "friends", home=alice))
    (room_id,) = re.findall(r"room:[0-9a-f]{32}", out)
    assert "created room 'friends'" in out
    assert "invited bob" in _ok(_room("invite", "friends", "bob", home=alice))
    sent = _ok(_room("send", "friends", "hello from the cli room", home=alice))
    assert "✓ sent to friends" in sent

    listed = _ok(_room("list", home=bob))
    assert room_id in listed and "alice" in listed and "bob" in listed
    history = _ok(_room("history", room_id, home=bob))
    assert "alice: hello from the cli room" in history

    token_out = _ok(_room("token", "friends", home=alice))
    token = token_out.splitlines()[1].strip()
    assert len(token) == 43
    joined = _ok(_room("join", "--name", "club", "--", token, home=carol))
    assert f"joined room 'club' ({room_id}" in joined
    _ok(_room("send", "club", "carol says hi", home=carol))
    assert "carol: carol says hi" in _ok(_room("history", "friends", home=alice))

    audit = _ok(_room("audit", "friends", home=alice))
    assert "room created" in audit and "member added bob/" in audit
    assert "token created" in audit and "member joined" in audit
    assert re.search(r"✓ \d+ entries verified", audit)

    db = sqlite3.connect(server.db_path)
    try:
        with db:
            db.execute(
                "DELETE FROM room_audit WHERE idx = 1 AND room = "
                "(SELECT room FROM rooms WHERE room_id = ?)",
                (room_id,),
            )
    finally:
        db.close()
    bad = _room("audit", "friends", home=alice)
    assert bad.returncode == 3
    assert "audit entry #1" in bad.stderr and "INVALID" in bad.stderr

    help_text = subprocess.run(
        [sys.executable, "-m", "sottovoce", "room", "invite", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "example:" in help_text and "sottovoce room invite" in help_text


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_room_chat_in_tmux(server: ServerProcess, tmp_path: Path) -> None:
    from tests.integration.test_tui import Tmux

    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    tmux = Tmux()
    try:
        room = await alice.rooms.create_room("friends")
        await alice.rooms.invite("friends", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        await alice.rooms.send("friends", "from the store")
        await alice.close()
        passfile = tmp_path / "passphrase"
        passfile.write_text(PASSPHRASE + "\n")
        tmux.start(
            f"env -u COLUMNS -u LINES {sys.executable} -m sottovoce chat friends "
            f"--data-dir {tmp_path / 'alice'} --passphrase-file {passfile}; "
            "echo EXIT=$?; sleep 60"
        )
        await tmux.wait_for("in #friends (2 members: alice, bob) · connected")
        await tmux.wait_for("you: from the store ✓")
        tmux.keys("hello room from tmux", "Enter")
        await tmux.wait_for("you: hello room from tmux ✓")
        ok = await bob.rooms.wait_until(
            lambda: any(m.text == "hello room from tmux" for m in bob.rooms.history(room.room_id))
        )
        assert ok
        await bob.rooms.send(room.room_id, "bob answers the room")
        await tmux.wait_for("bob: bob answers the room")
        tmux.keys("C-q")
        await tmux.wait_for("EXIT=0")
    finally:
        tmux.kill()
        await bob.close()
