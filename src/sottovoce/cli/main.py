"""Entry point of the `sottovoce` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sottovoce import __version__
from sottovoce.errors import SottovoceError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sottovoce",
        description="End-to-end encrypted messaging with a blind relay server.",
        epilog="Run 'sottovoce COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"sottovoce {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "demo",
        help="two users exchange messages through an in-memory relay that sees only ciphertext",
        description=(
            "Create two users (alice and bob) with one device each, publish signed prekeys, "
            "open an Olm session, exchange messages both ways, then print what the relay in "
            "the middle saw and both users' safety numbers. Runs offline, in one process."
        ),
        epilog="example:\n  sottovoce demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from sottovoce.cli.demo import run_demo

            return run_demo()
        parser.print_help()
        return 2
    except SottovoceError as exc:
        print(f"sottovoce: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
