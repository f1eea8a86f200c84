"""Disappearing messages in the local store: each chat's timer, each message's expiry,
and the deletion of what expired (docs/architecture.md §Disappearing messages).

    chat_timers:     one sealed record per chat (1:1 conversation id or room id),
                     found by a keyed tag: the timer's seconds, who set it and when.
    message_expiry:  messageId -> expiry (Unix ms) in clear (random ids and times
                     only), indexed by expiry so a sweep finds what is due.

:meth:`TimerStore.delete_expired` removes an expired message everywhere this device
holds its content (client/purge.py: the message row, its outbox and unsent rows, its
expiry row, a room control message's sealed body, a received file's row, its sealed
local copy and any decrypted copy in the viewing area). The store
runs with ``secure_delete`` (the freed bytes are zeroed), and after a sweep the
write-ahead log is checkpointed and truncated, so the sealed bytes of a deleted
message are not left in the database file or its log either.
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.client.purge import purge_messages, remove_copies
from sottovoce.client.store import Store
from sottovoce.codec.tls import Reader, WireStruct, Writer
from sottovoce.errors import DecodeError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chat_timers(tag BLOB PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS message_expiry(
    message_id TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS message_expiry_at ON message_expiry(expires_at);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatTimer(WireStruct):
    """A chat's disappearing-message timer: ``seconds`` (0: off), set by ``setter``
    with the timer message ``message_id`` created at ``set_at_ms`` (the latest wins)."""

    seconds: int
    setter: str
    set_at_ms: int
    message_id: str

    def write(self, w: Writer) -> None:
        w.u8(1)
        w.u32(self.seconds)
        w.opaque8(self.setter.encode("utf-8"))
        w.u64(self.set_at_ms)
        w.opaque8(self.message_id.encode("ascii"))

    @classmethod
    def read(cls, r: Reader) -> ChatTimer:
        r.version(1, "chat timer record")
        return cls(
            seconds=r.u32(),
            setter=r.opaque8().decode("utf-8"),
            set_at_ms=r.u64(),
            message_id=r.opaque8().decode("ascii"),
        )

    def newer_than(self, other: ChatTimer | None) -> bool:
        """Whether this setting replaces ``other`` (later creation time; ties by id)."""
        if other is None:
            return True
        return (self.set_at_ms, self.message_id) > (other.set_at_ms, other.message_id)


class TimerStore:
    """The timer tables of one :class:`Store` (created on open if missing)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.connection
        # One statement at a time: executescript would commit a transaction in progress.
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)

    # --- chat timers ------------------------------------------------------------

    def timer(self, chat: str) -> ChatTimer | None:
        row = self._db.execute(
            "SELECT sealed FROM chat_timers WHERE tag = ?", (self._store.tag("timer", chat),)
        ).fetchone()
        if row is None:
            return None
        try:
            return ChatTimer.decode(self._store.unseal(b"chat-timer", chat.encode(), bytes(row[0])))
        except DecodeError:
            return None  # a damaged record reads as "no timer": messages then persist

    def set_timer(self, chat: str, timer: ChatTimer) -> bool:
        """Record ``timer`` for ``chat`` unless a newer one is kept; returns whether it was."""
        if not timer.newer_than(self.timer(chat)):
            return False
        self._store.upsert(
            "chat_timers", ("tag", "sealed"), self._store.tag("timer", chat),
            self._store.seal(b"chat-timer", chat.encode(), timer.encode()),
        )
        return True

    # --- message expiry ---------------------------------------------------------

    def set_expiry(self, message_id: str, expires_at_ms: int) -> None:
        """The message disappears at ``expires_at_ms`` (a first expiry is never moved)."""
        self._db.execute(
            "INSERT INTO message_expiry(message_id, expires_at) VALUES (?, ?) "
            "ON CONFLICT(message_id) DO NOTHING",
            (message_id, expires_at_ms),
        )

    def expiry(self, message_id: str) -> int:
        """When the message disappears (Unix ms); 0 if it does not."""
        row = self._db.execute(
            "SELECT expires_at FROM message_expiry WHERE message_id = ?", (message_id,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def next_expiry(self) -> int | None:
        row = self._db.execute("SELECT MIN(expires_at) FROM message_expiry").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def expired(self, now_ms: int) -> list[str]:
        rows = self._db.execute(
            "SELECT message_id FROM message_expiry WHERE expires_at <= ? ORDER BY expires_at",
            (now_ms,),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def delete_expired(self, now_ms: int) -> list[str]:
        """Delete every message expired at ``now_ms`` everywhere it is held; returns their ids."""
        gone = self.expired(now_ms)
        if not gone:
            return []
        self._db.execute("PRAGMA secure_delete = ON")  # the store's default; said again here
        with self._store.transaction():
            copies = purge_messages(self._store, gone)
        remove_copies(copies)
        # The log still holds the pages as they were: write them back and empty it.
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return gone
