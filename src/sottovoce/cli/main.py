"""Entry point of the `sottovoce` command.

Each command family lives in its own module exposing
``add_commands(subparsers)``; every parser it adds sets ``func`` (a callable
taking the parsed ``argparse.Namespace`` and returning an exit code).

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
from sottovoce.cli import render
from sottovoce.cli.session import explain
from sottovoce.errors import SottovoceError

#: Modules that contribute subcommands, in help order.
COMMAND_MODULES = (
    "sottovoce.cli.demo",
    "sottovoce.cli.server_cmd",
    "sottovoce.cli.client_cmd",
    "sottovoce.cli.device_cmd",
    "sottovoce.cli.revoke_cmd",
    "sottovoce.cli.room_cmd",
    "sottovoce.cli.call_cmd",
    "sottovoce.cli.recorder_cmd",
    "sottovoce.cli.audit_cmd",
    "sottovoce.cli.kt_cmd",
)
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sottovoce",
        description="End-to-end encrypted messaging with a blind relay server.",
        epilog="Run 'sottovoce COMMAND --help' for the options and an example of one command.",
    )
    parser.add_argument("--version", action="version", version=f"sottovoce {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    _add_debug(parser, top=True)
    return parser


def redacted_traceback(exc: BaseException, secrets: Sequence[str]) -> str:
    """The traceback of ``exc`` with each of ``secrets`` blotted out, safe for a terminal."""
    text = "".join(traceback.format_exception(exc))
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return render.safe(text, multiline=True)


def _secrets(args: argparse.Namespace) -> list[str]:
    found: list[str] = list(getattr(args, "secrets", []))
    for name in _SECRET_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            found.append(value)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        print(render.error(explain(exc, args)), file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            print(redacted_traceback(exc, _secrets(args)), file=sys.stderr)
            print(render.error(f"internal error ({type(exc).__name__})"), file=sys.stderr)
        else:
            print(
                render.error(
                    f"internal error ({type(exc).__name__}): this is a bug in sottovoce\n"
                    "run the command again with --debug to see where, and report it"
                ),
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
