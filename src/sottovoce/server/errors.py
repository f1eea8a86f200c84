"""Server-side errors, each carrying its ``ksmpv3.error`` wire code (docs/protocol.md §Errors).

Handlers raise :class:`WireFailure`; the connection loop converts it once, at
the boundary, into a ``ksmpv3.error`` frame. Messages name fields and rules,
never values (a value may be ciphertext).

Wire error codes the server emits (``retryable`` in brackets):

=====================  ==========================================================
``bad_json``           the frame is not JSON [no]
``bad_request``        a field is missing, of the wrong type or out of range [no]
``unknown_event``      no such event [no]
``frame_too_large``    (the WebSocket is closed with 1009 before this can happen)
``payload_too_large``  a field or list exceeds its limit [no]
``unauthorized``       the event needs an authenticated connection [no]
``already_authenticated`` register/auth on an authenticated connection [no]
``auth_failed``        wrong signature, unknown or revoked device: one answer for all [no]
``challenge_expired``  the challenge was older than its TTL; a new one follows [yes]
``challenge_used``     the challenge was already answered; a new one follows [yes]
``invalid_username``   the username breaks the alias rules [no]
``username_taken``     someone holds that username [no]
``invalid_certificate`` bad certificate: signature, binding, validity [no]
``certificate_expired`` the device certificate has expired [no]
``device_exists``      that device id is already registered [no]
``invalid_prekey``     a prekey is malformed or not signed by the device [no]
``prekeys_full``       the device already stores the maximum of one-time keys [no]
``invalid_revocation`` revocation not signed by the account key [no]
``invalid_deletion``   account deletion not signed by the account key, or stale [no]
``unknown_user``       directory/prekey/KeyPackage/key-transparency lookup of a name nobody
                       holds, or of a strict account hidden from the requester (the same
                       answer) [no]
``pow_required``       the request needs a proof of work: ``details`` ``{challenge, difficulty}``
                       (server/pow_gate.py) [yes]
``unknown_recipient``  a send to a username that does not exist [no]
``forbidden``          e.g. a ``senderUserId`` other than the authenticated user [no]
``conversation_mismatch`` conversationId is not dm_conversation_id(sender, recipient) [no]
``device_mismatch``    ciphertexts do not cover exactly the active devices [no]
``recipient_offline``  ephemeral send while no recipient device is online; nothing was stored [no]
``rate_limited``       token bucket empty; retry after ``retryAfterMs`` [yes]
``inbox_full``         a target device's inbox quota is used up (``details``: ``scope``
                       device | contact | stranger, ``userId``, ``deviceId``); nothing was
                       stored; retry after ``retryAfterMs`` (the recipient reads) [yes]
``unavailable``        storage failed; nothing was stored, retry later [yes]
``room_exists``        room.create with an id already taken [no]
``unknown_room``       no such room [no]
``not_member``         the device is not a member of that room [no]
``commit_conflict``    another commit won this epoch; ``details`` name ``currentEpoch``
                       and ``winningServerSeq``: process the winner, then retry [yes]
``stale_epoch``        a room send made in an epoch that is no longer current [yes]
``audit_conflict``     the audit entry does not link to the stored chain head [yes]
``invalid_token``      no room has that join token (same answer whether or not the room exists) [no]
``invalid_commit``     an external commit (or the GroupInfo a commit publishes) fails the checks the
                       server makes with the MLS public view; nothing was stored [no]
``invalid_audit_entry`` an audit entry names another actor than the sending device, or is not
                       signed by the MLS key of that device's certificate [no]
``invalid_key_package`` a join request's KeyPackage is malformed, expired, badly signed, or not
                       the requesting device's own (credential, certified MLS key) [no]
``join_request_pending`` this device's earlier join request to the room is still unanswered [no]
``join_requests_full`` the room holds its maximum of unanswered join requests [yes]
``keypackages_full``   the device already stores the maximum of KeyPackages [no]
``internal``           our bug; the request may be retried [yes]
=====================  ==========================================================

WebSocket close codes the server uses:

* 1009 – a frame larger than ``limits.MAX_FRAME_BYTES``;
* 1008 – sustained abuse (too many rate-limited or malformed requests), no
  authentication within the pre-auth timeout, or (not authenticated yet) closed to
  make room for a newer unauthenticated connection when the pre-auth budget is full;
* 1013 – the client reads too slowly (write buffer over its limit): reconnect
  and resume;
* 4000 – replaced: the same device authenticated on a newer connection;
* 4001 – the device was revoked;
* 4002 – the account was deleted (every device of it, on every node);
* 1001 – the server is shutting down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sottovoce.errors import DecodeError, WireError

T = TypeVar("T")

CLOSE_ABUSE = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SLOW_CONSUMER = 1013
CLOSE_REPLACED = 4000
CLOSE_REVOKED = 4001
CLOSE_ACCOUNT_DELETED = 4002
CLOSE_GOING_AWAY = 1001

#: Refusals that count as a strike against the connection (``abuse_strikes`` of them
#: in a row close it with 1008): what a well-behaved client does not send twice.
ABUSE_CODES = frozenset({
    "rate_limited", "bad_json", "bad_request", "unknown_event", "payload_too_large",
    "unauthorized", "forbidden",
})


class WireFailure(WireError):
    """A request failed in a way the client is told about with ``ksmpv3.error``."""


class StorageError(WireFailure):
    """Storage could not complete a write; nothing of it was committed."""

    def __init__(self, message: str = "storage unavailable") -> None:
        super().__init__("unavailable", message, retryable=True, retry_after_ms=500)


class RateLimited(WireFailure):
    """A token bucket is empty: ``message`` says what came too often, ``wait_ms`` when to
    try again."""

    def __init__(self, message: str, wait_ms: int) -> None:
        super().__init__("rate_limited", message, retryable=True, retry_after_ms=wait_ms)


def decoded(decode: Callable[[bytes], T], raw: bytes, code: str, what: str) -> T:
    """``decode(raw)``; if it does not decode, the failure ``code`` saying so of ``what``."""
    try:
        return decode(raw)
    except DecodeError:
        raise WireFailure(code, f"{what} does not decode") from None
