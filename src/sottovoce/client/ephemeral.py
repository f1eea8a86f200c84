"""Ephemeral chats of this device: presence-gated, keys in memory only
(docs/protocol.md §Ephemeral chats; the state machine is pairwise/ephemeral.py).

    open(peer) ── a request from peer waiting? ──► accept it
               └─ else REQUEST to every device of peer (resent every second) ─► wait
    frames in ◄── the server's ephemeral path (never stored), or the data channel
    frames out ─► the data channel once it is up, else the server's ephemeral path
    leave / panic / peer gone ─► BYE (if we can), keys zeroed, ring cleared,
                                 the chat id refused from then on

Frames travel as the per-device "ciphertext" of an ephemeral ``ksmpv3.send``: the
same bytes to every device the server wants one for (the peer's devices and our
other ones); a device that is not addressed drops them. No Olm session is used or
made and no prekey is claimed. Nothing of a chat touches the store.

Group chats (``groups``, client/ephemeral_group.py) are meshes of these chats; photos
and clips (``send_media``, client/ephemeral_media.py) travel as MEDIA chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable

from sottovoce.client.ephemeral_chat import Chat, Pipe
from sottovoce.client.ephemeral_group import EphemeralGroups, RoomLookup
from sottovoce.client.ephemeral_media import MediaKind
from sottovoce.client.ephemeral_media import chunks as media_chunks
from sottovoce.client.ephemeral_memory import harden_process, lock, wipe
from sottovoce.client.errors import NotConnected, ServerError
from sottovoce.client.events import (
    EphemeralChatEnded,
    EphemeralChatMessage,
    EphemeralChatOpened,
    EphemeralChatRequested,
    EphemeralMediaReceived,
)
from sottovoce.client.ids import new_id
from sottovoce.client.ports import Contacts, Emit, Link, Spawn
from sottovoce.crypto.rng import Random
from sottovoce.errors import SottovoceError, UsageError
from sottovoce.identity import DeviceSigningKey
from sottovoce.pairwise.ephemeral import (
    NONCE_LEN,
    ChatSession,
    DhStatement,
    Frame,
    Inner,
    Kind,
    State,
    device_dh_private,
    statement_of,
)
from sottovoce.protocol import events as ev

#: A REQUEST is sent again this often until answered (a device may come online later).
REQUEST_RESEND_S = 1.0
#: An open chat sends a PING this often when idle: the relay's ``recipient_offline``
#: answer (or a closed data channel) is how a vanished peer is noticed.
KEEPALIVE_S = 2.0
#: Nothing heard from the peer for this long (it pings every KEEPALIVE_S): it is gone.
PEER_SILENCE_S = 3 * KEEPALIVE_S
#: Requests shown and not answered, at most: a flood of them pushes the oldest out.
MAX_PENDING_REQUESTS = 16
#: The longest text one frame carries (the Noise limit, less room for the header).
MAX_TEXT_BYTES = 60_000


#: Makes the data channel of a chat: (chat, frame sender for signals, frame receiver).
PipeMaker = Callable[[Chat, Callable[[bytes], Awaitable[None]]], Awaitable[None]]

__all__ = ["Chat", "EphemeralChats", "Pipe", "PipeMaker"]


class EphemeralChats:
    """Every ephemeral chat of one device (``client.ephemeral``)."""

    def __init__(
        self, *, link: Link, contacts: Contacts, username: str, device_id: str,
        device_key: DeviceSigningKey, emit: Emit, spawn: Spawn,
        rng: Random = secrets.token_bytes, rooms: RoomLookup | None = None,
    ) -> None:
        self._link, self._contacts, self._emit, self._spawn = link, contacts, emit, spawn
        self.username, self.device_id = username, device_id
        self._device_key, self._rng = device_key, rng
        self._static: bytearray | None = None
        self._statement: DhStatement | None = None
        self._chats: dict[bytes, Chat] = {}
        #: Chat ids that ended here: a late frame of one is dropped, never reopens it.
        self._ended: set[bytes] = set()
        #: Set by the application to carry chats over a WebRTC data channel.
        self.pipe_maker: PipeMaker | None = None
        #: Ephemeral group chats among a room's online members.
        self.groups = EphemeralGroups(self, rooms, emit=emit, spawn=spawn)

    def __repr__(self) -> str:
        return f"EphemeralChats({len(self._chats)} chats)"

    # --- keys ---------------------------------------------------------------------------

    def _keys(self) -> tuple[bytearray, DhStatement]:
        if self._static is None or self._statement is None:
            harden_process()
            self._static = device_dh_private(self._device_key)
            lock(self._static)
            self._statement = DhStatement.make(
                self._device_key, self.username, self.device_id, self._static
            )
        return self._static, self._statement

    # --- what the application calls -----------------------------------------------------

    def chats(self) -> list[Chat]:
        return list(self._chats.values())

    def requests(self) -> list[Chat]:
        """Requests (for a 1:1 chat) shown but not answered yet."""
        return [c for c in self._chats.values()
                if c.session.state is State.INCOMING and not c.session.group]

    def group_requests(self) -> list[Chat]:
        """Requests naming a group chat, not answered yet (``groups`` sorts them out)."""
        return [c for c in self._chats.values()
                if c.session.state is State.INCOMING and c.session.group]

    async def open(self, peer: str, *, timeout: float = 60.0) -> Chat:
        """Accept ``peer``'s waiting request, or ask ``peer`` and wait for an answer;
        returns the open chat (``UsageError`` if nobody answered within ``timeout``)."""
        if peer == self.username:
            raise UsageError("an ephemeral chat is with another user")
        if not self._link.is_up:
            raise NotConnected("an ephemeral chat needs a live connection")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiting = await self._waiting_request(peer, min(timeout, REQUEST_RESEND_S * 1.5))
        try:
            chat = waiting if waiting is not None else await self._request(peer)
        except ServerError as exc:
            if exc.code != "recipient_offline":
                raise
            raise UsageError(
                f"{peer} is not online: an ephemeral chat needs both sides online") from None
        if waiting is not None:
            await self._answer(chat)
        while True:
            try:
                await asyncio.wait_for(self._opened_or_ended(chat), deadline - loop.time())
            except TimeoutError:
                self._end(chat, "nobody answered", tell=False)
                raise UsageError(f"{peer} did not answer the ephemeral chat request") from None
            if chat.replaced_by is None:
                break
            chat = chat.replaced_by
        if chat.ended.is_set():
            raise UsageError(f"the ephemeral chat with {peer} ended: {chat.end_reason}")
        return chat

    async def _waiting_request(self, peer: str, patience: float) -> Chat | None:
        """A request from ``peer``, waiting or arriving within ``patience`` (one resend
        interval and a half: the other side may have asked just before we started)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + patience
        while True:
            waiting = [c for c in self.requests() if c.peer == peer]
            if waiting or loop.time() >= until:
                return waiting[0] if waiting else None
            await asyncio.sleep(0.05)

    async def _opened_or_ended(self, chat: Chat) -> None:
        tasks = [asyncio.ensure_future(e.wait()) for e in (chat.opened, chat.ended)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()

    async def send(self, chat: Chat, text: str) -> None:
        """Send one text; it is kept in the ring (memory only)."""
        data = text.encode("utf-8")
        if len(data) > MAX_TEXT_BYTES:
            raise UsageError("message too long for an ephemeral chat")
        if chat.session.state is not State.OPEN:
            raise UsageError("the ephemeral chat is not open")
        await self._send_data(chat, Inner.TEXT, data)
        chat.ring.append((self.username, bytearray(data)))

    async def leave(self, chat: Chat) -> None:
        """End the chat: the peer is told, keys and messages are wiped here."""
        self._end(chat, "you left", tell=True)
        await asyncio.sleep(0)

    async def send_media(self, chat: Chat, kind: int, name: str, data: bytearray, *,
                         prefix: bytes = b"") -> None:
        """A photo or clip held in ``data`` (the caller wipes it), in MEDIA chunks."""
        if chat.session.state is not State.OPEN:
            raise UsageError("the ephemeral chat is not open")
        for piece in media_chunks(self._rng(8), MediaKind(kind), name, data):
            await self._send_data(chat, Inner.MEDIA, prefix + piece)

    @property
    def connected(self) -> bool:
        return self._link.is_up

    def random(self, n: int) -> bytes:
        return self._rng(n)

    async def lookup(self, user: str) -> None:
        await self._contacts.lookup(user)

    async def send_inner(self, chat: Chat, inner: Inner, content: bytes) -> None:
        await self._send_data(chat, inner, content)

    def send_now(self, chat: Chat, inner: Inner, content: bytes) -> None:
        """One frame at once, without waiting (panic)."""
        with contextlib.suppress(SottovoceError):
            frame = chat.session.seal(inner, content)
            pipe = chat.pipe
            if not (pipe is not None and pipe.is_open and pipe.send(frame)):
                self._relay_now(chat.peer, frame)

    async def request(self, peer: str, *, group: bytes) -> Chat:
        """Ask ``peer`` for a link of a group chat (resent until answered or ended)."""
        return await self._request(peer, group=group)

    async def answer(self, chat: Chat) -> None:
        with contextlib.suppress(SottovoceError):
            await self._answer(chat)

    def end(self, chat: Chat, reason: str, *, tell: bool = False) -> None:
        self._end(chat, reason, tell=tell)

    def panic(self) -> None:
        """End every chat at once (synchronous: from a signal handler or a key)."""
        self.groups.panic()
        for chat in list(self._chats.values()):
            self._end(chat, "panic", tell=True)
        if self._static is not None:
            wipe(self._static)
        self._static, self._statement = None, None

    def connection_lost(self) -> None:
        """The server connection went down: without it no chat can be trusted to be
        live (no relay, no way to notice the peer): every chat ends."""
        self.groups.connection_lost()
        for chat in list(self._chats.values()):
            self._end(chat, "connection lost", tell=False)

    # --- sending ------------------------------------------------------------------------

    async def _request(self, peer: str, *, group: bytes = b"") -> Chat:
        await self._contacts.lookup(peer)
        static, statement = self._keys()
        session, request = ChatSession.start(
            me=(self.username, self.device_id), peer_user=peer, static=static,
            statement=statement, rng=self._rng, group=group,
        )
        chat = Chat(session)
        self._chats[session.chat_id] = chat
        try:
            await self._relay(peer, request)
        except BaseException:
            self._end(chat, "the request could not be sent", tell=False)
            raise
        self._spawn(self._resend_request(chat, statement))
        return chat

    async def _resend_request(self, chat: Chat, statement: DhStatement) -> None:
        while chat.session.state is State.REQUESTED:
            await asyncio.sleep(REQUEST_RESEND_S)
            if chat.session.state is State.REQUESTED:
                with contextlib.suppress(SottovoceError):
                    await self._relay(chat.peer, chat.session.request_frame(statement))

    async def _answer(self, chat: Chat) -> None:
        _, statement = self._keys()
        await self._relay(chat.peer, chat.session.accept(statement))

    async def _send_data(self, chat: Chat, inner: Inner, content: bytes) -> None:
        async with chat.send_lock:  # counters go out in order
            if chat.session.state is State.CLOSED:
                raise UsageError("the ephemeral chat has ended")
            frame = chat.session.seal(inner, content)
            await self._out(chat, frame)

    async def _out(self, chat: Chat, frame: bytes) -> None:
        pipe = chat.pipe
        if pipe is not None and pipe.is_open and pipe.send(frame):
            chat.frames_via_pipe += 1
            return
        chat.frames_via_relay += 1
        try:
            await self._relay(chat.peer, frame)
        except ServerError as exc:
            if exc.code == "recipient_offline":
                self._end(chat, "the other side went offline", tell=False)
            raise

    def _send_event(self, peer: str, frame: bytes) -> ev.Send:
        targets = [(peer, d) for d in self._devices(peer)]
        targets += [(self.username, d) for d in self._devices(self.username)]
        if not any(u == peer for u, _ in targets):
            raise UsageError(f"'{peer}' has no device to chat with")
        return ev.Send(
            conversationId=ev.dm_conversation_id(self.username, peer), messageId=new_id(),
            idempotencyKey=new_id(), recipientUserId=peer, contentType="system",
            ciphertexts=tuple(ev.DeviceCiphertext(userId=u, deviceId=d, ciphertext=frame)
                              for u, d in targets),
            senderUserId=self.username, ephemeral=True,
        )

    def _devices(self, user: str) -> list[str]:
        contact = self._contacts.contact(user)
        if contact is None:
            return []
        return sorted(d for d in contact.certificates if d not in contact.revoked
                      and not (user == self.username and d == self.device_id))

    async def _relay(self, peer: str, frame: bytes) -> None:
        """One frame through the server's ephemeral path (stored nowhere)."""
        for attempt in range(2):
            try:
                await self._link.request(self._send_event(peer, frame),
                                         frozenset({ev.SEND_ACK}))
                return
            except ServerError as exc:
                if exc.code != "device_mismatch" or attempt:
                    raise
                await self._contacts.lookup(peer)
                await self._contacts.lookup(self.username)

    def _relay_now(self, peer: str, frame: bytes) -> None:
        """Fire and forget (panic, BYE): no await, so it can run in a signal handler."""
        with contextlib.suppress(SottovoceError):
            self._link.send_frame(self._send_event(peer, frame).to_frame(request_id=new_id()))

    # --- ending -------------------------------------------------------------------------

    def _end(self, chat: Chat, reason: str, *, tell: bool) -> None:
        session = chat.session
        if session.state is State.CLOSED:
            return
        if tell and session.state in (State.OPEN, State.CONFIRMING):
            with contextlib.suppress(SottovoceError):
                bye = session.seal(Inner.BYE, b"")
                pipe = chat.pipe
                if not (pipe is not None and pipe.is_open and pipe.send(bye)):
                    self._relay_now(chat.peer, bye)
                else:
                    self._relay_now(chat.peer, session.seal(Inner.BYE, b""))  # both ways
        session.close()
        for _, text in chat.ring:
            wipe(text)
        chat.ring.clear()
        for media in chat.media:
            media.wipe()
        chat.media.clear()
        chat.assembler.wipe()
        self._chats.pop(session.chat_id, None)
        self._ended.add(session.chat_id)
        chat.end_reason = reason
        chat.ended.set()
        if chat.pipe is not None:
            self._spawn(chat.pipe.close())
        self._emit(EphemeralChatEnded(chat_id=chat.chat_id, peer=chat.peer, reason=reason))
        if session.group:
            self.groups.on_ended(chat)

    # --- receiving ----------------------------------------------------------------------

    def on_envelope(self, envelope: ev.Envelope) -> bool:
        """An inbound ephemeral envelope: ``True`` if it was an ephemeral-chat frame
        (handled or dropped here), ``False`` if it is an ordinary Olm message."""
        try:
            frame = Frame.decode(envelope.ciphertext)
        except SottovoceError:
            return True  # one of ours, malformed: dropped
        if frame is None:
            return False
        if envelope.senderUserId == self.username:
            return True  # our own other device's copy
        if frame.to_device not in ("*", self.device_id):
            return True
        if frame.sender_device != envelope.senderDeviceId:
            return True  # the server vouches for the sending device; they must agree
        with contextlib.suppress(SottovoceError):
            self._on_frame(envelope.senderUserId, frame)
        return True

    def on_pipe_frame(self, chat: Chat, data: bytes) -> None:
        """A frame that came over the chat's data channel."""
        with contextlib.suppress(SottovoceError):
            frame = Frame.decode(data)
            if frame is not None and frame.chat_id == chat.session.chat_id:
                self._on_frame(chat.peer, frame)

    def _on_frame(self, sender: str, frame: Frame) -> None:
        if frame.chat_id in self._ended:
            return
        if frame.kind is Kind.REQUEST:
            self._on_request(sender, frame)
            return
        chat = self._chats.get(frame.chat_id)
        if chat is None or chat.peer != sender:
            return
        session = chat.session
        if frame.kind is Kind.ACCEPT:
            statement = self._checked_statement(sender, frame)
            self._spawn(self._send_raw(chat, session.on_accept(frame, statement)))
            return
        if session.peer[1] != frame.sender_device:
            return
        if frame.kind is Kind.HS1:
            self._spawn(self._send_raw(chat, session.on_hs1(frame)))
        elif frame.kind is Kind.HS2:
            confirm = session.on_hs2(frame)
            self._spawn(self._send_raw(chat, confirm))
            self._opened(chat)
        elif frame.kind is Kind.DATA:
            self._on_data(chat, frame)

    def _on_data(self, chat: Chat, frame: Frame) -> None:
        was_open = chat.session.state is State.OPEN
        inner, content = chat.session.open_data(frame)
        chat.last_heard = asyncio.get_running_loop().time()
        if inner is Inner.CONFIRM and not was_open:
            self._opened(chat)
        elif inner is Inner.TEXT:
            text = bytearray(content)
            chat.ring.append((chat.peer, text))
            self._emit(EphemeralChatMessage(chat_id=chat.chat_id, peer=chat.peer,
                                            sender=chat.peer, text=content.decode("utf-8",
                                                                                  "replace")))
        elif inner is Inner.SIGNAL:
            chat.signals.put_nowait(content)
        elif inner is Inner.BYE:
            self._end(chat, "the other side left", tell=False)
        elif inner in (Inner.GROUP_TEXT, Inner.PANIC, Inner.ROSTER, Inner.MEDIA):
            self._on_extra(chat, inner, content)

    def _on_extra(self, chat: Chat, inner: Inner, content: bytes) -> None:
        if chat.session.group:
            piece = self.groups.on_data(chat, inner, content)
        elif inner is Inner.MEDIA:
            piece = content
        else:
            return  # group content in a 1:1 chat: dropped
        if piece is None:
            return
        media = chat.assembler.add(chat.peer, piece)
        if media is None:
            return
        if chat.session.group:
            self.groups.on_media(chat, media)
            return
        if len(chat.media) == chat.media.maxlen:
            chat.media[0].wipe()
        chat.media.append(media)
        self._emit(EphemeralMediaReceived(chat_id=chat.chat_id, peer=chat.peer,
                                          sender=chat.peer, index=len(chat.media),
                                          about=media.describe()))

    def _on_request(self, sender: str, frame: Frame) -> None:
        if frame.chat_id in self._chats or frame.to_device != "*":
            return  # a resend of one we know
        try:
            statement = self._checked_statement(sender, frame)
        except UsageError:
            # A room member's device not looked up yet: looked up now, so the request's
            # next resend (every second) is checked against it.
            self.groups.unknown_device(sender, frame.body[NONCE_LEN + 96:])
            raise
        static, _ = self._keys()
        session = ChatSession.incoming(
            frame, me=(self.username, self.device_id), peer_user=sender,
            peer_statement=statement, static=static, rng=self._rng,
        )
        if session.group:
            self._evict_requests()
            chat = Chat(session)
            self._chats[session.chat_id] = chat
            self.groups.on_request(chat)
            return
        mine = [c for c in self._chats.values() if c.peer == sender
                and c.session.state is State.REQUESTED and not c.session.group]
        if mine and self.username < sender:
            return  # both asked at once: the other side answers ours
        self._evict_requests()
        chat = Chat(session)
        self._chats[session.chat_id] = chat
        if mine:  # both asked at once: we answer theirs, ours is dropped
            for c in mine:
                c.replaced_by = chat
                self._end(c, "crossed with the other side's request", tell=False)
            self._spawn(self._answer(chat))
            return
        self._emit(EphemeralChatRequested(chat_id=chat.chat_id, peer=sender))

    def _evict_requests(self) -> None:
        pending = [c for c in self._chats.values() if c.session.state is State.INCOMING]
        if len(pending) >= MAX_PENDING_REQUESTS:
            self._end(pending[0], "too many requests waiting", tell=False)

    def _checked_statement(self, sender: str, frame: Frame) -> DhStatement:
        contact = self._contacts.contact(sender)
        cert = None if contact is None else contact.certificates.get(frame.sender_device)
        if cert is None or contact is None or frame.sender_device in contact.revoked:
            raise UsageError("ephemeral chat frame from an unknown device")
        statement = DhStatement.decode(statement_of(frame))
        statement.verify(cert)
        return statement

    async def _send_raw(self, chat: Chat, frame: bytes) -> None:
        try:
            async with chat.send_lock:
                await self._out(chat, frame)
        except SottovoceError:
            self._end(chat, "the handshake could not be sent", tell=False)

    def _opened(self, chat: Chat) -> None:
        for buf in chat.session.key_buffers():
            lock(buf)  # best effort: kept out of swap where the kernel allows
        chat.opened.set()
        self._emit(EphemeralChatOpened(chat_id=chat.chat_id, peer=chat.peer))
        if chat.session.group:
            self.groups.on_opened(chat)
        self._spawn(self._keepalive(chat))
        if self.pipe_maker is not None:
            self._spawn(self._make_pipe(chat))

    async def _make_pipe(self, chat: Chat) -> None:
        if self.pipe_maker is None:
            return

        async def signal(content: bytes) -> None:
            await self._send_data(chat, Inner.SIGNAL, content)

        with contextlib.suppress(SottovoceError, OSError, asyncio.TimeoutError):
            await self.pipe_maker(chat, signal)

    async def _keepalive(self, chat: Chat) -> None:
        loop = asyncio.get_running_loop()
        chat.last_heard = loop.time()
        while chat.session.state is State.OPEN:
            await asyncio.sleep(KEEPALIVE_S)
            if chat.session.state is not State.OPEN:
                return
            if loop.time() - chat.last_heard > PEER_SILENCE_S:
                self._end(chat, "the other side went away", tell=False)
                return
            with contextlib.suppress(SottovoceError):
                await self._send_data(chat, Inner.PING, b"")
