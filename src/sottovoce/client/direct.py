"""1:1 messages on this device: encrypt once per device, queue, and read what arrives
(docs/architecture.md §1:1 messages).

    send_text ─► directory (TOFU) ─► claim bundles for devices without a session
              ─► encrypt once per device (peer's devices + our other devices)
              ─► ONE transaction: sessions + message (sending) + outbox row
                 (sends prepared in one loop turn share it: a group commit)
              ─► the outbox (it writes the frame when the connection is up)
    offline, a device we cannot encrypt to yet ─► stored as sending ("unsent"),
              encrypted on the next connection with the messageId it was given
    device_mismatch ─► look the devices up again, encrypt for the new set, resend

    inbox envelope (inside the client's batch transaction, no awaits):
              ─► replay of a stored messageId? skip before decrypting
              ─► from an account we blocked? dropped, nothing stored (contact_list.py)
              ─► decrypt once ─► payload bound to messageId and conversation
              ─► contact list: a stranger's first message makes a request
              ─► message row (ephemeral: the in-memory ring only)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from sottovoce.client.call_payloads import CALL_CONTENT_TYPE
from sottovoce.client.contact_list import ContactList
from sottovoce.client.control import (
    CONTROL_TYPES,
    MARKER_TYPES,
    ControlHook,
    Incoming,
    control_peer,
)
from sottovoce.client.directory import Directory
from sottovoce.client.errors import IdentityChanged, NotConnected, ServerError
from sottovoce.client.events import ClientEvent, EphemeralReceived, ErrorEvent
from sottovoce.client.expiry import TIMER_CONTENT_TYPE, Expiries, read_timer_body, wire_expiry
from sottovoce.client.ids import new_id, now_ms
from sottovoce.client.key_handover import ACCOUNT_KEY_CONTENT_TYPE, KeyHandover
from sottovoce.client.outbox import Outbox
from sottovoce.client.payload import Payload, text_body
from sottovoce.client.ports import Link
from sottovoce.client.presence import PRESENCE_CONTENT_TYPE, Presence
from sottovoce.client.sessions import Device, SessionManager
from sottovoce.client.store import DeliveryStatus, Store, StoredMessage
from sottovoce.errors import RemoteError, SottovoceError, UsageError
from sottovoce.identity import validate_username
from sottovoce.limits import (
    DEVICE_MISMATCH_RETRIES,
    EPHEMERAL_RING_SIZE,
    MAX_FRAME_BYTES,
)
from sottovoce.protocol import events as ev
from sottovoce.protocol.fields import ProtocolError


@dataclass(slots=True, kw_only=True)
class _PendingSend:
    """A prepared send waiting for the group commit."""

    message_id: str
    idempotency_key: str
    peer: str
    text: str
    content_type: str
    created_ms: int
    expires_ms: int
    frame: str
    done: asyncio.Future[None]


class DirectMessages:
    """The 1:1 message path of one device, owned by :class:`~sottovoce.client.Client`."""

    def __init__(
        self, *, store: Store, link: Link, sessions: SessionManager, directory: Directory,
        outbox: Outbox, username: str, device_id: str,
        on_call: Callable[[str, str, bytes], None] | None = None,
        log_head: Callable[[], tuple[int, bytes] | None] = lambda: None,
        on_log_head: Callable[[str, int, bytes], None] | None = None,
        contacts: ContactList | None = None,
    ) -> None:
        self._store, self._link, self._sessions = store, link, sessions
        #: Our latest verified transparency-log head, carried in every payload we send;
        #: a peer's head goes to ``on_log_head`` (sender, size, root) to be compared.
        self._log_head, self._on_log_head = log_head, on_log_head
        #: Where decrypted call signals go: (sender user, sender device, signals body).
        self._on_call = on_call
        self._directory, self._outbox = directory, outbox
        #: Requests and blocks (client/contact_list.py): who is kept, who becomes a contact.
        self._contacts = contacts
        self.username, self.device_id = username, device_id
        self._send_lock = asyncio.Lock()
        self._pending_sends: list[_PendingSend] = []
        #: Sends stored offline wait for encryption (one process per store: exact).
        self._has_unsent = store.unsent_size() > 0
        self._ephemeral: deque[EphemeralReceived] = deque(maxlen=EPHEMERAL_RING_SIZE)
        #: Presence notices (client/presence.py) go here; without it they are dropped.
        self.presence: Presence | None = None
        #: Control payloads (client/control.py) go here; without it they are dropped.
        self.controls: ControlHook | None = None
        #: A new account key from another device of ours (client/key_handover.py).
        self.key_handover: KeyHandover | None = None
        #: Disappearing messages: each send's expiry, each received one's, timer changes.
        self.expiries = Expiries(store)
        #: Ephemeral-chat frames (client/ephemeral.py) are taken here before any Olm
        #: decryption: ``True`` means the envelope was one of them.
        self.ephemeral_frames: Callable[[ev.Envelope], bool] | None = None

    # =========================================================================
    # Ephemeral messages (memory only)
    # =========================================================================

    def ephemeral_messages(self, username: str | None = None) -> list[EphemeralReceived]:
        return [m for m in self._ephemeral if username is None or m.peer == username]

    def forget_ephemeral(self) -> None:
        self._ephemeral.clear()

    # =========================================================================
    # Sending
    # =========================================================================

    async def send_text(self, username: str, text: str, *, ephemeral: bool = False) -> str:
        """See :meth:`sottovoce.client.Client.send_text`."""
        validate_username(username)
        if username == self.username:
            raise UsageError("send to another user; your other devices get a copy anyway")
        return await self._send(username, text, text_body(text), "text", ephemeral=ephemeral)

    async def send_control(
        self, username: str, content_type: str, body: bytes, text: str, *, ephemeral: bool = False
    ) -> str:
        """A control message (client/control.py); ``text`` is what is kept of it here."""
        validate_username(username)
        return await self._send(username, text, body, content_type, ephemeral=ephemeral)

    async def send_record(self, username: str, content_type: str, text: str) -> str:
        """A durable entry of another kind than text (a missed call), sent like a message.

        The server sees ``contentType: "text"`` as for any message; the kind is
        inside the ciphertext, so the relay cannot tell a record from a message.
        """
        validate_username(username)
        return await self._send(username, text, text.encode("utf-8"), content_type)

    async def send_to_own_devices(
        self, content_type: str, body: bytes, text: str | None = None
    ) -> str:
        """A durable message to our other devices only (contact-list changes), UTF-8;
        ``text`` is what is kept of it here (the body itself when not given)."""
        if not self._link.is_up and not self._sessions.devices_of(self.username):
            return ""  # no other device known: nothing to tell
        kept = body.decode("utf-8") if text is None else text
        return await self._send(self.username, kept, body, content_type)

    async def _send(
        self, username: str, text: str, body: bytes, content_type: str, *, ephemeral: bool = False
    ) -> str:
        if self._contacts is not None:
            self._contacts.before_send(username)
        if ephemeral and not self._link.is_up:
            raise NotConnected("ephemeral messages need a live connection")
        async with self._send_lock:
            if (
                not ephemeral
                and not self._link.is_up
                and not self._directory.can_encrypt_offline(username)
            ):
                return self._defer(username, text, content_type)
            if self._link.is_up and self._has_unsent:
                await self._encrypt_unsent()  # older queued messages go out first
            message_id, idempotency_key, created = new_id(), new_id(), now_ms()
            expires = self._expiry_for(username, created, content_type, ephemeral)
            try:
                targets = await self._directory.targets(username)
            except NotConnected:
                if ephemeral:
                    raise
                return self._defer(username, text, content_type)  # the connection dropped
            frame = self._send_event(
                username, targets, message_id, idempotency_key, created,
                {t: body for t in targets}, content_type=content_type, ephemeral=ephemeral,
                expires_at_ms=expires,
            ).to_frame(request_id=message_id)
            if len(frame) > MAX_FRAME_BYTES or ephemeral:
                with self._store.transaction():
                    # The ratchets moved: persist them even if the message goes nowhere.
                    self._sessions.flush()
                if len(frame) > MAX_FRAME_BYTES:
                    raise UsageError("message too large for this many devices")
                if not self._link.send_frame(frame):
                    raise NotConnected("ephemeral messages need a live connection")
                if content_type in MARKER_TYPES:
                    return message_id  # a typing notice: nothing to keep
                self._ephemeral.append(
                    EphemeralReceived(
                        peer=username, sender=self.username, message_id=message_id, text=text
                    )
                )
                return message_id
            pending = _PendingSend(
                message_id=message_id, idempotency_key=idempotency_key, peer=username,
                text=text, content_type=content_type, created_ms=created, expires_ms=expires,
                frame=frame,
                done=asyncio.get_running_loop().create_future(),
            )
            self._pending_sends.append(pending)
            if len(self._pending_sends) == 1:
                asyncio.get_running_loop().call_soon(self._commit_sends)
        # Durable before we return (and before the frame leaves): see _commit_sends.
        await pending.done
        return message_id

    def _send_event(
        self,
        username: str,
        targets: list[Device],
        message_id: str,
        idempotency_key: str,
        created: int,
        bodies: Mapping[Device, bytes],
        *,
        content_type: str,
        ephemeral: bool = False,
        expires_at_ms: int = 0,
    ) -> ev.Send:
        """The ``ksmpv3.send``: one ciphertext per target device (ratchets move).

        ``bodies`` holds each target's payload body (call signals differ per device).
        """
        conversation = ev.dm_conversation_id(self.username, username)

        head = self._log_head()

        def payload(body: bytes) -> bytes:
            return Payload(
                message_id=message_id,
                conversation_id=conversation,
                content_type=content_type,
                created_at_ms=created,
                body=body,
                expires_at_ms=expires_at_ms,
            ).with_head(head).encode()

        ciphertexts = tuple(
            ev.DeviceCiphertext(
                userId=user,
                deviceId=device,
                ciphertext=self._sessions.encrypt(
                    user, device, payload(bodies.get((user, device), b""))
                ),
            )
            for user, device in targets
        )
        send = ev.Send(
            conversationId=conversation,
            messageId=message_id,
            idempotencyKey=idempotency_key,
            recipientUserId=username,
            contentType="text",
            clientCreatedAtMs=created,
            ciphertexts=ciphertexts,
            senderUserId=self.username,
            ephemeral=ephemeral,
            expiresAtMs=wire_expiry(expires_at_ms),
        )
        return send

    def _expiry_for(self, username: str, created: int, content_type: str, ephemeral: bool) -> int:
        """A new message's expiry: the chat's timer now (timer messages themselves stay)."""
        if ephemeral or content_type == TIMER_CONTENT_TYPE:
            return 0
        return self.expiries.for_new(ev.dm_conversation_id(self.username, username), created)

    def _defer(self, username: str, text: str, content_type: str) -> str:
        """Store an outgoing message to encrypt on the next connection (see ``unsent``)."""
        message_id, idempotency_key, created = new_id(), new_id(), now_ms()
        expires = self._expiry_for(username, created, content_type, False)
        with self._store.transaction():
            self._add_outgoing(
                message_id, idempotency_key, username, text, created, content_type, expires
            )
            self._store.add_unsent(message_id)
        self._has_unsent = True
        return message_id

    def _add_outgoing(
        self, message_id: str, idempotency_key: str, peer: str, text: str, created: int,
        content_type: str, expires: int,
    ) -> None:
        if content_type in MARKER_TYPES:
            peer = control_peer(peer)  # kept beside the chat, out of its history
        self._store.add_outgoing(
            message_id, peer=peer, sender=self.username, sender_device=self.device_id,
            text=text, created_ms=created, idempotency_key=idempotency_key,
            content_type=content_type,
        )
        self.expiries.record(message_id, expires)

    async def _encrypt_unsent(self) -> None:
        """Encrypt the messages queued while offline, oldest first; call holding the send lock.

        Each keeps the messageId and idempotencyKey it was stored with, so a send
        the server already has is acknowledged as a duplicate, never stored twice.
        """
        for message_id in self._store.unsent():
            stored = self._store.get_message(message_id)
            if stored is None or stored.status is not DeliveryStatus.SENDING:
                with self._store.transaction():
                    self._store.remove_unsent(message_id)
                continue
            try:
                targets = await self._directory.targets(_chat_peer(stored.peer))
            except NotConnected:
                return  # the next connection tries again
            except SottovoceError as exc:  # e.g. unknown_user: this message can never go
                self._outbox.fail(message_id, exc.code, str(exc))
                continue
            body = self._body_of(stored)
            frame = self._send_event(
                _chat_peer(stored.peer),
                targets,
                message_id,
                stored.idempotency_key or new_id(),
                stored.client_created_ms,
                {t: body for t in targets},
                content_type=stored.content_type,
                expires_at_ms=self.expiries.of(message_id),
            ).to_frame(request_id=message_id)
            if len(frame) > MAX_FRAME_BYTES:
                with self._store.transaction():
                    self._sessions.flush()  # the ratchets moved, as in send_text
                self._outbox.fail(
                    message_id, "too_large", "message too large for this many devices"
                )
                continue
            with self._store.transaction():
                self._sessions.flush()
                self._store.add_outbox(message_id, stored.idempotency_key or "", frame)
                self._store.remove_unsent(message_id)
            self._outbox.pump()
        self._has_unsent = self._store.unsent_size() > 0

    def _body_of(self, stored: StoredMessage) -> bytes:
        """What a queued message of ours carries (a reply's body is rebuilt)."""
        if stored.content_type in CONTROL_TYPES and self.controls is not None:
            return self.controls.body_of(stored)
        return stored.text.encode("utf-8")

    async def send_call(self, username: str, bodies: Mapping[Device, bytes]) -> None:
        """Call signals for devices of ``username`` (and of ours), sent ephemerally.

        The server wants a ciphertext for every device of ``username`` and each other
        device of ours; a device without a signal gets an empty call payload, so the
        relay cannot tell which device a signal is for. See :meth:`send_live`.
        """
        await self.send_live(username, bodies, CALL_CONTENT_TYPE)

    async def send_live(
        self, username: str, bodies: Mapping[Device, bytes] | bytes, content_type: str
    ) -> str:
        """An ephemeral send (call signals, typing, delivered receipts): relayed to the
        devices online, stored nowhere, here or there; ``bodies`` per device, or one
        body for all. Returns its messageId; raises ``ServerError`` (``recipient_offline``
        ...) or ``NotConnected``; a device list that moved meanwhile is looked up again once.
        """
        message_id = new_id()
        for attempt in range(2):
            async with self._send_lock:
                targets = await self._directory.targets(username, refresh=attempt > 0)
                send = self._send_event(
                    username, targets, message_id, new_id(), now_ms(),
                    {t: bodies for t in targets} if isinstance(bodies, bytes) else bodies,
                    content_type=content_type, ephemeral=True,
                )
                with self._store.transaction():
                    self._sessions.flush()  # the ratchets moved, sent or not
            if len(send.to_frame(request_id="r")) > MAX_FRAME_BYTES:
                raise UsageError("signal too large for this many devices")
            try:
                await self._link.request(send, frozenset({ev.SEND_ACK}))
                break
            except ServerError as exc:
                if attempt or exc.code not in ("device_mismatch", "unknown_recipient"):
                    raise
                if exc.code == "unknown_recipient":
                    # A strict contact's devices moved (the server names them to no one
                    # without a look-up): only a look-up with our capability tells.
                    try:
                        await self._directory.targets(username, refresh=True)
                    except ServerError:
                        raise exc from None
        return message_id

    async def send_unsent(self) -> None:
        """After a connection comes up: the messages queued offline go out (errors raise)."""
        if not self._has_unsent:
            return
        async with self._send_lock:
            await self._encrypt_unsent()

    def _commit_sends(self) -> None:
        """Group commit: every send prepared in this loop turn, in one transaction.

        Concurrent ``send_text`` calls (e.g. ``asyncio.gather``) share one fsync;
        a single call costs what it did. The ratchet states the sends advanced
        are written in the same transaction as their messages and outbox rows,
        and nothing is written to the socket before that commit.
        """
        batch, self._pending_sends = self._pending_sends, []
        try:
            with self._store.transaction():
                self._sessions.flush()
                for p in batch:
                    self._add_outgoing(
                        p.message_id, p.idempotency_key, p.peer, p.text, p.created_ms,
                        p.content_type, p.expires_ms,
                    )
                    self._store.add_outbox(p.message_id, p.idempotency_key, p.frame)
        except Exception as exc:
            # Nothing was sent: forget the in-memory ratchet steps the store lacks.
            self._sessions.discard_unflushed()
            for p in batch:
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        for p in batch:
            if not p.done.done():
                p.done.set_result(None)
        self._outbox.pump()  # offline: the outbox goes out on the next connect

    async def resend_after_mismatch(self, message_id: str) -> None:
        """``device_mismatch``: refresh the directory, re-encrypt for the new set, once."""
        tries = self._outbox.mismatch_retries.get(message_id, 0)
        if tries >= DEVICE_MISMATCH_RETRIES:
            self._outbox.fail(
                message_id, "device_mismatch", "the recipient's devices kept changing"
            )
            return
        self._outbox.mismatch_retries[message_id] = tries + 1
        try:
            async with self._send_lock:
                stored = self._store.get_message(message_id)
                item = self._store.get_outbox(message_id)
                if stored is None or item is None:
                    return
                _, _, data = ev.parse_frame(item.frame)
                old = ev.Send.from_data(data)
                kept = {(c.userId, c.deviceId): c for c in old.ciphertexts}
                targets = await self._directory.targets(_chat_peer(stored.peer), refresh=True)
                payload = Payload(
                    message_id=message_id,
                    conversation_id=old.conversationId,
                    content_type=stored.content_type,
                    created_at_ms=old.clientCreatedAtMs,
                    body=self._body_of(stored),
                    expires_at_ms=self.expiries.of(message_id),
                ).with_head(self._log_head()).encode()
                ciphertexts = tuple(
                    kept.get(t)
                    or ev.DeviceCiphertext(
                        userId=t[0],
                        deviceId=t[1],
                        ciphertext=self._sessions.encrypt(t[0], t[1], payload),
                    )
                    for t in targets
                )
                # The same send (ids, recipient, type, time) to the devices there are now.
                send = replace(old, messageId=message_id, ciphertexts=ciphertexts,
                               senderUserId=self.username)
                frame = send.to_frame(request_id=message_id)
                with self._store.transaction():
                    self._sessions.flush()
                    self._store.replace_outbox(message_id, frame)
                self._link.send_frame(frame)
        except (SottovoceError, ProtocolError) as exc:
            self._outbox.fail(message_id, getattr(exc, "code", "error"), str(exc))

    # =========================================================================
    # Receiving
    # =========================================================================

    async def prepare(self, envelopes: list[ev.Envelope]) -> dict[str, ErrorEvent]:
        """Before a batch: look up senders whose device is not known yet.

        No await may separate a decryption from the commit that stores its result
        (a concurrent send would persist the advanced ratchet without the message),
        so lookups happen here. Returns the senders whose key changed (TOFU), with
        the error each of their messages reports.
        """
        failed_lookup: dict[str, ErrorEvent] = {}
        for user in sorted({e.senderUserId for e in envelopes}):
            contact = self._sessions.contact(user)
            known = contact is not None and all(
                e.senderDeviceId in contact.certificates
                for e in envelopes
                if e.senderUserId == user
            )
            if not known:
                try:
                    await self._directory.lookup(user)
                except IdentityChanged as exc:
                    failed_lookup[user] = ErrorEvent(code=exc.code, message=str(exc))
                except SottovoceError:
                    pass  # decryption below fails for a still-unknown device, typed
        return failed_lookup

    def accept(
        self,
        seq: int,
        envelope: ev.Envelope | None,
        failed_lookup: dict[str, ErrorEvent],
        events: list[ClientEvent],
        received: list[str],
    ) -> None:
        """Decrypt and store one inbound frame (inside the batch transaction)."""
        if envelope is None:
            events.append(ErrorEvent(code="bad_frame", message="malformed inbox frame skipped"))
            return
        ephemeral = envelope.ephemeral or seq == 0
        if not ephemeral and self._store.has_message(envelope.messageId):
            return  # replay of a stored message: never decrypt twice
        if self._contacts is not None and not self._contacts.admit(envelope.senderUserId):
            return  # blocked: dropped unread, nothing stored
        if envelope.ephemeral and self.ephemeral_frames and self.ephemeral_frames(envelope):
            return  # an ephemeral-chat frame: never Olm, never stored
        own_copy = envelope.senderUserId == self.username
        peer = envelope.recipientUserId if own_copy else envelope.senderUserId
        if envelope.senderUserId in failed_lookup:
            events.append(failed_lookup[envelope.senderUserId])
            self._store_failed(envelope, peer, seq, own_copy)
            return
        try:
            if envelope.conversationId != ev.dm_conversation_id(self.username, peer):
                raise RemoteError("envelope names another conversation")
            if not own_copy and envelope.recipientUserId not in ("", self.username):
                raise RemoteError("envelope is addressed to someone else")
            plaintext = self._sessions.decrypt(
                envelope.senderUserId, envelope.senderDeviceId, envelope.ciphertext
            )
            payload = Payload.decode(plaintext)
            if (
                payload.message_id != envelope.messageId
                or payload.conversation_id != envelope.conversationId
            ):
                raise RemoteError("ciphertext was moved to another message")
            call = payload.content_type == CALL_CONTENT_TYPE
            text = "" if call else payload.body.decode("utf-8")
            if payload.content_type == TIMER_CONTENT_TYPE:
                read_timer_body(payload.body)  # a malformed one is a failed message
        except (SottovoceError, UnicodeDecodeError) as exc:
            code = getattr(exc, "code", "decryption_failed")
            events.append(
                ErrorEvent(
                    code=code,
                    message="a message could not be decrypted",
                    message_id=envelope.messageId,
                )
            )
            if not ephemeral:
                self._store_failed(envelope, peer, seq, own_copy)
            return
        if payload.kt_root and self._on_log_head is not None:
            self._on_log_head(envelope.senderUserId, payload.kt_size, payload.kt_root)
        if call:
            self._hand_off_call(envelope, payload.body, ephemeral, peer, seq, events)
            return
        if payload.content_type == PRESENCE_CONTENT_TYPE:
            self._hand_off_presence(envelope, payload.body, ephemeral, peer, seq, events)
            return
        if payload.content_type == ACCOUNT_KEY_CONTENT_TYPE:  # never stored as a message
            if self.key_handover is not None and not ephemeral:
                self.key_handover.incoming(envelope.senderUserId, envelope.senderDeviceId,
                                           payload.body)
                self._record_envelope(envelope, control_peer(peer), seq, own_copy,
                                      DeliveryStatus.SENT, "",
                                      content_type=ACCOUNT_KEY_CONTENT_TYPE)
            return
        if self._contacts is not None and not ephemeral:
            self._contacts.received(peer, own_copy, payload.content_type, payload.body)
        if payload.content_type in CONTROL_TYPES:
            shown = None if self.controls is None else self.controls.incoming(
                Incoming(
                    conversation=peer, room=False, message_id=envelope.messageId,
                    sender=envelope.senderUserId, sender_device=envelope.senderDeviceId,
                    own=own_copy, content_type=payload.content_type, body=payload.body,
                    ephemeral=ephemeral, created_ms=payload.created_at_ms,
                ),
                events,
            )
            if shown is None:  # a marker: its row only dedupes a replay
                if not ephemeral:
                    self._record_envelope(
                        envelope, control_peer(peer), seq, own_copy, DeliveryStatus.SENT, "",
                        content_type=payload.content_type,
                    )
                return
            text = shown
        if ephemeral:
            item = EphemeralReceived(
                peer=peer, sender=envelope.senderUserId, message_id=envelope.messageId, text=text
            )
            self._ephemeral.append(item)
            events.append(item)
            return
        self._record_envelope(
            envelope,
            peer,
            seq,
            own_copy,
            DeliveryStatus.SENT,
            text,
            content_type=payload.content_type,
            client_created_ms=payload.created_at_ms,
            idempotency_key=envelope.idempotencyKey,
        )
        self.expiries.record(envelope.messageId, payload.expires_at_ms)
        if payload.content_type == TIMER_CONTENT_TYPE:
            self.expiries.apply(
                envelope.conversationId, envelope.senderUserId, envelope.messageId,
                payload.created_at_ms, payload.body,
            )
        if not self.expiries.due(payload.expires_at_ms):  # else the next sweep deletes it
            received.append(envelope.messageId)

    def _hand_off_call(
        self, envelope: ev.Envelope, body: bytes, ephemeral: bool, peer: str, seq: int,
        events: list[ClientEvent],
    ) -> None:
        """Call signals go to the call controller, never to the store or the ring.

        They only ever travel ephemerally: one the server stored (it would be replayed
        long after its call) is skipped. An empty body is the filler a device gets
        when a signal of the same send is for another device.
        """
        if not ephemeral:
            events.append(
                ErrorEvent(
                    code="bad_frame",
                    message="a stored call signal was skipped",
                    message_id=envelope.messageId,
                )
            )
            self._store_failed(envelope, peer, seq, envelope.senderUserId == self.username)
            return
        if body and self._on_call is not None:
            self._on_call(envelope.senderUserId, envelope.senderDeviceId, body)

    def _hand_off_presence(
        self, envelope: ev.Envelope, body: bytes, ephemeral: bool, peer: str, seq: int,
        events: list[ClientEvent],
    ) -> None:
        """A presence notice is live only (one the server stored is skipped, like a call
        signal); from our own devices it says nothing we show."""
        own = envelope.senderUserId == self.username
        if not ephemeral:
            self._store_failed(envelope, peer, seq, own)
        elif not own and self.presence is not None:
            self.presence.incoming(envelope.senderUserId, envelope.senderDeviceId, body, events)

    def _store_failed(self, envelope: ev.Envelope, peer: str, seq: int, own_copy: bool) -> None:
        """A placeholder, so the gap is visible and the frame is never retried."""
        self._record_envelope(envelope, peer, seq, own_copy, DeliveryStatus.FAILED, "")

    def _record_envelope(
        self, envelope: ev.Envelope, peer: str, seq: int, own_copy: bool,
        status: DeliveryStatus, text: str, *, content_type: str = "text",
        client_created_ms: int = 0, idempotency_key: str | None = None,
    ) -> None:
        """Store one received envelope (its routing fields taken from the envelope)."""
        self._store.add_message(
            message_id=envelope.messageId, peer=peer, sender=envelope.senderUserId,
            sender_device=envelope.senderDeviceId, outgoing=own_copy, status=status, text=text,
            content_type=content_type, client_created_ms=client_created_ms,
            server_received_ms=envelope.serverReceivedAtMs, local_at_ms=now_ms(),
            server_seq=envelope.serverSeq, inbox_seq=seq, idempotency_key=idempotency_key,
        )


def _chat_peer(stored_peer: str) -> str:
    """The user a stored outgoing row is for (a control row is kept beside the chat)."""
    return stored_peer.removesuffix(control_peer(""))
