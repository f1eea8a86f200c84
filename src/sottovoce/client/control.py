"""Control messages: what a message says about another message (receipts, typing,
replies, edits, deletes, reactions), their inner bodies and the checks on them.

Each is an ordinary E2EE message whose inner :class:`~sottovoce.client.payload.Payload`
``content_type`` says what it is; the envelope says ``"text"`` as for any message,
so the relay cannot tell a receipt from a chat line. The bodies are compact JSON
(:func:`~sottovoce.client.payload.json_body`, docs/protocol.md §Control messages)::

    reply     {"v":1,"to":ID,"text":T}          a text quoting message ID
    edit      {"v":1,"to":ID,"text":T}          new text for ID (its sender only)
    delete    {"v":1,"to":ID}                   delete ID for everyone (its sender only)
    reaction  {"v":1,"to":ID,"emoji":E,"on":B}  add (on) or remove one emoji
    receipt   {"v":1,"kind":"delivered"|"read","ids":[ID,...]}
              or {...,"room":ROOMID}              a room's delivered receipt (live, 1:1)
    typing    {"v":1} or {"v":1,"room":ROOMID}  live only, never stored by the server

Every field from a peer is checked here (types, lengths, ids shaped like ids);
the *rules* (who may edit what) are applied by :mod:`sottovoce.client.conversation`
against the authenticated sender, never the envelope's claim alone.

This module is sans-I/O; the message paths (client/direct.py, client/rooms/messages.py)
see only :class:`ControlHook`, so they need not know the kinds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sottovoce.client.payload import JsonBody, json_body, peer_check, read_json_body, text_body
from sottovoce.errors import DecodeError

if TYPE_CHECKING:
    from sottovoce.client.events import ClientEvent
    from sottovoce.client.store import StoredMessage

REPLY = "reply"
RECEIPT = "receipt"
TYPING = "typing"
EDIT = "edit"
DELETE = "delete"
REACTION = "reaction"

#: Kinds stored beside the conversation (never in its history): the message row only
#: dedupes them. A reply is a text and is shown.
MARKER_TYPES = frozenset({RECEIPT, TYPING, EDIT, DELETE, REACTION})
CONTROL_TYPES = MARKER_TYPES | {REPLY}

DELIVERED = "delivered"
READ = "read"
#: At most this many message ids in one receipt (a bigger batch is split).
MAX_RECEIPT_IDS = 200
MAX_EMOJI_BYTES = 32

_ID = re.compile(r"[A-Za-z0-9_-]{8,128}")


def control_peer(conversation: str) -> str:
    """Where control messages of a 1:1 chat or a room are kept: beside it, out of its
    history ('#' is in no username and no room id)."""
    return f"{conversation}#control"


def check_id(value: object, what: str = "message id") -> str:
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise DecodeError(f"a control message names a malformed {what}")
    return value


def check_emoji(value: object) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value.encode("utf-8")) > MAX_EMOJI_BYTES
        or any(c.isspace() or ord(c) < 32 for c in value)
    ):
        raise DecodeError("a reaction is not one short emoji")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise DecodeError("a control message's text is not text")
    with peer_check("a control message's text is empty or too long"):
        text_body(value)
    return value


@dataclass(frozen=True, slots=True)
class Quote(JsonBody):
    """A reply or an edit: ``text`` for message ``to``."""

    to: str
    text: str

    @classmethod
    def decode(cls, body: bytes, what: str) -> Quote:
        data = read_json_body(body, ("to", "text"), what)
        return cls(to=check_id(data["to"]), text=_text(data["text"]))


@dataclass(frozen=True, slots=True)
class Delete(JsonBody):
    to: str

    @classmethod
    def decode(cls, body: bytes) -> Delete:
        return cls(to=check_id(read_json_body(body, ("to",), "a delete")["to"]))


@dataclass(frozen=True, slots=True)
class Reaction(JsonBody):
    to: str
    emoji: str
    on: bool

    @classmethod
    def decode(cls, body: bytes) -> Reaction:
        data = read_json_body(body, ("to", "emoji", "on"), "a reaction")
        if not isinstance(data["on"], bool):
            raise DecodeError("a reaction's 'on' is not a boolean")
        return cls(to=check_id(data["to"]), emoji=check_emoji(data["emoji"]), on=data["on"])


@dataclass(frozen=True, slots=True)
class Receipt:
    """``room``: a delivered receipt for room messages, sent live over 1:1 to their
    sender (a room has no ephemeral path); ``None`` for the chat it travels in."""

    kind: str
    ids: tuple[str, ...]
    room: str | None = None

    def encode(self) -> bytes:
        fields: dict[str, object] = {"kind": self.kind, "ids": list(self.ids)}
        if self.room is not None:
            fields["room"] = self.room
        return json_body(**fields).encode("utf-8")

    @classmethod
    def decode(cls, body: bytes) -> Receipt:
        try:
            data = read_json_body(body, ("kind", "ids"), "a receipt")
            room = None
        except DecodeError:
            data = read_json_body(body, ("kind", "ids", "room"), "a receipt")
            room = check_room_id(data["room"])
        ids = data["ids"]
        if data["kind"] not in (DELIVERED, READ):
            raise DecodeError("unknown receipt kind")
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_RECEIPT_IDS:
            raise DecodeError("a receipt names no message, or too many")
        return cls(kind=data["kind"], ids=tuple(check_id(i) for i in ids), room=room)


_ROOM_ID = re.compile(r"room:[0-9a-f]{32}")


def typing_body(room_id: str | None = None) -> bytes:
    """A typing notice: in the 1:1 chat it travels in, or in room ``room_id`` (a room
    has no ephemeral path, so its notice goes live over 1:1 to each member)."""
    return (json_body() if room_id is None else json_body(room=room_id)).encode("utf-8")


def read_typing(body: bytes) -> str | None:
    """The room a typing notice is for, or ``None`` for its 1:1 chat."""
    try:
        read_json_body(body, (), "a typing notice")
        return None
    except DecodeError:
        room = read_json_body(body, ("room",), "a typing notice")["room"]
    return check_room_id(room)


def check_room_id(value: object) -> str:
    if not isinstance(value, str) or _ROOM_ID.fullmatch(value) is None:
        raise DecodeError("a control message names a malformed room id")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Incoming:
    """A decrypted control payload as a message path hands it over.

    ``sender`` is authenticated (the Olm session's peer, or the MLS credential),
    ``conversation`` is the peer's username (1:1) or the room id.
    """

    conversation: str
    room: bool
    message_id: str
    sender: str
    sender_device: str
    own: bool
    content_type: str
    body: bytes
    ephemeral: bool = False
    created_ms: int = 0


class ControlHook(Protocol):
    """What the 1:1 and room message paths call for a payload of a kind in ``CONTROL_TYPES``."""

    def incoming(self, item: Incoming, events: list[ClientEvent]) -> str | None:
        """Apply ``item`` (inside the batch transaction); the text to store and show
        (a reply), or ``None``: a marker, stored beside the conversation only."""
        ...

    def body_of(self, stored: StoredMessage) -> bytes:
        """The payload body of a queued message of ours, to encrypt it again."""
        ...
