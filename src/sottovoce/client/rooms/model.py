"""What a room is on this device, and the names and frames the room code shares.

A room is one MLS group (RFC 9420) in one of ROOM_SUITES, chosen when it is created
(the mandatory suite unless asked otherwise); its id is ``room:``
and the hex of the group id, the only name the server ever sees. A member is a
device, named in its basic credential as ``user/device``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sottovoce.client.events import ClientEvent, ErrorEvent
from sottovoce.client.store import Contact
from sottovoce.crypto.mls_suites import XWING_SUITE_ID
from sottovoce.crypto.suite import CipherSuite, cipher_suite
from sottovoce.errors import RemoteError
from sottovoce.mls.group import Group
from sottovoce.mls.messages import Credential
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.fields import Device as Device
from sottovoce.protocol.fields import ProtocolError
from sottovoce.protocol.room_names import NameKey
from sottovoce.sframe.suites import CipherSuiteId

#: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, the mandatory suite (RFC 9420 §17.1):
#: rooms are created in it unless asked otherwise.
SUITE = 1
#: The suites a room may use, each with its own KeyPackage stock on the server: suite 1
#: and the hybrid post-quantum X-Wing suite (X25519 + ML-KEM-768, private-use 0xF001).
ROOM_SUITES: tuple[int, ...] = (SUITE, XWING_SUITE_ID)
#: SFrame suite for calls in rooms: AES-128-GCM (RFC 9605 §4.5), the fast one.
MEDIA_SUITE = int(CipherSuiteId.AES_128_GCM_SHA256_128)
ROOM_PREFIX = "room:"
GROUP_ID_BYTES = 16
#: Requests of the room code wait this long for the server.
ROOM_REQUEST_TIMEOUT_S = 20.0


def mls_suite(suite_id: int = SUITE) -> CipherSuite:
    return cipher_suite(suite_id)


def room_id_of(group_id: bytes) -> str:
    return ROOM_PREFIX + group_id.hex()


def is_room_id(value: str) -> bool:
    body = value[len(ROOM_PREFIX) :]
    return (
        value.startswith(ROOM_PREFIX)
        and len(body) == 2 * GROUP_ID_BYTES
        and all(c in "0123456789abcdef" for c in body)
    )


def identity_of(user: str, device: str) -> bytes:
    """The basic credential of a device: ``user/device`` (the server checks it too)."""
    return pr.member_identity(user, device)


def device_of(credential: Credential | None) -> Device | None:
    if credential is None:
        return None
    try:
        user, _, device = credential.identity.decode("ascii").partition("/")
    except UnicodeDecodeError:
        return None
    return (user, device) if user and device else None


def member_refs(devices: Iterable[Device]) -> tuple[pr.MemberRef, ...]:
    return tuple(pr.MemberRef(userId=u, deviceId=d) for u, d in devices)


def key_matches(contact: Contact | None, device: str, signature_key: bytes) -> bool:
    """``signature_key`` is the MLS key of ``device``'s certificate (not revoked)."""
    if contact is None or device in contact.revoked:
        return False
    cert = contact.certificates.get(device)
    return cert is not None and bool(cert.keys.mls_signature_key) and (
        cert.keys.mls_signature_key == signature_key
    )


