"""`sottovoce kt ...`: key-transparency commands (the witness: cli/kt_witness_cmd.py)."""

from __future__ import annotations

import argparse
from typing import Any

from sottovoce.cli import kt_client_cmd, kt_witness_cmd


def add_commands(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "kt", help="key transparency: this device's view of the log (status, ack), witnesses",
        description="Key-transparency commands.",
        epilog="example:\n  sottovoce kt status --data-dir ~/.sottovoce-alice\n"
        "  sottovoce kt ack --data-dir ~/.sottovoce-alice",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kt_sub = p.add_subparsers(dest="kt_command", metavar="KT_COMMAND", required=True)
    kt_client_cmd.add_client_commands(kt_sub)
    kt_witness_cmd.add_witness(kt_sub)
