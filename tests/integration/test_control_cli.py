"""The control-message commands as a user types them (cli/control_cmd.py): `history
--ids`, `send --reply-to`, `edit`, `react`, `delete --for-everyone`, `account settings`,
`room react`, and the plain one-line refusals; `listen` printing edits, deletes and
reactions as they arrive.

The accounts are made with the SDK (cheap key derivation); every step after that is
a `sottovoce` process against the real server.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sottovoce.client import Client
from tests.integration.client_helpers import PASSPHRASE, befriend, make_account
from tests.integration.serverproc import ServerProcess


def _cli(home: Path, *args: str, code: int = 0) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(SOTTOVOCE_HOME=str(home), SOTTOVOCE_PASSPHRASE=PASSPHRASE)
    done = subprocess.run(
        [sys.executable, "-m", "sottovoce", *args], env=env, capture_output=True, text=True,
        timeout=90, check=False,
    )
    assert done.returncode == code, (args, done.stdout, done.stderr)
    if code:  # one plain line (and argparse's hint on a usage mistake)
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == code, done.stderr
        return done.stderr
    return done.stdout


async def test_edit_react_reply_delete_and_settings_from_the_command_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    try:
        await befriend(alice, bob)  # receipts go to contacts only
        room = await alice.rooms.create_room("team")
        await alice.rooms.invite("team", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        first = await alice.send_text("bob", "hello bob")
        in_room = await alice.rooms.send("team", "hello team")
        assert await bob.rooms.wait_until(
            lambda: bob.message(first) is not None and bob.message(in_room) is not None, 15
        )

        def delivered() -> bool:  # live only: it must reach alice before she closes
            sent = alice.message(in_room)
            return sent is not None and alice.controls.view(sent).state == "delivered to 1"

        assert await alice.rooms.wait_until(delivered, 15)
    finally:
        await alice.close()
        await bob.close()
    a, b = tmp_path / "alice", tmp_path / "bob"

    line = _cli(b, "history", "alice", "--ids").strip()
    assert re.fullmatch(rf"\[{first[:8]}\] \d\d:\d\d alice: hello bob", line), line
    assert _cli(b, "send", "alice", "hi back", "--reply-to", first[:8]).startswith("✓ sent")
    mine = _cli(a, "history", "bob").splitlines()
    assert mine[0].endswith("you → bob: hello bob read"), mine  # bob's read receipt
    assert mine[1].endswith("bob: ↪ “hello bob” hi back"), mine

    assert _cli(a, "edit", "bob", first[:8], "hello, bob!").strip() == f"edited {first[:8]}"
    assert _cli(b, "react", "alice", first[:8], "👍").strip() == f"👍 added to {first[:8]}"
    shown = _cli(a, "history", "bob").splitlines()[0]
    assert shown.endswith("you → bob: hello, bob! (edited) 👍1 read"), shown
    assert "no message" in _cli(b, "delete", "alice", "zzzzzzzz", code=1)
    assert _cli(a, "delete", "bob", first, "--for-everyone").strip() == (
        f"deleted {first[:8]} for everyone"
    )
    theirs = _cli(b, "history", "alice")
    assert "alice: [deleted]" in theirs and "hello" not in theirs.splitlines()[0], theirs

    assert _cli(b, "account", "settings", "--read-receipts", "off").splitlines() == [
        "read receipts: off", "typing notices: on", "presence: on"
    ]
    assert _cli(b, "account", "settings", "--presence", "off").splitlines()[2] == "presence: off"
    assert "invalid on/off value" in _cli(b, "account", "settings", "--typing", "maybe", code=2)

    # The room form: a member's reaction, counted on the sender's side.
    assert _cli(b, "room", "react", room.room_id, in_room[:8], "🎉").startswith("🎉 added")
    assert "you: hello team 🎉1 delivered to 1" in _cli(a, "room", "history", "team")

    reopened = await Client.open(b, PASSPHRASE)
    try:
        assert reopened.controls.settings.read_receipts is False
        assert reopened.presence.enabled is False
    finally:
        await reopened.close()


class _Lines:
    """A process's stdout lines, read by a thread (a wait never blocks on a silent pipe)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(
            target=lambda: [self._queue.put(line.rstrip("\n")) for line in stdout], daemon=True
        ).start()

    def expect(self, wanted: list[str], timeout: float = 30) -> list[str]:
        """Lines until each of ``wanted`` was part of one (in any order)."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        left = list(wanted)
        while left and time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            lines.append(line)
            left = [w for w in left if w not in line]
        assert not left, (left, lines)
        return lines


async def test_listen_prints_edits_deletes_and_reactions_as_they_arrive(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    listener: subprocess.Popen[str] | None = None
    try:
        room = await alice.rooms.create_room("team")
        await alice.rooms.invite("team", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        first = await alice.send_text("bob", "hello bob")
        in_room = await alice.rooms.send("team", "hello team")
        assert await bob.rooms.wait_until(
            lambda: bob.message(first) is not None and bob.message(in_room) is not None, 15
        )
        label = "#" + bob.rooms.get(room.room_id).label  # bob's name for the room
        await bob.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
        env.update(SOTTOVOCE_HOME=str(tmp_path / "bob"), SOTTOVOCE_PASSPHRASE=PASSPHRASE)
        listener = subprocess.Popen(
            [sys.executable, "-u", "-m", "sottovoce", "listen"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        lines = _Lines(listener)
        await asyncio.to_thread(lines.expect, ["listening as bob"])
        await alice.controls.edit("bob", first, "hello, bob!")
        await alice.controls.react("bob", first, "👍")
        await alice.controls.edit("team", in_room, "hello, team!", room=True)
        await alice.controls.react("team", in_room, "🎉", room=True)
        await alice.controls.react("team", in_room, "🎉", room=True, remove=True)
        await alice.controls.delete("bob", first, for_everyone=True)
        shown = await asyncio.to_thread(lines.expect, [
            "~ alice edited: ", "alice: hello, bob! (edited)",
            "~ alice reacted 👍: ", "alice: hello, bob! (edited) 👍1",
            f"{label} ~ alice edited: ", "alice: hello, team! (edited)",
            f"{label} ~ alice reacted 🎉: ", f"{label} ~ alice took back 🎉: ",
            "~ alice deleted: ", "alice: [deleted]",
        ])
        assert not any("receipt" in line for line in shown)
    finally:
        if listener is not None:
            listener.send_signal(signal.SIGINT)
            _, err = await asyncio.to_thread(listener.communicate, timeout=20)
            assert listener.returncode == 0, err
        await alice.close()
        await bob.close()
