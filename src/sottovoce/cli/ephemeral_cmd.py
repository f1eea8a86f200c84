"""Ephemeral chats on the command line: `chat NAME --ephemeral` and `panic`
(docs/protocol.md §Ephemeral chats).

    chat bob --ephemeral     ask bob (or answer bob's request) and chat line by line;
                             nothing is stored, anywhere; /quit or end of input leaves
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
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from sottovoce.cli import render
from sottovoce.cli.options import DATA_DIR_HELP, Subparsers, positive, subcommand
from sottovoce.cli.session import CliError, Connect, data_dir, with_client
from sottovoce.client import Client
from sottovoce.client.ephemeral import Chat
from sottovoce.client.errors import ServerError
from sottovoce.client.events import EphemeralChatEnded, EphemeralChatMessage
from sottovoce.errors import SottovoceError

PIDFILE = "ephemeral.pid"
#: `chat --ephemeral` exits with this after a panic (0 after leaving, 1 on an error).
EXIT_PANIC = 3


def add_chat_options(parser: argparse.ArgumentParser) -> None:
    """`chat`'s flags for an ephemeral chat (`--relay-only`, `--loopback` are `chat`'s own)."""
    parser.add_argument(
        "--ephemeral", action="store_true",
        help="an ephemeral chat: both online, keys made for this chat only and kept in "
        "memory, nothing stored by anyone; line by line (/quit leaves, Ctrl-\\ panics)",
    )
    parser.add_argument(
        "--server-relay", action="store_true",
        help="with --ephemeral: no direct data channel, every message through the server's "
        "ephemeral path (stored nowhere)",
    )
    parser.add_argument(
        "--wait", type=positive(float), default=60.0, metavar="SECONDS",
        help="with --ephemeral: how long to wait for the other side to answer (default 60)",
    )


def _pidfile(args: argparse.Namespace) -> Path:
    return data_dir(args) / PIDFILE


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
        return await _talk(client, chat, pidfile)

    pidfile = _pidfile(args)
    try:
        return with_client(args, work, connect=Connect.NO, notices=False)
    finally:
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == str(os.getpid()):
                pidfile.unlink()


def _use_data_channel(client: Client, args: argparse.Namespace) -> None:
    # Imported here: the media stack loads only for a chat that may use it.
    from sottovoce.client.calls import IceConfig
    from sottovoce.client.calls.datachannel import pipe_maker

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
    lines = asyncio.ensure_future(_read_lines(client, chat, panic))
    channel = asyncio.ensure_future(_tell_channel(chat))
    try:
        while True:
            event = await events.next()
            if isinstance(event, EphemeralChatMessage) and event.chat_id == chat.chat_id:
                print(f"{render.safe(event.sender)}: {render.safe(event.text)}", flush=True)
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


async def _read_lines(client: Client, chat: Chat, panic: Callable[[], None]) -> None:
    """Each typed line is a message; /quit or the end of input leaves, /panic panics."""
    async for text in _stdin_lines():
        if text == "/quit":
            break
        if text == "/panic":
            panic()
            return
        if text:
            try:
                await client.ephemeral.send(chat, text)
            except SottovoceError as exc:  # shown; the chat's end event follows if it ended
                print(f"not sent: {render.safe(str(exc))}", file=sys.stderr, flush=True)
    await client.ephemeral.leave(chat)


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


def add_commands(sub: Subparsers) -> None:
    subcommand(sub, "panic", func=cmd_panic, options=_panic_options)


def _panic_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
