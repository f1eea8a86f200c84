"""Epochs (RFC 9420 §8, §12.4.2): the trusted state of one, what is kept of a past
one, and a validated commit that starts the next.

::

    Epoch n (trusted) ──commit created or received, checked on copies──► StagedCommit
        context, tree, our private keys,               adds/removes/updates/psks/…
        epoch secrets, transcript hashes               + Epoch n+1 (or None: we are removed)
          │                                                        │
          └── kept as PastEpoch (late application data) ◄── merge ─┘

An :class:`Epoch` is never changed in place; a commit builds the next one with
:func:`next_epoch`, whether we created the commit (our confirmation tag) or
received it (theirs, verified).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite
from sottovoce.mls.common import Extension, ExtensionType, GroupContext
from sottovoce.mls.framing import Sender
from sottovoce.mls.key_schedule import EpochSecrets, PreSharedKeyID, start_epoch
from sottovoce.mls.messages import Credential, ExternalPub, GroupInfo, LeafNode, ReInit
from sottovoce.mls.proposals import QueuedProposal
from sottovoce.mls.secret_tree import PendingKey, SecretTree
from sottovoce.mls.transcript import (
    confirmation_tag,
    interim_transcript_hash,
    verify_confirmation_tag,
)
from sottovoce.mls.tree import RatchetTree
from sottovoce.mls.treekem import TreeKemPrivate
from sottovoce.readonly import ReadOnly
from sottovoce.secret import Secret

__all__ = ["Epoch", "Member", "PastEpoch", "StagedCommit", "next_epoch"]


@dataclass(frozen=True, slots=True)
class Member:
    """A member of the group: its leaf index and leaf node."""

    index: int
    leaf: LeafNode

    credential = ReadOnly[Credential]("leaf.credential")
    signature_key = ReadOnly[bytes]("leaf.signature_key")
    encryption_key = ReadOnly[bytes]("leaf.encryption_key")


@dataclass(frozen=True, slots=True)
class Epoch:
    """The trusted state of one epoch; never changed in place."""

    context: GroupContext
    tree: RatchetTree
    private: TreeKemPrivate
    secrets: EpochSecrets
    interim_transcript_hash: bytes
    confirmation_tag: bytes
    #: ``context.encode()``, which every handshake message of the epoch needs.
    context_bytes: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "context_bytes", self.context.encode())

    @classmethod
    def confirmed(
        cls,
        suite: CipherSuite,
        *,
        context: GroupContext,
        tree: RatchetTree,
        private: TreeKemPrivate,
        secrets: EpochSecrets,
        confirmation_tag: bytes,
    ) -> Epoch:
        """The epoch whose commit (or GroupInfo) carried ``confirmation_tag``: the
        interim transcript hash follows from it and the confirmed one (§8.2)."""
        return cls(
            context=context,
            tree=tree,
            private=private,
            secrets=secrets,
            interim_transcript_hash=interim_transcript_hash(
                suite, context.confirmed_transcript_hash, confirmation_tag
            ),
            confirmation_tag=confirmation_tag,
        )

    @property
    def own_index(self) -> int:
        return self.private.leaf_index

    def member(self, index: int) -> Member | None:
        """The member at leaf ``index`` (``None`` for a blank or out-of-range leaf)."""
        if not 0 <= index < self.tree.n_leaves:
            return None
        leaf = self.tree.leaf(index)
        return None if leaf is None else Member(index, leaf)

    def group_info(
        self,
        signing_key: SigningKey,
        *,
        with_ratchet_tree: bool,
        with_external_pub: bool,
        extensions: Sequence[Extension] = (),
    ) -> GroupInfo:
        """This epoch's GroupInfo (§12.4.3), signed by us (our leaf is the ``signer``)."""
        exts = list(extensions)
        if with_ratchet_tree:
            exts.append(self.tree.to_extension())
        if with_external_pub:
            exts.append(
                Extension(
                    extension_type=ExtensionType.EXTERNAL_PUB,
                    extension_data=ExternalPub(external_pub=self.secrets.external_pub()).encode(),
                )
            )
        return GroupInfo(
            group_context=self.context,
            extensions=tuple(exts),
            confirmation_tag=self.confirmation_tag,
            signer=self.private.leaf_index,
        ).signed(signing_key)


