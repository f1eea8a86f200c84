"""Deleting messages everywhere this device holds them: the one list of the store's
per-message tables, used by the disappearing-message sweep (client/store_timers.py)
and by ``forget`` (client/conversations.py), so a table added later is added here once.

For each message id: its row in every table of :data:`PER_MESSAGE_TABLES` (the sealed
text, the queued frame, the unsent record, the expiry, the received file's sealed
local key), a room control message's sealed body (``secrets``), and on disk the sealed
local copy of its file (``files/<local id>`` and a ``.part`` of a cut-off download) and
any decrypted copy in the viewing area (``view/<message id>/``). The rows go inside
the caller's transaction; the disk copies are removed by :func:`remove_copies` once it
has committed (a rolled-back deletion keeps its files).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from sottovoce.client.store import Store
from sottovoce.client.store_files import local_copies

#: Every table with rows per message, keyed by ``message_id`` (a table not created
#: in this store yet is skipped): the message, its queued and unsent sends, its
#: expiry, a received file, and what control messages did to it (client/store_control.py:
#: edits and their sealed texts, reactions, receipts, read receipts sent).
PER_MESSAGE_TABLES = (
    "messages", "outbox", "unsent", "message_expiry", "files",
    "ctl_state", "ctl_edits", "ctl_reactions", "ctl_receipts", "ctl_read_sent",
)
#: Rows deleted per statement (SQLite's bound-parameter limit is far above this).
_CHUNK = 200


def purge_messages(store: Store, message_ids: Sequence[str]) -> list[Path]:
    """Delete ``message_ids`` from every per-message table (in the caller's transaction);
    returns the files and folders on disk to remove once that has committed."""
    db = store.connection
    present = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    doomed: list[Path] = []
    for start in range(0, len(message_ids), _CHUNK):
        chunk = list(message_ids[start : start + _CHUNK])
        doomed += local_copies(store, chunk)
        doomed += [store.data_dir / "view" / m for m in chunk]
        marks = ",".join("?" * len(chunk))
        for table in PER_MESSAGE_TABLES:
            if table in present:
                db.execute(
                    f"DELETE FROM {table} WHERE message_id IN ({marks})",  # noqa: S608
                    chunk,
                )
        db.execute(
            f"DELETE FROM secrets WHERE name IN ({marks})",  # noqa: S608
            [f"room-control:{m}" for m in chunk],
        )
    return doomed


def remove_copies(paths: Sequence[Path]) -> None:
    """Remove what :func:`purge_messages` returned (files, and viewing-area folders)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
