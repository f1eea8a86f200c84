"""Rooms: the MLS delivery service's handlers (docs/architecture.md §Rooms; wire contract in
:mod:`sottovoce.protocol.rooms`).

Handlers are thin: they turn a validated event into a storage request and a
storage outcome into replies and room frames. The rules (one commit per epoch,
membership, roster changes, token hashes, audit linkage, read positions) are
enforced inside storage transactions (:mod:`.storage.roombase`)::

    room.send ──► storage.room_send ──(group commit)──► ksmpv3.send.ack
                                                    └─► fan_out: ONE frame text → every member
                                                        session online (else a push tickle)
    room.commit ──► storage.room_commit ──► room.committed, frame to the members before the
                                            change, Welcome inbox frames to the added devices
    ksmpv3.resume ──► inbox replay ──► each room after the device's read position (:mod:`.replay`)
                  ──► sottovoce.replay.done ──► live

Rooms is given the room storage, the directory cache, presence (the one way a frame
reaches a device), the KeyPackage claim limits, metrics and the log; it imports none
of them back. Message outcomes arrive through callbacks in commit order, so each room's
frames are fanned out in serverSeq order. Tokens are hashed on arrival
(:func:`~sottovoce.protocol.rooms.token_hash`) and never logged or stored.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from functools import partial
from typing import Any

from sottovoce.identity import DeviceCertificate
from sottovoce.limits import (
    JOIN_REQUESTS_PER_DEVICE_BURST,
    JOIN_REQUESTS_PER_DEVICE_PER_S,
    JOIN_REQUESTS_PER_ROOM_BURST,
    JOIN_REQUESTS_PER_ROOM_PER_S,
    KEY_PACKAGES_LOW_WATERMARK,
    MAX_KEY_PACKAGES_PER_DEVICE,
    MAX_ROOMS_LISTED,
    ROOM_AUDIT_BATCH,
    ROOM_AUDIT_REPLY_BYTES,
    ROOM_SYNC_BATCH,
)
from sottovoce.mls.public import (
    MlsError,
    PublicGroupInfo,
    check_external_commit,
    check_group_info,
    check_key_package,
    check_member_commit,
    decode_key_package,
    is_external_commit,
    leaf_identity,
)
from sottovoce.protocol.audit import (
    AuditAction,
    AuditChainError,
    AuditEntry,
    AuditSubject,
    check_signature,
    entry_hash,
)
from sottovoce.protocol.events import ClientEvent
from sottovoce.protocol.fields import b64
from sottovoce.protocol.room_rules import (
    RuleBroken,
    check_commit_rules,
    members_of,
    removed_others,
)
from sottovoce.protocol.rooms import (
    KEYPACKAGE_BUNDLES,
    KEYPACKAGES_LOW,
    KEYPACKAGES_STORED,
    KEYPACKAGES_WITHDRAWN,
    ROOM_ACKED,
    ROOM_AUDIT,
    ROOM_AUDIT_APPENDED,
    ROOM_COMMITTED,
    ROOM_CREATED,
    ROOM_GROUPINFO,
    ROOM_ID_PREFIX,
    ROOM_JOIN_REQUESTED,
    ROOM_SETTING_UPDATED,
    ROOM_STATE,
    ROOM_SYNCED,
    ROOM_TOKEN_UPDATED,
    ROOMS,
    AuditAppend,
    AuditGet,
    GroupInfoGet,
    JoinRequest,
    KeyPackagesClaim,
    KeyPackagesUpload,
    KeyPackagesWithdraw,
    RoomAck,
    RoomCommit,
    RoomCreate,
    RoomInfo,
    RoomSend,
    RoomSettingSet,
    RoomsList,
    RoomSync,
    RoomTokenRevoke,
    RoomTokenSet,
    member_identity,
    setting_refusal,
    token_hash,
)
from sottovoce.server.delivery import check_expiry
from sottovoce.server.directory import Directory
from sottovoce.server.errors import RateLimited, WireFailure, decoded
from sottovoce.server.frames import stored_ack_text
from sottovoce.server.logs import JsonLogger
from sottovoce.server.metrics import Metrics
from sottovoce.server.presence import Presence
from sottovoce.server.ratelimit import ClaimLimits, KeyedBuckets
from sottovoce.server.session import Session
from sottovoce.server.storage.base import UnknownAccount
from sottovoce.server.storage.roombase import (
    AuditAppendage,
    CommitOutcome,
    CommitRequest,
    Member,
    RoomRefused,
    RoomSendRequest,
    RoomStorage,
    RoomStored,
    room_frame_text,
)

Handler = Callable[..., Awaitable[None] | None]


def _wire(exc: BaseException | None) -> WireFailure:
    """Storage refusal → the wire error (anything else: retryable internal/unavailable)."""
    if isinstance(exc, WireFailure):
        return exc
    if isinstance(exc, RoomRefused):
        return WireFailure(exc.code, exc.message, retryable=exc.retryable, details=exc.details)
    if isinstance(exc, UnknownAccount):
        return WireFailure("unauthorized", "device is not registered")
    return WireFailure("internal", "room operation failed", retryable=True, retry_after_ms=100)


def _check_uploaded(raw: bytes, suite: int, identity: bytes, key: bytes, now: int) -> None:
    """An uploaded KeyPackage of a named ``suite``: it decodes, is valid (RFC 9420 §10.1)
    with that very ``cipher_suite``, and its leaf is the uploading device's (name and key)."""
    try:
        kp = decode_key_package(raw)
        check_key_package(kp, cipher_suite_id=suite, now_ms=now)
    except MlsError as exc:
        raise WireFailure(
            "invalid_key_package", f"KeyPackage refused for suite {suite:#06x}: {exc}"
        ) from None
    if leaf_identity(kp.leaf_node) != identity or not (
        hmac.compare_digest(kp.leaf_node.signature_key, key)
    ):
        raise WireFailure(
            "invalid_key_package", "the KeyPackage is not this device's (name or key)"
        )


