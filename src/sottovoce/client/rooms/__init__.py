"""Rooms in the client SDK: one MLS group per room, the server as delivery service
(docs/architecture.md §Rooms). ``client.rooms`` is a :class:`RoomManager`.

One file per job, each opening with its own diagram:

    manager.py     the RoomManager: the SDK's rooms API; composes the parts below
    membership.py  commits: create, invite, remove, update, the join token; commits
                   and notices of the other members (declared roster checked)
    joins.py       entering a room: by Welcome, by token, by request
    tree_blob.py   a Welcome too large for a frame: its ratchet tree through the blob store
    messages.py    the room message path: send (padded), receive, stale-epoch re-encrypt
    sync.py        frames in serverSeq order: gap detection, room.sync, holding frames
    recovery.py    rejoining a room after a commit this device could not follow
    audit.py       the room's audit trail: entries signed here, the chain verified
    keypackages.py our KeyPackages (uploaded) and theirs (claimed, checked)
    keys.py        SFrame media keys from the room's MLS exporter
    tokens.py      join tokens as members keep them (sealed, resolved as PSKs)
    book.py        the rooms in memory and in the store, and one batch's bookkeeping
    model.py       Room, RoomFrame and the names they share

The local room name is a label kept sealed in the local store; the server only
ever sees the room id (hex of the MLS group id). Every change to a group is
written in the same transaction as the messages or epoch it produced.
"""

from sottovoce.client.rooms.manager import RoomManager
from sottovoce.client.rooms.model import (
    MEDIA_SUITE,
    ROOM_PREFIX,
    SUITE,
    CommitResult,
    Room,
    RoomFrame,
    SyncedMark,
    UnverifiedMember,
    device_of,
    identity_of,
    is_room_id,
    room_id_of,
)
from sottovoce.client.rooms.tokens import new_token

__all__ = [
    "MEDIA_SUITE",
    "ROOM_PREFIX",
    "SUITE",
    "CommitResult",
    "Room",
    "RoomFrame",
    "RoomManager",
    "SyncedMark",
    "UnverifiedMember",
    "device_of",
    "identity_of",
    "is_room_id",
    "new_token",
    "room_id_of",
]
