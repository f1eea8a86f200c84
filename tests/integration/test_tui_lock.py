"""`sottovoce chat --lock-after MINUTES` in a real terminal (tmux), and read marks.

Checked: the chat locks itself when no key is pressed for that long; while
locked the terminal shows only the lock prompt (no message, no name, not even a
message that arrives meanwhile); a wrong passphrase keeps it locked; the right
one brings the chat back with what arrived; and what the chat showed is no
longer unread for `sottovoce list`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from sottovoce.client import Client
from sottovoce.client.conversations import Conversations
from sottovoce.client.store import Store
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess
from tests.integration.test_tui import Tmux

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"
)


async def test_chat_locks_when_idle_and_shows_nothing_until_the_passphrase(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "server").start()
    tmux = Tmux()
    bob: Client | None = None
    try:
        alice = await make_account(server, "alice", tmp_path)
        await alice.close()
        bob = await make_account(server, "bob", tmp_path)
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
    finally:
        tmux.kill()
        if bob is not None:
            await bob.close()
        server.stop()
    store = Store.open(tmp_path / "alice", PASSPHRASE)
    try:
        assert Conversations(store, "alice").unread("bob") == 0  # shown, so read
    finally:
        store.close()
