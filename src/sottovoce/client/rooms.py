"""Rooms in the client SDK: one MLS group per room, the server as delivery service
(docs/architecture.md §Rooms).

::

    create_room ──► Group.create (suite 1, random 16-byte group id) ──► room.create
    invite      ──► directory + keypackages.claim ──► validate each KeyPackage against
                    the device certificate ──► commit Add(s) + Welcome ─┐
    remove      ──► commit Remove(s) of every leaf of that user ────────┤
    auto        ──► removeRequest notice (revoked device) / joinRequest ┤
                                                                        ▼
                  room.commit {epoch = ours} ──► committed ──► merge the pending commit
                        │                                      (unless our own commit
                        └─ commit_conflict {winningServerSeq}   frame merged it first)
                             ──► drop ours, wait until the winner is processed
                                 (room frames; room.sync if it does not come),
                                 back off retryAfterMs, rebuild on the new epoch, retry

    room frames (serverSeq order, one transaction per batch, then room.ack):
        commit  ──► process_message ──► declared adds/removes must match ──► merge
        message ──► dedupe by messageId ──► decrypt once ──► messages table (peer = roomId)
        notice  ──► removeRequest: commit Remove; joinRequest: commit Add + Welcome
        commit/message of a LATER epoch than ours (a commit frame was lost):
            ──► catching up: hold every frame of the room (by serverSeq)
            ──► room.sync after our position ──► its frames are held too
            ──► SyncedMark queued behind them ──► play held frames in serverSeq order
                (repeats collapse by seq, messages by messageId); again while
                upToServerSeq < latestServerSeq
    inbox envelope roomKind "welcome" ──► our KeyPackage by ref ──► join_from_welcome
        (opened before the batch; every member leaf's key must be its device
         certificate's, one directory lookup per unknown user) ──► else refuse

    token ──► T shared inside the group (a "system" room message; members keep it sealed)
          ──► room.token.set {wire_token(T)}: the server never sees T itself
    join_with_token ──► external commit injecting the PSK token_psk(T), psk_id = its hash
        members: a wrong, unknown or missing PSK ──► refused ──► rejoin (below)
    a commit we cannot follow (or an epoch we never entered) ──► rejoin: external commit
        replacing our own leaf on the room's GroupInfo ──► remove who that commit added
        ──► RoomRecovered

    send ──► pad (size buckets) ──► encrypt in the current epoch ──► ONE transaction:
             message (sending) + group state + outbox row ──► socket if up (the
             outbox is resent on reconnect, same messageId and idempotencyKey)
        stale_epoch ──► wait for the new epoch ──► re-encrypt (a fresh generation),
                        persist, replace the outbox row ──► send again

The local room name is a label kept sealed in the local store; the server only
ever sees the room id (hex of the MLS group id). Every change to a group is
written in the same transaction as the messages or epoch it produced; the group
state itself is written there too once the MLS layer can serialize it (until
then groups live in memory only: see :func:`_group_state`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from sottovoce.client.errors import NotConnected, ServerError
from sottovoce.client.events import (
    ClientEvent,
    ErrorEvent,
    RoomInvited,
    RoomJoined,
    RoomMembershipChanged,
    RoomMessageReceived,
    RoomRecovered,
)
from sottovoce.client.payload import Payload
from sottovoce.client.room_notice import (
    INVITE_CONTENT_TYPE,
    InviteNotice,
    free_label,
    valid_room_name,
)
from sottovoce.client.store import DeliveryStatus, StoredMessage
from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.crypto.sign import SigningKey
from sottovoce.errors import DecodeError, RemoteError, SottovoceError, UsageError
from sottovoce.limits import (
    CLIENT_KEY_PACKAGE_BATCH,
    MAX_KEY_PACKAGE_BYTES,
    MAX_ROOM_AUDIT_ENTRY_BYTES,
    MAX_ROOM_GROUP_INFO_BYTES,
    MAX_ROOM_NAME_BYTES,
    MAX_TEXT_BYTES,
    ROOM_AUDIT_BATCH,
    ROOM_COMMIT_RETRIES,
    ROOM_EARLY_FRAMES,
    ROOM_SEND_RETRIES,
)
from sottovoce.mls.common import PreSharedKeyID, PSKType
from sottovoce.mls.framing import MLSMessage
from sottovoce.mls.group import (
    ApplicationMessage,
    CommitBundle,
    Group,
    GroupConfig,
    KeyPackagePrivate,
    PskLookup,
    StagedCommit,
    generate_key_package,
)
from sottovoce.mls.messages import Credential, KeyPackage, Welcome
from sottovoce.mls.proposals import validate_key_package
from sottovoce.mls.public import check_group_info
from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.audit import (
    AuditAction,
    AuditTrail,
    chain_head,
    make_entry,
    verify_trail,
)
from sottovoce.protocol.fields import (
    ProtocolError,
    req_b64,
    req_id,
    req_int,
)
from sottovoce.secret import Secret
from sottovoce.sframe.mls_keys import MediaKeyManager
from sottovoce.sframe.suites import CipherSuiteId

if TYPE_CHECKING:
    from sottovoce.client.client import Client

#: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, the mandatory suite (RFC 9420 §17.1).
SUITE = 1
#: SFrame suite for calls in rooms: AES-128-GCM (RFC 9605 §4.5), the fast one.
MEDIA_SUITE = int(CipherSuiteId.AES_128_GCM_SHA256_128)
ROOM_PREFIX = "room:"
GROUP_ID_BYTES = 16
#: How long a loser waits for the winning commit to arrive before asking room.sync.
CATCH_UP_WAIT_S = 3.0
#: Requests of this module wait this long for the server.
ROOM_REQUEST_TIMEOUT_S = 20.0
#: room.sync rounds in a row without progress before a catch-up gives up (a server
#: that keeps answering without the missing frames must not keep us looping).
ROOM_SYNC_ROUNDS = 3
#: Rejoins of one room per session after commits we could not follow: a server that
#: keeps sending commits no member can process must not make us commit forever.
ROOM_RECOVERIES = 3

# Event names the SDK waits for (the rest are in protocol/rooms.py).
ROOM_FRAME = pr.ROOM_FRAME
KEYPACKAGES_LOW = pr.KEYPACKAGES_LOW

Device = tuple[str, str]


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return secrets.token_urlsafe(16)


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


def new_token() -> str:
    """32 random bytes, base64url without padding (43 characters of the id alphabet).

    Drawn again when it would start with '-': a command line reads such a token as
    an option (``room join -Hd4…``). That costs 0.02 of its 256 bits.
    """
    while True:
        token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
        if not token.startswith("-"):
            return token


def _group_state(group: Group) -> bytes:
    """The group's whole state (secret: the store seals it)."""
    return group.to_state()


def _token_record(room_id: str, token_hash: bytes) -> str:
    return f"room-token:{room_id}:{token_hash.hex()}"


def _current_token_record(room_id: str) -> str:
    return f"room-token-current:{room_id}"


def _control_record(message_id: str) -> str:
    return f"room-control:{message_id}"


def _control_peer(room_id: str) -> str:
    """Where a room's control messages are kept: beside the room, out of its history
    (the message row dedupes them and carries their delivery state)."""
    return f"{room_id}#control"


# Room control messages: a room message whose payload content type is "system" and
# whose body is ``uint8 kind`` then the kind's fields. Members act on them; the
# history shows a line saying what happened, never the fields (a token is a secret).
CONTROL_TOKEN = 1  # opaque token<V>: the room's join token, set or rotated
#: What the history shows of a shared token.
TOKEN_SHARED_TEXT = "(set a new join token for the room)"  # noqa: S105 -- a history line


def _token_control(token: Secret) -> bytes:
    w = Writer()
    w.u8(CONTROL_TOKEN)
    w.opaque_v(token.expose())
    return w.getvalue()


def _read_token_control(body: bytes) -> Secret:
    """The token a control message shares; ``DecodeError`` for anything else."""

    def read(r: Reader) -> Secret:
        if r.u8() != CONTROL_TOKEN:
            raise DecodeError("unknown room control message")
        return pr.req_token({"token": r.opaque_v().decode("ascii", "replace")})

    try:
        return decode(read, body)
    except ProtocolError:
        raise DecodeError("the shared token is malformed") from None


def _restore_group(state: bytes, psk_lookup: PskLookup) -> Group | None:
    try:
        return Group.from_state(state, psk_lookup=psk_lookup)
    except DecodeError:
        return None  # damaged record: the room is unusable, the rest of the account is not


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
            room_id=e.conversationId,
            message_id=e.messageId,
            sender_user=e.senderUserId,
            sender_device=e.senderDeviceId,
            ciphertext=e.ciphertext,
            content_type=e.contentType,
            client_created_ms=e.clientCreatedAtMs,
            server_seq=e.serverSeq,
            server_received_ms=e.serverReceivedAtMs,
            idempotency_key=e.idempotencyKey,
            epoch=r.roomEpoch,
            kind=r.roomKind,
            adds=tuple(m.key for m in r.adds),
            removes=tuple(m.key for m in r.removes),
            join_request=None if r.joinRequest is None else r.joinRequest.key,
            remove_request=None if r.removeRequest is None else r.removeRequest.key,
        )


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


def _marked_after(room: Room, marks: int) -> Callable[[], bool]:
    """A room.sync round (the one queued after ``marks`` rounds) has been played."""
    return lambda: room.sync_marks > marks


def group_member_after(
    staged: StagedCommit, credential: Credential | None
) -> tuple[Device, bytes]:
    """The external joiner of ``staged``: its device and its leaf's signature key."""
    who = device_of(credential)
    if who is None:
        raise RemoteError("an external commit without a usable joiner credential")
    member = staged.member(staged.committer)
    if member is None:
        raise RemoteError("an external commit without a joiner leaf")
    return who, member.signature_key


def _check_external_join(staged: StagedCommit, user: str, device: str) -> bool:
    """An external commit is a resync of a member (it removes the joiner's own old leaf,
    RFC 9420 §12.2; returns True) or a join by token, which must inject the token's
    PSK (protocol/rooms.py, "Joining by token"): the key schedule already refused a
    wrong or unknown one, so an external PSK being there is what is left to check."""
    if any(device_of(m.credential) == (user, device) for m in staged.removes):
        return True
    if not any(p.psktype == PSKType.EXTERNAL for p in staged.psks):
        raise RemoteError("an external join that does not show the room's token")
    return False