# =============================================================================
# Wire parsing (every field validated; nothing past here is untrusted in shape)
# =============================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomFrame:
    """One ``sottovoce.room.frame`` envelope (or a Welcome from the inbox)."""

    room_id: str
    message_id: str
    sender_user: str
    sender_device: str
    ciphertext: bytes
    content_type: str
    client_created_ms: int
    server_seq: int
    server_received_ms: int
    idempotency_key: str
    epoch: int
    kind: str
    adds: tuple[Device, ...] = ()
    removes: tuple[Device, ...] = ()
    join_request: Device | None = None
    remove_request: Device | None = None

    @classmethod
    def from_wire(cls, d: Any) -> RoomFrame:
        """Parse and validate with the contract's own reader (protocol/rooms.py)."""
        if not isinstance(d, dict):
            raise ProtocolError("bad_request", "room envelope must be an object")
        r = pr.RoomEnvelope.from_wire(d)
        e = r.envelope
        if not is_room_id(e.conversationId):
            raise ProtocolError("bad_request", "field 'conversationId' is not a room id")
        return cls(
            room_id=e.conversationId, message_id=e.messageId, sender_user=e.senderUserId,
            sender_device=e.senderDeviceId, ciphertext=e.ciphertext, content_type=e.contentType,
            client_created_ms=e.clientCreatedAtMs, server_seq=e.serverSeq,
            server_received_ms=e.serverReceivedAtMs, idempotency_key=e.idempotencyKey,
            epoch=r.roomEpoch, kind=r.roomKind, adds=tuple(m.key for m in r.adds),
            removes=tuple(m.key for m in r.removes),
            join_request=None if r.joinRequest is None else r.joinRequest.key,
            remove_request=None if r.removeRequest is None else r.removeRequest.key,
        )


def parse_room_frame(
    data: dict[str, Any], events: list[ClientEvent], what: str
) -> RoomFrame | None:
    """The envelope of a received ``data`` as a RoomFrame; ``None`` (and an error event
    saying a malformed ``what`` was skipped) if it breaks the contract."""
    try:
        return RoomFrame.from_wire(data.get("envelope"))
    except ProtocolError:
        events.append(ErrorEvent(code="bad_frame", message=f"malformed room {what} skipped"))
        return None


class UnverifiedMember(RemoteError):
    """A Welcome lists a member whose leaf the directory does not vouch for."""

    code = "room_member_unverified"


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncedMark:
    """Queued behind a room.sync's frames: when the client's batch loop reaches it,
    every frame of that sync has been accepted (held), so the held ones can play."""

    room_id: str
    up_to: int
    latest: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitResult:
    room_id: str
    epoch: int
    server_seq: int


# =============================================================================
# State of one room in memory
# =============================================================================


@dataclass(slots=True, kw_only=True)
class Room:
    room_id: str
    label: str
    group: Group | None
    last_seq: int = 0
    removed: bool = False
    #: messageId of our commit the delivery service has not answered yet.
    inflight: str | None = None
    #: The audit chain as last fetched (entries #0..n, encoded); verified by ``audit()``.
    audit: list[bytes] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Catching up (a frame of a later epoch came before the commit that makes it):
    #: every frame of the room is held here by serverSeq until room.sync filled the
    #: gap, then all are played in serverSeq order (duplicates collapse by seq).
    catching_up: bool = False
    held: dict[int, RoomFrame] = field(default_factory=dict)
    #: Frames were dropped because ``held`` was full: sync again before leaving catch-up.
    held_overflow: bool = False
    #: room.sync rounds whose frames have been played (the sync task waits on it).
    sync_marks: int = 0
    #: Rejoining (we could not follow a commit): frames are held, as when catching up.
    recovering: bool = False
    #: Rejoins tried since this device opened the room (bounded: ROOM_RECOVERIES).
    recoveries: int = 0
    #: Devices a commit we refused added: removed again once we have rejoined.
    refused: set[Device] = field(default_factory=set)
    #: Devices the server announced revoked in this room (removeRequest notices): any
    #: member may remove them (protocol/room_rules.py).
    revoked_notices: set[Device] = field(default_factory=set)
    #: The name key of the room's shared names (client/rooms/names.py), if we hold it.
    name_key: NameKey | None = None
    #: The epoch in which a member last sent the name key (a joiner's is sent once).
    name_key_sent: int = -1

    @property
    def epoch(self) -> int:
        return -1 if self.group is None else self.group.epoch

    def members(self) -> list[Device]:
        if self.group is None or self.removed:
            return []
        out = [device_of(m.credential) for m in self.group.members()]
        return [d for d in out if d is not None]
