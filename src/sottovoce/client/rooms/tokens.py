"""Join tokens: what members know of them (protocol/rooms.py, "Joining by token").

    token T ──► shared inside the group (a "system" room message; members keep it
                sealed, by its hash and as the room's current token)
            ──► room.token.set {wire_token(T)}: the server never sees T itself
    an external commit names psk_id = token_hash(wire_token(T)) ──► psk_lookup
            resolves it to token_psk(T) (RFC 9420 §8.4); an unknown one to nothing
"""

from __future__ import annotations

import base64
import secrets

from sottovoce.client.store import Store
from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError
from sottovoce.mls.common import PreSharedKeyID, PSKType, WireFormat
from sottovoce.mls.group import GroupConfig, PskLookup
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.fields import ProtocolError
from sottovoce.secret import Secret

# Room control messages: a room message whose payload content type is "system" and
# whose body is ``uint8 kind`` then the kind's fields. Members act on them; the
# history shows a line saying what happened, never the fields (a token is a secret).
CONTROL_TOKEN = 1  # opaque token<V>: the room's join token, set or rotated
#: What the history shows of a shared token.
TOKEN_SHARED_TEXT = "(set a new join token for the room)"  # noqa: S105 -- a history line


def new_token() -> str:
    """32 random bytes, base64url without padding (43 characters of the id alphabet).

    Drawn again when it would start with '-': a command line reads such a token as
    an option (``room join -Hd4…``). That costs 0.02 of its 256 bits.
    """
    while True:
        token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
        if not token.startswith("-"):
            return token


def token_control(token: Secret) -> bytes:
    w = Writer()
    w.u8(CONTROL_TOKEN)
    w.opaque_v(token.expose())
    return w.getvalue()


def read_token_control(body: bytes) -> Secret:
    """The token a control message shares; ``DecodeError`` for anything else."""

    def read(r: Reader) -> Secret:
        if r.u8() != CONTROL_TOKEN:
            raise DecodeError("unknown room control message")
        return pr.req_token({"token": r.opaque_v().decode("ascii", "replace")})

    try:
        return decode(read, body)
    except ProtocolError:
        raise DecodeError("the shared token is malformed") from None


def _token_record(room_id: str, token_hash: bytes) -> str:
    return f"room-token:{room_id}:{token_hash.hex()}"


def _current_token_record(room_id: str) -> str:
    return f"room-token-current:{room_id}"


class TokenBook:
    """The tokens of every room, sealed in the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def remember(self, room_id: str, token: Secret) -> None:
        """Keep a room's token T, sealed: by its hash (to resolve an external commit's PSK
        id) and as the room's current token (to share with members we add). Call inside
        a store transaction."""
        h = pr.token_hash(pr.wire_token(token))
        self._store.put_secret(_token_record(room_id, h), token.expose())
        self._store.put_secret(_current_token_record(room_id), token.expose())

    def current(self, room_id: str) -> Secret | None:
        raw = self._store.get_secret(_current_token_record(room_id))
        return None if not raw else Secret(raw)

    def forget_current(self, room_id: str) -> None:
        """The token was revoked: nothing left to tell members we add (in a transaction)."""
        self._store.put_secret(_current_token_record(room_id), b"")

    def psk_lookup(self, room_id: str) -> PskLookup:
        """The room's external PSKs: the token whose hash an external commit names
        resolves to ``token_psk(T)``; an unknown one to nothing (MissingPsk)."""

        def lookup(psk: PreSharedKeyID) -> Secret | None:
            if psk.psktype != PSKType.EXTERNAL:
                return None
            raw = self._store.get_secret(_token_record(room_id, psk.psk_id))
            return None if raw is None else pr.token_psk(Secret(raw))

        return lookup

    def group_config(self, room_id: str) -> GroupConfig:
        # Public handshakes: the server checks each commit against the room's rules.
        return GroupConfig(
            handshake_wire_format=WireFormat.PUBLIC_MESSAGE, psk_lookup=self.psk_lookup(room_id)
        )
