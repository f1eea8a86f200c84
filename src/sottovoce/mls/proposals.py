"""Proposals: KeyPackage validation (RFC 9420 §10.1), single-proposal checks
(§12.1), proposal-list validation (§12.2) and application (§12.3).

::

    proposal from the wire ──check_proposal()──► cached (by ProposalRef)
                                                      │
    Commit.proposals (by value / by reference) ───────┤
                                                      ▼
                          apply_proposal_list(tree copy, context, items)
                            1. list rules (§12.2, regular or external commit)
                            2. GroupContextExtensions -> new extensions
                            3. Updates, 4. Removes, 5. Adds (in order)
                            6. PSK ids, ExternalInit, ReInit noted
                            7. every leaf supports the new extensions
                                                      │
                                                      ▼
                                             AppliedProposals

The tree passed to :func:`apply_proposal_list` is changed in place: callers
hand in a copy (check, then commit) and keep it only if the whole commit checks out.

The errors of the group layer live in :mod:`~sottovoce.mls.errors` (the public view
raises them too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from sottovoce.crypto.suite import CipherSuite, cipher_suite
from sottovoce.errors import DecodeError, UnsupportedError
from sottovoce.mls.common import (
    Extension,
    ExtensionType,
    GroupContext,
    ProposalType,
    ProtocolVersion,
    SenderType,
)
from sottovoce.mls.errors import (
    InvalidKeyPackage,
    InvalidProposal,
    InvalidProposalList,
    UnsupportedCipherSuite,
)
from sottovoce.mls.framing import Sender
from sottovoce.mls.key_schedule import PreSharedKeyID, PSKType, ResumptionPSKUsage
from sottovoce.mls.messages import (
    Add,
    ExternalInit,
    ExternalSenders,
    GroupContextExtensions,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    PreSharedKey,
    Proposal,
    ReInit,
    Remove,
    RequiredCapabilities,
    Update,
    find_extension,
)
from sottovoce.mls.public import DEFAULT_EXTENSIONS, DEFAULT_PROPOSALS, check_key_package
from sottovoce.mls.tree import InvalidLeafIndex, RatchetTree, check_leaf_node

__all__ = [
    "AppliedProposals",
    "InvalidKeyPackage",
    "QueuedProposal",
    "apply_proposal_list",
    "check_group_context_extensions",
    "check_proposal",
    "path_required",
    "required_capabilities",
    "validate_key_package",
]


# --- helpers --------------------------------------------------------------------------

_P = TypeVar("_P", Add, Update, Remove, PreSharedKey, ReInit, ExternalInit, GroupContextExtensions)


# RFC 9420 §12.1.8: what an `external` sender may propose.
_EXTERNAL_SENDER_TYPES = frozenset(
    {
        ProposalType.ADD,
        ProposalType.REMOVE,
        ProposalType.PSK,
        ProposalType.REINIT,
        ProposalType.GROUP_CONTEXT_EXTENSIONS,
    }
)
# RFC 9420 §12.4: proposal types that require an UpdatePath.
_PATH_REQUIRED = frozenset(
    {
        ProposalType.UPDATE,
        ProposalType.REMOVE,
        ProposalType.EXTERNAL_INIT,
        ProposalType.GROUP_CONTEXT_EXTENSIONS,
    }
)


def required_capabilities(extensions: Sequence[Extension]) -> RequiredCapabilities | None:
    """The decoded ``required_capabilities`` GroupContext extension, if present (§11.1)."""
    ext = find_extension(extensions, ExtensionType.REQUIRED_CAPABILITIES)
    if ext is None:
        return None
    try:
        return RequiredCapabilities.decode(ext.extension_data)
    except DecodeError:
        raise InvalidProposal("required_capabilities extension does not decode") from None


def check_group_context_extensions(
    extensions: Sequence[Extension], leaves: Sequence[LeafNode]
) -> None:
    """Every ``leaves`` entry supports ``extensions`` as GroupContext extensions.

    RFC 9420 §11.1 and §12.1.7: the required capabilities must be listed by
    every member; §12.4.3 / §13.4: a non-default GroupContext extension must be
    supported (listed in capabilities) by every member. Known payloads must
    decode. Raises :class:`InvalidProposal`.
    """
    rc = required_capabilities(extensions)
    ext_senders = find_extension(extensions, ExtensionType.EXTERNAL_SENDERS)
    if ext_senders is not None:
        try:
            ExternalSenders.decode(ext_senders.extension_data)
        except DecodeError:
            raise InvalidProposal("external_senders extension does not decode") from None
    if find_extension(extensions, ExtensionType.RATCHET_TREE) is not None:
        raise InvalidProposal("ratchet_tree is not a GroupContext extension")
    custom = [e.extension_type for e in extensions if e.extension_type not in DEFAULT_EXTENSIONS]
    for leaf in leaves:
        caps = leaf.capabilities
        if any(t not in caps.extensions for t in custom):
            raise InvalidProposal("a member does not support a group context extension")
        if rc is not None:
            if any(
                e not in DEFAULT_EXTENSIONS and e not in caps.extensions
                for e in rc.extension_types
            ):
                raise InvalidProposal("a member does not support a required extension")
            if any(
                p not in DEFAULT_PROPOSALS and p not in caps.proposals for p in rc.proposal_types
            ):
                raise InvalidProposal("a member does not support a required proposal type")
            if any(c not in caps.credentials for c in rc.credential_types):
                raise InvalidProposal("a member does not support a required credential type")


def path_required(proposals: Sequence[Proposal]) -> bool:
    """RFC 9420 §12.4: an empty commit, or one covering a path-required type."""
    return not proposals or any(p.proposal_type in _PATH_REQUIRED for p in proposals)


# --- KeyPackage validation (§10.1) ---------------------------------------------------


def validate_key_package(
    key_package: KeyPackage,
    *,
    cipher_suite_id: int,
    version: int = ProtocolVersion.MLS10,
    required: RequiredCapabilities | None = None,
    now_ms: int | None = None,
) -> CipherSuite:
    """RFC 9420 §10.1: is ``key_package`` usable to add its owner to a group?

    Checks the version and cipher suite against the group's, that the
    leaf node is a valid ``key_package`` leaf (§7.3: signature, credential in
    its own capabilities, extensions listed, ``required`` capabilities,
    lifetime covering ``now_ms`` when given), that the leaf advertises the
    version and suite, the KeyPackage signature, that ``init_key`` differs from
    the leaf's ``encryption_key``, and that the KeyPackage's own extensions are
    listed in its capabilities. Returns the suite.

    Raises :class:`UnsupportedCipherSuite` for a suite we do not implement or
    that differs from the group's, :class:`InvalidKeyPackage` or
    :class:`~sottovoce.mls.errors.InvalidSignature` otherwise. The checks are the
    public view's (:func:`sottovoce.mls.public.check_key_package`); this returns the
    full suite for the group layer.
    """
    check_key_package(
        key_package, cipher_suite_id=cipher_suite_id, version=version, required=required,
        now_ms=now_ms,
    )
    try:
        return cipher_suite(key_package.cipher_suite)
    except UnsupportedError:  # pragma: no cover - the public table and crypto.suite agree
        raise UnsupportedCipherSuite("KeyPackage cipher suite is not supported") from None


# --- proposals as received --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedProposal:
    """A proposal with who sent it and its ProposalRef (``None`` when sent by value)."""

    proposal: Proposal
    sender: Sender
    ref: bytes | None = None

    @property
    def proposal_type(self) -> ProposalType:
        return self.proposal.proposal_type


def _check_sender_may_propose(proposal: Proposal, sender: Sender, *, in_commit: bool) -> None:
    ptype = proposal.proposal_type
    stype = sender.sender_type
    if stype == SenderType.MEMBER:
        # ExternalInit only ever appears by value in an external commit (§12.1.6).
        if ptype == ProposalType.EXTERNAL_INIT:
            raise InvalidProposal("ExternalInit from a member")
        return
    if stype == SenderType.EXTERNAL:
        if ptype not in _EXTERNAL_SENDER_TYPES:
            # §12.1.8: MUST be rejected as malformed.
            raise InvalidProposal("proposal type not allowed from an external sender")
        return
    if stype == SenderType.NEW_MEMBER_PROPOSAL:
        if ptype != ProposalType.ADD:
            raise InvalidProposal("a new_member_proposal sender may only propose Add")
        return
    if stype == SenderType.NEW_MEMBER_COMMIT and in_commit:
        if ptype not in (ProposalType.EXTERNAL_INIT, ProposalType.REMOVE, ProposalType.PSK):
            raise InvalidProposalList("external commit carries a forbidden proposal type")
        return
    raise InvalidProposal("sender type cannot send this proposal")


def _check_psk_id(
    suite: CipherSuite, psk: PreSharedKeyID, allowed_usage: ResumptionPSKUsage | None
) -> None:
    # RFC 9420 §12.1.4.
    if len(psk.psk_nonce) != suite.nh:
        raise InvalidProposal("psk_nonce is not Nh bytes")
    if psk.psktype == PSKType.RESUMPTION and psk.usage in (
        ResumptionPSKUsage.REINIT,
        ResumptionPSKUsage.BRANCH,
    ) and psk.usage != allowed_usage:
        raise InvalidProposal("reinit/branch resumption PSKs are only for reinit/branch")


def _check_update_leaf(
    suite: CipherSuite,
    tree: RatchetTree,
    group_id: bytes,
    index: int,
    leaf: LeafNode,
    required: RequiredCapabilities | None,
    now_ms: int | None,
) -> None:
    # RFC 9420 §12.1.2 with §7.3: source update, fresh encryption key, valid leaf.
    current = tree.leaf(index) if 0 <= index < tree.n_leaves else None
    if current is None:
        raise InvalidLeafIndex("Update sender is not a member")
    if leaf.leaf_node_source != LeafNodeSource.UPDATE:
        raise InvalidProposal("Update leaf node source is not update")
    if leaf.encryption_key == current.encryption_key:
        raise InvalidProposal("Update does not change the encryption key")
    check_leaf_node(
        suite, leaf, group_id=group_id, leaf_index=index,
        required_capabilities=required, now_ms=now_ms,
    )
    tree.check_leaf_fits(leaf, replacing=index)


def check_proposal(
    suite: CipherSuite,
    tree: RatchetTree,
    context: GroupContext,
    proposal: Proposal,
    sender: Sender,
    *,
    now_ms: int | None = None,
) -> None:
    """Check one proposal as received outside a commit (§12.1), against the current state.

    Rules that depend on the rest of a commit (duplicates, a Remove that frees
    an Add's identity, key uniqueness after the other changes) are checked
    again by :func:`apply_proposal_list`.
    """
    _check_sender_may_propose(proposal, sender, in_commit=False)
    required = required_capabilities(context.extensions)
    if isinstance(proposal, Add):
        validate_key_package(
            proposal.key_package,
            cipher_suite_id=context.cipher_suite,
            version=context.version,
            required=required,
            now_ms=now_ms,
        )
    elif isinstance(proposal, Update):
        if sender.sender_type != SenderType.MEMBER:
            raise InvalidProposal("Update from a non-member")
        _check_update_leaf(
            suite, tree, context.group_id, sender.index, proposal.leaf_node, required, now_ms
        )
    elif isinstance(proposal, Remove):
        if not 0 <= proposal.removed < tree.n_leaves or tree.leaf(proposal.removed) is None:
            raise InvalidLeafIndex("Remove names a blank or missing leaf")
    elif isinstance(proposal, PreSharedKey):
        _check_psk_id(suite, proposal.psk, None)
    elif isinstance(proposal, ReInit):
        _check_reinit(proposal, context)
    elif isinstance(proposal, GroupContextExtensions):
        check_group_context_extensions(proposal.extensions, [leaf for _, leaf in tree.leaves()])
    else:  # ExternalInit
        raise InvalidProposal("ExternalInit is only valid inside an external commit")


def _check_reinit(proposal: ReInit, context: GroupContext) -> None:
    # RFC 9420 §12.1.5; and we must be able to follow the new group.
    if proposal.version < context.version:
        raise InvalidProposal("ReInit lowers the protocol version")
    if proposal.version != ProtocolVersion.MLS10:
        raise InvalidProposal("ReInit names an unknown protocol version")
    try:
        cipher_suite(proposal.cipher_suite)
    except UnsupportedError:
        raise InvalidProposal("ReInit names an unsupported cipher suite") from None


# --- proposal lists (§12.2, §12.3) --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedProposals:
    """What a validated proposal list did to the staged tree and GroupContext (§12.3)."""

    proposals: tuple[QueuedProposal, ...]
    #: GroupContext extensions of the new epoch (replaced by a GroupContextExtensions).
    extensions: tuple[Extension, ...]
    extensions_changed: bool
    #: ``(leaf index, LeafNode)`` for each Update, Remove (the removed leaf) and Add.
    updates: tuple[tuple[int, LeafNode], ...]
    removes: tuple[tuple[int, LeafNode], ...]
    adds: tuple[tuple[int, KeyPackage], ...]
    psks: tuple[PreSharedKeyID, ...]
    external_init: ExternalInit | None
    reinit: ReInit | None
    path_required: bool


def apply_proposal_list(
    suite: CipherSuite,
    tree: RatchetTree,
    context: GroupContext,
    items: Sequence[QueuedProposal],
    *,
    committer: int | None,
    now_ms: int | None = None,
    allowed_psk_usage: ResumptionPSKUsage | None = None,
) -> AppliedProposals:
    """Validate ``items`` as one commit's list (§12.2) and apply them to ``tree`` (§12.3).

    ``committer`` is the committing member's leaf index, or ``None`` for an
    external commit (whose joiner leaf is placed later, with the path).
    ``tree`` is changed in place: pass a copy. ``allowed_psk_usage`` admits the
    one resumption usage (reinit or branch) of the commit that creates a
    reinitialized or branched group (§11.2, §11.3).

    Raises :class:`InvalidProposalList`, :class:`InvalidProposal`,
    :class:`InvalidKeyPackage` or a tree error (duplicate key, bad leaf).
    """
    external = committer is None
    by_type: dict[ProposalType, list[QueuedProposal]] = {t: [] for t in ProposalType}

    def of(ptype: ProposalType, cls: type[_P]) -> list[tuple[QueuedProposal, _P]]:
        # The bucket of ``ptype``, each item with its proposal typed as ``cls``.
        out = []
        for item in by_type[ptype]:
            if not isinstance(item.proposal, cls):  # pragma: no cover - bucketed by type
                raise InvalidProposalList("proposal type mismatch")
            out.append((item, item.proposal))
        return out

    for item in items:
        _check_sender_may_propose(item.proposal, item.sender, in_commit=True)
        by_type[item.proposal.proposal_type].append(item)

    # §12.2 list rules, regular or external.
    if external:
        if len(by_type[ProposalType.EXTERNAL_INIT]) != 1:
            raise InvalidProposalList("an external commit needs exactly one ExternalInit")
        if len(by_type[ProposalType.REMOVE]) > 1:
            raise InvalidProposalList("an external commit removes at most one leaf")
        allowed = {ProposalType.EXTERNAL_INIT, ProposalType.REMOVE, ProposalType.PSK}
        if any(by_type[t] for t in ProposalType if t not in allowed):
            raise InvalidProposalList("an external commit carries a forbidden proposal")
    else:
        if by_type[ProposalType.EXTERNAL_INIT]:
            raise InvalidProposalList("ExternalInit in a regular commit")
        if by_type[ProposalType.REINIT] and len(items) != 1:
            raise InvalidProposalList("a ReInit must be committed alone")
    if len(by_type[ProposalType.GROUP_CONTEXT_EXTENSIONS]) > 1:
        raise InvalidProposalList("more than one GroupContextExtensions")

    touched: set[int] = set()
    group_id = context.group_id

    # 1. GroupContextExtensions: the new extensions govern every later check.
    extensions = context.extensions
    gce = of(ProposalType.GROUP_CONTEXT_EXTENSIONS, GroupContextExtensions)
    if gce:
        extensions = gce[0][1].extensions
    required = required_capabilities(extensions)

    # 2. Updates.
    updates: list[tuple[int, LeafNode]] = []
    for item, update in of(ProposalType.UPDATE, Update):
        if item.sender.sender_type != SenderType.MEMBER:
            raise InvalidProposal("Update from a non-member")
        index = item.sender.index
        if index == committer:
            raise InvalidProposalList("the committer's own Update cannot be committed")
        if index in touched:
            raise InvalidProposalList("two Updates/Removes for the same leaf")
        touched.add(index)
        _check_update_leaf(suite, tree, group_id, index, update.leaf_node, required, now_ms)
        tree.update_leaf(index, update.leaf_node)
        updates.append((index, update.leaf_node))

    # 3. Removes.
    removes: list[tuple[int, LeafNode]] = []
    for _, remove in of(ProposalType.REMOVE, Remove):
        index = remove.removed
        if index == committer:
            raise InvalidProposalList("a commit cannot remove its committer")
        if index in touched:
            raise InvalidProposalList("two Updates/Removes for the same leaf")
        touched.add(index)
        removed = tree.leaf(index) if 0 <= index < tree.n_leaves else None
        if removed is None:
            raise InvalidLeafIndex("Remove names a blank or missing leaf")
        tree.remove_leaf(index)
        removes.append((index, removed))

    # 4. Adds, in order: leftmost blank leaf each (§12.1.1).
    adds: list[tuple[int, KeyPackage]] = []
    for _, add in of(ProposalType.ADD, Add):
        kp = add.key_package
        validate_key_package(
            kp,
            cipher_suite_id=context.cipher_suite,
            version=context.version,
            required=required,
            now_ms=now_ms,
        )
        # The same client twice, or a client already in the group (not removed
        # by this list): identical signature keys (§12.2), and §7.3 key
        # uniqueness and credential compatibility against the staged tree.
        tree.check_leaf_fits(kp.leaf_node)
        adds.append((tree.add_leaf(kp.leaf_node), kp))

    # 5. PSKs, in list order (§8.4); 6. ExternalInit; 7. ReInit.
    psks: list[PreSharedKeyID] = []
    seen_psks: set[bytes] = set()
    for _, psk_proposal in of(ProposalType.PSK, PreSharedKey):
        psk = psk_proposal.psk
        _check_psk_id(suite, psk, allowed_psk_usage)
        encoded = psk.encode()
        if encoded in seen_psks:
            raise InvalidProposalList("the same PreSharedKeyID twice")
        seen_psks.add(encoded)
        psks.append(psk)
    external_init = next((ei for _, ei in of(ProposalType.EXTERNAL_INIT, ExternalInit)), None)
    reinit = next((ri for _, ri in of(ProposalType.REINIT, ReInit)), None)
    if reinit is not None:
        _check_reinit(reinit, context)

    if gce or adds:
        # Members after this commit (added ones included, removed ones not)
        # must support the GroupContext extensions (§12.1.7, §11.1).
        if gce:
            check_group_context_extensions(extensions, [leaf for _, leaf in tree.leaves()])
        else:
            check_group_context_extensions(extensions, [kp.leaf_node for _, kp in adds])

    return AppliedProposals(
        proposals=tuple(items),
        extensions=tuple(extensions),
        extensions_changed=bool(gce),
        updates=tuple(updates),
        removes=tuple(removes),
        adds=tuple(adds),
        psks=tuple(psks),
        external_init=external_init,
        reinit=reinit,
        path_required=path_required([i.proposal for i in items]),
    )
