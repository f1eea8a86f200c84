"""Entry point of the `sottovoce` command.

Each command family lives in its own module exposing
``add_commands(subparsers)``; every parser it adds sets ``func`` (a callable
taking the parsed ``argparse.Namespace`` and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sottovoce import __version__
from sottovoce.errors import SottovoceError

#: Modules that contribute subcommands, in help order.
COMMAND_MODULES = (
    "sottovoce.cli.demo",
    "sottovoce.cli.server_cmd",
    "sottovoce.cli.client_cmd",
    "sottovoce.cli.room_cmd",
    "sottovoce.cli.audit_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sottovoce",
        description="End-to-end encrypted messaging with a blind relay server.",
        epilog="Run 'sottovoce COMMAND --help' for the options and an example of one command.",
    )
    parser.add_argument("--version", action="version", version=f"sottovoce {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code: int = func(args)
        return code
    except SottovoceError as exc:
        print(f"sottovoce: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
