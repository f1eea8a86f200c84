"""The chat screen's ``/open ID`` command (cli/tui.py): a file message is shown as a
placeholder line (``[image] cat.jpg (3.1 KiB, image/jpeg) id ID``, cli/render.py);
``/open ID`` fetches it if needed, checks it and writes it, decrypted, into the
viewing area of the data directory (``view/``, wiped when the client closes), and
says where. A view-once file is spent by it (client/files.py). ``/play ID`` plays a
voice note (``[voice note 0:07] ...``) to the audio output (client/media/notes.py), or
says there is none and offers ``save``."""

from __future__ import annotations

from typing import Protocol

from sottovoce.cli import render
from sottovoce.client.files import Files
from sottovoce.client.media.notes import VoiceNotes
from sottovoce.client.store import StoredMessage
from sottovoce.errors import SottovoceError

OPEN_COMMAND = "/open"
PLAY_COMMAND = "/play"


class _Client(Protocol):
    @property
    def files(self) -> Files: ...

    @property
    def voice(self) -> VoiceNotes: ...

    def message(self, message_id: str) -> StoredMessage | None: ...


def is_open_command(text: str) -> bool:
    return text == OPEN_COMMAND or text.startswith(OPEN_COMMAND + " ")


def is_play_command(text: str) -> bool:
    return text == PLAY_COMMAND or text.startswith(PLAY_COMMAND + " ")


async def open_file(client: _Client, conversation: str, text: str) -> tuple[str, bool]:
    """Run ``/open ID`` for the chat with ``conversation`` (a username or room id);
    returns what to tell the user and whether it is an error."""
    parts = text.split()
    if len(parts) != 2:
        return "usage: /open ID (the id at the end of a file's line)", True
    message_id = parts[1]
    stored = client.message(message_id)
    if stored is None or stored.peer != conversation:
        return f"no message {render.safe(message_id)} in this chat", True
    try:
        name = client.files.info(message_id).name
        path = await client.files.view(message_id)
    except SottovoceError as exc:
        return render.safe(str(exc)), True
    return f"opened {render.safe(name)}: {render.safe(str(path))}", False


async def play_voice(client: _Client, conversation: str, text: str) -> tuple[str, bool]:
    """Run ``/play ID`` for the chat with ``conversation``; returns what to tell the user
    and whether it is an error."""
    parts = text.split()
    if len(parts) != 2:
        return "usage: /play ID (the id at the end of a voice note's line)", True
    message_id = parts[1]
    stored = client.message(message_id)
    if stored is None or stored.peer != conversation:
        return f"no message {render.safe(message_id)} in this chat", True
    try:
        played = await client.voice.play(message_id)
    except SottovoceError as exc:
        return render.safe(str(exc)), True
    return f"played voice note {render.duration_text(played)}", False
