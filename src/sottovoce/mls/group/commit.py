"""Creating a commit (RFC 9420 §12.4.1) and the Welcome for the members it adds (§12.4.3).

::

    cached proposals ──select_pending (§12.2 SHOULDs)──┐
    proposals by value ────────────────────────────────┤
                                                       ▼
        apply_proposal_list(tree copy) ─► UpdatePath (create_update_path)
          ─► PSKs ─► seal_commit: sign, confirmed transcript hash, key schedule,
             confirmation tag ─► Welcome (if adds) ─► protect
                                                       │
                                                       ▼
        CommitBundle(commit, welcome, staged) — staged is the pending commit,
        merged once the delivery service accepted the commit

Nothing of the current epoch changes here except the handshake key a
PrivateMessage commit consumes (last, once everything else succeeded).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite
from sottovoce.errors import UsageError
from sottovoce.mls.common import Extension, GroupContext, SenderType, WireFormat
from sottovoce.mls.config import PskLookup, resolve_psks
from sottovoce.mls.epoch import Epoch, StagedCommit, next_epoch
from sottovoce.mls.errors import InvalidProposal
from sottovoce.mls.framing import (
    AuthenticatedContent,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    Sender,
    sign_content,
)
from sottovoce.mls.group.epoch_state import EpochState
from sottovoce.mls.group.send import protect
from sottovoce.mls.key_schedule import PreSharedKeyID, ResumptionPSKUsage, zero_secret
from sottovoce.mls.messages import (
    Add,
    Capabilities,
    Commit,
    GroupContextExtensions,
    PreSharedKey,
    Proposal,
    ProposalOrRef,
    ReInit,
    Remove,
    Update,
)
from sottovoce.mls.proposals import (
    QueuedProposal,
    apply_proposal_list,
    check_group_context_extensions,
)
from sottovoce.mls.transcript import ConfirmedTranscriptHashInput
from sottovoce.mls.tree import RatchetTree
from sottovoce.mls.treekem import TreeKemPrivate, create_update_path
from sottovoce.mls.welcome import NewMember, build_welcome
from sottovoce.secret import Secret

__all__ = ["CommitBundle", "create_commit", "seal_commit"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitBundle:
    """What :meth:`Group.commit` produces. Send ``commit`` to the group and
    ``welcome`` to the new members; merge ``staged`` once the delivery service
    accepted the commit (:meth:`Group.merge_pending_commit`)."""

    commit: bytes
    welcome: bytes | None
    staged: StagedCommit


def seal_commit(
    suite: CipherSuite,
    signing_key: SigningKey,
    *,
    wire_format: WireFormat,
    content: FramedContent,
    context: GroupContext,
    interim_transcript_hash: bytes,
    provisional: GroupContext,
    tree: RatchetTree,
    private: TreeKemPrivate,
    init_secret: Secret,
    commit_secret: Secret,
    psk_secret: Secret,
) -> tuple[AuthenticatedContent, Epoch, Secret]:
    """Sign a commit's ``content`` in the epoch of ``context`` and derive the epoch it
    starts (§12.4.1 steps 7–11): the confirmed transcript hash covers the signature,
    the confirmation tag the new epoch's key. Returns the signed content, the new
    epoch and its joiner_secret."""
    signature = sign_content(signing_key, wire_format, content, context)
    confirmed = suite.digest(
        interim_transcript_hash
        + ConfirmedTranscriptHashInput(
            wire_format=wire_format, content=content, signature=signature
        ).encode()
    )
    nxt, joiner_secret = next_epoch(
        suite,
        provisional=provisional,
        tree=tree,
        private=private,
        confirmed_transcript_hash=confirmed,
        init_secret=init_secret,
        commit_secret=commit_secret,
        psk_secret=psk_secret,
    )
    auth = AuthenticatedContent(
        wire_format=wire_format,
        content=content,
        auth=FramedContentAuthData(signature=signature, confirmation_tag=nxt.confirmation_tag),
    )
    return auth, nxt, joiner_secret


def create_commit(
    st: EpochState,
    *,
    rng: Random,
    now_ms: int | None,
    proposals: Sequence[Proposal],
    include_pending: bool,
    with_path: bool,
    authenticated_data: bytes = b"",
    capabilities: Capabilities | None = None,
    leaf_extensions: Sequence[Extension] | None = None,
    extra_psks: Mapping[bytes, Secret] | None = None,
    allowed_psk_usage: ResumptionPSKUsage | None = None,
    welcome_tree: Callable[[bytes], Extension] | None = None,
) -> tuple[EpochState, CommitBundle]:
    """A commit over ``proposals`` (by value) and, if ``include_pending``, the cached
    proposals of this epoch (by reference); the returned state holds it as the
    pending commit.

    ``extra_psks`` (keyed by encoded PreSharedKeyID) and ``allowed_psk_usage``
    serve the first commit of a reinitialized or branched group (§11.2, §11.3).
    ``welcome_tree``: the Welcome's GroupInfo carries no ``ratchet_tree`` extension
    (§12.4.3.3: the tree is delivered out of band); the callable gets the new epoch's
    encoded tree and returns the extension that tells the joiners where it is.
    """
    st.require_active()
    suite = st.suite
    epoch = st.epoch
    own = st.own_index
    me = Sender.member(own)
    if any(isinstance(p, Update) for p in proposals):
        raise UsageError("a committer does not commit an Update of its own")
    items = select_pending(st, proposals) if include_pending else []
    items += [QueuedProposal(proposal=p, sender=me) for p in proposals]
    tree = epoch.tree.copy()
    applied = apply_proposal_list(
        suite,
        tree,
        epoch.context,
        items,
        committer=own,
        now_ms=now_ms,
        allowed_psk_usage=allowed_psk_usage,
    )
    if applied.path_required and not with_path:
        raise UsageError("these proposals require an UpdatePath (§12.4)")
    provisional = replace(
        epoch.context, epoch=epoch.context.epoch + 1, extensions=applied.extensions
    )
    added = [i for i, _ in applied.adds]
    created = None
    if with_path:
        template = st.own_leaf
        if capabilities is not None or leaf_extensions is not None:
            template = replace(
                template,
                capabilities=template.capabilities if capabilities is None else capabilities,
                extensions=(
                    template.extensions if leaf_extensions is None else tuple(leaf_extensions)
                ),
            )
        try:
            check_group_context_extensions(applied.extensions, [template])
        except InvalidProposal as exc:
            raise UsageError(f"our leaf does not support the extensions: {exc}") from None
        created = create_update_path(
            tree,
            own,
            leaf_node=template,
            signing_key=st.signing_key,
            group_context=provisional,
            excluded_leaves=added,
            rng=rng,
        )
        commit_secret = created.commit_secret
        private = created.private
    else:
        commit_secret = zero_secret(suite)
        private = epoch.private.pruned(tree)
    psk = resolve_psks(
        suite,
        applied.psks,
        [_by_encoded_id(extra_psks), st.find_psk, st.config.psk_lookup],
        missing="a committed pre-shared key is not available",
    )

    commit = Commit(
        proposals=tuple(_por(q) for q in items),
        path=None if created is None else created.update_path,
    )
    content = st.framed(commit, authenticated_data)
    auth, nxt, joiner_secret = seal_commit(
        suite,
        st.signing_key,
        wire_format=st.config.handshake_wire_format,
        content=content,
        context=epoch.context,
        interim_transcript_hash=epoch.interim_transcript_hash,
        provisional=provisional,
        tree=tree,
        private=private,
        init_secret=epoch.secrets.init_secret,
        commit_secret=commit_secret,
        psk_secret=psk,
    )
    welcome = None
    if applied.adds:
        group_info = nxt.group_info(
            st.signing_key,
            with_ratchet_tree=welcome_tree is None and st.config.ratchet_tree_in_welcome,
            with_external_pub=False,
            extensions=() if welcome_tree is None else (welcome_tree(nxt.tree.encode()),),
        )
        welcome = build_welcome(
            suite,
            group_info=group_info,
            joiner_secret=joiner_secret,
            psk_secret=psk,
            psks=applied.psks,
            new_members=[
                NewMember(
                    key_package=kp,
                    path_secret=None if created is None else created.path_secret_for(i),
                )
                for i, kp in applied.adds
            ],
            rng=rng,
        )
    # Last: protecting as a PrivateMessage uses a handshake key of this epoch.
    message = protect(st, auth, rng)
    staged = st.stage(
        content, applied, nxt, committer=own, has_path=created is not None,
        self_removed=False, pending_key=None,
    )
    bundle = CommitBundle(
        commit=message,
        welcome=None if welcome is None else MLSMessage(body=welcome).encode(),
        staged=staged,
    )
    return replace(st, pending_commit=staged), bundle


def select_pending(st: EpochState, by_value: Sequence[Proposal]) -> list[QueuedProposal]:
    """The cached proposals to commit by reference, filtered per §12.2's SHOULDs:
    Removes win over Updates, the latest Update per leaf, no duplicate Adds or
    PSKs, a ReInit only alone, none that removes us."""
    own = st.own_index
    queued = list(st.proposals.values())
    value_removes = {p.removed for p in by_value if isinstance(p, Remove)}
    removed = value_removes | {
        q.proposal.removed for q in queued if isinstance(q.proposal, Remove)
    }
    latest_update: dict[int, QueuedProposal] = {}
    for q in queued:
        if (
            isinstance(q.proposal, Update)
            and q.sender.sender_type == SenderType.MEMBER
            and q.sender.index != own
            and q.sender.index not in removed
            and q.sender.index not in value_removes
        ):
            latest_update[q.sender.index] = q
    add_keys = {p.key_package.leaf_node.signature_key for p in by_value if isinstance(p, Add)}
    psk_ids = {p.psk.encode() for p in by_value if isinstance(p, PreSharedKey)}
    value_gce = any(isinstance(p, GroupContextExtensions) for p in by_value)
    seen_removes = set(value_removes)
    out: list[QueuedProposal] = []
    gce: QueuedProposal | None = None
    reinit: QueuedProposal | None = None
    for q in queued:
        p = q.proposal
        if isinstance(p, Remove):
            if p.removed == own or p.removed in seen_removes:
                continue
            seen_removes.add(p.removed)
            out.append(q)
        elif isinstance(p, Update):
            if latest_update.get(q.sender.index) is q:
                out.append(q)
        elif isinstance(p, Add):
            key = p.key_package.leaf_node.signature_key
            present = st.epoch.tree.find_leaf_by_signature_key(key)
            if key in add_keys or (present is not None and present not in removed):
                # The same client twice, or one already in the group (§12.2).
                continue
            add_keys.add(key)
            out.append(q)
        elif isinstance(p, PreSharedKey):
            encoded = p.psk.encode()
            if encoded in psk_ids:
                continue
            psk_ids.add(encoded)
            out.append(q)
        elif isinstance(p, GroupContextExtensions):
            if not value_gce:
                gce = q
        elif isinstance(p, ReInit) and reinit is None:
            reinit = q
    if gce is not None:
        out.append(gce)
    if reinit is not None and not out and not by_value:
        out = [reinit]
    return out


def _por(item: QueuedProposal) -> ProposalOrRef:
    return item.ref if item.ref is not None else item.proposal


def _by_encoded_id(psks: Mapping[bytes, Secret] | None) -> PskLookup | None:
    """``psks`` (keyed by encoded PreSharedKeyID) as a lookup."""
    if psks is None:
        return None

    def lookup(psk_id: PreSharedKeyID) -> Secret | None:
        return psks.get(psk_id.encode())

    return lookup
