"""Key-transparency test helpers shared by unit and integration tests."""

from __future__ import annotations

import secrets
from typing import Any

from sottovoce.kt.map import Overlay, SparseMap
from sottovoce.server.storage import kt as kt_tables
from sottovoce.server.storage.txn import Txn, execute


def hide_an_account() -> Txn[Any]:
    """Someone with the database hides an account in the map: an entry that no leaf
    appended, written over the records of the latest epoch (a storage operation)."""
    size = yield from kt_tables.log_size()
    key = secrets.token_bytes(32)
    path = Overlay(dict((yield from kt_tables._map_path(key, size))))
    SparseMap(path).set(key, b"\xee" * 32)
    for node, record in path.writes.items():
        node_id = kt_tables.map_node_id(node)
        yield execute("DELETE FROM kt_map_nodes WHERE node=? AND epoch=?", node_id, size - 1)
        yield execute("INSERT INTO kt_map_nodes(node, epoch, record) VALUES (?, ?, ?)",
                      node_id, size - 1, record)
