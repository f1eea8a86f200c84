"""The RoomManager: the rooms API of the SDK (``client.rooms``) and the hooks the
client's batch loop calls. It composes the parts of this package and hands each
only what it uses; each part's module says what it does.

    RoomManager ─┬─► Recovery ──► Membership ──► RoomMessages ──► RoomSync
                 └─► Joins ───────────────────────────────────────► RoomSync
                     below them all: AuditLog, KeyPackages ──► RoomBook ──► tokens, model

    The back-edges are wired here, as callables: RoomSync plays a frame through the
    part that handles its kind, and starts Recovery.recover for a room it cannot follow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sottovoce.client.control import ControlHook
from sottovoce.client.events import ClientEvent
from sottovoce.client.expiry import Expiries
from sottovoce.client.ports import Contacts, Emit, Link, SendQueue, Spawn
from sottovoce.client.rooms.admin import RoomAdmin
from sottovoce.client.rooms.audit import AuditLog
from sottovoce.client.rooms.book import RoomBook
from sottovoce.client.rooms.joins import Joins
from sottovoce.client.rooms.keypackages import KeyPackages
from sottovoce.client.rooms.keys import media_keys
from sottovoce.client.rooms.membership import Membership
from sottovoce.client.rooms.messages import CallSignalSink, RoomMessages
from sottovoce.client.rooms.model import (
    MEDIA_SUITE,
    ROOM_REQUEST_TIMEOUT_S,
    SUITE,
    CommitResult,
    Device,
    Room,
    SyncedMark,
    device_of,
)
from sottovoce.client.rooms.names import display_name, topic
from sottovoce.client.rooms.recovery import Recovery
from sottovoce.client.rooms.rules import roles
from sottovoce.client.rooms.sync import RoomSync
from sottovoce.client.store import Store, StoredMessage
from sottovoce.crypto.sign import SigningKey
from sottovoce.errors import UsageError
from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.audit import AuditAction, AuditTrail
from sottovoce.secret import Secret
from sottovoce.sframe.mls_keys import MediaKeyManager


class RoomManager:
    """Every room of one device; owned by :class:`~sottovoce.client.Client`.

    ``link``, ``contacts`` and ``sends`` are the client's connection, directory and
    outbox; ``emit`` hands events to the application, ``spawn`` runs background work,
    ``queue_marker`` queues a :class:`SyncedMark` behind the frames already received.
    """

    def __init__(
        self, *, store: Store, link: Link, contacts: Contacts, sends: SendQueue,
        username: str, device_id: str, signing_key: SigningKey | None,
        emit: Emit, spawn: Spawn, queue_marker: Callable[[SyncedMark], None],
    ) -> None:
        self.username, self.device_id, self._link = username, device_id, link
        self._book = RoomBook(
            store=store, username=username, device_id=device_id, signing_key=signing_key,
            emit=emit, spawn=spawn,
        )
        self._key_packages = KeyPackages(self._book, link, contacts)
        self._audit = AuditLog(self._book, link)
        self._sync = RoomSync(self._book, link, queue_marker)
        self._messages = RoomMessages(self._book, link, sends, self._sync)
        self._membership = Membership(
            self._book, link, contacts, self._key_packages, self._audit, self._sync,
            self._messages,
        )
        self._joins = Joins(
            self._book, link, contacts, self._key_packages, self._audit, self._sync
        )
        self._recovery = Recovery(self._book, link, self._sync, self._membership)
        self._admin = RoomAdmin(self._book, link, self._membership, self._messages)
        self._sync.wire(
            kinds={
                "commit": self._membership.apply_commit,
                "message": self._messages.apply_message,
                "notice": self._membership.apply_notice,
            },
            rejoin=self._recovery.recover,
        )

    # =========================================================================
    # Queries
    # =========================================================================

    def all(self) -> list[Room]:
        return list(self._book.rooms.values())

    def get(self, ref: str) -> Room:
        """A room by id, or by its local name (must be unambiguous)."""
        return self._book.get(ref)

    def history(self, ref: str, limit: int = 50, before: int | None = None) -> list[StoredMessage]:
        return self._book.store.history(self.get(ref).room_id, limit=limit, before=before)

    def epoch_authenticator(self, ref: str) -> bytes:
        return self._book.active(self.get(ref)).epoch_authenticator.expose()

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
        return media_keys(self._book.active(self.get(ref)), keys, suite)

    @property
    def commit_conflicts(self) -> int:
        """Commits of ours the delivery service refused for another one of the same epoch."""
        return self._membership.commit_conflicts

    @property
    def catch_ups(self) -> int:
        """Gaps (a frame of a later epoch than ours) filled by room.sync."""
        return self._sync.catch_ups

    @property
    def stale_resends(self) -> int:
        """Queued room messages re-encrypted for a newer epoch after stale_epoch."""
        return self._messages.stale_resends

    async def info(self, ref: str) -> dict[str, Any]:
        """The server's view of the room (members, epoch): what it routes by."""
        room = self.get(ref)
        _, data = await self._link.request(
            pr.RoomInfo(roomId=room.room_id),
            frozenset({pr.ROOM_STATE}),
            timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        return data

    # =========================================================================
    # KeyPackages
    # =========================================================================

    async def ensure_key_packages(self) -> None:
        """Upload the first batch and a last-resort KeyPackage, once per device; replace a
        stock, and refresh our leaves, made before the room profile capability."""
        await self._key_packages.ensure()
        await self._admin.refresh_leaves()

    async def replenish(self, notice: dict[str, Any] | None = None) -> None:
        """``sottovoce.keypackages.low``: top the stock of the suite it names up (suite 1
        if it names none; errors become events)."""
        suite = (notice or {}).get("suite", SUITE)
        valid = isinstance(suite, int) and not isinstance(suite, bool)
        await self._key_packages.replenish(suite if valid else SUITE)

    # =========================================================================
    # Membership
    # =========================================================================

    async def create_room(self, label: str, suite: int = SUITE) -> Room:
        """A new room with this device as its only member; ``label`` is this device's name
        for it (the server never sees it; :meth:`announce_invite` tells invitees).
        ``suite``: its MLS cipher suite, one of ROOM_SUITES (suite 1 unless asked; the
        hybrid X-Wing suite adds only devices with KeyPackages of it)."""
        return await self._membership.create_room(label, suite)

    def suite(self, ref: str) -> int | None:
        """The room's MLS cipher suite (RFC 9420 §17.1 code point; ``None`` once this
        device holds no group state for it, say after it was removed)."""
        group = self.get(ref).group
        return None if group is None else group.suite.id

    # --- the shared profile (protocol/room_rules.py, names.py) and leaving ------------

    def name(self, ref: str) -> str:
        """The room's shared name (this device's label for a room that shares none, or
        until a member told us its name key)."""
        return display_name(self.get(ref))

    def topic(self, ref: str) -> str:
        return topic(self.get(ref))

    async def rename_room(self, ref: str, name: str) -> CommitResult | None:
        """Change the room's shared name (admins only): every member sees it, the
        server only that it changed (``None``: it already had that name)."""
        return await self._admin.rename(self.get(ref), name)

    async def set_topic(self, ref: str, text: str) -> CommitResult | None:
        """Change the room's shared topic (admins only), sealed like its name."""
        return await self._admin.set_topic(self.get(ref), text)

    def roles(self, ref: str) -> dict[str, str]:
        """Username → ``admin`` / ``member``, for every member account."""
        return roles(self.get(ref))

    async def promote(self, ref: str, username: str) -> CommitResult | None:
        return await self._admin.promote(self.get(ref), username)

    async def demote(self, ref: str, username: str) -> CommitResult | None:
        return await self._admin.demote(self.get(ref), username)

    async def leave(self, ref: str) -> bool:
        """Leave the room: a self-remove proposal, then this device forgets its keys.
        True when a member committed the removal within a few seconds; else the next
        member online commits it."""
        return await self._admin.leave(self.get(ref))

    def rename(self, ref: str, label: str) -> None:
        """Change this device's own name for the room (the shared one:
        :meth:`rename_room`); other members keep theirs."""
        room = self.get(ref)
        with self._book.store.transaction():
            self._book.store.set_room_label(room.room_id, label)
        room.label = label

    async def invite(self, ref: str, username: str) -> CommitResult | None:
        """Add every device of ``username`` (a commit with Adds and a Welcome)."""
        return await self._membership.invite(self.get(ref), username)

    async def remove(self, ref: str, username: str) -> CommitResult | None:
        """Remove every device of ``username`` from the room."""
        return await self._membership.remove(self.get(ref), username, None)

    async def remove_device(self, ref: str, username: str, device: str) -> CommitResult | None:
        return await self._membership.remove(self.get(ref), username, device)

    async def self_update(self, ref: str) -> CommitResult | None:
        """Fresh keys on our direct path (an empty commit with a path, RFC 9420 §12.4)."""
        return await self._membership.self_update(self.get(ref))

    async def create_token(self, ref: str) -> str:
        """Make (or rotate) the room's join token; shown once, the server keeps a hash."""
        return await self._membership.set_token(self.get(ref), rotate=False)

    async def rotate_token(self, ref: str) -> str:
        return await self._membership.set_token(self.get(ref), rotate=True)

    async def revoke_token(self, ref: str) -> None:
        await self._membership.revoke_token(self.get(ref))

    async def set_setting(self, ref: str, setting: str, value: str) -> None:
        """Change one room setting (``residency``: a region or "none"; ``recorder``: "on"
        or "off"). Only the room's admin may; the change and its signed audit entry are
        stored together (``not_admin`` otherwise)."""
        why = pr.setting_refusal(setting, value)
        if why is not None:
            raise UsageError(why)
        room = self.get(ref)
        self._book.active(room)
        await self._audit.with_entry(
            room,
            AuditAction.ROOM_SETTING,
            lambda entry: pr.RoomSettingSet(
                roomId=room.room_id, setting=setting, value=value, audit=entry
            ),
            pr.ROOM_SETTING_UPDATED,
            ((setting, value),),
        )

    async def join_with_token(self, token: str, label: str | None = None) -> Room:
        """Join by external commit (RFC 9420 §12.4.3.2) from the GroupInfo the token unlocks.

        The commit injects the token's PSK (``token_psk``, named by the hash the server
        keeps), which the members check: knowing the wire token or its hash is not enough.
        """
        return await self._joins.join_with_token(token, label)

    async def request_join(self, token: str) -> str:
        """Join by request: the members (any one online) answer with an Add and a Welcome.

        Returns the room id; the room appears (``RoomJoined``) when the Welcome arrives.
        """
        return await self._joins.request_join(token)

    # =========================================================================
    # Messages
    # =========================================================================

    async def send(self, ref: str, text: str) -> str:
        """Encrypt ``text`` once for the room and queue it in the durable outbox.

        Online, returns the messageId after the server's ack (``ServerError`` if it
        refuses); offline (or if the ack is slow), once the message is durably
        queued: the outbox goes out on every reconnect with the same messageId and
        idempotencyKey, as 1:1 sends do (``client.wait_sent`` waits for the ack).
        """
        return await self._messages.send(self.get(ref), text)

    async def send_record(self, ref: str, content_type: str, text: str) -> str:
        """Send a message of another kind than text (a file) to the room, like :meth:`send`."""
        return await self._messages.send_record(self.get(ref), content_type, text)

    async def send_control(self, ref: str, content_type: str, body: bytes, text: str) -> str:
        """Send a control message (client/control.py) in the room, like a message."""
        return await self._messages.send_control(self.get(ref), content_type, body, text)

    def set_controls(self, hook: ControlHook) -> None:
        """Where the room's control payloads go (client/conversation.py)."""
        self._messages.controls = hook

    async def send_timer(self, ref: str, body: str) -> str:
        """Send a timer message (client/expiry.py) to the room."""
        return await self._messages.send_timer(self.get(ref), body)

    def use_expiries(self, expiries: Expiries) -> None:
        """Share the client's expiry bookkeeping (one sweep task wakes for every path)."""
        self._messages.expiries = expiries

    async def send_call_signal(self, ref: str, signal: bytes) -> str:
        """Send one room-call signal as an MLS application message of the room."""
        return await self._messages.send_call_signal(self.get(ref), signal)

    def on_call_signal(self, sink: CallSignalSink | None) -> None:
        """Where decrypted room-call signals of every room go (room id, sender, signal),
        in each room's order, this device's own included."""
        self._messages.on_call_signal = sink

    def carry_log_head(
        self, head: Callable[[], tuple[int, bytes] | None], sink: Callable[[str, int, bytes], None]
    ) -> None:
        """Room messages and commits (external joins too) carry ``head()`` (our
        transparency-log head) and hand each member's head to ``sink`` (sender, size,
        root) to be compared."""
        self._messages.log_head, self._messages.on_log_head = head, sink
        self._book.log_head = head

    def leaf_keys(self, ref: str) -> dict[Device, bytes]:
        """The room's member devices now, each with the signature key of its leaf
        (what a room call checks its joiners against); empty once removed."""
        room = self.get(ref)
        if room.group is None or room.removed:
            return {}
        out: dict[Device, bytes] = {}
        for member in room.group.members():
            device = device_of(member.credential)
            if device is not None:
                out[device] = member.leaf.signature_key
        return out

    async def announce_invite(self, ref: str, username: str) -> str | None:
        """Tell the room, inside its encryption, that we invited ``username`` and under which
        name we know the room (:mod:`sottovoce.client.room_notice`); the invitee takes
        that name. ``None`` when this device's name for the room cannot be sent as one."""
        return await self._messages.announce_invite(self.get(ref), username)

    def on_stale_send(self, message_id: str, room_id: str, details: dict[str, Any]) -> None:
        """The server refused a queued room message as ``stale_epoch``: re-encrypt it
        for the new epoch once we are there, same messageId and idempotencyKey."""
        self._messages.on_stale_send(message_id, room_id, details)

    # =========================================================================
    # Audit trail
    # =========================================================================

    async def record_event(self, ref: str, action: AuditAction) -> int:
        """Append a call start/stop or recording on/off entry; returns its index."""
        return await self._audit.record_event(ref, action)

    async def audit(self, ref: str) -> AuditTrail:
        """Fetch and verify the room's whole audit trail. Checks links, signatures, the
        binding to every epoch authenticator this member saw, and that the chain still
        holds the head this member verified before. A broken chain raises
        ``AuditChainError`` naming the entry; an entry in it that is not authentic is
        reported in ``rejected`` and skipped (protocol/audit.py states the rule)."""
        return await self._audit.audit(self.get(ref))

    def verify_audit(self, room_id: str, entries: list[bytes]) -> AuditTrail:
        """Offline verification of ``entries`` with what this device has kept."""
        return self._audit.verify(room_id, entries)

    # =========================================================================
    # Waiting and syncing
    # =========================================================================

    async def wait_until(self, done: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait (without polling) until ``done()`` holds after some batch of room frames."""
        return await self._book.wait(done, timeout)

    async def wait_epoch(self, ref: str, epoch: int, timeout: float = 10.0) -> Room:
        """Wait until the room (joined by then) is at ``epoch`` or later."""
        rooms = self._book.rooms

        def reached() -> bool:
            room = rooms.get(ref)
            return room is not None and room.epoch >= epoch

        if not await self._book.wait(reached, timeout):
            have = rooms.get(ref)
            raise TimeoutError(f"room at epoch {have.epoch if have else None}, wanted {epoch}")
        return rooms[ref]

    async def sync(self, ref: str) -> None:
        """Fetch the room's frames after our position (room.sync) and play them in order."""
        await self._sync.sync(self.get(ref))

    # =========================================================================
    # The client's batch loop (received frames; inside its transaction: no awaits)
    # =========================================================================

    async def prepare(
        self, frames: list[dict[str, Any]], welcomes: list[ev.Envelope]
    ) -> None:
        """Before a batch: the directory lookups its room frames and Welcomes need."""
        await self._joins.prepare(frames, welcomes)

    def accept_frame(self, data: dict[str, Any], events: list[ClientEvent]) -> None:
        """One ``sottovoce.room.frame``."""
        self._sync.accept_frame(data, events)

    def accept_inbox(
        self, inbox_seq: int, envelope: ev.Envelope, data: dict[str, Any], events: list[ClientEvent]
    ) -> None:
        """An inbox envelope of a room (a Welcome for us)."""
        self._joins.accept_inbox(data, events)

    def accept_synced(self, mark: SyncedMark, events: list[ClientEvent]) -> None:
        """Every frame of one room.sync round was accepted: play the held ones in order."""
        self._sync.accept_synced(mark, events)

    def flush(self) -> None:
        """Inside the batch transaction: write every room the batch changed, once."""
        self._book.flush()

    def discard_unflushed(self) -> None:
        """The batch transaction rolled back: forget in-memory group changes it made."""
        self._book.discard_unflushed()
        self._joins.forget_welcomes()

    def after_batch(self) -> None:
        """After the batch transaction committed: ack room positions, wake waiters."""
        book = self._book
        book.touched.clear()
        acks, book.acks = book.acks, {}
        for room_id, seq in acks.items():
            self._link.send_frame(pr.RoomAck(roomId=room_id, upToServerSeq=seq).to_frame())
        self._joins.forget_welcomes()  # opened for this batch only
        book.unreachable.clear()
        after, book.after = book.after, []
        for action in after:
            action()
        book.notify()

    def audit_only_private_material(self) -> list[tuple[str, Secret]]:
        """FOR THE BLINDNESS AUDIT ONLY: each room's current epoch secrets and this
        member's HPKE tree keys (the epoch authenticator is left out: audit entries may
        carry it on purpose)."""
        out: list[tuple[str, Secret]] = []
        for room in self.all():
            state = getattr(room.group, "_state", None)  # mls/group/epoch_state.py
            if state is None:
                continue
            epoch = state.epoch
            for name in type(epoch.secrets).__dataclass_fields__:
                value = getattr(epoch.secrets, name)
                if isinstance(value, Secret) and name != "epoch_authenticator":
                    out.append((f"mls room {room.room_id} {name}", value))
            for node, key in sorted(epoch.private.keys.items()):
                out.append((f"mls room {room.room_id} tree key node {node}", key))
        return out
