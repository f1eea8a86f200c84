"""`sottovoce kt ...`: key-transparency commands (the witness: cli/kt_witness_cmd.py).

The device's own commands (``status``, ``ack``, ``pin``, ``pin-witness``,
``require``) run in cli/kt_client_cmd.py, imported only when one of them runs: a
witness starts without the client code.
"""

from __future__ import annotations

import argparse

from sottovoce.cli import kt_witness_cmd
from sottovoce.cli.options import Subparsers, command_group, subcommand, timed_account_options

# The device's commands import the client stack, so only when one of them runs.


def _status(args: argparse.Namespace) -> int:
    from sottovoce.cli.kt_client_cmd import cmd_status

    return cmd_status(args)


def _ack(args: argparse.Namespace) -> int:
    from sottovoce.cli.kt_client_cmd import cmd_ack

    return cmd_ack(args)


def _pin(args: argparse.Namespace) -> int:
    from sottovoce.cli.kt_client_cmd import cmd_pin

    return cmd_pin(args)


def _pin_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kt-key", required=True, metavar="VKEY",
                        help="the log's new verifier key, checked out of band (its "
                             "fingerprint from the server's operator)")
    timed_account_options(parser)


def _require(args: argparse.Namespace) -> int:
    from sottovoce.cli.kt_client_cmd import cmd_require

    return cmd_require(args)


def _pin_witness(args: argparse.Namespace) -> int:
    from sottovoce.cli.kt_client_cmd import cmd_pin_witness

    return cmd_pin_witness(args)


def _status_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offline", action="store_true",
                        help="do not connect; show what this device kept")
    timed_account_options(parser)


def _add_client_commands(kt_sub: Subparsers) -> None:
    """``status``, ``ack``, ``pin``, ``pin-witness`` and ``require`` under ``sottovoce kt``."""
    subcommand(
        kt_sub, "status",
        help="this device's view of the server's transparency log, and any alert",
        description=(
            "Show the pinned log key and its fingerprint (compare it with the server's "
            "start-up banner or its operator), the pinned witness keys, the last verified "
            "checkpoint (size, root, the age of each cosignature), how many versions of "
            "your own account were checked, and every alert not yet acknowledged. "
            "Connected, it checks the log first. Exit 1 while an alert is not acknowledged."
        ),
        example="  sottovoce kt status --data-dir ~/.sottovoce-alice",
        func=_status, options=_status_options,
    )
    subcommand(
        kt_sub, "ack",
        help="acknowledge the key-transparency alerts (every command shows them until then)",
        description=(
            "Mark every alert as seen: commands stop printing it. The alerts are kept; "
            "a new one is shown again. Acknowledge only once you know what happened "
            "(compare safety numbers with the people concerned)."
        ),
        example="  sottovoce kt ack --data-dir ~/.sottovoce-alice",
        func=_ack,
    )
    subcommand(
        kt_sub, "pin",
        help="pin the log's new key after a rotation you checked (clears the alert)",
        description=(
            "A server naming another log key than the pinned one is an alert, never a "
            "silent update. Once the operator confirmed the rotation and you compared "
            "the new key's fingerprint out of band, pin it here: the server must name "
            "this very key and its checkpoint must verify under it and the pinned "
            "witnesses. The kept checkpoint and the own-account monitor start over on "
            "the new log, and the log-key-changed alerts are acknowledged."
        ),
        example="  sottovoce kt pin --kt-key 'log.example/sottovoce-kt+1a2b3c4d+AX...' "
                "--data-dir ~/.sottovoce-alice",
        func=_pin, options=_pin_options,
    )
    subcommand(
        kt_sub, "pin-witness",
        help="pin one more witness key (a verifier key obtained from its operator)",
        description=(
            "Add a witness's verifier key (name+keyid+base64) to the keys this device "
            "requires cosignatures from: a checkpoint needs one cosignature by a pinned "
            "witness. Pin an independent witness run by someone other than the server's "
            "operator to be protected against a server that shows users different logs."
        ),
        example="  sottovoce kt pin-witness 'witness.example/w1+1a2b3c4d+BH...' "
                "--data-dir ~/.sottovoce-alice",
        func=_pin_witness,
        args=[("VKEY", "the witness's verifier key")],
    )
    subcommand(
        kt_sub, "require",
        help="how many pinned witnesses must cosign every checkpoint (0 opts out)",
        description=(
            "Set how many pinned witnesses must cosign every checkpoint (default 1). "
            "With fewer witnesses pinned than required, every lookup is refused and every "
            "command warns. 0 is the explicit opt-out, for a server that runs no witness: "
            "checkpoints are then checked against the log key alone, which does not show "
            "a server that shows different users different logs."
        ),
        example="  sottovoce kt require 0 --data-dir ~/.sottovoce-alice",
        func=_require,
        args=[("COSIGNATURES", "the cosignatures required, 0-32")],
    )


def add_commands(sub: Subparsers) -> None:
    kt_sub = command_group(
        sub, "kt",
        help="key transparency: this device's view of the log (status, ack), witnesses",
        description="Key-transparency commands.",
        example=(
            "  sottovoce kt status --data-dir ~/.sottovoce-alice\n"
            "  sottovoce kt ack --data-dir ~/.sottovoce-alice"
        ),
        metavar="KT_COMMAND",
        required=True,
    )
    _add_client_commands(kt_sub)
    kt_witness_cmd.add_witness(kt_sub)
