"""What control messages did to messages, kept in the local store beside them.

Tables (created on open if missing, so existing stores open):

    ctl_state      per message: edited / deleted (1 for everyone, 2 for me) in clear,
                   a sealed record {"reply_to": ID, "edits": [[ms, text], ...]}
    ctl_edits      the ids of the edit messages of a message (wiped with it)
    ctl_reactions  per (message, keyed tag of the reacting user): the sealed emoji set
    ctl_receipts   per (message, keyed tag of the reader, kind): delivered or read
    ctl_read_sent  incoming messages we sent a read receipt for

Only random ids, counters and keyed tags are in clear; text, names and emoji
are sealed with the store's key (client/store.py).

A linked device gets them with the history (:meth:`ControlStore.export`, then
:meth:`ControlStore.restore` there): the keyed tags are this store's, so each is
turned back into the username it was made from, among the users the history names.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from sottovoce.client.store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ctl_state(
    message_id TEXT PRIMARY KEY,
    edited INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    sealed BLOB
);
CREATE TABLE IF NOT EXISTS ctl_edits(edit_id TEXT PRIMARY KEY, message_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ctl_edits_target ON ctl_edits(message_id);
CREATE TABLE IF NOT EXISTS ctl_reactions(
    message_id TEXT NOT NULL,
    sender_tag BLOB NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY(message_id, sender_tag)
);
CREATE TABLE IF NOT EXISTS ctl_receipts(
    message_id TEXT NOT NULL,
    reader_tag BLOB NOT NULL,
    kind INTEGER NOT NULL,
    PRIMARY KEY(message_id, reader_tag, kind)
);
CREATE TABLE IF NOT EXISTS ctl_read_sent(message_id TEXT PRIMARY KEY);
"""

DELETED_FOR_EVERYONE = 1
DELETED_FOR_ME = 2
KIND_DELIVERED = 1
KIND_READ = 2


@dataclass(slots=True)
class MessageState:
    """What happened to one message (empty for an untouched one)."""

    edited: bool = False
    deleted: int = 0
    reply_to: str | None = None
    edits: list[tuple[int, str]] = field(default_factory=list)

    @property
    def text(self) -> str | None:
        """The latest edit's text, if edited."""
        return self.edits[-1][1] if self.edits else None


