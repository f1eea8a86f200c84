"""Commands that act on a message already sent: `edit`, `delete`, `react` (and the
same under `room`), and `account settings` for read receipts, typing notices
and presence.

A message is named by its id, or by any unambiguous start of it: `history --ids`
shows the first characters of each. The work is ``client.controls``
(client/conversation.py); each command prints one line saying what it did.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.options import Positional, account_options, subcommand
from sottovoce.cli.room_cmd import room_ref
from sottovoce.cli.session import CliError, Connect, with_client

if TYPE_CHECKING:
    from sottovoce.client import Client

_ID: Positional = ("ID", "the message's id, or an unambiguous start of it (history --ids)")
_NAME: Positional = ("NAME", "the other user")
_ROOM: Positional = ("ROOM", None)


def _chat(args: argparse.Namespace) -> tuple[str, bool]:
    if hasattr(args, "room"):
        return room_ref(args.room), True
    name = str(args.name)
    if name.startswith("#"):
        raise CliError(f"{render.safe(name)} is a room: use `room {args.command_name} ...`")
    return name.removeprefix("@"), False


def _run(
    args: argparse.Namespace, work: Callable[[Client, str, bool], Awaitable[str]],
    connect: Connect = Connect.TRY,
) -> int:
    chat, room = _chat(args)
    print(with_client(args, lambda client: work(client, chat, room), connect=connect))
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    async def work(client: Client, chat: str, room: bool) -> str:
        target = client.controls.target(chat, args.id, room=room)
        await client.controls.edit(chat, target.message_id, args.text, room=room)
        return f"edited {target.message_id[: render.SHORT_ID]}"

    return _run(args, work)


def cmd_delete(args: argparse.Namespace) -> int:
    async def work(client: Client, chat: str, room: bool) -> str:
        target = client.controls.target(chat, args.id, room=room)
        await client.controls.delete(
            chat, target.message_id, for_everyone=args.for_everyone, room=room
        )
        where = "for everyone" if args.for_everyone else "on this device"
        return f"deleted {target.message_id[: render.SHORT_ID]} {where}"

    return _run(args, work, Connect.TRY if args.for_everyone else Connect.NO)


def cmd_react(args: argparse.Namespace) -> int:
    async def work(client: Client, chat: str, room: bool) -> str:
        target = client.controls.target(chat, args.id, room=room)
        await client.controls.react(
            chat, target.message_id, args.emoji, remove=args.remove, room=room
        )
        done = "removed from" if args.remove else "added to"
        return f"{render.safe(args.emoji)} {done} {target.message_id[: render.SHORT_ID]}"

    return _run(args, work)


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise ValueError(value)
    return value == "on"


_on_off.__name__ = "on/off"


def cmd_settings(args: argparse.Namespace) -> int:
    async def work(client: Client) -> list[str]:
        now = client.controls.set_settings(read_receipts=args.read_receipts, typing=args.typing)
        if args.presence is not None:
            client.presence.set_enabled(args.presence)
        return [
            f"read receipts: {'on' if now.read_receipts else 'off'}",
            f"typing notices: {'on' if now.typing else 'off'}",
            f"presence: {'on' if client.presence.enabled else 'off'}",
        ]

    for line in with_client(args, work, connect=Connect.NO, notices=False):
        print(line)
    return 0


def _group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str
) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    """The subcommands of the group ``name`` made by the module that made it; ``None``
    when this parse did not load that module (another command was named)."""
    parser = sub.choices.get(name)
    if parser is None or parser._subparsers is None:
        return None
    for action in parser._subparsers._group_actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _message_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], where: Positional, prog: str
) -> None:
    """`edit`, `delete` and `react` in ``sub``, naming the chat by ``where``."""
    chat = "ROOM" if where is _ROOM else "NAME"
    who = "every member of ROOM" if where is _ROOM else "NAME"
    example_chat = "team" if where is _ROOM else "bob"
    edit = subcommand(
        sub, "edit",
        help="replace the text of a message you sent (everyone sees it was edited)",
        description=(
            f"Send new TEXT for your message ID in {chat}: {who} and your other devices show "
            "it with \"(edited)\"; the earlier text stays in each device's encrypted store as "
            "the message's history. Only the message's sender can edit it: devices ignore an "
            "edit from anyone else."
        ),
        example=f"  {prog} edit {example_chat} 3fA9c2Lq 'the right text' "
        "--data-dir ~/.sottovoce-alice",
        func=cmd_edit, args=[where, _ID, ("TEXT", "the new text")],
    )
    edit.set_defaults(command_name="edit")
    delete = subcommand(
        sub, "delete",
        help="delete a message on this device, or for everyone (--for-everyone)",
        description=(
            "Delete message ID from this device's history (only here). With --for-everyone "
            f"(your own messages only), the text and its edits are removed on every device of "
            f"{who} and on your other devices; a '[deleted]' line stays in its place."
        ),
        example=f"  {prog} delete {example_chat} 3fA9c2Lq --for-everyone "
        "--data-dir ~/.sottovoce-alice",
        func=cmd_delete, args=[where, _ID],
    )
    delete.add_argument(
        "--for-everyone", action="store_true",
        help="remove it on every device of everyone in the chat (your own messages only)",
    )
    delete.set_defaults(command_name="delete")
    react = subcommand(
        sub, "react",
        help="add (or --remove) an emoji reaction on a message",
        description=(
            f"React to message ID in {chat} with EMOJI; history shows each emoji with how "
            "many people put it there (one each, however often they send it)."
        ),
        example=f"  {prog} react {example_chat} 3fA9c2Lq 👍 --data-dir ~/.sottovoce-alice",
        func=cmd_react, args=[where, _ID, ("EMOJI", "one emoji")],
    )
    react.add_argument("--remove", action="store_true", help="take your reaction back")
    react.set_defaults(command_name="react")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _message_commands(sub, _NAME, "sottovoce")
    rooms = _group(sub, "room")
    if rooms is not None:
        _message_commands(rooms, _ROOM, "sottovoce room")
    account = _group(sub, "account")
    if account is None:
        return
    settings = subcommand(
        account, "settings",
        help="show or change read receipts, typing notices and presence for this account",
        description=(
            "Without options, show the settings. --read-receipts off: this device sends no "
            "read receipts and shows nobody else's (delivered ✓✓ still shows). --typing off: "
            "it sends no typing notices and shows nobody else's. --presence off: it tells "
            "no contact whether you are online, away or offline, and shows nobody's."
        ),
        example="  sottovoce account settings --read-receipts off --data-dir ~/.sottovoce-alice",
        func=cmd_settings, options=account_options,
    )
    settings.add_argument("--read-receipts", type=_on_off, metavar="on|off",
                          help="send and show read receipts (default on)")
    settings.add_argument("--typing", type=_on_off, metavar="on|off",
                          help="send and show typing notices (default on)")
    settings.add_argument("--presence", type=_on_off, metavar="on|off",
                          help="share online/away/offline with contacts, and see theirs "
                          "(default on)")

