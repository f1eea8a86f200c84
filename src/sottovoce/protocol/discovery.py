"""Discovery events (docs/protocol.md §Discovery): an account's discovery mode, the
prefix search over public accounts, and the static friend verification codes.

    client: sottovoce.discovery {mode?}          set (or, without mode, read) the mode
    server: sottovoce.discovery.result {mode}    default | public | strict
    client: sottovoce.find {prefix, pow?}        public accounts whose name starts so
    server: sottovoce.find.result {prefix, usernames: [...]}  (at most FIND_LIMIT, sorted)
    client: sottovoce.fvc.static {codes: [{slot, salt, hash}]}  replace (none: revoke)
    server: sottovoce.fvc.static.result {count}
    client: sottovoce.contact.request {username, proof? | staticCode?, pow?}
    server: sottovoce.contact.request.accepted {}   the same bytes for every name
    server: sottovoce.contact.request.incoming {from, proof}  to a strict owner's devices
    client: sottovoce.discovery.grant {userId, token}  (owner) let userId find us
    server: sottovoce.discovery.granted {}           to the owner
    server: sottovoce.contact.granted {userId, token}  to the requester's devices
    client: sottovoce.discovery.withdraw {tokens}    (owner) those capabilities end
    server: sottovoce.discovery.withdrawn {count}    how many the server still held

``sottovoce.find`` always needs a proof of work (each search pays: a pass would let
one proof enumerate), and is rate-limited per account besides.
"""

from __future__ import annotations

import re

from sottovoce.protocol.fields import B64, ID, Int, ListOf, Str
from sottovoce.protocol.pow import PROOF_BYTES
from sottovoce.protocol.spec import (
    ClientEvent,
    Nested,
    WireStruct,
    event,
    registry,
    struct,
    wire,
)

DISCOVERY_RESULT = "sottovoce.discovery.result"
FIND_RESULT = "sottovoce.find.result"
FVC_STATIC_RESULT = "sottovoce.fvc.static.result"
MODES = ("default", "public", "strict")
#: Shortest prefix a search takes: one or two characters would list a large share.
FIND_MIN_PREFIX = 3
#: Most names one search returns.
FIND_LIMIT = 20
#: Most static codes an account keeps at once.
MAX_STATIC_CODES = 20
SALT_BYTES = 16
HASH_BYTES = 32

_PREFIX = re.compile(r"[a-z0-9][a-z0-9_.-]*")


@event("sottovoce.discovery")
class DiscoverySet(ClientEvent):
    """Set the account's discovery mode; without ``mode``, only read it."""

    mode: str | None = wire(Str(max_len=16, choices=frozenset(MODES)), default=None,
                            omit_default=True)


@event("sottovoce.find")
class Find(ClientEvent):
    prefix: str = wire(Str(max_len=32, pattern=_PREFIX,
                           why="must be lower-case letters, digits, '_', '.', '-'"))
    pow: bytes | None = wire(B64(max_bytes=PROOF_BYTES, size=PROOF_BYTES), default=None,
                             omit_default=True)


@struct
class StaticCode(WireStruct):
    slot: int = wire(Int(minimum=0, maximum=MAX_STATIC_CODES - 1))
    salt: bytes = wire(B64(max_bytes=SALT_BYTES, size=SALT_BYTES))
    hash: bytes = wire(B64(max_bytes=HASH_BYTES, size=HASH_BYTES))


@event("sottovoce.fvc.static")
class StaticCodes(ClientEvent):
    """Replace the account's static friend verification codes (their hashes only)."""

    codes: tuple[StaticCode, ...] = wire(ListOf(
        Nested(StaticCode, why="items must be objects"), max_items=MAX_STATIC_CODES,
        unique=lambda c: c.slot, repeated="names a slot twice"))


CAP_BYTES = 32
#: A capability a strict account's device handed to one accepted contact (its SHA-256 is
#: what the server keeps); about another account it opens lookups and claims.
CAP = B64(max_bytes=CAP_BYTES, size=CAP_BYTES)
CONTACT_REQUEST_ACCEPTED = "sottovoce.contact.request.accepted"
CONTACT_REQUEST_INCOMING = "sottovoce.contact.request.incoming"
CONTACT_GRANTED = "sottovoce.contact.granted"
DISCOVERY_GRANTED = "sottovoce.discovery.granted"
DISCOVERY_WITHDRAWN = "sottovoce.discovery.withdrawn"
#: Most capabilities one withdrawal names: a contact's own one and one per static code
#: the account may have handed out (client/fvc.py keeps that many).
MAX_WITHDRAW_TOKENS = 64


@event("sottovoce.contact.request")
class ContactRequest(ClientEvent):
    """Ask a strict account to let us reach it: a TOTP code's proof (protocol/fvc.py) or
    a static code. Always answered ``accepted``, whatever the name."""

    username: str = wire(ID)
    proof: bytes | None = wire(B64(max_bytes=32, size=32), default=None, omit_default=True)
    staticCode: str | None = wire(Str(max_len=16), default=None, omit_default=True)
    pow: bytes | None = wire(B64(max_bytes=PROOF_BYTES, size=PROOF_BYTES), default=None,
                             omit_default=True)


@event("sottovoce.discovery.grant")
class DiscoveryGrant(ClientEvent):
    """A strict account's device lets ``userId`` find it with ``token``."""

    userId: str = wire(ID)
    token: bytes = wire(CAP)


@event("sottovoce.discovery.withdraw")
class DiscoveryWithdraw(ClientEvent):
    """A strict account's device ends the capabilities ``tokens`` (its own account's only:
    the server deletes rows of the authenticated account)."""

    tokens: tuple[bytes, ...] = wire(ListOf(CAP, max_items=MAX_WITHDRAW_TOKENS))


DISCOVERY_CLIENT_EVENTS = registry(DiscoverySet, Find, StaticCodes, ContactRequest,
                                   DiscoveryGrant, DiscoveryWithdraw)
