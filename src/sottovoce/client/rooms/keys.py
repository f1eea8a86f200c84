"""Media keys of a room: SFrame (RFC 9605) base keys per epoch, sender and track,
from the room's MLS exporter (:mod:`sottovoce.sframe.mls_keys` documents the
derivation and the KID layout).

A member removed at epoch n+1 lacks that epoch's exporter secret and derives no
later key; the manager keeps the previous epoch's receive keys for a short grace.
"""

from __future__ import annotations

from sottovoce.mls.group import Group
from sottovoce.sframe.mls_keys import MediaKeyManager


def media_keys(group: Group, keys: MediaKeyManager | None, suite: int) -> MediaKeyManager:
    """``keys`` (or a new manager) moved to the group's current epoch."""
    if keys is None:
        keys = MediaKeyManager(suite, group.own_leaf_index)
    if keys.current_epoch != group.epoch:
        keys.begin_epoch(group.epoch, group.export_secret, [m.index for m in group.members()])
    return keys
