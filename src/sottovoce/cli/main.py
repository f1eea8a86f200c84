"""Entry point of the `sottovoce` command.

Each command family lives in its own module exposing
``add_commands(subparsers)``; every parser it adds sets ``func`` (a callable
taking the parsed ``argparse.Namespace`` and returning an exit code). Start-up
stays short: the list of commands comes from :data:`COMMAND_HELP` without any
command module, a command imports only its own modules (:data:`COMMAND_SOURCES`),
and those import the client stack (client, MLS, calls) inside the functions that
run a command, never at their top, so ``sottovoce CMD --help`` loads none of it.

Every failure ends here as one or two plain lines on stderr and a non-zero exit
code. ``--debug`` adds the traceback, with every secret and message text the
command was given (the passphrase, TEXT, a join token) blotted out.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from sottovoce import __version__
from sottovoce.cli import terminal
from sottovoce.errors import SottovoceError

#: Modules that contribute subcommands, in help order.
COMMAND_MODULES = (
    "sottovoce.cli.demo",
    "sottovoce.cli.server_cmd",
    "sottovoce.cli.client_cmd",
    "sottovoce.cli.device_cmd",
    "sottovoce.cli.revoke_cmd",
    "sottovoce.cli.conversations_cmd",
    "sottovoce.cli.room_cmd",
    "sottovoce.cli.control_cmd",
    "sottovoce.cli.timer_cmd",
    "sottovoce.cli.call_cmd",
    "sottovoce.cli.recorder_cmd",
    "sottovoce.cli.audit_cmd",
    "sottovoce.cli.kt_cmd",
    "sottovoce.cli.files_cmd",
    "sottovoce.cli.voice_cmd",
    "sottovoce.cli.contacts_cmd",
    "sottovoce.cli.ephemeral_cmd",
    "sottovoce.cli.app_cmd",
    "sottovoce.cli.discovery_cmd",
    "sottovoce.cli.release_cmd",
)
_CLIENT = "sottovoce.cli.client_cmd"
_DEVICE = "sottovoce.cli.device_cmd"
_REVOKE = "sottovoce.cli.revoke_cmd"
_CONTROL = "sottovoce.cli.control_cmd"
_CONVERSATIONS = "sottovoce.cli.conversations_cmd"
_DISCOVERY = "sottovoce.cli.discovery_cmd"
#: The modules that declare each top-level command, in COMMAND_MODULES order (``revoke``
#: adds to the ``account`` and ``device`` groups, so it needs the modules that make them;
#: so do ``account settings`` and ``room edit|delete|react``).
COMMAND_SOURCES: dict[str, tuple[str, ...]] = {
    "demo": ("sottovoce.cli.demo",),
    "server": ("sottovoce.cli.server_cmd",),
    **dict.fromkeys(("send", "listen", "chat", "history", "verify"), (_CLIENT,)),
    "account": (_CLIENT, _REVOKE, _CONVERSATIONS, _CONTROL, _DISCOVERY),
    **dict.fromkeys(("list", "search", "export", "forget"), (_CONVERSATIONS,)),
    "device": (_CLIENT, _DEVICE, _REVOKE),
    "room": ("sottovoce.cli.room_cmd", _CONTROL, "sottovoce.cli.timer_cmd"),
    "timer": ("sottovoce.cli.timer_cmd",),
    **dict.fromkeys(("edit", "delete", "react"), (_CONTROL,)),
    **dict.fromkeys(("call", "answer", "decline"), ("sottovoce.cli.call_cmd",)),
    "recorder": ("sottovoce.cli.recorder_cmd",),
    "audit": ("sottovoce.cli.audit_cmd",),
    "kt": ("sottovoce.cli.kt_cmd",),
    "save": ("sottovoce.cli.files_cmd",),
    "play": ("sottovoce.cli.voice_cmd",),
    **dict.fromkeys(("contacts", "requests"), ("sottovoce.cli.contacts_cmd",)),
    "panic": ("sottovoce.cli.ephemeral_cmd",),
    "app": ("sottovoce.cli.app_cmd",),
    **dict.fromkeys(("find", "fvc"), (_DISCOVERY,)),
    "verify-build": ("sottovoce.cli.release_cmd",),
}
#: What the top-level help says of each command, in help order: the list of commands needs
#: no command module (tests/unit/test_cli_lazy.py holds it to the modules' own help).
COMMAND_HELP: dict[str, str] = {
    "demo": "two users exchange messages through an in-memory relay that sees only ciphertext",
    "server": "run the relay server (embedded SQLite, no set-up)",
    "account": "create, link, recover or delete an account, or change its passphrase",
    "send": "send one message (or a file) and wait for the server's ✓",
    "listen": "print incoming messages, room messages and invitations (Ctrl-C to stop)",
    "chat": "chat with a person (NAME) or in a room ('#ROOM') in a terminal UI",
    "history": "print the messages and calls with NAME from the local store",
    "verify": "show the safety number with NAME (digits and a QR code)",
    "device": "link a new device to this account, list and name its devices",
    "list": "list every conversation, with unread counts and the last message's time",
    "search": "find the messages on this device that hold every one of WORDS",
    "export": "write one conversation's history to a JSON file only you can read",
    "forget": "delete one conversation's messages on this device",
    "room": "rooms: group chats end-to-end encrypted with MLS",
    "edit": "replace the text of a message you sent (everyone sees it was edited)",
    "delete": "delete a message on this device, or for everyone (--for-everyone)",
    "react": "add (or --remove) an emoji reaction on a message",
    "timer": "set or show the disappearing-messages timer of a chat",
    "call": "call NAME: ring all of NAME's devices and follow the call",
    "answer": "wait for the next incoming call and accept it",
    "decline": "wait for the next incoming call and decline it",
    "recorder": "run the opt-in recorder device: it records the calls of rooms that ask for it",
    "audit": "audit a running server (blindness kit)",
    "kt": "key transparency: this device's view of the log (status, ack), witnesses",
    "save": "write a received file, decrypted, to DEST",
    "play": "play a received voice note on this device's audio output",
    "contacts": "your contacts: list, add, remove, block, unblock",
    "requests": "message requests: list, accept, decline, block",
    "panic": "end the running ephemeral chat of an account at once",
    "app": "open chats, rooms and calls in the browser",
    "find": "search the public accounts by the start of their name",
    "fvc": "friend verification codes: show, new --static N, revoke",
    "verify-build": (
        "check an installed copy, a checkout or a wheel against a signed release manifest"
    ),
}
_DEBUG_HELP = "on an error, also print the traceback (secrets and message text are blotted out)"
#: Arguments whose values never appear in what a failure prints.
_SECRET_ARGS = ("text", "token", "code")


def _add_debug(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the default is SUPPRESS, so `sottovoce --debug send ...` is not undone.
    parser.add_argument(
        "--debug",
        action="store_true",
        help=_DEBUG_HELP,
        default=False if top else argparse.SUPPRESS,
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug(child, top=False)


class _Parser(argparse.ArgumentParser):
    """A usage mistake in two lines, what is wrong and where the help is, not the whole
    usage block (subcommands inherit the class)."""

    def error(self, message: str) -> NoReturn:
        hint = f"'{self.prog} --help' shows the options and an example"
        argv, extra = sys.argv[1:], message.removeprefix("unrecognized arguments: ").split()
        after = argv[argv.index("--") + 1:] if "--" in argv else []
        if message.startswith("unrecognized arguments: -") and set(extra) <= set(after):
            hint = "after '--' every word is an argument, not an option: put options before '--'"
        self.exit(2, f"{self.prog}: error: {message}\n{hint}\n")


def modules_for(argv: Sequence[str]) -> tuple[str, ...]:
    """The command modules a parse of ``argv`` needs: only the named command's when the
    command comes first (after ``--debug`` at most), else none (the top-level help, the
    version and an unknown command's choices come from :data:`COMMAND_HELP`). A server
    start thus imports no client code."""
    for word in argv:
        if word == "--debug":
            continue
        if word in COMMAND_SOURCES:
            return COMMAND_SOURCES[word]
        break
    return ()


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or, given ``argv``, of what parsing it needs.

    When ``argv`` names no command first, that is the list of commands only, each one
    a stand-in without options (:func:`parse` parses again with the command's own
    modules when one is picked that way, as in ``sottovoce --deb server``)."""
    parser = _Parser(
        prog="sottovoce",
        description="End-to-end encrypted messaging with a blind relay server.",
        epilog="Run 'sottovoce COMMAND --help' for the options and an example of one command.",
    )
    parser.add_argument("--version", action="version", version=f"sottovoce {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = COMMAND_MODULES if argv is None else modules_for(argv)
    for name in modules:
        importlib.import_module(name).add_commands(sub)
    if not modules:
        for command, summary in COMMAND_HELP.items():
            sub.add_parser(command, help=summary, add_help=False)
    _add_debug(parser, top=True)
    return parser


def parse(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser ``argv`` needs and what it makes of ``argv``; a usage mistake, ``--help``
    and ``--version`` exit here."""
    parser = build_parser(argv)
    if not modules_for(argv):
        picked, _ = parser.parse_known_args(argv)
        if picked.command is not None:
            parser = build_parser([picked.command])
    return parser, parser.parse_args(argv)


def redacted_traceback(exc: BaseException, secrets: Sequence[str]) -> str:
    """The traceback of ``exc`` with each of ``secrets`` blotted out, safe for a terminal."""
    text = "".join(traceback.format_exception(exc))
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return terminal.safe(text, multiline=True)


def _secrets(args: argparse.Namespace) -> list[str]:
    found: list[str] = list(getattr(args, "secrets", []))
    for name in _SECRET_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            found.append(value)
    return found


def _explain(exc: SottovoceError, args: argparse.Namespace) -> str:
    """What a failed command prints. Only the client's errors have more to say than their
    text, and they exist only once the client code is imported: a command that never
    imported it (``server``) does not import it to fail."""
    if "sottovoce.client" not in sys.modules:
        return str(exc)
    from sottovoce.cli.session import explain

    return explain(exc, args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, args = parse(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    try:
        code: int = func(args)
        return code
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): nothing more to say, and nowhere to say it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except SottovoceError as exc:
        if debug:
            print(redacted_traceback(exc, _secrets(args)), file=sys.stderr)
        print(terminal.error(_explain(exc, args)), file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            print(redacted_traceback(exc, _secrets(args)), file=sys.stderr)
            print(terminal.error(f"internal error ({type(exc).__name__})"), file=sys.stderr)
        else:
            print(
                terminal.error(
                    f"internal error ({type(exc).__name__}): this is a bug in sottovoce\n"
                    "run the command again with --debug to see where, and report it"
                ),
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
