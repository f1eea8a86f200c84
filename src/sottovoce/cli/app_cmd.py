"""`sottovoce app`: the browser UI for one account, served on 127.0.0.1 (docs/app.md)."""

from __future__ import annotations

import argparse
import asyncio

from sottovoce.cli.options import ENV_HOME, Subparsers, subcommand
from sottovoce.cli.session import data_dir, require_account


def cmd_app(args: argparse.Namespace) -> int:
    """open chats, rooms and calls in the browser

    Serve the browser UI for the account on 127.0.0.1 (a free port unless --port),
    print its URL and open the default browser on it. The URL carries a one-time
    launch token that the browser exchanges at once for a session cookie; the page
    then asks for the passphrase. Runs until Ctrl-C. With --check it starts, goes
    through the launch and the page once over loopback, and stops (exit 0 when every
    check holds). Calls (room calls through the server's SFU, 1:1 calls) use the
    browser's camera and microphone; --loopback keeps their addresses to 127.0.0.1;
    --relay-only sends 1:1 calls' media through the server's TURN relay only, so the
    peer never learns this device's address (the server must hand out TURN
    credentials: --turn-url).

    example:
      {program} app --check --data-dir ~/.sottovoce-alice
      {program} app --data-dir ~/.sottovoce-alice
    """
    from sottovoce.app.run import run_app

    root = data_dir(args)
    require_account(root)
    asyncio.run(run_app(root, port=args.port, browser=not args.no_browser, check=args.check,
                        loopback=args.loopback, relay_only=args.relay_only))
    return 0


def _port(text: str) -> int:
    """An argparse type: 0 (a free port) to 65535 (argparse turns the ValueError into usage)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


_port.__name__ = "port"  # what argparse names in its message


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help=(
        f"the account directory (default: ${ENV_HOME}, else {{user data dir}}/sottovoce/client)"))
    parser.add_argument("--port", type=_port, default=0, metavar="PORT",
                        help="listen on this port of 127.0.0.1 (default: a free one)")
    parser.add_argument("--no-browser", action="store_true",
                        help="only print the URL; do not open a browser")
    parser.add_argument("--check", action="store_true",
                        help="start, check the launch and the page over loopback, and stop")
    parser.add_argument("--loopback", action="store_true",
                        help="calls: hand on no address but 127.0.0.1 (tests on one machine)")
    parser.add_argument("--relay-only", action="store_true",
                        help="1:1 calls: media only through the server's TURN relay")


def add_commands(sub: Subparsers) -> None:
    subcommand(sub, "app", func=cmd_app, options=_options)
