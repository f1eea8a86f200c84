"""Disappearing messages: `timer NAME [SETTING]` and `room timer ROOM [SETTING]`
(docs/protocol.md §Disappearing messages).

    timer bob 1m        from now on, messages with bob disappear 1 min after they are sent,
                        on every device of both sides (an end-to-end encrypted timer message)
    timer bob off       messages sent from now on stay (older ones keep their expiry)
    timer bob           show the current timer
    room timer team 1h  the same for every member of a room
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.options import Subparsers, command_group, subcommand
from sottovoce.cli.program import command_name
from sottovoce.cli.session import CliError, Connect, with_client
from sottovoce.limits import TIMER_CHOICES

if TYPE_CHECKING:
    from sottovoce.client import Client
    from sottovoce.client.store_timers import ChatTimer

#: As `send`: stored and queued, not acknowledged yet.
EXIT_QUEUED = 75
_SETTING_HELP = (
    f"one of {', '.join(TIMER_CHOICES)} (5 seconds, 1 minute, 1 hour, 1 day, 1 week, off); "
    "without it, print the current timer"
)


def _shown(timer: ChatTimer | None, me: str) -> str:
    from sottovoce.client.expiry import spoken

    if timer is None or not timer.seconds:
        return "off"
    who = "you" if timer.setter == me else render.safe(timer.setter)
    return f"{spoken(timer.seconds)} (set by {who})"


def _sent(client: Client, message_id: str) -> bool:
    from sottovoce.client import DeliveryStatus

    stored = client.message(message_id)
    return stored is not None and stored.status is DeliveryStatus.SENT


def _report(label: str, seconds: int, sent: bool) -> int:
    from sottovoce.client.expiry import spoken

    what = "off" if not seconds else f"{spoken(seconds)} after sending"
    print(f"disappearing messages with {label}: {what}")
    if sent:
        return 0
    print(render.queued(label))
    return EXIT_QUEUED


def cmd_timer(args: argparse.Namespace) -> int:
    """set or show the disappearing-messages timer of a chat

    Set how long messages with NAME last: every device of both sides applies the
    new timer (an end-to-end encrypted timer message; the chat shows who set it)
    and deletes each message when it expires, also what expired while it was
    closed, as soon as it opens. A message's expiry counts from when it is sent
    (not from when it is read) and travels inside its encryption, so changing the
    timer later never moves it. The server drops the ciphertext of an expired
    message that is still waiting for a device.

    exit codes: 0 set (or shown); 75 queued, not sent yet; 1 error; 2 wrong usage

    example:
      {program} timer bob 1m --data-dir ~/.sottovoce-alice
      {program} timer bob off --data-dir ~/.sottovoce-alice
    """
    from sottovoce.client.errors import NotConnected
    from sottovoce.client.expiry import parse_timer

    name = args.name.removeprefix("@")
    if name.startswith("#"):
        raise CliError(f"{render.safe(name)} is a room: {command_name()} room timer "
                       f"{render.quoted_room(render.safe(name[1:]))} ...")
    seconds = None if args.setting is None else parse_timer(args.setting)

    async def work(client: Client) -> tuple[str, bool]:
        if name == client.username:
            raise CliError("that is you: a timer is for a chat with another user")
        if seconds is None:
            return _shown(client.timers.chat_timer(name), client.username), False
        message_id = await client.timers.set_chat_timer(name, seconds)
        if client.connected:
            try:
                await client.wait_sent(message_id, timeout=args.timeout)
            except NotConnected:
                return "", False  # stored and queued: it goes out with the next connection
        return "", _sent(client, message_id)

    shown, sent = with_client(
        args, work, connect=Connect.NO if seconds is None else Connect.TRY
    )
    if seconds is None:
        print(f"disappearing messages with {render.safe(name)}: {shown}")
        return 0
    return _report(render.safe(name), seconds, sent)


def cmd_room_timer(args: argparse.Namespace) -> int:
    """set or show the disappearing-messages timer of a room

    Set how long messages in ROOM last, for every member (a timer message inside
    the room's encryption). A message's expiry counts from when it is sent (not
    from when it is read) and travels inside its encryption, so changing the timer
    later never moves it. The server drops the ciphertext of an expired message
    that is still waiting for a device.

    exit codes: 0 set (or shown); 75 queued, not sent yet; 1 error; 2 wrong usage

    example:
      {program} room timer team 1h --data-dir ~/.sottovoce-alice
    """
    from sottovoce.client.expiry import parse_timer

    ref = args.room[1:] if args.room.startswith("#") else args.room
    seconds = None if args.setting is None else parse_timer(args.setting)

    async def work(client: Client) -> tuple[str, str, bool]:
        room = client.rooms.get(ref)
        if seconds is None:
            shown = _shown(client.timers.room_timer(room.room_id), client.username)
            return room.label, shown, False
        message_id = await client.timers.set_room_timer(room.room_id, seconds)
        return room.label, "", _sent(client, message_id)

    label, shown, sent = with_client(
        args, work, connect=Connect.NO if seconds is None else Connect.TRY
    )
    if seconds is None:
        print(f"disappearing messages in {render.safe(label)}: {shown}")
        return 0
    return _report(render.safe(label), seconds, sent)


def _room_group(sub: Subparsers) -> Subparsers:
    """The `room` command's subcommands (made by room_cmd, which is loaded before us)."""
    parser = sub.choices.get("room")
    if parser is not None and parser._subparsers is not None:
        for action in parser._subparsers._group_actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
    return command_group(  # pragma: no cover -- room_cmd always comes first
        sub, "room", help="rooms: group chats end-to-end encrypted with MLS",
        description="Rooms are MLS groups.", example="  sottovoce room list",
    )


def add_commands(sub: Subparsers) -> None:
    chat = ("NAME", "the other user")
    room = ("ROOM", "the room's name on this device, '#NAME', or its id")
    for group, func, what in ((sub, cmd_timer, chat), (_room_group(sub), cmd_room_timer, room)):
        parser = subcommand(group, "timer", func=func, args=[what])
        parser.add_argument(
            "setting", metavar="SETTING", nargs="?", default=None, help=_SETTING_HELP
        )
