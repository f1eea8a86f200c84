"""The storage interface of the MLS delivery service (rooms, KeyPackages; docs/protocol.md §Rooms).

A separate ABC beside :class:`~sottovoce.server.storage.base.Storage`, so that
adapters can add rooms on their own schedule. Rules every adapter keeps:

* a room stores ONE row per message (not per recipient) and ONE read position
  per member device; messages every member has read may be deleted;
* per room, serverSeq is strictly increasing and the epoch advances by exactly
  one per accepted commit: a commit whose epoch is not the room's current one is
  refused with ``commit_conflict`` naming the commit that made the next epoch;
* accepting a commit — epoch check, serverSeq, the message row, the roster
  change, each added device's Welcome inbox row (with its globalInboxSeq), the
  audit entry and the new GroupInfo — is ONE transaction, and its callback runs
  only after it is durable;
* (sender device, idempotencyKey) maps to the first outcome (shared with 1:1 sends);
* a one-time KeyPackage is handed out at most once; the last-resort one is never consumed;
* a room token is stored only as its hash (:func:`sottovoce.protocol.rooms.token_hash`),
  compared in constant time;
* a non-member joins only by an external commit (token hash matching) that adds exactly
  itself; a member's external commit (a resync) changes no member; either is stored
  only if the handler checked it against the GroupInfo of the room's current epoch
  (``checked_epoch``), else ``invalid_commit``;
* the audit chain only grows by an entry whose index is the stored count and
  whose prev_hash is the hash of the last stored entry;
* a room holds at most MAX_PENDING_JOIN_REQUESTS unanswered join requests, one per
  device (a second one while the first is pending is ``join_request_pending``, one
  past the cap ``join_requests_full``); a request is answered when a commit adds its
  device, and stops counting after JOIN_REQUEST_PENDING_MS.

Message-producing operations (commit, send, join request, revocation notices)
take a callback, like ``Storage.append``: callbacks run on the event loop in
commit order, so fan-out happens in serverSeq order for every room.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sottovoce.errors import WireError
from sottovoce.server.storage.base import StoredFrame


class RoomRefused(WireError):
    """A room operation the rules refuse; ``code`` is the wire error code."""


Member = tuple[str, str]


@dataclass(frozen=True, slots=True)
class AuditAppendage:
    """A decoded-and-checked audit entry ready for the linkage check in the transaction."""

    entry: bytes
    index: int
    prev_hash: bytes
    entry_hash: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomWrite:
    """What every write to a room names: the room, the member device writing, the epoch
    it writes in, and the message's ids (a retry is known by its idempotency key)."""

    room_id: str
    user: str
    device: str
    epoch: int
    message_id: str
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRequest(RoomWrite):
    commit_b64: str
    welcome_b64: str | None
    adds: tuple[Member, ...]
    removes: tuple[Member, ...]
    group_info: bytes | None
    audit: AuditAppendage | None
    token_hash: bytes | None
    client_created_at_ms: int = 0
    #: The commit is an MLS external commit (sender new_member_commit, RFC 9420 §12.4.3.2).
    external: bool = False
    #: The epoch whose GroupInfo the handler checked the external commit against (the
    #: MLS public view); an external commit is stored only when this is the room's epoch.
    checked_epoch: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomSendRequest(RoomWrite):
    content_type: str
    client_created_at_ms: int
    ciphertext_b64: str
    #: A disappearing message's expiry (0: none): never read, then deleted, after it.
    expires_at_ms: int = 0


class RoomStored(NamedTuple):
    """A stored room message: its envelope JSON and the devices to fan it out to."""

    room_id: str
    message_id: str
    idempotency_key: str
    server_seq: int
    received_at_ms: int
    duplicate: bool
    envelope: str
    #: Member devices (not revoked) that receive this message, as of its serverSeq.
    members: tuple[Member, ...]


class CommitOutcome(NamedTuple):
    message: RoomStored
    #: The room's epoch after the commit.
    epoch: int
    #: Welcome inbox frames written for the added devices.
    welcomes: tuple[StoredFrame, ...]


