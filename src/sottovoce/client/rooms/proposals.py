"""The proposal messages members sent in a room's current epoch (a member leaving sends
its own Remove), kept as they came in the sealed store: a commit that holds them by
reference carries them, so the server can tell who proposed what
(protocol/room_rules.py), even when it is made after a restart.

One record per room: ``uint64 epoch; opaque messages<V><V>``; a record of another
epoch than the one asked about is empty (proposals never outlive their epoch).
"""

from __future__ import annotations

from sottovoce.client.store import Store
from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError
from sottovoce.limits import MLS_MAX_PENDING_PROPOSALS


def _record(room_id: str) -> str:
    return f"room-proposals:{room_id}"


def held(store: Store, room_id: str, epoch: int) -> list[bytes]:
    """The proposal messages of ``epoch`` kept for the room, in arrival order."""
    raw = store.get_secret(_record(room_id))
    if not raw:
        return []

    def read(r: Reader) -> tuple[int, list[bytes]]:
        return r.u64(), r.vector_v(Reader.opaque_v)

    try:
        kept_epoch, messages = decode(read, raw)
    except DecodeError:
        return []
    return messages if kept_epoch == epoch else []


def keep(store: Store, room_id: str, epoch: int, message: bytes) -> None:
    """Add ``message`` (a proposal of ``epoch``) to the room's record (in a transaction)."""
    messages = held(store, room_id, epoch)
    if message in messages or len(messages) >= MLS_MAX_PENDING_PROPOSALS:
        return
    w = Writer()
    w.u64(epoch)
    w.vector_v([*messages, message], Writer.opaque_v)
    store.put_secret(_record(room_id), w.getvalue())
