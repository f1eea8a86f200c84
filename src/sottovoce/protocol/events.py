"""KSMP v3 frames (docs/protocol.md) and the sottovoce.* extension events.

Every WebSocket text frame is one JSON object::

    {"event": "<name>", "requestId": "<optional client id>", "data": {...}}

Session, in order::

    server: sottovoce.challenge {nonce}                       (on connect)
    client: sottovoce.register {certificate, signature}      (first time) or
            sottovoce.auth {username, deviceId, signature}   (every later time)
    server: ksmpv3.connected {userId, deviceId, latestGlobalInboxSeq, ...}  (auth) or
            sottovoce.registered {the same fields}                         (register)
    client: ksmpv3.resume {lastGlobalInboxSeq}
    server: ksmpv3.inbox.frame × n, then sottovoce.replay.done, then live frames
    client: ksmpv3.send … ← ksmpv3.send.ack (after the write is durable)
    client: ksmpv3.ack.read {upToGlobalInboxSeq} (server deletes those frames)
    either: ping / pong;  server: ksmpv3.error {code, message, retryable, retryAfterMs}

Replies (``data`` of each server event; binary fields base64)::

    sottovoce.challenge        {nonce, serverTimeMs}
    ksmpv3.connected           {userId, deviceId, serverTimeMs, latestGlobalInboxSeq, heartbeatMs}
    sottovoce.registered       {the fields of ksmpv3.connected}: the ONE reply to register and
                               device.add; the connection is then authenticated as after auth
    sottovoce.username.result  {username, available}
    sottovoce.directory.result {username, accountKey, devices: [{deviceId, certificate}],
                                revokedDeviceIds: [..]}
    sottovoce.prekeys.bundles  {username, bundles: [PrekeyBundle.encode()]}  one per device
    sottovoce.prekeys.stored   {oneTimeKeys: <count now stored>}
    sottovoce.prekeys.low      {remaining}                 (pushed when stock < low watermark)
    sottovoce.device.added     {deviceId};  sottovoce.device.revoked {deviceId}
    sottovoce.account.deleted  {}  (then every connection of the account closes with 4002)
    sottovoce.push.registered  {}
    ksmpv3.send.ack            {messageId, idempotencyKey, conversationId, serverSeq,
                                serverReceivedAtMs, duplicate}
                               (ephemeral sends: ephemeralSeq in place of serverSeq)
    ksmpv3.inbox.frame         {globalInboxSeq, envelope}  (globalInboxSeq 0 = ephemeral)

An envelope carries ``serverSeq`` (stored messages: strictly increasing per
conversation, durable) or, with ``ephemeral: true``, ``ephemeralSeq`` instead
(per conversation, counted in the memory of one server process and restarting
with it): two sequences under two names, so that neither is taken for the other.
``senderDeviceId`` and ``ephemeral`` are sottovoce extensions of the envelope.
    sottovoce.replay.done      {upToGlobalInboxSeq}
    ksmpv3.error               {code, message, retryable, retryAfterMs, [messageId], [details]}

A reply carries the ``requestId`` of the request it answers. A send whose
ciphertexts do not cover exactly the recipient's active devices (plus the
sender's other devices) gets ``ksmpv3.error`` code ``device_mismatch`` with
``details: {missing: [{userId, deviceId}], stale: [{userId, deviceId}]}``.

The challenge signature is the device signing key's Ed25519 signature over
:func:`auth_message` (domain, nonce, username, device id). Events validate
themselves when parsed, so a malformed event never exists past this module.

Each event is declared once, as its list of fields (:mod:`sottovoce.protocol.spec`);
``from_data``, ``to_data`` and ``to_frame`` come from that list. Adding an event (a
call, a file) is a class and a line in the registry::

    @event("sottovoce.call.ring")
    class CallRing(ClientEvent):
        \"\"\"Ring the other devices of a 1:1 conversation.\"\"\"

        conversationId: str = wire(ID)
        callId: str = wire(ID)
        offer: bytes = wire(B64(max_bytes=MAX_SDP_BYTES, nonempty=True))
        video: bool = wire(Bool(), default=False)     # optional: missing means False

    CLIENT_EVENTS = registry(..., CallRing)

The field kinds (``ID``, ``B64``, ``Int``, ``ListOf``, ``Nested`` ...) hold the shared
rules (protocol/fields.py), so a new event inherits every fix to them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec

from sottovoce.codec.tls import Writer
from sottovoce.limits import (
    MAX_CIPHERTEXT_BYTES,
    MAX_FRAME_BYTES,
    MAX_PREKEYS_PER_UPLOAD,
    MAX_SEND_DEVICES,
    MAX_STATEMENTS_PER_UPLOAD,
)
from sottovoce.protocol.fields import (
    B64,
    CONTENT_TYPE,
    ID,
    OPT_ID,
    Bool,
    Const,
    Int,
    ListOf,
    Loose,
    Str,
    bad,
    opt,
    req_obj,
)

# The ``X as X`` imports are re-exports: code that speaks the protocol imports them from here.
from sottovoce.protocol.fields import CONTENT_TYPES as CONTENT_TYPES
from sottovoce.protocol.fields import ProtocolError as ProtocolError
from sottovoce.protocol.fields import b64 as b64
from sottovoce.protocol.pow import PROOF_BYTES as POW_PROOF_BYTES
from sottovoce.protocol.spec import ClientEvent as ClientEvent
from sottovoce.protocol.spec import Nested, WireStruct, event, registry, struct, wire
from sottovoce.protocol.spec import frame as frame

PROTOCOL = "ksmpv3"
_AUTH_DOMAIN = b"sottovoce auth v1"
#: Sizes of the binary fields carried in base64.
CERT_MAX_BYTES = 4096
PREKEY_MAX_BYTES = 512
SIGNATURE_BYTES = 64
NONCE_BYTES = 32
#: Where a device wants its wake-up tickles: an http(s) URL.
PUSH_ENDPOINT_MAX_LEN = 2048

CERTIFICATE = B64(max_bytes=CERT_MAX_BYTES)
SIGNATURE = B64(max_bytes=SIGNATURE_BYTES, size=SIGNATURE_BYTES)
PREKEY = B64(max_bytes=PREKEY_MAX_BYTES)
CIPHERTEXT = B64(max_bytes=MAX_CIPHERTEXT_BYTES)
PUSH_ENDPOINT = Str(max_len=PUSH_ENDPOINT_MAX_LEN, pattern=re.compile(r"https?://.*", re.S),
                    why="must be an http(s) URL")


def auth_message(nonce: bytes, username: str, device_id: str) -> bytes:
    """What a device signs to answer a server challenge (domain-separated, length-prefixed)."""
    w = Writer()
    w.opaque8(_AUTH_DOMAIN)
    w.opaque8(nonce)
    w.opaque8(username.encode("ascii"))
    w.opaque8(device_id.encode("ascii"))
    return w.getvalue()


def dm_conversation_id(user_a: str, user_b: str) -> str:
    """The canonical id of the 1:1 conversation between two users (order-independent)."""
    low, high = sorted((user_a, user_b))
    return f"dm:{low}:{high}"


# =============================================================================
# Frames: parse and serialize
# =============================================================================


_FAST_JSON = msgspec.json.Decoder()


def _loads(text: str | bytes) -> Any:
    """``json.loads(text)``, about three times faster on the frames that matter.

    msgspec decodes strict RFC 8259 JSON into the same values as json.loads (ints of
    any size stay ints; the last of duplicate keys wins). What it refuses but json may
    accept (NaN, lone surrogate escapes, floats out of range, a UTF-8 BOM in bytes,
    deep nesting) goes to json.loads, which accepts or raises exactly as before."""
    try:
        return _FAST_JSON.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return json.loads(text)


def parse_frame(text: str | bytes) -> tuple[str, str | None, dict[str, Any]]:
    """Split a frame into (event, requestId, data); raises :class:`ProtocolError`."""
    if len(text) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"frame exceeds {MAX_FRAME_BYTES} bytes")
    try:
        obj = _loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: deeply nested arrays/objects exhaust the parser's stack.
        raise ProtocolError("bad_json", "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "frame must be a JSON object")
    event = obj.get("event")
    if not isinstance(event, str) or not event:
        raise ProtocolError("bad_request", "frame has no 'event'")
    request_id = opt(obj, "requestId", OPT_ID, None)
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise ProtocolError("bad_request", "'data' must be an object")
    return event, request_id, data


# =============================================================================
# The envelope (docs/protocol.md §Envelope)
# =============================================================================


def _one_sequence(values: dict[str, Any], d: dict[str, Any]) -> None:
    """Two sequences under two names, so that neither is taken for the other."""
    if values["ephemeral"] and "serverSeq" in d:
        raise bad("serverSeq", "an ephemeral message has ephemeralSeq, not serverSeq")
    if not values["ephemeral"] and "ephemeralSeq" in d:
        raise bad("ephemeralSeq", "only an ephemeral message has one")


def _stored(values: dict[str, Any]) -> bool:
    return not values["ephemeral"]


def _ephemeral(values: dict[str, Any]) -> bool:
    return bool(values["ephemeral"])


@struct
class Envelope(WireStruct):
    """One message as a recipient device receives it (its own ciphertext inside)."""

    protocol: str = wire(Const(PROTOCOL), default=PROTOCOL, required=True)
    contentType: str = wire(CONTENT_TYPE)
    #: Empty for room messages; a malformed one is read as empty (routing only).
    recipientUserId: str = wire(Loose(lambda v: v if isinstance(v, str) else ""), default="")
    ephemeral: bool = wire(Bool(), default=False, check=_one_sequence)
    #: Stored messages: the conversation's serverSeq (>= 1); ephemeral ones: 0.
    serverSeq: int = wire(Int(minimum=1), default=0, required=True, only_if=_stored,
                          omit_default=True)
    #: Ephemeral messages: their own per-conversation sequence (>= 1); stored ones: 0.
    ephemeralSeq: int = wire(Int(minimum=1), default=0, required=True, only_if=_ephemeral,
                             omit_default=True)
    conversationId: str = wire(ID)
    messageId: str = wire(ID)
    senderUserId: str = wire(ID)
    senderDeviceId: str = wire(ID)
    ciphertext: bytes = wire(CIPHERTEXT)
    clientCreatedAtMs: int = wire(Int(), default=0)
    serverReceivedAtMs: int = wire(Int())
    idempotencyKey: str = wire(ID)

    def __post_init__(self) -> None:
        if self.ephemeral != (self.ephemeralSeq > 0) or self.ephemeral == (self.serverSeq > 0):
            raise ProtocolError("bad_request", "an envelope has serverSeq or, if ephemeral, "
                                               "ephemeralSeq")


# =============================================================================
# Client → server events
# =============================================================================


@struct
class UsernameEvent(ClientEvent):
    """An event whose only field is a username (check, lookup, prekey/KeyPackage claims)."""

    username: str = wire(ID)


#: A solved proof of work (protocol/pow.py): the server's challenge token and a counter.
POW = B64(max_bytes=POW_PROOF_BYTES, size=POW_PROOF_BYTES)


@struct
class GatedUsernameEvent(UsernameEvent):
    """A username event that probes the directory: about another account it needs a proof
    of work (``pow``), asked for with ``pow_required`` (docs/protocol.md §Proof of work)."""

    pow: bytes | None = wire(POW, default=None, omit_default=True)
    #: The capability a strict account handed us (protocol/discovery.py), if any.
    cap: bytes | None = wire(B64(max_bytes=32, size=32), default=None, omit_default=True)


@struct
class _Certified(ClientEvent):
    """A device certificate (signed by the account key) and the device key's signature
    over the challenge, proving possession."""

    certificate: bytes = wire(CERTIFICATE)
    signature: bytes = wire(SIGNATURE)


#: The kinds of signed account statements (identity/succession.py ``decode_statement``).
STATEMENT_KINDS = frozenset({"certificate", "revocation", "succession", "recovery"})


@struct
class SignedStatement(WireStruct):
    """One signed statement about an account, by kind."""

    kind: str = wire(Str(choices=STATEMENT_KINDS))
    data: bytes = wire(CERTIFICATE)


STATEMENTS = ListOf(Nested(SignedStatement, why="items must be objects"),
                    max_items=MAX_STATEMENTS_PER_UPLOAD)


@event("sottovoce.register")
class Register(_Certified):
    """Claim a username: the certificate is signed by the new account key; ``recoveryKey``
    is the public half of the printed recovery code's key, the only key that can ever
    replace the account key without it (docs/protocol.md §Succession)."""

    recoveryKey: bytes | None = wire(B64(max_bytes=32, size=32), default=None,
                                     omit_default=True)
    #: A registration tells whether the name is taken, so it pays a proof of work like
    #: ``username.check`` (docs/protocol.md §Proof of work).
    pow: bytes | None = wire(POW, default=None, omit_default=True)


@event("sottovoce.device.add")
class AddDevice(_Certified):
    """Register another device of an existing account (certificate signed by the account key).

    With ``statements`` (a recovery, a renewal after expiry), the server keeps them first and
    the device may be one it knows: its certificate must then be the ruling one."""

    statements: tuple[SignedStatement, ...] = wire(STATEMENTS, default=(), omit_default=True)


@event("sottovoce.account.statements")
class AccountStatements(ClientEvent):
    """Signed statements about the caller's own account (succession, certificates of the
    surviving devices, revocations, a renewed certificate); answered with
    ``sottovoce.account.head``."""

    statements: tuple[SignedStatement, ...] = wire(STATEMENTS)


@event("sottovoce.auth")
class Auth(ClientEvent):
    username: str = wire(ID)
    deviceId: str = wire(ID)
    signature: bytes = wire(SIGNATURE)


@event("sottovoce.username.check")
class UsernameCheck(GatedUsernameEvent):
    pass


@event("sottovoce.directory.lookup")
class DirectoryLookup(GatedUsernameEvent):
    pass


@event("sottovoce.prekeys.upload")
class PrekeysUpload(ClientEvent):
    """Signed one-time keys (encoded ``SignedPrekey``) and optionally a new fallback key."""

    oneTimeKeys: tuple[bytes, ...] = wire(ListOf(PREKEY, max_items=MAX_PREKEYS_PER_UPLOAD))
    fallbackKey: bytes | None = wire(PREKEY, default=None)


@event("sottovoce.prekeys.claim")
class PrekeysClaim(GatedUsernameEvent):
    """Fetch one prekey bundle per active device of ``username`` (consumes one-time keys)."""


@struct
class DeviceCiphertext(WireStruct):
    userId: str = wire(ID)
    deviceId: str = wire(ID)
    ciphertext: bytes = wire(CIPHERTEXT)


def _target(c: DeviceCiphertext) -> tuple[str, str]:
    return (c.userId, c.deviceId)


@event("ksmpv3.send")
class Send(ClientEvent):
    """One logical message: one ciphertext per recipient device (and own other devices).

    The server assigns one ``serverSeq`` for the whole send and delivers each
    device a standard :class:`Envelope` holding its own ciphertext.
    """

    protocol: str = wire(Const(PROTOCOL), default=PROTOCOL)
    contentType: str = wire(CONTENT_TYPE)
    ciphertexts: tuple[DeviceCiphertext, ...] = wire(ListOf(
        Nested(DeviceCiphertext, why="items must be objects"),
        max_items=MAX_SEND_DEVICES, nonempty=True, unique=_target,
    ))
    conversationId: str = wire(ID)
    messageId: str = wire(ID)
    idempotencyKey: str = wire(ID)
    recipientUserId: str = wire(ID)
    clientCreatedAtMs: int = wire(Int(), default=0)
    senderUserId: str | None = wire(OPT_ID, default=None, omit_default=True)
    ephemeral: bool = wire(Bool(), default=False)
    #: A disappearing message: when the server must drop its ciphertext (Unix ms,
    #: whole seconds; 0 or absent: kept until read). The server bounds it.
    expiresAtMs: int = wire(Int(), default=0, omit_default=True)


@event("ksmpv3.ack.read")
class AckRead(ClientEvent):
    """The device has durably stored every frame up to this global inbox seq."""

    upToGlobalInboxSeq: int = wire(Int(minimum=1))


@event("ksmpv3.resume")
class Resume(ClientEvent):
    lastGlobalInboxSeq: int = wire(Int(), default=0)


@event("ping")
class Ping(ClientEvent):
    pass


@event("sottovoce.push.register")
class PushRegister(ClientEvent):
    """Where to send wake-up tickles for this device (a UnifiedPush-style endpoint URL)."""

    endpoint: str = wire(PUSH_ENDPOINT)


@event("sottovoce.block")
class BlockSet(ClientEvent):
    """Block (``blocked: true``) or unblock an account: while blocked, nothing it sends
    is stored for this account's devices, and its sends are acknowledged as usual."""

    userId: str = wire(ID)
    blocked: bool = wire(Bool())


