"""The chat screen's ephemeral-chat keys in tmux (cli/tui_ephemeral.py): bob's request
shows a banner, F8 declines it (bob's request goes unanswered), F7 accepts the next one
and the chat runs in its panel both ways, and F9, shown in the footer, panics: bob's
chat ends within a second and nothing of it stays on alice's screen."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sottovoce.client.events import EphemeralChatEnded, EphemeralChatMessage
from sottovoce.errors import UsageError
from tests.integration.test_ephemeral_chat import _next
from tests.integration.test_tui import alice_and_bob, pytestmark  # noqa: F401


async def test_accept_decline_and_panic_keys(tmp_path: Path) -> None:
    async with alice_and_bob(tmp_path) as (tmux, bob):
        tmux.chat_as_alice(tmp_path)
        await tmux.wait_for("bob · connected")
        await tmux.wait_for("f9 Panic")  # the panic key is in the footer
        await bob.connect()
        # A request, declined: bob's side hears nothing and gives up.
        asking = asyncio.ensure_future(bob.ephemeral.open("alice", timeout=6))
        await tmux.wait_for("bob asks for an ephemeral chat · F7 accept · F8 decline")
        tmux.keys("F8")
        await tmux.wait_for("declined bob's ephemeral chat")
        with pytest.raises(UsageError, match="alice did not answer"):
            await asking
        # The next one, accepted: the chat opens in the panel.
        asking = asyncio.ensure_future(bob.ephemeral.open("alice", timeout=30))
        await tmux.wait_for("bob asks for an ephemeral chat · F7 accept")
        tmux.keys("F7")
        b_chat = await asking
        await tmux.wait_for("ephemeral chat with bob · nothing stored · typing goes here")
        b_events = bob.events()
        await bob.ephemeral.send(b_chat, "psst, not kept")
        await tmux.wait_for("bob: psst, not kept")
        tmux.keys("only in memory", "Enter")
        got = await _next(b_events, EphemeralChatMessage)
        assert isinstance(got, EphemeralChatMessage) and got.text == "only in memory"
        await tmux.wait_for("you: only in memory")
        tmux.keys("F9")
        t0 = time.monotonic()
        ended = await _next(b_events, EphemeralChatEnded, timeout=1.0)
        assert time.monotonic() - t0 < 1.0
        assert isinstance(ended, EphemeralChatEnded) and ended.reason == "the other side left"
        screen = await tmux.wait_for("panic: every ephemeral chat ended and its keys wiped")
        assert "psst, not kept" not in screen and "you: only in memory" not in screen
        assert "ephemeral chat with bob" not in screen
        tmux.keys("C-q")
        await tmux.wait_for("EXIT=0")
