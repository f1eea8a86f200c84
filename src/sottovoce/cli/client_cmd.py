"""Client commands: `account create|delete`, `send`, `listen`, `chat`, `history`, `verify`.

Every command works on one account directory: ``--data-dir``, else
``$SOTTOVOCE_HOME``, else ``<user data dir>/sottovoce/client``. Two accounts
on one machine simply use two directories. The passphrase that seals the
directory comes from ``--passphrase-file``, else ``$SOTTOVOCE_PASSPHRASE``,
else an interactive prompt. Each command is: parse, one domain call inside
:func:`~sottovoce.cli.session.with_client`, print what :mod:`~sottovoce.cli.render`
makes of the result, return the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
from typing import TYPE_CHECKING

from sottovoce.cli import ephemeral_cmd, files_cmd, render
from sottovoce.cli.call_cmd import add_path_options
from sottovoce.cli.device_cmd import add_account_link
from sottovoce.cli.options import (
    Positional,
    account_options,
    command_group,
    history_options,
    positive,
    subcommand,
    timed_account_options,
)
from sottovoce.cli.program import command_name, dir_flag
from sottovoce.cli.revoke_cmd import recovery_lines
from sottovoce.cli.session import (
    DEFAULT_SERVER,
    DRAIN_TIMEOUT_S,
    CliError,
    Connect,
    check_name_free,
    data_dir,
    new_account_dir,
    new_passphrase,
    pow_notice,
    run,
    show_device_notices,
    unlock,
    unreachable,
    with_client,
)
from sottovoce.errors import DecodeError, UsageError

if TYPE_CHECKING:
    from sottovoce.client import Client
    from sottovoce.client.kt import Pins
    from sottovoce.identity import SafetyNumber
    from sottovoce.secret import Secret

#: `send`: the message is stored and queued, not acknowledged yet (sysexits.h EX_TEMPFAIL:
#: "not really an error ... the request should be reattempted later", which the client
#: does by itself on the next connection).
EXIT_QUEUED = 75


# =============================================================================
# Commands
# =============================================================================


def cmd_account_create(args: argparse.Namespace) -> int:
    from sottovoce.client import Client
    from sottovoce.client.connection import ws_url
    from sottovoce.client.errors import KTAlertRaised
    from sottovoce.client.kt import check_min_cosignatures, parse_vkey, witness_policy_of
    from sottovoce.client.store import Store
    from sottovoce.identity import validate_username
    from sottovoce.kt.checkpoint import NoteKey

    validate_username(args.name)
    ws_url(args.server)  # a wrong scheme is a plain error before any passphrase
    root = new_account_dir(
        args, hint="use another --data-dir for a second account (one directory per account)"
    )
    Store.make_dir(root)  # a file there, or no way to make it: said before the passphrase
    check_name_free(args.server, args.name)  # before the passphrase is typed twice
    kt_key = parse_vkey(args.kt_key, witness=False) if args.kt_key else None
    kt_witnesses = tuple(parse_vkey(w, witness=True) for w in args.kt_witness or ())
    kt_min = check_min_cosignatures(args.kt_min_cosignatures)
    passphrase = new_passphrase(args, args.name)

    async def go() -> tuple[str, str, Secret | None, Pins | None]:
        client = await Client.create_account(
            args.server, args.name, root, passphrase, kt_key=kt_key, kt_witnesses=kt_witnesses,
            kt_min_cosignatures=kt_min, on_pow=pow_notice,
        )
        pins = client.kt.pins
        await client.close()
        return client.username, client.device_id, client.recovery_code, pins

    flag = dir_flag(args)
    try:
        username, device, code, pins = run(go())
    except KTAlertRaised as exc:
        if not Store.exists(root):
            raise
        # The account exists: its recovery code must not be lost with the error.
        lost = exc.recovery_code
        if lost is not None:
            print("\n".join(recovery_lines(lost)))
        raise CliError(
            f"created account '{render.safe(args.name)}' in {render.safe(str(root))}, but "
            f"{exc}\nits lookups are refused until the right log is pinned; see: "
            f"{command_name()} kt status{flag}"
        ) from None
    print(f"created account '{render.safe(username)}' (device {device})")
    print(f"  server:   {render.safe(args.server)}")
    print(f"  data dir: {render.safe(str(root))}")
    if pins is None:
        print("  kt log:   none offered by the server: lookups are not verified")
    else:
        print(f"  kt log:   {render.safe(pins.log_key)}")
        print(f"            fingerprint {NoteKey.from_vkey(pins.log_key).fingerprint()} "
              "(compare it with the server's start-up banner)")
        for w in pins.witnesses:
            print(f"  witness:  {render.safe(w)}")
        for line in render.kt_witness_warning(witness_policy_of(pins), command_name()):
            print(line, file=sys.stderr)
    if code is not None:
        print("\n".join(recovery_lines(code)))
    program = command_name()
    print(f"next: {program} send NAME TEXT{flag}, {program} chat NAME{flag}")
    return 0


def confirm_deletion(username: str, server: str) -> bool:
    """Ask on the terminal; the user must type the username back."""
    if not sys.stdin.isatty():
        raise CliError("not deleting without confirmation: pass --yes, or run in a terminal")
    print(
        f"This deletes the account '{username}' on {render.safe(server)} for every one of its\n"
        "devices. Its devices are revoked, messages waiting on the server are dropped, rooms\n"
        "remove it, and the name can never be registered again. This cannot be undone."
    )
    try:
        answer = input(f"Type the username ({username}) to confirm: ")
    except EOFError:
        return False
    return answer.strip() == username


def cmd_account_delete(args: argparse.Namespace) -> int:
    root = data_dir(args)

    async def work(client: Client) -> str | None:
        confirmed = args.yes or confirm_deletion(client.username, client.identity.server_url)
        if not confirmed:
            return None
        await client.connect(timeout=args.timeout, fail_fast=True)
        await client.delete_account()
        return client.username

    username = with_client(args, work, connect=Connect.NO)
    if username is None:
        print("not deleted.")
        return 1
    print(f"deleted account '{username}'; its name cannot be registered again.")
    print(f"the local history stays in {render.safe(str(root))} until you remove that directory.")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from sottovoce.client import NotConnected

    if files_cmd.wants_file(args) and args.reply_to:
        raise CliError("--reply-to goes with a TEXT, not with --file")
    if files_cmd.wants_file(args):
        return files_cmd.send_file(args)

    async def work(client: Client) -> int | None:
        if getattr(args, "code", None):
            await client.discovery.reach(args.name, args.code)
        if args.reply_to:
            message_id = await client.controls.reply(args.name, args.reply_to, args.text)
        else:
            message_id = await client.send_text(args.name, args.text)
        if not client.connected:
            return None
        try:
            return await client.wait_sent(message_id, timeout=args.timeout)
        except NotConnected:
            return None  # stored and queued: it goes out with the next connection

    seq = with_client(args, work, connect=Connect.TRY)
    if seq is None:
        print(render.queued(args.name))
        return EXIT_QUEUED
    print(render.sent(args.name, seq))
    return 0


def _listen_line(
    client: Client, event: object, hint: tuple[str, str] = ("sottovoce", "")
) -> tuple[str, bool] | None:
    """What ``listen`` prints for one event, and whether it goes to stderr (``hint``: the
    program and the ``--data-dir`` flag of the commands it suggests)."""
    from sottovoce.client import EphemeralReceived, ErrorEvent, MessageReceived
    from sottovoce.client.control import DELETE, EDIT, REACTION
    from sottovoce.client.device_notices import DeviceNotices
    from sottovoce.client.events import (
        DeviceLinked,
        DeviceRevoked,
        EphemeralChatRequested,
        EphemeralGroupInvited,
        MessageUpdated,
        RoomInvited,
        RoomJoined,
        RoomMembershipChanged,
        RoomMessageReceived,
    )
    from sottovoce.client.linking import DeviceNames
    from sottovoce.client.room_notice import INVITE_CONTENT_TYPE, InviteNotice
    from sottovoce.client.rooms import ROOM_PREFIX

    me = client.username
    if isinstance(event, MessageReceived):
        # Read back from the store: the store is what the UI shows.
        stored = client.message(event.message.message_id)
        return None if stored is None else (render.message_line(stored, me), False)
    if isinstance(event, RoomMessageReceived):
        stored = client.message(event.message.message_id)
        if stored is None:
            return None
        if stored.content_type == INVITE_CONTENT_TYPE:
            with contextlib.suppress(DecodeError, UnicodeEncodeError):
                if InviteNotice.decode(stored.text.encode("utf-8")).invited == me:
                    return None  # RoomInvited says it, with the room's name
        label = client.rooms.get(event.room_id).label
        return render.room_message_line(stored, me, label), False
    # Of the control messages, receipts only change ticks.
    if isinstance(event, MessageUpdated) and event.kind in (EDIT, DELETE, REACTION):
        stored = client.message(event.message_id)
        if stored is None:
            return None
        room = event.conversation.startswith(ROOM_PREFIX)
        where = client.rooms.get(event.conversation).label if room else None
        return render.update_line(client.controls.view(stored), me, event, where), False
    if isinstance(event, RoomInvited):
        return render.invitation(event, *hint), False
    if isinstance(event, RoomJoined):
        return f"+ you are now a member of {render.safe(event.label)}", False
    if isinstance(event, RoomMembershipChanged):
        return render.membership(event, client.rooms.get(event.room_id).label), False
    if isinstance(event, EphemeralReceived):
        return f"(ephemeral) {render.safe(event.sender)}: {render.safe(event.text)}", False
    if isinstance(event, EphemeralChatRequested):
        who = render.safe(event.peer)
        return (f"{who} asks for an ephemeral chat: {hint[0]} chat {who} --ephemeral"
                f"{hint[1]} answers (stop listen first)"), False
    if isinstance(event, EphemeralGroupInvited):
        who, label = render.safe(event.peer), render.safe(client.rooms.get(event.room_id).label)
        return (f"{who} asks you into an ephemeral chat of #{label}: {hint[0]} room chat "
                f"{shlex.quote(label)} --ephemeral{hint[1]} joins (stop listen first)"), False
    if isinstance(event, ErrorEvent):
        return render.error_event(event), True
    if isinstance(event, DeviceLinked | DeviceRevoked):
        # Stored as notices too (client/device_notices.py): shown here, they are seen.
        store = client.linking().store
        notices = DeviceNotices(store, client.device_id)
        pending = [n for n in notices.pending() if n.device_id == event.device_id]
        notices.mark_seen(event.device_id)
        lines = render.device_notices(pending, DeviceNames(store).all(), command_name())
        return ("\n".join(lines), True) if lines else None
    return None


def cmd_listen(args: argparse.Namespace) -> int:
    # What _listen_line imports is loaded before "listening as ..." (the line a script
    # waits for): the client loads all of it but the device names, and an import at the
    # first event would let the store move on before that event's line is made.
    import sottovoce.client.linking  # noqa: F401
    from sottovoce.client import ConnectionChanged

    async def work(client: Client) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        events = client.events()
        url = client.identity.server_url
        up: bool | None = None
        client.start_calls()  # rings show here (they cannot be answered from listen)
        calls = asyncio.ensure_future(_print_calls(client))
        try:
            await client.connect(wait=False)
            print(
                f"listening as {client.username} (device {client.device_id}); Ctrl-C to stop",
                flush=True,
            )
            while not stop.is_set():
                getter = asyncio.ensure_future(events.next())
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if getter not in done:
                    getter.cancel()
                    break
                event = getter.result()
                if isinstance(event, ConnectionChanged):
                    if event.connected != up:  # each failed retry says "down" again
                        up = event.connected
                        line = (
                            render.connected(url)
                            if up
                            else render.offline(url, client.connection_problem)
                        )
                        print(line, flush=True)
                    continue
                with contextlib.suppress(UsageError):  # a room forgotten meanwhile
                    shown = _listen_line(client, event, (command_name(), dir_flag(args)))
                    if shown is not None:
                        print(shown[0], file=sys.stderr if shown[1] else sys.stdout, flush=True)
        finally:
            calls.cancel()
            events.close()
        print("stopped.", flush=True)
        return 0

    return with_client(args, work, connect=Connect.NO, notices=False)


def cmd_history(args: argparse.Namespace) -> int:
    if args.name.startswith("#"):  # as `chat` takes a room; its history is `room history`
        raise CliError(f"{render.safe(args.name)} is a room: {command_name()} room history "
                       f"{render.quoted_room(render.safe(args.name[1:]))}{dir_flag(args)}")
    args.name = args.name.removeprefix("@")  # `chat @bob` names a person the same way

    async def work(client: Client) -> list[str]:
        if args.name == client.username:
            raise CliError("that is you: a history is with another user")
        me = client.username
        views = client.controls.history(args.name, limit=args.limit)
        client.conversations.mark_read(args.name, [v.message for v in views])
        if client.connected:  # shown: a read receipt (unless off), delivered ones first
            await client.controls.settle(DRAIN_TIMEOUT_S)
            await client.controls.mark_read(args.name)
        return [render.view_line(v, me, ids=args.ids,
                                 expires_at_ms=client.timers.expires_at(v.message.message_id))
                for v in views]

    lines = with_client(args, work, connect=Connect.NO if args.offline else Connect.TRY)
    for line in lines:
        print(line)
    if not lines:
        print(f"no messages with {render.safe(args.name)} on this device")
    return 0


async def _print_calls(client: Client) -> None:
    """`listen`: incoming calls and how they ended (`sottovoce answer` takes them)."""
    from sottovoce.calls.effects import CallState, StateChanged

    while True:
        event = await client.calls.events.get()
        if isinstance(event, StateChanged) and event.state in (
            CallState.INCOMING_RINGING,
            CallState.ENDED,
        ):
            print(render.call_state(event), flush=True)


def cmd_verify(args: argparse.Namespace) -> int:
    async def work(client: Client) -> tuple[str, SafetyNumber, bool]:
        if args.name == client.username:
            raise CliError("that is you: a safety number is between you and someone else")
        if args.mark and args.unmark:
            raise CliError("give --mark or --unmark, not both")
        sn = client.known_safety_number(args.name)
        if sn is None:
            await client.connect(timeout=args.timeout, fail_fast=True)
            sn = await client.safety_number(args.name)
        if args.mark or args.unmark:
            client.mark_verified(args.name, bool(args.mark))
        return client.username, sn, client.is_verified(args.name)

    me, sn, verified = with_client(args, work, connect=Connect.NO)
    print(render.safety_number(me, args.name, sn, qr=not args.no_qr))
    print(f"{render.safe(args.name)} is "
          + ("marked verified on this device" if verified else
             "not marked verified (compare, then: --mark)"))
    return 0


def parse_target(name: str) -> tuple[str, str]:
    """``chat`` targets: ``'#team'`` a room, ``@bob`` a person, ``bob`` either (a person
    unless only a room is called that), ``room:…`` a room by id."""
    if name.startswith("#"):
        return "room", name[1:]
    if name.startswith("@"):
        return "user", name[1:]
    if name.startswith("room:"):
        return "room", name
    return "either", name


def _user_exists(client: Client, name: str) -> bool:
    """Known here, or (asking the server before auth) registered there."""
    from sottovoce.client import NotConnected, username_available

    if client.known_contact(name):
        return True
    try:
        return not run(username_available(client.identity.server_url, name))
    except NotConnected as exc:
        raise CliError(
            str(unreachable(client.identity.server_url, exc))
            + f"\n(needed to look up '{name}', who is not a contact yet)"
        ) from None


def _chat_target(client: Client, name: str) -> tuple[str, str | None]:
    """(who or which room, room id or None), refusing what cannot be a chat."""
    from sottovoce.identity import validate_username

    kind, value = parse_target(name)
    room = None
    if kind != "user":
        try:
            room = client.rooms.get(value)
        except UsageError:
            if kind == "room":
                raise CliError(
                    f"no room '{value}' on this device (sottovoce room list shows them)"
                ) from None
    if room is not None and kind == "room":
        return room.label, room.room_id
    validate_username(value)
    if value == client.username:
        raise CliError("that is you: chat with another user")
    if room is not None:
        if _user_exists(client, value):
            raise CliError(
                f"'{value}' is both a user and one of your rooms: "
                f"chat @{value} for the person, chat {render.quoted_room(value)} for the room"
            )
        return room.label, room.room_id
    if not _user_exists(client, value):
        raise CliError(
            f"no user '{value}' on {client.identity.server_url} (check the spelling)"
        )
    return value, None


def cmd_chat(args: argparse.Namespace) -> int:
    from sottovoce.cli.tui import run_chat

    if args.ephemeral:
        return _ephemeral_chat(args)
    client = unlock(args)  # a wrong passphrase fails before the screen opens
    try:
        peer, room_id = _chat_target(client, args.name)
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise CliError(
                "chat needs a terminal; in scripts use sottovoce send and sottovoce listen"
            )
    except BaseException:
        run(client.close())
        raise
    # Before the screen opens: they stay on the terminal the chat gives back.
    for line in render.kt_alerts(client.kt.alerts(), command_name()):
        print(line, file=sys.stderr)
    for line in render.kt_witness_warning(client.kt.witness_policy, command_name()):
        print(line, file=sys.stderr)
    show_device_notices(client)  # a device linked or revoked since the last command
    from sottovoce.client.calls import CallOptions, IceConfig

    options = CallOptions(ice=IceConfig(loopback=args.loopback, relay_only=args.relay_only))
    lock_after = args.lock_after * 60 if args.lock_after else None
    code, problem = run_chat(client, peer, room_id=room_id, call_options=options,
                             lock_after_s=lock_after)
    if problem:
        raise CliError(problem)
    return code


def _ephemeral_chat(args: argparse.Namespace) -> int:
    from sottovoce.identity import validate_username

    kind, name = parse_target(args.name)
    if kind == "room":  # the same as `room chat NAME --ephemeral`
        return ephemeral_cmd.run_group(args, name)
    validate_username(name)
    return ephemeral_cmd.run_ephemeral(args, name)


# =============================================================================
# Parsers
# =============================================================================


OTHER_USER: Positional = ("NAME", "the other user")
IDS_HELP = "start each line with the first characters of the message's id (to edit, delete, "\
    "react or --reply-to)"


def _chat_options(parser: argparse.ArgumentParser) -> None:
    add_path_options(parser)
    ephemeral_cmd.add_chat_options(parser)
    parser.add_argument(
        "--lock-after", type=positive(float), metavar="MINUTES", default=None,
        help="lock the screen after MINUTES without a key press (a fraction will do); "
        "the passphrase unlocks it, and nothing of the chat shows while locked",
    )
    account_options(parser)


def _send_options(parser: argparse.ArgumentParser) -> None:
    files_cmd.add_text_or_file(parser)
    timed_account_options(parser)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    account_sub = command_group(
        sub,
        "account",
        help="create, link, recover or delete an account, or change its passphrase",
        description="Manage the account kept in a local directory.",
        example=(
            "  sottovoce account create alice --server ws://127.0.0.1:8765 "
            "--data-dir ~/.sottovoce-alice\n"
            "  sottovoce account delete --data-dir ~/.sottovoce-alice"
        ),
    )
    create = subcommand(
        account_sub,
        "create",
        help="claim a username on a server and make this device's keys",
        description=(
            "Claim NAME on the server (a public alias: no e-mail, no phone number), make an "
            "account key, this device's keys and certificate, upload signed prekeys, and keep "
            "every private key sealed in the data directory under your passphrase (8 or more "
            "characters; it cannot be recovered, and nothing opens the directory without it). "
            "Prints a recovery code, once: write it down and keep it offline; with it alone "
            "you can take the account back from a lost or stolen device (account recover)."
        ),
        example=(
            "  sottovoce account create alice --server ws://127.0.0.1:8765 "
            "--data-dir ~/.sottovoce-alice\n"
            "  SOTTOVOCE_HOME=~/.sottovoce-bob sottovoce account create bob"
        ),
        func=cmd_account_create,
        args=[("NAME", "the username to claim (a-z, 0-9, _ . -)")],
        options=account_options,
    )
    create.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        metavar="URL",
        help=f"the relay server (default {DEFAULT_SERVER}; wss:// for TLS)",
    )
    create.add_argument(
        "--kt-key",
        metavar="VKEY",
        help="the server's transparency-log key as obtained from its operator (else the "
        "key the server names is pinned on first use); a server with another key is refused",
    )
    create.add_argument(
        "--kt-witness",
        metavar="VKEY",
        action="append",
        help="a witness key to pin instead of the ones the server names (repeatable); "
        "every checkpoint then needs a cosignature by one of them",
    )
    create.add_argument(
        "--kt-min-cosignatures",
        metavar="N",
        type=int,
        default=1,
        help="how many pinned witnesses must cosign every checkpoint (default 1; 0 opts "
        "out of witnesses, which leaves you unprotected against a server showing you a "
        "forked log)",
    )

    delete = subcommand(
        account_sub,
        "delete",
        help="delete this account on the server, for all of its devices (irreversible)",
        description=(
            "Sign a deletion with the account key and send it: the server revokes every "
            "device of the account, drops its prekeys and the messages waiting for it, asks "
            "every room it is in to remove it, and keeps the username reserved forever so "
            "nobody can impersonate you under it. Asks you to type the username unless "
            "--yes is given. The local history stays in the data directory."
        ),
        example=(
            "  sottovoce account delete --data-dir ~/.sottovoce-alice\n"
            "  sottovoce account delete --yes --data-dir ~/.sottovoce-alice "
            "--passphrase-file pw.txt"
        ),
        func=cmd_account_delete,
    )
    delete.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation (for scripts)"
    )
    add_account_link(account_sub)

    subcommand(
        sub,
        "send",
        help="send one message (or a file) and wait for the server's ✓",
        description=(
            "Encrypt TEXT for every device of NAME (and your other devices), send it, and "
            "wait until the server has stored it (✓). If the server is unreachable the "
            "message is kept in the encrypted local store and goes out, once, the next time "
            "any sottovoce command of this account connects (send, listen, chat, room ...)."
            " With --file PATH the file is encrypted here, uploaded (a progress bar on a "
            "terminal) and announced to NAME, who fetches it with `sottovoce save`; a file "
            "needs the server now and is refused past the server's size limit."
            "\n\nexit codes: 0 sent (✓); 75 queued, not sent yet (do not send it again); "
            "1 error; 2 wrong usage"
        ),
        example="  sottovoce send bob 'hello bob' --data-dir ~/.sottovoce-alice\n"
                "  sottovoce send bob --file photo.jpg --data-dir ~/.sottovoce-alice",
        func=cmd_send,
        args=[("NAME", "the recipient's username")],
        options=_send_options,
    )
    send = sub.choices["send"]
    send.add_argument(
        "--reply-to", metavar="ID",
        help="quote message ID (or an unambiguous start of it: history --ids) in the reply",
    )
    send.add_argument("--code", metavar="CODE",
                      help="NAME's friend verification code (needed when NAME is in strict "
                           "discovery and you are not their contact yet)")
    subcommand(
        sub,
        "listen",
        help="print incoming messages, room messages and invitations (Ctrl-C to stop)",
        description=(
            "Connect, catch up on everything that arrived while offline, then print each "
            "message (1:1 and rooms, a room's lines start with #NAME), each edit, delete for "
            "everyone and reaction ('~ alice edited: ...', with the message as it now shows), "
            "each invitation to a room and each change of a room's members as it is stored "
            "locally. Says when the "
            "server goes away and when it is back (it reconnects by itself). Ctrl-C stops "
            "cleanly."
        ),
        example="  sottovoce listen --data-dir ~/.sottovoce-bob",
        func=cmd_listen,
        options=account_options,
    )
    subcommand(
        sub,
        "chat",
        help="chat with a person (NAME) or in a room ('#ROOM') in a terminal UI",
        description=(
            "A full-screen chat: history from the local store, an input line, delivery "
            "ticks (… sending, ✓ stored by the server, ✓✓ delivered, read), edits, "
            "deletes and reactions as they come, typing notices (see account settings), "
            "PageUp/PageDown to scroll (older "
            "messages load at the top), Ctrl-S for the safety number, F5 to call NAME or "
            "accept a ringing call, F6 to decline or hang up, Ctrl-Q or Ctrl-C to quit. "
            "NAME is a person; '#ROOM' is one of your rooms (quote it: the shell "
            "treats # as a comment); @NAME insists on the person when a room has that name "
            "too. A bare name that only a room has opens the room."
        ),
        example=(
            "  sottovoce chat bob --data-dir ~/.sottovoce-alice\n"
            "  sottovoce chat '#team' --data-dir ~/.sottovoce-alice\n"
            "  sottovoce chat bob --ephemeral --relay-only --data-dir ~/.sottovoce-alice"
        ),
        func=cmd_chat,
        args=[("NAME", "a username, or '#ROOM' for a room")],
        options=_chat_options,
    )
    subcommand(
        sub,
        "history",
        help="print the messages and calls with NAME from the local store",
        description=(
            "Connect if the server is there (to store what arrived), then print the last "
            "messages with NAME, missed calls included, oldest first: replies with the line "
            "they quote, \"(edited)\", '[deleted]', reactions with their counts, and your "
            "messages' state (… sending, ✓ stored by the server, ✓✓ delivered, read). When "
            "connected, NAME then gets a read receipt (see account settings)."
        ),
        example="  sottovoce history bob --data-dir ~/.sottovoce-alice",
        func=cmd_history,
        args=[OTHER_USER],
        options=history_options,
    ).add_argument("--ids", action="store_true", help=IDS_HELP)
    verify = subcommand(
        sub,
        "verify",
        help="show the safety number with NAME (digits and a QR code)",
        description=(
            "Print the 60-digit safety number of your account and NAME's, and a QR code of "
            "it. Both of you see the same number; if it differs, someone is in the middle. "
            "Once compared, --mark marks NAME verified on this device (the mark goes with a "
            "new key of theirs); it is handed to devices linked later. "
            "Not while this account's chat or listen is running (one process per account)."
        ),
        example="  sottovoce verify bob --data-dir ~/.sottovoce-alice",
        func=cmd_verify,
        args=[OTHER_USER],
    )
    verify.add_argument("--no-qr", action="store_true", help="print the digits only")
    verify.add_argument("--mark", action="store_true",
                        help="mark NAME verified (after comparing the number)")
    verify.add_argument("--unmark", action="store_true", help="clear the verified mark")
