"""The room message path: send, receive, and re-encrypt after a stale epoch
(docs/architecture.md §A room message).

    send ──► pad (size buckets) ──► encrypt in the current epoch ──► ONE transaction:
             message (sending) + group state + outbox row ──► socket if up (the
             outbox is resent on reconnect, same messageId and idempotencyKey)
        stale_epoch ──► wait for the new epoch ──► re-encrypt (a fresh generation),
                        persist, replace the outbox row ──► send again
    message frame ──► dedupe by messageId ──► decrypt once ──► the sender must be
             the envelope's, the payload bound to messageId and room
             ──► messages table (peer = roomId); a control message (the join token)
             is kept beside the room, an invitation notice names the room for us;
             a room-call signal is kept beside the room too and handed, after the
             batch, to ``on_call_signal`` (ours when it comes back in the room's order)

The envelope says "text" whatever the payload holds: the server does not learn
which messages are control messages or invitation notices.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from sottovoce.client.control import CONTROL_TYPES, MARKER_TYPES, ControlHook, Incoming
from sottovoce.client.errors import NotConnected
from sottovoce.client.events import ClientEvent, ErrorEvent, RoomInvited, RoomMessageReceived
from sottovoce.client.expiry import TIMER_CONTENT_TYPE, Expiries, read_timer_body, wire_expiry
from sottovoce.client.ids import new_id, now_ms
from sottovoce.client.payload import Payload, text_body
from sottovoce.client.ports import Link, SendQueue
from sottovoce.client.room_notice import (
    INVITE_CONTENT_TYPE,
    InviteNotice,
    free_label,
    valid_room_name,
)
from sottovoce.client.rooms.book import RoomBook
from sottovoce.client.rooms.model import (
    ROOM_REQUEST_TIMEOUT_S,
    Device,
    Room,
    RoomFrame,
    device_of,
)
from sottovoce.client.rooms.names import (
    NAME_KEY_SHARED_TEXT,
    display_name,
    follow,
    is_name_key_control,
    name_key_control,
    read_name_key_control,
    shared_names,
    take_shared_key,
)
from sottovoce.client.rooms.proposals import keep
from sottovoce.client.rooms.sync import RoomSync
from sottovoce.client.rooms.tokens import TOKEN_SHARED_TEXT, read_token_control, token_control
from sottovoce.client.store import DeliveryStatus, StoredMessage
from sottovoce.errors import RemoteError, SottovoceError, UsageError
from sottovoce.limits import ROOM_SEND_RETRIES
from sottovoce.mls.group import ApplicationMessage
from sottovoce.mls.proposals import QueuedProposal
from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.fields import ProtocolError
from sottovoce.protocol.room_names import NameKey
from sottovoce.secret import Secret

#: A room-call signal (calls/room_signals.py): an MLS application message of the room
#: like any other, so the server cannot tell it from a chat message.
ROOM_CALL_CONTENT_TYPE = "room-call"
_CALL_SIGNAL_TEXT = "(call signal)"
#: Payloads kept beside the room, out of its history, their body sealed in the store
#: (with the control messages of client/control.py but a reply, which is shown).
_CONTROL_TYPES = frozenset({"system", ROOM_CALL_CONTENT_TYPE}) | MARKER_TYPES
#: (room id, authenticated sender, signal): a decrypted room-call signal, in room order.
CallSignalSink = Callable[[str, Device, bytes], None]


def control_record(message_id: str) -> str:
    """The ``secrets`` row keeping the body of one of our queued room control messages."""
    return f"room-control:{message_id}"


def _control_peer(room_id: str) -> str:
    """Where a room's control messages are kept: beside the room, out of its history
    (the message row dedupes them and carries their delivery state)."""
    return f"{room_id}#control"


class RoomMessages:
    """Room messages of this device, both ways."""

    def __init__(self, book: RoomBook, link: Link, sends: SendQueue, sync: RoomSync) -> None:
        self._book, self._store = book, book.store
        self._link, self._sends, self._sync = link, sends, sync
        #: stale_epoch answers per queued room message (bounded by ROOM_SEND_RETRIES).
        self._stale_sends: dict[str, int] = {}
        #: Queued room messages re-encrypted for a newer epoch after stale_epoch.
        self.stale_resends = 0
        #: Where room-call signals go (the client's room calls); ``None``: dropped.
        self.on_call_signal: CallSignalSink | None = None
        #: Our latest verified transparency-log head, carried in every room message;
        #: a member's head goes to ``on_log_head`` (sender, size, root) to be compared.
        self.log_head: Callable[[], tuple[int, bytes] | None] = lambda: None
        self.on_log_head: Callable[[str, int, bytes], None] | None = None
        #: Told of a room whose members sent a proposal (a member leaving): commit it.
        self.on_proposal: Callable[[Room], None] | None = None
        #: Commits the proposals a member sent this epoch before we send application
        #: data (RFC 9420 §12.4 forbids sending with proposals pending).
        self.commit_first: Callable[[Room], Awaitable[object]] | None = None
        #: Control payloads (client/control.py) go here; without it they are dropped.
        self.controls: ControlHook | None = None
        #: Disappearing messages: each message's expiry, the room's timer changes.
        self.expiries = Expiries(self._store)

    # =========================================================================
    # Sending
    # =========================================================================

    async def send(self, room: Room, text: str) -> str:
        """Encrypt ``text`` once for the room and queue it (see RoomManager.send)."""
        return await self._queue(room, "text", text_body(text), text)

    async def send_record(self, room: Room, content_type: str, text: str) -> str:
        """A message of another kind than text (a file), queued like one; the envelope
        says "text" as for any message."""
        return await self._queue(room, content_type, text.encode("utf-8"), text)

    async def announce_invite(self, room: Room, username: str) -> str | None:
        """Tell the room that we invited ``username``, under the room's shared name (this
        device's label for a room without one; :mod:`sottovoce.client.room_notice`);
        ``None`` if that name cannot be one."""
        name = display_name(room)
        if not valid_room_name(name):
            return None
        notice = InviteNotice(name=name, invited=username).encode()
        return await self._queue(room, INVITE_CONTENT_TYPE, notice, notice.decode("utf-8"))

    async def send_token(self, room: Room, token: Secret) -> str:
        """Share the room's join token with its members (a control message; the token
        becomes the room's current one in the transaction that queues it)."""
        return await self._queue(
            room, "system", token_control(token), TOKEN_SHARED_TEXT, token=token
        )

    async def send_name_key(self, room: Room, key: NameKey) -> str:
        """Tell the room the key of its shared names (for the members that just joined;
        the others ignore a key they hold). A control message, sealed like a token."""
        room.name_key_sent = room.epoch
        return await self._queue(room, "system", name_key_control(key), NAME_KEY_SHARED_TEXT)

    async def send_control(self, room: Room, content_type: str, body: bytes, text: str) -> str:
        """Queue a control message (client/control.py); ``text``: what history shows."""
        return await self._queue(room, content_type, body, text)

    async def send_timer(self, room: Room, body: str) -> str:
        """Set the room's disappearing-message timer for every member (a timer message)."""
        return await self._queue(room, TIMER_CONTENT_TYPE, body.encode("utf-8"), body)

    async def send_call_signal(self, room: Room, signal: bytes) -> str:
        """Queue one room-call signal; it reaches ``on_call_signal`` of every member
        device, ours included, in the room's order."""
        return await self._queue(room, ROOM_CALL_CONTENT_TYPE, signal, _CALL_SIGNAL_TEXT)

    async def _queue(
        self, room: Room, content_type: str, body: bytes, text: str,
        *, token: Secret | None = None,
    ) -> str:
        """Queue one room message (``text`` is what the history shows of it); a control
        message sharing ``token`` keeps its body sealed for a re-encryption and the
        token as the room's, in the transaction that queues it."""
        if self.commit_first is not None and room.group is not None and (
            room.group.pending_proposals
        ):
            await self.commit_first(room)
        message_id, idem, created = new_id(), new_id(), now_ms()
        control = content_type in _CONTROL_TYPES
        lasting = control or content_type == TIMER_CONTENT_TYPE
        expires = 0 if lasting else self.expiries.for_new(room.room_id, created)
        async with room.lock:
            frame = self._encrypt(
                room, message_id=message_id, idempotency_key=idem, created_ms=created,
                content_type=content_type, body=body, expires_at_ms=expires,
            )
            # mls/state.py: the state that consumed the generation is durable before
            # the ciphertext can leave, in the transaction that queues it.
            with self._store.transaction():
                self._store.add_outgoing(
                    message_id,
                    peer=_control_peer(room.room_id) if control else room.room_id,
                    sender=self._book.username, sender_device=self._book.device_id, text=text,
                    created_ms=created, idempotency_key=idem, content_type=content_type,
                )
                self.expiries.record(message_id, expires)
                if control:
                    self._store.put_secret(control_record(message_id), body)
                if token is not None:
                    self._book.tokens.remember(room.room_id, token)
                self._book.persist(room)  # the sender ratchet moved
                self._store.add_outbox(message_id, idem, frame)
        self._sends.pump()  # offline: it goes out on the next connect
        if self._link.is_up:
            with contextlib.suppress(NotConnected):
                await self._sends.wait_sent(message_id, timeout=ROOM_REQUEST_TIMEOUT_S)
        return message_id

    def _encrypt(
        self, room: Room, *, message_id: str, idempotency_key: str, created_ms: int,
        content_type: str, body: bytes, expires_at_ms: int = 0,
    ) -> str:
        """A room.send frame for the room's current epoch (consumes one MLS generation:
        persist the group before the frame leaves). Call holding ``room.lock``."""
        group = self._book.active(room)
        payload = Payload(
            message_id=message_id,
            conversation_id=room.room_id,
            content_type=content_type,
            created_at_ms=created_ms,
            body=body,
            expires_at_ms=expires_at_ms,
        ).with_head(self.log_head()).encode_padded()  # size buckets, as 1:1
        return pr.RoomSend(
            roomId=room.room_id,
            epoch=group.epoch,
            messageId=message_id,
            idempotencyKey=idempotency_key,
            contentType="text",
            clientCreatedAtMs=created_ms,
            ciphertext=group.encrypt_application(payload, rng=secrets.token_bytes),
            # The server drops it from the room's log then (an offline member never gets it).
            expiresAtMs=wire_expiry(expires_at_ms),
        ).to_frame(request_id=message_id)

    def _body_of(self, stored: StoredMessage) -> bytes:
        """What a queued message carries, to encrypt it again for a newer epoch."""
        if stored.content_type in _CONTROL_TYPES:
            body = self._store.get_secret(control_record(stored.message_id))
            if body is None:
                raise UsageError("a queued control message lost its body")
            return body
        if stored.content_type in CONTROL_TYPES and self.controls is not None:
            return self.controls.body_of(stored)  # a reply: rebuilt from its text
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
            self._sends.fail(message_id, "stale_epoch", "the room kept changing epochs")
            return
        target = details.get("currentEpoch")
        self._book.spawn(
            self._resend_stale(message_id, room_id, target if isinstance(target, int) else None)
        )

    async def _resend_stale(self, message_id: str, room_id: str, target: int | None) -> None:
        room = self._book.rooms.get(room_id)
        item = self._store.get_outbox(message_id)
        if room is None or item is None:
            return
        try:
            refused = pr.RoomSend.from_data(ev.parse_frame(item.frame)[2])
            await self._sync.catch_up(
                room, epoch=refused.epoch + 1 if target is None else target
            )
            async with room.lock:
                stored = self._store.get_message(message_id)
                item = self._store.get_outbox(message_id)
                if stored is None or item is None or stored.status is not DeliveryStatus.SENDING:
                    return  # acked or failed meanwhile
                queued = pr.RoomSend.from_data(ev.parse_frame(item.frame)[2])
                if queued.epoch >= self._book.active(room).epoch:
                    # Already for our epoch (we are not further yet, or another answer
                    # re-encrypted it): the same bytes again, no new generation.
                    frame = item.frame
                else:
                    frame = self._encrypt(
                        room,
                        message_id=message_id,
                        idempotency_key=queued.idempotencyKey,
                        created_ms=queued.clientCreatedAtMs,
                        content_type=stored.content_type,
                        body=self._body_of(stored),
                        expires_at_ms=self.expiries.of(message_id),
                    )
                    with self._store.transaction():
                        self._book.persist(room)
                        self._store.replace_outbox(message_id, frame)
                    self.stale_resends += 1
                self._link.send_frame(frame)
        except (SottovoceError, UsageError, ProtocolError) as exc:
            self._sends.fail(message_id, getattr(exc, "code", "error"), str(exc))

    # =========================================================================
    # Receiving (inside the client's batch transaction; no awaits)
    # =========================================================================

    def _take_proposal(self, room: Room, frame: RoomFrame, sender_ok: bool) -> None:
        """A member's proposal (a Remove of its own leaves: it leaves the room), now in the
        group's cache: kept as sent, for the commit that covers it to carry, and the
        commit is started (protocol/room_rules.py)."""
        if not sender_ok:
            raise RemoteError("the room proposal's sender is not the envelope's")
        if room.group is not None:
            keep(self._store, room.room_id, room.group.epoch, frame.ciphertext)
        if self.on_proposal is not None:
            sink = self.on_proposal
            self._book.after.append(lambda: sink(room))

    def apply_message(self, room: Room, frame: RoomFrame, events: list[ClientEvent]) -> None:
        if self._store.has_message(frame.message_id):
            self._own_call_signal(room, frame)
            return  # never decrypt twice
        group = room.group
        sender = (frame.sender_user, frame.sender_device)
        notice: InviteNotice | None = None
        expires, body = 0, b""
        text, status = "", DeliveryStatus.FAILED
        content_type, created = "text", frame.client_created_ms
        try:
            if group is None:
                raise RemoteError("not a member")
            processed = group.process_message(frame.ciphertext, now_ms=now_ms())
            if isinstance(processed.content, QueuedProposal):
                self._take_proposal(room, frame, device_of(processed.credential) == sender)
                return
            if not isinstance(processed.content, ApplicationMessage):
                raise RemoteError("a message frame holds no application message")
            who = device_of(processed.credential)
            if who != sender:
                raise RemoteError("the room message's sender is not the envelope's")
            payload = Payload.decode_padded(processed.content.data)
            if payload.message_id != frame.message_id or payload.conversation_id != room.room_id:
                raise RemoteError("ciphertext was moved to another message")
            content_type, created = payload.content_type, payload.created_at_ms
            expires, body = payload.expires_at_ms, payload.body
            if payload.kt_root and self.on_log_head is not None and sender != self._book.me:
                self.on_log_head(frame.sender_user, payload.kt_size, payload.kt_root)
            if content_type == "system" and is_name_key_control(payload.body):
                # The key of the room's shared names, sent to a member that joined.
                text = self._take_name_key(room, read_name_key_control(payload.body))
            elif content_type == "system":
                # The room's join token, shared by the member that set it (only members
                # see it): kept to check the PSK of the next external join.
                self._book.tokens.remember(room.room_id, read_token_control(payload.body))
                text = TOKEN_SHARED_TEXT
            elif content_type == ROOM_CALL_CONTENT_TYPE:
                text = _CALL_SIGNAL_TEXT
                self._hand_call_signal(room.room_id, sender, payload.body)
            elif content_type in CONTROL_TYPES:
                text = self._control(room, frame, payload, events)
            else:
                text = payload.body.decode("utf-8")
                if content_type == TIMER_CONTENT_TYPE:
                    read_timer_body(payload.body)  # a malformed one is a failed message
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
        own = sender == self._book.me or frame.sender_user == self._book.username
        control = status is DeliveryStatus.SENT and content_type in _CONTROL_TYPES
        local = self._store.add_message(
            message_id=frame.message_id,
            peer=_control_peer(room.room_id) if control else room.room_id,
            sender=frame.sender_user, sender_device=frame.sender_device, outgoing=own,
            status=status, text=text, content_type=content_type, client_created_ms=created,
            server_received_ms=frame.server_received_ms, local_at_ms=now_ms(),
            server_seq=frame.server_seq, idempotency_key=frame.idempotency_key or None,
        )
        if local is not None and status is DeliveryStatus.SENT:
            self.expiries.record(frame.message_id, expires)
            if content_type == TIMER_CONTENT_TYPE:
                self.expiries.apply(
                    room.room_id, frame.sender_user, frame.message_id, created, body
                )
        shown = not control and not self.expiries.due(expires)  # else the sweep deletes it
        if local is not None and status is DeliveryStatus.SENT and shown:
            stored = self._store.get_message(frame.message_id)
            if stored is not None:
                events.append(RoomMessageReceived(room_id=room.room_id, message=stored))
            if notice is not None and notice.invited == self._book.username and not own:
                self._take_invitation(room, notice, frame.sender_user, events)

    def _take_name_key(self, room: Room, key: NameKey) -> str:
        """Keep a name key that opens the room's names; a label that is still the room id
        (a join by token) becomes the shared name."""
        room.name_key_sent = room.epoch
        if take_shared_key(self._store, room, key):
            follow(self._store, room, None, partial(self._label_taken, room))
            self._book.touched.add(room.room_id)
        return NAME_KEY_SHARED_TEXT

    def _label_taken(self, room: Room, label: str) -> bool:
        return any(r != room.room_id for r in self._store.rooms_by_label(label))

    def _control(
        self, room: Room, frame: RoomFrame, payload: Payload, events: list[ClientEvent]
    ) -> str:
        """A control payload, applied by ``controls``: a reply's text, or "" (a marker)."""
        if self.controls is None:
            return ""
        shown = self.controls.incoming(
            Incoming(
                conversation=room.room_id, room=True, message_id=frame.message_id,
                sender=frame.sender_user, sender_device=frame.sender_device,
                own=frame.sender_user == self._book.username,
                content_type=payload.content_type, body=payload.body,
                created_ms=payload.created_at_ms,
            ),
            events,
        )
        return "" if shown is None else shown

    def _hand_call_signal(self, room_id: str, sender: Device, signal: bytes) -> None:
        """After the batch is stored (the controller awaits nothing of the store), in
        the order the room's frames were played."""
        sink = self.on_call_signal
        if sink is not None:
            self._book.after.append(lambda: sink(room_id, sender, signal))

    def _own_call_signal(self, room: Room, frame: RoomFrame) -> None:
        """Our own room-call signal came back in the room's order: hand it over once
        (MLS does not let a sender decrypt its own message, so the body kept when it
        was queued is used, then emptied)."""
        if (frame.sender_user, frame.sender_device) != self._book.me:
            return
        stored = self._store.get_message(frame.message_id)
        if stored is None or stored.content_type != ROOM_CALL_CONTENT_TYPE:
            return
        record = control_record(frame.message_id)
        body = self._store.get_secret(record)
        if body:
            self._store.put_secret(record, b"")
            self._hand_call_signal(room.room_id, self._book.me, body)

    def _take_invitation(
        self, room: Room, notice: InviteNotice, inviter: str, events: list[ClientEvent]
    ) -> None:
        """We were invited: name the room by its shared name (the notice's, encrypted to
        the room, until we hold the name key), unless we named it already."""
        shared = shared_names(room)
        name = notice.name if shared is None else shared.name
        if room.label == room.room_id:
            room.label = free_label(name, partial(self._label_taken, room))
            self._store.set_room_label(room.room_id, room.label)
            self._book.touched.add(room.room_id)
        events.append(
            RoomInvited(room_id=room.room_id, label=room.label, name=name, inviter=inviter)
        )
