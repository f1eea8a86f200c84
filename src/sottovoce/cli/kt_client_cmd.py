"""`sottovoce kt status|ack|pin|pin-witness|require`: this device's view of the server's
transparency log (docs/protocol.md §Key transparency: client rules).

``status`` shows what is pinned (the log key and its fingerprint, the witness
keys), the last verified checkpoint (size, root prefix, age, cosignatures) and
every alert not yet acknowledged; connected, it checks the log first. ``ack``
acknowledges the alerts (they are kept, marked seen); ``pin`` replaces the
pinned log key by the one the user checked after a rotation (the only way it
ever changes); ``pin-witness`` adds a witness key obtained from elsewhere;
``require`` sets how many pinned witnesses must cosign (0: the explicit opt-out).
Every other command prints the alerts not yet acknowledged
(:func:`sottovoce.cli.render.kt_alerts`).
"""

from __future__ import annotations

import argparse
import base64
import sys
import time

from sottovoce.cli import render
from sottovoce.cli.program import command_name, dir_flag
from sottovoce.cli.session import Connect, with_client
from sottovoce.client import Client
from sottovoce.client.kt import (
    Alert,
    WitnessPolicy,
    check_min_cosignatures,
    parse_vkey,
    witness_policy_of,
)
from sottovoce.errors import SottovoceError, UsageError
from sottovoce.kt.checkpoint import NoteKey


def _age(ms: int) -> str:
    s = max(0, ms // 1000)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h" if s < 172800 else f"{s // 86400} days"


def _status_lines(client: Client, checked: str | None) -> list[str]:
    kt = client.kt
    pins = kt.pins
    if pins is None:
        how = ("keys were given at account create and the server's do not match them: "
               "lookups are refused" if kt.required else
               "the server offered no transparency log when this device was set up; "
               "lookups are not verified")
        return [f"log:         not pinned ({how})"]
    log_key = NoteKey.from_vkey(pins.log_key)
    lines = [
        f"log key:     {render.safe(pins.log_key)}",
        f"fingerprint: {log_key.fingerprint()}",
    ]
    policy = witness_policy_of(pins)
    if policy is WitnessPolicy.OPTED_OUT:
        lines.append(f"witnesses:   {len(pins.witnesses)} pinned, none required (opted out: "
                     "a checkpoint only the log signed does not show a forked log)")
    elif policy is WitnessPolicy.MISSING:
        lines.append(f"witnesses:   {len(pins.witnesses)} pinned, {pins.min_cosignatures} "
                     "cosignature(s) required: lookups are refused until enough are pinned "
                     "(kt pin-witness VKEY)")
    else:
        lines.append(f"witnesses:   {len(pins.witnesses)} pinned, {pins.min_cosignatures} "
                     "cosignature(s) required on every checkpoint")
    lines += [f"  {render.safe(w)}" for w in pins.witnesses]
    if policy is WitnessPolicy.OPTED_OUT:
        lines.append("max age:     not checked (no cosignature required to date a checkpoint)")
    else:
        lines.append(f"max age:     {_age(pins.max_age_ms)} (newest cosignature on a "
                     "checkpoint)")
    verified = kt.verified_head()
    if verified is None:
        lines.append("checkpoint:  none verified yet")
    else:
        cp = verified.checkpoint
        now = int(time.time() * 1000)
        lines.append(f"checkpoint:  size {cp.size}, root {base64.b64encode(cp.root).decode()[:12]}"
                     "...")
        for name, ts in sorted(verified.cosignatures.items()):
            lines.append(f"  cosigned by {render.safe(name)}, {_age(now - ts * 1000)} ago")
    monitor = kt.monitor_state
    lines.append(f"own account: {monitor.versions} version(s) checked")
    if checked is not None:
        lines.append(f"check now:   {checked}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    async def work(client: Client) -> tuple[list[str], list[Alert], WitnessPolicy | None]:
        checked: str | None = None
        if client.connected:
            try:
                await client.check_log()
                checked = "ok"
            except SottovoceError as exc:
                checked = f"FAILED: {render.safe(str(exc))}"
        elif not args.offline:
            checked = "not connected: showing what this device kept"
        return _status_lines(client, checked), client.kt.alerts(), client.kt.witness_policy

    connect = Connect.NO if args.offline else Connect.TRY
    lines, alerts, policy = with_client(args, work, connect=connect, alerts=False)
    for line in lines:
        print(line)
    warning = render.kt_witness_warning(policy, command_name())
    for line in warning:
        print(line, file=sys.stderr)
    if alerts:
        for line in render.kt_alerts(alerts, command_name()):
            print(line)
        return 1
    print("alerts:      none")
    return 1 if warning else 0


def cmd_ack(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        return client.kt.acknowledge()

    n = with_client(args, work, connect=Connect.NO, alerts=False)
    print(f"acknowledged {n} alert(s)" if n else "no alert to acknowledge")
    return 0


def cmd_pin_witness(args: argparse.Namespace) -> int:
    vkey = parse_vkey(args.vkey, witness=True)

    async def work(client: Client) -> int:
        return len(client.kt.pin_witness(vkey).witnesses)

    n = with_client(args, work, connect=Connect.NO)
    print(f"pinned witness {render.safe(vkey.split('+', 1)[0])} ({n} pinned); "
          f"check it with: {command_name()} kt status{dir_flag(args)}")
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    vkey = parse_vkey(args.kt_key, witness=False)

    async def work(client: Client) -> None:
        await client.kt.repin(vkey)

    with_client(args, work, connect=Connect.REQUIRED, notices=False)
    key = NoteKey.from_vkey(vkey)
    print(f"pinned log key {render.safe(key.name)} (fingerprint {key.fingerprint()}); "
          f"check it with: {command_name()} kt status{dir_flag(args)}")
    return 0


def cmd_require(args: argparse.Namespace) -> int:
    try:
        n = check_min_cosignatures(int(args.cosignatures))
    except ValueError:
        raise UsageError("the cosignatures required are a number, 0-32") from None

    async def work(client: Client) -> tuple[int, WitnessPolicy | None]:
        pins = client.kt.require(n)
        return len(pins.witnesses), client.kt.witness_policy

    pinned, policy = with_client(args, work, connect=Connect.NO)
    if policy is WitnessPolicy.OPTED_OUT:
        print("no witness cosignature required any more: checkpoints are checked against "
              "the log key alone, which does not show a forked log")
    else:
        print(f"{n} cosignature(s) by the {pinned} pinned witness(es) required on every "
              "checkpoint")
    return 0
