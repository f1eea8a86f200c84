"""Commands that change who holds an account: `device revoke`, `device renew` and
`account recover` (docs/protocol.md §Succession,
docs/threat-model.md §A stolen or seized device).

    device revoke ID   the account key is succeeded by a new one: the revoked device's copy
                       of the old key certifies, revokes and renews nothing any more
    device renew       a fresh certificate for this device (also after it expired)
    account recover    the printed recovery code takes the account back from anyone who
                       holds an account key: on this device, or on a new one with NAME
"""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.options import account_options, command_group, subcommand, timed_account_options
from sottovoce.cli.program import command_name
from sottovoce.cli.session import (
    DEFAULT_SERVER,
    CliError,
    Connect,
    new_account_dir,
    new_passphrase,
    run,
    with_client,
)

if TYPE_CHECKING:
    from sottovoce.client import Client
    from sottovoce.secret import Secret

#: Where `account recover` reads the code when --code is not given (keeps it out of `ps`).
ENV_RECOVERY_CODE = "SOTTOVOCE_RECOVERY_CODE"

RECOVERY_WARNING = (
    "write this down, it is shown once: with it alone you can take the account back "
    "from a lost or stolen device (sottovoce account recover)"
)


def recovery_lines(code: Secret) -> list[str]:
    """What `account create` and `account recover` print about a (new) recovery code."""
    return [f"recovery code: {code.expose().decode()}", f"  {RECOVERY_WARNING}"]


def _code(args: argparse.Namespace) -> str:
    from sottovoce.identity.succession import parse_recovery_code

    code = args.code or os.environ.get(ENV_RECOVERY_CODE, "")
    if not code:
        raise CliError(f"give the recovery code: --code CODE (or ${ENV_RECOVERY_CODE})")
    parse_recovery_code(code)  # a typo is a plain error before anything is sent
    return str(code)


def cmd_device_revoke(args: argparse.Namespace) -> int:
    from sottovoce.client.device_notices import DeviceNotices

    async def work(client: Client) -> str:
        await client.revoke_device(args.id)
        DeviceNotices(client.linking().store, client.device_id).forget(args.id)  # done here
        return client.identity.account_key.public.hex()[:16]

    fingerprint = with_client(args, work)
    print(f"revoked device {render.safe(args.id)}: its connections are closed and every room "
          "removes it.")
    print(f"the account key was replaced (new key {fingerprint}…): the revoked device's copy of "
          "the old one is worth nothing now.")
    print("your contacts see that your keys changed by succession and that your safety number "
          "changed.")
    return 0


def cmd_device_renew(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        await client.renew_certificate()
        return client.identity.certificate.expires_at_ms

    expires = with_client(args, work, connect=Connect.NO)
    until = time.strftime("%Y-%m-%d", time.gmtime(expires / 1000))
    print(f"renewed this device's certificate; valid until {until} (UTC).")
    return 0


def cmd_account_recover(args: argparse.Namespace) -> int:
    code = _code(args)
    if args.name is None:
        async def work(client: Client) -> tuple[str, Secret]:
            new_code = await client.recover_account(code)
            await client.connect(timeout=args.timeout, fail_fast=True)
            return client.username, new_code

        username, new_code = with_client(args, work, connect=Connect.NO)
    else:
        username, new_code = _recover_on_new_device(args, code)
    print(f"recovered account '{render.safe(username)}': it now has a new account key, and "
          "every statement made without the recovery code since the last recovery is void.")
    print("other devices of the account are signed out: link them again.")
    for line in recovery_lines(new_code):
        print(line)
    print("from now on only the new code recovers the account: keep it where you kept the old.")
    return 0


def _recover_on_new_device(args: argparse.Namespace, code: str) -> tuple[str, Secret]:
    from sottovoce.client import Client
    from sottovoce.client.connection import ws_url
    from sottovoce.identity import validate_username

    validate_username(args.name)
    ws_url(args.server)
    root = new_account_dir(args, hint=(
        "recover into a new --data-dir, or run `account recover` without NAME to recover "
        "the account kept there"
    ))
    passphrase = new_passphrase(args, args.name)

    async def go() -> tuple[str, Secret]:
        client, new_code = await Client.recover_on_new_device(
            args.server, args.name, root, passphrase, code
        )
        await client.close()
        return client.username, new_code

    return run(go())


def _device_group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The `device` command's subcommands: the group made by the command that made it
    first, else a new one."""
    parser = sub.choices.get("device")
    if parser is not None and parser._subparsers is not None:
        for action in parser._subparsers._group_actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
    return command_group(
        sub, "device", help="manage the devices of this account",
        description="The devices of this account: revoke one, renew this one's certificate.",
        example="  sottovoce device revoke 3f9a0c1d --data-dir ~/.sottovoce-alice",
    )


def _account_group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = sub.choices["account"]
    assert parser._subparsers is not None  # noqa: S101 -- made by client_cmd, before us
    for action in parser._subparsers._group_actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise CliError("the account command has no subcommands")  # pragma: no cover


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    device = _device_group(sub)
    subcommand(
        device,
        "revoke",
        help="revoke a lost or stolen device of this account (replaces the account key)",
        description=(
            "Revoke device ID, which may hold a copy of the account key: a new account key "
            "succeeds the old one (the statement is signed by both), every other device of "
            "the account is certified again under it, and ID is revoked. The server closes "
            "ID's connections at once, every room removes it, and from then on the server "
            "refuses anything signed by the old key. Contacts see that your keys changed by "
            "succession and that your safety number changed. If the thief got there first "
            "(this fails, or the account is forked), use `account recover`."
        ),
        example=f"  {command_name()} device revoke 3f9a0c1d --data-dir ~/.sottovoce-alice",
        func=cmd_device_revoke,
        args=[("ID", "the device to revoke (see the revoked device's id in `verify` or the "
                     "device list)")],
    )
    subcommand(
        device,
        "renew",
        help="renew this device's certificate (also after it expired)",
        description=(
            "Sign a fresh certificate for this device with the account key (a device renews "
            "its own a month before it expires whenever it connects; this does it now, and "
            "is the fix when a device was away so long that its certificate expired)."
        ),
        example=f"  {command_name()} device renew --data-dir ~/.sottovoce-alice",
        func=cmd_device_renew,
        options=account_options,
    )
    recover = subcommand(
        _account_group(sub),
        "recover",
        help="take the account back with its printed recovery code",
        description=(
            "Sign a new account key and a new recovery key with the recovery code printed "
            "by `account create`. This cancels every succession, certificate and revocation "
            "made with an account key alone since the last recovery, so a thief who holds "
            "an account key loses the account, whatever order things happened in. Without "
            "NAME it recovers the account in the data directory (even a revoked device); "
            "with NAME and --server it makes a new device for it in a new data directory. "
            "Prints a new recovery code, which replaces the one used."
        ),
        example=(
            f"  {command_name()} account recover --code 7K3Q-... --data-dir ~/.sottovoce-alice\n"
            f"  {command_name()} account recover alice --server ws://127.0.0.1:8765 "
            "--code 7K3Q-... --data-dir ~/.sottovoce-alice-new"
        ),
        func=cmd_account_recover,
        options=timed_account_options,
    )
    recover.add_argument("name", metavar="NAME", nargs="?", default=None,
                         help="the account to recover on a new device (a new data directory)")
    recover.add_argument("--code", metavar="CODE", default=None,
                         help=f"the recovery code (else ${ENV_RECOVERY_CODE})")
    recover.add_argument("--server", default=DEFAULT_SERVER, metavar="URL",
                         help=f"with NAME: the server (default {DEFAULT_SERVER})")

