"""Files on the chat screen, in tmux (cli/tui.py, cli/chat_files.py): a file message
shows as its placeholder line, ``/open ID`` writes it into the viewing area and says
so, and a view-once file cannot be opened a second time; a voice note shows as
``[voice note M:SS]`` and ``/play ID`` plays it or says there is no audio output."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.audio_samples import tone
from tests.integration.test_tui import alice_and_bob

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"
)


async def test_chat_shows_a_file_and_opens_it_once(tmp_path: Path) -> None:
    async with alice_and_bob(tmp_path) as (tmux, bob):
        src = tmp_path / "plan.txt"
        src.write_text("the plan\n")
        tmux.chat_as_alice(tmp_path)
        await tmux.wait_for("bob · connected")
        mid = await bob.files.send_file("alice", src, view_once=True)
        await tmux.wait_for(f"bob: [file, view once] plan.txt (9 B, text/plain) id {mid}")
        tmux.keys(f"/open {mid}", "Enter")
        await tmux.wait_for("opened plan.txt")
        view = tmp_path / "alice" / "view" / mid / "plan.txt"
        assert view.read_text() == "the plan\n"
        tmux.keys(f"/open {mid}", "Enter")
        await tmux.wait_for("already opened")
        tmux.keys("C-q")
        await tmux.wait_for("EXIT=0")
        assert not view.exists()  # the viewing area is wiped when the chat closes


async def test_chat_shows_a_voice_note_with_its_length_and_plays_it(tmp_path: Path) -> None:
    async with alice_and_bob(tmp_path) as (tmux, bob):
        wav = tmp_path / "hi.wav"
        tone(wav, 1.3)
        tmux.chat_as_alice(tmp_path)
        await tmux.wait_for("bob · connected")
        mid = await bob.voice.send("alice", wav)
        await tmux.wait_for("bob: [voice note 0:01] hi.ogg (")
        await tmux.wait_for(f"audio/ogg) id {mid}")
        tmux.keys(f"/play {mid}", "Enter")
        # A machine with an audio output plays it; one without (CI) says so, offering save.
        for _ in range(200):
            screen = tmux.screen()
            if "played voice note 0:01" in screen or "no audio output was found" in screen:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"/play said nothing:\n{screen}")
        tmux.keys("/play nope", "Enter")
        await tmux.wait_for("no message nope in this chat")
        tmux.keys("C-q")
        await tmux.wait_for("EXIT=0")
