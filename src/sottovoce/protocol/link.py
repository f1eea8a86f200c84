"""Device-linking mailboxes: the events two devices of one account use to meet on the
server and run the linking PAKE (identity/pake.py) and the handover after it.

    existing device (authenticated)       server (one node's memory)      new device
    ───────────────────────────────       ──────────────────────────      ──────────
    sottovoce.link.open {mailbox} ──────► box, expires in link_ttl_ms
             ◄────── sottovoce.link.opened {mailbox, expiresAtMs}
    sottovoce.link.put {mailbox, body} ─► held until the new device joins
                                                  ◄──── sottovoce.link.join {mailbox}
                                          sottovoce.link.joined ────────► (+ held bodies as
                                                                            sottovoce.link.message)
    either side: sottovoce.link.put ────► sottovoce.link.message {mailbox, body} to the other
    either side: sottovoce.link.close {mailbox, reason} ──► sottovoce.link.closed to both;
                 the box is deleted (also on expiry, a lost connection, or too many messages)

``mailbox`` is the short code's public four-digit nameplate, or the 32 hex digits the
QR code's secret hashes to. Bodies are opaque to the server (the PAKE's messages, then
ciphertexts under the PAKE's session key). ``sottovoce.link.join``, ``.put`` and
``.close`` are the only events a connection may send before it authenticates besides
logging in, and then only for the one mailbox it joined.
"""

from __future__ import annotations

import re

from sottovoce.limits import LINK_MESSAGE_MAX_BYTES
from sottovoce.protocol.fields import B64, Str
from sottovoce.protocol.spec import ClientEvent, event, registry, wire

#: A nameplate (4 digits) or a QR mailbox id (32 lowercase hex digits).
MAILBOX = Str(max_len=32, pattern=re.compile(r"[0-9]{4}|[0-9a-f]{32}"),
              why="must be a 4-digit nameplate or 32 hex digits")
BODY = B64(max_bytes=LINK_MESSAGE_MAX_BYTES, nonempty=True)
#: Why a side closes a mailbox; the server adds "expired", "peer_gone" and "too_many".
CLOSE_REASONS = frozenset({"done", "failed", "cancelled"})


@event("sottovoce.link.open")
class LinkOpen(ClientEvent):
    """(authenticated) Open a mailbox for linking a new device to this account."""

    mailbox: str = wire(MAILBOX)


@event("sottovoce.link.join")
class LinkJoin(ClientEvent):
    """(before auth) The new device joins the mailbox its code names; one joiner only."""

    mailbox: str = wire(MAILBOX)


@event("sottovoce.link.put")
class LinkPut(ClientEvent):
    """Relay ``body`` to the other side of the mailbox."""

    mailbox: str = wire(MAILBOX)
    body: bytes = wire(BODY)


@event("sottovoce.link.close")
class LinkClose(ClientEvent):
    """End the attempt: the mailbox is deleted and the other side told."""

    mailbox: str = wire(MAILBOX)
    reason: str = wire(Str(choices=CLOSE_REASONS))


LINK_CLIENT_EVENTS = registry(LinkOpen, LinkJoin, LinkPut, LinkClose)
#: May be sent before auth (each only for the mailbox the connection joined).
LINK_PRE_AUTH = frozenset({LinkJoin.name, LinkPut.name, LinkClose.name})

# Server → client
LINK_OPENED = "sottovoce.link.opened"  # {mailbox, expiresAtMs}
LINK_JOINED = "sottovoce.link.joined"  # {mailbox, expiresAtMs}; the opener gets it too
LINK_SENT = "sottovoce.link.sent"  # {mailbox}: the reply to a put
LINK_MESSAGE = "sottovoce.link.message"  # {mailbox, body}
LINK_CLOSED = "sottovoce.link.closed"  # {mailbox, reason}
