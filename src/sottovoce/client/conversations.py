"""Conversations on this device: the list with unread counts, search, export, forget.

Everything here reads the local store and writes nothing in clear that it did
not already hold:

* **list**: one entry per person with messages and per room this device is in,
  with the unread count and the time of the last message. A person's name comes
  from the sealed body of their latest message (rows carry only a keyed tag);
* **read marks**: ``read_marks(peer_tag, local_id)``, the keyed tag of the
  conversation and the last local row shown (a counter): unread = received rows
  after it. `history`, `room history` and the chat screen move it when they show
  messages;
* **search**: scan and decrypt, in memory, every text message (no index on
  disk, none kept in memory between calls: about 0.7 s for 10,000 messages on a
  loaded 2-core machine, tests/unit/test_conversations.py measures it);
* **export**: one conversation's messages as a JSON-ready dict for the owner;
* **forget**: delete one conversation's messages (and sends of it still queued)
  with SQLite's ``secure_delete`` on, then checkpoint and truncate the WAL, so the
  sealed records are overwritten in the file, not just unlinked from the b-tree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sottovoce.client.store import DeliveryStatus, Store, StoredMessage
from sottovoce.errors import UsageError

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS read_marks(peer_tag BLOB PRIMARY KEY, local_id INTEGER NOT NULL)"
)
#: Messages decrypted per query while scanning (search, export).
_PAGE = 1000
#: The version of the export's JSON.
EXPORT_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Conversation:
    """``peer`` is what the store files messages under: a username, or a room id."""

    peer: str
    label: str
    room: bool
    unread: int
    messages: int
    last_ms: int


@dataclass(frozen=True, slots=True)
class SearchHit:
    conversation: str  # a username, or the room's local name
    room: bool
    message: StoredMessage


def message_time(m: StoredMessage) -> int:
    return m.server_received_ms or m.local_at_ms or m.client_created_ms


class Conversations:
    """The conversations of one account's store (``client.conversations``)."""

    def __init__(
        self, store: Store, me: str, hide: Callable[[], set[str]] = lambda: set()
    ) -> None:
        self._store = store
        self._me = me
        #: People whose conversations the list leaves out (requests, blocked: contact_list.py).
        self._hide = hide
        store.connection.execute(_SCHEMA)  # one statement: joins no transaction

    @property
    def _db(self) -> Any:
        return self._store.connection

    def _tag(self, peer: str) -> bytes:
        return self._store.tag("user", peer)

    def _rooms(self, *, removed: bool = True) -> dict[str, str]:
        """room id → local name (of the rooms this device is still in, without ``removed``)."""
        return {r.room_id: r.label for r in self._store.rooms() if removed or not r.removed}

    # --- the list -------------------------------------------------------------------

    def all(self) -> list[Conversation]:
        """Every conversation, the most recent first (a room without messages last)."""
        rooms = self._rooms()
        room_tags = {self._tag(room_id): room_id for room_id in rooms}
        unread = dict(self._db.execute(
            "SELECT m.peer_tag, COUNT(*) FROM messages m "
            "LEFT JOIN read_marks r ON r.peer_tag = m.peer_tag "
            "WHERE m.outgoing = 0 AND m.id > COALESCE(r.local_id, 0) GROUP BY m.peer_tag"
        ).fetchall())  # fmt: skip
        out: list[Conversation] = []
        seen: set[str] = set()
        hidden = self._hide()
        for tag, last_id, count in self._db.execute(
            "SELECT peer_tag, MAX(id), COUNT(*) FROM messages GROUP BY peer_tag"
        ).fetchall():
            last = self._store.messages_after(int(last_id) - 1, limit=1)[0]
            room_id = room_tags.get(bytes(tag))
            if room_id is None and "#" in last.peer:
                continue  # a room's control messages
            peer = room_id or last.peer
            if room_id is None and peer in hidden:
                continue
            seen.add(peer)
            out.append(Conversation(
                peer=peer, label=rooms.get(peer, peer), room=room_id is not None,
                unread=int(unread.get(tag, 0)), messages=int(count), last_ms=message_time(last),
            ))  # fmt: skip
        out.sort(key=lambda c: c.last_ms, reverse=True)
        out += [
            Conversation(peer=r, label=label, room=True, unread=0, messages=0, last_ms=0)
            for r, label in self._rooms(removed=False).items() if r not in seen
        ]
        return out

    def unread(self, peer: str) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM messages WHERE peer_tag = ? AND outgoing = 0 AND id > "
            "COALESCE((SELECT local_id FROM read_marks WHERE peer_tag = ?), 0)",
            (self._tag(peer), self._tag(peer)),
        ).fetchone()
        return int(row[0])

    def mark_read(self, peer: str, shown: Sequence[StoredMessage] | int) -> None:
        """``shown`` (messages, or the last local id) has been shown: not unread any more."""
        last = shown if isinstance(shown, int) else max((m.local_id for m in shown), default=0)
        if last <= 0:
            return
        self._db.execute(
            "INSERT INTO read_marks(peer_tag, local_id) VALUES (?, ?) ON CONFLICT(peer_tag) "
            "DO UPDATE SET local_id = MAX(local_id, excluded.local_id)",
            (self._tag(peer), last),
        )

    # --- search ---------------------------------------------------------------------

    def _every_message(self) -> Iterator[StoredMessage]:
        after = 0
        while page := self._store.messages_after(after, limit=_PAGE):
            yield from page
            after = page[-1].local_id

    def search(self, words: Sequence[str], *, limit: int = 100) -> list[SearchHit]:
        """Text messages holding every one of ``words`` (case-insensitive), newest first."""
        needles = [w.casefold() for w in words if w.strip()]
        if not needles:
            raise UsageError("search for at least one word")
        rooms = self._rooms()
        hits: list[SearchHit] = []
        for m in self._every_message():
            if m.content_type != "text" or m.status is DeliveryStatus.FAILED:
                continue
            if "#" in m.peer:
                continue  # a room's control messages
            text = m.text.casefold()
            if all(n in text for n in needles):
                hits.append(SearchHit(rooms.get(m.peer, m.peer), m.peer in rooms, m))
        hits.sort(key=lambda h: (message_time(h.message), h.message.local_id), reverse=True)
        return hits[:limit]

    # --- export and forget ----------------------------------------------------------

    def resolve(self, name: str) -> tuple[str, str, bool]:
        """(peer, label, room) for ``name``: '#ROOM' or a room's name or id names a room,
        anything else a person; refused if this device holds no message of it."""
        rooms = self._rooms()
        bare = name.removeprefix("#")
        if name.startswith("#") or bare in rooms or bare in rooms.values():
            matches = [r for r, label in rooms.items() if bare in (r, label)]
            if len(matches) == 1:
                return matches[0], rooms[matches[0]], True
            if matches:
                raise UsageError(f"more than one room is named {bare}: name it by its id")
            if name.startswith("#"):
                raise UsageError(f"no room named {bare} on this device")
        peer = name.removeprefix("@")
        if not self._db.execute(
            "SELECT 1 FROM messages WHERE peer_tag = ? LIMIT 1", (self._tag(peer),)
        ).fetchone():
            raise UsageError(f"no conversation with {peer} on this device")
        return peer, peer, False

    def messages(self, peer: str) -> list[StoredMessage]:
        """Every message of one conversation, oldest first."""
        out: list[StoredMessage] = []
        before: int | None = None
        while page := self._store.history(peer, limit=_PAGE, before=before):
            out[:0] = page
            before = page[0].local_id
        return out

    def export(self, name: str) -> dict[str, Any]:
        peer, label, room = self.resolve(name)
        return {
            "sottovoceExport": EXPORT_VERSION,
            "account": self._me,
            "conversation": {"kind": "room" if room else "direct", "name": label,
                             **({"roomId": peer} if room else {})},
            "exportedAtMs": int(time.time() * 1000),
            "messages": [_exported(m) for m in self.messages(peer)],
        }  # fmt: skip

    def forget(self, name: str) -> int:
        """Delete one conversation's messages on this device (sends of it still queued
        are cancelled); returns how many. The rows' bytes are overwritten on disk."""
        peer, _, _ = self.resolve(name)
        db = self._db
        # The store's default (it stays on: expired messages are deleted the same way).
        db.execute("PRAGMA secure_delete = ON")
        count = self.delete_rows(peer)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return count

    def delete_rows(self, peer: str) -> int:
        """The deletes of :meth:`forget` alone, joining a transaction already open (as
        the receive path's: no pragma or checkpoint can run inside one)."""
        tag, db = self._tag(peer), self._db
        with self._store.transaction():
            for table in ("outbox", "unsent"):
                db.execute(
                    f"DELETE FROM {table} WHERE message_id IN "  # noqa: S608
                    "(SELECT message_id FROM messages WHERE peer_tag = ?)",
                    (tag,),
                )
            count = db.execute("DELETE FROM messages WHERE peer_tag = ?", (tag,)).rowcount
            db.execute("DELETE FROM read_marks WHERE peer_tag = ?", (tag,))
        return int(count)


def _exported(m: StoredMessage) -> dict[str, Any]:
    return {
        "messageId": m.message_id,
        "sender": m.sender,
        "senderDevice": m.sender_device,
        "outgoing": m.outgoing,
        "status": m.status.name.lower(),
        "contentType": m.content_type,
        "text": m.text,
        "clientCreatedMs": m.client_created_ms,
        "serverReceivedMs": m.server_received_ms,
        "localAtMs": m.local_at_ms,
    }
