"""The invitation notice: who invited whom to which room, inside the room's encryption.

The server never learns a room's name: the room's profile holds it sealed
(client/rooms/names.py) and each device keeps its label for the room sealed in
its local store. So that an invitee knows who invited it to which room, the
inviter sends, right after the commit that adds the invitee (and the room's
name key), one room application message whose payload has content type
:data:`INVITE_CONTENT_TYPE` and this body (UTF-8 JSON)::

    {"v": 1, "name": "<the room's shared name>", "invited": "<username>"}

The outer ``sottovoce.room.send`` says ``contentType: "text"`` like any other
message and the payload is padded to the same size buckets, so the relay
cannot tell a notice from a message. The inviter is the MLS-authenticated
sender of the message, never a field of the body. Every member stores the
notice in the room's history; the invitee also takes the name (the one the
profile's name key opens, if it holds that key) as its local label when it has
not named the room itself. A room without a shared name is named by the
inviter's label for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sottovoce.client.payload import JsonBody, peer_check, read_json_body
from sottovoce.errors import DecodeError
from sottovoce.identity import validate_username
from sottovoce.limits import MAX_ROOM_NAME_BYTES

#: Payload content type of a notice (the payload is inside the MLS ciphertext).
INVITE_CONTENT_TYPE = "room-invite"


def valid_room_name(name: str) -> bool:
    """1-MAX_ROOM_NAME_BYTES of UTF-8, printable only (no controls, no bidi overrides)."""
    size = len(name.encode("utf-8", "surrogatepass"))
    return 0 < size <= MAX_ROOM_NAME_BYTES and name.isprintable() and name == name.strip()


@dataclass(frozen=True, slots=True, kw_only=True)
class InviteNotice(JsonBody):
    name: str
    invited: str

    @classmethod
    def decode(cls, data: bytes) -> InviteNotice:
        value = read_json_body(data, ("name", "invited"), "invitation notice")
        name, invited = value["name"], value["invited"]
        if not isinstance(name, str) or not valid_room_name(name):
            raise DecodeError("invitation notice: bad room name")
        if not isinstance(invited, str):
            raise DecodeError("invitation notice: bad username")
        with peer_check("invitation notice: bad username"):
            validate_username(invited)
        return cls(name=name, invited=invited)


def free_label(name: str, taken: Callable[[str], bool]) -> str:
    """``name``, or ``name-2``, ``name-3``... : the first label no other room here has."""
    if not taken(name):
        return name
    n = 2
    while taken(f"{name}-{n}"):
        n += 1
    return f"{name}-{n}"