@contextmanager
def _as_wire(*kinds: type[BaseException]) -> Iterator[None]:
    """A storage refusal (``RoomRefused``, ``UnknownAccount`` unless ``kinds`` are named)
    raised inside becomes its wire error."""
    caught = kinds or (RoomRefused, UnknownAccount)
    try:
        yield
    except caught as exc:
        raise _wire(exc) from None


def _pairs(items: Sequence[Member]) -> list[dict[str, str]]:
    return [{"userId": u, "deviceId": d} for u, d in items]


def audit_appendage(
    room_id: str, user: str, device: str, certified_key: bytes, raw: bytes
) -> AuditAppendage:
    """An audit entry the sending device may append (protocol/audit.py): it decodes, names
    the room, names the sender as its actor, states the MLS signature key of the sender's
    certificate and is signed by it. The linkage is checked in the storage transaction.
    Whether it is bound to the epoch's authenticator only members can check."""
    entry = decoded(AuditEntry.decode, raw, "bad_request", "audit entry")
    if entry.room_id != room_id:
        raise WireFailure("bad_request", "audit entry belongs to another room")
    if (entry.actor_user_id, entry.actor_device_id) != (user, device):
        raise WireFailure("invalid_audit_entry", "an audit entry's actor is the sending device")
    if not hmac.compare_digest(entry.actor_signature_key, certified_key):
        raise WireFailure(
            "invalid_audit_entry", "the audit entry's key is not the device's certified MLS key"
        )
    try:
        check_signature(entry)
    except AuditChainError:
        raise WireFailure(
            "invalid_audit_entry", "the audit entry's signature does not verify"
        ) from None
    return AuditAppendage(raw, entry.index, entry.prev_hash, entry_hash(raw))


def _check_next_group_info(
    raw: bytes | None, key: bytes, info: PublicGroupInfo, epoch: int
) -> None:
    """The GroupInfo a commit into ``epoch`` publishes (what the next joiner and a
    recovering member use): for ``epoch + 1`` of the same group, joinable by an
    external commit, signed by ``key``."""
    if raw is None:
        raise WireFailure("invalid_commit", "a commit publishes the next epoch's GroupInfo")
    try:
        after = check_group_info(raw, signer_key=key)
    except MlsError as exc:
        raise WireFailure("invalid_commit", f"the new GroupInfo is refused: {exc}") from None
    if (
        after.context.epoch != epoch + 1
        or after.context.group_id != info.context.group_id
        or after.external_pub is None
    ):
        raise WireFailure(
            "invalid_commit", "the new GroupInfo is not the next epoch's, or not joinable"
        )


