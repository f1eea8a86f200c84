"""The user's contact list on this device: who is a contact, whose first message waits
as a request, whom the user blocked (client/contact_list.py decides; this keeps it).

Separate from the store's ``contacts`` table, which holds the keys and devices looked
up in the directory (pinned on first use, verification marks): a person can be looked
up without being a contact, and a contact's keys can change without them leaving the
list. One row per person, keyed by the store's keyed tag of the username; the name,
the state and when it changed are sealed together, so the file shows only how many
people there are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sottovoce.client.store import Store
from sottovoce.errors import DecodeError

_SCHEMA = "CREATE TABLE IF NOT EXISTS contact_list(tag BLOB PRIMARY KEY, sealed BLOB NOT NULL)"
_KIND = b"contact_list"

CONTACT = "contact"
REQUEST = "request"
BLOCKED = "blocked"
STATES = (CONTACT, REQUEST, BLOCKED)


@dataclass(frozen=True, slots=True)
class Entry:
    username: str
    state: str
    changed_ms: int


class ContactTable:
    """The ``contact_list`` table of one store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        store.connection.execute(_SCHEMA)  # one statement: joins no transaction

    def _tag(self, username: str) -> bytes:
        return self._store.tag("contact_list", username)

    def get(self, username: str) -> Entry | None:
        tag = self._tag(username)
        row = self._store.connection.execute(
            "SELECT sealed FROM contact_list WHERE tag = ?", (tag,)
        ).fetchone()
        return None if row is None else self._open(tag, bytes(row[0]))

    def put(self, entry: Entry) -> None:
        tag = self._tag(entry.username)
        record = json.dumps([entry.username, entry.state, entry.changed_ms]).encode()
        with self._store.transaction():
            self._store.upsert(
                "contact_list", ("tag", "sealed"), tag, self._store.seal(_KIND, tag, record)
            )

    def delete(self, username: str) -> bool:
        with self._store.transaction():
            cur = self._store.connection.execute(
                "DELETE FROM contact_list WHERE tag = ?", (self._tag(username),)
            )
        return cur.rowcount > 0

    def all(self) -> list[Entry]:
        rows = self._store.connection.execute("SELECT tag, sealed FROM contact_list").fetchall()
        return sorted(
            (self._open(bytes(t), bytes(s)) for t, s in rows), key=lambda e: e.username
        )

    def _open(self, tag: bytes, sealed: bytes) -> Entry:
        value = json.loads(self._store.unseal(_KIND, tag, sealed))
        if (
            not isinstance(value, list) or len(value) != 3
            or not isinstance(value[0], str) or value[1] not in STATES
            or not isinstance(value[2], int)
        ):
            raise DecodeError("a contact list record is damaged")
        return Entry(username=value[0], state=value[1], changed_ms=value[2])
