"""Commands over the local store: `list`, `search`, `export`, `forget`, `account passphrase`.

`list` shows every conversation with its unread count (`history`, `room history`
and `chat` mark what they show as read); `search` scans and decrypts the history
in memory (no index is written); `export` writes one conversation as JSON to a
file only its owner can read; `forget` deletes one conversation on this device,
overwriting its records on disk. `account passphrase` re-wraps the store's data
key under a new passphrase (client/store_keys.py): quick, and a crash leaves
either the old or the new passphrase working.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.options import (
    ENV_PASSPHRASE,
    account_options,
    positive,
    subcommand,
    timed_account_options,
)
from sottovoce.cli.program import command_name
from sottovoce.cli.session import (
    CliError,
    Connect,
    data_dir,
    new_passphrase,
    open_with_passphrase,
    passphrase_given,
    require_account,
    with_client,
)
from sottovoce.errors import DecodeError

if TYPE_CHECKING:
    from sottovoce.client import Client
    from sottovoce.client.conversations import Conversation, SearchHit
    from sottovoce.client.store import Store

ENV_NEW_PASSPHRASE = "SOTTOVOCE_NEW_PASSPHRASE"  # noqa: S105 - the variable's name
#: `search`: nothing matched (as grep says it).
EXIT_NOTHING_FOUND = 1


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def _name(label: str, room: bool) -> str:
    return f"#{render.safe(label)}" if room else render.safe(label)


# =============================================================================
# list, search, export, forget
# =============================================================================


def conversation_line(c: Conversation) -> str:
    unread = f"{c.unread} unread" if c.unread else ""
    when = f"last message {_when(c.last_ms)}" if c.messages else "no messages yet"
    return f"{_name(c.label, c.room):<24} {unread:<10} {when}".rstrip()


def cmd_list(args: argparse.Namespace) -> int:
    async def work(client: Client) -> list[Conversation]:
        return client.conversations.all()

    listed = with_client(args, work, connect=Connect.NO if args.offline else Connect.TRY)
    for c in listed:
        print(conversation_line(c))
    if not listed:
        print(f"no conversations on this device yet ({command_name()} send NAME TEXT starts one)")
    return 0


def hit_line(hit: SearchHit) -> str:
    from sottovoce.client.conversations import message_time
    from sottovoce.client.file_body import FILE_CONTENT_TYPE

    m = hit.message
    who = "you" if m.outgoing else render.safe(m.sender)
    if m.content_type == FILE_CONTENT_TYPE:
        text = render.file_line(m.text, m.message_id)
    else:
        text = render.safe(m.text).replace("\n", " ")
    return f"{_when(message_time(m))}  {_name(hit.conversation, hit.room)}  {who}: {text}"


def cmd_search(args: argparse.Namespace) -> int:
    async def work(client: Client) -> list[SearchHit]:
        return client.conversations.search(args.words, limit=args.limit)

    hits = with_client(args, work, connect=Connect.NO)
    for hit in hits:
        print(hit_line(hit))
    if not hits:
        print("no message on this device holds all of those words", file=sys.stderr)
        return EXIT_NOTHING_FOUND
    return 0


def _private_output(path: Path) -> int:
    """A new file only its owner can read or write (an existing one is not touched)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path} exists: choose another --out (nothing was written)") from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()

    async def work(client: Client) -> tuple[str, int]:
        exported = client.conversations.export(args.name)
        fd = _private_output(out)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(exported, f, ensure_ascii=False, indent=2)
            f.write("\n")
        conv = exported["conversation"]
        return _name(conv["name"], conv["kind"] == "room"), len(exported["messages"])

    name, count = with_client(args, work, connect=Connect.NO)
    print(f"exported {render.messages(count)} of {name} to {render.safe(str(out))} "
          "(readable by you only; it is not encrypted)")
    return 0


def _confirm_forget(name: str, count: int) -> bool:
    if not sys.stdin.isatty():
        raise CliError("not deleting without confirmation: pass --yes, or run in a terminal")
    print(f"This deletes {render.messages(count)} of {name} on this device, and sends of it "
          "not made yet.\nOther devices and the other side keep theirs. It cannot be undone.")
    try:
        return input("Type yes to delete: ").strip().lower() == "yes"
    except EOFError:
        return False


def cmd_forget(args: argparse.Namespace) -> int:
    async def work(client: Client) -> tuple[str, int] | None:
        peer, label, room = client.conversations.resolve(args.name)
        name = _name(label, room)
        count = len(client.conversations.messages(peer))
        if not (args.yes or _confirm_forget(name, count)):
            return None
        return name, client.conversations.forget(args.name)

    done = with_client(args, work, connect=Connect.NO)
    if done is None:
        print("nothing deleted.")
        return 1
    print(f"deleted {render.messages(done[1])} of {done[0]} on this device")
    return 0


# =============================================================================
# account passphrase
# =============================================================================


def _new_given(args: argparse.Namespace) -> tuple[str, str] | None:
    return passphrase_given(args, args.new_passphrase_file, "--new-passphrase-file",
                            ENV_NEW_PASSPHRASE)


