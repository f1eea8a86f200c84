"""Who is in a room: the commits this device makes, the ones it receives, and the
room's join token (RFC 9420 §12; docs/architecture.md §Rooms).

    create_room ──► Group.create (its suite, random 16-byte group id) ──► room.create
    invite      ──► directory + keypackages.claim {the room's suite} ──► validate each
                    KeyPackage (that suite) against
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

    commit frame ──► process_message ──► the declared adds/removes must match what the
                     commit does, every added leaf its device certificate's ──► merge
                     (refused: the room moved on without us ──► rejoin)
    notice frame ──► removeRequest: commit the Remove; joinRequest: commit Add + Welcome

    token ──► T shared inside the group first (members can then check a joiner's PSK)
          ──► room.token.set {wire_token(T)}: the server never sees T itself
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from sottovoce.client.errors import NotConnected, ServerError
from sottovoce.client.events import (
    ClientEvent,
    ErrorEvent,
    RoomJoined,
    RoomMembershipChanged,
)
from sottovoce.client.ids import new_id, now_ms
from sottovoce.client.payload import decode_log_head, encode_log_head
from sottovoce.client.ports import Contacts, Link
from sottovoce.client.rooms.audit import AuditLog
from sottovoce.client.rooms.book import RoomBook, backoff, request_retrying
from sottovoce.client.rooms.keypackages import KeyPackages, decode_key_package
from sottovoce.client.rooms.messages import RoomMessages
from sottovoce.client.rooms.model import (
    GROUP_ID_BYTES,
    ROOM_REQUEST_TIMEOUT_S,
    ROOM_SUITES,
    SUITE,
    CommitResult,
    Device,
    Room,
    RoomFrame,
    device_of,
    member_refs,
    room_id_of,
)
from sottovoce.client.rooms.names import (
    follow,
    keep_key,
    key_of_commit,
    random_key,
    seal,
    shared_names,
)
from sottovoce.client.rooms.proposals import held
from sottovoce.client.rooms.rules import ROOM_CAPABILITIES, check_staged, lacks_capabilities
from sottovoce.client.rooms.sync import RoomSync
from sottovoce.client.rooms.tokens import new_token
from sottovoce.client.rooms.tree_blob import TreeCarrier, check_fits, welcome_fits
from sottovoce.client.store import DeliveryStatus
from sottovoce.errors import RemoteError, SottovoceError, UsageError
from sottovoce.limits import MAX_ROOM_NAME_BYTES, ROOM_COMMIT_RETRIES
from sottovoce.mls.common import PSKType
from sottovoce.mls.group import CommitBundle, Group, StagedCommit
from sottovoce.mls.messages import Credential
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.audit import AuditAction
from sottovoce.protocol.room_names import NameKey, RoomNames
from sottovoce.protocol.room_rules import RoomProfile, profile_extension
from sottovoce.secret import Secret


@dataclass(frozen=True, slots=True)
class Plan:
    """A commit to send: the bundle and the roster change it declares."""

    bundle: CommitBundle
    adds: tuple[Device, ...]
    removes: tuple[Device, ...]
    action: AuditAction = AuditAction.MEMBER_UPDATED


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


def changed(
    room: Room, staged: StagedCommit, user: str, device: str
) -> RoomMembershipChanged:
    """The event for a merged commit by ``user/device``."""
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


class Membership:
    """Commits of this device and of the other members; see the module docstring."""

    def __init__(
        self, book: RoomBook, link: Link, contacts: Contacts, key_packages: KeyPackages,
        audit: AuditLog, sync: RoomSync, messages: RoomMessages,
    ) -> None:
        self._book, self._store, self._link = book, book.store, link
        self._contacts, self._key_packages = contacts, key_packages
        self._audit, self._sync, self._messages = audit, sync, messages
        #: Commits of ours the delivery service refused for another one of the same epoch.
        self.commit_conflicts = 0

    def _report(self, exc: BaseException, message: str | None = None) -> None:
        """A background step failed: tell the application (it is not raised anywhere)."""
        self._book.emit(
            ErrorEvent(code=getattr(exc, "code", "error"), message=message or str(exc))
        )

    # =========================================================================
    # Creating and changing rooms
    # =========================================================================

    async def create_room(self, label: str, suite: int = SUITE) -> Room:
        """A new room with this device as its only member (see RoomManager.create_room)."""
        if not label or len(label.encode("utf-8")) > MAX_ROOM_NAME_BYTES:
            raise UsageError(f"a room name is 1-{MAX_ROOM_NAME_BYTES} bytes")
        if suite not in ROOM_SUITES:
            raise UsageError(f"rooms use the MLS cipher suites {ROOM_SUITES}, not {suite}")
        group_id = secrets.token_bytes(GROUP_ID_BYTES)
        room_id = room_id_of(group_id)
        key = random_key()
        group = Group.create(
            suite, credential=self._book.credential(), signing_key=self._book.signing_key,
            rng=secrets.token_bytes, now_ms=now_ms(), group_id=group_id,
            config=self._book.group_config(room_id), capabilities=ROOM_CAPABILITIES,
            # Its creator is its first admin; the label is its shared name, sealed under
            # a random name key (the server reads the group context: names.py).
            extensions=[profile_extension(
                RoomProfile((self._book.username,), seal(group_id, RoomNames(label), key))
            )],
        )
        await self._link.request(
            pr.RoomCreate(roomId=room_id, groupInfo=group.group_info()),
            frozenset({pr.ROOM_CREATED}),
            timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        room = Room(room_id=room_id, label=label, group=group)
        with self._store.transaction():
            self._store.add_room(room_id, label)
            keep_key(self._store, room, key)
            self._book.persist(room)
        self._book.rooms[room_id] = room
        self._book.emit(RoomJoined(room_id=room_id, label=label, epoch=0))
        await self._audit.append(room, AuditAction.ROOM_CREATED)
        return room

    async def invite(self, room: Room, username: str) -> CommitResult | None:
        """Add every device of ``username`` (a commit with Adds and a Welcome), each with a
        KeyPackage of the room's suite."""
        claimed = await self._key_packages.claim(username, self._book.active(room).suite.id)
        if not claimed:
            raise RemoteError(f"'{username}' has no device with a usable KeyPackage")
        packages = dict(claimed)

        def build(group: Group) -> Plan | None:
            present = set(room.members())
            todo = [(d, kp) for d, kp in packages.items() if (username, d) not in present]
            if not todo:
                return None
            bundle = group.add_members(
                [kp for _, kp in todo], rng=secrets.token_bytes, now_ms=now_ms(),
                authenticated_data=self._head_aad(),
            )
            adds = tuple((username, d) for d, _ in todo)
            return Plan(bundle, adds, (), AuditAction.MEMBER_ADDED)

        result = await self.commit(room, build)
        if result is not None:
            await self._share_current_token(room)
            await self._share_name_key(room)
        return result

    async def _share_name_key(self, room: Room) -> None:
        """Members we added learn the key of the room's shared names (names.py). The
        add itself succeeded: a failure here is reported, not raised."""
        key = room.name_key
        if key is None or shared_names(room) is None:
            return
        try:
            await self._messages.send_name_key(room, key)
        except (SottovoceError, UsageError) as exc:
            self._report(exc, f"room {room.room_id}: new members not told its name: {exc}")

    async def _share_name_key_soon(self, room: Room, epoch: int) -> None:
        """A device joined by an external commit in ``epoch``: the first member to get
        to it (spread, so usually one) sends it the name key."""
        await asyncio.sleep(random.random() * 0.3)  # noqa: S311 - spread the herd
        if room.name_key_sent >= epoch or room.removed:
            return  # another member did, or the room moved on without us
        room.name_key_sent = epoch
        await self._share_name_key(room)

    async def _share_current_token(self, room: Room) -> None:
        """Members added by a Welcome learn the room's token (to check later joiners).

        The add itself succeeded: a failure here is reported, not raised (until they are
        told, they refuse a joiner by token and rejoin, see "Recovery")."""
        token = self._book.tokens.current(room.room_id)
        if token is None:
            return
        try:
            await self._share_token(room, token)
        except (SottovoceError, UsageError) as exc:
            self._report(
                exc, f"room {room.room_id}: new members not told the join token: {exc}"
            )

    async def remove(self, room: Room, username: str, device: str | None) -> CommitResult | None:
        """Remove every device of ``username`` (or just ``device``) from the room."""
        if device is None and not any(u == username for u, _ in room.members()):
            raise UsageError(f"'{username}' is not a member of this room")
        return await self.commit(room, partial(self.remove_plan, room, username=username,
                                               device=device))

    def remove_plan(
        self,
        room: Room,
        group: Group,
        username: str,
        device: str | None,
        action: AuditAction = AuditAction.MEMBER_REMOVED,
    ) -> Plan | None:
        leaves: list[int] = []
        gone: list[Device] = []
        for member in group.members():
            who = device_of(member.credential)
            if who is None or who[0] != username or (device is not None and who[1] != device):
                continue
            if who == self._book.me:
                raise UsageError("a device cannot remove itself with a commit")
            leaves.append(member.index)
            gone.append(who)
        if not leaves:
            return None
        bundle = group.remove_members(leaves, rng=secrets.token_bytes, now_ms=now_ms(),
                                      authenticated_data=self._head_aad())
        return Plan(bundle, (), tuple(gone), action)

    def _head_aad(self) -> bytes:
        """A commit's authenticated data: our transparency-log head (payload.py)."""
        return encode_log_head(self._messages.log_head())

    def _compare_head(self, aad: bytes, credential: Credential | None) -> None:
        head, sink = decode_log_head(aad), self._messages.on_log_head
        who = device_of(credential)
        if head is not None and sink is not None and who is not None and who != self._book.me:
            sink(who[0], *head)

    async def self_update(self, room: Room, *, only_old_leaf: bool = False) -> CommitResult | None:
        """Fresh keys on our direct path (an empty commit with a path, RFC 9420 §12.4).
        ``only_old_leaf``: none (``None``) unless our leaf lacks today's capabilities,
        decided under the room's lock (two refreshes at once make one commit)."""

        def build(group: Group) -> Plan | None:
            if only_old_leaf and not lacks_capabilities(group, group.own_leaf_index):
                return None
            # Our leaf is refreshed with today's capabilities (a leaf from before the
            # room profile thus gains it, RFC 9420 §12.4.2).
            bundle = group.commit(rng=secrets.token_bytes, now_ms=now_ms(),
                                  include_pending=False, capabilities=ROOM_CAPABILITIES,
                                  authenticated_data=self._head_aad())
            return Plan(bundle, (), ())

        return await self.commit(room, build)

    async def commit(
        self, room: Room, build: Callable[[Group], Plan | None]
    ) -> CommitResult | None:
        """Send one commit; on commit_conflict process the winner, rebuild and retry."""
        for attempt in range(ROOM_COMMIT_RETRIES):
            async with room.lock:
                await self._audit.fetch(room)
                group = self._book.active(room)
                plan = build(group)
                if plan is None:
                    return None  # someone else already did it (e.g. removed a revoked device)
                carrier: TreeCarrier | None = None
                if not welcome_fits(plan.bundle.welcome):
                    # Too large for a frame: the same commit again, its tree out of band.
                    group.clear_pending_commit()
                    group.welcome_tree = carrier = TreeCarrier()
                    try:
                        plan = build(group)
                    finally:
                        group.welcome_tree = None
                    if plan is None:
                        return None
                epoch = group.epoch
                # Proposals held by reference (a member leaving) remove devices too.
                gone = {d for m in plan.bundle.staged.removes if (d := device_of(m.credential))}
                if gone - set(plan.removes):
                    plan = replace(plan, removes=tuple(sorted(gone | set(plan.removes))))
                message_id, idem = new_id(), new_id()
                info = group.staged_group_info(plan.bundle.staged)
                try:
                    check_fits(room.room_id, plan.bundle.commit, info)
                    if carrier is not None:  # the tree is on the server before its Welcome
                        await carrier.upload(self._link, plan.adds)
                except BaseException:
                    group.clear_pending_commit()
                    raise
                staged = plan.bundle.staged
                audit = self._audit.entry(
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
                    adds=member_refs(plan.adds),
                    removes=member_refs(plan.removes),
                    groupInfo=info,
                    audit=audit,
                    proposals=tuple(held(self._store, room.room_id, epoch)),
                )
                room.inflight = message_id
                try:
                    reply = await request_retrying(self._link, request, pr.ROOM_COMMITTED)
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
                        await self._sync.catch_up(
                            room,
                            epoch=target if isinstance(target, int) else epoch + 1,
                            seq=winning if isinstance(winning, int) else None,
                        )
                    await backoff(attempt, exc.retry_after_ms)
                    continue
                except BaseException:
                    if room.inflight == message_id:
                        room.inflight = None
                        group.clear_pending_commit()
                    raise
                seq = reply.get("serverSeq")
                if not isinstance(seq, int) or isinstance(seq, bool):
                    raise RemoteError("room.committed without a serverSeq")
                room.audit.append(audit)
                events: list[ClientEvent] = []
                with self._store.transaction():
                    self._merge_own(room, message_id, events)
                self._book.emit_all(events)
                return CommitResult(room_id=room.room_id, epoch=room.epoch, server_seq=seq)
        raise ServerError(
            "commit_conflict", "lost too many commit races in a row; try again later",
            retryable=True,
        )

    def _merge_own(self, room: Room, message_id: str, events: list[ClientEvent]) -> None:
        """Our commit was accepted: merge it (once; our own frame may have done it)."""
        if room.inflight != message_id or room.group is None:
            return
        room.inflight = None
        pending, old = room.group.pending_commit, shared_names(room)
        key = None if pending is None else key_of_commit(room.group, pending)
        staged = room.group.merge_pending_commit()
        self._learn(room, key, old)
        # The position is not moved to our commit's serverSeq: frames before it
        # (messages of the old epoch) may still be queued; our own frame moves it.
        self._book.touched.add(room.room_id)
        self._book.persist(room, seq=room.last_seq)
        events.append(changed(room, staged, self._book.username, self._book.device_id))

    # =========================================================================
    # The join token
    # =========================================================================

    async def set_token(self, room: Room, *, rotate: bool) -> str:
        """Make (or rotate) the room's join token; shown once, the server keeps a hash."""
        self._book.active(room)
        token = new_token()
        secret = Secret(token.encode("ascii"))
        # The members learn the token first (so they can check a joiner's PSK before any
        # joiner can use it: its commit comes after this message in the room's order),
        # then the server learns its hash (protocol/rooms.py, "Joining by token").
        await self._share_token(room, secret)
        action = AuditAction.TOKEN_ROTATED if rotate else AuditAction.TOKEN_CREATED
        await self._audit.with_entry(
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
        message_id = await self._messages.send_token(room, token)
        stored = self._store.get_message(message_id)
        if stored is None or stored.status is not DeliveryStatus.SENT:
            raise NotConnected("the members could not be told the new token; try again")

    async def revoke_token(self, room: Room) -> None:
        self._book.active(room)
        await self._audit.with_entry(
            room,
            AuditAction.TOKEN_REVOKED,
            lambda entry: pr.RoomTokenRevoke(roomId=room.room_id, audit=entry),
            pr.ROOM_TOKEN_UPDATED,
        )
        with self._store.transaction():  # nothing left to tell members we add
            self._book.tokens.forget_current(room.room_id)

    # =========================================================================
    # Commits and notices of the room (inside the client's batch transaction)
    # =========================================================================

    def apply_commit(self, room: Room, frame: RoomFrame, events: list[ClientEvent]) -> None:
        group = room.group
        own = (frame.sender_user, frame.sender_device) == self._book.me
        if frame.message_id == room.inflight or (
            # Sent before a restart: the saved state still holds it as pending, and the
            # server authenticated the sender device, so this commit is that one.
            own and group is not None and group.pending_commit is not None
            and frame.epoch == group.epoch and room.inflight is None
        ):
            room.inflight = frame.message_id
            self._merge_own(room, frame.message_id, events)
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
            self.check_declared(staged, frame, joiner, resync)
            check_staged(group, staged, self._contacts, room.revoked_notices)
            self._compare_head(processed.authenticated_data, processed.credential)
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
            self._sync.start_recovery(room, f"a commit could not be verified: {exc}", frame.adds)
            return
        if room.inflight is not None:
            # Our own commit for this epoch lost: the server will say commit_conflict.
            room.inflight = None
        key, old = key_of_commit(group, staged), shared_names(room)
        group.merge_staged_commit(staged)
        if staged.self_removed:
            room.removed = True
        else:
            self._learn(room, key, old)
        if staged.external and not staged.self_removed:
            epoch = group.epoch
            self._book.after.append(
                lambda: self._book.spawn(self._share_name_key_soon(room, epoch))
            )
        committer = device_of(processed.credential) or (frame.sender_user, frame.sender_device)
        change = changed(room, staged, committer[0], committer[1])
        if resync:
            change = replace(change, removed=())  # the same device, with a fresh leaf
        elif staged.external:
            change = replace(change, added=(*change.added, f"{committer[0]}/{committer[1]}"))
        events.append(change)

    def _learn(self, room: Room, key: NameKey | None, old: RoomNames | None) -> None:
        """A merged commit sealed new names under ``key``: keep it, and let a label
        that was the old name follow the new one (inside the batch transaction)."""
        if key is None:
            return
        keep_key(self._store, room, key)

        def taken(label: str) -> bool:
            return any(r != room.room_id for r in self._store.rooms_by_label(label))

        follow(self._store, room, old, taken)
        self._book.touched.add(room.room_id)

    def check_declared(
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
            if self._contacts.contact(user) is None and user in self._book.unreachable:
                raise NotConnected(f"could not look up room member '{user}'")
            if not self._key_packages.key_matches(user, device, key):
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
            contact = self._contacts.contact(who[0])
            if contact is not None and not self._key_packages.key_matches(
                who[0], who[1], member.signature_key
            ):
                raise RemoteError("an added device's key is not its certificate's")

    def apply_notice(self, room: Room, frame: RoomFrame, _: list[ClientEvent]) -> None:
        if room.removed or room.group is None:
            return
        if frame.remove_request is not None:
            user, device = frame.remove_request
            room.revoked_notices.add((user, device))
            self._book.after.append(
                lambda: self._book.spawn(self._auto_remove(room, user, device))
            )
        elif frame.join_request is not None:
            user, device = frame.join_request
            kp_bytes = frame.ciphertext
            self._book.after.append(
                lambda: self._book.spawn(self._auto_add(room, user, device, kp_bytes))
            )

    async def _auto_remove(self, room: Room, user: str, device: str) -> None:
        """A removeRequest (revoked device): commit its Remove unless someone did already."""
        try:
            try:
                await self._contacts.lookup(user)
            except ServerError as exc:
                if exc.code != "unknown_user":
                    raise
                # The account was deleted: the directory vouches for it exactly as it
                # does for a revocation, so every device of it counts as revoked.
            else:
                contact = self._contacts.contact(user)
                if contact is None or device not in contact.revoked:
                    return  # the directory does not say revoked: not the server's call
            await asyncio.sleep(random.random() * 0.05)  # noqa: S311 - spread the herd
            await self.commit(
                room,
                lambda g: self.remove_plan(room, g, user, device, AuditAction.DEVICE_REVOKED),
            )
        except (SottovoceError, UsageError) as exc:
            self._report(exc)

    async def _auto_add(self, room: Room, user: str, device: str, kp_bytes: bytes) -> None:
        """A joinRequest: add the requester with its KeyPackage (checked like a claimed one)."""
        try:
            await self._contacts.lookup(user)
            kp = decode_key_package(kp_bytes)
            suite = self._book.active(room).suite.id
            self._key_packages.check(user, device, kp, now_ms(), suite)

            def build(group: Group) -> Plan | None:
                if (user, device) in room.members():
                    return None
                bundle = group.add_members([kp], rng=secrets.token_bytes, now_ms=now_ms(),
                                           authenticated_data=self._head_aad())
                return Plan(bundle, ((user, device),), (), AuditAction.MEMBER_JOINED)

            await asyncio.sleep(random.random() * 0.05)  # noqa: S311 - spread the herd
            if await self.commit(room, build) is not None:
                await self._share_current_token(room)
                await self._share_name_key(room)
        except (SottovoceError, UsageError) as exc:
            self._report(exc)
