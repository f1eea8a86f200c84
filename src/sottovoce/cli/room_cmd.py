"""Room commands: `room create|invite|join|remove|send|audit|token|list|history`.

Each command opens the account like the other client commands (``--data-dir``,
``--passphrase-file`` / ``$SOTTOVOCE_PASSPHRASE``), connects, catches up on
everything the room missed, does its one thing and closes. ROOM is the local
name given at ``room create`` (names stay on this device) or the room id
(``room:`` + 32 hex digits) that ``room list`` shows.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable

from sottovoce.cli.client_cmd import (
    _common,
    _parser,
    _run,
    _timeout,
    data_dir,
    format_message,
    read_passphrase,
)
from sottovoce.client import Client
from sottovoce.client.store import DeliveryStatus
from sottovoce.protocol.audit import AuditChainError, AuditEntry


def _with_client(
    args: argparse.Namespace, work: Callable[[Client], Awaitable[int]], *, connect: bool = True
) -> int:
    root = data_dir(args)
    passphrase = read_passphrase(args)

    async def go() -> int:
        client = await Client.open(root, passphrase)
        try:
            if connect:
                await client.connect(timeout=args.timeout)
            return await work(client)
        finally:
            await client.close()

    return _run(go())


def cmd_create(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        room = await client.rooms.create_room(args.name)
        print(f"created room '{room.label}' ({room.room_id})")
        print(f"next: sottovoce room invite {room.label} USER, sottovoce room token {room.label}")
        return 0

    return _with_client(args, work)


def cmd_invite(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        result = await client.rooms.invite(args.room, args.user)
        if result is None:
            print(f"{args.user} is already in the room")
        else:
            print(f"invited {args.user} (room epoch {result.epoch})")
        return 0

    return _with_client(args, work)


def cmd_remove(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        result = await client.rooms.remove(args.room, args.user)
        print(f"removed {args.user}" + ("" if result is None else f" (room epoch {result.epoch})"))
        return 0

    return _with_client(args, work)


def cmd_join(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        room = await client.rooms.join_with_token(args.token, label=args.name)
        print(f"joined room '{room.label}' ({room.room_id}, epoch {room.epoch})")
        return 0

    return _with_client(args, work)


def cmd_send(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        room = client.rooms.get(args.room)
        message_id = await client.rooms.send(room.room_id, args.text)
        stored = client.message(message_id)
        if stored is not None and stored.status is DeliveryStatus.SENT:
            print(f"✓ sent to {room.label}")
        else:
            print(f"queued for {room.label}: it is sent the next time this account connects")
        return 0

    return _with_client(args, work)


def cmd_history(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        for m in client.rooms.history(args.room, limit=args.limit):
            print(format_message(m, client.username).replace(f" → {m.peer}", ""))
        return 0

    return _with_client(args, work, connect=not args.offline)


def _describe(entry: AuditEntry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.time_ms / 1000))
    subjects = ", ".join(f"{s.user_id}/{s.device_id}" for s in entry.subjects)
    action = entry.action.name.lower().replace("_", " ")
    who = f"{entry.actor_user_id}/{entry.actor_device_id}"
    return f"#{entry.index:<4} {when}  epoch {entry.epoch:<4} {who}: {action} {subjects}".rstrip()


def cmd_audit(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        try:
            entries = await client.rooms.audit(args.room)
        except AuditChainError as exc:
            print(f"sottovoce: audit trail INVALID: {exc}", file=sys.stderr)
            return 3
        for entry in entries:
            print(_describe(entry))
        for bad in entries.rejected:  # in the chain, but not authentic: skipped
            print(f"! audit entry #{bad.index} skipped: {bad.reason}", file=sys.stderr)
        skipped = f", {len(entries.rejected)} skipped" if entries.rejected else ""
        print(f"✓ {len(entries)} entries verified (links, signatures, epoch bindings){skipped}")
        return 0

    return _with_client(args, work)


def cmd_token(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        if args.revoke:
            await client.rooms.revoke_token(args.room)
            print("token revoked: nobody can join with it any more")
            return 0
        if args.rotate:
            token = await client.rooms.rotate_token(args.room)
        else:
            token = await client.rooms.create_token(args.room)
        print("join token (shown once; the server keeps only a hash of it):")
        print(token)
        print(f"they join with: sottovoce room join {token}")
        return 0

    return _with_client(args, work)


def cmd_list(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        rooms = client.rooms.all()
        if not rooms:
            print("no rooms yet (sottovoce room create NAME)")
        for room in rooms:
            state = "removed" if room.removed else f"epoch {room.epoch}"
            members = ", ".join(sorted({u for u, _ in room.members()}))
            print(f"{room.label}  {room.room_id}  {state}  members: {members}")
        return 0

    return _with_client(args, work, connect=not args.offline)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    room = sub.add_parser(
        "room",
        help="rooms: group chats end-to-end encrypted with MLS",
        description=(
            "Rooms are MLS groups; the server orders commits and fans out one ciphertext per "
            "message. ROOM is the local name you gave it or its id (room:…)."
        ),
        epilog="example:\n  sottovoce room create friends && sottovoce room invite friends bob",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def room_help(args: argparse.Namespace) -> int:
        room.print_help()
        return 2

    room.set_defaults(func=room_help)
    rs = room.add_subparsers(dest="room_command", metavar="SUBCOMMAND")

    p = _parser(
        rs,
        "create",
        help="make a room with you as its only member",
        description="Make a new room. NAME is a label kept on this device only.",
        example="  sottovoce room create friends --data-dir ~/.sv-alice",
        func=cmd_create,
    )
    p.add_argument("name", metavar="NAME", help="the room's local name")
    _common(p)
    _timeout(p)

    p = _parser(
        rs,
        "invite",
        help="add every device of USER to ROOM",
        description=(
            "Fetch one KeyPackage per device of USER, check each against USER's device "
            "certificates, and commit their addition; each device gets a Welcome."
        ),
        example="  sottovoce room invite friends bob --data-dir ~/.sv-alice",
        func=cmd_invite,
    )
    p.add_argument("room", metavar="ROOM")
    p.add_argument("user", metavar="USER")
    _common(p)
    _timeout(p)

    p = _parser(
        rs,
        "remove",
        help="remove every device of USER from ROOM",
        description="Commit the removal of USER's devices; they cannot read anything later.",
        example="  sottovoce room remove friends bob --data-dir ~/.sv-alice",
        func=cmd_remove,
    )
    p.add_argument("room", metavar="ROOM")
    p.add_argument("user", metavar="USER")
    _common(p)
    _timeout(p)

    p = _parser(
        rs,
        "join",
        help="join a room with a join token (external commit)",
        description=(
            "Fetch the room's public GroupInfo with TOKEN and join by an external commit. "
            "The token only routes; the keys come from the MLS join."
        ),
        example="  sottovoce room join Zk3…Q --name friends --data-dir ~/.sv-carol",
        func=cmd_join,
    )
    p.add_argument("token", metavar="TOKEN")
    p.add_argument("--name", metavar="NAME", help="local name for the room (default: its id)")
    _common(p)
    _timeout(p)

    p = _parser(
        rs,
        "send",
        help="send TEXT to ROOM and wait for the server's ✓",
        description="Encrypt TEXT once for the whole room (MLS application message) and send it.",
        example="  sottovoce room send friends 'hello all' --data-dir ~/.sv-alice",
        func=cmd_send,
    )
    p.add_argument("room", metavar="ROOM")
    p.add_argument("text", metavar="TEXT")
    _common(p)
    _timeout(p)

    p = _parser(
        rs,
        "history",
        help="print ROOM's messages from the local store (after catching up)",
        description="Connect, store what arrived, then print the room's last messages.",
        example="  sottovoce room history friends --data-dir ~/.sv-bob",
        func=cmd_history,
    )
    p.add_argument("room", metavar="ROOM")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--offline", action="store_true", help="do not connect; local store only")
    _common(p)
    _timeout(p)

    p = _parser(
        rs,
        "audit",
        help="fetch, verify and print ROOM's audit trail",
        description=(
            "Fetch the room's audit chain and verify it: hash links, each actor's signature, "
            "and the binding to every epoch authenticator this device saw. A tampered chain "
            "fails with the number of the first bad entry (exit code 3)."
        ),
        example="  sottovoce room audit friends --data-dir ~/.sv-alice",
        func=cmd_audit,
    )
    p.add_argument("room", metavar="ROOM")
    _common(p)
    _timeout(p)

    p = _parser(
        rs,
        "token",
        help="make, rotate or revoke ROOM's join token",
        description=(
            "Make a join token (32 random bytes) and print it once; the server stores only "
            "its hash. --rotate replaces it, --revoke removes it."
        ),
        example=(
            "  sottovoce room token friends --data-dir ~/.sv-alice\n"
            "  sottovoce room token friends --revoke --data-dir ~/.sv-alice"
        ),
        func=cmd_token,
    )
    p.add_argument("room", metavar="ROOM")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--rotate", action="store_true", help="replace the current token")
    group.add_argument("--revoke", action="store_true", help="remove the token")
    _common(p)
    _timeout(p)

    p = _parser(
        rs,
        "list",
        help="list this device's rooms",
        description="Rooms on this device: local name, id, epoch and members.",
        example="  sottovoce room list --data-dir ~/.sv-alice",
        func=cmd_list,
    )
    p.add_argument("--offline", action="store_true", help="do not connect; local store only")
    _common(p)
    _timeout(p)