@event("sottovoce.device.revoke")
class RevokeDevice(ClientEvent):
    """An encoded ``RevocationStatement`` signed by the account key."""

    revocation: bytes = wire(CERTIFICATE)


@event("sottovoce.account.delete")
class DeleteAccount(ClientEvent):
    """An encoded ``AccountDeletion`` signed by the account key; answered with
    ``sottovoce.account.deleted {}``, then every connection of the account closes (4002)."""

    statement: bytes = wire(CERTIFICATE)


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnCredentialsRequest(ClientEvent):
    """Ask for short-lived TURN credentials (authenticated devices only; no fields).

    Answered with ``sottovoce.turn.result {urls, username, credential, expiresAt}``
    (the RTCIceServer shape; ``username`` is coturn's "expiry:random id", naming
    nobody), or ``ksmpv3.error`` ``turn_unavailable`` when the server has no TURN.
    """

    name: ClassVar[str] = "sottovoce.turn.credentials"

    def to_data(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> TurnCredentialsRequest:
        if d:
            raise bad("data", "must be empty for this request")
        return cls()


#: The reply to :class:`TurnCredentialsRequest`.
TURN_RESULT = "sottovoce.turn.result"


CLIENT_EVENTS = registry(
    Register,
    AddDevice,
    Auth,
    UsernameCheck,
    DirectoryLookup,
    PrekeysUpload,
    PrekeysClaim,
    Send,
    AckRead,
    Resume,
    Ping,
    PushRegister,
    BlockSet,
    RevokeDevice,
    DeleteAccount,
    AccountStatements,
    TurnCredentialsRequest,
)


def parse_client_event(text: str | bytes) -> tuple[ClientEvent, str | None]:
    """Parse and validate one client frame; raises :class:`ProtocolError`."""
    event, request_id, data = parse_frame(text)
    cls = CLIENT_EVENTS.get(event)
    if cls is None:
        raise ProtocolError("unknown_event", "unknown event")
    return cls.from_data(data), request_id


# =============================================================================
# Server → client events (built by the server, parsed by the client SDK)
# =============================================================================


@struct
class WireError(WireStruct):
    """``ksmpv3.error``: code, message, retryable, retryAfterMs (docs/protocol.md §Errors)."""

    code: str = wire(Str())
    #: Shown to a person at most: any value is taken, as text, cut to 500 characters.
    message: str = wire(Loose(lambda v: str(v)[:500]), default="")
    retryable: bool = wire(Bool(), default=False)
    retryAfterMs: int = wire(Int(), default=0)
    messageId: str | None = wire(OPT_ID, default=None, omit_default=True)
    details: dict[str, Any] = wire(Loose(lambda v: v if isinstance(v, dict) else {}),
                                   default_factory=dict, omit_default=True)

    def to_data(self) -> dict[str, Any]:
        return self.to_wire()

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> WireError:
        return cls.from_wire(d)


#: Server → client event names.
CHALLENGE = "sottovoce.challenge"
CONNECTED = "ksmpv3.connected"
INBOX_FRAME = "ksmpv3.inbox.frame"
SEND_ACK = "ksmpv3.send.ack"
ERROR = "ksmpv3.error"
PONG = "pong"
REPLAY_DONE = "sottovoce.replay.done"
REGISTERED = "sottovoce.registered"
USERNAME_RESULT = "sottovoce.username.result"
DIRECTORY_RESULT = "sottovoce.directory.result"
PREKEY_BUNDLES = "sottovoce.prekeys.bundles"
PREKEYS_STORED = "sottovoce.prekeys.stored"
PREKEYS_LOW = "sottovoce.prekeys.low"
DEVICE_ADDED = "sottovoce.device.added"
DEVICE_REVOKED = "sottovoce.device.revoked"
ACCOUNT_DELETED = "sottovoce.account.deleted"
ACCOUNT_HEAD = "sottovoce.account.head"
#: To the correspondents of an account whose account key changed: look it up again.
KEYS_CHANGED = "sottovoce.keys.changed"
PUSH_REGISTERED = "sottovoce.push.registered"
#: The reply to :class:`BlockSet`: ``{userId, blocked}`` as now stored.
BLOCK_RESULT = "sottovoce.block.result"


def inbox_frame(global_inbox_seq: int, envelope: dict[str, Any]) -> str:
    """``ksmpv3.inbox.frame``; ``globalInboxSeq`` is 0 for ephemeral (unstored) frames."""
    return frame(INBOX_FRAME, {"globalInboxSeq": global_inbox_seq, "envelope": envelope})


def parse_inbox_frame(data: dict[str, Any]) -> tuple[int, Envelope]:
    return opt(data, "globalInboxSeq", Int(), 0), Envelope.from_wire(req_obj(data, "envelope"))
