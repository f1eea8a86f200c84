"""The options every account command shares, and how a subcommand is declared.

Only :mod:`argparse`: declaring a command imports no client code, so a command
that opens no account (``server``, ``kt witness``) starts without it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TypeAlias

ENV_HOME = "SOTTOVOCE_HOME"
ENV_PASSPHRASE = "SOTTOVOCE_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


# =============================================================================
# Options every account command shares
# =============================================================================

_DATA_DIR_HELP = (
    f"the account directory (default: ${ENV_HOME}, else {{user data dir}}/sottovoce/client); "
    "use one directory per account to keep several accounts on one machine"
)


def account_options(parser: argparse.ArgumentParser) -> None:
    """--data-dir and --passphrase-file, for every command that opens an account."""
    parser.add_argument("--data-dir", metavar="DIR", help=_DATA_DIR_HELP)
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"read the store passphrase from FILE (else ${ENV_PASSPHRASE}, else a prompt)",
    )


def history_options(parser: argparse.ArgumentParser) -> None:
    """--limit and --offline, then the account options, for commands that print a history."""
    parser.add_argument(
        "--limit", type=positive(int), default=50, metavar="N", help="the last N (default 50)"
    )
    parser.add_argument("--offline", action="store_true", help="do not connect; local store only")
    account_options(parser)
    add_timeout(parser)


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a number above zero (argparse turns the ValueError into usage)."""

    def parse(text: str) -> int | float:
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value

    parse.__name__ = f"positive {kind.__name__}"  # what argparse names in its message
    return parse


def add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=positive(float),
        default=15.0,
        metavar="S",
        help="seconds to wait for the server (default 15)",
    )


#: Where a command module adds its commands (what ``add_subparsers`` returns).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: A positional argument as (METAVAR, help); its attribute is the metavar in lower case.
Positional = tuple[str, str | None]


def no_options(parser: argparse.ArgumentParser) -> None:
    """For a command that opens no account (``demo``)."""


def timed_account_options(parser: argparse.ArgumentParser) -> None:
    """The account options and --timeout: for a command that opens the account and connects."""
    account_options(parser)
    add_timeout(parser)


def subcommand(
    sub: Subparsers,
    name: str,
    *,
    help: str,
    description: str,
    example: str,
    func: Callable[[argparse.Namespace], int],
    args: Sequence[Positional] = (),
    options: Callable[[argparse.ArgumentParser], None] = timed_account_options,
    heading: str = "example",
) -> argparse.ArgumentParser:
    """A subcommand with its positionals, then ``options`` (by default the account's).

    Every account command takes the same options, so a new one is a table entry;
    the caller adds the flags only it has to the parser returned. ``example`` is
    shown under ``heading`` at the end of the help.
    """
    parser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"{heading}:\n{example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    for metavar, text in args:
        parser.add_argument(metavar.lower(), metavar=metavar, help=text)
    options(parser)
    return parser


def command_group(
    sub: Subparsers,
    name: str,
    *,
    help: str,
    description: str,
    example: str,
    metavar: str = "SUBCOMMAND",
    required: bool = False,
) -> Subparsers:
    """A command made of subcommands (``account``, ``room``); alone it prints its help (exit 2),
    or, ``required``, says that ``metavar`` is missing (exit 2)."""

    def show_help(args: argparse.Namespace) -> int:
        group.print_help()
        return 2

    group = subcommand(
        sub, name, help=help, description=description, example=example, func=show_help,
        options=no_options,
    )
    return group.add_subparsers(dest=f"{name}_command", metavar=metavar, required=required)