def _refs(devices: Iterable[Device]) -> tuple[pr.MemberRef, ...]:
    return tuple(pr.MemberRef(userId=u, deviceId=d) for u, d in devices)


def _decode_key_package(data: bytes) -> KeyPackage:
    """A KeyPackage as MLSMessage(KeyPackage) (RFC 9420 §6) or bare."""
    try:
        body = MLSMessage.decode(data).body
        if isinstance(body, KeyPackage):
            return body
    except DecodeError:
        pass
    return KeyPackage.decode(data)


@dataclass(frozen=True, slots=True)
class _KeyPackageRecord:
    """Our KeyPackage and its private keys, as sealed in the store."""

    key_package: KeyPackage
    private: KeyPackagePrivate

    def encode(self) -> bytes:
        w = Writer()
        w.u8(1)
        w.opaque_v(self.key_package.encode())
        w.opaque8(self.private.init_private.expose())
        w.opaque8(self.private.encryption_private.expose())
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> _KeyPackageRecord:
        def read(r: Reader) -> _KeyPackageRecord:
            if r.u8() != 1:
                raise DecodeError("unknown KeyPackage record version")
            kp = KeyPackage.decode(r.opaque_v())
            init, enc = r.opaque8(), r.opaque8()
            private = KeyPackagePrivate(init_private=Secret(init), encryption_private=Secret(enc))
            return cls(kp, private)

        return decode(read, data)


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

    @property
    def epoch(self) -> int:
        return -1 if self.group is None else self.group.epoch

    def members(self) -> list[Device]:
        if self.group is None or self.removed:
            return []
        out = [device_of(m.credential) for m in self.group.members()]
        return [d for d in out if d is not None]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A commit to send: the bundle and the roster change it declares."""

    bundle: CommitBundle
    adds: tuple[Device, ...]
    removes: tuple[Device, ...]
    action: AuditAction = AuditAction.MEMBER_UPDATED


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitResult:
    room_id: str
    epoch: int
    server_seq: int


def _text_body(text: str) -> bytes:
    """A room text message's bytes, or a plain error for what cannot be one."""
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("the message is not valid UTF-8 text") from None
    if not body or len(body) > MAX_TEXT_BYTES:
        raise UsageError(f"a text message is 1-{MAX_TEXT_BYTES} bytes of UTF-8")
    return body


