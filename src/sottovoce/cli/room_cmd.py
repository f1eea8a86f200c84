"""Room commands: `room create|invite|join|remove|send|audit|token|set|info|list|history`
(`room call` and `room members|rename|topic|promote|demote|leave` have their own modules).

Each command opens the account like the other client commands (``--data-dir``,
``--passphrase-file`` / ``$SOTTOVOCE_PASSPHRASE``), connects, catches up on
everything the room missed, does its one thing and closes. ROOM is the room's
shared name, this device's own name for it, or the room id (``room:`` + 32 hex
digits) that ``room list`` shows.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from sottovoce.cli import files_cmd, render
from sottovoce.cli.options import (
    Positional,
    command_group,
    history_options,
    subcommand,
    timed_account_options,
)
from sottovoce.cli.program import command_name, dir_flag
from sottovoce.cli.session import CliError, Connect, with_client
from sottovoce.errors import UsageError
from sottovoce.limits import MAX_ROOM_NAME_BYTES

if TYPE_CHECKING:
    from sottovoce.client import Client

#: `room audit`: the trail does not verify.
EXIT_AUDIT_INVALID = 3
#: `room send`: stored and queued, not acknowledged yet (as `send`).
EXIT_QUEUED = 75


def room_ref(value: str) -> str:
    """ROOM as typed: its name, '#NAME' (as `chat` takes it) or its id."""
    return value[1:] if value.startswith("#") else value


def room_name(value: str) -> str:
    """A new local name for a room (refused when it could not be shown or typed back)."""
    from sottovoce.client.room_notice import valid_room_name

    if value.startswith(("#", "@")):
        raise CliError(f"leave out the '{value[0]}': it only marks a room or a person on the "
                       "command line")
    if value.startswith("room:"):  # would read back as a room's id
        raise CliError("a room name cannot start with 'room:', which marks a room's id")
    if not valid_room_name(value):
        raise CliError(f"a room name is 1-{MAX_ROOM_NAME_BYTES} bytes of printable text, "
                       "without spaces at either end")
    return value


def room_suite(value: str) -> int:
    """``--suite``: a room suite by name or number (``classic``, ``xwing``, ``1``, ``0xF001``)."""
    from sottovoce.client.rooms.model import ROOM_SUITES
    from sottovoce.crypto.mls_suites import parse_suite

    try:
        return parse_suite(value, ROOM_SUITES)
    except UsageError as exc:
        raise CliError(str(exc)) from None


def cmd_create(args: argparse.Namespace) -> int:
    from sottovoce.crypto.mls_suites import describe_suite

    name = room_name(args.name)
    suite = room_suite(args.suite)

    async def work(client: Client) -> tuple[str, str]:
        same = [r.room_id for r in client.rooms.all() if r.label == name and not r.removed]
        if same:  # two rooms of one name could then only be told apart by their ids
            raise CliError(f"you already have a room called '{render.safe(name)}' ({same[0]}); "
                           "choose another name")
        room = await client.rooms.create_room(name, suite)
        return room.label, room.room_id

    label, room_id = with_client(args, work)
    shown = render.safe(label)
    print(f"created room '{shown}' ({room_id}), MLS cipher suite {describe_suite(suite)}")
    program = command_name()
    print(f"next: {program} room invite {render.quoted_room(shown)} USER{dir_flag(args)}, "
          f"{program} chat {render.quoted_room(shown)}{dir_flag(args)}")
    return 0


def cmd_invite(args: argparse.Namespace) -> int:
    async def work(client: Client) -> tuple[int | None, str]:
        room = client.rooms.get(room_ref(args.room))
        result = await client.rooms.invite(room.room_id, args.user)
        if result is None:
            return None, client.rooms.name(room.room_id)
        # Inside the room's encryption: the invitee learns who invited it, and the name.
        await client.rooms.announce_invite(room.room_id, args.user)
        return result.epoch, client.rooms.name(room.room_id)

    epoch, label = with_client(args, work)
    user = render.safe(args.user)
    if epoch is None:
        print(f"{user} is already in the room")
    else:
        print(f"invited {user} (room epoch {epoch}); they see the room as "
              f"'{render.safe(label)}'")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int | None:
        result = await client.rooms.remove(room_ref(args.room), args.user)
        return None if result is None else result.epoch

    epoch = with_client(args, work)
    print(f"removed {render.safe(args.user)}" + ("" if epoch is None else f" (room epoch {epoch})"))
    return 0


def cmd_join(args: argparse.Namespace) -> int:
    name = None if args.name is None else room_name(args.name)

    async def work(client: Client) -> tuple[str, str, int]:
        room = await client.rooms.join_with_token(args.token, label=name)
        if name is not None and room.label != name:
            client.rooms.rename(room.room_id, name)  # a rejoin keeps the old name otherwise
        return room.label, room.room_id, room.epoch

    label, room_id, epoch = with_client(args, work)
    print(f"joined room '{render.safe(label)}' ({room_id}, epoch {epoch})")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from sottovoce.client.store import DeliveryStatus

    if files_cmd.wants_file(args) and args.reply_to:
        raise CliError("--reply-to goes with a TEXT, not with --file")
    if files_cmd.wants_file(args):
        return files_cmd.send_file(args, room=room_ref(args.room))

    async def work(client: Client) -> tuple[str, bool]:
        room = client.rooms.get(room_ref(args.room))
        # Online, rooms.send waits for the ✓ itself; offline (or a slow ack) it is queued.
        if args.reply_to:
            message_id = await client.controls.reply(
                room.room_id, args.reply_to, args.text, room=True
            )
        else:
            message_id = await client.rooms.send(room.room_id, args.text)
        stored = client.message(message_id)
        return room.label, stored is not None and stored.status is DeliveryStatus.SENT

    label, sent = with_client(args, work, connect=Connect.TRY)
    if sent:
        print(f"✓ sent to {render.safe(label)}")
        return 0
    print(render.queued(label))
    return EXIT_QUEUED


def cmd_history(args: argparse.Namespace) -> int:
    async def work(client: Client) -> list[str]:
        me = client.username
        room = client.rooms.get(room_ref(args.room))
        views = client.controls.history(room.room_id, room=True, limit=args.limit)
        client.conversations.mark_read(room.room_id, [v.message for v in views])
        if client.connected:  # shown: a read receipt to the room (unless off)
            await client.controls.mark_read(room.room_id, room=True)
        return [
            render.view_line(v, me, room=True, ids=args.ids,
                             expires_at_ms=client.timers.expires_at(v.message.message_id))
            for v in views
        ]

    for line in with_client(args, work, connect=Connect.NO if args.offline else Connect.REQUIRED):
        print(line)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from sottovoce.protocol.audit import AuditChainError

    async def work(client: Client) -> list[str] | str:
        try:
            entries = await client.rooms.audit(room_ref(args.room))
        except AuditChainError as exc:
            return str(exc)
        skipped = [render.audit_skipped(bad.index, bad.reason) for bad in entries.rejected]
        return [*(render.audit_entry(e) for e in entries), *skipped, render.audit_summary(entries)]

    result = with_client(args, work)
    if isinstance(result, str):
        print(f"sottovoce: audit trail INVALID: {render.safe(result)}", file=sys.stderr)
        return EXIT_AUDIT_INVALID
    print("\n".join(result))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    async def work(client: Client) -> str | None:
        ref = room_ref(args.room)
        if args.revoke:
            await client.rooms.revoke_token(ref)
            return None
        if args.rotate:
            return await client.rooms.rotate_token(ref)
        return await client.rooms.create_token(ref)

    token = with_client(args, work)
    if token is None:
        print("token revoked: nobody can join with it any more")
        return 0
    print("join token (shown once; the server keeps only a hash of it):")
    print(token)
    # "--" first: a token may start with "-", which would otherwise read as an option.
    print(f"they join with: sottovoce room join --name NAME -- {token}")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from sottovoce.protocol.rooms import setting_refusal

    changes = [(name, value) for name, value in (("residency", args.residency),
                                                ("recorder", args.recorder)) if value is not None]
    if not changes:
        raise CliError("say what to change: --residency REGION|none and/or --recorder on|off")
    for name, value in changes:
        why = setting_refusal(name, value)
        if why is not None:
            raise CliError(why)

    async def work(client: Client) -> str:
        room = client.rooms.get(room_ref(args.room))
        for name, value in changes:
            await client.rooms.set_setting(room.room_id, name, value)
        return room.label

    label = with_client(args, work)
    for name, value in changes:
        print(f"{render.safe(label)}: {render.room_setting(name, value)} "
              "(every member sees it; in the room's audit trail)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    async def work(client: Client) -> tuple[str, str, dict[str, Any], int | None]:
        room = client.rooms.get(room_ref(args.room))
        state = await client.rooms.info(room.room_id)
        rooms = client.rooms
        return rooms.name(room.room_id), rooms.topic(room.room_id), state, rooms.suite(room.room_id)

    name, topic, state, suite = with_client(args, work)
    print("\n".join(render.room_info(name, topic, state, suite)))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    async def work(client: Client) -> list[str]:
        # A room this device left or was removed from is no longer listed.
        return [render.room_row(room) for room in client.rooms.all() if not room.removed]

    rows = with_client(args, work, connect=Connect.NO if args.offline else Connect.REQUIRED)
    print("\n".join(rows) if rows else "no rooms yet (sottovoce room create NAME)")
    return 0


ROOM: Positional = ("ROOM", None)
USER: Positional = ("USER", None)


def _send_options(parser: argparse.ArgumentParser) -> None:
    files_cmd.add_text_or_file(parser)
    timed_account_options(parser)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rs = command_group(
        sub,
        "room",
        help="rooms: group chats end-to-end encrypted with MLS",
        description=(
            "Rooms are MLS groups; the server orders commits and fans out one ciphertext per "
            "message. ROOM is the room's shared name (`room rename`), this device's own name "
            "for it, the same with a '#' in front as `chat` takes it, or its id (room:…) as "
            "`room list` shows it. The shared name, topic and admins live in the room's MLS "
            "group context, which the server reads to check commits against the room's "
            "rules; the name and topic are there only sealed under a key members hold."
        ),
        example=(
            "  sottovoce room create friends && sottovoce room invite friends bob\n"
            "  sottovoce chat '#friends'"
        ),
    )
    create = subcommand(
        rs,
        "create",
        help="make a room with you as its only member",
        description=(
            "Make a new room with you as its only member and its admin. NAME becomes the "
            "room's shared name: every member sees it, the server never (it is sealed "
            "under a key only members hold). --suite picks the room's MLS cipher suite, "
            "for good: 'classic' (1, MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, the "
            "default) or 'xwing' (0xF001, MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519: "
            "the hybrid post-quantum KEM X-Wing, X25519 + ML-KEM-768, under a private-use "
            "code point until one is assigned). An xwing room can add only devices whose "
            "client uploads xwing KeyPackages; its KeyPackages, commits and Welcomes are "
            "10-16 times larger."
        ),
        example=(
            "  sottovoce room create friends --data-dir ~/.sottovoce-alice\n"
            "  sottovoce room create vault --suite xwing --data-dir ~/.sottovoce-alice"
        ),
        func=cmd_create,
        args=[("NAME", "the room's shared name")],
    )
    create.add_argument(
        "--suite", default="classic", metavar="SUITE",
        help="the room's MLS cipher suite, by name or number: classic (1, the default) or "
             "xwing (0xF001: hybrid post-quantum, private-use code point until one is "
             "assigned)",
    )
    subcommand(
        rs,
        "invite",
        help="add every device of USER to ROOM",
        description=(
            "Fetch one KeyPackage per device of USER, check each against USER's device "
            "certificates, and commit their addition; each device gets a Welcome. Then a "
            "notice inside the room's encryption tells the room that you invited USER, and "
            "the room's shared name, whose key USER's devices are sent the same way."
        ),
        example="  sottovoce room invite friends bob --data-dir ~/.sottovoce-alice",
        func=cmd_invite,
        args=[ROOM, USER],
    )
    subcommand(
        rs,
        "remove",
        help="remove every device of USER from ROOM (admins only)",
        description="Commit the removal of USER's devices; they cannot read anything later. "
                    "Only a room admin may remove another account; the server refuses "
                    "anyone else's commit.",
        example="  sottovoce room remove friends bob --data-dir ~/.sottovoce-alice",
        func=cmd_remove,
        args=[ROOM, USER],
    )
    p = subcommand(
        rs,
        "join",
        help="join a room with a join token (external commit)",
        description=(
            "Fetch the room's public GroupInfo with TOKEN and join by an external commit. "
            "The token only routes; the keys come from the MLS join."
        ),
        example="  sottovoce room join --name friends --data-dir ~/.sottovoce-carol -- Zk3…Q",
        func=cmd_join,
        args=[("TOKEN", "the join token (one starting with '-' needs -- before it)")],
    )
    p.add_argument(
        "--name",
        metavar="NAME",
        help="this device's name for the room (default: its id); renames it on a rejoin",
    )
    subcommand(
        rs,
        "send",
        help="send TEXT (or a file) to ROOM and wait for the server's ✓",
        description=(
            "Encrypt TEXT once for the whole room (MLS application message) and send it. If "
            "the server is unreachable the message is kept in the encrypted local store and "
            "goes out, once, the next time any sottovoce command of this account connects."
            " With --file PATH the file is encrypted here, uploaded for every other member "
            "device (a progress bar on a terminal) and announced in the room; members fetch "
            "it with `sottovoce save #ROOM MESSAGE_ID DEST`. A file needs the server now."
            "\n\nexit codes: 0 sent (✓); 75 queued, not sent yet (do not send it again); "
            "1 error; 2 wrong usage"
        ),
        example="  sottovoce room send friends 'hello all' --data-dir ~/.sottovoce-alice\n"
                "  sottovoce room send friends --file plan.pdf --data-dir ~/.sottovoce-alice",
        func=cmd_send,
        args=[ROOM],
        options=_send_options,
    ).add_argument(
        "--reply-to", metavar="ID",
        help="quote message ID (or an unambiguous start of it: history --ids) in the reply",
    )
    subcommand(
        rs,
        "history",
        help="print ROOM's messages from the local store (after catching up)",
        description=(
            "Connect, store what arrived, then print the room's last messages (replies with "
            "the line they quote, \"(edited)\", '[deleted]', reactions with their counts, "
            "and 'delivered to N', 'read by N' on yours); the room then gets a read receipt "
            "(see account settings)."
        ),
        example="  sottovoce room history friends --data-dir ~/.sottovoce-bob",
        func=cmd_history,
        args=[ROOM],
        options=history_options,
    ).add_argument(
        "--ids", action="store_true",
        help="start each line with the first characters of the message's id (to edit, "
        "delete, react or --reply-to)",
    )
    subcommand(
        rs,
        "audit",
        help="fetch, verify and print ROOM's audit trail",
        description=(
            "Fetch the room's audit chain and verify it: hash links, each actor's signature, "
            "and the binding to every epoch authenticator this device saw. A tampered chain "
            "fails with the number of the first bad entry (exit code 3)."
        ),
        example="  sottovoce room audit friends --data-dir ~/.sottovoce-alice",
        func=cmd_audit,
        args=[ROOM],
    )
    p = subcommand(
        rs,
        "token",
        help="make, rotate or revoke ROOM's join token",
        description=(
            "Make a join token (32 random bytes) and print it once; the server stores only "
            "its hash. --rotate replaces it, --revoke removes it."
        ),
        example=(
            "  sottovoce room token friends --data-dir ~/.sottovoce-alice\n"
            "  sottovoce room token friends --revoke --data-dir ~/.sottovoce-alice"
        ),
        func=cmd_token,
        args=[ROOM],
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--rotate", action="store_true", help="replace the current token")
    group.add_argument("--revoke", action="store_true", help="remove the token")
    p = subcommand(
        rs,
        "set",
        help="change ROOM's settings (the room's admin only)",
        description=(
            "Change a room setting. Only the room's admin -- the account that created it -- "
            "may; every member sees the settings (`room info`) and each change is an entry "
            "of the room's signed audit trail (`room audit`). --residency REGION keeps the "
            "room's calls on the server's SFUs of that region (refused when none of them is "
            "up, never moved out of it); 'none' lifts it. --recorder on lets the recorder "
            "device the operator runs join the room's calls as a visible participant."
        ),
        example=(
            "  sottovoce room set friends --residency eu --data-dir ~/.sottovoce-alice\n"
            "  sottovoce room set friends --recorder on --data-dir ~/.sottovoce-alice"
        ),
        func=cmd_set,
        args=[ROOM],
    )
    p.add_argument("--residency", metavar="REGION",
                   help="keep the room's calls in this SFU region ('none': any SFU)")
    p.add_argument("--recorder", choices=("on", "off"),
                   help="whether the operator's recorder device may join the room's calls")
    subcommand(
        rs,
        "info",
        help="show ROOM as the server holds it: members, epoch, admin and settings",
        description=(
            "Ask the server for the room's state: its admin, data residency, recorder "
            "setting, epoch and member devices."
        ),
        example="  sottovoce room info friends --data-dir ~/.sottovoce-bob",
        func=cmd_info,
        args=[ROOM],
    )
    from sottovoce.cli import ephemeral_cmd, room_admin_cmd, room_call_cmd  # own modules

    room_call_cmd.add_command(rs)
    ephemeral_cmd.add_room_command(rs)
    room_admin_cmd.add_command(rs)
    p = subcommand(
        rs,
        "list",
        help="list this device's rooms",
        description=(
            "Rooms on this device, one per line: the room's shared name (then, in [ ], "
            "this device's own name for it when that differs), id, epoch, members and the "
            "shared topic (rooms "
            "you left or were removed from are not listed). Connects first, so rooms you "
            "were invited to meanwhile are listed."
        ),
        example="  sottovoce room list --data-dir ~/.sottovoce-alice",
        func=cmd_list,
    )
    p.add_argument("--offline", action="store_true", help="do not connect; local store only")
