"""Delivery: the KSMP v3 contract's send / inbox / resume / ack rules (docs/protocol.md §Delivery).

::

    ksmpv3.send ──► validate (sender, conversation, device set) ──► storage.append
                                                                        │ group commit
    ksmpv3.send.ack ◄── after COMMIT ◄──────────────────────────────────┘
    ksmpv3.inbox.frame ──► each target device online now (else a push tickle)

    ksmpv3.resume{n} ──► replay frames after n in order ──► sottovoce.replay.done ──► live
    ksmpv3.ack.read{n} ──► delete the device's frames ≤ n

A replay costs the server far more than the resume that asks for it, so one
device gets one at a time: a new resume supersedes the running replay (it
restarts from the new position, but never resends what this connection already
carried: those frames are on the wire, in order), and a device's replays past
``resume_burst`` wait ``resume_interval_ms`` each, over all its connections.

One serverSeq per logical message (per conversation, strictly increasing);
one globalInboxSeq per device per frame; both assigned inside the commit.
Ephemeral sends never touch storage: they are relayed to the target devices
online now (globalInboxSeq 0) or refused with ``recipient_offline``. They carry
no serverSeq but an ``ephemeralSeq`` (per conversation, counted in this server
process's memory, restarting with it), so that no client can mistake one
sequence for the other.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable
from collections.abc import Set as AbstractSet
from functools import partial
from typing import TYPE_CHECKING, Any

from sottovoce.limits import REPLAY_BATCH
from sottovoce.protocol.events import REPLAY_DONE, dm_conversation_id
from sottovoce.server.errors import CLOSE_REPLACED, WireFailure
from sottovoce.server.ratelimit import KeyedBuckets
from sottovoce.server.sendview import SendView
from sottovoce.server.session import Session
from sottovoce.server.storage.base import (
    AccountRecord,
    SendOutcome,
    SendRequest,
    envelope_text,
)
from sottovoce.server.storage.quota import InboxFull

if TYPE_CHECKING:
    from sottovoce.server.app import ServerApp

#: Ephemeral idempotency keys remembered (in memory only) to answer retries.
EPHEMERAL_IDEM_MAX = 100_000


def inbox_frame_text(global_seq: int, envelope: str) -> str:
    """``ksmpv3.inbox.frame`` around an already-serialized envelope (serialize once)."""
    return (
        '{"event":"ksmpv3.inbox.frame","data":{"globalInboxSeq":' + str(global_seq)
        + ',"envelope":' + envelope + "}}"
    )


def ack_text(
    request_id: str | None,
    *,
    message_id: str,
    idempotency_key: str,
    conversation_id: str,
    server_seq: int,
    received_at_ms: int,
    duplicate: bool,
    ephemeral: bool = False,
) -> str:
    """``server_seq`` is the ephemeralSeq for an ephemeral send (and named so)."""
    # Every id here passed the protocol's id alphabet check: no JSON escaping needed.
    rid = '"requestId":"' + request_id + '",' if request_id is not None else ""
    return (
        '{"event":"ksmpv3.send.ack",' + rid + '"data":{"messageId":"' + message_id
        + '","idempotencyKey":"' + idempotency_key
        + '","conversationId":"' + conversation_id
        + ('","ephemeralSeq":' if ephemeral else '","serverSeq":') + str(server_seq)
        + ',"serverReceivedAtMs":' + str(received_at_ms)
        + (',"duplicate":true}}' if duplicate else ',"duplicate":false}}')
    )


def _pairs(items: AbstractSet[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"userId": u, "deviceId": d} for u, d in sorted(items)]


class Delivery:
    def __init__(self, app: ServerApp) -> None:
        self.app = app
        self.online: dict[tuple[str, str], Session] = {}
        self._eph_seq: dict[str, int] = {}
        self._eph_idem: OrderedDict[tuple[str, str, str], tuple[str, str, int, int]] = (
            OrderedDict()
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        # (sender, sender device, recipient) -> the devices a send must cover.
        self._expected: dict[tuple[str, str, str], frozenset[tuple[str, str]]] = {}
        self._expected_version = -1
        cfg = app.config
        self._resumes = KeyedBuckets(1000 / cfg.resume_interval_ms, cfg.resume_burst)

    # --- presence -------------------------------------------------------------------

    def attach(self, session: Session) -> Awaitable[None] | None:
        """Returns what must finish before the device may resume (the fan-out's subscribe)."""
        if session.closed:
            # The connection closed while its auth handler awaited: detach() already ran
            # (the transport reports the loss at once), so registering now would leave a
            # dead session online for good, taking this device's frames and push tickles.
            return None
        old = self.online.get(session.key)
        if old is not None and old is not session:
            old.close(CLOSE_REPLACED, "replaced by a newer connection of this device")
        self.online[session.key] = session
        return self.app.fanout.attach(session)

    def detach(self, session: Session) -> None:
        if session.user is None or session.device is None:
            return
        key = (session.user, session.device)
        if self.online.get(key) is session:
            del self.online[key]
            self.app.fanout.detach(key)
        if session.replay_task is not None:
            session.replay_task.cancel()

    def notify_user(self, user: str, text: str, *, skip: Session | None = None) -> None:
        for (u, _), s in list(self.online.items()):
            if u == user and s is not skip:
                s.write(text)
        fanout = self.app.fanout
        if fanout.remote:
            rec = self.app.directory.cached(user)
            if rec is not None:
                fanout.notice(
                    [(user, d.device_id) for d in rec.active()
                     if (user, d.device_id) not in self.online], text,
                )

    # --- send -----------------------------------------------------------------------

    def send(
        self, session: Session, ev: SendView, data: dict[str, Any], rid: str | None
    ) -> Awaitable[None] | None:
        user, _ = session.key
        if ev.senderUserId is not None and ev.senderUserId != user:
            raise WireFailure("forbidden", "senderUserId is not the authenticated user")
        directory = self.app.directory
        sender_rec = directory.cached(user)
        recipient_rec = directory.cached(ev.recipientUserId)
        if sender_rec is None or recipient_rec is None:
            # Rare (cold cache): load, keeping this connection's sends in order.
            return self._send_cold(session, ev, data, rid)
        return self._send_checked(session, ev, data, rid, sender_rec, recipient_rec)

    async def _send_cold(
        self, session: Session, ev: SendView, data: dict[str, Any], rid: str | None
    ) -> None:
        user, _ = session.key
        sender_rec = await self.app.directory.account(user)
        recipient_rec = await self.app.directory.account(ev.recipientUserId)
        if recipient_rec is None:
            raise WireFailure("unknown_recipient", "no such recipient")
        if sender_rec is None:
            raise WireFailure("unauthorized", "account no longer exists")
        pending = self._send_checked(session, ev, data, rid, sender_rec, recipient_rec)
        if pending is not None:
            await pending

    def _send_checked(
        self,
        session: Session,
        ev: SendView,
        data: dict[str, Any],
        rid: str | None,
        sender_rec: AccountRecord,
        recipient_rec: AccountRecord,
    ) -> Awaitable[None] | None:
        user, device = session.key
        recipient = recipient_rec.user_id
        if ev.conversationId != dm_conversation_id(user, recipient):
            raise WireFailure(
                "conversation_mismatch",
                "conversationId must be dm_conversation_id(sender, recipientUserId)",
            )
        expected = self._expected_devices(user, device, sender_rec, recipient_rec)
        given = {(u, d) for u, d, _ in ev.targets}
        if given != expected:
            raise WireFailure(
                "device_mismatch",
                "ciphertexts do not match the active devices",
                details={"missing": _pairs(expected - given), "stale": _pairs(given - expected)},
            )
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
            targets=ev.targets,
            ephemeral=ev.ephemeral,
        )
        if ev.ephemeral:
            return self._send_ephemeral(session, req, rid)
        self.app.storage.append(req, partial(self._stored, session, rid, ev.messageId))
        return None

    def _expected_devices(
        self, user: str, device: str, sender_rec: AccountRecord, recipient_rec: AccountRecord
    ) -> frozenset[tuple[str, str]]:
        """The ciphertexts must cover exactly the recipient's active devices and the
        sender's other active devices (docs/protocol.md §Delivery); cached until the
        directory changes."""
        if self._expected_version != self.app.directory.version:
            self._expected.clear()
            self._expected_version = self.app.directory.version
        key = (user, device, recipient_rec.user_id)
        found = self._expected.get(key)
        if found is None:
            recipient = recipient_rec.user_id
            want = {(recipient, d.device_id) for d in recipient_rec.devices if not d.revoked}
            want.update(
                (user, d.device_id)
                for d in sender_rec.devices
                if not d.revoked and d.device_id != device
            )
            found = frozenset(want)
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
        metrics = self.app.metrics
        if outcome is None:
            failure = (
                error if isinstance(error, WireFailure)
                else WireFailure("internal", "send failed", retryable=True, retry_after_ms=100)
            )
            if isinstance(error, InboxFull):
                metrics.inbox_full[error.scope] = metrics.inbox_full.get(error.scope, 0) + 1
            elif not isinstance(error, WireFailure):
                self.app.log.error("send.failed", error=type(error).__name__)
            session.error(failure, rid, message_id)
            return
        session.write(
            ack_text(
                rid,
                message_id=outcome.message_id,
                idempotency_key=outcome.idempotency_key,
                conversation_id=outcome.conversation_id,
                server_seq=outcome.server_seq,
                received_at_ms=outcome.received_at_ms,
                duplicate=outcome.duplicate,
            )
        )
        if outcome.duplicate:
            metrics.sends_duplicate += 1
            return
        metrics.sends_stored += 1
        online = self.online
        fanout = self.app.fanout
        live = 0
        for user, device, seq, envelope in outcome.frames:
            target = online.get((user, device))
            if target is not None:
                target.deliver(seq, inbox_frame_text(seq, envelope))
                live += 1
            else:
                if fanout.remote:  # the node holding the device, if any, writes it
                    fanout.frame(user, device, seq, inbox_frame_text(seq, envelope))
                if not fanout.online_elsewhere((user, device)):
                    self.tickle(user, device, outcome)
        metrics.deliveries_live += live

    def tickle(self, user: str, device: str, outcome: SendOutcome) -> None:
        rec = self.app.directory.cached(user)
        dev = rec.device(device) if rec is not None else None
        if dev is None or dev.push_endpoint is None:
            return
        self.app.pusher.maybe_tickle(
            (user, device),
            dev.push_endpoint,
            conversation_id=outcome.conversation_id,
            server_seq=outcome.server_seq,
            now=time.monotonic(),
        )

    def _send_ephemeral(
        self, session: Session, req: SendRequest, rid: str | None
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
        online = self.online
        remote = self.app.fanout.remote
        here = any(u == req.recipient_user and (u, d) in online for u, d, _ in req.targets)
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
        away = []
        for key, text in texts:
            target = online.get(key)
            if target is not None:
                target.deliver_ephemeral(text)
            elif remote:
                away.append((key, text))
        if away:
            self.app.fanout.ephemeral(away)  # best effort: the recipient already has it
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
        fanout = self.app.fanout
        got = await fanout.ephemeral([(k, t) for k, t in texts if k[0] == recipient])
        if not got:
            raise WireFailure("recipient_offline", "no device of the recipient is online")
        others = []
        for key, text in texts:
            if key[0] == recipient:
                continue
            target = self.online.get(key)
            if target is not None:
                target.deliver_ephemeral(text)
            else:
                others.append((key, text))
        if others:
            fanout.ephemeral(others)
        self._ephemeral_acked(session, req, rid, seq, received)

    def _ephemeral_acked(
        self, session: Session, req: SendRequest, rid: str | None, seq: int, received: int
    ) -> None:
        idem = (req.sender_user, req.sender_device, req.idempotency_key)
        self._eph_idem[idem] = (req.conversation_id, req.message_id, seq, received)
        if len(self._eph_idem) > EPHEMERAL_IDEM_MAX:
            self._eph_idem.popitem(last=False)
        self.app.metrics.sends_ephemeral += 1
        session.write(
            ack_text(rid, message_id=req.message_id, idempotency_key=req.idempotency_key,
                     conversation_id=req.conversation_id, server_seq=seq,
                     received_at_ms=received, duplicate=False, ephemeral=True)
        )

    # --- resume and ack -------------------------------------------------------------

    def resume(self, session: Session, last_seq: int, rid: str | None) -> None:
        key = session.key
        if session.replay_task is not None:
            session.replay_task.cancel()  # superseded: one replay per connection
        again = session.resumed
        session.resumed = True
        session.live = False
        # Everything already routed here is committed and the replay will read it.
        session.pending.clear()
        session.room_pending.clear()
        session.pending_bytes = 0
        session.overflow = False
        if again:
            # What this connection carried is on its way to the client, in order: a
            # repeated resume never resends it (room frames likewise, by room_sent).
            session.last_sent = max(last_seq, session.last_sent)
        else:
            session.last_sent = last_seq  # rooms replay from the device's read positions
        wait = self._resumes.reserve(key)
        metrics = self.app.metrics
        metrics.resumes += 1
        if wait:
            metrics.resumes_deferred += 1
        task = asyncio.get_running_loop().create_task(self._replay(session, rid, delay_ms=wait))
        session.replay_task = task

    def catch_up(self, session: Session) -> None:
        """Re-read storage after ``session.last_sent`` without a replay.done frame.

        The fan-out calls this when this node may have missed live frames (its
        NATS connection dropped): the durable inbox covers the gap.
        """
        if session.closed or not session.resumed:
            return  # not resumed yet: its resume will read storage
        if not session.live:
            session.overflow = True  # a replay is running: make it read storage again
            return
        session.live = False
        task = asyncio.get_running_loop().create_task(self._replay(session, None, announce=False))
        session.replay_task = task

    async def _replay(
        self, session: Session, rid: str | None, *, announce: bool = True, delay_ms: int = 0
    ) -> None:
        user, device = session.key
        storage = self.app.storage
        budget = self.app.config.write_buffer_limit // 4
        replayed = 0
        try:
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)  # this device's turn (resume_interval_ms)
            while not session.closed:
                rows = await storage.read_inbox(user, device, session.last_sent, REPLAY_BATCH)
                written = 0
                for seq, env in rows:
                    if seq <= session.last_sent:
                        continue
                    text = inbox_frame_text(seq, env)
                    session.write(text)
                    session.last_sent = seq
                    written += len(text)
                    replayed += 1
                    if written > budget:
                        written = 0
                        await self._drain(session, budget)
                if len(rows) == REPLAY_BATCH:
                    await self._drain(session, budget)
                    continue
                replayed += await self.app.rooms.replay(session, budget)
                if session.overflow:
                    # Live frames were dropped from the buffer: they are stored, read again.
                    session.overflow = False
                    session.pending.clear()
                    session.room_pending.clear()
                    session.pending_bytes = 0
                    self.app.metrics.replay_rereads += 1
                    continue
                break
            if session.closed:
                return
            # No await from here on: switching to live cannot miss a frame.
            if announce:
                session.reply(REPLAY_DONE, {"upToGlobalInboxSeq": session.last_sent}, rid)
            session.live = True
            pending = sorted(session.pending)
            session.pending.clear()
            session.pending_bytes = 0
            for seq, text in pending:
                session.deliver(seq, text)
            room_pending, session.room_pending = session.room_pending, []
            for room_id, seq, text in room_pending:  # per room already in serverSeq order
                session.deliver_room(room_id, seq, text)
            self.app.metrics.deliveries_replay += replayed
            self.app.log.debug(
                "resume.done", userId=user, deviceId=device, count=replayed,
                seq=session.last_sent,
            )
        except WireFailure as exc:
            session.error(exc, rid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # our bug; the client may resume again
            self.app.log.error("resume.failed", error=type(exc).__name__)
            session.error(WireFailure("internal", "replay failed", retryable=True), rid)

    @staticmethod
    async def _drain(session: Session, budget: int) -> None:
        await asyncio.sleep(0)
        while not session.closed and session.buffered() > budget:
            await asyncio.sleep(0.002)

    def ack_read(self, session: Session, up_to: int, rid: str | None) -> None:
        user, device = session.key
        task = asyncio.get_running_loop().create_task(self._ack_read(user, device, up_to))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ack_read(self, user: str, device: str, up_to: int) -> None:
        try:
            deleted = await self.app.storage.ack_read(user, device, up_to)
            self.app.metrics.acked += deleted
        except Exception as exc:
            self.app.log.error("ack.failed", error=type(exc).__name__)