@dataclass(eq=False, repr=False)
class Rooms:
    #: ``None`` when the storage engine has no rooms: room events answer ``unavailable``.
    room_store: RoomStorage | None
    directory: Directory
    presence: Presence
    key_claims: ClaimLimits
    metrics: Metrics
    log: JsonLogger
    _: KW_ONLY
    #: Bytes of frames one room.sync reply carries (a quarter of the write buffer).
    budget: int
    _join_requests_by_device: KeyedBuckets = field(
        init=False,
        default_factory=lambda: KeyedBuckets(
            JOIN_REQUESTS_PER_DEVICE_PER_S, JOIN_REQUESTS_PER_DEVICE_BURST
        ),
    )
    #: Keyed by the token's hash: one token opens one room.
    _join_requests_by_room: KeyedBuckets = field(
        init=False,
        default_factory=lambda: KeyedBuckets(
            JOIN_REQUESTS_PER_ROOM_PER_S, JOIN_REQUESTS_PER_ROOM_BURST
        ),
    )
    #: The gate of a claim about another account (the app's: proof of work, strict mode),
    #: None for a name the requester may not see.
    visible: Callable[[Session, str, bytes | None, bytes | None], Awaitable[object]] | None = (
        field(init=False, default=None))
    #: Told of the devices each stored commit removed (room calls revoke their grants).
    on_removed: Callable[[str, Sequence[Member]], None] | None = field(init=False, default=None)

    def handlers(self) -> dict[type[ClientEvent], Handler]:
        return {
            KeyPackagesUpload: self._kp_upload,
            KeyPackagesWithdraw: self._kp_withdraw,
            KeyPackagesClaim: self._kp_claim,
            RoomCreate: self._create,
            RoomCommit: self._commit,
            RoomSend: self._send,
            RoomAck: self._ack,
            RoomSync: self._sync,
            RoomInfo: self._info,
            RoomsList: self._list,
            RoomTokenSet: self._token_set,
            RoomTokenRevoke: self._token_revoke,
            RoomSettingSet: self._setting_set,
            GroupInfoGet: self._groupinfo,
            JoinRequest: self._join_request,
            AuditAppend: self._audit_append,
            AuditGet: self._audit_get,
        }

    @property
    def store(self) -> RoomStorage:
        if self.room_store is None:
            raise WireFailure("unavailable", "this server's storage has no rooms", retryable=False)
        return self.room_store

    # --- fan-out (the one place room frames leave for member devices) -------------------

    def _publish(self, msg: RoomStored) -> None:
        """ONE serialized room frame to every member device: here, on another node, or
        a tickle (Presence)."""
        live = self.presence.room_frame(
            msg.room_id, msg.server_seq, room_frame_text(msg.envelope), msg.members
        )
        self.metrics.room_deliveries_live += live

    # --- session hooks ----------------------------------------------------------------

    async def authenticated(self, session: Session) -> None:
        """At auth: tell a device that uses rooms when its KeyPackage stock is low."""
        if self.room_store is None:
            return
        user, device = session.key
        stock = await self.room_store.key_package_stock(user, device)
        for suite, remaining in sorted(stock.items()):
            if remaining < KEY_PACKAGES_LOW_WATERMARK:
                session.reply(KEYPACKAGES_LOW, {"remaining": remaining, "suite": suite}, None)

    def device_revoked(self, user: str, device: str) -> None:
        """The device gets nothing more from any room; each of its rooms gets a removeRequest
        notice (members commit the Remove)."""
        if self.room_store is None:
            return

        def done(out: list[RoomStored] | None, error: BaseException | None) -> None:
            if out is None:
                self.log.error("room.revoke_failed", error=type(error).__name__)
                return
            for msg in out:
                self._publish(msg)

        self.room_store.room_device_revoked(user, device, done)

    # --- KeyPackages ---------------------------------------------------------------------

    async def _kp_upload(
        self, session: Session, ev: KeyPackagesUpload, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        if ev.suite is not None:  # named: every KeyPackage must be of it, and this device's
            key = await self._certified_mls_key(user, device, "invalid_key_package")
            now = time.time_ns() // 1_000_000
            for raw in (*ev.keyPackages, *(() if ev.lastResort is None else (ev.lastResort,))):
                _check_uploaded(raw, ev.suite, member_identity(user, device), key, now)
        with _as_wire():
            count = await self.store.store_key_packages(
                user, device, ev.keyPackages, ev.lastResort, MAX_KEY_PACKAGES_PER_DEVICE,
                1 if ev.suite is None else ev.suite,
            )
        session.reply(KEYPACKAGES_STORED, {"count": count}, rid)

    async def _kp_withdraw(
        self, session: Session, ev: KeyPackagesWithdraw, data: dict[str, Any], rid: str | None
    ) -> None:
        # Only ever the authenticated device's own stock: the event names no one.
        user, device = session.key
        with _as_wire():
            count = await self.store.withdraw_key_packages(user, device)
        session.reply(KEYPACKAGES_WITHDRAWN, {"count": count}, rid)

    async def _kp_claim(
        self, session: Session, ev: KeyPackagesClaim, data: dict[str, Any], rid: str | None
    ) -> None:
        # Gated as a prekey claim: a hidden strict account is a name nobody holds.
        if self.visible is not None and await self.visible(
                session, ev.username, ev.pow, ev.cap) is None:
            raise WireFailure("unknown_user", "no such user")
        # A limited requester gets the last-resort KeyPackage (ratelimit.ClaimLimits).
        one_time = await self.directory.one_time_claims(
            self.key_claims, "keypackage", session.key[0], ev.username
        )
        claimed = await self.store.claim_key_packages(
            ev.username, session.key, one_time=one_time, suite=ev.suite
        )
        session.reply(KEYPACKAGE_BUNDLES, {
            "username": ev.username,
            "suite": ev.suite,
            "keyPackages": [
                {"deviceId": c.device_id, "keyPackage": b64(c.key_package)} for c in claimed
            ],
        }, rid)
        self.presence.notice_low(ev.username, [(c.device_id, c.remaining) for c in claimed],
                                  KEY_PACKAGES_LOW_WATERMARK, KEYPACKAGES_LOW,
                                  extra={"suite": ev.suite})

    # --- rooms ---------------------------------------------------------------------------

    async def _create(
        self, session: Session, ev: RoomCreate, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        with _as_wire():
            await self.store.create_room(
                ev.roomId, user, device, ev.groupInfo, time.time_ns() // 1_000_000
            )
        self.log.info("room.created", userId=user, deviceId=device, conversationId=ev.roomId)
        session.reply(ROOM_CREATED, {"roomId": ev.roomId, "epoch": 0, "serverSeq": 0}, rid)

    def _commit(
        self, session: Session, ev: RoomCommit, data: dict[str, Any], rid: str | None
    ) -> Awaitable[None] | None:
        session.key  # noqa: B018 -- raises unless authenticated
        external = ev.token is not None or is_external_commit(ev.commit)
        return self._commit_checked(session, ev, data, rid, external)

    async def _commit_checked(
        self, session: Session, ev: RoomCommit, data: dict[str, Any], rid: str | None,
        external: bool,
    ) -> None:
        """A commit with something to check first: its audit entry's author; for an
        external commit (a non-member joining with a token, or a member's resync) the
        MLS public view's checks (:mod:`sottovoce.protocol.rooms`, "Joining by token");
        for a member's commit the GroupInfo it publishes."""
        user, device = session.key
        checked = None
        if external:
            h = None if ev.token is None else token_hash(ev.token)
            checked = await self._check_external(user, device, ev, h)
        else:
            await self._check_member_group_info(user, device, ev)
        audit = await self._audit_entry(ev.roomId, user, device, ev.audit)
        self._submit_commit(
            session, ev, data, rid, audit=audit, external=external, checked_epoch=checked
        )

    async def _audit_entry(
        self, room_id: str, user: str, device: str, raw: bytes | None
    ) -> AuditAppendage | None:
        if raw is None:
            return None
        key = await self._certified_mls_key(user, device, "invalid_audit_entry")
        return audit_appendage(room_id, user, device, key, raw)

    async def _check_external(
        self, user: str, device: str, ev: RoomCommit, h: bytes | None
    ) -> int | None:
        """The epoch the external commit was checked against; ``None`` when it names
        another epoch than the room's (storage answers commit_conflict). Raises
        ``WireFailure`` (invalid_token, not_member, invalid_commit)."""
        if h is not None:
            found = await self.store.group_info_by_token(h)
            if found is None or found[0] != ev.roomId:
                raise WireFailure("invalid_token", "the token does not open a room")
            _, epoch, stored = found
        else:
            with _as_wire(RoomRefused):
                epoch, stored = await self.store.room_group_info(ev.roomId, user, device)
        if ev.epoch != epoch:
            return None
        key = await self._certified_mls_key(user, device, "invalid_commit")
        try:
            info = check_group_info(stored)
        except MlsError:
            raise WireFailure(
                "invalid_commit", "the room holds no GroupInfo a joiner can check"
            ) from None
        if info.context.epoch != epoch or ev.roomId != ROOM_ID_PREFIX + info.context.group_id.hex():
            raise WireFailure("invalid_commit", "the room's GroupInfo is not for its epoch")
        try:
            commit = check_external_commit(ev.commit, info)
        except MlsError as exc:
            raise WireFailure("invalid_commit", f"external commit refused: {exc}") from None
        if commit.joiner_identity != member_identity(user, device):
            raise WireFailure("invalid_commit", "the commit's new leaf names another device")
        if not hmac.compare_digest(commit.leaf.signature_key, key):
            raise WireFailure(
                "invalid_commit", "the commit's new leaf does not hold the device's certified key"
            )
        if h is not None and not any(hmac.compare_digest(i, h) for i in commit.external_psk_ids):
            raise WireFailure("invalid_commit", "the external commit does not bind the token")
        _check_next_group_info(ev.groupInfo, key, info, epoch)
        return epoch

    async def _check_member_group_info(self, user: str, device: str, ev: RoomCommit) -> None:
        """A member's commit to a room that holds an MLS GroupInfo publishes the next
        epoch's, signed by the committer's certified key: members that cannot process
        the commit rejoin on it (an insider's unreadable commit without one once left
        every other member unable to rejoin). Raises ``WireFailure`` (invalid_commit)."""
        with _as_wire(RoomRefused):
            epoch, stored = await self.store.room_group_info(ev.roomId, user, device)
        if ev.epoch != epoch or not stored:
            return  # storage answers commit_conflict (or a retry's duplicate)
        try:
            info = check_group_info(stored)
        except MlsError:
            return  # the room never held a GroupInfo anyone could rejoin on
        key = await self._certified_mls_key(user, device, "invalid_commit")
        await self._check_rules(user, device, ev, info, key)
        _check_next_group_info(ev.groupInfo, key, info, epoch)

    async def _check_rules(
        self, user: str, device: str, ev: RoomCommit, info: PublicGroupInfo, key: bytes
    ) -> None:
        """A member's commit is a PublicMessage signed by the sending device's leaf in the
        room's current tree, and keeps the room's rules (protocol/room_rules.py): what
        every member would refuse never becomes an epoch's commit. Raises
        ``WireFailure`` (invalid_commit, not_admin)."""
        try:
            checked = check_member_commit(ev.commit, info, ev.proposals)
        except MlsError as exc:
            raise WireFailure("invalid_commit", f"commit refused: {exc}") from None
        members = members_of(enumerate(info.leaves))
        leaf = info.leaves[checked.committer]
        if members.get(checked.committer) != (user, device) or leaf is None or not (
            hmac.compare_digest(leaf.signature_key, key)
        ):
            raise WireFailure("invalid_commit", "the commit's sender leaf is not this device's")
        revoked = [d for d in removed_others(members, checked.proposals)
                   if await self._revoked(*d)]
        try:
            check_commit_rules(info.context.extensions, members, checked.proposals,
                               revoked=revoked)
        except RuleBroken as exc:
            raise WireFailure("not_admin", str(exc)) from None

    async def _revoked(self, user: str, device: str) -> bool:
        """The directory says the device is gone (revoked, or its account deleted)."""
        rec = await self.directory.account(user)
        dev = None if rec is None else rec.device(device)
        return dev is None or dev.revoked

    async def _certified_mls_key(self, user: str, device: str, code: str) -> bytes:
        """The MLS signature key the device's certificate holds (the account key signed it:
        the anchor for what the device signs in rooms); refused with ``code`` if none."""
        rec = await self.directory.account(user)
        dev = None if rec is None else rec.device(device)
        if dev is None or dev.revoked:
            raise WireFailure("unauthorized", "device is not registered")
        key = DeviceCertificate.decode(dev.certificate).keys.mls_signature_key
        if not key:
            raise WireFailure(code, "the device certificate holds no MLS signature key")
        return key

    def _submit_commit(
        self, session: Session, ev: RoomCommit, data: dict[str, Any], rid: str | None,
        *, audit: AuditAppendage | None = None, external: bool = False,
        checked_epoch: int | None = None,
    ) -> None:
        user, device = session.key
        req = CommitRequest(
            room_id=ev.roomId,
            user=user,
            device=device,
            epoch=ev.epoch,
            message_id=ev.messageId,
            idempotency_key=ev.idempotencyKey,
            # The validated base64 strings go into the envelopes as they came.
            commit_b64=data["commit"],
            welcome_b64=data.get("welcome") if ev.welcome is not None else None,
            adds=tuple(m.key for m in ev.adds),
            removes=tuple(m.key for m in ev.removes),
            group_info=ev.groupInfo,
            audit=audit,
            # Hashed at once; the token itself goes no further than this frame.
            token_hash=None if ev.token is None else token_hash(ev.token),
            external=external,
            checked_epoch=checked_epoch,
        )
        self.store.room_commit(req, partial(self._committed, session, rid, req.removes))

    def _committed(
        self, session: Session, rid: str | None, removes: Sequence[Member],
        out: CommitOutcome | None, error: BaseException | None,
    ) -> None:
        if out is None:
            self._failed(session, rid, error, "room.commit_failed")
            return
        msg = out.message
        session.reply(ROOM_COMMITTED, {
            "roomId": msg.room_id,
            "epoch": out.epoch,
            "serverSeq": msg.server_seq,
            "messageId": msg.message_id,
            "idempotencyKey": msg.idempotency_key,
            "duplicate": msg.duplicate,
        }, rid)
        if msg.duplicate:
            return
        self.metrics.room_commits += 1
        # To the members of the epoch the commit was made in (removed devices included).
        self._publish(msg)
        self.presence.inbox_frames(out.welcomes, msg.room_id, msg.server_seq)
        if removes and self.on_removed is not None:
            self.on_removed(msg.room_id, removes)

    def _failed(
        self, session: Session, rid: str | None, error: BaseException | None, event: str,
        message_id: str | None = None,
    ) -> None:
        """A stored operation failed: its wire error to the client, and our bugs to the log."""
        failure = _wire(error)
        if failure.code == "internal":
            self.log.error(event, error=type(error).__name__)
        session.error(failure, rid, message_id)

    def _send(
        self, session: Session, ev: RoomSend, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        check_expiry(ev.expiresAtMs)
        req = RoomSendRequest(
            room_id=ev.roomId,
            user=user,
            device=device,
            epoch=ev.epoch,
            message_id=ev.messageId,
            idempotency_key=ev.idempotencyKey,
            content_type=ev.contentType,
            client_created_at_ms=ev.clientCreatedAtMs,
            ciphertext_b64=data["ciphertext"],
            expires_at_ms=ev.expiresAtMs,
        )
        self.store.room_send(req, partial(self._sent, session, rid, ev.messageId))

    def _sent(
        self, session: Session, rid: str | None, message_id: str, msg: RoomStored | None,
        error: BaseException | None,
    ) -> None:
        if msg is None:
            self._failed(session, rid, error, "room.send_failed", message_id)
            return
        session.write(stored_ack_text(rid, msg.room_id, msg))
        if msg.duplicate:
            return
        self.metrics.room_messages += 1
        self._publish(msg)

    async def _ack(
        self, session: Session, ev: RoomAck, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        with _as_wire():
            deleted = await self.store.room_ack(ev.roomId, user, device, ev.upToServerSeq)
        self.metrics.room_deleted += deleted
        session.reply(ROOM_ACKED, {"roomId": ev.roomId, "upToServerSeq": ev.upToServerSeq}, rid)

    async def _sync(
        self, session: Session, ev: RoomSync, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        with _as_wire():
            got = await self.store.room_read(
                ev.roomId, user, device, ev.afterServerSeq, ROOM_SYNC_BATCH
            )
        # Bounded by bytes too (commits can be large): the client asks again from up_to.
        budget = self.budget
        up_to, written = ev.afterServerSeq, 0
        for seq, env in got.frames:
            text = room_frame_text(env)
            session.write(text)
            up_to = seq
            written += len(text)
            if written > budget:
                break
        else:  # all sent: past the expired messages after the last one too
            up_to = max(up_to, got.scanned_to)
        session.reply(ROOM_SYNCED, {
            "roomId": ev.roomId,
            "upToServerSeq": up_to,
            "epoch": got.epoch,
            "latestServerSeq": got.latest_seq,
        }, rid)

    async def _info(
        self, session: Session, ev: RoomInfo, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        with _as_wire(RoomRefused):
            st = await self.store.room_state(ev.roomId, user, device)
        session.reply(ROOM_STATE, {
            "roomId": st.room_id,
            "epoch": st.epoch,
            "members": _pairs(st.members),
            "tokenSet": st.token_set,
            "latestServerSeq": st.latest_seq,
            "admin": st.admin,
            "residency": st.residency,
            "recorder": st.recorder,
        }, rid)

    async def _list(
        self, session: Session, ev: RoomsList, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        rooms = await self.store.rooms_of(user, device, MAX_ROOMS_LISTED)
        session.reply(ROOMS, {
            "rooms": [
                {"roomId": r.room_id, "epoch": r.epoch, "latestServerSeq": r.latest_seq}
                for r in rooms
            ],
        }, rid)

    # --- tokens, join requests ------------------------------------------------------------

    async def _token_set(
        self, session: Session, ev: RoomTokenSet, data: dict[str, Any], rid: str | None
    ) -> None:
        h = token_hash(ev.token)
        await self._set_token(session, ev.roomId, h, ev.audit, rid)

    async def _token_revoke(
        self, session: Session, ev: RoomTokenRevoke, data: dict[str, Any], rid: str | None
    ) -> None:
        await self._set_token(session, ev.roomId, None, ev.audit, rid)

    async def _set_token(
        self, session: Session, room_id: str, h: bytes | None, audit: bytes | None,
        rid: str | None,
    ) -> None:
        user, device = session.key
        entry = await self._audit_entry(room_id, user, device, audit)
        with _as_wire():
            await self.store.set_room_token(room_id, user, device, h, entry)
        self.log.info("room.token", userId=user, deviceId=device, conversationId=room_id,
                          status=int(h is not None))
        session.reply(ROOM_TOKEN_UPDATED, {"roomId": room_id, "tokenSet": h is not None}, rid)

    async def _setting_set(
        self, session: Session, ev: RoomSettingSet, data: dict[str, Any], rid: str | None
    ) -> None:
        """One room setting, changed by the room's admin with its audit entry (ROOM_SETTING,
        the one subject (setting, value)), both in one transaction."""
        user, device = session.key
        why = setting_refusal(ev.setting, ev.value)
        if why is not None:
            raise WireFailure("bad_request", why)
        key = await self._certified_mls_key(user, device, "invalid_audit_entry")
        entry = audit_appendage(ev.roomId, user, device, key, ev.audit)
        decoded = AuditEntry.decode(entry.entry)
        if decoded.action is not AuditAction.ROOM_SETTING or decoded.subjects != (
            AuditSubject(ev.setting, ev.value),
        ):
            raise WireFailure("invalid_audit_entry", "the audit entry does not state this change")
        with _as_wire():
            await self.store.set_room_setting(ev.roomId, user, device, ev.setting, ev.value, entry)
        self.log.info("room.setting", userId=user, deviceId=device, conversationId=ev.roomId)
        session.reply(ROOM_SETTING_UPDATED,
                      {"roomId": ev.roomId, "setting": ev.setting, "value": ev.value}, rid)

    async def _groupinfo(
        self, session: Session, ev: GroupInfoGet, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        if ev.roomId is not None:  # a member's (to rejoin by an external commit)
            with _as_wire(RoomRefused):
                epoch, group_info = await self.store.room_group_info(ev.roomId, user, device)
            room_id = ev.roomId
        elif ev.token is None:
            raise WireFailure("bad_request", "give a token or a roomId")
        else:
            found = await self.store.group_info_by_token(token_hash(ev.token))
            if found is None:
                # The same answer whether a room exists or not.
                raise WireFailure("invalid_token", "the token does not open a room")
            room_id, epoch, group_info = found
        session.reply(ROOM_GROUPINFO, {
            "roomId": room_id,
            "epoch": epoch,
            "groupInfo": b64(group_info) if group_info else None,
        }, rid)

    async def _join_request(
        self, session: Session, ev: JoinRequest, data: dict[str, Any], rid: str | None
    ) -> None:
        """A join request becomes a notice to every member: so it is rate-limited per device
        and per room, carries only the requester's own valid KeyPackage, and a room holds a
        bounded number of them unanswered (storage)."""
        user, device = session.key
        h = token_hash(ev.token)
        wait = self._join_requests_by_device.take(f"{user}/{device}") or (
            self._join_requests_by_room.take(h.hex())
        )
        if wait:
            raise RateLimited("too many join requests", wait)
        key = await self._certified_mls_key(user, device, "invalid_key_package")
        try:
            kp = decode_key_package(ev.keyPackage)
            check_key_package(kp, now_ms=time.time_ns() // 1_000_000)
        except MlsError as exc:
            raise WireFailure("invalid_key_package", f"KeyPackage refused: {exc}") from None
        if leaf_identity(kp.leaf_node) != member_identity(user, device) or not (
            hmac.compare_digest(kp.leaf_node.signature_key, key)
        ):
            raise WireFailure(
                "invalid_key_package", "the KeyPackage is not this device's (name or key)"
            )

        def done(msg: RoomStored | None, error: BaseException | None) -> None:
            if msg is None:
                session.error(_wire(error), rid)
                return
            session.reply(ROOM_JOIN_REQUESTED, {"roomId": msg.room_id}, rid)
            self._publish(msg)

        self.store.room_join_request(h, user, device, data["keyPackage"], done)

    # --- audit ----------------------------------------------------------------------------

    async def _audit_append(
        self, session: Session, ev: AuditAppend, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        key = await self._certified_mls_key(user, device, "invalid_audit_entry")
        entry = audit_appendage(ev.roomId, user, device, key, ev.entry)
        with _as_wire():
            index = await self.store.audit_append(ev.roomId, user, device, entry)
        session.reply(ROOM_AUDIT_APPENDED, {"roomId": ev.roomId, "index": index}, rid)

    async def _audit_get(
        self, session: Session, ev: AuditGet, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        with _as_wire(RoomRefused):
            entries = await self.store.audit_get(
                ev.roomId, user, device, ev.afterIndex, ROOM_AUDIT_BATCH
            )
        # A reply must fit in one frame: 1,000 entries of up to 36 KiB would not, so the
        # reply is cut by bytes too and says "more" (the client asks again after it).
        out: list[str] = []
        size = 0
        for raw in entries:
            text = b64(raw)
            if out and size + len(text) > ROOM_AUDIT_REPLY_BYTES:
                break
            out.append(text)
            size += len(text) + 3
        more = len(out) < len(entries) or len(entries) == ROOM_AUDIT_BATCH
        session.reply(ROOM_AUDIT, {"roomId": ev.roomId, "entries": out, "more": more}, rid)
