"""The options every account command shares, and how a subcommand is declared.

Only :mod:`argparse`: declaring a command imports no client code, so a command
that opens no account (``server``, ``kt witness``) starts without it.

A command's help can be written once, as the docstring of the function that runs
it (see :func:`command_text`), instead of as ``help``/``description``/``example``
arguments; both ways give the same help. ``{program}`` in such a docstring stands
for the program as it can be pasted (:func:`sottovoce.cli.program.command_name`).
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from sottovoce.cli.program import command_name

ENV_HOME = "SOTTOVOCE_HOME"
ENV_PASSPHRASE = "SOTTOVOCE_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


# =============================================================================
# Options every account command shares
# =============================================================================

_DATA_DIR_HELP = (
    f"the account directory (default: ${ENV_HOME}, else {{user data dir}}/sottovoce/client); "
    "use one directory per account to keep several accounts on one machine"
)
DATA_DIR_HELP = _DATA_DIR_HELP  #: for a command that takes --data-dir only


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


@dataclass(frozen=True, slots=True)
class CommandText:
    """What a command's help says: the one line in the list of commands, the text
    under its usage, and the example shown under ``heading`` at the end."""

    help: str
    description: str
    example: str
    heading: str = "example"


#: In a command's docstring, the program as it can be pasted (``sottovoce`` only when
#: PATH finds this one).
PROGRAM = "{program}"
_HEADING = re.compile(r"[a-z][a-z ]*:")


def command_text(func: Callable[..., object]) -> CommandText:
    """The help written as ``func``'s docstring, in paragraphs (blank lines between):
    the first is the one-line help, the last opens with a heading line (``example:``)
    followed by the example lines as shown, and those between are the description.
    The lines of a paragraph are joined with spaces; in the example, a line ending in
    a backslash goes on with the next line; ``{program}`` is the program's name as
    it can be pasted."""
    doc = inspect.cleandoc(func.__doc__ or "")
    if PROGRAM in doc:
        doc = doc.replace(PROGRAM, command_name())
    paragraphs = doc.split("\n\n")
    last = paragraphs[-1].splitlines()
    if len(paragraphs) < 3 or not last or not _HEADING.fullmatch(last[0]):
        raise ValueError(f"{func.__qualname__}: the docstring is not a command's help")
    return CommandText(
        help=_joined(paragraphs[0]),
        description="\n\n".join(_joined(p) for p in paragraphs[1:-1]),
        example=re.sub(r"\\\n *", "", "\n".join(last[1:])),
        heading=last[0][:-1],
    )


def _joined(paragraph: str) -> str:
    return " ".join(line.strip() for line in paragraph.splitlines())


def subcommand(
    sub: Subparsers,
    name: str,
    *,
    func: Callable[[argparse.Namespace], int],
    help: str | None = None,
    description: str = "",
    example: str = "",
    args: Sequence[Positional] = (),
    options: Callable[[argparse.ArgumentParser], None] = timed_account_options,
    heading: str = "example",
) -> argparse.ArgumentParser:
    """A subcommand with its positionals, then ``options`` (by default the account's).

    Every account command takes the same options, so a new one is a table entry;
    the caller adds the flags only it has to the parser returned. ``example`` is
    shown under ``heading`` at the end of the help. Without ``help``, all four come
    from ``func``'s docstring (:func:`command_text`).
    """
    if help is None:
        text = command_text(func)
        help, description, example, heading = (
            text.help, text.description, text.example, text.heading)
    parser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"{heading}:\n{example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    for metavar, text_ in args:
        parser.add_argument(metavar.lower(), metavar=metavar, help=text_)
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
