"""Client commands: `account create`, `account delete`, `send`, `listen`, `chat`, `verify`.

Every command works on one account directory: ``--data-dir``, else
``$SOTTOVOCE_HOME``, else ``<user data dir>/sottovoce/client``. Two accounts
on one machine simply use two directories. The passphrase that seals the
directory comes from ``--passphrase-file``, else ``$SOTTOVOCE_PASSPHRASE``,
else an interactive prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import platformdirs

from sottovoce.client import (
    Client,
    DeliveryStatus,
    EphemeralReceived,
    ErrorEvent,
    MessageReceived,
    NotConnected,
    StoredMessage,
)
from sottovoce.errors import UsageError
from sottovoce.identity import SafetyNumber

ENV_HOME = "SOTTOVOCE_HOME"
ENV_PASSPHRASE = "SOTTOVOCE_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
DEFAULT_SERVER = "ws://127.0.0.1:8765"

T = TypeVar("T")

_DATA_DIR_HELP = (
    f"the account directory (default: ${ENV_HOME}, else {{user data dir}}/sottovoce/client); "
    "use one directory per account to keep several accounts on one machine"
)


def default_data_dir() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("sottovoce", appauthor=False)) / "client"


def data_dir(args: argparse.Namespace) -> Path:
    given: str | None = getattr(args, "data_dir", None)
    return Path(given).expanduser() if given else default_data_dir()


def read_passphrase(args: argparse.Namespace, *, confirm: bool = False) -> str:
    """--passphrase-file, then $SOTTOVOCE_PASSPHRASE, then a prompt (twice when creating)."""
    path: str | None = getattr(args, "passphrase_file", None)
    if path:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read the passphrase file: {exc.strerror}") from None
        return text.rstrip("\r\n")
    env = os.environ.get(ENV_PASSPHRASE)
    if env:
        return env
    if not sys.stdin.isatty():
        raise UsageError(
            f"no passphrase: use --passphrase-file or ${ENV_PASSPHRASE}, or run in a terminal"
        )
    first = getpass.getpass("Passphrase for the local store: ")
    if confirm and getpass.getpass("Repeat the passphrase: ") != first:
        raise UsageError("the passphrases differ")
    return first


def _run(coro: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def format_message(m: StoredMessage, me: str) -> str:
    when = time.strftime("%H:%M", time.localtime((m.client_created_ms or m.local_at_ms) / 1000))
    if m.status is DeliveryStatus.FAILED and not m.text:
        return f"{when} {m.sender}: [message could not be decrypted]"
    who = "you" if m.sender == me else m.sender
    tick = f" {m.status.tick}" if m.outgoing else ""
    to = f" → {m.peer}" if m.outgoing else ""
    return f"{when} {who}{to}: {m.text}{tick}"


def qr_text(sn: SafetyNumber) -> str:
    """The safety-number QR code as terminal text (segno, two modules per character)."""
    import io

    import segno

    out = io.StringIO()
    segno.make(sn.qr_payload(), error="m", micro=False).terminal(out=out, compact=True, border=2)
    return out.getvalue()


# =============================================================================
# Commands
# =============================================================================


def cmd_account_create(args: argparse.Namespace) -> int:
    root = data_dir(args)
    passphrase = read_passphrase(args, confirm=True)

    async def go() -> int:
        client = await Client.create_account(args.server, args.name, root, passphrase)
        try:
            print(f"created account '{client.username}' (device {client.device_id})")
            print(f"  server:   {args.server}")
            print(f"  data dir: {root}")
            print("next: sottovoce send NAME TEXT, sottovoce chat NAME, sottovoce verify NAME")
        finally:
            await client.close()
        return 0

    return _run(go())


def confirm_deletion(username: str, server: str) -> bool:
    """Ask on the terminal; the user must type the username back."""
    if not sys.stdin.isatty():
        raise UsageError("not deleting without confirmation: pass --yes, or run in a terminal")
    print(
        f"This deletes the account '{username}' on {server} for every one of its devices.\n"
        "Its devices are revoked, messages waiting on the server are dropped, rooms remove\n"
        "it, and the name can never be registered again. This cannot be undone."
    )
    answer = input(f"Type the username ({username}) to confirm: ")
    return answer.strip() == username


def cmd_account_delete(args: argparse.Namespace) -> int:
    root = data_dir(args)
    passphrase = read_passphrase(args)
    client = Client.load(root, passphrase)
    try:
        confirmed = args.yes or confirm_deletion(client.username, client.identity.server_url)
    except BaseException:
        _run(client.close())
        raise
    if not confirmed:
        _run(client.close())
        print("not deleted.")
        return 1

    async def go() -> int:
        try:
            await client.connect(timeout=args.timeout)
            await client.delete_account()
        finally:
            await client.close()
        print(f"deleted account '{client.username}'; its name cannot be registered again.")
        print(f"the local history stays in {root} until you remove that directory.")
        return 0

    return _run(go())


def cmd_send(args: argparse.Namespace) -> int:
    root = data_dir(args)
    passphrase = read_passphrase(args)

    async def go() -> int:
        client = await Client.open(root, passphrase)
        try:
            await client.connect(timeout=args.timeout)
            message_id = await client.send_text(args.name, args.text)
            seq = await client.wait_sent(message_id, timeout=args.timeout)
            print(f"✓ sent to {args.name} (serverSeq {seq})")
            return 0
        except NotConnected as exc:
            if client.pending_sends():
                print(f"queued: {exc}; it is sent the next time this account connects")
            else:
                print(f"sottovoce: error: {exc}", file=sys.stderr)
            return 1
        finally:
            await client.close()

    return _run(go())


def cmd_listen(args: argparse.Namespace) -> int:
    root = data_dir(args)
    passphrase = read_passphrase(args)

    async def go() -> int:
        client = await Client.open(root, passphrase)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        events = client.events()
        try:
            await client.connect(wait=False)
            print(
                f"listening as {client.username} (device {client.device_id}); Ctrl-C to stop",
                flush=True,
            )
            while not stop.is_set():
                getter = asyncio.ensure_future(events.next())
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if getter not in done:
                    getter.cancel()
                    break
                event = getter.result()
                if isinstance(event, MessageReceived):
                    # Read back from the store: the store is what the UI shows.
                    stored = client.message(event.message.message_id)
                    if stored is not None:
                        print(format_message(stored, client.username), flush=True)
                elif isinstance(event, EphemeralReceived):
                    print(f"(ephemeral) {event.sender}: {event.text}", flush=True)
                elif isinstance(event, ErrorEvent):
                    print(f"! {event.code}: {event.message}", file=sys.stderr, flush=True)
        finally:
            events.close()
            await client.close()
        print("stopped.", flush=True)
        return 0

    return _run(go())


def cmd_verify(args: argparse.Namespace) -> int:
    root = data_dir(args)
    passphrase = read_passphrase(args)

    async def go() -> int:
        client = await Client.open(root, passphrase)
        try:
            sn = client.known_safety_number(args.name)
            if sn is None:
                await client.connect(timeout=args.timeout)
                sn = await client.safety_number(args.name)
        finally:
            await client.close()
        print(f"Safety number for you ({client.username}) and {args.name}:\n")
        print(sn.grouped())
        print()
        if not args.no_qr:
            print(qr_text(sn))
        print(
            "Compare these 60 digits with what "
            f"{args.name} sees (in person or by a call), or scan the QR code."
        )
        return 0

    return _run(go())


def cmd_chat(args: argparse.Namespace) -> int:
    from sottovoce.cli.tui import run_chat

    root = data_dir(args)
    passphrase = read_passphrase(args)
    client = Client.load(root, passphrase)  # a wrong passphrase fails before the screen opens
    return run_chat(client, args.name)


# =============================================================================
# Parsers
# =============================================================================


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help=_DATA_DIR_HELP)
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"read the store passphrase from FILE (else ${ENV_PASSPHRASE}, else a prompt)",
    )


def _timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=float, default=15.0, metavar="S", help="seconds to wait for the server"
    )


def _parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str,
    example: str,
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"example:\n{example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    account = sub.add_parser(
        "account",
        help="create or delete an account (username, keys, local encrypted store)",
        description="Manage the account kept in a local directory.",
        epilog=(
            "example:\n  sottovoce account create alice --server ws://127.0.0.1:8765 "
            "--data-dir ~/.sv-alice\n  sottovoce account delete --data-dir ~/.sv-alice"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def account_help(args: argparse.Namespace) -> int:
        account.print_help()
        return 2

    account.set_defaults(func=account_help)
    account_sub = account.add_subparsers(dest="account_command", metavar="SUBCOMMAND")
    create = _parser(
        account_sub,
        "create",
        help="claim a username on a server and make this device's keys",
        description=(
            "Claim NAME on the server (a public alias: no e-mail, no phone number), make an "
            "account key, this device's keys and certificate, upload signed prekeys, and keep "
            "every private key sealed in the data directory under your passphrase."
        ),
        example=(
            "  sottovoce account create alice --server ws://127.0.0.1:8765 --data-dir ~/.sv-alice\n"
            "  SOTTOVOCE_HOME=~/.sv-bob sottovoce account create bob"
        ),
        func=cmd_account_create,
    )
    create.add_argument("name", metavar="NAME", help="the username to claim (a-z, 0-9, _ . -)")
    create.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        metavar="URL",
        help=f"the relay server (default {DEFAULT_SERVER}; wss:// for TLS)",
    )
    _common(create)

    delete = _parser(
        account_sub,
        "delete",
        help="delete this account on the server, for all of its devices (irreversible)",
        description=(
            "Sign a deletion with the account key and send it: the server revokes every "
            "device of the account, drops its prekeys and the messages waiting for it, asks "
            "every room it is in to remove it, and keeps the username reserved forever so "
            "nobody can impersonate you under it. Asks you to type the username unless "
            "--yes is given. The local history stays in the data directory."
        ),
        example=(
            "  sottovoce account delete --data-dir ~/.sv-alice\n"
            "  sottovoce account delete --yes --data-dir ~/.sv-alice --passphrase-file pw.txt"
        ),
        func=cmd_account_delete,
    )
    delete.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation (for scripts)"
    )
    _common(delete)
    _timeout(delete)

    send = _parser(
        sub,
        "send",
        help="send one message and wait for the server's ✓",
        description=(
            "Encrypt TEXT for every device of NAME (and your other devices), send it, and "
            "wait until the server has stored it (✓). If the server is unreachable the "
            "message stays queued and goes out the next time this account connects."
        ),
        example="  sottovoce send bob 'hello bob' --data-dir ~/.sv-alice",
        func=cmd_send,
    )
    send.add_argument("name", metavar="NAME", help="the recipient's username")
    send.add_argument("text", metavar="TEXT", help="the message")
    _common(send)
    _timeout(send)

    listen = _parser(
        sub,
        "listen",
        help="print incoming messages as they arrive (Ctrl-C to stop)",
        description=(
            "Connect, catch up on everything that arrived while offline, then print each "
            "message as it is stored locally. Ctrl-C stops cleanly."
        ),
        example="  sottovoce listen --data-dir ~/.sv-bob",
        func=cmd_listen,
    )
    _common(listen)

    chat = _parser(
        sub,
        "chat",
        help="chat with NAME in a terminal UI",
        description=(
            "A full-screen chat with NAME: history from the local store, an input line, "
            "delivery ticks (… sending, ✓ stored by the server), PageUp/PageDown to scroll "
            "(older messages load at the top), Ctrl-S for the safety number, Ctrl-Q to quit."
        ),
        example="  sottovoce chat bob --data-dir ~/.sv-alice",
        func=cmd_chat,
    )
    chat.add_argument("name", metavar="NAME", help="who to chat with")
    _common(chat)

    verify = _parser(
        sub,
        "verify",
        help="show the safety number with NAME (digits and a QR code)",
        description=(
            "Print the 60-digit safety number of your account and NAME's, and a QR code of "
            "it. Both of you see the same number; if it differs, someone is in the middle."
        ),
        example="  sottovoce verify bob --data-dir ~/.sv-alice",
        func=cmd_verify,
    )
    verify.add_argument("name", metavar="NAME", help="the other user")
    verify.add_argument("--no-qr", action="store_true", help="print the digits only")
    _common(verify)
    _timeout(verify)
