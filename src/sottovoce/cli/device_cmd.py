"""Device commands: `device link`, `device list`, `device rename`, and the new device's
side of linking, `account link` (client/linking.py does the work).

    existing device:  sottovoce device link        shows a QR code and a short code
    new device:       sottovoce account link --server URL --data-dir D --code '...'
    both screens show the same words; the existing device asks to confirm, then the
    new device is certified, handed the account's keys, contacts and rooms, and added
    to every room.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.options import account_options, command_group, subcommand
from sottovoce.cli.program import command_name, dir_flag
from sottovoce.cli.session import (
    DEFAULT_SERVER,
    CliError,
    Connect,
    new_account_dir,
    new_passphrase,
    remember_secret,
    run,
    with_client,
)

if TYPE_CHECKING:
    from sottovoce.client import Client
    from sottovoce.client.linking import LinkedDevice, LinkInvite, PeerHello

WARNING = "Only link a device you are holding in your hand: it gets your account's keys."


# =============================================================================
# device link (the existing device)
# =============================================================================


def _show_invite(invite: LinkInvite, *, qr: bool) -> None:
    payload = invite.qr.encode()
    lines = [WARNING, ""]
    if qr:
        lines += ["Scan or paste this on the new device:", render.qr_terminal(payload)]
    lines += [f"  linking text: {payload}",
              f"  short code:   {invite.code}",
              "",
              "On the new device run:",
              f"  {command_name()} account link --data-dir DIR --server "
              f"{render.safe(invite.qr.server_url)} --code '{invite.code}'",
              "or, with a photo or screenshot of the QR code:",
              f"  {command_name()} account link --data-dir DIR --qr-image FILE",
              f"The code works once and expires at "
              f"{time.strftime('%H:%M:%S', time.localtime(invite.expires_at_ms / 1000))}."]
    print("\n".join(lines), flush=True)


def _confirm(hello: PeerHello) -> bool:
    print(f"\nThe new device '{render.safe(hello.name)}' ({hello.device_id}) shows:\n"
          f"  {' '.join(hello.words)}", flush=True)
    try:
        answer = input("Do both screens show these words, and is it your device? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_device_link(args: argparse.Namespace) -> int:
    from sottovoce.client.linking import link_existing

    async def work(client: Client) -> LinkedDevice:
        return await link_existing(
            client, show=lambda i: _show_invite(i, qr=not args.no_qr), confirm=_confirm,
            name_hint=args.name_hint or "", with_history=args.with_history)

    linked = with_client(args, work)
    print(f"linked '{render.safe(linked.name)}' ({linked.device_id}): added to "
          f"{linked.rooms_added} room(s)"
          + (f", {linked.history_messages} message(s) of history handed over"
             if args.with_history else ""))
    for label in linked.rooms_failed:
        print(f"  could not add it to {render.safe(label)}; try "
              f"'{command_name()} room invite ROOM {render.safe(linked.name)}' later",
              file=sys.stderr)
    return 0


# =============================================================================
# account link (the new device)
# =============================================================================


def _read_code(args: argparse.Namespace) -> str:
    if args.code and args.qr_image:
        raise CliError("give the code (--code) or the QR code's image (--qr-image), not both")
    if args.qr_image:
        from sottovoce.cli.qr_image import read_link_qr

        return read_link_qr(args.qr_image)
    if args.code:
        return str(args.code)
    if not sys.stdin.isatty():
        raise CliError("no linking code: pass --code, or run in a terminal to paste it")
    try:
        text = input("Paste the linking text, or type the short code: ").strip()
    except EOFError:
        text = ""
    if not text:
        raise CliError("no linking code given")
    remember_secret(args, text)
    return text


def cmd_account_link(args: argparse.Namespace) -> int:
    """make this device another device of an account (with a code from that one)

    Link this device to an account you already use elsewhere. On the existing
    device run 'sottovoce device link': it shows a QR code, the same code as text
    (sottovoce-link:...) and a short code (1234-5678 word-word). Give either one
    here with --code (or paste it when asked), or give a picture of the QR code
    (PNG or JPEG; a screenshot or a photo of the screen) with --qr-image. Both
    screens then show the same words; confirm on the existing device. This device
    gets its own keys, certified by the account, the account's contacts, device names
    and rooms (and, if the other device chose --with-history, the message history).
    A wrong code ends the attempt: start a new one on the existing device.

    example:
      sottovoce account link --server ws://127.0.0.1:8765 --data-dir ~/.sv-laptop \\
        --code '1234-5678 apple-river' --name laptop
      sottovoce account link --data-dir ~/.sv-laptop --qr-image link-qr.png --name laptop
    """
    from sottovoce.client.linking import NewDevice
    from sottovoce.identity.pake import QR_PREFIX

    root = new_account_dir(
        args, hint="link the new device into a directory of its own (--data-dir)"
    )
    text = _read_code(args)
    if text.strip().startswith(QR_PREFIX):
        device = NewDevice.from_qr(text)
        if args.server and args.server.rstrip("/") != device.server_url.rstrip("/"):
            raise CliError(f"the linking text is for {render.safe(device.server_url)}, "
                           f"not {render.safe(args.server)}: leave --server out")
    else:
        device = NewDevice.from_code(args.server or DEFAULT_SERVER, text)
    args.server_url = device.server_url
    passphrase = new_passphrase(args, "")

    async def go() -> tuple[Client, LinkedDevice]:
        words = await device.start()
        print(f"Linking to the account '{render.safe(device.username)}'. This screen shows:\n"
              f"  {' '.join(words)}\n"
              "Check that the other device shows the same words, and confirm there.",
              flush=True)
        client, linked = await device.complete(
            name=args.name or "", data_dir=str(root), passphrase=passphrase,
            on_wait=lambda: print("waiting for the other device ...", flush=True))
        await client.close()
        return client, linked

    client, linked = run(go())
    print(f"linked: this device is '{render.safe(linked.name)}' ({linked.device_id}) of "
          f"'{render.safe(client.username)}', in {linked.rooms_added} room(s)"
          + (f", with {linked.history_messages} message(s) of history"
             if linked.history_messages else ""))
    program, flag = command_name(), dir_flag(args)
    print(f"next: {program} chat NAME{flag}, {program} device list{flag}")
    return 0


def add_account_link(account_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    link = subcommand(account_sub, "link", func=cmd_account_link, options=account_options)
    link.add_argument("--server", metavar="URL",
                      help=f"the account's server, for a short code (default {DEFAULT_SERVER}; "
                           "the linking text names its server itself)")
    link.add_argument("--code", metavar="CODE",
                      help="the short code or the linking text (else a prompt)")
    link.add_argument("--qr-image", metavar="FILE",
                      help="an image (PNG, JPEG) of the QR code the existing device shows")
    link.add_argument("--name", metavar="NAME", help="this device's name (e.g. laptop)")


# =============================================================================
# device list, device rename
# =============================================================================


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else "-"


def _fingerprint(key: bytes) -> str:
    digest = hashlib.sha256(key).hexdigest()[:16]
    return " ".join(digest[i:i + 4] for i in range(0, 16, 4))


def _own_devices(client: Client) -> dict[str, tuple[int, bytes]]:
    """Every active device of this account this device knows: id -> (created, key)."""
    contact = client.own_contact()
    certs = dict(contact.certificates) if contact is not None else {}
    certs[client.device_id] = client.identity.certificate
    revoked = contact.revoked if contact is not None else set()
    return {d: (c.created_at_ms, c.keys.signing_key) for d, c in certs.items()
            if d not in revoked}


def _last_active(client: Client) -> dict[str, int]:
    """When this device last heard from each of the account's devices (its messages)."""
    from sottovoce.client.linking import all_messages

    seen: dict[str, int] = {}
    for m in all_messages(client.messages_after):
        if m.sender == client.username:
            seen[m.sender_device] = max(seen.get(m.sender_device, 0), m.local_at_ms)
    return seen


