"""`sottovoce chat --lock-after MINUTES` in a real terminal (tmux), and read marks.

Checked: the chat locks itself when no key is pressed for that long; while
locked the terminal shows only the lock prompt (no message, no name, not even a
message that arrives meanwhile); a wrong passphrase keeps it locked; the right
one brings the chat back with what arrived; and what the chat showed is no
longer unread for `sottovoce list`. The lock also covers the safety-number
screen when that is open, and neither it nor the command palette opens over
the lock.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from sottovoce.client.conversations import Conversations
from sottovoce.client.store import Store
from tests.integration.client_helpers import PASSPHRASE
from tests.integration.test_tui import alice_and_bob

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"
)


async def test_chat_locks_when_idle_and_shows_nothing_until_the_passphrase(
    tmp_path: Path,
) -> None:
    async with alice_and_bob(tmp_path) as (tmux, bob):
        await bob.wait_sent(await bob.send_text("alice", "hello before the lock"))
        tmux.chat_as_alice(tmp_path, "--lock-after", "0.1")  # 6 s
        locked = await tmux.wait_for("sottovoce is locked", timeout=40)
        await bob.wait_sent(await bob.send_text("alice", "sent while locked"))
        end = time.monotonic() + 1.5  # a message that arrives now must not show
        while time.monotonic() < end:
            for text in ("hello before", "sent while", "bob", "alice"):
                assert text not in locked, locked
            locked = tmux.screen()
        tmux.keys("not the passphrase", "Enter")
        await tmux.wait_for("wrong passphrase")
        assert "hello before" not in tmux.screen()
        tmux.keys(PASSPHRASE, "Enter")
        screen = await tmux.wait_for("bob: sent while locked", timeout=15)
        assert "bob: hello before the lock" in screen
        tmux.keys("C-q")
        await tmux.wait_for("EXIT=0")
    store = Store.open(tmp_path / "alice", PASSPHRASE)
    try:
        assert Conversations(store, "alice").unread("bob") == 0  # shown, so read
    finally:
        store.close()


async def test_the_lock_covers_the_safety_number_screen_and_the_command_palette(
    tmp_path: Path,
) -> None:
    async with alice_and_bob(tmp_path) as (tmux, bob):
        await bob.wait_sent(await bob.send_text("alice", "hello before the lock"))
        tmux.chat_as_alice(tmp_path, "--lock-after", "0.1")  # 6 s
        await tmux.wait_for("bob: hello before the lock")
        tmux.keys("C-s")
        digits = (await bob.safety_number("alice")).grouped().splitlines()[0]
        await tmux.wait_for(digits)
        locked = await tmux.wait_for("sottovoce is locked", timeout=40)
        for text in ("Safety number", digits, "hello before", "bob", "alice"):
            assert text not in locked, locked
        tmux.keys("C-s", "C-p")  # no screen or panel opens over the lock
        time.sleep(0.5)
        for text in ("Safety number", digits, "Search for commands"):
            assert text not in tmux.screen(), tmux.screen()
        tmux.keys(PASSPHRASE, "Enter")
        await tmux.wait_for(digits, timeout=15)  # back where it was
        tmux.keys("Escape")
        await tmux.wait_for("bob: hello before the lock")
        tmux.keys("C-q")
        await tmux.wait_for("EXIT=0")
