"""Ephemeral group chats among a room's online members (docs/protocol.md §Ephemeral
group chats): a mesh of 1:1 ephemeral chats, one per pair of members, each a *link*.

    start(room)  ─► a fresh group chat id G; a group REQUEST (naming G and the room's
                    tag) to every other member of the room, resent while G lives
    join(room)   ─► accept every waiting request naming G (an invitation)
    link opens   ─► each side sends the other its ROSTER (who else is linked): the
                    member whose username sorts first asks the other for a link, and
                    one already in G accepts a request naming G from a room member
    a message    ─► GROUP_TEXT(G | text) over every open link (fan-out; each link's
                    Noise keys authenticate the sender to the receiver, deniably)
    leave        ─► BYE over every link (the others see "left"), everything wiped
    panic        ─► PANIC over every link: the group chat ends for every member
    not a member any more (MLS says so) ─► that link is ended, and they are told (BYE)

Who may be asked or accepted is what the room's MLS group says on this device; the
server sees only which devices exchange frames (as for 1:1 ephemeral chats). Every
group message names G and each link's handshake binds G, so nothing of one group chat
is accepted in another. Nothing here touches the store; rings and keys are wiped on
the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sottovoce.client.ephemeral_chat import Chat
from sottovoce.client.ephemeral_media import MEDIA_RING_SIZE, Media
from sottovoce.client.ephemeral_memory import wipe
from sottovoce.client.events import (
    EphemeralGroupEnded,
    EphemeralGroupInvited,
    EphemeralGroupLeft,
    EphemeralGroupMessage,
    EphemeralGroupOpened,
    EphemeralMediaReceived,
)
from sottovoce.client.ports import Emit, Spawn
from sottovoce.codec.tls import Reader, Writer
from sottovoce.errors import DecodeError, SottovoceError, UsageError
from sottovoce.limits import EPHEMERAL_RING_SIZE
from sottovoce.pairwise.ephemeral import CHAT_ID_LEN, Inner, State

if TYPE_CHECKING:
    from sottovoce.client.rooms import RoomManager

#: How often a group chat asks members that are not linked yet, and checks membership.
INVITE_EVERY_S = 1.0
#: How long ``open`` waits for a request of a group chat already under way (two resends
#: and a directory lookup, as a loaded machine takes them) before it starts one.
OPEN_PATIENCE_S = 3.0
#: A link that has not opened this long after it was asked or accepted is given up.
LINK_SETUP_S = 15.0
#: A member who was offline when asked is asked again this often.
ASK_OFFLINE_EVERY_S = 3.0
#: A room member's devices are looked up for a request at most this often.
LOOKUP_EVERY_S = 5.0
_ROOM_TAG = b"sottovoce ephemeral group chat room tag v1"


class ChatHost(Protocol):
    """What the group chats use of the 1:1 chats (client/ephemeral.py)."""

    username: str

    @property
    def connected(self) -> bool: ...

    def random(self, n: int) -> bytes: ...

    async def lookup(self, user: str) -> None: ...

    def group_requests(self) -> list[Chat]: ...

    async def request(self, peer: str, *, group: bytes) -> Chat: ...

    async def answer(self, chat: Chat) -> None: ...

    def end(self, chat: Chat, reason: str, *, tell: bool = False) -> None: ...

    async def send_inner(self, chat: Chat, inner: Inner, content: bytes) -> None: ...

    def send_now(self, chat: Chat, inner: Inner, content: bytes) -> None: ...

    async def send_media(self, chat: Chat, kind: int, name: str, data: bytearray, *,
                         prefix: bytes = b"") -> None: ...


class RoomLookup(Protocol):
    """What the group chats need of the rooms: the users of a room (None if gone)."""

    def room_users(self, room_id: str) -> set[str] | None: ...

    def room_ids(self) -> list[str]: ...


class RoomMembers:
    """``RoomLookup`` over the client's rooms (what this device's MLS groups say)."""

    def __init__(self, rooms: RoomManager) -> None:
        self._rooms = rooms

    def __repr__(self) -> str:
        return "RoomMembers()"

    def room_ids(self) -> list[str]:
        return [r.room_id for r in self._rooms.all() if not r.removed]

    def room_users(self, room_id: str) -> set[str] | None:
        try:
            room = self._rooms.get(room_id)
        except SottovoceError:
            return None
        return None if room.removed else {u for u, _ in room.members()}


def room_tag(room_id: str, group_id: bytes) -> bytes:
    """The room a group chat belongs to, as its REQUEST names it (16 bytes)."""
    return hashlib.sha256(_ROOM_TAG + group_id + room_id.encode("ascii")).digest()[:16]


@dataclass(eq=False)
class GroupChat:
    """One ephemeral group chat on this device (its keys live in its links)."""

    group_id: bytes
    room_id: str
    starter: bool
    #: Member username ─► the 1:1 chat that links us (asked, handshaking or open).
    links: dict[str, Chat] = field(default_factory=dict)
    ring: deque[tuple[str, bytearray]] = field(
        default_factory=lambda: deque(maxlen=EPHEMERAL_RING_SIZE))
    media: deque[Media] = field(default_factory=lambda: deque(maxlen=MEDIA_RING_SIZE))
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    #: A link has opened at least once (until then an empty group chat is waiting).
    had_members: bool = False
    #: This device panicked (rather than left).
    panicked: bool = False
    #: Members whose link was open and ended: the starter does not ask them again.
    gone: set[str] = field(default_factory=set)
    #: Members a request is being made to right now, and when each link was made.
    asking: set[str] = field(default_factory=set)
    linked_at: dict[str, float] = field(default_factory=dict)
    #: Members a roster named (the ones whose name sorts after ours are ours to ask).
    known: set[str] = field(default_factory=set)
    #: When a member may be asked again whose last request failed (offline).
    next_ask: dict[str, float] = field(default_factory=dict)

    @property
    def chat_id(self) -> str:
        return self.group_id.hex()

    @property
    def context(self) -> bytes:
        return self.group_id + room_tag(self.room_id, self.group_id)

    def __repr__(self) -> str:
        return f"GroupChat({self.room_id}, {len(self.members())} members)"

    def members(self) -> list[str]:
        """The other members with an open link, sorted."""
        return sorted(u for u, c in self.links.items() if c.session.state is State.OPEN)

    def messages(self) -> list[tuple[str, str]]:
        return [(s, bytes(t).decode("utf-8")) for s, t in self.ring]


class EphemeralGroups:
    """Every ephemeral group chat of one device (``client.ephemeral.groups``)."""

    def __init__(self, chats: ChatHost, rooms: RoomLookup | None, *,
                 emit: Emit, spawn: Spawn) -> None:
        self._chats, self._rooms, self._emit, self._spawn = chats, rooms, emit, spawn
        self._groups: dict[bytes, GroupChat] = {}
        #: Group chat ids that ended here: a late request naming one is dropped.
        self._ended: set[bytes] = set()
        #: When each unknown sender of a group request was last looked up.
        self._looked_up: dict[str, float] = {}
        #: Called for a group frame this device cannot place (tests count them).
        self.on_refused: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"EphemeralGroups({len(self._groups)} group chats)"

    @property
    def username(self) -> str:
        return self._chats.username

    # --- what the application calls -----------------------------------------------------

    def groups(self) -> list[GroupChat]:
        return list(self._groups.values())

    def invitations(self, room_id: str | None = None) -> list[Chat]:
        """Requests naming a group chat this device is not in yet."""
        return [c for c in self._chats.group_requests()
                if c.session.group[:CHAT_ID_LEN] not in self._groups
                and (room_id is None or self._room_of(c.session.group) == room_id)]

    async def open(self, room_id: str, *, patience: float = OPEN_PATIENCE_S) -> GroupChat:
        """Join the room's group chat an online member already started (its request
        arrives within ``patience``), else start one; returns at once (members join as
        they accept: ``EphemeralGroupOpened`` says when one does)."""
        users = self._users(room_id)
        if users is None:
            raise UsageError("you are not a member of that room")
        if not self._chats.connected:
            from sottovoce.client.errors import NotConnected

            raise NotConnected("an ephemeral group chat needs a live connection")
        loop = asyncio.get_running_loop()
        until = loop.time() + patience
        while not (waiting := self.invitations(room_id)) and loop.time() < until:
            await asyncio.sleep(0.05)
        if waiting:
            group = self._new(waiting[0].session.group[:CHAT_ID_LEN], room_id, starter=False)
            for chat in waiting:
                if chat.session.group == group.context:
                    self._take(group, chat)
        else:
            group = self._new(self._chats.random(CHAT_ID_LEN), room_id, starter=True)
        self._spawn(self._maintain(group))
        return group

    async def send(self, group: GroupChat, text: str) -> int:
        """One text to every member linked now; kept in the ring. The member count."""
        data = text.encode("utf-8")
        if group.ended.is_set():
            raise UsageError("the ephemeral group chat has ended")
        sent = await self._fan_out(group, Inner.GROUP_TEXT, group.group_id + data)
        group.ring.append((self.username, bytearray(data)))
        return sent

    async def send_media(self, group: GroupChat, kind: int, name: str,
                         data: bytearray) -> int:
        """A photo or clip (``data`` read from a file, wiped by the caller) to every
        member linked now; the member count."""
        if group.ended.is_set():
            raise UsageError("the ephemeral group chat has ended")
        links = [c for c in group.links.values() if c.session.state is State.OPEN]
        if not links:
            raise UsageError("nobody has joined the ephemeral group chat yet")
        for chat in links:
            with contextlib.suppress(SottovoceError):
                await self._chats.send_media(chat, kind, name, data, prefix=group.group_id)
        return len(links)

    async def leave(self, group: GroupChat) -> None:
        self._end(group, "you left")
        await asyncio.sleep(0)

    def panic(self) -> None:
        """PANIC to every member of every group chat, then everything wiped (synchronous)."""
        for group in list(self._groups.values()):
            group.panicked = True
            for chat in list(group.links.values()):
                if chat.session.state is State.OPEN:
                    self._chats.send_now(chat, Inner.PANIC, group.group_id)
            self._end(group, "panic")

    # --- from EphemeralChats ------------------------------------------------------------

    def on_request(self, chat: Chat) -> None:
        """A group REQUEST (its statement checked): accepted at once if this device is
        in that group chat and the sender is a member of its room, else an invitation."""
        context = chat.session.group
        group_id = context[:CHAT_ID_LEN]
        room_id = self._room_of(context)
        users = None if room_id is None else self._users(room_id)
        if group_id in self._ended or users is None or chat.peer not in users:
            self._refuse(chat, "a group chat request from outside its room")
            return
        group = self._groups.get(group_id)
        if group is None:
            self._emit(EphemeralGroupInvited(chat_id=group_id.hex(), room_id=str(room_id),
                                             peer=chat.peer))
            return
        old = group.links.get(chat.peer)
        if old is not None and old.session.state is State.OPEN:
            self._refuse(chat, "already linked")
            return
        if old is not None:  # both asked at once: the one whose name sorts first asks
            if self.username < chat.peer:
                self._refuse(chat, "crossed: ours goes on")
                return
            group.links.pop(chat.peer, None)
            self._chats.end(old, "crossed with the other side's request")
        self._take(group, chat)

    def unknown_device(self, sender: str, context: bytes) -> None:
        """A group request from a device this one has not looked up: if the sender is a
        member of the room it names, look the sender up (at most every few seconds)."""
        room_id = self._room_of(context) if len(context) == 32 else None
        users = None if room_id is None else self._users(room_id)
        loop = asyncio.get_running_loop()
        if users is None or sender not in users or self._looked_up.get(sender, -1e9) > \
                loop.time() - LOOKUP_EVERY_S:
            return
        self._looked_up[sender] = loop.time()
        self._spawn(self._lookup(sender))

    async def _lookup(self, user: str) -> None:
        with contextlib.suppress(SottovoceError):
            await self._chats.lookup(user)

    def on_opened(self, chat: Chat) -> None:
        group = self._group_of(chat)
        if group is None:
            return
        group.had_members = True
        self._emit(EphemeralGroupOpened(chat_id=group.chat_id, room_id=group.room_id,
                                        user=chat.peer))
        self._spawn(self._roster_to_all(group))

    def on_data(self, chat: Chat, inner: Inner, content: bytes) -> bytes | None:
        """A group frame of a link: handled here; a MEDIA chunk's content (group id
        checked and stripped) is given back for the caller to assemble."""
        group = self._group_of(chat)
        if group is None or content[:CHAT_ID_LEN] != group.group_id:
            raise DecodeError("group message of another group chat")
        body = content[CHAT_ID_LEN:]
        users = self._users(group.room_id)
        if users is None or chat.peer not in users:
            self._chats.end(chat, "no longer a member of the room", tell=True)
            return None
        if inner is Inner.GROUP_TEXT:
            text = bytearray(body)
            group.ring.append((chat.peer, text))
            self._emit(EphemeralGroupMessage(
                chat_id=group.chat_id, room_id=group.room_id, sender=chat.peer,
                text=body.decode("utf-8", "replace")))
        elif inner is Inner.PANIC:
            self._end(group, f"{chat.peer} panicked")
        elif inner is Inner.ROSTER:
            self._on_roster(group, body, users)
        elif inner is Inner.MEDIA:
            return body
        return None

    def on_media(self, chat: Chat, media: Media) -> None:
        group = self._group_of(chat)
        if group is None:
            media.wipe()
            return
        if len(group.media) == group.media.maxlen:
            group.media[0].wipe()
        group.media.append(media)
        self._emit(EphemeralMediaReceived(
            chat_id=group.chat_id, peer=group.room_id, sender=chat.peer,
            index=len(group.media), about=media.describe()))

    def on_ended(self, chat: Chat) -> None:
        group = self._group_of(chat)
        if group is None or group.links.get(chat.peer) is not chat:
            return
        del group.links[chat.peer]
        if chat.opened.is_set():
            group.gone.add(chat.peer)
            self._emit(EphemeralGroupLeft(chat_id=group.chat_id, room_id=group.room_id,
                                          user=chat.peer, reason=chat.end_reason))
        if group.had_members and not any(
                c.session.state is State.OPEN for c in group.links.values()):
            self._end(group, "everyone else left")

    def connection_lost(self) -> None:
        for group in list(self._groups.values()):
            self._end(group, "connection lost")

    # --- inside -------------------------------------------------------------------------

    def _new(self, group_id: bytes, room_id: str, *, starter: bool) -> GroupChat:
        group = GroupChat(group_id, room_id, starter)
        self._groups[group_id] = group
        return group

    def _take(self, group: GroupChat, chat: Chat) -> None:
        self._link(group, chat.peer, chat)
        self._spawn(self._chats.answer(chat))

    def _refuse(self, chat: Chat, why: str) -> None:
        self._chats.end(chat, why)
        if self.on_refused is not None:
            self.on_refused(why)

    def _group_of(self, chat: Chat) -> GroupChat | None:
        group = self._groups.get(chat.session.group[:CHAT_ID_LEN])
        if group is None or group.context != chat.session.group:
            return None
        return group

    def _room_of(self, context: bytes) -> str | None:
        if self._rooms is None:
            return None
        group_id, tag = context[:CHAT_ID_LEN], context[CHAT_ID_LEN:]
        for room_id in self._rooms.room_ids():
            if room_tag(room_id, group_id) == tag:
                return room_id
        return None

    def _users(self, room_id: str) -> set[str] | None:
        if self._rooms is None:
            return None
        users = self._rooms.room_users(room_id)
        if users is None or self.username not in users:
            return None
        return users - {self.username}

    async def _fan_out(self, group: GroupChat, inner: Inner, content: bytes) -> int:
        sent = 0
        for chat in list(group.links.values()):
            if chat.session.state is State.OPEN:
                with contextlib.suppress(SottovoceError):
                    await self._chats.send_inner(chat, inner, content)
                    sent += 1
        return sent

    async def _roster_to_all(self, group: GroupChat) -> None:
        w = Writer()
        w.raw(group.group_id)
        members = group.members()
        w.u16(len(members))
        for user in members:
            w.opaque8(user.encode("ascii"))
        await self._fan_out(group, Inner.ROSTER, w.getvalue())

    def _on_roster(self, group: GroupChat, body: bytes, users: set[str]) -> None:
        r = Reader(body)
        named = []
        for _ in range(r.u16()):
            try:
                named.append(r.opaque8().decode("ascii"))
            except UnicodeDecodeError:
                raise DecodeError("roster name is not ASCII") from None
        r.finish()
        for user in named:
            # Only room members, as this device's MLS group says; the smaller name asks
            # (now, and again every few seconds while the link is missing: _maintain).
            if user in users and user != self.username:
                group.known.add(user)
            if user in users and user not in group.links and self.username < user:
                group.next_ask[user] = asyncio.get_running_loop().time() + ASK_OFFLINE_EVERY_S
                self._spawn(self._ask(group, user))

    async def _ask(self, group: GroupChat, user: str) -> None:
        if group.ended.is_set() or user in group.links or user in group.asking:
            return
        group.asking.add(user)  # one request at a time: two would cross each other
        try:
            chat = await self._chats.request(user, group=group.context)
        except SottovoceError:
            return  # offline, or gone: the next roster or invitation round tries again
        finally:
            group.asking.discard(user)
        if group.ended.is_set() or user in group.links:
            self._chats.end(chat, "not needed")
            return
        self._link(group, user, chat)

    def _link(self, group: GroupChat, user: str, chat: Chat) -> None:
        group.links[user] = chat
        group.linked_at[user] = asyncio.get_running_loop().time()

    async def _maintain(self, group: GroupChat) -> None:
        """Every second: drop links of users who are no longer members (telling them),
        and asks members not linked yet: the starter every member, the others those a
        roster named whose name sorts after theirs."""
        while not group.ended.is_set():
            users = self._users(group.room_id)
            if users is None:
                self._end(group, "you are no longer a member of the room")
                return
            now = asyncio.get_running_loop().time()
            for user, chat in list(group.links.items()):
                if user not in users:
                    self._chats.end(chat, "no longer a member of the room", tell=True)
                elif self._stuck(group, user, chat, now):
                    self._chats.end(chat, "the link did not open")  # asked again below
            wanted = users if group.starter else {
                u for u in group.known & users if self.username < u}
            if wanted:
                for user in sorted(wanted - set(group.links) - group.gone):
                    if group.next_ask.get(user, 0.0) <= now:
                        group.next_ask[user] = now + ASK_OFFLINE_EVERY_S
                        await self._ask(group, user)
            await asyncio.sleep(INVITE_EVERY_S)

    @staticmethod
    def _stuck(group: GroupChat, user: str, chat: Chat, now: float) -> bool:
        """A link that should have opened by now and did not (its other side gave it
        up): a starter's unanswered invitation waits, as the member may come later."""
        state = chat.session.state
        if state is State.OPEN or now - group.linked_at.get(user, now) < LINK_SETUP_S:
            return False
        return state is not State.REQUESTED or not group.starter

    def _end(self, group: GroupChat, reason: str) -> None:
        if self._groups.pop(group.group_id, None) is None:
            return
        self._ended.add(group.group_id)
        group.end_reason = reason
        group.ended.set()
        tell = reason != "connection lost"
        for chat in list(group.links.values()):
            self._chats.end(chat, reason, tell=tell)
        group.links.clear()
        for _, text in group.ring:
            wipe(text)
        group.ring.clear()
        for media in group.media:
            media.wipe()
        group.media.clear()
        self._emit(EphemeralGroupEnded(chat_id=group.chat_id, room_id=group.room_id,
                                       reason=reason))
