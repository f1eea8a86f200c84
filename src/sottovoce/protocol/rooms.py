"""Rooms and MLS KeyPackages on the wire: the MLS delivery service contract
(docs/protocol.md §Rooms).

The server is the MLS delivery service: it orders commits (exactly one per
epoch), fans one ciphertext per room message out to every member device,
holds KeyPackages, the public GroupInfo, a hash of the join token and the
audit chain. It never reads a Welcome or a message; of commits it reads only
external ones, with the MLS public view (see "Joining by token").

Client → server (``data`` of each event; binary fields base64)::

    sottovoce.keypackages.upload {keyPackages: [b64], lastResort: b64|null}
        → sottovoce.keypackages.stored {count}        one-time KeyPackages now stored
    sottovoce.keypackages.claim  {username}
        → sottovoce.keypackages.bundles {username, keyPackages: [{deviceId, keyPackage}]}
    sottovoce.room.create  {roomId, groupInfo: b64|null}
        → sottovoce.room.created {roomId, epoch: 0, serverSeq: 0}
    sottovoce.room.commit  {roomId, epoch, messageId, idempotencyKey, commit, welcome|null,
                            adds: [{userId, deviceId}], removes: [..], groupInfo|null,
                            audit|null, token|null}
        → sottovoce.room.committed {roomId, epoch: <new>, serverSeq, messageId,
                                    idempotencyKey, duplicate}
    sottovoce.room.send    {roomId, epoch, messageId, idempotencyKey, contentType,
                            clientCreatedAtMs, ciphertext}
        → ksmpv3.send.ack (conversationId = roomId)
    sottovoce.room.ack     {roomId, upToServerSeq} → sottovoce.room.acked {roomId, upToServerSeq}
    sottovoce.room.sync    {roomId, afterServerSeq}
        → sottovoce.room.frame × n (≤ ROOM_SYNC_BATCH), sottovoce.room.synced
          {roomId, upToServerSeq, epoch}
    sottovoce.room.info    {roomId} → sottovoce.room.state {roomId, epoch, members, tokenSet,
                                                             latestServerSeq}
    sottovoce.rooms.list   {} → sottovoce.rooms {rooms: [{roomId, epoch, latestServerSeq}]}
    sottovoce.room.token.set    {roomId, token, audit|null} → sottovoce.room.token.updated
                                                              {roomId, tokenSet: true}
    sottovoce.room.token.revoke {roomId, audit|null}        → ... {roomId, tokenSet: false}
    sottovoce.room.groupinfo.get {token} | {roomId} (members)
        → sottovoce.room.groupinfo {roomId, epoch, groupInfo}
    sottovoce.room.join.request  {token, keyPackage} → sottovoce.room.join.requested {roomId}
    sottovoce.room.audit.append  {roomId, entry} → sottovoce.room.audit.appended {roomId, index}
    sottovoce.room.audit.get     {roomId, afterIndex} → sottovoce.room.audit {roomId, entries}

Server → member device, unsolicited::

    sottovoce.room.frame {envelope}     envelope = the KSMP v3 envelope (recipientUserId "")
                                        + roomEpoch, roomKind ("commit" | "message" | "notice")
                                        + adds/removes (commits), joinRequest / removeRequest
                                        (notices)
    sottovoce.keypackages.low {remaining}

A commit's ``epoch`` is the epoch it was made in; the server takes exactly one
commit per epoch and answers every other one with ``commit_conflict``
(retryable, ``details {roomId, currentEpoch, winningServerSeq}``)::

    room epoch n ──commit{epoch n} first──► serverSeq s, epoch n+1 ──► frame to members of epoch n
                 └─commit{epoch n} later──► commit_conflict{winningServerSeq: s}
                                            (process s, retry from epoch n+1)

A room's serverSeqs are contiguous (each stored room message takes the next
one) and a member device is sent every one from its join on, in order, live or
by replay/sync; a member that sees serverSeq n+2 after n has lost a frame and
asks ``sottovoce.room.sync`` for it.

A Welcome goes to each added device's durable inbox as a ``ksmpv3.inbox.frame``
whose envelope has conversationId = roomId, contentType "system", roomKind
"welcome", serverSeq = the commit's serverSeq, roomEpoch = epoch + 1 and the
commit's messageId/idempotencyKey. Notices are stored room messages made by
the server: a join request (ciphertext = the KeyPackage, ``joinRequest
{userId, deviceId}``) or a revoked device (``removeRequest {userId, deviceId,
reason: "revoked"}``, ciphertext the single byte 0x00, "AA==").

Tokens are secrets: clients hold them in :class:`Secret`; the server hashes
them at once with :func:`token_hash` (SHA-256 over a domain prefix and the
token) and keeps only the hash.

Joining by token (RFC 9420 §12.4.3.2, §8.4). The token T that people pass around
never reaches the server: a client sends :func:`wire_token` (T) wherever the
contract says ``token``, and the server keeps H = ``token_hash(wire_token(T))``.
The token grants routing (the GroupInfo, a join request, an external commit); the
members decide who joins:

* an external commit carries a PreSharedKey proposal naming an external PSK whose
  ``psk_id`` is H and whose key is :func:`token_psk` (T), which neither H nor the
  wire token reveals: a server (or a thief of its database) cannot make a commit
  the members accept;
* the server checks what it can without keys, with the MLS public view
  (``sottovoce.mls.public``): the commit is an MLSMessage(PublicMessage) from a
  ``new_member_commit`` sender for the room's group id and current epoch (per the
  GroupInfo it holds), its proposals follow RFC 9420 §12.2, the UpdatePath leaf it
  adds names the sending device (:func:`member_identity`) and holds that device's
  certified MLS signature key, and that key signed the commit; a joiner's commit
  names H in a PSK proposal; the GroupInfo it publishes is for the next epoch,
  carries ``external_pub`` and is signed by the same key. Anything else is refused
  with ``invalid_commit`` and nothing is stored;
* members learn T from the member that set or rotated it, inside the group (a
  room message of contentType "system"), and resolve H to ``token_psk(T)`` when they
  process the commit: a wrong key fails their key schedule (the confirmation tag), a
  missing one their policy, and they refuse the commit and recover (below).

A member device that sends an external commit without a token rejoins its own room
(a resync, RFC 9420 §12.2: it removes its old leaf and adds a new one): the server
checks it the same way against the GroupInfo it gives members
(``groupinfo.get {roomId}``), and the roster does not change. A member that cannot
process a commit the server accepted rejoins so, and is never left behind for good.

Error codes: room_exists, unknown_room, not_member, commit_conflict, stale_epoch,
audit_conflict, invalid_token, invalid_commit, invalid_audit_entry,
invalid_key_package, join_request_pending, join_requests_full, rate_limited,
bad_request, forbidden, payload_too_large.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from sottovoce.errors import UsageError
from sottovoce.limits import (
    MAX_CIPHERTEXT_BYTES,
    MAX_JOIN_REQUEST_KEY_PACKAGE_BYTES,
    MAX_KEY_PACKAGE_BYTES,
    MAX_KEY_PACKAGES_PER_UPLOAD,
    MAX_ROOM_AUDIT_ENTRY_BYTES,
    MAX_ROOM_COMMIT_BYTES,
    MAX_ROOM_GROUP_INFO_BYTES,
    MAX_ROOM_MEMBERS,
    MAX_ROOM_WELCOME_BYTES,
    ROOM_TOKEN_MAX_LEN,
    ROOM_TOKEN_MIN_LEN,
)
from sottovoce.protocol.events import (
    CLIENT_EVENTS,
    CONTENT_TYPES,
    ClientEvent,
    Envelope,
    UsernameEvent,
)
from sottovoce.protocol.fields import (
    ProtocolError,
    b64,
    bad,
    opt_int,
    req_b64,
    req_id,
    req_int,
    req_list,
    req_obj,
    req_str,
)
from sottovoce.secret import Secret

ROOM_ID_PREFIX = "room:"
_ROOM_ID_RE = re.compile(r"room:[0-9a-f]{32}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_.:@/+=-]+")
TOKEN_HASH_DOMAIN = b"sottovoce room token v1"
TOKEN_WIRE_DOMAIN = b"sottovoce room token wire v1"
TOKEN_PSK_DOMAIN = b"sottovoce room token psk v1"
#: Ciphertext of a removeRequest notice: base64 of the single byte 0x00 (never empty).
NOTICE_CIPHERTEXT = "AA=="
ROOM_KINDS = frozenset({"commit", "message", "welcome", "notice"})

#: Server → client event names.
KEYPACKAGES_STORED = "sottovoce.keypackages.stored"
KEYPACKAGE_BUNDLES = "sottovoce.keypackages.bundles"
KEYPACKAGES_LOW = "sottovoce.keypackages.low"
ROOM_CREATED = "sottovoce.room.created"
ROOM_COMMITTED = "sottovoce.room.committed"
ROOM_FRAME = "sottovoce.room.frame"
ROOM_ACKED = "sottovoce.room.acked"
ROOM_SYNCED = "sottovoce.room.synced"
ROOM_STATE = "sottovoce.room.state"
ROOMS = "sottovoce.rooms"
ROOM_TOKEN_UPDATED = "sottovoce.room.token.updated"  # noqa: S105 -- an event name
ROOM_GROUPINFO = "sottovoce.room.groupinfo"
ROOM_JOIN_REQUESTED = "sottovoce.room.join.requested"
ROOM_AUDIT_APPENDED = "sottovoce.room.audit.appended"
ROOM_AUDIT = "sottovoce.room.audit"


def room_id_for(group_id: bytes) -> str:
    """The roomId of an MLS group: ``room:`` + hex of its 16-byte group_id."""
    if len(group_id) != 16:
        raise ProtocolError("bad_request", "an MLS group_id for a room is 16 bytes")
    return ROOM_ID_PREFIX + group_id.hex()


def token_hash(token: Secret) -> bytes:
    """H = SHA-256("sottovoce room token v1" || token): all the server ever keeps of a token."""
    return hashlib.sha256(TOKEN_HASH_DOMAIN + token.expose()).digest()


def wire_token(token: Secret) -> Secret:
    """What a client sends as ``token``: base64url(SHA-256("sottovoce room token wire v1"
    || T)) without padding (43 id characters), never the token T itself."""
    digest = hashlib.sha256(TOKEN_WIRE_DOMAIN + token.expose()).digest()
    return Secret(base64.urlsafe_b64encode(digest).rstrip(b"="))


def token_psk(token: Secret) -> Secret:
    """The external PSK (RFC 9420 §8.4) an external commit injects to show it knew the
    token T: SHA-256("sottovoce room token psk v1" || T). Its ``psk_id`` is
    ``token_hash(wire_token(T))``, the hash the server keeps."""
    return Secret(hashlib.sha256(TOKEN_PSK_DOMAIN + token.expose()).digest())


def member_identity(user: str, device: str) -> bytes:
    """The MLS basic credential identity (RFC 9420 §5.3) of a member device: ``user/device``
    (both from the id alphabet, so ``/`` cannot be forged by either part)."""
    return f"{user}/{device}".encode("ascii")


# =============================================================================
# Field readers
# =============================================================================


def req_room_id(d: dict[str, Any], name: str = "roomId") -> str:
    v = d.get(name)
    if not isinstance(v, str) or not _ROOM_ID_RE.fullmatch(v):
        raise bad(name, "must be 'room:' followed by 32 lowercase hex characters")
    return v


def req_token(d: dict[str, Any], name: str = "token") -> Secret:
    v = d.get(name)
    if not isinstance(v, str):
        raise bad(name, "must be a string")
    if not ROOM_TOKEN_MIN_LEN <= len(v) <= ROOM_TOKEN_MAX_LEN or not _TOKEN_RE.fullmatch(v):
        raise bad(name, f"must be {ROOM_TOKEN_MIN_LEN}-{ROOM_TOKEN_MAX_LEN} id characters")
    return Secret(v.encode("ascii"))


def opt_token(d: dict[str, Any], name: str = "token") -> Secret | None:
    return None if d.get(name) is None else req_token(d, name)


def exact_b64(d: dict[str, Any], name: str, *, max_bytes: int) -> bytes:
    """``req_b64`` with the limit checked on the decoded bytes (its length pre-check alone
    lets up to two bytes more through)."""
    v = req_b64(d, name, max_bytes=max_bytes)
    if len(v) > max_bytes:
        raise ProtocolError("payload_too_large", f"field '{name}' exceeds {max_bytes} bytes")
    return v


def opt_b64(d: dict[str, Any], name: str, *, max_bytes: int) -> bytes | None:
    return None if d.get(name) is None else exact_b64(d, name, max_bytes=max_bytes)


def _nonempty_b64(d: dict[str, Any], name: str, *, max_bytes: int) -> bytes:
    v = exact_b64(d, name, max_bytes=max_bytes)
    if not v:
        raise bad(name, "must not be empty")
    return v


def _secret_wire(token: Secret) -> str:
    return token.expose().decode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRef:
    """One member device of a room."""

    userId: str
    deviceId: str

    def to_wire(self) -> dict[str, str]:
        return {"userId": self.userId, "deviceId": self.deviceId}

    @property
    def key(self) -> tuple[str, str]:
        return (self.userId, self.deviceId)

    @classmethod
    def from_wire(cls, d: Any, name: str) -> MemberRef:
        if not isinstance(d, dict):
            raise bad(name, "items must be objects")
        return cls(userId=req_id(d, "userId"), deviceId=req_id(d, "deviceId"))


def _members(d: dict[str, Any], name: str) -> tuple[MemberRef, ...]:
    items = tuple(
        MemberRef.from_wire(x, name) for x in req_list(d, name, max_items=MAX_ROOM_MEMBERS)
    )
    if len({m.key for m in items}) != len(items):
        raise bad(name, "names a device twice")
    return items


# =============================================================================
# KeyPackages
# =============================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPackagesUpload(ClientEvent):
    """One-time KeyPackages (RFC 9420 §10, opaque to the server) and optionally a new
    last-resort one, which is handed out when the one-time stock is empty and never consumed."""

    name: ClassVar[str] = "sottovoce.keypackages.upload"
    keyPackages: tuple[bytes, ...]
    lastResort: bytes | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "keyPackages": [b64(k) for k in self.keyPackages],
            "lastResort": None if self.lastResort is None else b64(self.lastResort),
        }

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> KeyPackagesUpload:
        raw = req_list(d, "keyPackages", max_items=MAX_KEY_PACKAGES_PER_UPLOAD)
        kps = tuple(
            _nonempty_b64({"keyPackages": k}, "keyPackages", max_bytes=MAX_KEY_PACKAGE_BYTES)
            for k in raw
        )
        last = (
            None if d.get("lastResort") is None
            else _nonempty_b64(d, "lastResort", max_bytes=MAX_KEY_PACKAGE_BYTES)
        )
        if not kps and last is None:
            raise bad("keyPackages", "must not be empty without a lastResort")
        return cls(keyPackages=kps, lastResort=last)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPackagesClaim(UsernameEvent):
    """One KeyPackage per active device of ``username`` (the caller's own device excluded)."""

    name: ClassVar[str] = "sottovoce.keypackages.claim"


# =============================================================================
# Rooms
# =============================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomCreate(ClientEvent):
    name: ClassVar[str] = "sottovoce.room.create"
    roomId: str
    groupInfo: bytes | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "roomId": self.roomId,
            "groupInfo": None if self.groupInfo is None else b64(self.groupInfo),
        }

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RoomCreate:
        return cls(
            roomId=req_room_id(d),
            groupInfo=opt_b64(d, "groupInfo", max_bytes=MAX_ROOM_GROUP_INFO_BYTES),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomCommit(ClientEvent):
    """An MLS commit made in ``epoch`` with the roster change it declares.

    ``token`` set means an external commit by a non-member (``adds`` = itself).
    """

    name: ClassVar[str] = "sottovoce.room.commit"
    roomId: str
    epoch: int
    messageId: str
    idempotencyKey: str
    commit: bytes
    welcome: bytes | None = None
    adds: tuple[MemberRef, ...] = ()
    removes: tuple[MemberRef, ...] = ()
    groupInfo: bytes | None = None
    audit: bytes | None = None
    token: Secret | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "roomId": self.roomId,
            "epoch": self.epoch,
            "messageId": self.messageId,
            "idempotencyKey": self.idempotencyKey,
            "commit": b64(self.commit),
            "welcome": None if self.welcome is None else b64(self.welcome),
            "adds": [m.to_wire() for m in self.adds],
            "removes": [m.to_wire() for m in self.removes],
            "groupInfo": None if self.groupInfo is None else b64(self.groupInfo),
            "audit": None if self.audit is None else b64(self.audit),
            "token": None if self.token is None else _secret_wire(self.token),
        }

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RoomCommit:
        adds = _members(d, "adds")
        removes = _members(d, "removes")
        if {m.key for m in adds} & {m.key for m in removes}:
            raise bad("adds", "names a device that 'removes' also names")
        welcome = opt_b64(d, "welcome", max_bytes=MAX_ROOM_WELCOME_BYTES)
        if welcome is not None and not adds:
            raise bad("welcome", "needs at least one device in 'adds'")
        return cls(
            roomId=req_room_id(d),
            epoch=req_int(d, "epoch"),
            messageId=req_id(d, "messageId"),
            idempotencyKey=req_id(d, "idempotencyKey"),
            commit=_nonempty_b64(d, "commit", max_bytes=MAX_ROOM_COMMIT_BYTES),
            welcome=welcome,
            adds=adds,
            removes=removes,
            groupInfo=opt_b64(d, "groupInfo", max_bytes=MAX_ROOM_GROUP_INFO_BYTES),
            audit=opt_b64(d, "audit", max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES),
            token=opt_token(d),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomSend(ClientEvent):
    """One MLS PrivateMessage for the whole room, made in ``epoch``."""

    name: ClassVar[str] = "sottovoce.room.send"
    roomId: str
    epoch: int
    messageId: str
    idempotencyKey: str
    contentType: str
    clientCreatedAtMs: int
    ciphertext: bytes

    def to_data(self) -> dict[str, Any]:
        return {
            "roomId": self.roomId,
            "epoch": self.epoch,
            "messageId": self.messageId,
            "idempotencyKey": self.idempotencyKey,
            "contentType": self.contentType,
            "clientCreatedAtMs": self.clientCreatedAtMs,
            "ciphertext": b64(self.ciphertext),
        }

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RoomSend:
        content_type = req_str(d, "contentType")
        if content_type not in CONTENT_TYPES:
            raise bad("contentType", f"must be one of {sorted(CONTENT_TYPES)}")
        return cls(
            roomId=req_room_id(d),
            epoch=req_int(d, "epoch"),
            messageId=req_id(d, "messageId"),
            idempotencyKey=req_id(d, "idempotencyKey"),
            contentType=content_type,
            clientCreatedAtMs=opt_int(d, "clientCreatedAtMs"),
            ciphertext=_nonempty_b64(d, "ciphertext", max_bytes=MAX_CIPHERTEXT_BYTES),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomAck(ClientEvent):
    """The device has stored the room's messages up to this serverSeq (its read position)."""

    name: ClassVar[str] = "sottovoce.room.ack"
    roomId: str
    upToServerSeq: int

    def to_data(self) -> dict[str, Any]:
        return {"roomId": self.roomId, "upToServerSeq": self.upToServerSeq}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RoomAck:
        return cls(roomId=req_room_id(d), upToServerSeq=req_int(d, "upToServerSeq", minimum=1))


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomSync(ClientEvent):
    name: ClassVar[str] = "sottovoce.room.sync"
    roomId: str
    afterServerSeq: int = 0

    def to_data(self) -> dict[str, Any]:
        return {"roomId": self.roomId, "afterServerSeq": self.afterServerSeq}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RoomSync:
        return cls(roomId=req_room_id(d), afterServerSeq=opt_int(d, "afterServerSeq"))


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomInfo(ClientEvent):
    name: ClassVar[str] = "sottovoce.room.info"
    roomId: str

    def to_data(self) -> dict[str, Any]:
        return {"roomId": self.roomId}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RoomInfo:
        return cls(roomId=req_room_id(d))


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomsList(ClientEvent):
    name: ClassVar[str] = "sottovoce.rooms.list"

    def to_data(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RoomsList:
        return cls()


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomTokenSet(ClientEvent):
    """Create or rotate the room's join token (the server keeps only its hash)."""

    name: ClassVar[str] = "sottovoce.room.token.set"
    roomId: str
    token: Secret
    audit: bytes | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "roomId": self.roomId,
            "token": _secret_wire(self.token),
            "audit": None if self.audit is None else b64(self.audit),
        }

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RoomTokenSet:
        return cls(
            roomId=req_room_id(d),
            token=req_token(d),
            audit=opt_b64(d, "audit", max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomTokenRevoke(ClientEvent):
    name: ClassVar[str] = "sottovoce.room.token.revoke"
    roomId: str
    audit: bytes | None = None

    def to_data(self) -> dict[str, Any]:
        return {"roomId": self.roomId, "audit": None if self.audit is None else b64(self.audit)}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RoomTokenRevoke:
        return cls(
            roomId=req_room_id(d),
            audit=opt_b64(d, "audit", max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupInfoGet(ClientEvent):
    """The public GroupInfo of a room, for an external commit: of the room a ``token``
    opens (a joiner), or of ``roomId`` for one of its members (a member that could not
    follow a commit rejoins by an external commit on it). Exactly one of the two."""

    name: ClassVar[str] = "sottovoce.room.groupinfo.get"
    token: Secret | None = None
    roomId: str | None = None

    def __post_init__(self) -> None:
        if (self.token is None) == (self.roomId is None):
            raise UsageError("give exactly one of token and roomId")

    def to_data(self) -> dict[str, Any]:
        if self.token is not None:
            return {"token": _secret_wire(self.token)}
        return {"roomId": self.roomId}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> GroupInfoGet:
        token = opt_token(d)
        room_id = None if d.get("roomId") is None else req_room_id(d)
        if (token is None) == (room_id is None):
            raise bad("token", "give exactly one of 'token' and 'roomId'")
        return cls(token=token, roomId=room_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinRequest(ClientEvent):
    """Ask the members of the token's room to add this device with ``keyPackage``: its own
    (a basic credential naming it, its certified MLS key, current, validly signed), at
    most MAX_JOIN_REQUEST_KEY_PACKAGE_BYTES. Rate-limited per device and per room; a
    room holds at most MAX_PENDING_JOIN_REQUESTS unanswered ones, one per device."""

    name: ClassVar[str] = "sottovoce.room.join.request"
    token: Secret
    keyPackage: bytes

    def to_data(self) -> dict[str, Any]:
        return {"token": _secret_wire(self.token), "keyPackage": b64(self.keyPackage)}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> JoinRequest:
        return cls(
            token=req_token(d),
            keyPackage=_nonempty_b64(
                d, "keyPackage", max_bytes=MAX_JOIN_REQUEST_KEY_PACKAGE_BYTES
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditAppend(ClientEvent):
    """An audit entry for an event that is not a commit (calls, recordings)."""

    name: ClassVar[str] = "sottovoce.room.audit.append"
    roomId: str
    entry: bytes

    def to_data(self) -> dict[str, Any]:
        return {"roomId": self.roomId, "entry": b64(self.entry)}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> AuditAppend:
        return cls(
            roomId=req_room_id(d),
            entry=_nonempty_b64(d, "entry", max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditGet(ClientEvent):
    name: ClassVar[str] = "sottovoce.room.audit.get"
    roomId: str
    afterIndex: int = -1

    def to_data(self) -> dict[str, Any]:
        return {"roomId": self.roomId, "afterIndex": self.afterIndex}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> AuditGet:
        after = -1 if d.get("afterIndex") is None else req_int(d, "afterIndex", minimum=-1)
        return cls(roomId=req_room_id(d), afterIndex=after)


ROOM_CLIENT_EVENTS: dict[str, Any] = {
    cls.name: cls
    for cls in (
        KeyPackagesUpload,
        KeyPackagesClaim,
        RoomCreate,
        RoomCommit,
        RoomSend,
        RoomAck,
        RoomSync,
        RoomInfo,
        RoomsList,
        RoomTokenSet,
        RoomTokenRevoke,
        GroupInfoGet,
        JoinRequest,
        AuditAppend,
        AuditGet,
    )
}
#: Every client event the server understands, KSMP v3 core and rooms: the one registry
#: the server dispatches on (protocol/events.py cannot import this module: it is imported here).
ALL_CLIENT_EVENTS: dict[str, Any] = {**CLIENT_EVENTS, **ROOM_CLIENT_EVENTS}


# =============================================================================
# Server → client: the room envelope (parsed by the client SDK)
# =============================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomEnvelope:
    """A room message as a member device receives it in ``sottovoce.room.frame``
    (or, roomKind "welcome", in its inbox)."""

    envelope: Envelope
    roomEpoch: int
    roomKind: str
    adds: tuple[MemberRef, ...] = ()
    removes: tuple[MemberRef, ...] = ()
    joinRequest: MemberRef | None = None
    removeRequest: MemberRef | None = None
    removeReason: str | None = None

    @property
    def roomId(self) -> str:
        return self.envelope.conversationId

    @property
    def serverSeq(self) -> int:
        return self.envelope.serverSeq

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> RoomEnvelope:
        env = Envelope.from_wire(d)
        kind = req_str(d, "roomKind")
        if kind not in ROOM_KINDS:
            raise bad("roomKind", f"must be one of {sorted(ROOM_KINDS)}")
        join = d.get("joinRequest")
        remove = d.get("removeRequest")
        reason = None
        if remove is not None:
            reason = req_str(req_obj(d, "removeRequest"), "reason")
        return cls(
            envelope=env,
            roomEpoch=req_int(d, "roomEpoch"),
            roomKind=kind,
            adds=_members(d, "adds") if "adds" in d else (),
            removes=_members(d, "removes") if "removes" in d else (),
            joinRequest=None if join is None else MemberRef.from_wire(join, "joinRequest"),
            removeRequest=None if remove is None else MemberRef.from_wire(remove, "removeRequest"),
            removeReason=reason,
        )


def parse_room_frame(data: dict[str, Any]) -> RoomEnvelope:
    """``data`` of a ``sottovoce.room.frame``."""
    return RoomEnvelope.from_wire(req_obj(data, "envelope"))
