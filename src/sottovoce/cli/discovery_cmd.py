"""`account discovery` and `find`: who may find this account, and the search over the
accounts that chose to be found (client/discovery.py)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.options import subcommand
from sottovoce.cli.program import command_name
from sottovoce.cli.session import Connect, with_client

if TYPE_CHECKING:
    from sottovoce.client import Client

_MODES_TEXT = (
    "public: anyone may find the account by searching the start of its name (find PREFIX); "
    "default: only someone who knows the exact name finds it; strict: the server answers "
    "about it as about a name nobody holds, except to your own devices."
)


def cmd_discovery(args: argparse.Namespace) -> int:
    async def work(client: Client) -> str:
        return await client.discovery.mode(args.mode)

    mode = with_client(args, work, connect=Connect.REQUIRED)
    print(f"discovery: {mode}" if args.mode is None else f"discovery is now {mode}")
    return 0


def cmd_find(args: argparse.Namespace) -> int:
    async def work(client: Client) -> list[str]:
        return await client.discovery.find(args.prefix)

    found = with_client(args, work, connect=Connect.REQUIRED)
    for name in found:
        print(render.safe(name))
    if not found:
        print(f"no public account starts with {render.safe(args.prefix)}")
    return 0


def _account_group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    parser = sub.choices.get("account")
    if parser is None or parser._subparsers is None:
        return None
    for action in parser._subparsers._group_actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    program = command_name()
    subcommand(
        sub, "find",
        help="search the public accounts by the start of their name",
        description=(
            "List the accounts whose name starts with PREFIX (at least 3 characters, at "
            "most 20 names) among those that chose public discovery. Each search costs "
            "your device a proof of work (a fraction of a second) and the server allows "
            "a few a minute."
        ),
        example=f"  {program} find ali",
        func=cmd_find, args=[("PREFIX", "the start of the name")],
    )
    add_fvc_commands(sub)
    account = _account_group(sub)
    if account is None:
        return
    parser = subcommand(
        account, "discovery",
        help="show or change who may find this account: public, default or strict",
        description="Without MODE, show the account's discovery mode. " + _MODES_TEXT,
        example=f"  {program} account discovery public",
        func=cmd_discovery,
    )
    parser.add_argument("mode", nargs="?", choices=("public", "default", "strict"),
                        metavar="MODE", help="public, default or strict")


def cmd_fvc_show(args: argparse.Namespace) -> int:
    async def work(client: Client) -> tuple[str, int]:
        return await client.fvc.current()

    code, left = with_client(args, work, connect=Connect.TRY)
    print(f"{code}  (current for {left} s more; accepted up to a minute either side, once)")
    return 0


def cmd_fvc_new(args: argparse.Namespace) -> int:
    async def work(client: Client) -> list[str]:
        return await client.fvc.new_static(args.static)

    codes = with_client(args, work, connect=Connect.REQUIRED)
    for code in codes:
        print(code)
    print(f"{len(codes)} single-use codes: shown only now; older static codes no longer work",
          file=sys.stderr)
    return 0


def cmd_fvc_revoke(args: argparse.Namespace) -> int:
    async def work(client: Client) -> None:
        await client.fvc.revoke()

    with_client(args, work, connect=Connect.REQUIRED)
    print("friend verification codes revoked: the shown code and every static code are dead")
    return 0


def add_fvc_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    program = command_name()
    fvc = sub.add_parser(
        "fvc", help="friend verification codes: show, new --static N, revoke",
        description=(
            "A friend verification code lets someone reach this account in strict "
            "discovery: they pass it with --code to send or contacts add. Your devices "
            "check a time-based code (the server never sees it); a static code is checked "
            "by the server against its hash and then deleted."
        ),
        epilog=f"example:\n  {program} fvc show",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = fvc.add_subparsers(dest="fvc_command", metavar="SUBCOMMAND", required=True)
    subcommand(group, "show", help="the current code (8 digits) and how long it stays current",
               description="Show the current time-based code (a new one every 60 s; one "
                           "either side is still accepted, each only once).",
               example=f"  {program} fvc show", func=cmd_fvc_show)
    new = subcommand(group, "new", help="make single-use static codes (printed once)",
                     description="Make N single-use codes for people you cannot give a "
                                 "current code to; the server keeps only slow hashes of "
                                 "them, and each stops working once used. Older static "
                                 "codes stop working.",
                     example=f"  {program} fvc new --static 3", func=cmd_fvc_new)
    new.add_argument("--static", type=int, required=True, metavar="N",
                     help="how many codes (1-20)")
    subcommand(group, "revoke", help="kill the current code and every static code",
               description="Make a new secret (the time-based code changes at once) and "
                           "delete every static code on the server.",
               example=f"  {program} fvc revoke", func=cmd_fvc_revoke)
