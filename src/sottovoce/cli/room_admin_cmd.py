"""`room members|rename|topic|promote|demote|leave`: who is in a room and in which
role, the room's shared name and topic, and leaving it (docs/architecture.md §Rooms,
"Room rules").

The name, topic and roles live in the room's MLS group context: every member sees the
same, and only an admin may change them (the server refuses anyone else's commit, and
every member checks it again). The server reads that context, so the name and topic
are there sealed under a key only members hold. `room rename --local` changes this
device's own name for a room instead; `room leave` works for anyone.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.options import Positional, subcommand, timed_account_options
from sottovoce.cli.session import CliError, with_client
from sottovoce.limits import MAX_ROOM_NAME_BYTES

if TYPE_CHECKING:
    from sottovoce.client import Client
    from sottovoce.client.rooms.model import CommitResult

ROOM: Positional = ("ROOM", "the room: its name, '#NAME' or its id")
USER: Positional = ("USER", "a member's username")


def _ref(value: str) -> str:
    return value[1:] if value.startswith("#") else value


def _epoch(result: CommitResult | None) -> str:
    return " (nothing to change)" if result is None else f" (room epoch {result.epoch})"


def cmd_members(args: argparse.Namespace) -> int:
    async def work(client: Client) -> list[str]:
        room = client.rooms.get(_ref(args.room))
        roles = client.rooms.roles(room.room_id)
        devices: dict[str, list[str]] = {}
        for user, device in room.members():
            devices.setdefault(user, []).append(device)
        return [
            f"{render.safe(u)}  {roles.get(u, 'member')}  devices: "
            + ", ".join(render.safe(d) for d in sorted(devices[u]))
            for u in sorted(devices)
        ]

    rows = with_client(args, work)
    print("\n".join(rows) if rows else "no members (this device is no longer in the room)")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    from sottovoce.client.room_notice import valid_room_name

    if not valid_room_name(args.name):
        raise CliError(f"a room name is 1-{MAX_ROOM_NAME_BYTES} bytes of printable text, "
                       "without spaces at either end")

    if args.local:

        async def local(client: Client) -> None:
            client.rooms.rename(_ref(args.room), args.name)

        with_client(args, local)
        print(f"renamed the room to '{render.safe(args.name)}' on this device only "
              "(other members keep the room's shared name)")
        return 0

    async def work(client: Client) -> CommitResult | None:
        return await client.rooms.rename_room(_ref(args.room), args.name)

    result = with_client(args, work)
    print(f"renamed the room to '{render.safe(args.name)}' for every member{_epoch(result)}")
    return 0


def cmd_topic(args: argparse.Namespace) -> int:
    from sottovoce.protocol.room_names import MAX_ROOM_TOPIC_BYTES

    text = args.topic
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ROOM_TOPIC_BYTES or not (
        text.isprintable()
    ):
        raise CliError(f"a room topic is at most {MAX_ROOM_TOPIC_BYTES} bytes of printable "
                       "text")

    async def work(client: Client) -> CommitResult | None:
        return await client.rooms.set_topic(_ref(args.room), text)

    result = with_client(args, work)
    print(f"topic set for every member{_epoch(result)}")
    return 0


def _local_option(parser: argparse.ArgumentParser) -> None:
    timed_account_options(parser)
    parser.add_argument(
        "--local", action="store_true",
        help="rename the room on this device only (anyone may); other members keep "
             "its shared name",
    )


def _role(promote: bool) -> Callable[[argparse.Namespace], int]:
    def cmd(args: argparse.Namespace) -> int:
        async def work(client: Client) -> CommitResult | None:
            change = client.rooms.promote if promote else client.rooms.demote
            return await change(_ref(args.room), args.user)

        result = with_client(args, work)
        role = "an admin" if promote else "a member"
        print(f"{render.safe(args.user)} is now {role} of the room{_epoch(result)}")
        return 0

    return cmd


def cmd_leave(args: argparse.Namespace) -> int:
    async def work(client: Client) -> tuple[str, bool]:
        room = client.rooms.get(_ref(args.room))
        name = client.rooms.name(room.room_id)
        return name, await client.rooms.leave(room.room_id)

    name, committed = with_client(args, work)
    print(f"left the room '{render.safe(name)}'; this device deleted its keys for it")
    if not committed:
        print("no member was online to commit your removal: the next one to connect will")
    return 0


def add_command(rs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The room's members, profile and leaving: registered by the room commands."""
    subcommand(
        rs, "members",
        help="list ROOM's members, their role (admin or member) and devices",
        description="Every member account of the room with its role and its devices, as "
                    "this device's copy of the room's group says.",
        example="  sottovoce room members friends --data-dir ~/.sottovoce-bob",
        func=cmd_members, args=[ROOM],
    )
    subcommand(
        rs, "rename",
        help="change ROOM's name for every member (admins only; --local: this device's)",
        description="Commit a new shared name: every member's devices show the room by it. "
                    "Only an admin may; the server refuses anyone else, and it never reads "
                    "the name (it is sealed under a key only members hold). With --local, "
                    "rename the room on this device only, which anyone may.",
        example="  sottovoce room rename friends 'old friends' --data-dir ~/.sottovoce-alice",
        func=cmd_rename, args=[ROOM, ("NAME", "the new name")], options=_local_option,
    )
    subcommand(
        rs, "topic",
        help="set ROOM's topic for every member (admins only)",
        description="Commit a new topic, sealed like the room's name: every member sees "
                    "it (`room info`), the server never. Only an admin may; an empty "
                    "TOPIC clears it.",
        example="  sottovoce room topic friends 'dinner on friday' --data-dir ~/.sottovoce-alice",
        func=cmd_topic, args=[ROOM, ("TOPIC", "the new topic")],
    )
    for promote in (True, False):
        subcommand(
            rs, "promote" if promote else "demote",
            help=f"make USER {'an admin' if promote else 'a plain member'} of ROOM "
                 "(admins only)",
            description=("Admins may remove other members' devices, rename the room, "
                         "set its topic and promote or demote. " if promote else
                         "USER keeps its membership and loses the admin role. ")
                        + "Only an admin may change roles.",
            example=f"  sottovoce room {'promote' if promote else 'demote'} friends bob "
                    "--data-dir ~/.sottovoce-alice",
            func=_role(promote), args=[ROOM, USER],
        )
    subcommand(
        rs, "leave",
        help="leave ROOM: your devices are removed and this one deletes its keys",
        description="Send a self-remove proposal; the next member to see it commits it, "
                    "with the removal of your account's other devices. This device waits a "
                    "few seconds for that commit, then deletes its keys for the room either "
                    "way: nothing sent later can be read here.",
        example="  sottovoce room leave friends --data-dir ~/.sottovoce-carol",
        func=cmd_leave, args=[ROOM],
    )
