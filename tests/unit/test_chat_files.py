"""The chat screen's ``/open ID`` and ``/play ID`` commands (cli/chat_files.py): what
they accept, and a plain message (never a traceback) for each way they can go wrong.
tests/integration/test_view_once_e2e.py runs it against real clients."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sottovoce.cli.chat_files import is_open_command, is_play_command, open_file, play_voice
from sottovoce.client.media.voice import NoAudioOutput
from sottovoce.client.store import DeliveryStatus, StoredMessage
from sottovoce.errors import UsageError


class _Info:
    name = "a\x1b[31m.txt"


class _Files:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def info(self, message_id: str) -> _Info:
        return _Info()

    async def view(self, message_id: str) -> Path:
        if self.fail:
            raise UsageError(f"message {message_id} is not a file")
        return Path("/data/view") / message_id / "a.txt"


class _Voice:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.played: list[str] = []

    async def play(self, message_id: str) -> int:
        if self.error is not None:
            raise self.error
        self.played.append(message_id)
        return 7_400


class _Client:
    def __init__(self, fail: bool = False, voice_error: Exception | None = None) -> None:
        self.files = _Files(fail)
        self.voice = _Voice(voice_error)

    def message(self, message_id: str) -> StoredMessage | None:
        if message_id != "M1":
            return None
        return StoredMessage(
            local_id=1, message_id="M1", peer="alice", sender="alice", sender_device="d",
            outgoing=False, status=DeliveryStatus.SENT, text="", content_type="file",
            client_created_ms=0, server_received_ms=0, local_at_ms=0,
        )


def _run(client: Any, peer: str, text: str) -> tuple[str, bool]:
    return asyncio.run(open_file(client, peer, text))


def test_open_command_is_recognised_only_as_a_command() -> None:
    assert is_open_command("/open M1") and is_open_command("/open")
    assert not is_open_command("/opening hours") and not is_open_command("open M1")


def test_open_views_a_file_of_this_chat_and_says_where() -> None:
    said, failed = _run(_Client(), "alice", "/open M1")
    assert not failed and said == "opened a\\x1b[31m.txt: /data/view/M1/a.txt"


def test_open_refuses_plainly() -> None:
    assert _run(_Client(), "alice", "/open") == (
        "usage: /open ID (the id at the end of a file's line)", True)
    assert _run(_Client(), "alice", "/open M1 M2")[1]
    assert _run(_Client(), "alice", "/open M9") == ("no message M9 in this chat", True)
    assert _run(_Client(), "bob", "/open M1") == ("no message M1 in this chat", True)
    assert _run(_Client(fail=True), "alice", "/open M1") == ("message M1 is not a file", True)


def test_play_command_plays_a_voice_note_of_this_chat() -> None:
    assert is_play_command("/play M1") and is_play_command("/play")
    assert not is_play_command("/player M1") and not is_play_command("play M1")
    client = _Client()
    said = asyncio.run(play_voice(client, "alice", "/play M1"))
    assert said == ("played voice note 0:07", False) and client.voice.played == ["M1"]


def test_play_refuses_plainly() -> None:
    def play(client: Any, peer: str, text: str) -> tuple[str, bool]:
        return asyncio.run(play_voice(client, peer, text))

    assert play(_Client(), "alice", "/play") == (
        "usage: /play ID (the id at the end of a voice note's line)", True)
    assert play(_Client(), "bob", "/play M1") == ("no message M1 in this chat", True)
    no_output = NoAudioOutput("no audio output was found on this device; save the note")
    assert play(_Client(voice_error=no_output), "alice", "/play M1") == (
        "no audio output was found on this device; save the note", True)
    not_voice = UsageError("message M1 is not a voice note")
    assert play(_Client(voice_error=not_voice), "alice", "/play M1") == (
        "message M1 is not a voice note", True)