class ControlStore:
    """The control tables of one :class:`Store` (use inside its transactions)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.connection
        self._db.executescript(_SCHEMA)

    # --- state ------------------------------------------------------------------------

    def state(self, message_id: str) -> MessageState:
        row = self._db.execute(
            "SELECT edited, deleted, sealed FROM ctl_state WHERE message_id = ?", (message_id,)
        ).fetchone()
        if row is None:
            return MessageState()
        edited, deleted, sealed = row
        record: dict[str, Any] = {}
        if sealed is not None:
            record = json.loads(self._store.unseal(b"ctl-state", message_id.encode(), sealed))
        return MessageState(
            edited=bool(edited),
            deleted=int(deleted),
            reply_to=record.get("reply_to"),
            edits=[(int(t), str(x)) for t, x in record.get("edits", [])],
        )

    def put_state(self, message_id: str, state: MessageState) -> None:
        record = {"reply_to": state.reply_to, "edits": [list(e) for e in state.edits]}
        sealed = self._store.seal(
            b"ctl-state", message_id.encode(), json.dumps(record).encode("utf-8")
        )
        self._db.execute(
            "INSERT INTO ctl_state(message_id, edited, deleted, sealed) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(message_id) DO UPDATE SET edited = excluded.edited, "
            "deleted = excluded.deleted, sealed = excluded.sealed",
            (message_id, int(state.edited), state.deleted, sealed),
        )

    def add_edit_id(self, edit_id: str, message_id: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO ctl_edits(edit_id, message_id) VALUES (?, ?)",
            (edit_id, message_id),
        )

    def edit_ids(self, message_id: str) -> list[str]:
        rows = self._db.execute(
            "SELECT edit_id FROM ctl_edits WHERE message_id = ?", (message_id,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    # --- reactions ----------------------------------------------------------------------

    def reactions_of(self, message_id: str, sender: str) -> set[str]:
        row = self._db.execute(
            "SELECT sealed FROM ctl_reactions WHERE message_id = ? AND sender_tag = ?",
            (message_id, self._store.tag("user", sender)),
        ).fetchone()
        if row is None:
            return set()
        return set(json.loads(self._open_reactions(message_id, row[0])))

    def set_reactions(self, message_id: str, sender: str, emoji: set[str]) -> None:
        tag = self._store.tag("user", sender)
        if not emoji:
            self._db.execute(
                "DELETE FROM ctl_reactions WHERE message_id = ? AND sender_tag = ?",
                (message_id, tag),
            )
            return
        sealed = self._store.seal(
            b"ctl-reaction", message_id.encode(), json.dumps(sorted(emoji)).encode("utf-8")
        )
        self._db.execute(
            "INSERT INTO ctl_reactions(message_id, sender_tag, sealed) VALUES (?, ?, ?) "
            "ON CONFLICT(message_id, sender_tag) DO UPDATE SET sealed = excluded.sealed",
            (message_id, tag, sealed),
        )

    def reaction_counts(self, message_id: str) -> dict[str, int]:
        """Each emoji on ``message_id`` with how many users put it there."""
        counts: dict[str, int] = {}
        for (sealed,) in self._db.execute(
            "SELECT sealed FROM ctl_reactions WHERE message_id = ?", (message_id,)
        ).fetchall():
            for emoji in json.loads(self._open_reactions(message_id, sealed)):
                counts[emoji] = counts.get(emoji, 0) + 1
        return counts

    def _open_reactions(self, message_id: str, sealed: bytes) -> bytes:
        return self._store.unseal(b"ctl-reaction", message_id.encode(), bytes(sealed))

    def clear_reactions(self, message_id: str) -> None:
        self._db.execute("DELETE FROM ctl_reactions WHERE message_id = ?", (message_id,))

    # --- receipts -----------------------------------------------------------------------

    def add_receipt(self, message_id: str, reader: str, kind: int) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO ctl_receipts(message_id, reader_tag, kind) VALUES (?, ?, ?)",
            (message_id, self._store.tag("user", reader), kind),
        )
        return cur.rowcount == 1

    def receipt_count(self, message_id: str, kind: int) -> int:
        row = self._db.execute(
            "SELECT COUNT(DISTINCT reader_tag) FROM ctl_receipts WHERE message_id = ? "
            "AND kind = ?",
            (message_id, kind),
        ).fetchone()
        return int(row[0])

    def read_sent(self, message_ids: list[str]) -> set[str]:
        """Which of ``message_ids`` we already sent a read receipt for."""
        out: set[str] = set()
        for i in range(0, len(message_ids), 500):
            chunk = message_ids[i : i + 500]
            rows = self._db.execute(
                "SELECT message_id FROM ctl_read_sent WHERE message_id IN "  # noqa: S608
                f"({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            out.update(str(r[0]) for r in rows)
        return out

    def mark_read_sent(self, message_ids: list[str]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO ctl_read_sent(message_id) VALUES (?)",
            [(m,) for m in message_ids],
        )

    # --- hand-over to a linked device -------------------------------------------------

    def export(self, message_ids: Collection[str], users: Iterable[str]) -> dict[str, Any]:
        """What the tables say about ``message_ids``, with names for tags: a reaction or
        receipt of a user not in ``users`` (no message of theirs here) is left out."""
        names = {self._store.tag("user", u): u for u in users}
        ids = set(message_ids)
        out: dict[str, Any] = {"state": {}, "edits": [], "reactions": [], "receipts": [],
                               "read_sent": []}
        for (mid,) in self._db.execute("SELECT message_id FROM ctl_state").fetchall():
            if mid in ids:
                st = self.state(mid)
                out["state"][mid] = [int(st.edited), st.deleted, st.reply_to,
                                     [list(e) for e in st.edits]]
        out["edits"] = [[e, m] for e, m in self._db.execute(
            "SELECT edit_id, message_id FROM ctl_edits").fetchall() if m in ids]
        for mid, tag, sealed in self._db.execute(
            "SELECT message_id, sender_tag, sealed FROM ctl_reactions"
        ).fetchall():
            if mid in ids and bytes(tag) in names:
                emoji = json.loads(self._open_reactions(mid, bytes(sealed)))
                out["reactions"].append([mid, names[bytes(tag)], emoji])
        for mid, tag, kind in self._db.execute(
            "SELECT message_id, reader_tag, kind FROM ctl_receipts"
        ).fetchall():
            if mid in ids and bytes(tag) in names:
                out["receipts"].append([mid, names[bytes(tag)], int(kind)])
        out["read_sent"] = sorted(self.read_sent(sorted(ids)))
        return out

    def restore(self, data: dict[str, Any]) -> None:
        """Write what :meth:`export` gave (inside the caller's transaction); a value of
        the wrong shape raises ``ValueError``."""
        try:
            for mid, (edited, deleted, reply_to, edits) in data["state"].items():
                self.put_state(str(mid), MessageState(
                    edited=bool(edited), deleted=int(deleted),
                    reply_to=None if reply_to is None else str(reply_to),
                    edits=[(int(t), str(x)) for t, x in edits]))
            for edit_id, mid in data["edits"]:
                self.add_edit_id(str(edit_id), str(mid))
            for mid, user, emoji in data["reactions"]:
                self.set_reactions(str(mid), str(user), {str(e) for e in emoji})
            for mid, user, kind in data["receipts"]:
                self.add_receipt(str(mid), str(user), int(kind))
            self.mark_read_sent([str(m) for m in data["read_sent"]])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError("a history's control records are malformed") from exc
