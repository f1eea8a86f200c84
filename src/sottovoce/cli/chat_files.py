"""The chat screen's ``/open ID`` command (cli/tui.py): a file message is shown as a
placeholder line (``[image] cat.jpg (3.1 KiB, image/jpeg) id ID``, cli/render.py);
``/open ID`` fetches it if needed, checks it and writes it, decrypted, into the
viewing area of the data directory (``view/``, wiped when the client closes), and
says where. A view-once file is spent by it (client/files.py)."""

from __future__ import annotations

from typing import Protocol

from sottovoce.cli import render
from sottovoce.client.files import Files
from sottovoce.client.store import StoredMessage
from sottovoce.errors import SottovoceError

OPEN_COMMAND = "/open"


class _Client(Protocol):
    @property
    def files(self) -> Files: ...

    def message(self, message_id: str) -> StoredMessage | None: ...


def is_open_command(text: str) -> bool:
    return text == OPEN_COMMAND or text.startswith(OPEN_COMMAND + " ")


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
