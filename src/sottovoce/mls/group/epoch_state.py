"""One member's whole state of a group, as one value.

The :class:`~sottovoce.mls.group.Group` façade holds exactly one
:class:`EpochState`. Every operation of this package takes it and returns a new
one (``dataclasses.replace``), or a :class:`~sottovoce.mls.epoch.StagedCommit`
to merge later; the façade swaps its value only once an operation returned, so
a failed one leaves nothing half-applied.

Two parts move in place, by design: the current and past epochs' secret trees
(§9 ratchets). A receive changes them only through ``PendingKey.consume()``
after the message authenticated; a send takes its key with
``SecretTree.next_key``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite
from sottovoce.errors import UsageError
from sottovoce.mls.config import GroupConfig
from sottovoce.mls.epoch import Epoch, Member, PastEpoch, StagedCommit
from sottovoce.mls.errors import GroupInactive
from sottovoce.mls.framing import Content, FramedContent, Sender
from sottovoce.mls.group.keypackage import check_signing_key
from sottovoce.mls.key_schedule import PreSharedKeyID, PSKType
from sottovoce.mls.messages import LeafNode, ReInit
from sottovoce.mls.proposals import AppliedProposals, QueuedProposal
from sottovoce.mls.secret_tree import PendingKey, SecretTree
from sottovoce.mls.snapshot import GroupSnapshot, PastEpochSnapshot
from sottovoce.readonly import ReadOnly
from sottovoce.secret import Secret

__all__ = ["EpochState"]


@dataclass(frozen=True, slots=True, kw_only=True, eq=False, repr=False)
class EpochState:
    """Everything one member holds of a group (see the module docstring)."""

    suite: CipherSuite
    signing_key: SigningKey
    config: GroupConfig
    epoch: Epoch
    #: The current epoch's §9 secret tree (a ratchet: consumed in place).
    secret_tree: SecretTree
    #: This epoch's proposals by ProposalRef, in arrival order (§12.1).
    proposals: Mapping[bytes, QueuedProposal]
    #: Private keys of our own pending Updates, by public key.
    own_update_keys: Mapping[bytes, Secret]
    #: Past epochs kept for late application messages, oldest first.
    past: tuple[PastEpoch, ...]
    #: resumption_psk by epoch, oldest first (§8.6).
    resumption_psks: Mapping[int, Secret]
    pending_commit: StagedCommit | None
    #: The committed ReInit this group is waiting to be replaced by (§11.2).
    reinit: ReInit | None
    removed: bool
    active: bool
    #: Stands for the Group instance, so a StagedCommit merges only where it was staged.
    token: object = field(default_factory=object)

    @classmethod
    def start(
        cls, *, suite: CipherSuite, signing_key: SigningKey, epoch: Epoch, config: GroupConfig
    ) -> EpochState:
        """A member that has just arrived in ``epoch`` (created, joined or resumed)."""
        check_signing_key(suite, signing_key)
        return cls(
            suite=suite,
            signing_key=signing_key,
            config=config,
            epoch=epoch,
            secret_tree=epoch.secrets.secret_tree(epoch.tree.n_leaves),
            proposals={},
            own_update_keys={},
            past=(),
            resumption_psks={epoch.context.epoch: epoch.secrets.resumption_psk},
            pending_commit=None,
            reinit=None,
            removed=False,
            active=True,
        )

    def __repr__(self) -> str:
        return f"EpochState(epoch={self.number}, leaf={self.own_index}, active={self.active})"

    # --- reading -----------------------------------------------------------------------

    group_id = ReadOnly[bytes]("epoch.context.group_id")
    number = ReadOnly[int]("epoch.context.epoch", "The current epoch's number.")
    own_index = ReadOnly[int]("epoch.private.leaf_index")

    @property
    def own_leaf(self) -> LeafNode:
        leaf = self.epoch.tree.leaf(self.own_index)
        if leaf is None:  # pragma: no cover - a removed member keeps its old tree
            raise UsageError("we are not in the tree")
        return leaf

    def find_psk(self, psk_id: PreSharedKeyID) -> Secret | None:
        """A :data:`~sottovoce.mls.config.PskLookup` for this group's resumption PSKs."""
        if psk_id.psktype != PSKType.RESUMPTION or psk_id.psk_group_id != self.group_id:
            return None
        return self.resumption_psks.get(psk_id.psk_epoch)

    def framed(self, content: Content, authenticated_data: bytes) -> FramedContent:
        """``content`` from us, for this group's current epoch (§6)."""
        return FramedContent(
            group_id=self.group_id,
            epoch=self.number,
            sender=Sender.member(self.own_index),
            authenticated_data=authenticated_data,
            content=content,
        )

    def require_active(self) -> None:
        if not self.active:
            raise GroupInactive("the group is inactive (removed, or reinitialized)")

    def check_staged(self, staged: StagedCommit) -> None:
        """``staged`` was staged by this member for its current epoch."""
        if staged._owner is not self.token or staged._base_epoch != self.number:
            raise UsageError("this staged commit is not for this group's current epoch")

    def stage(
        self,
        content: FramedContent,
        applied: AppliedProposals,
        nxt: Epoch | None,
        *,
        committer: int,
        has_path: bool,
        self_removed: bool,
        pending_key: PendingKey | None,
    ) -> StagedCommit:
        """The StagedCommit of a checked commit that leads from this epoch to ``nxt``."""
        return StagedCommit(
            group_id=self.group_id,
            epoch=self.number + 1,
            sender=content.sender,
            committer=committer,
            proposals=applied.proposals,
            adds=tuple(Member(i, kp.leaf_node) for i, kp in applied.adds),
            removes=tuple(Member(i, leaf) for i, leaf in applied.removes),
            updates=tuple(Member(i, leaf) for i, leaf in applied.updates),
            psks=applied.psks,
            new_extensions=applied.extensions if applied.extensions_changed else None,
            reinit=applied.reinit,
            external=applied.external_init is not None,
            has_path=has_path,
            self_removed=self_removed,
            authenticated_data=content.authenticated_data,
            _owner=self.token,
            _base_epoch=self.number,
            _next=nxt,
            _pending_key=pending_key,
        )

    # --- persistence -------------------------------------------------------------------

    def snapshot(self) -> GroupSnapshot:
        return GroupSnapshot(
            suite=self.suite,
            config=self.config,
            signing_key=self.signing_key,
            epoch=self.epoch,
            secret_tree=self.secret_tree.snapshot(),
            proposals=tuple(self.proposals.items()),
            own_update_keys=tuple(self.own_update_keys.items()),
            past=tuple(
                PastEpochSnapshot(
                    context=p.context,
                    tree=p.tree,
                    sender_data_secret=p.sender_data_secret,
                    secret_tree=p.secret_tree.snapshot(),
                )
                for p in self.past
            ),
            resumption_psks=tuple(self.resumption_psks.items()),
            reinit=self.reinit,
            removed=self.removed,
            active=self.active,
            pending_commit=self.pending_commit,
        )

    @classmethod
    def restore(cls, snap: GroupSnapshot, config: GroupConfig) -> EpochState:
        """The state ``snap`` describes, under ``config``, as a new instance: staged
        commits of any other instance do not merge into it."""
        suite = snap.suite
        state = cls(
            suite=suite,
            signing_key=snap.signing_key,
            config=config,
            epoch=snap.epoch,
            secret_tree=SecretTree.restore(suite, snap.secret_tree),
            proposals=dict(snap.proposals),
            own_update_keys=dict(snap.own_update_keys),
            past=tuple(
                PastEpoch(
                    context=p.context,
                    tree=p.tree,
                    sender_data_secret=p.sender_data_secret,
                    secret_tree=SecretTree.restore(suite, p.secret_tree),
                )
                for p in snap.past
            ),
            resumption_psks=dict(snap.resumption_psks),
            pending_commit=None,
            reinit=snap.reinit,
            removed=snap.removed,
            active=snap.active,
        )
        if snap.pending_commit is None:
            return state
        return replace(state, pending_commit=replace(snap.pending_commit, _owner=state.token))
