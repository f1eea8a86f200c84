"""Rooms and MLS KeyPackages on the wire: the MLS delivery service contract
(docs/protocol.md §Rooms).

The server is the MLS delivery service: it orders commits (exactly one per
epoch), fans one ciphertext per room message out to every member device,
holds KeyPackages, the public GroupInfo, a hash of the join token and the
audit chain. It never reads a Welcome or a message; of commits it reads only
external ones, with the MLS public view (see "Joining by token").

Client → server (``data`` of each event; binary fields base64)::

    sottovoce.keypackages.upload {keyPackages: [b64], lastResort: b64|null, suite?}
        → sottovoce.keypackages.stored {count}        one-time KeyPackages of that suite stored
    sottovoce.keypackages.withdraw {}
        → sottovoce.keypackages.withdrawn {count}     the caller's one-time KeyPackages deleted
    sottovoce.keypackages.claim  {username, suite?}
        → sottovoce.keypackages.bundles {username, suite,
                                         keyPackages: [{deviceId, keyPackage}]}
    sottovoce.room.create  {roomId, groupInfo: b64|null}
        → sottovoce.room.created {roomId, epoch: 0, serverSeq: 0}
    sottovoce.room.commit  {roomId, epoch, messageId, idempotencyKey, commit, welcome|null,
                            adds: [{userId, deviceId}], removes: [..], groupInfo|null,
                            audit|null, token|null, proposals: [b64]}
        → sottovoce.room.committed {roomId, epoch: <new>, serverSeq, messageId,
                                    idempotencyKey, duplicate}
    sottovoce.room.send    {roomId, epoch, messageId, idempotencyKey, contentType,
                            clientCreatedAtMs, ciphertext, expiresAtMs?}
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
    sottovoce.room.call.grant    {roomId, callId} (a current member, the server runs an SFU)
        → sottovoce.room.call.granted {url, room, feedId, token, expiresAt}
          (else sfu_not_member, sfu_unavailable: rooms then call as a mesh)

Server → member device, unsolicited::

    sottovoce.room.frame {envelope}     envelope = the KSMP v3 envelope (recipientUserId "")
                                        + roomEpoch, roomKind ("commit" | "message" | "notice")
                                        + adds/removes (commits), joinRequest / removeRequest
                                        (notices)
    sottovoce.keypackages.low {remaining, suite}

KeyPackages are kept per MLS cipher suite (``suite``, the RFC 9420 §17.1 code
point; absent: 1, as before suites were named): an upload naming a suite is checked
-- every KeyPackage in it must decode and carry that ``cipher_suite`` -- and a
claim hands out, per device, one KeyPackage of the suite it names, passing over a
device that has none of it. An upload without ``suite`` is stored, opaque, as
suite 1 (what clients from before suites uploaded).

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
from typing import Any

from sottovoce.errors import UsageError
from sottovoce.limits import (
    CALL_ID_BYTES,
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
from sottovoce.protocol.blobs import BLOB_CLIENT_EVENTS
from sottovoce.protocol.discovery import DISCOVERY_CLIENT_EVENTS
from sottovoce.protocol.events import CLIENT_EVENTS, Envelope, GatedUsernameEvent
from sottovoce.protocol.fields import (
    B64,
    CONTENT_TYPE,
    ID,
    ID_RE,
    Int,
    Kind,
    ListOf,
    Pattern,
    ProtocolError,
    Str,
    bad,
    req_obj,
)
from sottovoce.protocol.kt import KT_CLIENT_EVENTS
from sottovoce.protocol.link import LINK_CLIENT_EVENTS
from sottovoce.protocol.spec import (
    ClientEvent,
    Nested,
    WireStruct,
    event,
    registry,
    struct,
    wire,
)
from sottovoce.readonly import ReadOnly
from sottovoce.secret import Secret

ROOM_ID_PREFIX = "room:"
_ROOM_ID_RE = re.compile(r"room:[0-9a-f]{32}")
TOKEN_HASH_DOMAIN = b"sottovoce room token v1"
TOKEN_WIRE_DOMAIN = b"sottovoce room token wire v1"
TOKEN_PSK_DOMAIN = b"sottovoce room token psk v1"
#: Ciphertext of a removeRequest notice: base64 of the single byte 0x00 (never empty).
NOTICE_CIPHERTEXT = "AA=="
ROOM_KINDS = frozenset({"commit", "message", "welcome", "notice"})

#: Server → client event names.
KEYPACKAGES_STORED = "sottovoce.keypackages.stored"
KEYPACKAGE_BUNDLES = "sottovoce.keypackages.bundles"
KEYPACKAGES_WITHDRAWN = "sottovoce.keypackages.withdrawn"
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
ROOM_CALL_GRANTED = "sottovoce.room.call.granted"
ROOM_SETTING_UPDATED = "sottovoce.room.setting.updated"

#: The room settings (docs/protocol.md, "Room settings") and the values each takes:
#: a data-residency region label (or "none"), and the opt-in recorder device.
ROOM_SETTINGS = ("residency", "recorder")
#: "No residency": calls go to any SFU (a region label is never "none").
RESIDENCY_NONE = "none"
#: The device id of an opt-in recorder device: every client marks it as the recorder,
#: and the server grants it no SFU access in a room whose recorder setting is off.
RECORDER_DEVICE_ID = "recorder"


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
# Field kinds
# =============================================================================


class Token(Kind[Secret]):
    """A wire token (:func:`wire_token`): held as a :class:`Secret` from the moment it is read."""

    def parse(self, v: Any, key: str) -> Secret:
        if not isinstance(v, str):
            raise bad(key, "must be a string")
        if not ROOM_TOKEN_MIN_LEN <= len(v) <= ROOM_TOKEN_MAX_LEN or not ID_RE.fullmatch(v):
            raise bad(key, f"must be {ROOM_TOKEN_MIN_LEN}-{ROOM_TOKEN_MAX_LEN} id characters")
        return Secret(v.encode("ascii"))

    def dump(self, value: Secret) -> str:
        return value.expose().decode("ascii")


ROOM_ID = Pattern(_ROOM_ID_RE, "must be 'room:' followed by 32 lowercase hex characters")
TOKEN = Token()
GROUP_INFO = B64(max_bytes=MAX_ROOM_GROUP_INFO_BYTES)
#: The encoded audit entry that goes with a change (an AuditEntry), or null.
AUDIT = B64(max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES)
KEY_PACKAGE = B64(max_bytes=MAX_KEY_PACKAGE_BYTES, nonempty=True)
#: A region label, as the server's ``--sfu REGION=URL`` names its SFUs.
REGION_RE = re.compile(r"[a-z][a-z0-9-]{0,15}")
SETTING_NAME = Pattern(re.compile("|".join(ROOM_SETTINGS)), "must be 'residency' or 'recorder'")
SETTING_VALUE = Pattern(REGION_RE, "must be a region label (a-z, 0-9, -), 'none', 'on' or 'off'")


def setting_refusal(setting: str, value: str) -> str | None:
    """Why ``value`` is not one ``setting`` takes (``None``: it is)."""
    if setting == "recorder" and value not in ("on", "off"):
        return "the recorder setting is 'on' or 'off'"
    if setting == "residency" and not REGION_RE.fullmatch(value):
        return "a residency is a region label (a-z, 0-9, -; at most 16) or 'none'"
    if setting not in ROOM_SETTINGS:
        return "the room settings are 'residency' and 'recorder'"
    return None


def req_room_id(d: dict[str, Any], name: str = "roomId") -> str:
    return ROOM_ID.parse(d.get(name), name)


def req_token(d: dict[str, Any], name: str = "token") -> Secret:
    return TOKEN.parse(d.get(name), name)


@struct
class MemberRef(WireStruct):
    """One member device of a room."""

    userId: str = wire(ID)
    deviceId: str = wire(ID)

    @property
    def key(self) -> tuple[str, str]:
        return (self.userId, self.deviceId)


def _key(m: MemberRef) -> tuple[str, str]:
    return m.key


MEMBER = Nested(MemberRef, why="items must be objects")
MEMBERS = ListOf(MEMBER, max_items=MAX_ROOM_MEMBERS, unique=_key)


# =============================================================================
# KeyPackages
# =============================================================================


def _some_key_package(values: dict[str, Any], _: dict[str, Any]) -> None:
    if not values["keyPackages"] and values["lastResort"] is None:
        raise bad("keyPackages", "must not be empty without a lastResort")


#: An MLS cipher suite code point (RFC 9420 §17.1: uint16); the server knows which exist.
SUITE = Int(minimum=1, maximum=0xFFFF)


@event("sottovoce.keypackages.upload")
class KeyPackagesUpload(ClientEvent):
    """One-time KeyPackages (RFC 9420 §10) and optionally a new last-resort one, which is
    handed out when the one-time stock is empty and never consumed, all of one ``suite``.
    Named, the suite is checked against each KeyPackage's own ``cipher_suite``; absent
    (clients from before suites), the KeyPackages are stored unread as suite 1."""

    keyPackages: tuple[bytes, ...] = wire(
        ListOf(KEY_PACKAGE, max_items=MAX_KEY_PACKAGES_PER_UPLOAD)
    )
    lastResort: bytes | None = wire(KEY_PACKAGE, default=None, check=_some_key_package)
    suite: int | None = wire(SUITE, default=None, omit_default=True)


@event("sottovoce.keypackages.withdraw")
class KeyPackagesWithdraw(ClientEvent):
    """Delete every one-time KeyPackage the caller's own device has stored, unclaimed (a
    device replacing a stock it can no longer use, e.g. leaves that lack a capability
    rooms now need); the last-resort one stays until the next upload replaces it."""


@event("sottovoce.keypackages.claim")
class KeyPackagesClaim(GatedUsernameEvent):
    """One KeyPackage of ``suite`` (default 1) per active device of ``username`` that has
    one (the caller's own device excluded); gated like a prekey claim (a proof of work,
    and a strict account's capability)."""

    suite: int = wire(SUITE, default=1, omit_default=True)


# =============================================================================
# Rooms
# =============================================================================


@event("sottovoce.room.create")
class RoomCreate(ClientEvent):
    roomId: str = wire(ROOM_ID)
    groupInfo: bytes | None = wire(GROUP_INFO, default=None)


def _disjoint(values: dict[str, Any], _: dict[str, Any]) -> None:
    if {m.key for m in values["adds"]} & {m.key for m in values["removes"]}:
        raise bad("adds", "names a device that 'removes' also names")


def _welcome_has_adds(values: dict[str, Any], _: dict[str, Any]) -> None:
    if values["welcome"] is not None and not values["adds"]:
        raise bad("welcome", "needs at least one device in 'adds'")


@event("sottovoce.room.commit")
class RoomCommit(ClientEvent):
    """An MLS commit made in ``epoch`` with the roster change it declares.

    ``token`` set means an external commit by a non-member (``adds`` = itself).
    """

    adds: tuple[MemberRef, ...] = wire(MEMBERS, default=(), required=True)
    removes: tuple[MemberRef, ...] = wire(MEMBERS, default=(), required=True, check=_disjoint)
    welcome: bytes | None = wire(B64(max_bytes=MAX_ROOM_WELCOME_BYTES), default=None,
                                 check=_welcome_has_adds)
    roomId: str = wire(ROOM_ID)
    epoch: int = wire(Int())
    messageId: str = wire(ID)
    idempotencyKey: str = wire(ID)
    commit: bytes = wire(B64(max_bytes=MAX_ROOM_COMMIT_BYTES, nonempty=True))
    groupInfo: bytes | None = wire(GROUP_INFO, default=None)
    audit: bytes | None = wire(AUDIT, default=None)
    token: Secret | None = wire(TOKEN, default=None)
    #: The proposal messages (MLS PublicMessages of ``epoch``) the commit holds by
    #: reference, so the server can tell who proposed each (protocol/room_rules.py).
    proposals: tuple[bytes, ...] = wire(
        ListOf(B64(max_bytes=MAX_ROOM_COMMIT_BYTES, nonempty=True), max_items=MAX_ROOM_MEMBERS),
        default=(),
    )


@event("sottovoce.room.send")
class RoomSend(ClientEvent):
    """One MLS PrivateMessage for the whole room, made in ``epoch``."""

    contentType: str = wire(CONTENT_TYPE)
    roomId: str = wire(ROOM_ID)
    epoch: int = wire(Int())
    messageId: str = wire(ID)
    idempotencyKey: str = wire(ID)
    clientCreatedAtMs: int = wire(Int(), default=0)
    ciphertext: bytes = wire(B64(max_bytes=MAX_CIPHERTEXT_BYTES, nonempty=True))
    #: A disappearing message: when the server must drop its ciphertext from the room's
    #: log (Unix ms, whole seconds; 0 or absent: kept as any room message). Bounded.
    expiresAtMs: int = wire(Int(), default=0, omit_default=True)


@event("sottovoce.room.ack")
class RoomAck(ClientEvent):
    """The device has stored the room's messages up to this serverSeq (its read position)."""

    roomId: str = wire(ROOM_ID)
    upToServerSeq: int = wire(Int(minimum=1))


@event("sottovoce.room.sync")
class RoomSync(ClientEvent):
    roomId: str = wire(ROOM_ID)
    afterServerSeq: int = wire(Int(), default=0)


@event("sottovoce.room.info")
class RoomInfo(ClientEvent):
    roomId: str = wire(ROOM_ID)


@event("sottovoce.rooms.list")
class RoomsList(ClientEvent):
    pass


@event("sottovoce.room.token.set")
class RoomTokenSet(ClientEvent):
    """Create or rotate the room's join token (the server keeps only its hash)."""

    roomId: str = wire(ROOM_ID)
    token: Secret = wire(TOKEN)
    audit: bytes | None = wire(AUDIT, default=None)


@event("sottovoce.room.token.revoke")
class RoomTokenRevoke(ClientEvent):
    roomId: str = wire(ROOM_ID)
    audit: bytes | None = wire(AUDIT, default=None)


def _one_of_token_and_room(values: dict[str, Any], _: dict[str, Any]) -> None:
    if (values["token"] is None) == (values["roomId"] is None):
        raise bad("token", "give exactly one of 'token' and 'roomId'")


@event("sottovoce.room.groupinfo.get")
class GroupInfoGet(ClientEvent):
    """The public GroupInfo of a room, for an external commit: of the room a ``token``
    opens (a joiner), or of ``roomId`` for one of its members (a member that could not
    follow a commit rejoins by an external commit on it). Exactly one of the two."""

    token: Secret | None = wire(TOKEN, default=None, omit_default=True)
    roomId: str | None = wire(ROOM_ID, default=None, omit_default=True,
                              check=_one_of_token_and_room)

    def __post_init__(self) -> None:
        if (self.token is None) == (self.roomId is None):
            raise UsageError("give exactly one of token and roomId")


@event("sottovoce.room.join.request")
class JoinRequest(ClientEvent):
    """Ask the members of the token's room to add this device with ``keyPackage``: its own
    (a basic credential naming it, its certified MLS key, current, validly signed), at
    most MAX_JOIN_REQUEST_KEY_PACKAGE_BYTES. Rate-limited per device and per room; a
    room holds at most MAX_PENDING_JOIN_REQUESTS unanswered ones, one per device."""

    token: Secret = wire(TOKEN)
    keyPackage: bytes = wire(B64(max_bytes=MAX_JOIN_REQUEST_KEY_PACKAGE_BYTES, nonempty=True))


@event("sottovoce.room.audit.append")
class AuditAppend(ClientEvent):
    """An audit entry for an event that is not a commit (calls, recordings)."""

    roomId: str = wire(ROOM_ID)
    entry: bytes = wire(B64(max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES, nonempty=True))


@event("sottovoce.room.audit.get")
class AuditGet(ClientEvent):
    afterIndex: int = wire(Int(minimum=-1), default=-1)
    roomId: str = wire(ROOM_ID)


@event("sottovoce.room.call.grant")
class RoomCallGrant(ClientEvent):
    """Let this device into the SFU room of one call of the room for a short while.

    Only a current member of the room's group gets a grant; the call itself (its own
    MLS group, its keys) is the members' business and never passes through here."""

    roomId: str = wire(ROOM_ID)
    callId: bytes = wire(B64(max_bytes=CALL_ID_BYTES, size=CALL_ID_BYTES))


@event("sottovoce.room.setting.set")
class RoomSettingSet(ClientEvent):
    """Change one room setting (the room's admin only), with its signed audit entry
    (action ROOM_SETTING, the one subject (setting, value))."""

    roomId: str = wire(ROOM_ID)
    setting: str = wire(SETTING_NAME)
    value: str = wire(SETTING_VALUE)
    audit: bytes = wire(B64(max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES, nonempty=True))


ROOM_CLIENT_EVENTS = registry(
    KeyPackagesUpload,
    KeyPackagesWithdraw,
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
    RoomCallGrant,
    RoomSettingSet,
)
#: Every client event the server understands, KSMP v3 core, rooms, device linking, key
#: transparency and file blobs: the one registry the server dispatches on
#: (protocol/events.py cannot import this module: it is imported here).
ALL_CLIENT_EVENTS = registry(*CLIENT_EVENTS.values(), *ROOM_CLIENT_EVENTS.values(),
                             *LINK_CLIENT_EVENTS.values(), *KT_CLIENT_EVENTS.values(),
                             *BLOB_CLIENT_EVENTS.values(), *DISCOVERY_CLIENT_EVENTS.values())


# =============================================================================
# Server → client: the room envelope (parsed by the client SDK)
# =============================================================================


class _RemoveReason(Kind[str]):
    """The ``reason`` inside a ``removeRequest`` object."""

    def parse(self, v: Any, key: str) -> str:
        if not isinstance(v, dict):
            raise bad(key, "must be an object")
        return Str().parse(v.get("reason"), "reason")


@struct
class RoomEnvelope(WireStruct):
    """A room message as a member device receives it in ``sottovoce.room.frame``
    (or, roomKind "welcome", in its inbox): the KSMP v3 envelope and the room's fields
    beside it in the same object."""

    envelope: Envelope = wire(Nested(Envelope), inline=True)
    roomKind: str = wire(Str(choices=ROOM_KINDS))
    removeReason: str | None = wire(_RemoveReason(), key="removeRequest", default=None,
                                    emit=False)
    roomEpoch: int = wire(Int())
    adds: tuple[MemberRef, ...] = wire(MEMBERS, default=(), absent=())
    removes: tuple[MemberRef, ...] = wire(MEMBERS, default=(), absent=())
    joinRequest: MemberRef | None = wire(MEMBER, default=None)
    removeRequest: MemberRef | None = wire(MEMBER, default=None)

    def to_wire(self) -> dict[str, Any]:
        d = WireStruct.to_wire(self)
        if self.removeRequest is not None:
            d["removeRequest"] = {**d["removeRequest"], "reason": self.removeReason}
        return d

    roomId = ReadOnly[str]("envelope.conversationId")
    serverSeq = ReadOnly[int]("envelope.serverSeq")


def parse_room_frame(data: dict[str, Any]) -> RoomEnvelope:
    """``data`` of a ``sottovoce.room.frame``."""
    return RoomEnvelope.from_wire(req_obj(data, "envelope"))