def next_epoch(
    suite: CipherSuite,
    *,
    provisional: GroupContext,
    tree: RatchetTree,
    private: TreeKemPrivate,
    confirmed_transcript_hash: bytes,
    init_secret: Secret,
    commit_secret: Secret,
    psk_secret: Secret,
    received_tag: bytes | None = None,
) -> tuple[Epoch, Secret]:
    """The epoch a commit starts (§8, §12.4.1 steps 8–11, §12.4.2).

    ``provisional`` is the new GroupContext before the tree hash and confirmed
    transcript hash are known; ``tree`` and ``private`` are the staged ones. The
    confirmation tag is computed (a commit we create) or, given as
    ``received_tag``, verified (:class:`InvalidConfirmationTag`). Returns the epoch
    and its joiner_secret, which a Welcome needs.
    """
    context = replace(
        provisional, tree_hash=tree.tree_hash(), confirmed_transcript_hash=confirmed_transcript_hash
    )
    transition = start_epoch(
        suite,
        init_secret=init_secret,
        commit_secret=commit_secret,
        psk_secret=psk_secret,
        group_context=context,
    )
    key = transition.epoch.confirmation_key
    if received_tag is None:
        tag = confirmation_tag(suite, key, confirmed_transcript_hash)
    else:
        verify_confirmation_tag(suite, key, confirmed_transcript_hash, received_tag)
        tag = received_tag
    epoch = Epoch.confirmed(
        suite, context=context, tree=tree, private=private, secrets=transition.epoch,
        confirmation_tag=tag,
    )
    return epoch, transition.joiner_secret


@dataclass(slots=True)
class PastEpoch:
    """What is kept of a past epoch to read late application messages."""

    context: GroupContext
    tree: RatchetTree
    sender_data_secret: Secret
    secret_tree: SecretTree


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class StagedCommit:
    """A validated commit, not yet applied: inspect it, then merge it (or drop it).

    ``adds`` carry the new members' leaf indices in the *new* tree; ``removes``
    and ``updates`` the leaves as they were. If ``self_removed`` the commit
    removes us: merging it makes the group inactive, and no new-epoch state
    exists (``group_context`` and ``epoch_authenticator`` are ``None``).
    """

    group_id: bytes
    #: The epoch this commit starts.
    epoch: int
    sender: Sender
    #: Leaf index of the committer in the new tree (for an external commit, the joiner's).
    committer: int
    proposals: tuple[QueuedProposal, ...]
    adds: tuple[Member, ...]
    removes: tuple[Member, ...]
    updates: tuple[Member, ...]
    psks: tuple[PreSharedKeyID, ...]
    #: The new GroupContext extensions if a GroupContextExtensions was committed.
    new_extensions: tuple[Extension, ...] | None
    reinit: ReInit | None
    external: bool
    has_path: bool
    self_removed: bool
    authenticated_data: bytes = b""
    #: The group state that staged it: only that one may merge it.
    _owner: object = field(repr=False)
    _base_epoch: int = field(repr=False)
    _next: Epoch | None = field(repr=False)
    #: A received PrivateMessage's handshake key, consumed by the merge.
    _pending_key: PendingKey | None = field(repr=False, default=None)

    @property
    def group_context(self) -> GroupContext | None:
        return None if self._next is None else self._next.context

    @property
    def epoch_authenticator(self) -> Secret | None:
        return None if self._next is None else self._next.secrets.epoch_authenticator

    def member(self, index: int) -> Member | None:
        """The member at leaf ``index`` in the epoch this commit starts (``None`` for a
        blank or out-of-range leaf, or when the commit removes us and no new epoch exists).

        For an external commit, ``member(committer)`` is the joiner's new leaf.
        """
        return None if self._next is None else self._next.member(index)
