"""What the page is sent: conversations and messages as plain JSON values.

Every string here is data the page shows with ``textContent``; nothing is markup.
A file message is sent as its name, size and kind only (its key stays here); the
page fetches it by message id from ``/file/ID``, as a download.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sottovoce.client.call_payloads import MISSED_CALL_CONTENT_TYPE, missed_call_line
from sottovoce.client.conversations import file_of
from sottovoce.client.expiry import TIMER_CONTENT_TYPE, timer_notice
from sottovoce.client.file_body import FILE_CONTENT_TYPE, is_opened
from sottovoce.client.room_notice import INVITE_CONTENT_TYPE, InviteNotice
from sottovoce.client.store import DeliveryStatus, StoredMessage
from sottovoce.errors import DecodeError

if TYPE_CHECKING:
    from sottovoce.client import Client
    from sottovoce.client.conversation import MessageView
    from sottovoce.client.conversations import Conversation

#: Content types shown as the text the user wrote (the rest as a notice line).
_TEXT_TYPES = frozenset({"text", "reply"})


def conversation(c: Conversation) -> dict[str, Any]:
    return {"peer": c.peer, "label": c.label, "room": c.room, "unread": c.unread,
            "messages": c.messages, "lastMs": c.last_ms}


def message(client: Client, view: MessageView, *, room: bool) -> dict[str, Any]:
    """One message as the chat view shows it: text, or a file, or a notice line."""
    m = view.message
    out: dict[str, Any] = {
        "id": m.message_id, "sender": m.sender, "outgoing": m.outgoing,
        "atMs": m.client_created_ms or m.local_at_ms, "state": view.state,
        "edited": view.edited, "deleted": view.deleted, "quote": view.quote,
        "reactions": dict(sorted(view.reactions.items())),
        "expiresAtMs": client.timers.expires_at(m.message_id) or 0,
        "kind": "text", "text": view.text,
    }
    if view.deleted or m.content_type in _TEXT_TYPES:
        return out
    info = file_of(m) if m.content_type == FILE_CONTENT_TYPE else None
    if info is not None:
        out.update(kind="file", text="", file={"name": info.name, "size": info.size,
                                               "type": info.media_type})
        return out
    out.update(kind="notice", text=notice(m, client.username))
    return out


def notice(m: StoredMessage, me: str) -> str:
    """A line for what is not a text or a file: a timer, an invitation, a missed call."""
    who = "you" if m.sender == me else m.sender
    if m.status is DeliveryStatus.FAILED and not m.text:
        return f"{who}: a message that could not be decrypted"
    if m.content_type == TIMER_CONTENT_TYPE:
        return timer_notice(who, m.text)
    if m.content_type == INVITE_CONTENT_TYPE:
        try:
            invite = InviteNotice.decode(m.text.encode("utf-8"))
        except (DecodeError, UnicodeEncodeError):
            return "an invitation notice that could not be read"
        invited = "you" if invite.invited == me else invite.invited
        return f"{who} invited {invited} to '{invite.name}'"
    if m.content_type == MISSED_CALL_CONTENT_TYPE:
        return f"☎ {missed_call_line(m.text, outgoing=m.outgoing)}"
    if m.content_type == FILE_CONTENT_TYPE and is_opened(m.text):
        return f"{who}: a view-once file, opened (none of it kept)"
    return f"{who}: a message of a kind this app does not show ({m.content_type})"
