"""Ephemeral chats on the command line: `chat NAME --ephemeral` and `panic`
(docs/protocol.md §Ephemeral chats).

    chat bob --ephemeral     ask bob (or answer bob's request) and chat line by line;
                             nothing is stored, anywhere; /quit or end of input leaves
    room chat team --ephemeral
                             the same among the room's online members (a group chat:
                             join the one a member started, else start one)
    /photo PATH, /clip PATH  send a file from memory (read once, never copied to disk);
                             /media lists what arrived, /save N PATH writes one out
                             (warned: only that explicit step ever writes one)
    Ctrl-\\ or /panic         one key: end every ephemeral chat now, keys wiped
    panic --data-dir D       from another shell: the running chat of D panics

The running chat writes its process id to ``D/ephemeral.pid`` (nothing else) and
panics on SIGUSR1, which is what `panic` sends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.options import DATA_DIR_HELP, Subparsers, positive, subcommand
from sottovoce.cli.session import CliError, Connect, data_dir, with_client
from sottovoce.errors import SottovoceError, UsageError

if TYPE_CHECKING:
    from sottovoce.client import Client
    from sottovoce.client.ephemeral import Chat
    from sottovoce.client.ephemeral_group import GroupChat
    from sottovoce.client.ephemeral_media import Media, MediaKind
    from sottovoce.client.events import EphemeralMediaReceived

PIDFILE = "ephemeral.pid"
#: `chat --ephemeral` exits with this after a panic (0 after leaving, 1 on an error).
EXIT_PANIC = 3


def add_chat_options(parser: argparse.ArgumentParser) -> None:
    """`chat`'s flags for an ephemeral chat (`--relay-only`, `--loopback` are `chat`'s own)."""
    parser.add_argument(
        "--ephemeral", action="store_true",
        help="an ephemeral chat: both online, keys made for this chat only and kept in "
        "memory, nothing stored by anyone; line by line (/quit leaves, Ctrl-\\ panics; "
        "/photo PATH and /clip PATH send a file from memory)",
    )
    parser.add_argument(
        "--server-relay", action="store_true",
        help="with --ephemeral: no direct data channel, every message through the server's "
        "ephemeral path (stored nowhere)",
    )
    parser.add_argument(
        "--wait", type=positive(float), default=60.0, metavar="SECONDS",
        help="with --ephemeral: how long to wait for the other side to answer (in a room: "
        "for a first member to join) (default 60)",
    )


def _pidfile(args: argparse.Namespace) -> Path:
    return data_dir(args) / PIDFILE


def _run_chat(args: argparse.Namespace, work: Callable[[Client], Awaitable[int]]) -> int:
    """Run an ephemeral chat's ``work``; its pidfile (``panic``'s way in) goes after."""
    pidfile = _pidfile(args)
    try:
        return with_client(args, work, connect=Connect.NO, notices=False)
    finally:
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == str(os.getpid()):
                pidfile.unlink()


def run_ephemeral(args: argparse.Namespace, name: str) -> int:
    """`chat NAME --ephemeral`: the exit code (0 left or ended, 3 panic)."""
    async def work(client: Client) -> int:
        if name == client.username:
            raise CliError("that is you: chat with another user")
        if not args.server_relay:
            _use_data_channel(client, args)
        await client.connect()
        print(f"waiting for {render.safe(name)} to join the ephemeral chat "
              f"(up to {args.wait:g} s; they run: chat {render.safe(client.username)} "
              "--ephemeral)", flush=True)
        chat = await client.ephemeral.open(name, timeout=args.wait)
        return await _talk(client, chat, _pidfile(args))

    return _run_chat(args, work)


def _use_data_channel(client: Client, args: argparse.Namespace) -> None:
    # Imported here: the media stack loads only for a chat that may use it.
    from sottovoce.client.calls import IceConfig
    from sottovoce.client.calls.datachannel import pipe_maker
    from sottovoce.client.errors import ServerError

    async def ice() -> IceConfig:
        try:
            turn = await client.turn_servers()
        except ServerError as exc:
            if exc.code != "turn_unavailable":
                raise
            turn = ()  # no TURN here: P2P, else the server's ephemeral path
            if args.relay_only:
                print("no TURN server: messages go through the server's ephemeral path",
                      flush=True)
        return IceConfig(turn=turn, relay_only=args.relay_only, loopback=args.loopback)

    client.ephemeral.pipe_maker = pipe_maker(client.ephemeral, ice)


async def _talk(client: Client, chat: Chat, pidfile: Path) -> int:
    from sottovoce.client.events import (
        EphemeralChatEnded,
        EphemeralChatMessage,
        EphemeralMediaReceived,
    )

    loop = asyncio.get_running_loop()
    panicked = asyncio.Event()

    def panic() -> None:
        client.ephemeral.panic()
        panicked.set()

    for sig in (signal.SIGUSR1, signal.SIGQUIT):  # `panic` from elsewhere; Ctrl-\ here
        loop.add_signal_handler(sig, panic)
    _write_pid(pidfile)
    events = client.events()
    print(f"ephemeral chat with {render.safe(chat.peer)} open: nothing is stored; "
          "/quit leaves, /panic or Ctrl-\\ ends it at once", flush=True)
    lines = asyncio.ensure_future(_read_lines(_OneToOne(client, chat), panic))
    channel = asyncio.ensure_future(_tell_channel(chat))
    try:
        while True:
            event = await events.next()
            if isinstance(event, EphemeralChatMessage) and event.chat_id == chat.chat_id:
                print(f"{render.safe(event.sender)}: {render.safe(event.text)}", flush=True)
            elif isinstance(event, EphemeralMediaReceived) and event.chat_id == chat.chat_id:
                _said_media(event)
            elif isinstance(event, EphemeralChatEnded) and event.chat_id == chat.chat_id:
                print(f"ephemeral chat ended: {event.reason}; nothing of it is kept", flush=True)
                return EXIT_PANIC if panicked.is_set() else 0
    finally:
        lines.cancel()
        channel.cancel()
        events.close()
        for sig in (signal.SIGUSR1, signal.SIGQUIT):
            loop.remove_signal_handler(sig)


async def _tell_channel(chat: Chat) -> None:
    """Say once when messages start to go over the data channel instead of the server."""
    while chat.pipe is None or not chat.pipe.is_open:
        if chat.ended.is_set():
            return
        await asyncio.sleep(0.1)
    path = getattr(chat.pipe, "path", lambda: "")()
    how = {"relay": "through TURN", "host": "peer to peer", "srflx": "peer to peer"}.get(
        path, "direct")
    print(f"data channel open ({how}): messages no longer pass the server", flush=True)


class _OneToOne:
    """What the typed lines do in a 1:1 chat."""

    def __init__(self, client: Client, chat: Chat) -> None:
        self.client, self.chat = client, chat

    async def text(self, text: str) -> None:
        await self.client.ephemeral.send(self.chat, text)

    async def media(self, kind: MediaKind, name: str, data: bytearray) -> int:
        await self.client.ephemeral.send_media(self.chat, kind, name, data)
        return 1

    def held(self) -> list[Media]:
        return list(self.chat.media)

    async def leave(self) -> None:
        await self.client.ephemeral.leave(self.chat)


class _Group:
    """What the typed lines do in a group chat."""

    def __init__(self, client: Client, group: GroupChat) -> None:
        self.client, self.group = client, group

    async def text(self, text: str) -> None:
        if not await self.client.ephemeral.groups.send(self.group, text):
            print("nobody has joined yet: not sent", file=sys.stderr, flush=True)

    async def media(self, kind: MediaKind, name: str, data: bytearray) -> int:
        return await self.client.ephemeral.groups.send_media(self.group, kind, name, data)

    def held(self) -> list[Media]:
        return list(self.group.media)

    async def leave(self) -> None:
        await self.client.ephemeral.groups.leave(self.group)


async def _read_lines(target: _OneToOne | _Group, panic: Callable[[], None]) -> None:
    """Each typed line is a message; /quit or the end of input leaves, /panic panics;
    /photo, /clip, /media and /save handle photos and clips."""
    async for text in _stdin_lines():
        if text == "/quit":
            break
        if text == "/panic":
            panic()
            return
        if not text:
            continue
        try:
            if text.split(" ", 1)[0] in ("/photo", "/clip", "/media", "/save"):
                await _media_command(target, text)
            else:
                await target.text(text)
        except SottovoceError as exc:  # shown; the chat's end event follows if it ended
            print(f"not sent: {render.safe(str(exc))}", file=sys.stderr, flush=True)
    await target.leave()


async def _media_command(target: _OneToOne | _Group, line: str) -> None:
    from sottovoce.client.ephemeral_media import MediaKind, read_once
    from sottovoce.client.ephemeral_memory import wipe

    word, _, rest = line.partition(" ")
    rest = rest.strip()
    if word in ("/photo", "/clip"):
        if not rest:
            raise UsageError(f"{word} PATH: which file to send")
        kind = MediaKind.PHOTO if word == "/photo" else MediaKind.CLIP
        data = read_once(os.path.expanduser(rest))
        try:
            sent = await target.media(kind, os.path.basename(rest), data)
            print(f"sent {kind.name.lower()} {render.safe(os.path.basename(rest))} "
                  f"({len(data)} bytes) to {sent}; nothing of it was written anywhere",
                  flush=True)
        finally:
            wipe(data)
    elif word == "/media":
        held = target.held()
        if not held:
            print("no photo or clip held in this chat", flush=True)
        for i, item in enumerate(held, 1):
            print(f"#{i} from {render.safe(item.sender)}: {render.safe(item.describe())}",
                  flush=True)
    else:
        number, _, path = rest.partition(" ")
        held = target.held()
        if not number.isdigit() or not path.strip() or not 1 <= int(number) <= len(held):
            raise UsageError("/save N PATH: N as /media numbers them (1 is the oldest kept)")
        _save(held[int(number) - 1], os.path.expanduser(path.strip()))


def _save(item: Media, path: str) -> None:
    """The one step that writes a photo or clip to disk: the user asked, and is warned."""
    print("warning: this writes the file to disk unencrypted; it outlives the chat and a "
          "panic, and nothing of sottovoce will wipe it", file=sys.stderr, flush=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists: choose a new file") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(item.data)
    print(f"saved {render.safe(item.describe())} to {render.safe(path)}", flush=True)


def _said_media(event: EphemeralMediaReceived) -> None:
    print(f"{render.safe(event.sender)} sent {render.safe(event.about)} "
          f"(#{event.index}, held in memory only; /save {event.index} PATH writes it to disk)",
          flush=True)


# --- group chats ----------------------------------------------------------------------


def run_group(args: argparse.Namespace, room: str) -> int:
    """`room chat ROOM --ephemeral`: the exit code (0 left or ended, 3 panic)."""
    async def work(client: Client) -> int:
        try:
            room_id = client.rooms.get(room).room_id
        except SottovoceError:
            raise CliError(f"no room '{render.safe(room)}' on this device "
                           "(sottovoce room list shows them)") from None
        label = client.rooms.get(room_id).label
        if not args.server_relay:
            _use_data_channel(client, args)
        await client.connect()
        group = await client.ephemeral.groups.open(room_id)
        how = "joined the" if not group.starter else "started an"
        print(f"{how} ephemeral chat of #{render.safe(label)}: nothing is stored; "
              "/quit leaves, /panic or Ctrl-\\ ends it for everyone", flush=True)
        if group.starter:
            print(f"waiting for members to join (up to {args.wait:g} s; they run: room chat "
                  f"{shlex.quote(render.safe(label))} --ephemeral)", flush=True)
        return await _talk_group(client, group, _pidfile(args), args.wait)

    return _run_chat(args, work)


async def _talk_group(client: Client, group: GroupChat, pidfile: Path, wait: float) -> int:
    from sottovoce.client.events import (
        EphemeralGroupEnded,
        EphemeralGroupLeft,
        EphemeralGroupMessage,
        EphemeralGroupOpened,
        EphemeralMediaReceived,
    )

    loop = asyncio.get_running_loop()
    panicked = asyncio.Event()

    def panic() -> None:
        client.ephemeral.panic()
        panicked.set()

    for sig in (signal.SIGUSR1, signal.SIGQUIT):
        loop.add_signal_handler(sig, panic)
    _write_pid(pidfile)
    events = client.events()
    lines = asyncio.ensure_future(_read_lines(_Group(client, group), panic))
    deadline = loop.time() + wait
    try:
        while True:
            try:
                event: object = await events.next(1.0)
            except TimeoutError:
                event = None
            mine = getattr(event, "chat_id", None) == group.chat_id
            if not group.had_members and loop.time() > deadline and not group.ended.is_set():
                await client.ephemeral.groups.leave(group)
                raise CliError("nobody joined the ephemeral room chat")
            if not mine:
                continue
            if isinstance(event, EphemeralGroupOpened):
                print(f"{render.safe(event.user)} is in the chat "
                      f"(with you: {', '.join(group.members())})", flush=True)
            elif isinstance(event, EphemeralGroupLeft):
                print(f"{render.safe(event.user)} dropped out: {render.safe(event.reason)}",
                      flush=True)
            elif isinstance(event, EphemeralGroupMessage):
                print(f"{render.safe(event.sender)}: {render.safe(event.text)}", flush=True)
            elif isinstance(event, EphemeralMediaReceived):
                _said_media(event)
            elif isinstance(event, EphemeralGroupEnded):
                print(f"ephemeral room chat ended: {render.safe(event.reason)}; nothing of it "
                      "is kept", flush=True)
                return EXIT_PANIC if panicked.is_set() else 0
    finally:
        lines.cancel()
        events.close()
        for sig in (signal.SIGUSR1, signal.SIGQUIT):
            loop.remove_signal_handler(sig)


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines of standard input without a thread (a thread blocked in ``readline`` would
    keep the process alive after the chat ended)."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    loop.add_reader(fd, lambda: queue.put_nowait(os.read(fd, 65536)))
    pending = b""
    try:
        while True:
            chunk = await queue.get()
            if not chunk:
                if pending:
                    yield pending.decode("utf-8", "replace")
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace").rstrip("\r")
    finally:
        loop.remove_reader(fd)


def _write_pid(pidfile: Path) -> None:
    """Our pid for `panic` (mode 600; a pid is all it holds)."""
    fd = os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")


def cmd_panic(args: argparse.Namespace) -> int:
    """end the running ephemeral chat of an account at once

    From another shell: the `chat --ephemeral` running on the data directory
    ends every ephemeral chat at once, tells the other side, and wipes the chat
    keys and messages from memory (as Ctrl-\\ in the chat does). The other side's
    chat ends within a second. The account's passphrase is not needed.

    exit codes: 0 told the running chat; 1 no ephemeral chat runs on that directory

    example:
      {program} panic --data-dir ~/.sottovoce-alice
    """
    pidfile = _pidfile(args)
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        raise CliError(f"no ephemeral chat is running on {pidfile.parent}") from None
    if not _is_ours(pid):
        with contextlib.suppress(OSError):
            pidfile.unlink()
        raise CliError(f"no ephemeral chat is running on {pidfile.parent}")
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        raise CliError(f"no ephemeral chat is running on {pidfile.parent}") from None
    except PermissionError:
        raise CliError("the running chat belongs to another user") from None
    print("panic: the ephemeral chat is ended and its keys wiped", flush=True)
    return 0


def _is_ours(pid: int) -> bool:
    """The process is a sottovoce one (a stale pidfile may name a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return Path("/proc/self").exists() is False  # no /proc: trust the file
    return b"sottovoce" in cmdline


def cmd_room_chat(args: argparse.Namespace) -> int:
    """an ephemeral group chat among the room's online members

    With --ephemeral (required): a chat among the members of ROOM who are online
    and run the same command, with the properties of `chat NAME --ephemeral`:
    nothing stored by anyone, keys made for this chat only and kept in memory,
    deniable. The first member to run it starts the chat and asks the others
    (while it lasts); who runs it later joins. Each pair of members shares a 1:1
    ephemeral chat (peer to peer where it can, else the server's ephemeral path)
    and every line goes to each member over it. Only the room's members, as this
    device's copy of the room says, are asked or let in. /quit leaves (the others
    go on and are told), /panic or Ctrl-\\ ends it for everyone; a member who
    goes offline drops out. /photo PATH and /clip PATH send a file from memory.
    The room's ordinary (stored) chat is `chat '#ROOM'`.

    exit codes: 0 left or ended; 1 an error or nobody joined in time; 3 panic

    example:
      {program} room chat friends --ephemeral --data-dir ~/.sottovoce-alice
    """
    room = args.room.removeprefix("#")  # as `room` commands take it: name, #name or id
    if not args.ephemeral:
        raise CliError(f"room chat is the ephemeral group chat: add --ephemeral (the "
                       f"room's stored chat is: chat {render.quoted_room(room)})")
    return run_group(args, room)


def add_room_command(rs: Subparsers) -> None:
    """`room chat ROOM --ephemeral` (the `room` group is made in cli/room_cmd.py)."""
    from sottovoce.cli.call_cmd import add_path_options
    from sottovoce.cli.options import account_options

    def options(parser: argparse.ArgumentParser) -> None:
        add_path_options(parser)
        add_chat_options(parser)
        account_options(parser)

    subcommand(rs, "chat", func=cmd_room_chat, args=[("ROOM", "the room")], options=options)


def add_commands(sub: Subparsers) -> None:
    subcommand(sub, "panic", func=cmd_panic, options=_panic_options)


def _panic_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
