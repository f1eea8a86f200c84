"""`contacts` and `requests`: the contact list, message requests and blocks (1:1).

`contacts` lists the contacts with their presence (client/presence.py: it shares this
device's for the moment it runs, and waits briefly for the answers of contacts online;
then below them the blocked accounts); `contacts add`,
`remove`, `block`, `unblock` change it. `requests` lists the people whose first message
waits for an answer; `requests accept|decline|block` answers. Every change reaches the
account's other devices (client/contact_list.py); blocking also asks the server to
store nothing more from that account for this account's devices, so it needs a
connection.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.options import subcommand, timed_account_options
from sottovoce.cli.program import command_name
from sottovoce.cli.session import Connect, with_client

if TYPE_CHECKING:
    from sottovoce.client import Client

_NAME = [("NAME", "the other person's username")]
_BLOCK_NOTE = (
    "The server is asked to store nothing more from them for your devices; they are not "
    "told, and their sends are acknowledged as before."
)


#: How long `contacts` waits for the answers of contacts with a device online.
PRESENCE_WAIT_S = 1.0


def cmd_contacts(args: argparse.Namespace) -> int:
    from sottovoce.client.ids import now_ms

    async def work(client: Client) -> tuple[list[tuple[str, str]], list[str]]:
        if client.connected and client.presence.enabled:
            client.presence.start()  # asks the contacts online (and tells them: online)
            await client.presence.settle(PRESENCE_WAIT_S)
        now = now_ms()
        shown = []
        for name in client.contacts.contacts():
            seen = client.contacts.presence(name)
            shown.append((name, render.presence(seen.state, seen.last_seen_ms, now)))
        return shown, client.contacts.blocked()

    contacts, blocked = with_client(args, work, connect=Connect.TRY)
    for name, presence in contacts:
        print(render.safe(name) + (f"  ({presence})" if presence else ""))
    for name in blocked:
        print(f"{render.safe(name)}  (blocked)")
    if not contacts and not blocked:
        print(f"no contacts yet ({command_name()} contacts add NAME adds one)")
    return 0


def cmd_requests(args: argparse.Namespace) -> int:
    async def work(client: Client) -> list[tuple[str, int]]:
        return [(n, len(client.history(n))) for n in client.contacts.requests()]

    for name, count in with_client(args, work, connect=Connect.TRY):
        print(f"{render.safe(name):<24} {count} message{'s' if count != 1 else ''}")
    return 0


def _change(
    act: Callable[[Client, str], Awaitable[object]], said: str, connect: Connect
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def work(client: Client) -> None:
            await act(client, args.name)

        with_client(args, work, connect=connect)
        print(said.format(name=render.safe(args.name)))
        return 0

    return run


def cmd_add(args: argparse.Namespace) -> int:
    async def work(client: Client) -> None:
        if args.code:
            await client.discovery.reach(args.name, args.code)
        await client.contacts.add(args.name)
        await _let_in(client, args.name)

    with_client(args, work, connect=Connect.REQUIRED if args.code else Connect.TRY)
    print(f"{render.safe(args.name)} is a contact")
    return 0


_ADD = cmd_add
_REMOVE = _change(lambda c, n: c.contacts.remove(n), "{name} is no longer a contact",
                  Connect.TRY)
_BLOCK = _change(lambda c, n: c.contacts.block(n), "{name} is blocked", Connect.REQUIRED)
_UNBLOCK = _change(lambda c, n: c.contacts.unblock(n), "{name} is no longer blocked",
                   Connect.REQUIRED)
async def _let_in(client: Client, name: str) -> None:
    """A new contact of a strict account gets a capability to find it (when online)."""
    if client.connected:
        await client.discovery.let_in(name)


async def _accept(client: Client, name: str) -> None:
    await client.contacts.accept(name)
    await _let_in(client, name)


_ACCEPT = _change(_accept, "{name} is a contact now", Connect.TRY)
_DECLINE = _change(lambda c, n: c.contacts.decline(n),
                   "declined: the messages of {name} are deleted", Connect.TRY)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    program = command_name()
    contacts = subcommand(
        sub, "contacts",
        help="your contacts: list, add, remove, block, unblock",
        description=(
            "Alone: list your contacts with their presence (online, away, or when last "
            "seen: only between contacts who both share it, see account settings "
            "--presence), then the accounts you blocked. A contact is someone "
            "you added, accepted or wrote to; a message from anyone else arrives as a "
            f"request ({program} requests). The list lives on your devices only, sealed, "
            "and every change reaches your other devices."
        ),
        example=f"  {program} contacts\n  {program} contacts add bob",
        func=cmd_contacts,
    )
    group = contacts.add_subparsers(dest="contacts_command", metavar="SUBCOMMAND")
    for name, func, text, extra in (
        ("add", _ADD, "make NAME a contact (a pending request from them is accepted)", ""),
        ("remove", _REMOVE, "remove NAME from your contacts (their next message is a request)",
         ""),
        ("block", _BLOCK, "block NAME: nothing more from them reaches your devices",
         " " + _BLOCK_NOTE),
        ("unblock", _UNBLOCK, "lift a block (their next message is a request)", ""),
    ):
        parser = subcommand(
            group, name, help=text, description=text[0].upper() + text[1:] + "." + extra,
            example=f"  {program} contacts {name} bob", func=func, args=_NAME,
        )
        if name == "add":
            parser.add_argument("--code", metavar="CODE",
                                help="NAME's friend verification code (NAME in strict "
                                     "discovery: they let you in when it is good)")
    requests = subcommand(
        sub, "requests",
        help="message requests: list, accept, decline, block",
        description=(
            "Alone: list the people whose first message waits for your answer (not a "
            "contact, never written to), with how many messages each sent. Until you "
            "accept, they are not in your conversation list and learn nothing from you "
            "(no receipts, no typing)."
        ),
        example=f"  {program} requests\n  {program} requests accept bob",
        func=cmd_requests,
    )
    group = requests.add_subparsers(dest="requests_command", metavar="SUBCOMMAND")
    for name, func, text in (
        ("accept", _ACCEPT, "accept the request of NAME: they become a contact"),
        ("decline", _DECLINE, "decline the request of NAME: its messages are deleted"),
        ("block", _BLOCK, "block NAME and delete their request. " + _BLOCK_NOTE),
    ):
        subcommand(
            group, name, help=text.split(". ")[0],
            description=text[0].upper() + text[1:] + ("" if text.endswith(".") else "."),
            example=f"  {program} requests {name} bob", func=func, args=_NAME,
            options=timed_account_options,
        )
