"""``play NAME MESSAGE_ID``: a voice note, fetched and checked like any file, decrypted
into the viewing area (wiped when the client closes), decoded in memory and played to
the default audio output. Where there is none, a plain message offers ``save``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.files_cmd import in_conversation, progress_bar
from sottovoce.cli.options import subcommand
from sottovoce.cli.session import Connect, with_client

if TYPE_CHECKING:
    from sottovoce.client import Client


def cmd_play(args: argparse.Namespace) -> int:
    """play a received voice note on this device's audio output

    Fetch the voice note of message MESSAGE_ID from NAME (a user, or #ROOM) if it is
    not here yet, check it like any file, decode it in memory and play it to the
    default audio output. Where this device has none, say so: `save` writes the note
    (Opus in Ogg) to a file to play elsewhere. `history` shows a voice note as
    "[voice note 0:07] ... id ID".

    example:
      sottovoce play alice FHQURZ-GjTY5UVNi29RsKg --data-dir ~/.sottovoce-bob
    """
    async def work(client: Client) -> str:
        in_conversation(client, args.name, args.message_id)
        bar = None if client.files.is_downloaded(args.message_id) else progress_bar("fetching")
        played = await client.voice.play(args.message_id, progress=bar)
        return f"played voice note {render.duration_text(played)}"

    print(with_client(args, work, connect=Connect.TRY))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subcommand(
        sub, "play", func=cmd_play,
        args=[("NAME", "who sent it: a username, or #ROOM for a room"),
              ("MESSAGE_ID", "the voice note's id, as `history` shows it")],
    )