@dataclass(frozen=True, slots=True)
class ClaimedKeyPackage:
    device_id: str
    key_package: bytes
    remaining: int


@dataclass(frozen=True, slots=True)
class RoomSummary:
    room_id: str
    epoch: int
    latest_seq: int


@dataclass(frozen=True, slots=True)
class RoomState:
    room_id: str
    epoch: int
    latest_seq: int
    members: tuple[Member, ...]
    token_set: bool
    #: The region the room's calls stay in (None: any SFU).
    residency: str | None = None
    #: Whether the room's opt-in recorder device may join its calls.
    recorder: bool = False
    #: The room's admin: the account that created it (None: no creation entry stored).
    admin: str | None = None


@dataclass(frozen=True, slots=True)
class RoomPosition:
    """Where a member device's replay of one room starts and ends."""

    room_id: str
    read_seq: int
    #: Set once the device was removed: it still receives messages up to this seq.
    until_seq: int | None


@dataclass(frozen=True, slots=True)
class RoomFrames:
    frames: list[tuple[int, str]]
    epoch: int
    latest_seq: int
    #: Every serverSeq up to this one was read (expired messages are holes in ``frames``).
    scanned_to: int = 0


RoomCallback = Callable[[Any, BaseException | None], None]


def room_envelope(
    *,
    room_id: str,
    message_id: str,
    user: str,
    device: str,
    ciphertext_b64: str,
    content_type: str,
    client_created_at_ms: int,
    server_seq: int,
    received_at_ms: int,
    idempotency_key: str,
    epoch: int,
    kind: str,
    recipient: str = "",
    extra: str = "",
) -> str:
    """The envelope JSON of a room message, built once and stored as text.

    Every string was checked against the protocol id alphabet (or is validated
    base64, or a fixed word), so none needs escaping; ``extra`` is JSON made by
    ``json.dumps`` starting with a comma (adds/removes, joinRequest, removeRequest).
    """
    return (
        '{"protocol":"ksmpv3","conversationId":"' + room_id
        + '","messageId":"' + message_id
        + '","senderUserId":"' + user
        + '","senderDeviceId":"' + device
        + '","recipientUserId":"' + recipient
        + '","ciphertext":"' + ciphertext_b64
        + '","contentType":"' + content_type
        + '","clientCreatedAtMs":' + str(client_created_at_ms)
        + ',"serverSeq":' + str(server_seq)
        + ',"serverReceivedAtMs":' + str(received_at_ms)
        + ',"idempotencyKey":"' + idempotency_key
        + '","ephemeral":false,"roomEpoch":' + str(epoch)
        + ',"roomKind":"' + kind + '"' + extra + "}"
    )


def room_frame_text(envelope: str) -> str:
    """``sottovoce.room.frame`` around a stored envelope (serialized once per message)."""
    return '{"event":"sottovoce.room.frame","data":{"envelope":' + envelope + "}}"


