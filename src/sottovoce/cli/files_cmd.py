"""File commands: ``send NAME --file PATH``, ``room send ROOM --file PATH`` (the sending
half, called by client_cmd.py and room_cmd.py; ``--voice FILE`` and ``--record SECONDS``
send a voice note instead) and ``save MESSAGE_ID DEST``.

On a terminal both directions show a progress bar on standard error (bytes done of
the total); when standard error is not a terminal they print nothing until the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from sottovoce.cli import render
from sottovoce.cli.options import subcommand
from sottovoce.cli.session import CliError, Connect, with_client

if TYPE_CHECKING:
    from sottovoce.client import Client
    from sottovoce.client.files import Progress
    from sottovoce.client.store import StoredMessage

_BAR = 30


def progress_bar(verb: str, stream: TextIO | None = None) -> Progress | None:
    """A progress callback drawing ``verb [####......] 3.0 MiB / 10.0 MiB`` on a terminal;
    ``None`` (no output) when the stream is not one."""
    return _terminal_bar(verb, render.size_text, stream, end_line=True)


def _terminal_bar(verb: str, unit: Callable[[int], str], stream: TextIO | None,
                  *, end_line: bool) -> Callable[[int, int], None] | None:
    """``verb [####......] DONE / TOTAL`` redrawn at most ten times a second on a
    terminal (``unit`` writes the amounts); ``None`` when the stream is not one."""
    out = sys.stderr if stream is None else stream
    if not out.isatty():
        return None
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.1:
            return
        last[0] = now
        filled = _BAR if total <= 0 else min(_BAR, _BAR * done // total)
        out.write(f"\r{verb} [{'#' * filled}{'.' * (_BAR - filled)}] "
                  f"{unit(done)} / {unit(total)}\x1b[K")
        if end_line and done >= total:
            out.write("\n")
        out.flush()

    return show


def add_text_or_file(parser: argparse.ArgumentParser) -> None:
    """TEXT (optional) and ``--file PATH``: a send takes one or the other."""
    parser.add_argument("text", metavar="TEXT", nargs="?", default=None,
                        help="the message (leave out with --file)")
    parser.add_argument("--file", metavar="PATH", default=None,
                        help="send this file instead of a text: encrypted on this device in "
                             "chunks, uploaded, and announced in an end-to-end encrypted "
                             "message with its key (needs the server)")
    parser.add_argument("--voice", metavar="FILE", default=None,
                        help="send this audio file (wav, mp3, ogg, m4a...) as a voice note: "
                             "transcoded on this device to Opus (mono, 48 kHz, ~28 kbit/s) "
                             "and sent like --file with its duration")
    parser.add_argument("--record", metavar="SECONDS", type=float, default=None,
                        help="record a voice note of SECONDS from the microphone and send "
                             "it (where there is no microphone, use --voice FILE)")
    parser.add_argument("--view-once", action="store_true",
                        help="with --file: the recipient can `save` the file (or `/open` "
                             "it on the chat screen) once on each of their devices; then "
                             "its key and copy are deleted on that device and the message "
                             "shows it was opened. You keep no copy, and your other devices "
                             "cannot fetch it")


def wants_file(args: argparse.Namespace) -> bool:
    """Whether this send is of a file (or voice note); a plain error for two or none."""
    given = [args.text is not None, args.file is not None, args.voice is not None,
             args.record is not None]
    if sum(given) > 1:
        raise CliError("give one of TEXT, --file PATH, --voice FILE or --record SECONDS")
    if not any(given):
        raise CliError("give the message TEXT, or --file PATH to send a file")
    if args.view_once and args.file is None:
        raise CliError("--view-once is for a file: give --file PATH")
    return args.text is None


def send_file(args: argparse.Namespace, *, room: str | None = None) -> int:
    """``send NAME --file PATH`` (or, with ``room``, ``room send ROOM --file PATH``)."""
    if args.file is None:
        return _send_voice(args, room)

    async def work(client: Client) -> str:
        bar = progress_bar("sending")
        if room is not None:
            return await client.files.room_send_file(room, args.file, progress=bar,
                                                     view_once=args.view_once)
        return await client.files.send_file(args.name, args.file, progress=bar,
                                            view_once=args.view_once)

    message_id = with_client(args, work, connect=Connect.REQUIRED)
    target = f"#{room}" if room is not None else args.name
    once = ", view once" if args.view_once else ""
    print(f"✓ sent {render.safe(args.file)} to {render.safe(target)} "
          f"(message {render.safe(message_id)}{once})")
    return 0


def _send_voice(args: argparse.Namespace, room: str | None) -> int:
    """``--voice FILE`` or ``--record SECONDS``: a voice note, made here and sent."""

    async def work(client: Client) -> tuple[str, str]:
        to = room if room is not None else args.name
        bar, encoding = progress_bar("sending"), duration_bar()
        if args.voice is not None:
            message_id = await client.voice.send(to, args.voice, room=room is not None,
                                                 progress=bar, encoding=encoding)
        else:
            message_id = await client.voice.record(to, args.record, room=room is not None,
                                                   progress=bar, encoding=encoding)
        info = client.files.info(message_id)
        return message_id, render.duration_text(info.duration_ms or 0)

    message_id, length = with_client(args, work, connect=Connect.REQUIRED)
    target = f"#{room}" if room is not None else args.name
    print(f"✓ sent voice note {length} to {render.safe(target)} "
          f"(message {render.safe(message_id)})")
    return 0


def duration_bar(stream: TextIO | None = None) -> Callable[[int, int], None] | None:
    """A callback drawing ``encoding [####......] 0:03 / 0:10`` on a terminal while a
    voice note is made (long files take a while); ``None`` when not on one."""
    return _terminal_bar("encoding", render.duration_text, stream, end_line=False)


def cmd_save(args: argparse.Namespace) -> int:
    """write a received file, decrypted, to DEST

    Fetch the file of message MESSAGE_ID from NAME (a user, or #ROOM) if it is not
    here yet, check every chunk and the whole file's SHA-256, and write it to DEST
    (a directory: under the sender's file name). `history` shows a file message's
    id. Nothing is written when a check fails, and DEST is never left half-written;
    an existing DEST is not replaced. A view-once file is saved once: then its key
    and copy are deleted on this device.

    example:
      sottovoce save alice FHQURZ-GjTY5UVNi29RsKg ~/Downloads --data-dir ~/.sottovoce-bob
    """
    async def work(client: Client) -> str:
        info = client.files.info(args.message_id)
        in_conversation(client, args.name, args.message_id)
        bar = None if client.files.is_downloaded(args.message_id) else progress_bar("fetching")
        path = await client.files.save(args.message_id, args.dest, progress=bar)
        return f"saved {render.safe(info.name)} to {render.safe(str(path))}"

    print(with_client(args, work, connect=Connect.TRY))
    return 0


def in_conversation(client: Client, name: str, message_id: str) -> None:
    """A plain error unless ``message_id`` is in the conversation ``name`` names."""
    if not any(m.message_id == message_id for m in _conversation(client, name)):
        raise CliError(f"message {message_id} is not in the conversation with {name}")


def _conversation(client: Client, name: str) -> list[StoredMessage]:
    """The messages of a 1:1 conversation, or of a room ('#NAME': its name or id)."""
    if name.startswith("#"):
        return client.rooms.history(name[1:], limit=1 << 30)
    return client.history(name, limit=1 << 30)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subcommand(
        sub, "save", func=cmd_save,
        args=[("NAME", "who sent it: a username, or #ROOM for a room"),
              ("MESSAGE_ID", "the file message's id, as `history` shows it"),
              ("DEST", "the file to write, or a directory to write it into")],
    )