class RoomManager:
    """Every room of one device; owned by :class:`~sottovoce.client.Client`."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._store = client._store
        self._conn = client._conn
        self.username = client.username
        self.device_id = client.device_id
        self._rooms: dict[str, Room] = {}
        self._early: dict[str, list[RoomFrame]] = {}
        self._acks: dict[str, int] = {}
        self._after: list[Callable[[], None]] = []
        self._touched: set[str] = set()
        self._dirty: set[str] = set()
        self._progress = asyncio.Event()
        self._kp_lock = asyncio.Lock()
        self._no_rooms = False
        #: Commits of ours the delivery service refused for another one of the same epoch.
        self.commit_conflicts = 0
        #: Gaps (a frame of a later epoch than ours) filled by room.sync.
        self.catch_ups = 0
        #: stale_epoch answers per queued room message (bounded by ROOM_SEND_RETRIES).
        self._stale_sends: dict[str, int] = {}
        #: Queued room messages re-encrypted for a newer epoch after stale_epoch.
        self.stale_resends = 0
        #: Users whose directory lookup failed for want of a connection (this batch).
        self._unreachable: set[str] = set()
        #: Welcomes opened (and their members looked up) before the batch that stores them.
        self._welcomes: dict[str, tuple[Group, bytes] | SottovoceError] = {}
        #: keypackages.low notices received, and how many had come before an upload was
        #: sent that then succeeded (as for prekeys, client.py).
        self._kp_notices = 0
        self._kp_notices_answered = 0
        self._load()

    # --- identity -------------------------------------------------------------------

    @property
    def _signing_key(self) -> SigningKey:
        key = self._client.identity.mls_key
        if key is None:
            raise UsageError(
                "this device was made before rooms existed and has no MLS signature key "
                "in its certificate; create a new account to use rooms"
            )
        return key

    def _credential(self) -> Credential:
        return Credential.basic(identity_of(self.username, self.device_id))

    # --- join tokens: what members know of them (protocol/rooms.py, "Joining by token") ---

    def _remember_token(self, room_id: str, token: Secret) -> None:
        """Keep a room's token T, sealed: by its hash (to resolve an external commit's PSK
        id) and as the room's current token (to share with members we add). Call inside
        a store transaction."""
        h = pr.token_hash(pr.wire_token(token))
        self._store.put_secret(_token_record(room_id, h), token.expose())
        self._store.put_secret(_current_token_record(room_id), token.expose())

    def _current_token(self, room_id: str) -> Secret | None:
        raw = self._store.get_secret(_current_token_record(room_id))
        return None if not raw else Secret(raw)

    def _psk_lookup(self, room_id: str) -> PskLookup:
        """The room's external PSKs: the token whose hash an external commit names
        resolves to ``token_psk(T)``; an unknown one to nothing (MissingPsk)."""

        def lookup(psk: PreSharedKeyID) -> Secret | None:
            if psk.psktype != PSKType.EXTERNAL:
                return None
            raw = self._store.get_secret(_token_record(room_id, psk.psk_id))
            return None if raw is None else pr.token_psk(Secret(raw))

        return lookup

    def _group_config(self, room_id: str) -> GroupConfig:
        return GroupConfig(psk_lookup=self._psk_lookup(room_id))

    # --- loading --------------------------------------------------------------------

    def _load(self) -> None:
        for row in self._store.rooms():
            group = None
            if row.state is not None and not row.removed:
                group = _restore_group(row.state, self._psk_lookup(row.room_id))
            if group is None and not row.removed:
                continue  # damaged state: the room is unusable, the rest of the account is not
            self._rooms[row.room_id] = Room(
                room_id=row.room_id,
                label=row.label,
                group=group,
                last_seq=row.last_seq,
                removed=row.removed,
            )

    def discard_unflushed(self) -> None:
        """The batch transaction rolled back: forget in-memory group changes it made."""
        for room_id in self._touched:
            row = self._store.get_room(room_id)
            room = self._rooms.get(room_id)
            if row is None or room is None:
                self._rooms.pop(room_id, None)
                continue
            if row.state is not None:
                group = _restore_group(row.state, self._psk_lookup(room_id))
                if group is not None:
                    room.group = group
            room.last_seq = row.last_seq
            room.removed = row.removed
            room.label = row.label  # an invitation notice may have renamed it
            # Held frames were never acked: the resume after the rollback brings them again.
            room.catching_up, room.held_overflow = False, False
            room.held.clear()
        self._touched.clear()
        self._dirty.clear()
        self._acks.clear()
        self._after.clear()
        self._welcomes.clear()
        self._unreachable.clear()

    # --- queries --------------------------------------------------------------------

    def all(self) -> list[Room]:
        return list(self._rooms.values())

    def get(self, ref: str) -> Room:
        """A room by id, or by its local name (must be unambiguous)."""
        room = self._rooms.get(ref)
        if room is not None:
            return room
        matches = [self._rooms[r] for r in self._store.rooms_by_label(ref) if r in self._rooms]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise UsageError(f"more than one room is called '{ref}'; use its id")
        raise UsageError(f"no room '{ref}' on this device")

    def history(self, ref: str, limit: int = 50, before: int | None = None) -> list[StoredMessage]:
        return self._store.history(self.get(ref).room_id, limit=limit, before=before)

    def epoch_authenticator(self, ref: str) -> bytes:
        group = self._active(self.get(ref))
        return group.epoch_authenticator.expose()

    def media_keys(
        self, ref: str, keys: MediaKeyManager | None = None, *, suite: int = MEDIA_SUITE
    ) -> MediaKeyManager:
        """This device's SFrame keys for calls in the room, at the room's current epoch.

        Per-track, per-sender base keys come from the group's MLS exporter
        (:mod:`sottovoce.sframe.mls_keys` documents the derivation and the KID
        layout). Pass the manager back after every epoch change (a commit, a
        removal) to move it to the new epoch: it sends under the new keys at once
        and keeps the old receive keys for a short grace. A removed member gets a
        UsageError here and keeps only keys of epochs it belonged to.
        """
        group = self._active(self.get(ref))
        if keys is None:
            keys = MediaKeyManager(suite, group.own_leaf_index)
        if keys.current_epoch != group.epoch:
            keys.begin_epoch(
                group.epoch, group.export_secret, [m.index for m in group.members()]
            )
        return keys

    def _active(self, room: Room) -> Group:
        if room.group is None or room.removed or not room.group.is_active:
            raise UsageError(f"this device is no longer a member of {room.room_id}")
        return room.group

    # =========================================================================
    # KeyPackages
    # =========================================================================

    async def ensure_key_packages(self) -> None:
        """Upload the first batch and a last-resort KeyPackage, once per device."""
        if self._client.identity.mls_key is None or self._no_rooms:
            return
        async with self._kp_lock:
            if not self._store.flag("keypackages_uploaded"):
                try:
                    await self._upload_key_packages(CLIENT_KEY_PACKAGE_BATCH, last_resort=True)
                except ServerError as exc:
                    if exc.code == "unknown_event":
                        self._no_rooms = True  # a relay without rooms: 1:1 still works
                        return
                    raise
                self._store.set_flag("keypackages_uploaded")

    async def replenish(self) -> None:
        """``sottovoce.keypackages.low``: top up at once, unless the notice came before an
        upload that has succeeded since (it spoke of the stock before that upload)."""
        self._kp_notices += 1
        notice = self._kp_notices
        try:
            async with self._kp_lock:
                if self._kp_notices_answered >= notice:
                    return
                first = not self._store.flag("keypackages_uploaded")
                await self._upload_key_packages(CLIENT_KEY_PACKAGE_BATCH, last_resort=first)
                self._store.set_flag("keypackages_uploaded")
        except (SottovoceError, UsageError) as exc:
            self._client._emit(ErrorEvent(code=getattr(exc, "code", "error"), message=str(exc)))

    async def _upload_key_packages(self, count: int, *, last_resort: bool) -> None:
        key, cred, now = self._signing_key, self._credential(), now_ms()
        made: list[tuple[KeyPackage, KeyPackagePrivate, bool]] = []
        for i in range(count + (1 if last_resort else 0)):
            kp, priv = generate_key_package(SUITE, cred, key, secrets.token_bytes, now)
            made.append((kp, priv, last_resort and i == count))
        suite = self._active_suite()
        # The private halves are durable before anyone can claim the public ones.
        with self._store.transaction():
            for kp, priv, lr in made:
                self._store.add_key_package(
                    kp.ref(suite), _KeyPackageRecord(kp, priv).encode(), last_resort=lr, now=now
                )
        one_time = [MLSMessage(body=kp).encode() for kp, _, lr in made if not lr]
        lr_kp = next((kp for kp, _, lr in made if lr), None)
        notices = self._kp_notices
        await self._conn.request(
            pr.KeyPackagesUpload(
                keyPackages=tuple(one_time),
                lastResort=None if lr_kp is None else MLSMessage(body=lr_kp).encode(),
            ),
            frozenset({pr.KEYPACKAGES_STORED}),
            timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        self._kp_notices_answered = max(self._kp_notices_answered, notices)

    @staticmethod
    def _active_suite() -> Any:
        from sottovoce.crypto.suite import cipher_suite

        return cipher_suite(SUITE)

    async def _claim(self, username: str) -> list[tuple[str, KeyPackage]]:
        """One validated KeyPackage per device of ``username`` (checked against its certificate)."""
        await self._client._lookup(username)
        contact = self._client._sessions.contact(username)
        if contact is None:  # pragma: no cover - _lookup stores it or raises
            raise RemoteError("the directory did not return this user")
        _, data = await self._conn.request(
            pr.KeyPackagesClaim(username=username),
            frozenset({pr.KEYPACKAGE_BUNDLES}),
            timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        if data.get("username") != username:
            raise RemoteError("the server answered a claim for another user")
        raw = data.get("keyPackages")
        out: list[tuple[str, KeyPackage]] = []
        now = now_ms()
        for item in raw if isinstance(raw, list) else []:
            try:
                if not isinstance(item, dict):
                    raise RemoteError("bundle is not an object")
                device = req_id(item, "deviceId")
                kp = _decode_key_package(
                    req_b64(item, "keyPackage", max_bytes=MAX_KEY_PACKAGE_BYTES)
                )
                self._check_key_package(contact.username, device, kp, now)
            except (SottovoceError, ProtocolError) as exc:
                self._client._emit(
                    ErrorEvent(code="bad_key_package", message=f"KeyPackage refused: {exc}")
                )
                continue
            out.append((device, kp))
        return out

    def _check_key_package(self, user: str, device: str, kp: KeyPackage, now: int) -> None:
        """RFC 9420 §10.1 plus ours: the leaf is that device's, by its certificate."""
        validate_key_package(kp, cipher_suite_id=SUITE, now_ms=now)
        if kp.leaf_node.credential != Credential.basic(identity_of(user, device)):
            raise RemoteError("KeyPackage credential names another device")
        if not self._key_matches(user, device, kp.leaf_node.signature_key):
            raise RemoteError("KeyPackage signature key is not the device certificate's")

    def _key_matches(self, user: str, device: str, signature_key: bytes) -> bool:
        contact = self._client._sessions.contact(user)
        if contact is None or device in contact.revoked:
            return False
        cert = contact.certificates.get(device)
        return cert is not None and bool(cert.keys.mls_signature_key) and (
            cert.keys.mls_signature_key == signature_key
        )

    def _find_key_package(self, welcome: Welcome) -> tuple[bytes, _KeyPackageRecord] | None:
        for entry in welcome.secrets:
            found = self._store.get_key_package(entry.new_member)
            if found is not None:
                return entry.new_member, _KeyPackageRecord.decode(found[0])
        return None

    # =========================================================================
    # Creating and changing rooms
    # =========================================================================

    async def create_room(self, label: str) -> Room:
        """A new room with this device as its only member; ``label`` is this device's name
        for it (the server never sees it; :meth:`announce_invite` tells invitees)."""
        if not label or len(label.encode("utf-8")) > MAX_ROOM_NAME_BYTES:
            raise UsageError(f"a room name is 1-{MAX_ROOM_NAME_BYTES} bytes")
        group_id = secrets.token_bytes(GROUP_ID_BYTES)
        room_id = room_id_of(group_id)
        group = Group.create(
            SUITE,
            credential=self._credential(),
            signing_key=self._signing_key,
            rng=secrets.token_bytes,
            now_ms=now_ms(),
            group_id=group_id,
            config=self._group_config(room_id),
        )
        await self._conn.request(
            pr.RoomCreate(roomId=room_id, groupInfo=group.group_info()),
            frozenset({pr.ROOM_CREATED}),
            timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        room = Room(room_id=room_id, label=label, group=group)
        with self._store.transaction():
            self._store.add_room(room_id, label)
            self._persist(room)
        self._rooms[room_id] = room
        self._client._emit(RoomJoined(room_id=room_id, label=label, epoch=0))
        await self._append_audit(room, AuditAction.ROOM_CREATED, ())
        return room

    def rename(self, ref: str, label: str) -> None:
        room = self.get(ref)
        with self._store.transaction():
            self._store.set_room_label(room.room_id, label)
        room.label = label

    async def invite(self, ref: str, username: str) -> CommitResult | None:
        """Add every device of ``username`` (a commit with Adds and a Welcome)."""
        room = self.get(ref)
        claimed = await self._claim(username)
        if not claimed:
            raise RemoteError(f"'{username}' has no device with a usable KeyPackage")
        packages = dict(claimed)

        def build(group: Group) -> _Plan | None:
            present = set(room.members())
            todo = [(d, kp) for d, kp in packages.items() if (username, d) not in present]
            if not todo:
                return None
            bundle = group.add_members(
                [kp for _, kp in todo], rng=secrets.token_bytes, now_ms=now_ms()
            )
            adds = tuple((username, d) for d, _ in todo)
            return _Plan(bundle, adds, (), AuditAction.MEMBER_ADDED)

        result = await self._commit(room, build)
        if result is not None:
            await self._share_current_token(room)
        return result

    async def _share_current_token(self, room: Room) -> None:
        """Members added by a Welcome learn the room's token (to check later joiners).

        The add itself succeeded: a failure here is reported, not raised (until they are
        told, they refuse a joiner by token and rejoin, see "Recovery")."""
        token = self._current_token(room.room_id)
        if token is None:
            return
        try:
            await self._share_token(room, token)
        except (SottovoceError, UsageError) as exc:
            self._client._emit(
                ErrorEvent(
                    code=getattr(exc, "code", "error"),
                    message=f"room {room.room_id}: new members not told the join token: {exc}",
                )
            )

    async def remove(self, ref: str, username: str) -> CommitResult | None:
        """Remove every device of ``username`` from the room."""
        room = self.get(ref)
        if not any(u == username for u, _ in room.members()):
            raise UsageError(f"'{username}' is not a member of this room")
        return await self._commit(room, lambda g: self._remove_plan(room, g, username, None))

    async def remove_device(self, ref: str, username: str, device: str) -> CommitResult | None:
        room = self.get(ref)
        return await self._commit(room, lambda g: self._remove_plan(room, g, username, device))

    def _remove_plan(
        self,
        room: Room,
        group: Group,
        username: str,
        device: str | None,
        action: AuditAction = AuditAction.MEMBER_REMOVED,
    ) -> _Plan | None:
        leaves: list[int] = []
        gone: list[Device] = []
        for member in group.members():
            who = device_of(member.credential)
            if who is None or who[0] != username or (device is not None and who[1] != device):
                continue
            if who == (self.username, self.device_id):
                raise UsageError("a device cannot remove itself with a commit")
            leaves.append(member.index)
            gone.append(who)
        if not leaves:
            return None
        bundle = group.remove_members(leaves, rng=secrets.token_bytes, now_ms=now_ms())
        return _Plan(bundle, (), tuple(gone), action)

    async def self_update(self, ref: str) -> CommitResult | None:
        """Fresh keys on our direct path (an empty commit with a path, RFC 9420 §12.4)."""
        room = self.get(ref)

        def build(group: Group) -> _Plan:
            return _Plan(group.self_update(rng=secrets.token_bytes, now_ms=now_ms()), (), ())

        return await self._commit(room, build)

    async def _commit(
        self, room: Room, build: Callable[[Group], _Plan | None]
    ) -> CommitResult | None:
        """Send one commit; on commit_conflict process the winner, rebuild and retry."""
        for attempt in range(ROOM_COMMIT_RETRIES):
            async with room.lock:
                await self._fetch_audit(room)
                group = self._active(room)
                plan = build(group)
                if plan is None:
                    return None  # someone else already did it (e.g. removed a revoked device)
                epoch = group.epoch
                message_id, idem = new_id(), new_id()
                info = group.staged_group_info(plan.bundle.staged)
                staged = plan.bundle.staged
                audit = self._entry(
                    room,
                    plan.action,
                    plan.adds or plan.removes,
                    epoch=staged.epoch,
                    authenticator=staged.epoch_authenticator,
                    leaf=staged.committer,
                )
                request = pr.RoomCommit(
                    roomId=room.room_id,
                    epoch=epoch,
                    messageId=message_id,
                    idempotencyKey=idem,
                    commit=plan.bundle.commit,
                    welcome=plan.bundle.welcome,
                    adds=_refs(plan.adds),
                    removes=_refs(plan.removes),
                    groupInfo=info,
                    audit=audit,
                )
                room.inflight = message_id
                try:
                    reply = await self._request_retrying(request, pr.ROOM_COMMITTED)
                except ServerError as exc:
                    if room.inflight == message_id:
                        room.inflight = None
                        group.clear_pending_commit()
                    if exc.code != "commit_conflict" and not (
                        exc.retryable and exc.code in ("audit_conflict", "rate_limited")
                    ):
                        raise
                    if exc.code == "commit_conflict":
                        self.commit_conflicts += 1
                        target = exc.details.get("currentEpoch")
                        winning = exc.details.get("winningServerSeq")
                        await self._catch_up(
                            room,
                            epoch=target if isinstance(target, int) else epoch + 1,
                            seq=winning if isinstance(winning, int) else None,
                        )
                    await self._backoff(attempt, exc.retry_after_ms)
                    continue
                except BaseException:
                    if room.inflight == message_id:
                        room.inflight = None
                        group.clear_pending_commit()
                    raise
                seq = reply.get("serverSeq")
                if not isinstance(seq, int) or isinstance(seq, bool):
                    raise RemoteError("room.committed without a serverSeq")
                if audit is not None:
                    room.audit.append(audit)
                events: list[ClientEvent] = []
                with self._store.transaction():
                    self._merge_own(room, message_id, seq, events)
                self._client_emit_all(events)
                return CommitResult(room_id=room.room_id, epoch=room.epoch, server_seq=seq)
        raise ServerError(
            "commit_conflict", "lost too many commit races in a row; try again later",
            retryable=True,
        )

    async def _request_retrying(self, request: ev.ClientEvent, reply: str) -> dict[str, Any]:
        """A request that is safe to repeat (same messageId/idempotencyKey) over reconnects."""
        for attempt in range(3):
            try:
                _, data = await self._conn.request(
                    request, frozenset({reply}), timeout=ROOM_REQUEST_TIMEOUT_S
                )
                return data
            except NotConnected:
                if attempt == 2:
                    raise
                await self._conn.wait_up(ROOM_REQUEST_TIMEOUT_S)
        raise NotConnected("no answer")  # pragma: no cover - loop returns or raises

    async def _backoff(self, attempt: int, retry_after_ms: int) -> None:
        base = max(retry_after_ms / 1000, 0.005 * (2 ** min(attempt, 6)))
        await asyncio.sleep(base * (1 + random.random()))  # noqa: S311 - jitter, not crypto

    async def _catch_up(self, room: Room, *, epoch: int, seq: int | None = None) -> None:
        """Wait until the room reached ``epoch`` or processed frame ``seq`` (the winning
        commit); room.sync if that does not happen soon."""

        def there() -> bool:
            return room.epoch >= epoch or (seq is not None and room.last_seq >= seq)

        if await self._wait(there, CATCH_UP_WAIT_S):
            return
        await self.sync(room.room_id)
        await self._wait(there, CATCH_UP_WAIT_S)

    async def wait_until(self, done: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait (without polling) until ``done()`` holds after some batch of room frames."""
        return await self._wait(done, timeout)

    async def wait_epoch(self, ref: str, epoch: int, timeout: float = 10.0) -> Room:
        """Wait until the room (joined by then) is at ``epoch`` or later."""

        def reached() -> bool:
            room = self._rooms.get(ref)
            return room is not None and room.epoch >= epoch

        if not await self._wait(reached, timeout):
            have = self._rooms.get(ref)
            raise TimeoutError(f"room at epoch {have.epoch if have else None}, wanted {epoch}")
        return self._rooms[ref]

    async def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            progress = self._progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), remaining)
        return True

    async def sync(self, ref: str) -> None:
        """Fetch the room's frames after our position (room.sync) and play them in order."""
        room = self.get(ref)
        if room.catching_up:
            # A sync task runs already: wait for it.
            await self._wait(lambda: not room.catching_up, CATCH_UP_WAIT_S * 2)
            return
        room.catching_up = True
        try:
            await self._sync_room(room)
        except (SottovoceError, ProtocolError):
            room.catching_up = False

    def _merge_own(
        self, room: Room, message_id: str, seq: int, events: list[ClientEvent]
    ) -> None:
        """Our commit was accepted: merge it (once; our own frame may have done it)."""
        if room.inflight != message_id or room.group is None:
            return
        room.inflight = None
        staged = room.group.merge_pending_commit()
        # The position is not moved to ``seq``: frames before our commit (messages of
        # the old epoch) may still be queued; our own frame moves it when it comes.
        self._touched.add(room.room_id)
        self._persist(room, seq=room.last_seq)
        events.append(self._changed(room, staged, self.username, self.device_id))

    def _changed(
        self, room: Room, staged: StagedCommit, user: str, device: str
    ) -> RoomMembershipChanged:
        added = tuple(f"{d[0]}/{d[1]}" for m in staged.adds if (d := device_of(m.credential)))
        removed = tuple(
            f"{d[0]}/{d[1]}" for m in staged.removes if (d := device_of(m.credential))
        )
        return RoomMembershipChanged(
            room_id=room.room_id,
            epoch=staged.epoch,
            committer=f"{user}/{device}",
            added=added,
            removed=removed,
            self_removed=staged.self_removed,
        )

    def _persist(self, room: Room, *, seq: int | None = None) -> None:
        """Write the room's epoch, position and (when serializable) group state."""
        group = room.group
        state = None if group is None or room.removed else _group_state(group)
        self._store.update_room(
            room.room_id,
            epoch=room.epoch if group is not None else None,
            last_seq=seq,
            state=state,
            removed=room.removed,
        )
        if group is not None and not room.removed and group.is_active:
            self._store.put_epoch_authenticator(
                room.room_id, group.epoch, group.epoch_authenticator.expose()
            )

    def _client_emit_all(self, events: Iterable[ClientEvent]) -> None:
        for event in events:
            self._client._emit(event)

    # =========================================================================
    # Sending
    # =========================================================================

    async def send(self, ref: str, text: str) -> str:
        """Encrypt ``text`` once for the room and queue it in the durable outbox.

        Online, returns the messageId after the server's ack (``ServerError`` if it
        refuses); offline (or if the ack is slow), once the message is durably
        queued: the outbox goes out on every reconnect with the same messageId and
        idempotencyKey, as 1:1 sends do (``client.wait_sent`` waits for the ack).
        """
        return await self._send(self.get(ref), "text", _text_body(text), text)

    async def announce_invite(self, ref: str, username: str) -> str | None:
        """Tell the room, inside its encryption, that we invited ``username`` and under which
        name we know the room (:mod:`sottovoce.client.room_notice`); the invitee takes
        that name. ``None`` when this device's name for the room cannot be sent as one."""
        room = self.get(ref)
        if not valid_room_name(room.label):
            return None
        notice = InviteNotice(name=room.label, invited=username).encode()
        return await self._send(room, INVITE_CONTENT_TYPE, notice, notice.decode("utf-8"))

    async def _send(
        self, room: Room, content_type: str, body: bytes, text: str,
        *, token: Secret | None = None,
    ) -> str:
        """Queue one room message (``text`` is what the history shows of it); a control
        message sharing ``token`` keeps its body sealed for a re-encryption and the
        token as the room's, in the transaction that queues it."""
        message_id, idem, created = new_id(), new_id(), now_ms()
        async with room.lock:
            frame = self._encrypt_send(
                room, message_id=message_id, idempotency_key=idem, created_ms=created,
                content_type=content_type, body=body,
            )
            # mls/state.py: the state that consumed the generation is durable before
            # the ciphertext can leave, in the transaction that queues it.
            with self._store.transaction():
                self._store.add_message(
                    message_id=message_id,
                    peer=_control_peer(room.room_id) if token is not None else room.room_id,
                    sender=self.username,
                    sender_device=self.device_id,
                    outgoing=True,
                    status=DeliveryStatus.SENDING,
                    text=text,
                    content_type=content_type,
                    client_created_ms=created,
                    local_at_ms=created,
                    idempotency_key=idem,
                )
                if token is not None:
                    self._store.put_secret(_control_record(message_id), body)
                    self._remember_token(room.room_id, token)
                self._persist(room)  # the sender ratchet moved
                self._store.add_outbox(message_id, idem, frame)
        self._client._pump()  # offline: it goes out on the next connect
        if self._conn.is_up:
            with contextlib.suppress(NotConnected):
                await self._client.wait_sent(message_id, timeout=ROOM_REQUEST_TIMEOUT_S)
        return message_id

    def _encrypt_send(
        self, room: Room, *, message_id: str, idempotency_key: str, created_ms: int,
        content_type: str, body: bytes,
    ) -> str:
        """A room.send frame for the room's current epoch (consumes one MLS generation:
        persist the group before the frame leaves). Call holding ``room.lock``.

        The envelope says "text" whatever the payload holds: the server does not learn
        which messages are control messages."""
        group = self._active(room)
        payload = Payload(
            message_id=message_id,
            conversation_id=room.room_id,
            content_type=content_type,
            created_at_ms=created_ms,
            body=body,
        ).encode_padded()  # size buckets, as 1:1 (pairwise/padding.py)
        return pr.RoomSend(
            roomId=room.room_id,
            epoch=group.epoch,
            messageId=message_id,
            idempotencyKey=idempotency_key,
            contentType="text",
            clientCreatedAtMs=created_ms,
            ciphertext=group.encrypt_application(payload, rng=secrets.token_bytes),
        ).to_frame(request_id=message_id)

    def _body_of(self, stored: StoredMessage) -> bytes:
        """What a queued message carries, to encrypt it again for a newer epoch."""
        if stored.content_type == "system":
            body = self._store.get_secret(_control_record(stored.message_id))
            if body is None:
                raise UsageError("a queued control message lost its body")
            return body
        return stored.text.encode("utf-8")

    def on_stale_send(self, message_id: str, room_id: str, details: dict[str, Any]) -> None:
        """The server refused a queued room message as ``stale_epoch``: re-encrypt it
        for the new epoch once we are there, same messageId and idempotencyKey."""
        for done in [m for m in self._stale_sends if self._store.get_outbox(m) is None]:
            del self._stale_sends[done]  # acked or failed since
        tries = self._stale_sends.get(message_id, 0) + 1
        self._stale_sends[message_id] = tries
        if tries > ROOM_SEND_RETRIES:
            self._stale_sends.pop(message_id, None)
            self._client._fail(message_id, "stale_epoch", "the room kept changing epochs")
            return
        target = details.get("currentEpoch")
        self._spawn(
            self._resend_stale(message_id, room_id, target if isinstance(target, int) else None)
        )

    async def _resend_stale(self, message_id: str, room_id: str, target: int | None) -> None:
        room = self._rooms.get(room_id)
        item = self._store.get_outbox(message_id)
        if room is None or item is None:
            return
        try:
            refused = pr.RoomSend.from_data(ev.parse_frame(item.frame)[2])
            await self._catch_up(room, epoch=refused.epoch + 1 if target is None else target)
            async with room.lock:
                stored = self._store.get_message(message_id)
                item = self._store.get_outbox(message_id)
                if stored is None or item is None or stored.status is not DeliveryStatus.SENDING:
                    return  # acked or failed meanwhile
                queued = pr.RoomSend.from_data(ev.parse_frame(item.frame)[2])
                if queued.epoch >= self._active(room).epoch:
                    # Already for our epoch (we are not further yet, or another answer
                    # re-encrypted it): the same bytes again, no new generation.
                    frame = item.frame
                else:
                    frame = self._encrypt_send(
                        room,
                        message_id=message_id,
                        idempotency_key=queued.idempotencyKey,
                        created_ms=queued.clientCreatedAtMs,
                        content_type=stored.content_type,
                        body=self._body_of(stored),
                    )
                    with self._store.transaction():
                        self._persist(room)
                        self._store.replace_outbox(message_id, frame)
                    self.stale_resends += 1
                self._conn.send_frame(frame)
        except (SottovoceError, UsageError, ProtocolError) as exc:
            self._client._fail(message_id, getattr(exc, "code", "error"), str(exc))

    # =========================================================================
    # Tokens
    # =========================================================================

    async def create_token(self, ref: str) -> str:
        """Make (or rotate) the room's join token; shown once, the server keeps a hash."""
        room = self.get(ref)
        self._active(room)
        return await self._token_change(room, rotate=False)

    async def rotate_token(self, ref: str) -> str:
        room = self.get(ref)
        self._active(room)
        return await self._token_change(room, rotate=True)

    async def _token_change(self, room: Room, *, rotate: bool) -> str:
        token = new_token()
        secret = Secret(token.encode("ascii"))
        # The members learn the token first (so they can check a joiner's PSK before any
        # joiner can use it: its commit comes after this message in the room's order),
        # then the server learns its hash (protocol/rooms.py, "Joining by token").
        await self._share_token(room, secret)
        action = AuditAction.TOKEN_ROTATED if rotate else AuditAction.TOKEN_CREATED
        await self._with_audit(
            room,
            action,
            lambda entry: pr.RoomTokenSet(
                roomId=room.room_id, token=pr.wire_token(secret), audit=entry
            ),
            pr.ROOM_TOKEN_UPDATED,
        )
        return token

    async def _share_token(self, room: Room, token: Secret) -> None:
        """Tell the room's members the join token, inside the group (never to the server)."""
        message_id = await self._send(
            room, "system", _token_control(token), TOKEN_SHARED_TEXT, token=token
        )
        stored = self._store.get_message(message_id)
        if stored is None or stored.status is not DeliveryStatus.SENT:
            raise NotConnected("the members could not be told the new token; try again")

    async def revoke_token(self, ref: str) -> None:
        room = self.get(ref)
        self._active(room)
        await self._with_audit(
            room,
            AuditAction.TOKEN_REVOKED,
            lambda entry: pr.RoomTokenRevoke(roomId=room.room_id, audit=entry),
            pr.ROOM_TOKEN_UPDATED,
        )
        with self._store.transaction():  # nothing left to tell members we add
            self._store.put_secret(_current_token_record(room.room_id), b"")

    async def record_event(self, ref: str, action: AuditAction) -> int:
        """Append a call start/stop or recording on/off entry; returns its index."""
        if action not in (
            AuditAction.CALL_STARTED,
            AuditAction.CALL_STOPPED,
            AuditAction.RECORDING_ON,
            AuditAction.RECORDING_OFF,
        ):
            raise UsageError("only call and recording events are appended by themselves")
        room = self.get(ref)
        self._active(room)
        return await self._append_audit(room, action, ())

    # =========================================================================
    # Audit trail
    # =========================================================================

    def _entry(
        self,
        room: Room,
        action: AuditAction,
        subjects: Iterable[Device],
        *,
        epoch: int | None = None,
        authenticator: Secret | None = None,
        leaf: int | None = None,
    ) -> bytes | None:
        """The next entry after our copy of the chain's head, signed by us."""
        group = self._active(room)
        auth = authenticator if authenticator is not None else group.epoch_authenticator
        entry = make_entry(
            signing_key=self._signing_key,
            suite=SUITE,
            prev=room.audit[-1] if room.audit else None,
            room_id=room.room_id,
            epoch=group.epoch if epoch is None else epoch,
            epoch_authenticator=auth,
            action=action,
            actor_user_id=self.username,
            actor_device_id=self.device_id,
            actor_leaf_index=group.own_leaf_index if leaf is None else leaf,
            now_ms=now_ms(),
            subjects=tuple(subjects),
        )
        return entry.encode()

    async def _fetch_audit(self, room: Room) -> list[bytes]:
        """Bring our copy of the chain up to the server's head (members only)."""
        while True:
            _, data = await self._conn.request(
                pr.AuditGet(roomId=room.room_id, afterIndex=len(room.audit) - 1),
                frozenset({pr.ROOM_AUDIT}),
                timeout=ROOM_REQUEST_TIMEOUT_S,
            )
            raw = data.get("entries")
            batch = [
                req_b64({"e": e}, "e", max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES)
                for e in (raw if isinstance(raw, list) else [])
            ]
            room.audit.extend(batch)
            # The server cuts a reply by bytes as well as by count and says so.
            if not batch or (data.get("more") is not True and len(batch) < ROOM_AUDIT_BATCH):
                return room.audit

    async def _with_audit(
        self,
        room: Room,
        action: AuditAction,
        make: Callable[[bytes | None], ev.ClientEvent],
        reply: str,
    ) -> dict[str, Any]:
        """A request carrying an audit entry; audit_conflict → refetch the head, retry."""
        for attempt in range(ROOM_COMMIT_RETRIES):
            async with room.lock:
                await self._fetch_audit(room)
                entry = self._entry(room, action, ())
                try:
                    data = await self._request_retrying(make(entry), reply)
                except ServerError as exc:
                    if exc.code != "audit_conflict":
                        raise
                    await self._backoff(attempt, exc.retry_after_ms)
                    continue
                if entry is not None:
                    room.audit.append(entry)
                return data
        raise ServerError("audit_conflict", "the audit chain kept moving", retryable=True)

    async def _append_audit(
        self, room: Room, action: AuditAction, subjects: tuple[Device, ...]
    ) -> int:
        for attempt in range(ROOM_COMMIT_RETRIES):
            async with room.lock:
                await self._fetch_audit(room)
                entry = self._entry(room, action, subjects)
                if entry is None:  # pragma: no cover - _entry always builds one
                    return -1
                try:
                    data = await self._request_retrying(
                        pr.AuditAppend(roomId=room.room_id, entry=entry), pr.ROOM_AUDIT_APPENDED
                    )
                except ServerError as exc:
                    if exc.code != "audit_conflict":
                        raise
                    await self._backoff(attempt, exc.retry_after_ms)
                    continue
                room.audit.append(entry)
                index = data.get("index")
                return index if isinstance(index, int) else len(room.audit) - 1
        raise ServerError("audit_conflict", "the audit chain kept moving", retryable=True)

    async def audit(self, ref: str) -> AuditTrail:
        """Fetch and verify the room's whole audit trail. Checks links, signatures, the
        binding to every epoch authenticator this member saw, and that the chain still
        holds the head this member verified before. A broken chain raises
        ``AuditChainError`` naming the entry; an entry in it that is not authentic is
        reported in ``rejected`` and skipped (protocol/audit.py states the rule)."""
        room = self.get(ref)
        room.audit = []
        entries = await self._fetch_audit(room)
        return self.verify_audit(room.room_id, entries)

    def verify_audit(self, room_id: str, entries: list[bytes]) -> AuditTrail:
        """Offline verification of ``entries`` with what this device has kept."""
        known = self._store.get_secret(f"audit-head:{room_id}")
        known_head = None
        if known is not None and len(known) == 40:
            known_head = (int.from_bytes(known[:8], "big"), known[8:])
        verified = verify_trail(
            entries,
            room_id=room_id,
            authenticators=self._store.epoch_authenticators(room_id),
            known_head=known_head,
            # From the first epoch this device knows on, every entry's binding must
            # check: otherwise a server could sign an entry with its own key and claim
            # an epoch we never saw.
            strict=True,
        )
        head = chain_head(entries)
        if head is not None:
            with self._store.transaction():
                self._store.put_secret(
                    f"audit-head:{room_id}", head[0].to_bytes(8, "big") + head[1]
                )
        return verified

    async def join_with_token(self, token: str, label: str | None = None) -> Room:
        """Join by external commit (RFC 9420 §12.4.3.2) from the GroupInfo the token unlocks.

        The commit injects the token's PSK (``token_psk``, named by the hash the server
        keeps), which the members check: knowing the wire token or its hash is not enough.
        """
        secret_token = pr.req_token({"token": token})
        wire = pr.wire_token(secret_token)
        for attempt in range(ROOM_COMMIT_RETRIES):
            _, data = await self._conn.request(
                pr.GroupInfoGet(token=wire),
                frozenset({pr.ROOM_GROUPINFO}),
                timeout=ROOM_REQUEST_TIMEOUT_S,
            )
            epoch = req_int(data, "epoch")
            room_id = pr.req_room_id(data)
            info = req_b64(data, "groupInfo", max_bytes=MAX_ROOM_GROUP_INFO_BYTES)
            with self._store.transaction():
                self._remember_token(room_id, secret_token)
            psk = PreSharedKeyID.external(
                pr.token_hash(wire), secrets.token_bytes(self._active_suite().nh)
            )
            join = Group.join_by_external_commit(
                info,
                credential=self._credential(),
                signing_key=self._signing_key,
                rng=secrets.token_bytes,
                now_ms=now_ms(),
                psks=[psk],
                config=self._group_config(room_id),
            )
            group = join.group
            if room_id_of(group.group_id) != room_id or group.epoch != epoch + 1:
                raise RemoteError("the GroupInfo is for another room or epoch")
            message_id = new_id()
            request = pr.RoomCommit(
                roomId=room_id,
                epoch=epoch,
                messageId=message_id,
                idempotencyKey=new_id(),
                commit=join.commit,
                adds=_refs([(self.username, self.device_id)]),
                groupInfo=group.group_info(),
                audit=None,
                token=wire,
            )
            try:
                reply = await self._request_retrying(request, pr.ROOM_COMMITTED)
            except ServerError as exc:
                if exc.code != "commit_conflict":
                    raise
                await self._backoff(attempt, exc.retry_after_ms)
                continue
            seq = req_int(reply, "serverSeq")
            room = Room(room_id=room_id, label=label or room_id, group=group, last_seq=seq)
            events: list[ClientEvent] = [
                RoomJoined(room_id=room_id, label=room.label, epoch=group.epoch)
            ]
            with self._store.transaction():
                self._join(room, events)
            self._client_emit_all(events)
            self._after_batch_notify()
            # A non-member cannot read the chain head, so the joiner appends its entry
            # right after the join (bound to the epoch its commit created).
            with contextlib.suppress(ServerError):
                await self._append_audit(room, AuditAction.MEMBER_JOINED, ())
            return room
        raise ServerError("commit_conflict", "the room kept changing; try again", retryable=True)

    async def request_join(self, token: str) -> str:
        """Join by request: the members (any one online) answer with an Add and a Welcome.

        Returns the room id; the room appears (``RoomJoined``) when the Welcome arrives.
        """
        secret_token = pr.req_token({"token": token})
        kp, priv = generate_key_package(
            SUITE, self._credential(), self._signing_key, secrets.token_bytes, now_ms()
        )
        with self._store.transaction():  # the private half first: the Welcome needs it
            self._store.add_key_package(
                kp.ref(self._active_suite()),
                _KeyPackageRecord(kp, priv).encode(),
                last_resort=False,
                now=now_ms(),
            )
        _, data = await self._conn.request(
            pr.JoinRequest(
                token=pr.wire_token(secret_token), keyPackage=MLSMessage(body=kp).encode()
            ),
            frozenset({pr.ROOM_JOIN_REQUESTED}),
            timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        room_id = pr.req_room_id(data)
        with self._store.transaction():  # to check later joiners' PSK once we are in
            self._remember_token(room_id, secret_token)
        return room_id

    def _join(self, room: Room, events: list[ClientEvent]) -> None:
        """Store a room we just joined and play the frames that came before we knew it."""
        old = self._rooms.get(room.room_id)
        if old is not None:
            room.label = old.label
            room.lock = old.lock
        if not self._store.add_room(room.room_id, room.label):
            self._store.update_room(room.room_id, removed=False)
        self._rooms[room.room_id] = room
        self._touched.add(room.room_id)
        self._persist(room, seq=room.last_seq)
        for frame in self._early.pop(room.room_id, []):
            self._apply(room, frame, events)

    # =========================================================================
    # Receiving (inside the client's batch transaction; no awaits)
    # =========================================================================

    async def prepare(
        self, frames: list[dict[str, Any]], welcomes: Iterable[ev.Envelope] = ()
    ) -> None:
        """Before a batch: look up users a commit adds whose devices we do not know,
        and open each Welcome to look up its members (checked in the batch)."""
        wanted: set[str] = set()
        for envelope in welcomes:
            for member_user, member_device in self._prepare_welcome(envelope):
                known = self._client._sessions.contact(member_user)
                if known is None or (
                    member_device not in known.certificates
                    and member_device not in known.revoked
                ):
                    wanted.add(member_user)
        for data in frames:
            env = data.get("envelope")
            adds = env.get("adds") if isinstance(env, dict) else None
            for item in adds if isinstance(adds, list) else []:
                user = item.get("userId") if isinstance(item, dict) else None
                device = item.get("deviceId") if isinstance(item, dict) else None
                if not isinstance(user, str) or not isinstance(device, str):
                    continue
                contact = self._client._sessions.contact(user)
                if contact is None or device not in contact.certificates:
                    wanted.add(user)
        for user in sorted(wanted):  # one lookup per user, only when not known yet
            try:
                await self._client._lookup(user)
            except NotConnected:
                self._unreachable.add(user)
            except (SottovoceError, ProtocolError):
                pass

    def _prepare_welcome(self, envelope: ev.Envelope) -> list[Device]:
        """Open a Welcome for us (cached for the batch); the member devices it names."""
        if envelope.messageId in self._welcomes:
            return []
        try:
            opened = self._open_welcome(envelope.ciphertext, envelope.conversationId)
        except SottovoceError as exc:
            self._welcomes[envelope.messageId] = exc  # the batch reports it
            return []
        except UsageError:
            return []
        self._welcomes[envelope.messageId] = opened
        others = (device_of(m.credential) for m in opened[0].members())
        return [d for d in others if d is not None and d != (self.username, self.device_id)]

    def _open_welcome(self, data: bytes, room_id: str) -> tuple[Group, bytes]:
        """Join the group of a Welcome for one of our KeyPackages (nothing is stored)."""
        welcome = MLSMessage.decode(data).body
        if not isinstance(welcome, Welcome):
            raise RemoteError("room welcome is not an MLS Welcome")
        found = self._find_key_package(welcome)
        if found is None:
            raise RemoteError("the Welcome is for none of our KeyPackages")
        ref, record = found
        group = Group.join_from_welcome(
            welcome,
            record.key_package,
            record.private,
            signing_key=self._signing_key,
            now_ms=now_ms(),
            config=self._group_config(room_id),
        )
        return group, ref

    def _check_members(self, group: Group) -> None:
        """Every member leaf of a group we join must be its device's, by the directory.

        The Welcome's tree is signed by the member who added us, not by the members
        it lists: a dishonest (or compromised) member could have put a leaf with
        someone else's name and its own key. Each leaf's ``user/device`` credential
        must carry the signature key of that device's certificate. A device the
        directory lists as revoked has no valid certificate left; it is accepted
        (it can no longer connect, and the members remove it on the server's
        removeRequest), any other unknown device or key refuses the join.
        """
        own = self._signing_key.verify_key.data
        for member in group.members():
            who = device_of(member.credential)
            if who is None:
                raise UnverifiedMember(f"member leaf {member.index} has no user/device name")
            user, device = who
            if who == (self.username, self.device_id):
                if member.signature_key != own:
                    raise UnverifiedMember("our own leaf in the Welcome is not ours")
                continue
            contact = self._client._sessions.contact(user)
            if contact is None and user in self._unreachable:
                # Not a verdict: fail the batch (nothing acked), the resume retries it.
                raise NotConnected(f"could not look up room member '{user}'")
            if contact is None:
                raise UnverifiedMember(f"member {user}/{device} is not in the directory")
            if device in contact.revoked and device not in contact.certificates:
                continue
            if not self._key_matches(user, device, member.signature_key):
                raise UnverifiedMember(
                    f"member {user}/{device}: its signature key is not its device certificate's"
                )

    def accept_frame(self, data: dict[str, Any], events: list[ClientEvent]) -> None:
        """One ``sottovoce.room.frame``."""
        try:
            frame = RoomFrame.from_wire(data.get("envelope"))
        except ProtocolError:
            events.append(ErrorEvent(code="bad_frame", message="malformed room frame skipped"))
            return
        room = self._rooms.get(frame.room_id)
        if room is None:
            early = self._early.setdefault(frame.room_id, [])
            if len(early) < ROOM_EARLY_FRAMES:
                early.append(frame)
            return
        self._apply(room, frame, events)

    def accept_inbox(
        self, inbox_seq: int, envelope: ev.Envelope, data: dict[str, Any], events: list[ClientEvent]
    ) -> None:
        """An inbox envelope of a room (a Welcome for us)."""
        try:
            frame = RoomFrame.from_wire(data.get("envelope"))
        except ProtocolError:
            events.append(ErrorEvent(code="bad_frame", message="malformed room welcome skipped"))
            return
        if frame.kind != "welcome":
            events.append(ErrorEvent(code="bad_frame", message="unexpected room inbox frame"))
            return
        self._accept_welcome(frame, events)

    def _accept_welcome(self, frame: RoomFrame, events: list[ClientEvent]) -> None:
        room = self._rooms.get(frame.room_id)
        if room is not None and not room.removed and room.last_seq >= frame.server_seq:
            return  # replay of a Welcome we already used
        try:
            opened = self._welcomes.pop(frame.message_id, None)
            if isinstance(opened, SottovoceError):
                raise opened
            if opened is None:
                opened = self._open_welcome(frame.ciphertext, frame.room_id)
            group, ref = opened
            if room_id_of(group.group_id) != frame.room_id or group.epoch != frame.epoch:
                raise RemoteError("the Welcome is for another room or epoch")
            self._check_members(group)
        except NotConnected:
            raise
        except (SottovoceError, UsageError) as exc:
            events.append(
                ErrorEvent(
                    code=getattr(exc, "code", "bad_welcome"),
                    message=f"refused to join room {frame.room_id}: {exc}",
                    message_id=frame.message_id,
                )
            )
            return
        self._store.delete_key_package(ref)  # one-time keys are used once (last resort stays)
        new = Room(
            room_id=frame.room_id, label=frame.room_id, group=group, last_seq=frame.server_seq
        )
        events.append(RoomJoined(room_id=frame.room_id, label=new.label, epoch=group.epoch))
        self._join(new, events)

    def _apply(self, room: Room, frame: RoomFrame, events: list[ClientEvent]) -> None:
        if frame.server_seq <= room.last_seq:
            return  # replayed or already covered (e.g. before our Welcome)
        if room.recovering:
            self._hold_for_rejoin(room, frame)
            return
        if room.catching_up or self._is_gap(room, frame):
            self._hold(room, frame)
            return
        self._apply_now(room, frame, events)

    def _apply_now(self, room: Room, frame: RoomFrame, events: list[ClientEvent]) -> None:
        """Process one frame (the next one in serverSeq order) and move the position."""
        self._touched.add(room.room_id)
        group = room.group
        if (
            frame.kind in ("commit", "message")
            and group is not None and group.is_active and not room.removed
            and frame.epoch > group.epoch
        ):
            # Nothing fills the gap (a complete sync did not): the room is in an epoch
            # we never entered. Rejoin rather than fail every later frame.
            self._start_recovery(room, f"the room is at epoch {frame.epoch}, we at {group.epoch}")
            self._hold_for_rejoin(room, frame)
            return
        if frame.kind == "commit":
            self._apply_commit(room, frame, events)
        elif frame.kind == "message":
            self._apply_message(room, frame, events)
        elif frame.kind == "notice":
            self._apply_notice(room, frame)
        room.last_seq = frame.server_seq
        self._dirty.add(room.room_id)
        self._acks[room.room_id] = frame.server_seq

    def _is_gap(self, room: Room, frame: RoomFrame) -> bool:
        """A frame is missing before this one: a commit or message of a later epoch
        than ours (a commit is missing), or a serverSeq past the next one (a room's
        serverSeqs are contiguous and every member gets every one from its join on,
        so any frame, even one of our own epoch, was lost)."""
        group = room.group
        if group is None or room.removed or not group.is_active:
            return False
        if frame.server_seq > room.last_seq + 1:
            return True
        return frame.kind in ("commit", "message") and frame.epoch > group.epoch

    def _hold(self, room: Room, frame: RoomFrame) -> None:
        """Keep ``frame`` until room.sync filled the gap (see :meth:`accept_synced`)."""
        self._touched.add(room.room_id)
        if frame.server_seq not in room.held:
            if len(room.held) >= ROOM_EARLY_FRAMES:
                room.held_overflow = True  # not acked: the next sync round fetches it again
            else:
                room.held[frame.server_seq] = frame
        if not room.catching_up:
            room.catching_up = True
            self.catch_ups += 1
            self._after.append(lambda: self._spawn(self._fill_gap(room)))

    def accept_synced(self, mark: SyncedMark, events: list[ClientEvent]) -> None:
        """Every frame of one room.sync round was accepted: play the held ones in order.

        If the sync did not reach the room's latest frame (it sends at most
        ROOM_SYNC_BATCH), only frames up to ``up_to`` play and the sync task asks
        again from there; frames past it may have holes (live ones held meanwhile).
        """
        room = self._rooms.get(mark.room_id)
        if room is None:
            return
        room.sync_marks += 1
        if not room.catching_up:
            return
        self._touched.add(room.room_id)
        complete = mark.up_to >= mark.latest and not room.held_overflow
        room.held_overflow = False
        for seq in sorted(room.held):
            if not complete and seq > mark.up_to:
                break
            frame = room.held.pop(seq)
            if seq <= room.last_seq:
                continue  # the same frame live and by sync
            if self._is_gap(room, frame) and not complete:
                room.held[seq] = frame
                break
            # After a complete sync a remaining gap cannot be filled (the commit was
            # refused): the frame is processed as before and reports its error.
            self._apply_now(room, frame, events)
        if complete:
            room.held.clear()
            room.catching_up = False

    async def _fill_gap(self, room: Room) -> None:
        """The sync task of a room in catch-up: room.sync rounds until the gap is gone."""
        try:
            await self._sync_room(room)
        except (SottovoceError, UsageError, ProtocolError) as exc:
            self._client._emit(
                ErrorEvent(
                    code=getattr(exc, "code", "room_sync_failed"),
                    message=f"room {room.room_id}: catching up failed: {exc}",
                )
            )

    async def _sync_room(self, room: Room) -> None:
        """room.sync from our position, round after round, until caught up.

        Each round's frames arrive as room frames (held, since the room is
        catching up); a :class:`SyncedMark` queued behind them plays them.
        """
        try:
            await self._sync_rounds(room)
        except Exception:
            # Give up for now: held frames were never acked, so the next resume
            # replays them, and the next frame of a later epoch starts over.
            room.held.clear()
            room.catching_up = room.held_overflow = False
            raise

    async def _sync_rounds(self, room: Room) -> None:
        rounds = 0
        while room.catching_up:
            rounds += 1
            if rounds > ROOM_SYNC_ROUNDS:
                raise RemoteError("room.sync made no progress")
            before, marks = room.last_seq, room.sync_marks
            try:
                _, data = await self._conn.request(
                    pr.RoomSync(roomId=room.room_id, afterServerSeq=before),
                    frozenset({pr.ROOM_SYNCED}),
                    timeout=ROOM_REQUEST_TIMEOUT_S,
                )
            except NotConnected:
                await self._conn.wait_up(ROOM_REQUEST_TIMEOUT_S)
                continue
            up_to = req_int(data, "upToServerSeq")
            latest = data.get("latestServerSeq")
            if not isinstance(latest, int) or isinstance(latest, bool) or latest < up_to:
                latest = up_to  # a relay without latestServerSeq: one round is all
            self._client._queue_room_item(
                SyncedMark(room_id=room.room_id, up_to=up_to, latest=latest)
            )
            await self._wait(_marked_after(room, marks), ROOM_REQUEST_TIMEOUT_S)
            if room.last_seq > before:
                rounds = 0  # progress: keep going as long as it takes

    # =========================================================================
    # Recovery: a member that cannot follow a commit rejoins (never wedged for good)
    # =========================================================================
    #
    #   commit refused (unverifiable, wrong PSK, ...)  ─┐   or a frame of an epoch we
    #   and the server took it: the room moved on       ├── never entered, after a
    #                                                   │   complete room.sync
    #                                                   ▼
    #   recovering: hold the room's frames ──► groupinfo.get {roomId} (members only)
    #     ──► external commit removing our old leaf (RFC 9420 §12.2 resync), no token
    #     ──► room.commit (roster unchanged; the server checks it like any external
    #         commit) ──► commit_conflict: again on the newer GroupInfo
    #     ──► our group = the new one, position = our commit; held frames after it play
    #     ──► commit a Remove of every device the refused commit added ──► RoomRecovered
    #
    # Frames between the last one we read and our rejoin stay unreadable to us (their
    # epochs' keys were never ours); the event says how many.

    def _hold_for_rejoin(self, room: Room, frame: RoomFrame) -> None:
        self._touched.add(room.room_id)
        if frame.server_seq not in room.held and len(room.held) < ROOM_EARLY_FRAMES:
            room.held[frame.server_seq] = frame  # more: not acked, room.sync brings them

    def _start_recovery(self, room: Room, reason: str, refused: Iterable[Device] = ()) -> None:
        """Rejoin ``room`` after this batch (once at a time, ROOM_RECOVERIES per session)."""
        me = (self.username, self.device_id)
        room.refused.update(d for d in refused if d != me)
        if room.recovering or room.removed or room.recoveries >= ROOM_RECOVERIES:
            return
        room.recovering = True
        room.recoveries += 1
        self._after.append(lambda: self._spawn(self._recover(room, reason)))

    async def _recover(self, room: Room, reason: str) -> None:
        try:
            rejoined = await self._rejoin(room)
        except (SottovoceError, UsageError, ProtocolError) as exc:
            # Held frames were never acked: the next resume brings them, and the next
            # frame we cannot follow starts over (up to ROOM_RECOVERIES).
            room.recovering = False
            room.held.clear()
            self._client._emit(
                ErrorEvent(
                    code=getattr(exc, "code", "room_recovery_failed"),
                    message=f"room {room.room_id}: {reason}; rejoining failed: {exc}",
                )
            )
            return
        if rejoined is None:
            return  # the server says we are no longer a member: nothing to rejoin
        removed: list[str] = []
        for user, device in sorted(room.refused):
            if (user, device) not in set(room.members()):
                continue
            try:
                done = await self._commit(
                    room, partial(self._remove_plan, room, username=user, device=device)
                )
            except (SottovoceError, UsageError) as exc:
                self._client._emit(
                    ErrorEvent(
                        code=getattr(exc, "code", "error"),
                        message=f"room {room.room_id}: could not remove {user}/{device}: {exc}",
                    )
                )
                continue
            if done is not None:
                removed.append(f"{user}/{device}")
        room.refused.clear()
        skipped = rejoined
        self._client._emit(
            RoomRecovered(
                code="room_recovered",
                message=(
                    f"room {room.room_id}: {reason}; this device rejoined at epoch "
                    f"{room.epoch}" + (f", {skipped} earlier frame(s) stay unreadable"
                                       if skipped else "")
                    + (f", removed {', '.join(removed)}" if removed else "")
                ),
                room_id=room.room_id,
                epoch=room.epoch,
                skipped=skipped,
                removed=tuple(removed),
            )
        )

    async def _rejoin(self, room: Room) -> int | None:
        """Rejoin by an external commit on the room's current GroupInfo; returns how many
        frames we skip (``None`` if we are no longer a member)."""
        async with room.lock:
            for attempt in range(ROOM_COMMIT_RETRIES):
                try:
                    _, data = await self._conn.request(
                        pr.GroupInfoGet(roomId=room.room_id),
                        frozenset({pr.ROOM_GROUPINFO}),
                        timeout=ROOM_REQUEST_TIMEOUT_S,
                    )
                except ServerError as exc:
                    if exc.code != "not_member":
                        raise
                    self._left(room)
                    return None
                epoch = req_int(data, "epoch")
                info = req_b64(data, "groupInfo", max_bytes=MAX_ROOM_GROUP_INFO_BYTES)
                old = self._own_leaf_in(info)
                join = Group.join_by_external_commit(
                    info,
                    credential=self._credential(),
                    signing_key=self._signing_key,
                    rng=secrets.token_bytes,
                    now_ms=now_ms(),
                    remove_leaf=old,
                    config=self._group_config(room.room_id),
                )
                if room_id_of(join.group.group_id) != room.room_id or (
                    join.group.epoch != epoch + 1
                ):
                    raise RemoteError("the GroupInfo is for another room or epoch")
                request = pr.RoomCommit(
                    roomId=room.room_id,
                    epoch=epoch,
                    messageId=new_id(),
                    idempotencyKey=new_id(),
                    commit=join.commit,
                    groupInfo=join.group.group_info(),
                )
                try:
                    reply = await self._request_retrying(request, pr.ROOM_COMMITTED)
                except ServerError as exc:
                    if exc.code != "commit_conflict":
                        raise
                    await self._backoff(attempt, exc.retry_after_ms)
                    continue
                return self._rejoined(room, join.group, req_int(reply, "serverSeq"))
        raise ServerError("commit_conflict", "the room kept changing; try again", retryable=True)

    def _own_leaf_in(self, group_info: bytes) -> int:
        """Our leaf in a GroupInfo's tree (the one a resync removes)."""
        view = check_group_info(group_info)
        mine = self._credential()
        for index, leaf in enumerate(view.leaves):
            if leaf is not None and leaf.credential == mine:
                return index
        raise RemoteError("this device is not in the room's group any more")

    def _rejoined(self, room: Room, group: Group, seq: int) -> int:
        """Our resync commit is frame ``seq``: continue from there with ``group``."""
        skipped = max(0, seq - room.last_seq - 1)
        events: list[ClientEvent] = []
        with self._store.transaction():
            room.group, room.last_seq = group, seq
            room.recovering = room.catching_up = room.held_overflow = False
            held, room.held = sorted(room.held.items()), {}
            self._touched.add(room.room_id)
            self._persist(room, seq=seq)
            self._acks[room.room_id] = seq
            for at, frame in held:
                if at > seq:
                    self._apply(room, frame, events)
        self._client_emit_all(events)
        self._after_batch_notify()
        return skipped

    def _left(self, room: Room) -> None:
        """The server no longer counts us in the room (a commit we could not read removed
        us): the room is read-only history now."""
        room.removed, room.recovering = True, False
        room.held.clear()
        with self._store.transaction():
            self._persist(room)
        self._client._emit(
            RoomMembershipChanged(
                room_id=room.room_id, epoch=room.epoch, committer="", self_removed=True
            )
        )

    def _apply_commit(self, room: Room, frame: RoomFrame, events: list[ClientEvent]) -> None:
        group = room.group
        own = (frame.sender_user, frame.sender_device) == (self.username, self.device_id)
        if frame.message_id == room.inflight or (
            # Sent before a restart: the saved state still holds it as pending, and the
            # server authenticated the sender device, so this commit is that one.
            own and group is not None and group.pending_commit is not None
            and frame.epoch == group.epoch and room.inflight is None
        ):
            room.inflight = frame.message_id
            self._merge_own(room, frame.message_id, frame.server_seq, events)
            return
        if group is None or room.removed or not group.is_active:
            return
        if frame.epoch < group.epoch:
            # One commit per epoch: ours (merged on room.committed before its frame
            # came back) or one we processed already.
            return
        resync = False
        try:
            processed = group.process_message(frame.ciphertext, now_ms=now_ms())
            staged = processed.content
            if not isinstance(staged, StagedCommit):
                raise RemoteError("a commit frame holds no commit")
            joiner = None
            if staged.external:
                # RFC 9420 §12.4.3.2: the joiner is the committer, not an Add.
                joiner = group_member_after(staged, processed.credential)
                resync = _check_external_join(staged, *joiner[0])
            self._check_declared(staged, frame, joiner, resync)
        except NotConnected:
            raise  # not a verdict: fail the batch (nothing acked), the resume retries it
        except SottovoceError as exc:
            events.append(
                ErrorEvent(
                    code=getattr(exc, "code", "bad_commit"),
                    message=f"room commit refused: {exc}",
                    message_id=frame.message_id,
                )
            )
            # The server took it, so the room moved on without us: rejoin, and remove
            # again whoever that commit added (we could not verify them).
            self._start_recovery(room, f"a commit could not be verified: {exc}", frame.adds)
            return
        if room.inflight is not None:
            # Our own commit for this epoch lost: the server will say commit_conflict.
            room.inflight = None
        group.merge_staged_commit(staged)
        if staged.self_removed:
            room.removed = True
        committer = device_of(processed.credential) or (frame.sender_user, frame.sender_device)
        change = self._changed(room, staged, committer[0], committer[1])
        if resync:
            change = replace(change, removed=())  # the same device, with a fresh leaf
        elif staged.external:
            change = replace(change, added=(*change.added, f"{committer[0]}/{committer[1]}"))
        events.append(change)

    def _check_declared(
        self,
        staged: StagedCommit,
        frame: RoomFrame,
        joiner: tuple[Device, bytes] | None,
        resync: bool = False,
    ) -> None:
        """The roster change the server applied must be the one the commit makes (a
        resync changes no member: the device replaces its own leaf)."""
        adds = sorted(d for m in staged.adds if (d := device_of(m.credential)) is not None)
        removes = sorted(d for m in staged.removes if (d := device_of(m.credential)) is not None)
        extra = 0
        if joiner is not None:
            (user, device), key = joiner
            if self._client._sessions.contact(user) is None and user in self._unreachable:
                raise NotConnected(f"could not look up room member '{user}'")
            if not self._key_matches(user, device, key):
                raise RemoteError("the joiner's key is not its device certificate's")
            if resync:
                removes.remove((user, device))
                extra = -1
            else:
                adds = sorted([*adds, (user, device)])
                extra = 1
        if len(adds) != len(staged.adds) + max(extra, 0) or adds != sorted(frame.adds):
            raise RemoteError("declared adds do not match the commit")
        if len(removes) != len(staged.removes) + min(extra, 0) or removes != sorted(
            frame.removes
        ):
            raise RemoteError("declared removes do not match the commit")
        for member in staged.adds:
            who = device_of(member.credential)
            if who is None:
                continue
            contact = self._client._sessions.contact(who[0])
            if contact is not None and not self._key_matches(who[0], who[1], member.signature_key):
                raise RemoteError("an added device's key is not its certificate's")

    def _apply_message(self, room: Room, frame: RoomFrame, events: list[ClientEvent]) -> None:
        if self._store.has_message(frame.message_id):
            return  # never decrypt twice
        group = room.group
        sender = (frame.sender_user, frame.sender_device)
        notice: InviteNotice | None = None
        text, status = "", DeliveryStatus.FAILED
        content_type, created = "text", frame.client_created_ms
        try:
            if group is None:
                raise RemoteError("not a member")
            processed = group.process_message(frame.ciphertext, now_ms=now_ms())
            if not isinstance(processed.content, ApplicationMessage):
                raise RemoteError("a message frame holds no application message")
            who = device_of(processed.credential)
            if who != sender:
                raise RemoteError("the room message's sender is not the envelope's")
            payload = Payload.decode_padded(processed.content.data)
            if payload.message_id != frame.message_id or payload.conversation_id != room.room_id:
                raise RemoteError("ciphertext was moved to another message")
            content_type, created = payload.content_type, payload.created_at_ms
            if content_type == "system":
                # The room's join token, shared by the member that set it (only members
                # see it): kept to check the PSK of the next external join.
                self._remember_token(room.room_id, _read_token_control(payload.body))
                text = TOKEN_SHARED_TEXT
            else:
                text = payload.body.decode("utf-8")
                if content_type == INVITE_CONTENT_TYPE:
                    notice = InviteNotice.decode(payload.body)
            status = DeliveryStatus.SENT
        except (SottovoceError, UnicodeDecodeError) as exc:
            events.append(
                ErrorEvent(
                    code=getattr(exc, "code", "decryption_failed"),
                    message="a room message could not be decrypted",
                    message_id=frame.message_id,
                )
            )
        own = sender == (self.username, self.device_id) or frame.sender_user == self.username
        control = status is DeliveryStatus.SENT and content_type == "system"
        local = self._store.add_message(
            message_id=frame.message_id,
            peer=_control_peer(room.room_id) if control else room.room_id,
            sender=frame.sender_user,
            sender_device=frame.sender_device,
            outgoing=own,
            status=status,
            text=text,
            content_type=content_type,
            client_created_ms=created,
            server_received_ms=frame.server_received_ms,
            local_at_ms=now_ms(),
            server_seq=frame.server_seq,
            idempotency_key=frame.idempotency_key or None,
        )
        if local is not None and status is DeliveryStatus.SENT and not control:
            stored = self._store.get_message(frame.message_id)
            if stored is not None:
                events.append(RoomMessageReceived(room_id=room.room_id, message=stored))
            if notice is not None and notice.invited == self.username and not own:
                self._take_invitation(room, notice, frame.sender_user, events)

    def _take_invitation(
        self, room: Room, notice: InviteNotice, inviter: str, events: list[ClientEvent]
    ) -> None:
        """We were invited: name the room as the inviter does, unless we named it already."""
        if room.label == room.room_id:

            def taken(label: str) -> bool:
                return any(r != room.room_id for r in self._store.rooms_by_label(label))

            room.label = free_label(notice.name, taken)
            self._store.set_room_label(room.room_id, room.label)
            self._touched.add(room.room_id)
        events.append(
            RoomInvited(room_id=room.room_id, label=room.label, name=notice.name, inviter=inviter)
        )

    def _apply_notice(self, room: Room, frame: RoomFrame) -> None:
        if room.removed or room.group is None:
            return
        if frame.remove_request is not None:
            user, device = frame.remove_request
            self._after.append(lambda: self._spawn(self._auto_remove(room, user, device)))
        elif frame.join_request is not None:
            user, device = frame.join_request
            kp_bytes = frame.ciphertext
            self._after.append(lambda: self._spawn(self._auto_add(room, user, device, kp_bytes)))

    def _spawn(self, coro: Any) -> None:
        self._client._spawn(coro)

    async def _auto_remove(self, room: Room, user: str, device: str) -> None:
        """A removeRequest (revoked device): commit its Remove unless someone did already."""
        try:
            try:
                await self._client._lookup(user)
            except ServerError as exc:
                if exc.code != "unknown_user":
                    raise
                # The account was deleted: the directory vouches for it exactly as it
                # does for a revocation, so every device of it counts as revoked.
            else:
                contact = self._client._sessions.contact(user)
                if contact is None or device not in contact.revoked:
                    return  # the directory does not say revoked: not the server's call
            await asyncio.sleep(random.random() * 0.05)  # noqa: S311 - spread the herd
            await self._commit(
                room,
                lambda g: self._remove_plan(room, g, user, device, AuditAction.DEVICE_REVOKED),
            )
        except (SottovoceError, UsageError) as exc:
            self._client._emit(ErrorEvent(code=getattr(exc, "code", "error"), message=str(exc)))

    async def _auto_add(self, room: Room, user: str, device: str, kp_bytes: bytes) -> None:
        """A joinRequest: add the requester with its KeyPackage (checked like a claimed one)."""
        try:
            await self._client._lookup(user)
            kp = _decode_key_package(kp_bytes)
            self._check_key_package(user, device, kp, now_ms())

            def build(group: Group) -> _Plan | None:
                if (user, device) in room.members():
                    return None
                bundle = group.add_members([kp], rng=secrets.token_bytes, now_ms=now_ms())
                return _Plan(bundle, ((user, device),), (), AuditAction.MEMBER_JOINED)

            await asyncio.sleep(random.random() * 0.05)  # noqa: S311 - spread the herd
            if await self._commit(room, build) is not None:
                await self._share_current_token(room)
        except (SottovoceError, UsageError) as exc:
            self._client._emit(ErrorEvent(code=getattr(exc, "code", "error"), message=str(exc)))

    def flush(self) -> None:
        """Inside the batch transaction: write every room the batch changed, once."""
        dirty, self._dirty = self._dirty, set()
        for room_id in dirty:
            room = self._rooms.get(room_id)
            if room is not None:
                self._persist(room, seq=room.last_seq)

    def after_batch(self) -> None:
        """After the batch transaction committed: ack room positions, wake waiters."""
        self._touched.clear()
        acks, self._acks = self._acks, {}
        for room_id, seq in acks.items():
            self._conn.send_frame(pr.RoomAck(roomId=room_id, upToServerSeq=seq).to_frame())
        self._welcomes.clear()  # opened for this batch only
        self._unreachable.clear()
        after, self._after = self._after, []
        for action in after:
            action()
        self._after_batch_notify()

    def _after_batch_notify(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    # =========================================================================
    # Server views
    # =========================================================================

    async def info(self, ref: str) -> dict[str, Any]:
        room = self.get(ref)
        _, data = await self._conn.request(
            pr.RoomInfo(roomId=room.room_id),
            frozenset({pr.ROOM_STATE}),
            timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        return data
