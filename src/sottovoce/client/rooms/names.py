"""A room's shared name and topic on this device (the sealed field of the room profile,
protocol/room_names.py): which name key opens them, where it comes from, and the
control message that hands it to a joiner.

    room create ──► a random name key seals the creator's name for the room
    a commit that changes the sealed names ──► before merging it, every member (its
        committer too) derives the name key from the exporter of the commit's epoch
    a member added by a Welcome, or joining by token (an external commit) ──► a
        member sends the current name key as a room control message (its adder; for
        an external join, the first member to get to it) ──► the joiner keeps it
        if it opens the room's current names
    the names change ──► a device whose label was the old shared name (or the room
        id) follows: its label becomes the new name, so ROOM arguments keep working

A removed member stops at its removal: it derives no later epoch's exporter and no
member sends it a key, so it never reads a later name or topic. The key is sealed in
the local store like every secret; never logged, never in a repr.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from sottovoce.client.room_notice import free_label
from sottovoce.client.rooms.model import Room
from sottovoce.client.rooms.rules import profile
from sottovoce.client.store import Store
from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError, DecryptionError
from sottovoce.mls.epoch import StagedCommit
from sottovoce.mls.group import Group
from sottovoce.protocol.room_names import (
    KEY_ID_BYTES,
    NAME_KEY_BYTES,
    NAME_KEY_LABEL,
    NONCE_BYTES,
    NameKey,
    RoomNames,
)
from sottovoce.protocol.room_names_seal import open_names, seal_names
from sottovoce.protocol.room_rules import profile_of
from sottovoce.secret import Secret

#: Room control message kind (the "system" payloads of client/rooms/tokens.py, kind 1
#: being the join token): ``uint8 2; opaque name_key<V>`` (key id ‖ key).
CONTROL_NAME_KEY = 2
#: What the control row says (it is kept beside the room, out of its history).
NAME_KEY_SHARED_TEXT = "(shared the room's name key)"


def _record(room_id: str) -> str:
    return f"room-name-key:{room_id}"


def load_key(store: Store, room_id: str) -> NameKey | None:
    raw = store.get_secret(_record(room_id))
    if not raw:
        return None
    try:
        return NameKey.decode(raw)
    except DecodeError:
        return None  # a damaged record: the room shows this device's label


def keep_key(store: Store, room: Room, key: NameKey) -> None:
    """The room's current name key, sealed in the store (call inside a transaction)."""
    store.put_secret(_record(room.room_id), key.encode())
    room.name_key = key


def random_key() -> NameKey:
    """A new room's first name key (no epoch exists to export one from yet)."""
    return NameKey(secrets.token_bytes(KEY_ID_BYTES), Secret(secrets.token_bytes(NAME_KEY_BYTES)))


def derived_key(group: Group, key_id: bytes) -> NameKey:
    """The name key ``key_id`` names in ``group``'s current epoch (MLS-Exporter)."""
    return NameKey(key_id, group.export_secret(NAME_KEY_LABEL, key_id, NAME_KEY_BYTES))


def seal(group_id: bytes, names: RoomNames, key: NameKey) -> bytes:
    return seal_names(
        names, key.key, key_id=key.key_id, nonce=secrets.token_bytes(NONCE_BYTES),
        group_id=group_id,
    )


def shared_names(room: Room) -> RoomNames | None:
    """The room's shared name and topic, when its profile seals some and this device
    holds their key (``None`` otherwise: a room from before shared names, a joiner not
    told the key yet, or names that do not open)."""
    p, key, group = profile(room), room.name_key, room.group
    sealed = None if p is None else p.names
    if sealed is None or key is None or group is None or key.key_id != sealed.key_id:
        return None
    try:
        return open_names(sealed, key.key, group_id=group.group_id)
    except (DecryptionError, DecodeError):
        return None


def key_of_commit(group: Group, staged: StagedCommit) -> NameKey | None:
    """Before ``staged`` is merged into ``group`` (still in the commit's epoch): the
    name key of the names it seals, when it changes them (``None`` otherwise)."""
    if staged.new_extensions is None:
        return None
    try:
        after = profile_of(staged.new_extensions)
        before = profile_of(group.group_context.extensions)
    except DecodeError:
        return None
    if after is None or not after.sealed or (before is not None and before.sealed == after.sealed):
        return None
    names = after.names
    return None if names is None else derived_key(group, names.key_id)


def follow(store: Store, room: Room, old: RoomNames | None, taken: Callable[[str], bool]) -> bool:
    """The names changed from ``old``: a label that was the old shared name, or the room
    id, becomes the new name (the first free form of it). True when it changed."""
    new = shared_names(room)
    if new is None or room.label == new.name:
        return False
    if room.label != room.room_id and (old is None or room.label != old.name):
        return False  # a name of this device's own choosing stays
    label = free_label(new.name, taken)
    room.label = label
    store.set_room_label(room.room_id, label)
    return True


def name_key_control(key: NameKey) -> bytes:
    w = Writer()
    w.u8(CONTROL_NAME_KEY)
    w.opaque_v(key.encode())
    return w.getvalue()


def is_name_key_control(body: bytes) -> bool:
    return body[:1] == bytes([CONTROL_NAME_KEY])


def read_name_key_control(body: bytes) -> NameKey:
    """The name key a control message shares; ``DecodeError`` for anything else."""

    def read(r: Reader) -> NameKey:
        if r.u8() != CONTROL_NAME_KEY:
            raise DecodeError("not a room name key")
        return NameKey.decode(r.opaque_v())

    return decode(read, body)


def take_shared_key(store: Store, room: Room, key: NameKey) -> bool:
    """A member sent us a name key: kept when it opens the room's current names (a
    stale or wrong one is ignored). True when it was kept."""
    if room.name_key is not None and room.name_key.key_id == key.key_id:
        return False
    p = profile(room)
    sealed = None if p is None else p.names
    if sealed is None or sealed.key_id != key.key_id or room.group is None:
        return False
    try:
        open_names(sealed, key.key, group_id=room.group.group_id)
    except (DecryptionError, DecodeError):
        return False
    keep_key(store, room, key)
    return True


def display_name(room: Room) -> str:
    """What a room is called: its shared name, else this device's label for it."""
    names = shared_names(room)
    return room.label if names is None else names.name


def topic(room: Room) -> str:
    names = shared_names(room)
    return "" if names is None else names.topic
