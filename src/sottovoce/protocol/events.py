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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from sottovoce.codec.tls import Writer
from sottovoce.limits import (
    MAX_CIPHERTEXT_BYTES,
    MAX_FRAME_BYTES,
    MAX_PREKEYS_PER_UPLOAD,
    MAX_SEND_DEVICES,
)
from sottovoce.protocol.fields import (
    ProtocolError,
    b64,
    bad,
    opt_bool,
    opt_id,
    opt_int,
    req_b64,
    req_id,
    req_int,
    req_list,
    req_obj,
    req_str,
)

PROTOCOL = "ksmpv3"
CONTENT_TYPES = frozenset({"text", "image", "voice", "system"})
_AUTH_DOMAIN = b"sottovoce auth v1"
#: Sizes of the binary fields carried in base64.
CERT_MAX_BYTES = 4096
PREKEY_MAX_BYTES = 512
SIGNATURE_BYTES = 64
NONCE_BYTES = 32


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


def parse_frame(text: str | bytes) -> tuple[str, str | None, dict[str, Any]]:
    """Split a frame into (event, requestId, data); raises :class:`ProtocolError`."""
    if len(text) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"frame exceeds {MAX_FRAME_BYTES} bytes")
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: deeply nested arrays/objects exhaust the parser's stack.
        raise ProtocolError("bad_json", "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "frame must be a JSON object")
    event = obj.get("event")
    if not isinstance(event, str) or not event:
        raise ProtocolError("bad_request", "frame has no 'event'")
    request_id = opt_id(obj, "requestId")
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise ProtocolError("bad_request", "'data' must be an object")
    return event, request_id, data


def frame(event: str, data: dict[str, Any], request_id: str | None = None) -> str:
    obj: dict[str, Any] = {"event": event, "data": data}
    if request_id is not None:
        obj["requestId"] = request_id
    return json.dumps(obj, separators=(",", ":"))


# =============================================================================
# The envelope (docs/protocol.md §Envelope)
# =============================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One message as a recipient device receives it (its own ciphertext inside)."""

    conversationId: str
    messageId: str
    senderUserId: str
    senderDeviceId: str
    recipientUserId: str
    ciphertext: bytes
    contentType: str
    clientCreatedAtMs: int
    serverReceivedAtMs: int
    idempotencyKey: str
    #: Stored messages: the conversation's serverSeq (>= 1); ephemeral ones: 0.
    serverSeq: int = 0
    #: Ephemeral messages: their own per-conversation sequence (>= 1); stored ones: 0.
    ephemeralSeq: int = 0
    ephemeral: bool = False
    protocol: str = PROTOCOL

    def __post_init__(self) -> None:
        if self.ephemeral != (self.ephemeralSeq > 0) or self.ephemeral == (self.serverSeq > 0):
            raise ProtocolError("bad_request", "an envelope has serverSeq or, if ephemeral, "
                                               "ephemeralSeq")

    def to_wire(self) -> dict[str, Any]:
        seq = ({"ephemeralSeq": self.ephemeralSeq} if self.ephemeral
               else {"serverSeq": self.serverSeq})
        return {
            "protocol": self.protocol,
            "conversationId": self.conversationId,
            "messageId": self.messageId,
            "senderUserId": self.senderUserId,
            "senderDeviceId": self.senderDeviceId,
            "recipientUserId": self.recipientUserId,
            "ciphertext": b64(self.ciphertext),
            "contentType": self.contentType,
            "clientCreatedAtMs": self.clientCreatedAtMs,
            **seq,
            "serverReceivedAtMs": self.serverReceivedAtMs,
            "idempotencyKey": self.idempotencyKey,
            "ephemeral": self.ephemeral,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Envelope:
        if d.get("protocol") != PROTOCOL:
            raise bad("protocol", f"must be '{PROTOCOL}'")
        content_type = req_str(d, "contentType")
        if content_type not in CONTENT_TYPES:
            raise bad("contentType", f"must be one of {sorted(CONTENT_TYPES)}")
        recipient = d.get("recipientUserId", "")
        ephemeral = opt_bool(d, "ephemeral")
        server_seq = eph_seq = 0
        if ephemeral:
            if "serverSeq" in d:
                raise bad("serverSeq", "an ephemeral message has ephemeralSeq, not serverSeq")
            eph_seq = req_int(d, "ephemeralSeq", minimum=1)
        else:
            if "ephemeralSeq" in d:
                raise bad("ephemeralSeq", "only an ephemeral message has one")
            server_seq = req_int(d, "serverSeq", minimum=1)
        return cls(
            conversationId=req_id(d, "conversationId"),
            messageId=req_id(d, "messageId"),
            senderUserId=req_id(d, "senderUserId"),
            senderDeviceId=req_id(d, "senderDeviceId"),
            recipientUserId=recipient if isinstance(recipient, str) else "",
            ciphertext=req_b64(d, "ciphertext", max_bytes=MAX_CIPHERTEXT_BYTES),
            contentType=content_type,
            clientCreatedAtMs=opt_int(d, "clientCreatedAtMs"),
            serverReceivedAtMs=req_int(d, "serverReceivedAtMs"),
            idempotencyKey=req_id(d, "idempotencyKey"),
            serverSeq=server_seq,
            ephemeralSeq=eph_seq,
            ephemeral=ephemeral,
        )


# =============================================================================
# Client → server events
# =============================================================================


class ClientEvent:
    """Base of events a client sends; ``name`` is the wire event name."""

    name: ClassVar[str]

    def to_data(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_frame(self, request_id: str | None = None) -> str:
        return frame(self.name, self.to_data(), request_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class UsernameEvent(ClientEvent):
    """An event whose only field is a username (check, lookup, prekey/KeyPackage claims)."""

    username: str

    def to_data(self) -> dict[str, Any]:
        return {"username": self.username}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Self:
        return cls(username=req_id(d, "username"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Register(ClientEvent):
    """Claim a username: the device certificate (signed by the new account key) and
    the device key's signature over the challenge, proving possession."""

    name: ClassVar[str] = "sottovoce.register"
    certificate: bytes
    signature: bytes

    def to_data(self) -> dict[str, Any]:
        return {"certificate": b64(self.certificate), "signature": b64(self.signature)}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Register:
        return cls(
            certificate=req_b64(d, "certificate", max_bytes=CERT_MAX_BYTES),
            signature=_signature(d),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AddDevice(ClientEvent):
    """Register another device of an existing account (certificate signed by the account key)."""

    name: ClassVar[str] = "sottovoce.device.add"
    certificate: bytes
    signature: bytes

    def to_data(self) -> dict[str, Any]:
        return {"certificate": b64(self.certificate), "signature": b64(self.signature)}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> AddDevice:
        return cls(
            certificate=req_b64(d, "certificate", max_bytes=CERT_MAX_BYTES),
            signature=_signature(d),
        )


def _signature(d: dict[str, Any]) -> bytes:
    sig = req_b64(d, "signature", max_bytes=SIGNATURE_BYTES)
    if len(sig) != SIGNATURE_BYTES:
        raise bad("signature", f"must be {SIGNATURE_BYTES} bytes")
    return sig


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth(ClientEvent):
    name: ClassVar[str] = "sottovoce.auth"
    username: str
    deviceId: str
    signature: bytes

    def to_data(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "deviceId": self.deviceId,
            "signature": b64(self.signature),
        }

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Auth:
        return cls(
            username=req_id(d, "username"), deviceId=req_id(d, "deviceId"), signature=_signature(d)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class UsernameCheck(UsernameEvent):
    name: ClassVar[str] = "sottovoce.username.check"


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryLookup(UsernameEvent):
    name: ClassVar[str] = "sottovoce.directory.lookup"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeysUpload(ClientEvent):
    """Signed one-time keys (encoded ``SignedPrekey``) and optionally a new fallback key."""

    name: ClassVar[str] = "sottovoce.prekeys.upload"
    oneTimeKeys: tuple[bytes, ...]
    fallbackKey: bytes | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "oneTimeKeys": [b64(k) for k in self.oneTimeKeys],
            "fallbackKey": None if self.fallbackKey is None else b64(self.fallbackKey),
        }

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> PrekeysUpload:
        raw = req_list(d, "oneTimeKeys", max_items=MAX_PREKEYS_PER_UPLOAD)
        keys = tuple(
            req_b64({"oneTimeKeys": k}, "oneTimeKeys", max_bytes=PREKEY_MAX_BYTES) for k in raw
        )
        fallback = (
            None
            if d.get("fallbackKey") is None
            else req_b64(d, "fallbackKey", max_bytes=PREKEY_MAX_BYTES)
        )
        return cls(oneTimeKeys=keys, fallbackKey=fallback)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeysClaim(UsernameEvent):
    """Fetch one prekey bundle per active device of ``username`` (consumes one-time keys)."""

    name: ClassVar[str] = "sottovoce.prekeys.claim"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceCiphertext:
    userId: str
    deviceId: str
    ciphertext: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "userId": self.userId,
            "deviceId": self.deviceId,
            "ciphertext": b64(self.ciphertext),
        }

    @classmethod
    def from_wire(cls, d: Any) -> DeviceCiphertext:
        if not isinstance(d, dict):
            raise bad("ciphertexts", "items must be objects")
        return cls(
            userId=req_id(d, "userId"),
            deviceId=req_id(d, "deviceId"),
            ciphertext=req_b64(d, "ciphertext", max_bytes=MAX_CIPHERTEXT_BYTES),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Send(ClientEvent):
    """One logical message: one ciphertext per recipient device (and own other devices).

    The server assigns one ``serverSeq`` for the whole send and delivers each
    device a standard :class:`Envelope` holding its own ciphertext.
    """

    name: ClassVar[str] = "ksmpv3.send"
    conversationId: str
    messageId: str
    idempotencyKey: str
    recipientUserId: str
    contentType: str
    clientCreatedAtMs: int
    ciphertexts: tuple[DeviceCiphertext, ...]
    senderUserId: str | None = None
    ephemeral: bool = False

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "protocol": PROTOCOL,
            "conversationId": self.conversationId,
            "messageId": self.messageId,
            "idempotencyKey": self.idempotencyKey,
            "recipientUserId": self.recipientUserId,
            "contentType": self.contentType,
            "clientCreatedAtMs": self.clientCreatedAtMs,
            "ephemeral": self.ephemeral,
            "ciphertexts": [c.to_wire() for c in self.ciphertexts],
        }
        if self.senderUserId is not None:
            data["senderUserId"] = self.senderUserId
        return data

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Send:
        if d.get("protocol", PROTOCOL) != PROTOCOL:
            raise bad("protocol", f"must be '{PROTOCOL}'")
        content_type = req_str(d, "contentType")
        if content_type not in CONTENT_TYPES:
            raise bad("contentType", f"must be one of {sorted(CONTENT_TYPES)}")
        items = req_list(d, "ciphertexts", max_items=MAX_SEND_DEVICES)
        if not items:
            raise bad("ciphertexts", "must not be empty")
        ciphertexts = tuple(DeviceCiphertext.from_wire(c) for c in items)
        targets = {(c.userId, c.deviceId) for c in ciphertexts}
        if len(targets) != len(ciphertexts):
            raise bad("ciphertexts", "names a device twice")
        return cls(
            conversationId=req_id(d, "conversationId"),
            messageId=req_id(d, "messageId"),
            idempotencyKey=req_id(d, "idempotencyKey"),
            recipientUserId=req_id(d, "recipientUserId"),
            contentType=content_type,
            clientCreatedAtMs=opt_int(d, "clientCreatedAtMs"),
            ciphertexts=ciphertexts,
            senderUserId=opt_id(d, "senderUserId"),
            ephemeral=opt_bool(d, "ephemeral"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AckRead(ClientEvent):
    """The device has durably stored every frame up to this global inbox seq."""

    name: ClassVar[str] = "ksmpv3.ack.read"
    upToGlobalInboxSeq: int

    def to_data(self) -> dict[str, Any]:
        return {"upToGlobalInboxSeq": self.upToGlobalInboxSeq}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> AckRead:
        return cls(upToGlobalInboxSeq=req_int(d, "upToGlobalInboxSeq", minimum=1))


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume(ClientEvent):
    name: ClassVar[str] = "ksmpv3.resume"
    lastGlobalInboxSeq: int = 0

    def to_data(self) -> dict[str, Any]:
        return {"lastGlobalInboxSeq": self.lastGlobalInboxSeq}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Resume:
        return cls(lastGlobalInboxSeq=opt_int(d, "lastGlobalInboxSeq"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(ClientEvent):
    name: ClassVar[str] = "ping"

    def to_data(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Ping:
        return cls()


@dataclass(frozen=True, slots=True, kw_only=True)
class PushRegister(ClientEvent):
    """Where to send wake-up tickles for this device (a UnifiedPush-style endpoint URL)."""

    name: ClassVar[str] = "sottovoce.push.register"
    endpoint: str

    def to_data(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> PushRegister:
        endpoint = req_str(d, "endpoint", max_len=2048)
        if not endpoint.startswith(("https://", "http://")):
            raise bad("endpoint", "must be an http(s) URL")
        return cls(endpoint=endpoint)


@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeDevice(ClientEvent):
    """An encoded ``RevocationStatement`` signed by the account key."""

    name: ClassVar[str] = "sottovoce.device.revoke"
    revocation: bytes

    def to_data(self) -> dict[str, Any]:
        return {"revocation": b64(self.revocation)}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RevokeDevice:
        return cls(revocation=req_b64(d, "revocation", max_bytes=CERT_MAX_BYTES))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteAccount(ClientEvent):
    """An encoded ``AccountDeletion`` signed by the account key; answered with
    ``sottovoce.account.deleted {}``, then every connection of the account closes (4002)."""

    name: ClassVar[str] = "sottovoce.account.delete"
    statement: bytes

    def to_data(self) -> dict[str, Any]:
        return {"statement": b64(self.statement)}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> DeleteAccount:
        return cls(statement=req_b64(d, "statement", max_bytes=CERT_MAX_BYTES))


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


CLIENT_EVENTS: dict[str, Any] = {
    cls.name: cls
    for cls in (
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
        RevokeDevice,
        DeleteAccount,
        TurnCredentialsRequest,
    )
}


def parse_client_event(text: str | bytes) -> tuple[ClientEvent, str | None]:
    """Parse and validate one client frame; raises :class:`ProtocolError`."""
    event, request_id, data = parse_frame(text)
    cls = CLIENT_EVENTS.get(event)
    if cls is None:
        raise ProtocolError("unknown_event", "unknown event")
    parsed: ClientEvent = cls.from_data(data)
    return parsed, request_id


# =============================================================================
# Server → client events (built by the server, parsed by the client SDK)
# =============================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class WireError:
    """``ksmpv3.error``: code, message, retryable, retryAfterMs (docs/protocol.md §Errors)."""

    code: str
    message: str
    retryable: bool = False
    retryAfterMs: int = 0
    messageId: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
            "retryAfterMs": self.retryAfterMs,
        }
        if self.messageId is not None:
            data["messageId"] = self.messageId
        if self.details:
            data["details"] = self.details
        return data

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> WireError:
        details = d.get("details", {})
        return cls(
            code=req_str(d, "code"),
            message=str(d.get("message", ""))[:500],
            retryable=opt_bool(d, "retryable"),
            retryAfterMs=opt_int(d, "retryAfterMs"),
            messageId=opt_id(d, "messageId"),
            details=details if isinstance(details, dict) else {},
        )


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
PUSH_REGISTERED = "sottovoce.push.registered"


def inbox_frame(global_inbox_seq: int, envelope: dict[str, Any]) -> str:
    """``ksmpv3.inbox.frame``; ``globalInboxSeq`` is 0 for ephemeral (unstored) frames."""
    return frame(INBOX_FRAME, {"globalInboxSeq": global_inbox_seq, "envelope": envelope})


def parse_inbox_frame(data: dict[str, Any]) -> tuple[int, Envelope]:
    return opt_int(data, "globalInboxSeq"), Envelope.from_wire(req_obj(data, "envelope"))
