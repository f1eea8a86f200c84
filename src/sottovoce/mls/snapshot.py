"""A member's whole group state as a plain value: what :meth:`Group.snapshot` returns,
what :mod:`sottovoce.mls.state` turns into bytes and back, and what
:meth:`Group.restore` continues from.

A snapshot is detached from the live group: the secret trees (the only parts of
a member's state that move in place, §9) are copied into
:class:`~sottovoce.mls.secret_tree.SecretTreeSnapshot` values, and everything else
is immutable already. It holds private keys and epoch secrets: treat it like
the state bytes (its ``repr`` shows none of them).
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite
from sottovoce.mls.common import GroupContext
from sottovoce.mls.config import GroupConfig
from sottovoce.mls.epoch import Epoch, StagedCommit
from sottovoce.mls.messages import ReInit
from sottovoce.mls.proposals import QueuedProposal
from sottovoce.mls.secret_tree import SecretTreeSnapshot
from sottovoce.mls.tree import RatchetTree
from sottovoce.secret import Secret

__all__ = ["GroupSnapshot", "PastEpochSnapshot"]


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PastEpochSnapshot:
    """A past epoch kept for late application messages (its number is ``context.epoch``)."""

    context: GroupContext
    tree: RatchetTree
    sender_data_secret: Secret
    secret_tree: SecretTreeSnapshot


@dataclass(frozen=True, slots=True, kw_only=True, eq=False, repr=False)
class GroupSnapshot:
    """Every field a member's group state persists."""

    suite: CipherSuite
    #: The group's policy; its ``psk_lookup`` (a callable) is not saved by ``state``.
    config: GroupConfig
    signing_key: SigningKey
    epoch: Epoch
    secret_tree: SecretTreeSnapshot
    #: ``(ProposalRef, proposal)`` cached in this epoch, in arrival order.
    proposals: tuple[tuple[bytes, QueuedProposal], ...]
    #: ``(public, private)`` encryption keys of our own pending Updates.
    own_update_keys: tuple[tuple[bytes, Secret], ...]
    #: Oldest first.
    past: tuple[PastEpochSnapshot, ...]
    #: ``(epoch, resumption_psk)``, oldest first; the last is the current epoch's.
    resumption_psks: tuple[tuple[int, Secret], ...]
    reinit: ReInit | None
    removed: bool
    active: bool
    #: Our own commit sent but not merged yet (its next epoch included).
    pending_commit: StagedCommit | None

    def __repr__(self) -> str:
        return (
            f"GroupSnapshot(epoch={self.epoch.context.epoch}, "
            f"leaf={self.epoch.private.leaf_index}, active={self.active})"
        )
