"""Receipts, typing, replies, edits, deletes and reactions, for 1:1 chats and rooms
(``client.controls``; docs/architecture.md §Control messages).

    send:    controls.edit("bob", id, text) ──► check it is ours ──► apply here
             ──► a control message (client/control.py) through the 1:1 or room path
    receive: the message path decrypts ──► incoming() inside the batch transaction
             ──► the rule: an edit or delete only from the target's authenticated
                 sender, a reaction or receipt counted for its authenticated sender
             ──► ctl_* tables (client/store_control.py); a ``MessageUpdated`` event
    after a batch: a live delivered receipt per 1:1 chat, and per room and sender, for
             the messages it stored (a room's goes over 1:1 to the sender, naming it)
    history shown: ``mark_read`` sends one read receipt for what was not read yet

A control message whose target is not (yet) here, or that breaks a rule, is
dropped with a log line naming its id and the reason, never its content. The
server orders each inbox and each room, and a target is sent before anything
naming it, so only a forged or damaged one meets that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sottovoce.client.control import (
    DELETE,
    DELIVERED,
    EDIT,
    MAX_EMOJI_BYTES,
    MAX_RECEIPT_IDS,
    REACTION,
    READ,
    RECEIPT,
    REPLY,
    TYPING,
    Delete,
    Incoming,
    Quote,
    Reaction,
    Receipt,
    check_emoji,
    read_typing,
    typing_body,
)
from sottovoce.client.direct import DirectMessages
from sottovoce.client.errors import NotConnected, ServerError
from sottovoce.client.events import (
    ClientEvent,
    MessageUpdated,
    RoomMessageReceived,
    TypingStarted,
)
from sottovoce.client.file_body import FILE_CONTENT_TYPE
from sottovoce.client.ids import now_ms
from sottovoce.client.rooms import ROOM_PREFIX, RoomManager
from sottovoce.client.rooms.messages import control_record
from sottovoce.client.store import DeliveryStatus, Store, StoredMessage
from sottovoce.client.store_control import (
    DELETED_FOR_EVERYONE,
    DELETED_FOR_ME,
    KIND_DELIVERED,
    KIND_READ,
    ControlStore,
    MessageState,
)
from sottovoce.errors import DecodeError, SottovoceError, UsageError

log = logging.getLogger(__name__)

_SETTINGS = "control-settings"
#: At most one typing notice per conversation in this many seconds.
TYPING_INTERVAL_S = 3.0
#: A typing notice shows for this long unless another one follows.
TYPING_SHOWN_S = 6.0
#: A room with more users than this gets no typing notices (one live send per user).
TYPING_MAX_MEMBERS = 32
#: How far back ``mark_read`` and id prefixes look.
RECENT = 500
#: What control messages may name: messages a history shows (only texts are edited).
_SHOWN_TYPES = ("text", REPLY, FILE_CONTENT_TYPE)
_TEXT_TYPES = ("text", REPLY)
DELETED_TEXT = "(deleted)"


@dataclass(frozen=True, slots=True)
class Settings:
    """Per account on this device. Read receipts off: none sent, none shown."""

    read_receipts: bool = True
    typing: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageView:
    """A stored message with what control messages did to it, ready to show."""

    message: StoredMessage
    text: str
    edited: bool = False
    deleted: bool = False
    reply_to: str | None = None
    quote: str | None = None
    reactions: dict[str, int] = field(default_factory=dict)
    #: For our messages: "…", "✓", "✓✓", "read", or in a room "delivered to N",
    #: "read by N"; "✗"; else "".
    state: str = ""


class Controls:
    """The control messages of one device, owned by :class:`~sottovoce.client.Client`."""

    def __init__(
        self, store: Store, direct: DirectMessages, rooms: RoomManager, username: str,
        spawn: Callable[[Any], None], may_signal: Callable[[str], bool] = lambda _: True,
    ) -> None:
        self._store, self._direct, self._rooms = store, direct, rooms
        #: Whether a receipt or typing notice may go to a user (contacts only: a
        #: stranger whose request is not accepted learns nothing from us).
        self._may_signal = may_signal
        self._db = ControlStore(store)
        self.username = username
        self._spawn = spawn
        self._typing_sent: dict[str, float] = {}
        #: (conversation, user) -> when their typing notice stops showing (ms).
        self._typing_until: dict[tuple[str, str], int] = {}
        self._in_flight = 0
        self._settings: Settings | None = None
        self._settled = asyncio.Event()
        self._settled.set()
        direct.controls = self
        rooms.set_controls(self)

    # =========================================================================
    # Settings
    # =========================================================================

    @property
    def settings(self) -> Settings:
        """Read once (one process per store: nothing else changes them)."""
        if self._settings is None:
            raw = self._store.get_secret(_SETTINGS)
            data = {} if raw is None else json.loads(raw)
            self._settings = Settings(read_receipts=bool(data.get("read_receipts", True)),
                                      typing=bool(data.get("typing", True)))
        return self._settings

    def set_settings(
        self, *, read_receipts: bool | None = None, typing: bool | None = None
    ) -> Settings:
        now = self.settings
        new = Settings(
            read_receipts=now.read_receipts if read_receipts is None else read_receipts,
            typing=now.typing if typing is None else typing,
        )
        with self._store.transaction():
            self._store.put_secret(
                _SETTINGS,
                json.dumps({"read_receipts": new.read_receipts, "typing": new.typing}).encode(),
            )
        self._settings = new
        return new

    # =========================================================================
    # Sending
    # =========================================================================

    def _conversation(self, chat: str, room: bool) -> str:
        return self._rooms.get(chat).room_id if room else chat

    async def _send(self, chat: str, room: bool, kind: str, body: bytes, text: str) -> str:
        if room:
            return await self._rooms.send_control(chat, kind, body, text)
        return await self._direct.send_control(chat, kind, body, text)

    def _own_target(self, chat: str, message_id: str, room: bool, what: str) -> StoredMessage:
        target = self.target(chat, message_id, room=room)
        if target.sender != self.username:
            raise UsageError(f"you can only {what} your own messages")
        return target

    def target(self, chat: str, message_id: str, *, room: bool = False) -> StoredMessage:
        """A message of this conversation by id or unambiguous id prefix (or a plain error)."""
        conversation = self._conversation(chat, room)
        found = self._store.get_message(message_id)
        if found is None or found.peer != conversation:
            matches = [
                m for m in self._store.history(conversation, limit=RECENT)
                if m.message_id.startswith(message_id)
            ]
            if len(matches) != 1:
                where = "in this room" if room else f"with {chat}"
                raise UsageError(
                    f"no message {message_id!r} {where}" if not matches
                    else f"{message_id!r} names {len(matches)} messages: give more of the id"
                )
            found = matches[0]
        if found.content_type not in _SHOWN_TYPES or self._db.state(found.message_id).deleted:
            raise UsageError(f"message {found.message_id} cannot be changed (deleted)")
        return found

    async def reply(self, chat: str, message_id: str, text: str, *, room: bool = False) -> str:
        """Send ``text`` quoting ``message_id`` (an id prefix works); returns the new id."""
        to = self.target(chat, message_id, room=room).message_id
        body = Quote(to=to, text=text).encode()
        Quote.decode(body, "a reply")  # the same checks a receiver applies
        new = await self._send(chat, room, REPLY, body, text)
        with self._store.transaction():
            state = self._db.state(new)
            state.reply_to = to
            self._db.put_state(new, state)
        return new

    async def edit(self, chat: str, message_id: str, text: str, *, room: bool = False) -> str:
        """Replace the text of our message ``message_id`` everywhere; returns the edit's id."""
        target = self._own_target(chat, message_id, room, "edit")
        if target.content_type not in _TEXT_TYPES:
            raise UsageError("only a text message can be edited")
        body = Quote(to=target.message_id, text=text).encode()
        Quote.decode(body, "an edit")
        # Kept here as the body (1:1, to resend it) or beside the room (sealed either way).
        edit_id = await self._send(chat, room, EDIT, body, "" if room else body.decode())
        with self._store.transaction():
            self._apply_edit(target.message_id, edit_id, text, now_ms())
        return edit_id

    async def delete(
        self, chat: str, message_id: str, *, for_everyone: bool = False, room: bool = False
    ) -> str | None:
        """Delete a message here (``for_everyone``: our own, on every device of every
        member, a tombstone stays); returns the delete message's id, if one was sent."""
        if for_everyone:
            target = self._own_target(chat, message_id, room, "delete for everyone")
            body = Delete(to=target.message_id).encode()
            sent = await self._send(chat, room, DELETE, body, "" if room else body.decode())
            with self._store.transaction():
                self._wipe(target.message_id, DELETED_FOR_EVERYONE)
            return sent
        target = self.target(chat, message_id, room=room)
        with self._store.transaction():
            self._wipe(target.message_id, DELETED_FOR_ME)
        return None

    async def react(
        self, chat: str, message_id: str, emoji: str, *, remove: bool = False, room: bool = False
    ) -> str:
        """Add (or ``remove``) one emoji on a message; returns the reaction's id."""
        target = self.target(chat, message_id, room=room)
        try:
            check_emoji(emoji)
        except DecodeError:
            raise UsageError(
                f"a reaction is one emoji (at most {MAX_EMOJI_BYTES} bytes)"
            ) from None
        body = Reaction(to=target.message_id, emoji=emoji, on=not remove).encode()
        sent = await self._send(chat, room, REACTION, body, "" if room else body.decode())
        with self._store.transaction():
            self._apply_reaction(target.message_id, self.username, emoji, not remove)
        return sent

    async def mark_read(self, chat: str, *, room: bool = False) -> int:
        """The conversation was shown: one read receipt for the messages not read yet
        (none with read receipts off, none to a 1:1 peer who is not a contact: sent
        once they are); returns how many it names. A room's goes to the room."""
        if not self.settings.read_receipts or (not room and not self._may_signal(chat)):
            return 0
        conversation = self._conversation(chat, room)
        unread = [
            m.message_id for m in self._store.history(conversation, limit=RECENT)
            if m.sender != self.username and m.status is not DeliveryStatus.FAILED
            and m.content_type in _SHOWN_TYPES
        ]
        done = self._db.read_sent(unread)
        unread = [m for m in unread if m not in done]
        for i in range(0, len(unread), MAX_RECEIPT_IDS):
            chunk = unread[i : i + MAX_RECEIPT_IDS]
            body = Receipt(kind=READ, ids=tuple(chunk)).encode()
            await self._send(chat, room, RECEIPT, body, "" if room else body.decode())
            with self._store.transaction():
                self._db.mark_read_sent(chunk)
        return len(unread)

    async def typing(self, chat: str, *, room: bool = False) -> str | None:
        """Tell ``chat`` that we are typing: live, never stored by the server, at most
        one per ``TYPING_INTERVAL_S``. Returns the notice's id (in a room, of one of
        the per-member notices), or ``None`` if none was sent (off, too soon, offline,
        nobody online, not a contact: only contacts get one, in a room too; a room of
        more than ``TYPING_MAX_MEMBERS`` users)."""
        conversation = self._conversation(chat, room)
        last = self._typing_sent.get(conversation)
        if not self.settings.typing or (
            last is not None and time.monotonic() - last < TYPING_INTERVAL_S
        ):
            return None
        if not room:
            if not self._may_signal(chat):
                return None
            self._typing_sent[conversation] = time.monotonic()
            return await self._typing_to(chat, typing_body())
        self._typing_sent[conversation] = time.monotonic()
        members = {u for u, _ in self._rooms.get(chat).members()} - {self.username}
        users = sorted(u for u in members if self._may_signal(u))
        if len(members) > TYPING_MAX_MEMBERS:
            return None
        body = typing_body(conversation)
        sent = await asyncio.gather(*(self._typing_to(u, body) for u in users))
        return next((s for s in sent if s is not None), None)

    async def _typing_to(self, user: str, body: bytes) -> str | None:
        try:
            return await self._direct.send_live(user, body, TYPING)
        except (NotConnected, ServerError):
            return None

    def typing_now(self, chat: str, *, room: bool = False) -> list[str]:
        """Who is typing in ``chat`` right now."""
        conversation, now = self._conversation(chat, room), now_ms()
        return sorted(u for (conv, u), until in self._typing_until.items()
                      if conv == conversation and until > now)

    # =========================================================================
    # Reading
    # =========================================================================

    def view(self, message: StoredMessage) -> MessageView:
        state = self._db.state(message.message_id)
        deleted = state.deleted != 0  # for everyone, or here (a screen still showing it)
        quote = None
        if state.reply_to is not None:
            quoted = self._store.get_message(state.reply_to)
            if quoted is None or quoted.peer != message.peer:  # only from its own chat
                quote = "(a message not on this device)"
            elif self._db.state(quoted.message_id).deleted:
                quote = DELETED_TEXT
            else:
                quote = self._db.state(quoted.message_id).text or quoted.text
        return MessageView(
            message=message,
            text=DELETED_TEXT if deleted else (state.text or message.text),
            edited=state.edited and not deleted,
            deleted=deleted,
            reply_to=state.reply_to,
            quote=quote,
            reactions={} if deleted else self._db.reaction_counts(message.message_id),
            state=self._state_of(message, room=not self._is_user_chat(message.peer)),
        )

    def _is_user_chat(self, peer: str) -> bool:
        return not peer.startswith(ROOM_PREFIX)

    def _state_of(self, message: StoredMessage, *, room: bool) -> str:
        if message.sender != self.username:
            return ""
        if message.status in (DeliveryStatus.SENDING, DeliveryStatus.FAILED):
            return message.status.tick
        if self.settings.read_receipts:
            readers = self._db.receipt_count(message.message_id, KIND_READ)
            if readers:
                return f"read by {readers}" if room else "read"
        if room:
            got = self._db.receipt_count(message.message_id, KIND_DELIVERED)
            return f"delivered to {got}" if got else message.status.tick
        if message.status in (DeliveryStatus.DELIVERED, DeliveryStatus.READ) or (
            self._db.receipt_count(message.message_id, KIND_DELIVERED)
        ):
            return DeliveryStatus.DELIVERED.tick  # read receipts off: no "read" shown
        return message.status.tick

    def history(self, chat: str, *, room: bool = False, limit: int = 50,
                before: str | None = None) -> list[MessageView]:
        """The conversation as shown: messages deleted for me left out, the rest viewed
        (``before``: only those older than that message of this conversation)."""
        conversation = self._conversation(chat, room)
        local = None
        if before is not None:
            older = self._store.get_message(before)
            if older is None or older.peer != conversation:
                raise UsageError("no such message in this conversation")
            local = older.local_id
        return [
            self.view(m) for m in self._store.history(conversation, limit=limit, before=local)
            if self._db.state(m.message_id).deleted != DELETED_FOR_ME
        ]

    # =========================================================================
    # Receiving (inside the client's batch transaction; no awaits)
    # =========================================================================

    def incoming(self, item: Incoming, events: list[ClientEvent]) -> str | None:
        """See :class:`~sottovoce.client.control.ControlHook`."""
        try:
            if item.content_type == REPLY:
                quote = Quote.decode(item.body, "a reply")
                state = self._db.state(item.message_id)
                state.reply_to = quote.to
                self._db.put_state(item.message_id, state)
                return quote.text
            if item.content_type == TYPING:
                self._typing(item, events)
            elif item.content_type == EDIT:
                quote = Quote.decode(item.body, "an edit")
                if self._authored(item, quote.to).content_type not in _TEXT_TYPES:
                    raise _Refused("its target is not a text")
                self._apply_edit(quote.to, item.message_id, quote.text, item.created_ms)
                events.append(MessageUpdated(conversation=item.conversation, message_id=quote.to,
                                             kind=EDIT, sender=item.sender))
            elif item.content_type == DELETE:
                to = Delete.decode(item.body).to
                self._authored(item, to)
                self._wipe(to, DELETED_FOR_EVERYONE)
                events.append(MessageUpdated(conversation=item.conversation, message_id=to,
                                             kind=DELETE, sender=item.sender))
            elif item.content_type == REACTION:
                reaction = Reaction.decode(item.body)
                self._in_conversation(item, reaction.to)
                self._apply_reaction(reaction.to, item.sender, reaction.emoji, reaction.on)
                events.append(MessageUpdated(
                    conversation=item.conversation, message_id=reaction.to, kind=REACTION,
                    sender=item.sender, emoji=reaction.emoji, on=reaction.on,
                ))
            elif item.content_type == RECEIPT:
                self._receipt(item, Receipt.decode(item.body), events)
        except (DecodeError, _Refused) as exc:
            log.info("control message %s dropped: %s", item.message_id, exc)
        return None

    def _in_conversation(self, item: Incoming, to: str) -> StoredMessage:
        target = self._store.get_message(to)
        if target is None or target.peer != item.conversation:
            raise _Refused("its target is not a message of this conversation here")
        if target.content_type not in _SHOWN_TYPES or target.status is DeliveryStatus.FAILED:
            raise _Refused("its target is not a message")
        if self._db.state(to).deleted == DELETED_FOR_EVERYONE:
            raise _Refused("its target was deleted")
        return target

    def _authored(self, item: Incoming, to: str) -> StoredMessage:
        """An edit or a delete: only from the target's authenticated sender."""
        target = self._in_conversation(item, to)
        if target.sender != item.sender:
            raise _Refused("its sender did not send the target")
        return target

    def _typing(self, item: Incoming, events: list[ClientEvent]) -> None:
        room_id = read_typing(item.body)
        if not item.ephemeral or item.room:
            raise _Refused("a stored typing notice")
        if item.own or not self.settings.typing:
            return
        conversation = item.conversation
        if room_id is not None:  # only from a member of a room we are in
            if item.sender not in self._members(room_id):
                raise _Refused("a typing notice for a room its sender is not in here")
            conversation = room_id
        until = now_ms() + int(TYPING_SHOWN_S * 1000)
        self._typing_until[(conversation, item.sender)] = until
        events.append(
            TypingStarted(conversation=conversation, sender=item.sender, until_ms=until)
        )

    def _receipt(self, item: Incoming, receipt: Receipt, events: list[ClientEvent]) -> None:
        conversation = item.conversation
        if receipt.room is not None:  # a room's delivered receipt: live over 1:1
            if not item.ephemeral or item.room or receipt.kind != DELIVERED:
                raise _Refused("a room receipt that is not a live delivered receipt")
            if item.sender not in self._members(receipt.room):
                raise _Refused("a receipt for a room its sender is not in here")
            conversation = receipt.room
        for to in receipt.ids:
            target = self._store.get_message(to)
            if (
                target is None or target.peer != conversation
                or target.sender != self.username or item.sender == self.username
            ):
                continue  # not ours, or our own other device: nothing to count
            kind = KIND_READ if receipt.kind == READ else KIND_DELIVERED
            self._db.add_receipt(to, item.sender, kind)
            self._db.add_receipt(to, item.sender, KIND_DELIVERED)
            self._raise_status(target, receipt.kind)
            events.append(MessageUpdated(conversation=conversation, message_id=to,
                                         kind=RECEIPT, sender=item.sender))

    def _raise_status(self, target: StoredMessage, kind: str) -> None:
        """The stored status follows the receipts (SENT → DELIVERED → READ, never back),
        so ``Client.history`` says what ``controls.view`` shows; a message not acked
        yet keeps SENDING (the ack moves it only from there)."""
        want = DeliveryStatus.READ if kind == READ else DeliveryStatus.DELIVERED
        if target.status in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED) and (
            target.status < want
        ):
            self._store.set_status(target.message_id, want)

    def _members(self, room_id: str) -> set[str]:
        """The users of room ``room_id`` here (none if we are not in it)."""
        room = next((r for r in self._rooms.all() if r.room_id == room_id), None)
        return set() if room is None else {u for u, _ in room.members()}

    def _apply_edit(self, to: str, edit_id: str, text: str, at_ms: int) -> None:
        state = self._db.state(to)
        state.edited = True
        state.edits.append((at_ms, text))
        self._db.put_state(to, state)
        self._db.add_edit_id(edit_id, to)

    def _apply_reaction(self, to: str, sender: str, emoji: str, on: bool) -> None:
        mine = self._db.reactions_of(to, sender)
        if on:
            mine.add(emoji)
        else:
            mine.discard(emoji)
        self._db.set_reactions(to, sender, mine)

    def _wipe(self, to: str, how: int) -> None:
        """Remove the content of ``to`` and of its edits; a tombstone stays."""
        state = self._db.state(to)
        self._store.rewrite_text(to, "")
        for edit_id in self._db.edit_ids(to):
            self._store.rewrite_text(edit_id, "")
            if self._store.get_secret(control_record(edit_id)) is not None:
                self._store.put_secret(control_record(edit_id), b"")
        self._db.clear_reactions(to)
        self._db.put_state(to, MessageState(deleted=how, reply_to=state.reply_to))

    # =========================================================================
    # Delivered receipts (after each batch)
    # =========================================================================

    def after_batch(self, events: list[ClientEvent], received: list[str]) -> None:
        """Send one delivered receipt per 1:1 chat, and per (room, sender), for the
        messages just stored.

        It travels live (never stored by the server, no place in the chat's order):
        a sender with no device online misses it, and the read receipt, which is
        stored, says more later. A room has no ephemeral path: its receipt goes over
        1:1 to the message's sender only, naming the room ("delivered to N"). Only to
        contacts: a stranger (a message request) learns nothing."""
        fresh: dict[tuple[str, str | None], list[str]] = {}
        for message_id in received:
            stored = self._store.get_message(message_id)
            if stored is not None and stored.sender != self.username and (
                self._may_signal(stored.peer)
            ):
                fresh.setdefault((stored.peer, None), []).append(message_id)
        for event in events:
            if isinstance(event, RoomMessageReceived) and (
                event.message.sender != self.username
                and event.message.content_type in _SHOWN_TYPES
                and self._may_signal(event.message.sender)
            ):
                key = (event.message.sender, event.room_id)
                fresh.setdefault(key, []).append(event.message.message_id)
        for (user, room_id), ids in fresh.items():
            self._in_flight += 1
            self._settled.clear()
            self._spawn(self._deliver(user, ids, room_id))

    async def _deliver(self, user: str, ids: list[str], room_id: str | None) -> None:
        try:
            for i in range(0, len(ids), MAX_RECEIPT_IDS):
                chunk = tuple(ids[i : i + MAX_RECEIPT_IDS])
                body = Receipt(kind=DELIVERED, ids=chunk, room=room_id).encode()
                await self._direct.send_live(user, body, RECEIPT)
        except SottovoceError as exc:  # best effort: the message itself is stored
            log.info("delivered receipt not sent: %s", type(exc).__name__)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._settled.set()

    async def settle(self, timeout: float) -> bool:
        """Wait until the delivered receipts under way are sent (before closing)."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def body_of(self, stored: StoredMessage) -> bytes:
        """See :class:`~sottovoce.client.control.ControlHook`."""
        if stored.content_type == REPLY:
            to = self._db.state(stored.message_id).reply_to
            if to is not None:
                return Quote(to=to, text=stored.text).encode()
        return stored.text.encode("utf-8")


class _Refused(Exception):
    """A control message that breaks a rule (the reason is logged, never its content)."""

