"""Contacts, message requests and blocking for 1:1 conversations (``client.contacts``).

Everything lives on the devices (sealed: client/store_contact_list.py); the server
learns only whom an account blocked (``sottovoce.block``, docs/threat-model.md
§Blocking). The rules, applied on every message this device receives or sends:

* **contact**: someone the user added, accepted, or wrote to (sending a message, from
  any of one's devices, makes the recipient a contact or accepts their request);
* **request**: the first message from anyone else (not a contact, never written to)
  is stored but flagged: it is left out of the conversation list
  (``Conversations.all``) until the user accepts (a contact), declines (its messages
  are deleted) or blocks;
* **blocked**: whatever arrives from that account is dropped before decryption and
  nothing is stored; the server is asked to store nothing from it for our devices, and
  sends to it are refused here.

Until someone is a contact they learn nothing from us: :meth:`ContactList.may_signal`
is the one predicate that delivered/read receipts and typing notices must call before
anything goes back to a peer (true only for contacts).

Changes the user makes are sent to one's other devices as an encrypted message to
one's own account (inner content type ``"contacts"``, body :func:`sync_body`), which
they apply (client/direct.py hands it here). A request is not synced: it arrives on
every device by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sottovoce.client.conversations import Conversations
from sottovoce.client.ids import now_ms
from sottovoce.client.payload import json_body, read_json_body
from sottovoce.client.ports import Link
from sottovoce.client.store import Store
from sottovoce.client.store_contact_list import (
    BLOCKED,
    CONTACT,
    REQUEST,
    ContactTable,
    Entry,
)
from sottovoce.errors import DecodeError, RemoteError, UsageError
from sottovoce.identity import validate_username
from sottovoce.protocol import events as ev

if TYPE_CHECKING:
    from sottovoce.client.presence import PeerPresence, Presence

#: The inner content type of a contact-list change sent to one's own devices.
CONTACTS_CONTENT_TYPE = "contacts"
#: What a sync body may set: a state, ``none`` (removed, unblocked), or ``declined``
#: (a request declined: its messages are deleted too).
NONE = "none"
DECLINED = "declined"
_SYNC_STATES = (CONTACT, BLOCKED, NONE, DECLINED)


def sync_body(username: str, state: str) -> bytes:
    """The body of a ``"contacts"`` message: ``{"v":1,"user":NAME,"state":STATE}``."""
    if state not in _SYNC_STATES:
        raise ValueError(state)
    return json_body(user=username, state=state).encode("utf-8")


def read_sync_body(body: bytes) -> tuple[str, str]:
    """(username, state) from a ``"contacts"`` body; ``DecodeError`` for anything else."""
    value = read_json_body(body, ("user", "state"), "contacts change")
    user, state = value["user"], value["state"]
    if not isinstance(user, str) or not isinstance(state, str) or state not in _SYNC_STATES:
        raise DecodeError("contacts change has a bad field")
    try:
        validate_username(user)
    except UsageError:
        raise DecodeError("contacts change names no valid username") from None
    return user, state


SendOwn = Callable[[str, bytes], Awaitable[object]]


class ContactList:
    """The contact list, requests and blocks of one device (built by the Client)."""

    def __init__(self, store: Store, link: Link, username: str) -> None:
        self._table, self._store = ContactTable(store), store
        self._link, self._me = link, username
        self.me = username
        self._send_own: SendOwn | None = None
        self._conversations: Conversations | None = None
        self._presence: Presence | None = None
        #: Other state our devices share the same way (content type -> apply), e.g. the
        #: friend verification codes (client/fvc.py).
        self.own_sync: dict[str, Callable[[bytes], None]] = {}
        #: Told when the user removes, blocks or declines someone (client/discovery.py
        #: withdraws what a strict account granted them).
        self.on_drop: Callable[[str], Awaitable[None]] | None = None

    def attach(self, send_own: SendOwn, conversations: Conversations) -> None:
        """What the Client builds after this: the self-send and the conversations."""
        self._send_own, self._conversations = send_own, conversations

    async def send_own(self, content_type: str, body: bytes) -> None:
        """Send ``body`` to our other devices (nothing to do before attach)."""
        if self._send_own is not None:
            await self._send_own(content_type, body)

    # --- reading ---------------------------------------------------------------------

    def state(self, username: str) -> str | None:
        entry = self._table.get(username)
        return None if entry is None else entry.state

    def _of(self, state: str) -> list[str]:
        return [e.username for e in self._table.all() if e.state == state]

    def contacts(self) -> list[str]:
        return self._of(CONTACT)

    def requests(self) -> list[str]:
        return self._of(REQUEST)

    def blocked(self) -> list[str]:
        return self._of(BLOCKED)

    def may_signal(self, peer: str) -> bool:
        """Whether anything may go back to ``peer`` unasked (receipts, typing): contacts
        only. A stranger, a pending request or a blocked account learns nothing."""
        return self.state(peer) == CONTACT

    def watch_presence(self, presence: Presence) -> None:
        """The presence tracker (client/presence.py) that :meth:`presence` reads."""
        self._presence = presence

    def presence(self, username: str) -> PeerPresence:
        """Whether contact ``username`` is online, away or offline, and when they were
        last seen (only between contacts who both share presence: client/presence.py)."""
        name = self._name(username)
        if self._presence is None:
            raise UsageError("presence is not available on this client")
        return self._presence.of(name)

    def hidden(self) -> set[str]:
        """Conversations left out of the list: requests, blocked accounts, and the
        account's own (the contact-list changes its devices send each other)."""
        return {e.username for e in self._table.all() if e.state != CONTACT} | {self._me}

    # --- the user's changes ----------------------------------------------------------

    def _name(self, username: str) -> str:
        validate_username(username)
        if username == self._me:
            raise UsageError("that is your own account")
        return username

    def _set(self, username: str, state: str) -> None:
        self._table.put(Entry(username=username, state=state, changed_ms=now_ms()))

    async def add(self, username: str) -> None:
        """Make ``username`` a contact (a pending request is accepted)."""
        name = self._name(username)
        if self.state(name) == BLOCKED:
            raise UsageError(f"{name} is blocked: unblock them first")
        self._set(name, CONTACT)
        await self._sync(name, CONTACT)

    async def remove(self, username: str) -> None:
        """Remove ``username`` from the contacts (their next message is a request)."""
        name = self._name(username)
        if self.state(name) != CONTACT:
            raise UsageError(f"{name} is not a contact")
        self._table.delete(name)
        await self._sync(name, NONE)
        await self._dropped(name)

    async def _dropped(self, name: str) -> None:
        if self.on_drop is not None:
            await self.on_drop(name)

    async def accept(self, username: str) -> None:
        name = self._request(username)
        self._set(name, CONTACT)
        await self._sync(name, CONTACT)

    async def decline(self, username: str) -> int:
        """Delete the request and its messages; returns how many messages went."""
        name = self._request(username)
        self._table.delete(name)
        count = self._forget(name)
        await self._sync(name, DECLINED)
        await self._dropped(name)
        return count

    def _request(self, username: str) -> str:
        name = self._name(username)
        if self.state(name) != REQUEST:
            raise UsageError(f"no message request from {name}")
        return name

    async def block(self, username: str) -> None:
        """Block ``username``: the server stores nothing more from them for our devices,
        and this device drops what still arrives. A pending request is deleted."""
        name = self._name(username)
        was = self.state(name)
        await self._server_block(name, True)
        self._set(name, BLOCKED)
        if was == REQUEST:
            self._forget(name)
        await self._sync(name, BLOCKED)
        await self._dropped(name)

    async def unblock(self, username: str) -> None:
        """Lift a block: ``username`` is a stranger again (their next message a request)."""
        name = self._name(username)
        if self.state(name) != BLOCKED:
            raise UsageError(f"{name} is not blocked")
        await self._server_block(name, False)
        self._table.delete(name)
        await self._sync(name, NONE)

    async def _server_block(self, name: str, blocked: bool) -> None:
        if not self._link.is_up:
            raise UsageError("blocking needs a connection to the server")
        await self._link.request(
            ev.BlockSet(userId=name, blocked=blocked), frozenset({ev.BLOCK_RESULT})
        )

    def _forget(self, name: str) -> int:
        if self._conversations is None:
            return 0
        try:
            return self._conversations.forget(name)
        except UsageError:
            return 0  # no message of theirs on this device

    async def _sync(self, name: str, state: str) -> None:
        """Tell our other devices (nothing to do when there are none)."""
        if self._send_own is None:
            return
        with contextlib.suppress(RemoteError):  # no other device of ours to encrypt to
            await self._send_own(CONTACTS_CONTENT_TYPE, sync_body(name, state))

    # --- the receive and send paths (client/direct.py) -------------------------------

    def admit(self, sender: str) -> bool:
        """Whether a message from ``sender`` is decrypted and kept at all."""
        return sender == self._me or self.state(sender) != BLOCKED

    def before_send(self, peer: str) -> None:
        """Writing to someone makes them a contact; a blocked account is refused."""
        if peer == self._me:
            return
        state = self.state(peer)
        if state == BLOCKED:
            raise UsageError(f"{peer} is blocked: unblock them first")
        if state != CONTACT:
            self._set(peer, CONTACT)

    def received(self, peer: str, own_copy: bool, content_type: str, body: bytes) -> None:
        """A stored 1:1 message was decrypted (inside the batch transaction)."""
        if own_copy:
            if peer == self._me:
                if content_type == CONTACTS_CONTENT_TYPE:
                    self._apply(body)
                elif content_type in self.own_sync:
                    with contextlib.suppress(DecodeError):  # a newer version's change
                        self.own_sync[content_type](body)
            elif self.state(peer) != CONTACT:
                self._set(peer, CONTACT)  # one of our devices wrote to them
        elif self.state(peer) is None:
            # Someone this device wrote to before contacts existed is one, not a stranger.
            self._set(peer, CONTACT if self._wrote_to(peer) else REQUEST)

    def _wrote_to(self, peer: str) -> bool:
        return self._store.connection.execute(
            "SELECT 1 FROM messages WHERE peer_tag = ? AND outgoing = 1 LIMIT 1",
            (self._store.tag("user", peer),),
        ).fetchone() is not None

    def _apply(self, body: bytes) -> None:
        """A change one of our devices made (authenticated: our own account's session)."""
        try:
            name, state = read_sync_body(body)
        except DecodeError:
            return  # a newer version's change: nothing this device can apply
        if name == self._me:
            return
        was = self.state(name)
        if state in (CONTACT, BLOCKED):
            self._set(name, state)
        else:
            self._table.delete(name)
        drop = state == DECLINED or (state == BLOCKED and was == REQUEST)
        if drop and self._conversations is not None:
            # Inside the receive batch's transaction: the deletes without forget's
            # overwrite-and-checkpoint (the next forget or checkpoint compacts them).
            self._conversations.delete_rows(name)