def cmd_device_list(args: argparse.Namespace) -> int:
    from sottovoce.client.linking import DeviceNames

    async def work(client: Client) -> list[str]:
        if client.connected:
            await client.refresh_own_devices()
        names = DeviceNames(client.linking().store).all()
        seen = _last_active(client)
        lines = []
        for device, (created, key) in sorted(_own_devices(client).items()):
            me = device == client.device_id
            last = "now" if me else _when(seen.get(device, 0))
            lines.append(
                f"{'*' if me else ' '} {device}  {render.safe(names.get(device, '-')):<16} "
                f"created {_when(created)}  last active {last}  key {_fingerprint(key)}"
                + ("  (this device)" if me else ""))
        return lines

    for line in with_client(args, work, connect=Connect.TRY):
        print(line)
    return 0


def cmd_device_rename(args: argparse.Namespace) -> int:
    from sottovoce.client.linking import DeviceNames

    async def work(client: Client) -> str:
        devices = _own_devices(client)
        matches = [d for d in devices if d.startswith(args.id)] if args.id else []
        if args.id in devices:
            matches = [args.id]
        if len(matches) != 1:
            raise CliError(f"no single device of this account starts with '{render.safe(args.id)}'"
                           f"; '{command_name()} device list' shows them")
        if not args.name.strip():
            raise CliError("a device name cannot be empty")
        DeviceNames(client.linking().store).set(matches[0], args.name)
        return matches[0]

    device = with_client(args, work, connect=Connect.NO)
    print(f"device {device} is now called '{render.safe(args.name.strip())}' on this device")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    device_sub = command_group(
        sub,
        "device",
        help="link a new device to this account, list and name its devices",
        description="The devices of the account kept in a local directory.",
        example=(
            "  sottovoce device link --data-dir ~/.sottovoce-alice\n"
            "  sottovoce device list --data-dir ~/.sottovoce-alice"
        ),
    )
    link = subcommand(
        device_sub,
        "link",
        help="link a new device to this account: show a QR code and a short code",
        description=(
            "Show a QR code, its text and a short code for 'sottovoce account link' on the "
            "new device (good once, for five minutes). Only link a device you are holding. "
            "When the new device has the code, both screens show the same words and its "
            "name: answer y if they match. This device then certifies the new one, hands "
            "it the account's keys, the contacts (with whether you verified them), the "
            "device names and the room list over the linking's encrypted channel, adds it "
            "to every room, and the account's other devices are told a device was linked. "
            "A wrong code ends the attempt."
        ),
        example=(
            "  sottovoce device link --data-dir ~/.sottovoce-alice --name-hint laptop\n"
            "  sottovoce device link --with-history --data-dir ~/.sottovoce-alice"
        ),
        func=cmd_device_link,
    )
    link.add_argument("--name-hint", metavar="NAME",
                      help="a name for the new device if it gives none")
    link.add_argument("--with-history", action="store_true",
                      help="also hand over the message history (one encrypted archive)")
    link.add_argument("--no-qr", action="store_true", help="print the codes as text only")
    subcommand(
        device_sub,
        "list",
        help="list the devices of this account",
        description=(
            "Each active device of the account: its id, its name on this device, when its "
            "certificate was made, when this device last heard from it, the fingerprint of "
            "its key; * marks this device. Connects if it can, to see devices added since."
        ),
        example="  sottovoce device list --data-dir ~/.sottovoce-alice",
        func=cmd_device_list,
    )
    subcommand(
        device_sub,
        "rename",
        help="name a device of this account (on this device)",
        description=(
            "Give the device ID (or a unique start of it) the name NAME. Names are kept on "
            "this device only; the server never sees them."
        ),
        example="  sottovoce device rename 3f2a9c laptop --data-dir ~/.sottovoce-alice",
        func=cmd_device_rename,
        args=[("ID", "the device id (see device list)"), ("NAME", "its new name")],
        options=account_options,
    )
