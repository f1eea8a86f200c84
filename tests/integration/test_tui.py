"""`sottovoce chat` driven in tmux (send, receive, scroll, calls).

A real terminal (tmux, 120x40) runs the chat as alice against the real server;
keys are typed with ``send-keys`` and the screen is read with ``capture-pane``.
Bob is an SDK client in this process. Checked: the history comes from the
local store, a typed message is sent and gets its ✓, a message from bob
appears, PageUp scrolls back to the oldest message (loading older pages from
the store), the status line shows bob's presence and bob sees alice's (offline after
Ctrl-Q), Ctrl-S shows the same safety number bob computes, Ctrl-Q exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sottovoce.calls.effects import CallState, EndReason
from sottovoce.client import Client
from sottovoce.client.calls import CallOptions, IceConfig
from tests.integration.calls_helpers import wait_for
from tests.integration.client_helpers import PASSPHRASE, make_account, received
from tests.integration.serverproc import ServerProcess

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"
)

OLD = 60  # more than one screen, and more than the 50 the chat loads first


class Tmux:
    def __init__(self) -> None:
        self.socket = f"sottovoce-test-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", "chat", "-x", "120", "-y", "40", command)

    def chat_as_alice(self, tmp_path: Path, *options: str) -> None:
        """`sottovoce chat bob` as the account in tmp_path/alice; EXIT=code when it ends."""
        passfile = tmp_path / "passphrase"
        passfile.write_text(PASSPHRASE + "\n")
        self.start(
            # The pane's size is the terminal's: drop COLUMNS/LINES some runners export.
            f"env -u COLUMNS -u LINES {sys.executable} -m sottovoce chat bob {' '.join(options)} "
            f"--data-dir {tmp_path / 'alice'} --passphrase-file {passfile}; "
            "echo EXIT=$?; sleep 60"
        )

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "chat", *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "chat")

    async def wait_for(self, text: str, timeout: float = 20.0) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if loop.time() > deadline:
                raise AssertionError(f"{text!r} not on screen:\n{screen}")
            await asyncio.sleep(0.2)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


@contextlib.asynccontextmanager
async def alice_and_bob(tmp_path: Path) -> AsyncIterator[tuple[Tmux, Client]]:
    """A server, alice's account made and closed (the chat in tmux opens it), bob's
    client and a tmux to run the chat in; all stopped on leaving."""
    server = ServerProcess(tmp_path / "server").start()
    tmux = Tmux()
    bob: Client | None = None
    try:
        alice = await make_account(server, "alice", tmp_path)
        await alice.close()
        bob = await make_account(server, "bob", tmp_path)
        yield tmux, bob
    finally:
        tmux.kill()
        if bob is not None:
            await bob.close()
        server.stop()


async def test_chat_in_tmux_send_receive_scroll_safety_number(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server").start()
    tmux = Tmux()
    bob: Client | None = None
    try:
        alice = await make_account(server, "alice", tmp_path)
        bob = await make_account(server, "bob", tmp_path)
        b_events = bob.events()
        ids = [await alice.send_text("bob", f"old message {i:02d}") for i in range(OLD)]
        await alice.wait_sent(ids[-1])
        await received(b_events, OLD)
        await alice.close()
        tmux.chat_as_alice(tmp_path)
        await tmux.wait_for("bob · connected")
        screen = await tmux.wait_for(f"old message {OLD - 1:02d} ✓")  # from the store, ticked
        assert "old message 00" not in screen
        assert "Safety number" in screen and "Quit" in screen  # the footer's bindings

        tmux.keys("hello from tmux", "Enter")
        await tmux.wait_for("you → bob: hello from tmux ✓")
        (got,) = await received(b_events, 1)
        assert got.text == "hello from tmux"

        reply = await bob.send_text("alice", "reply from bob")
        await tmux.wait_for("bob: reply from bob")
        # Presence (contacts both ways now): bob's shows in the status line, and the
        # open chat answers with alice's.
        bob.presence.tick_s = 0.1
        bob.presence.start()
        await tmux.wait_for("bob (online) · connected")
        await wait_for(lambda: bob.contacts.presence("alice").state == "online", 10)

        for _ in range(12):
            tmux.keys("PageUp")
            await asyncio.sleep(0.3)
            if "old message 00" in tmux.screen():
                break
        screen = tmux.screen()
        assert "old message 00" in screen  # older than the first page: loaded on scroll
        assert "reply from bob" not in screen
        tmux.keys("PageDown", "PageDown", "PageDown", "PageDown")
        await tmux.wait_for("bob: reply from bob")

        # Control messages: the screen showed bob's reply (a read receipt), shows his
        # edit and reaction as they come, and his typing notice.
        def shown_read() -> bool:
            stored = bob.message(reply) if bob is not None else None
            return stored is not None and bob.controls.view(stored).state == "read"

        assert await bob.rooms.wait_until(shown_read, 20)
        await bob.controls.edit("alice", reply, "reply, edited")
        await tmux.wait_for("bob: reply, edited (edited)")
        await bob.controls.react("alice", got.message_id, "👍")
        await tmux.wait_for("hello from tmux 👍1")
        assert await bob.controls.typing("alice") is not None
        await tmux.wait_for("bob is typing")

        tmux.keys("C-s")
        screen = await tmux.wait_for("Safety number: alice and bob")
        expected = (await bob.safety_number("alice")).grouped().splitlines()
        for row in expected:
            assert row in screen
        assert "▀" in screen or "█" in screen  # the QR code
        tmux.keys("Escape")
        await asyncio.sleep(0.5)
        tmux.keys("C-q")
        await tmux.wait_for("EXIT=0")
        # A clean close told bob: offline, last seen now.
        await wait_for(lambda: bob.contacts.presence("alice").state == "offline", 10)
    finally:
        tmux.kill()
        if bob is not None:
            await bob.close()
        server.stop()


async def test_chat_in_tmux_rings_accepts_shows_the_call_line_and_declines(
    tmp_path: Path,
) -> None:
    """F5 accepts bob's ringing call, the banner becomes the in-call line (codecs,
    rates, RTT, loss, E2EE), F6 hangs up; a second ring is declined with F6."""
    async with alice_and_bob(tmp_path) as (tmux, bob):
        calls = bob.start_calls(CallOptions(ice=IceConfig(loopback=True)))
        tmux.chat_as_alice(tmp_path, "--loopback")
        await tmux.wait_for("bob · connected")
        await tmux.wait_for("Call/Accept")  # the footer names the call keys

        await bob.place_call("alice")
        await tmux.wait_for("incoming video call from bob · F5 accept · F6 decline")
        tmux.keys("F5")
        await wait_for(lambda: calls.state is CallState.ACTIVE, 30)
        screen = await tmux.wait_for("E2EE on", timeout=30)
        line = next(row for row in screen.splitlines() if "E2EE on" in row)
        assert "bob · VP8/opus" in line and "RTT" in line and "loss" in line, line
        await tmux.wait_for("kbit/s ↓", timeout=10)  # a rate once there are two samples
        tmux.keys("F6")
        await wait_for(lambda: calls.state is CallState.ENDED, 15)
        assert calls.call is not None and calls.call.reason is EndReason.PEER_HUNG_UP
        await tmux.wait_for("call: ended (you hung up)")

        await bob.place_call("alice")
        await tmux.wait_for("incoming video call from bob")
        tmux.keys("F6")
        await wait_for(lambda: calls.state is CallState.ENDED, 15)
        assert calls.call is not None and calls.call.reason is EndReason.PEER_DECLINED
        tmux.keys("C-q")
        await tmux.wait_for("EXIT=0")