class RoomStorage(abc.ABC):
    """Rooms and KeyPackages; coroutines run on the server's event loop."""

    # --- KeyPackages -------------------------------------------------------------

    @abc.abstractmethod
    async def store_key_packages(
        self,
        user_id: str,
        device_id: str,
        key_packages: Sequence[bytes],
        last_resort: bytes | None,
        max_stored: int,
        suite: int = 1,
    ) -> int:
        """Returns the one-time KeyPackages of ``suite`` now stored; raises ``RoomRefused``
        when full."""

    @abc.abstractmethod
    async def withdraw_key_packages(self, user_id: str, device_id: str) -> int:
        """Delete the device's own unclaimed one-time KeyPackages (every suite); how many."""

    @abc.abstractmethod
    async def count_key_packages(
        self, user_id: str, device_id: str, suite: int = 1
    ) -> int | None:
        """One-time KeyPackages of ``suite`` stored; None if the device never uploaded any."""

    @abc.abstractmethod
    async def key_package_stock(self, user_id: str, device_id: str) -> dict[int, int]:
        """One-time KeyPackages stored, by suite, for each suite the device uploaded."""

    @abc.abstractmethod
    async def claim_key_packages(
        self, user_id: str, exclude_device: Member | None, *, one_time: bool = True,
        suite: int = 1,
    ) -> list[ClaimedKeyPackage]:
        """Atomically take one one-time KeyPackage of ``suite`` (else that suite's last-resort
        one) per active device that has one; ``one_time=False``: the last-resort one only,
        consuming nothing (a limited requester)."""

    # --- rooms ---------------------------------------------------------------------

    @abc.abstractmethod
    async def create_room(
        self, room_id: str, user_id: str, device_id: str, group_info: bytes | None, now_ms: int
    ) -> None:
        """Raises ``RoomRefused('room_exists')``."""

    @abc.abstractmethod
    def room_commit(self, req: CommitRequest, callback: RoomCallback) -> None:
        """``callback(CommitOutcome | None, error)`` after the commit's transaction is durable."""

    @abc.abstractmethod
    def room_send(self, req: RoomSendRequest, callback: RoomCallback) -> None:
        """``callback(RoomStored | None, error)`` after the message is durable."""

    @abc.abstractmethod
    def room_join_request(
        self, token_hash: bytes, user_id: str, device_id: str, key_package_b64: str,
        callback: RoomCallback,
    ) -> None:
        """Store a joinRequest notice in the token's room unless the device has one pending or
        the room holds its maximum; ``callback(RoomStored | None, err)``."""

    @abc.abstractmethod
    def room_device_revoked(
        self, user_id: str, device_id: str, callback: RoomCallback
    ) -> None:
        """Stop delivering to the device and store a removeRequest notice in each of its rooms:
        ``callback(list[RoomStored] | None, error)``."""

    @abc.abstractmethod
    async def room_ack(self, room_id: str, user_id: str, device_id: str, up_to_seq: int) -> int:
        """Move the device's read position; returns the room messages deleted (read by all)."""

    @abc.abstractmethod
    async def room_read(
        self, room_id: str, user_id: str, device_id: str, after_seq: int, limit: int
    ) -> RoomFrames:
        """Messages after ``after_seq`` (not before the device joined); members only."""

    @abc.abstractmethod
    async def room_positions(self, user_id: str, device_id: str) -> list[RoomPosition]: ...

    @abc.abstractmethod
    async def room_replay(
        self, room_id: str, after_seq: int, until_seq: int | None, limit: int
    ) -> list[tuple[int, str]]:
        """(serverSeq, envelope JSON) after ``after_seq`` (and ≤ ``until_seq``), ascending;
        expired disappearing messages left out."""

    @abc.abstractmethod
    async def room_state(self, room_id: str, user_id: str, device_id: str) -> RoomState: ...

    @abc.abstractmethod
    async def rooms_of(self, user_id: str, device_id: str, limit: int) -> list[RoomSummary]: ...

    @abc.abstractmethod
    async def set_room_token(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        token_hash: bytes | None,
        audit: AuditAppendage | None,
    ) -> None:
        """Set (hash) or clear (None) the room's token, with its audit entry, in one transaction."""

    @abc.abstractmethod
    async def set_room_setting(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        setting: str,
        value: str,
        audit: AuditAppendage,
    ) -> None:
        """Change one room setting (the room's admin only), with its audit entry, in one
        transaction; ``RoomRefused`` not_member / not_admin / audit_conflict otherwise."""

    @abc.abstractmethod
    async def group_info_by_token(self, token_hash: bytes) -> tuple[str, int, bytes] | None:
        """(roomId, epoch, GroupInfo) of the room whose token hash matches."""

    @abc.abstractmethod
    async def room_group_info(
        self, room_id: str, user_id: str, device_id: str
    ) -> tuple[int, bytes]:
        """(epoch, GroupInfo) of a room for one of its current member devices (b"" when
        none was stored); ``RoomRefused`` unknown_room / not_member otherwise."""

    @abc.abstractmethod
    async def audit_append(
        self, room_id: str, user_id: str, device_id: str, audit: AuditAppendage
    ) -> int: ...

    @abc.abstractmethod
    async def audit_get(
        self, room_id: str, user_id: str, device_id: str, after_index: int, limit: int
    ) -> list[bytes]: ...