def _open_store(args: argparse.Namespace, root: Path) -> tuple[Store, str]:
    """The store and its current passphrase (three prompts at a terminal)."""
    from sottovoce.client.store import Store

    return open_with_passphrase(args, root, lambda passphrase: Store.open(root, passphrase),
                                prompt="Current passphrase", after="; nothing was changed")


def cmd_account_passphrase(args: argparse.Namespace) -> int:
    from sottovoce.client.identity import LocalIdentity

    root = data_dir(args)
    require_account(root)
    store, old = _open_store(args, root)
    try:
        raw = store.get_secret("identity")
        try:
            username = LocalIdentity.decode(raw).username if raw else ""
        except DecodeError:
            username = ""
        new = new_passphrase(args, username, source=_new_given, what="New passphrase")
        if new == old:
            raise CliError("the new passphrase is the current one: nothing was changed")
        store.change_passphrase(old, new)
    finally:
        store.close()
    print(f"passphrase changed: only the new one opens {render.safe(str(root))} now")
    return 0


# =============================================================================
# Parsers
# =============================================================================


def _account_group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = sub.choices["account"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise CliError("the account command has no subcommands")  # pragma: no cover


def _list_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offline", action="store_true", help="do not connect; local store only")
    timed_account_options(parser)


def _add_passphrase(group: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    program = command_name()
    change = subcommand(
        group,
        "passphrase",
        help="change the passphrase of the local store",
        description=(
            "Ask for the current passphrase, then twice for a new one (8 or more characters, "
            "not easy to guess), and seal the store's key under the new one: nothing else is "
            "re-encrypted, so it takes a second whatever the history's size. Afterwards only "
            "the new passphrase opens the data directory; if the change is interrupted, the "
            "old one still does. The current passphrase may come from --passphrase-file or "
            f"${ENV_PASSPHRASE}, the new one from --new-passphrase-file or "
            f"${ENV_NEW_PASSPHRASE}. Not while this account's chat or listen is running."
        ),
        example=f"  {program} account passphrase --data-dir ~/.sottovoce-alice",
        func=cmd_account_passphrase,
        options=account_options,
    )
    change.add_argument(
        "--new-passphrase-file", metavar="FILE",
        help=f"read the new passphrase from FILE (else ${ENV_NEW_PASSPHRASE}, else a prompt)",
    )


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    program = command_name()
    if "account" in sub.choices:  # only a parse of `list` etc. alone goes without
        _add_passphrase(_account_group(sub))
    subcommand(
        sub,
        "list",
        help="list every conversation, with unread counts and the last message's time",
        description=(
            "Connect if the server is there (to store what arrived), then list every person "
            "you have messages with and every room you are in ('#NAME'), the most recent "
            "first, with how many received messages have not been shown yet. history, "
            "room history and chat mark what they show as read."
        ),
        example=f"  {program} list --data-dir ~/.sottovoce-alice",
        func=cmd_list,
        options=_list_options,
    )
    search = subcommand(
        sub,
        "search",
        help="find the messages on this device that hold every one of WORDS",
        description=(
            "Decrypt the history in memory and print the text messages (1:1 and rooms) that "
            "hold all of WORDS, and the files whose names hold them, ignoring case, newest "
            "first. No index is written to disk. "
            "Does not connect.\n\nexit codes: 0 found; 1 nothing found; 2 wrong usage"
        ),
        example=f"  {program} search lunch friday --data-dir ~/.sottovoce-alice",
        func=cmd_search,
        options=account_options,
    )
    search.add_argument("words", metavar="WORDS", nargs="+", help="the words to look for")
    search.add_argument("--limit", type=positive(int), default=50, metavar="N",
                        help="print at most the N newest matches (default 50)")
    export = subcommand(
        sub,
        "export",
        help="write one conversation's history to a JSON file only you can read",
        description=(
            "Write every message with NAME (a person, or '#ROOM' for a room) on this device "
            "to FILE as JSON: who sent it, when, its text and delivery status (a file: its "
            "name, size and type, never its key). FILE is new "
            "(an existing one is not overwritten) and readable by you only (0600); it is "
            "not encrypted. Does not connect."
        ),
        example=f"  {program} export bob --out bob.json --data-dir ~/.sottovoce-alice",
        func=cmd_export,
        args=[("NAME", "a username, or '#ROOM' for a room")],
        options=account_options,
    )
    export.add_argument("--out", metavar="FILE", required=True, help="the file to write")
    forget = subcommand(
        sub,
        "forget",
        help="delete one conversation's messages on this device",
        description=(
            "Delete every message with NAME (a person, or '#ROOM' for a room's history) on "
            "this device, and sends to it not made yet, overwriting them in the store's "
            "files. Contacts, keys and room membership stay; other devices and the other "
            "side keep their copies. Asks you to type yes unless --yes is given."
        ),
        example=(
            f"  {program} forget bob --data-dir ~/.sottovoce-alice\n"
            f"  {program} forget '#team' --yes --data-dir ~/.sottovoce-alice"
        ),
        func=cmd_forget,
        args=[("NAME", "a username, or '#ROOM' for a room")],
        options=account_options,
    )
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation")
