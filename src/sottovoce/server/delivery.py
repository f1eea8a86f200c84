"""Delivery: the KSMP v3 contract's send and ack rules (docs/protocol.md §Delivery).

::

    ksmpv3.send ──► validate (sender, conversation, device set) ──► storage.append
                                                                        │ group commit
    ksmpv3.send.ack ◄── after COMMIT ◄──────────────────────────────────┘
    ksmpv3.inbox.frame ──► Presence: each target device here, on another node, or a tickle

    ksmpv3.ack.read{n} ──► delete the device's frames ≤ n

A send to an account that blocked the sender (``sottovoce.block``, carried by the cached
account record) keeps only the sender's own-device copies and is acknowledged exactly
as any other: the sender cannot tell (docs/threat-model.md §Blocking).

(``ksmpv3.resume`` is :mod:`.replay`'s.) One serverSeq per logical message (per
conversation, strictly increasing); one globalInboxSeq per device per frame; both
assigned inside the commit. Ephemeral sends never touch storage: they are relayed to
the target devices online now (globalInboxSeq 0) or refused with
``recipient_offline``. They carry no serverSeq but an ``ephemeralSeq`` (per
conversation, counted in this server process's memory, restarting with it), so that
no client can mistake one sequence for the other.

Delivery is given what it uses (storage, the directory cache, presence, the fan-out
for ephemeral relays, metrics, the log) by the app, and imports none of them back.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sottovoce.limits import CLOCK_SKEW_MS, MAX_MESSAGE_EXPIRY_MS
from sottovoce.protocol.events import dm_conversation_id
from sottovoce.server.directory import Directory
from sottovoce.server.errors import WireFailure
from sottovoce.server.fanout import Fanout
from sottovoce.server.frames import ack_text, inbox_frame_text, stored_ack_text
from sottovoce.server.logs import JsonLogger
from sottovoce.server.metrics import Metrics
from sottovoce.server.presence import Presence
from sottovoce.server.sendview import SendView
from sottovoce.server.session import Session
from sottovoce.server.storage.base import (
    AccountRecord,
    SendOutcome,
    SendRequest,
    Storage,
    envelope_text,
)
from sottovoce.server.storage.quota import InboxFull

#: Ephemeral idempotency keys remembered (in memory only) to answer retries.
EPHEMERAL_IDEM_MAX = 100_000


def _pairs(items: AbstractSet[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"userId": u, "deviceId": d} for u, d in sorted(items)]


def check_expiry(expires_ms: int) -> None:
    """A disappearing message's ``expiresAtMs`` (1:1 or room): 0, or within a week from
    now (give or take the clock skew), so no row is kept longer than a timer allows."""
    now = time.time_ns() // 1_000_000
    if expires_ms and not (
        now - CLOCK_SKEW_MS <= expires_ms <= now + MAX_MESSAGE_EXPIRY_MS + CLOCK_SKEW_MS
    ):
        raise WireFailure("bad_request", "expiresAtMs must be within a week from now")


@dataclass(eq=False, repr=False)
class Delivery:
    storage: Storage
    directory: Directory
    presence: Presence
    fanout: Fanout
    metrics: Metrics
    log: JsonLogger
    _eph_seq: dict[str, int] = field(init=False, default_factory=dict)
    _eph_idem: OrderedDict[tuple[str, str, str], tuple[str, str, int, int]] = field(
        init=False, default_factory=OrderedDict
    )
    _tasks: set[asyncio.Task[Any]] = field(init=False, default_factory=set)
    # (sender, sender device, recipient) -> the conversation id and the devices a send
    # must cover.
    _expected: dict[tuple[str, str, str], tuple[str, frozenset[tuple[str, str]]]] = field(
        init=False, default_factory=dict
    )
    _expected_version: int = field(init=False, default=-1)
    #: Whether a name must look like one nobody holds to a sender (strict discovery:
    #: server/discovery.py), asked only when a send's devices do not match.
    hidden: Callable[[str, str], Awaitable[bool]] | None = field(init=False, default=None)

    # --- send -----------------------------------------------------------------------

    def send(
        self, session: Session, ev: SendView, data: dict[str, Any], rid: str | None
    ) -> Awaitable[None] | None:
        user, device = session.key
        if ev.senderUserId is not None and ev.senderUserId != user:
            raise WireFailure("forbidden", "senderUserId is not the authenticated user")
        directory = self.directory
        sender_rec = directory.cached(user)
        recipient_rec = directory.cached(ev.recipientUserId)
        if sender_rec is None or recipient_rec is None:
            # Rare (cold cache): load, keeping this connection's sends in order.
            return self._send_cold(session, ev, data, rid)
        return self._send_checked(session, user, device, ev, rid, sender_rec, recipient_rec)

    async def _send_cold(
        self, session: Session, ev: SendView, data: dict[str, Any], rid: str | None
    ) -> None:
        user, _ = session.key
        sender_rec = await self.directory.account(user)
        recipient_rec = await self.directory.account(ev.recipientUserId)
        if recipient_rec is None:
            raise WireFailure("unknown_recipient", "no such recipient")
        if sender_rec is None:
            raise WireFailure("unauthorized", "account no longer exists")
        user, device = session.key
        pending = self._send_checked(session, user, device, ev, rid, sender_rec, recipient_rec)
        if pending is not None:
            await pending

    def _send_checked(
        self,
        session: Session,
        user: str,
        device: str,
        ev: SendView,
        rid: str | None,
        sender_rec: AccountRecord,
        recipient_rec: AccountRecord,
    ) -> Awaitable[None] | None:
        recipient = recipient_rec.user_id
        conversation, expected = self._expected_devices(user, device, sender_rec, recipient_rec)
        if ev.conversationId != conversation:
            raise WireFailure(
                "conversation_mismatch",
                "conversationId must be dm_conversation_id(sender, recipientUserId)",
            )
        expires = ev.expiresAtMs
        if expires and not ev.ephemeral:
            check_expiry(expires)
        given = ev.devices
        if given != expected:
            mismatch = WireFailure(
                "device_mismatch",
                "ciphertexts do not match the active devices",
                details={"missing": _pairs(expected - given), "stale": _pairs(given - expected)},
            )
            if self.hidden is not None and recipient != user:
                return self._mismatch(user, recipient, mismatch, self.hidden)
            raise mismatch
        targets = ev.targets
        if user in recipient_rec.blocked:
            # Blocked: the sender's own copies only, and the same ack as for any send.
            targets = tuple(t for t in targets if t[0] != recipient)
        req = SendRequest(
            sender_user=user,
            sender_device=device,
            conversation_id=ev.conversationId,
            message_id=ev.messageId,
            idempotency_key=ev.idempotencyKey,
            recipient_user=recipient,
            content_type=ev.contentType,
            client_created_at_ms=ev.clientCreatedAtMs,
            # The validated base64 strings go into the envelope as they came.
            targets=targets,
            ephemeral=ev.ephemeral,
            expires_at_ms=0 if ev.ephemeral else expires,
        )
        if ev.ephemeral:
            return self._send_ephemeral(
                session, req, rid, blocked=len(targets) != len(ev.targets)
            )
        self.storage.append(req, partial(self._stored, session, rid, ev.messageId))
        return None

    async def _mismatch(self, user: str, recipient: str, mismatch: WireFailure,
                        hidden: Callable[[str, str], Awaitable[bool]]) -> None:
        """The device list is the recipient's: a strict account hidden from the sender
        answers as a name nobody holds (a contact it let in looks its devices up with
        its capability and sends again; docs/threat-model.md §Discovery)."""
        if await hidden(user, recipient):
            raise WireFailure("unknown_recipient", "no such recipient")
        raise mismatch

    def _expected_devices(
        self, user: str, device: str, sender_rec: AccountRecord, recipient_rec: AccountRecord
    ) -> tuple[str, frozenset[tuple[str, str]]]:
        """The conversation id a send must name, and the devices its ciphertexts must
        cover: exactly the recipient's active devices and the sender's other active
        devices (docs/protocol.md §Delivery); cached until the directory changes."""
        if self._expected_version != self.directory.version:
            self._expected.clear()
            self._expected_version = self.directory.version
        key = (user, device, recipient_rec.user_id)
        found = self._expected.get(key)
        if found is None:
            recipient = recipient_rec.user_id
            # To one's own account (contact-list changes): the other devices only.
            want = {
                (recipient, d.device_id) for d in recipient_rec.devices
                if not d.revoked and (recipient, d.device_id) != (user, device)
            }
            want.update(
                (user, d.device_id)
                for d in sender_rec.devices
                if not d.revoked and d.device_id != device
            )
            found = (dm_conversation_id(user, recipient), frozenset(want))
            if len(self._expected) > 100_000:
                self._expected.clear()
            self._expected[key] = found
        return found

    def _stored(
        self,
        session: Session,
        rid: str | None,
        message_id: str,
        outcome: SendOutcome | None,
        error: BaseException | None,
    ) -> None:
        """Runs on the loop once the send's transaction committed (or failed)."""
        metrics = self.metrics
        if outcome is None:
            failure = (
                error if isinstance(error, WireFailure)
                else WireFailure("internal", "send failed", retryable=True, retry_after_ms=100)
            )
            if isinstance(error, InboxFull):
                metrics.inbox_refused(error.scope)
            elif not isinstance(error, WireFailure):
                self.log.error("send.failed", error=type(error).__name__)
            session.error(failure, rid, message_id)
            return
        session.write(stored_ack_text(rid, outcome.conversation_id, outcome))
        if outcome.duplicate:
            metrics.sends_duplicate += 1
            return
        metrics.sends_stored += 1
        live = self.presence.inbox_frames(
            outcome.frames, outcome.conversation_id, outcome.server_seq
        )
        metrics.deliveries_live += live

    def _send_ephemeral(
        self, session: Session, req: SendRequest, rid: str | None, *, blocked: bool = False
    ) -> Awaitable[None] | None:
        idem = (req.sender_user, req.sender_device, req.idempotency_key)
        seen = self._eph_idem.get(idem)
        if seen is not None:
            conv, mid, seq, received = seen
            session.write(
                ack_text(rid, message_id=mid, idempotency_key=req.idempotency_key,
                         conversation_id=conv, server_seq=seq, received_at_ms=received,
                         duplicate=True, ephemeral=True)
            )
            return None
        online = self.presence.online
        remote = self.fanout.remote
        # A blocked sender is answered as if a device of the recipient were online.
        here = blocked or any(
            u == req.recipient_user and (u, d) in online for u, d, _ in req.targets
        )
        if not here and not remote:
            raise WireFailure("recipient_offline", "no device of the recipient is online")
        seq = self._eph_seq.get(req.conversation_id, 0) + 1
        self._eph_seq[req.conversation_id] = seq
        received = time.time_ns() // 1_000_000
        head, tail = req.envelope_parts()
        texts = [
            ((u, d), inbox_frame_text(0, envelope_text(req, head, tail, ct, seq, received)))
            for u, d, ct in req.targets
        ]
        if not here:
            # The recipient's devices may be on other nodes: ask them first, so that a
            # refused send reaches nobody (as on one node).
            return self._send_ephemeral_remote(session, req, rid, texts, seq, received)
        self._relay_ephemeral(texts)  # best effort elsewhere: the recipient already has it
        self._ephemeral_acked(session, req, rid, seq, received)
        return None

    async def _send_ephemeral_remote(
        self,
        session: Session,
        req: SendRequest,
        rid: str | None,
        texts: list[tuple[tuple[str, str], str]],
        seq: int,
        received: int,
    ) -> None:
        recipient = req.recipient_user
        got = await self.fanout.ephemeral([(k, t) for k, t in texts if k[0] == recipient])
        if not got:
            raise WireFailure("recipient_offline", "no device of the recipient is online")
        self._relay_ephemeral([(k, t) for k, t in texts if k[0] != recipient])
        self._ephemeral_acked(session, req, rid, seq, received)

    def _relay_ephemeral(self, texts: list[tuple[tuple[str, str], str]]) -> None:
        """Ephemeral frames to the target devices here; the others through the fan-out."""
        online = self.presence.online
        away = []
        for key, text in texts:
            target = online.get(key)
            if target is not None:
                target.deliver_ephemeral(text)
            else:
                away.append((key, text))
        if away and self.fanout.remote:
            self.fanout.ephemeral(away)

    def _ephemeral_acked(
        self, session: Session, req: SendRequest, rid: str | None, seq: int, received: int
    ) -> None:
        idem = (req.sender_user, req.sender_device, req.idempotency_key)
        self._eph_idem[idem] = (req.conversation_id, req.message_id, seq, received)
        if len(self._eph_idem) > EPHEMERAL_IDEM_MAX:
            self._eph_idem.popitem(last=False)
        self.metrics.sends_ephemeral += 1
        session.write(
            ack_text(rid, message_id=req.message_id, idempotency_key=req.idempotency_key,
                     conversation_id=req.conversation_id, server_seq=seq,
                     received_at_ms=received, duplicate=False, ephemeral=True)
        )

    # --- ack -----------------------------------------------------------------------

    def ack_read(self, session: Session, up_to: int, rid: str | None) -> None:
        user, device = session.key
        task = asyncio.get_running_loop().create_task(self._ack_read(user, device, up_to))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ack_read(self, user: str, device: str, up_to: int) -> None:
        try:
            deleted = await self.storage.ack_read(user, device, up_to)
            self.metrics.acked += deleted
        except Exception as exc:
            self.log.error("ack.failed", error=type(exc).__name__)
