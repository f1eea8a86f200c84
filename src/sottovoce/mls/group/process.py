"""Receiving (RFC 9420 §6, §12.1, §12.4.2): authenticate a group message, then
interpret it by content type.

::

    MLSMessage bytes ─► PublicMessage: group, epoch, sender's key by sender type,
                        membership tag (members), FramedContentTBS signature
                     ─► PrivateMessage: sender data, peeked ratchet key (current
                        or a past epoch), AEAD, FramedContentTBS signature
                                │
          application data ─────┼──► key consumed ─► ApplicationMessage
          proposal ─────────────┼──► check_proposal, key consumed ─► cached
          commit ───────────────┴──► staged on copies ─► StagedCommit
                                     (its key is consumed by the merge)

Nothing changes unless every check passed: a receive returns the new state
(only the proposal cache differs) and consumes its ratchet key last.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass, replace

from sottovoce.codec.tls import Writer
from sottovoce.errors import DecodeError, DecryptionError, InvalidKey
from sottovoce.limits import MLS_MAX_PENDING_PROPOSALS
from sottovoce.mls.common import (
    ContentType,
    ExtensionType,
    GroupContext,
    ProtocolVersion,
    SenderType,
    WireFormat,
)
from sottovoce.mls.config import resolve_psks
from sottovoce.mls.epoch import StagedCommit, next_epoch
from sottovoce.mls.errors import (
    GroupError,
    InvalidCommit,
    InvalidMembershipTag,
    InvalidProposal,
    InvalidProposalList,
    MlsDecryptionError,
    OwnMessage,
    UnknownProposal,
    UnknownSender,
    WrongEpoch,
    WrongGroup,
)
from sottovoce.mls.framing import (
    FRAMED_CONTENT_TBS_LABEL,
    AuthenticatedContent,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
    decode_message,
    decrypt_private_content,
    decrypt_sender_data,
)
from sottovoce.mls.group.epoch_state import EpochState
from sottovoce.mls.key_schedule import external_init_receive, zero_secret
from sottovoce.mls.messages import (
    Add,
    Commit,
    Credential,
    ExternalSender,
    ExternalSenders,
    GroupContextExtensions,
    LeafNode,
    LeafNodeSource,
    PreSharedKey,
    ReInit,
    Remove,
    UpdatePath,
    find_extension,
    make_proposal_ref,
)
from sottovoce.mls.proposals import (
    AppliedProposals,
    QueuedProposal,
    apply_proposal_list,
    check_proposal,
    required_capabilities,
)
from sottovoce.mls.public import verify_labeled
from sottovoce.mls.secret_tree import PendingKey, RatchetType
from sottovoce.mls.tree import DuplicateKey, RatchetTree, check_leaf_node
from sottovoce.mls.treekem import UpdatePathError, decrypt_update_path, merge_update_path

__all__ = ["ApplicationMessage", "ProcessedMessage", "process_message"]


def process_message(
    st: EpochState, message: bytes | MLSMessage, now_ms: int | None
) -> tuple[EpochState, ProcessedMessage]:
    """Authenticate and interpret a PublicMessage or PrivateMessage of this group;
    the state to continue with (a new proposal cached) and what arrived."""
    body = decode_message(message).body
    if isinstance(body, PublicMessage):
        if not st.active:
            raise WrongEpoch("the group moved on without us (removed or reinitialized)")
        raw = bytes(message) if not isinstance(message, MLSMessage) else None
        return _process_public(st, body, raw, now_ms)
    if isinstance(body, PrivateMessage):
        if not st.active and body.content_type != ContentType.APPLICATION:
            # Late application data of our last epoch may still be read
            # (§12.4.2); handshake messages of a group we left may not.
            raise WrongEpoch("the group moved on without us (removed or reinitialized)")
        return _process_private(st, body, now_ms)
    raise GroupError("not a PublicMessage or PrivateMessage")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessedMessage:
    """An authenticated group message, by content type."""

    group_id: bytes
    epoch: int
    sender: Sender
    #: The sender's credential: its leaf's (member), the external sender's, or the
    #: new member's (from the KeyPackage or UpdatePath leaf).
    credential: Credential | None
    authenticated_data: bytes
    wire_format: WireFormat
    content: ApplicationMessage | QueuedProposal | StagedCommit


@dataclass(frozen=True, slots=True)
class ApplicationMessage:
    """Decrypted application data (§6.3), already authenticated."""

    data: bytes

    def __repr__(self) -> str:
        return f"ApplicationMessage(<{len(self.data)} bytes>)"


# --- §6: authenticating ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Encoded:
    """A received AuthenticatedContent's FramedContent and auth data as bytes, encoded
    (or taken from the wire) once.

    FramedContentTBS (§6.1), AuthenticatedContentTBM (§6.2), the ProposalRef
    input (§5.2) and ConfirmedTranscriptHashInput (§8.2) all contain the
    FramedContent; a commit's holds the whole UpdatePath, the costliest thing
    a receiver would otherwise encode three or four times.
    """

    wire_format: WireFormat
    content: bytes
    auth: bytes

    @classmethod
    def of(cls, auth: AuthenticatedContent) -> _Encoded:
        return cls(auth.wire_format, auth.content.encode(), auth.auth.encode())

    @classmethod
    def of_public(cls, message: PublicMessage, raw: bytes | None) -> _Encoded:
        """From the received bytes when we have them: an MLSMessage(PublicMessage)
        is ``version || wire_format || FramedContent || auth || [membership_tag]``,
        and decoding is canonical (exact, minimal lengths), so the FramedContent
        is the slice between the header and the auth data."""
        auth = message.auth.encode()
        if raw is not None:
            tag = message.membership_tag
            tail = 0 if tag is None else len(_opaque(tag))
            end = len(raw) - tail
            start = end - len(auth)
            if start >= 4 and raw[start:end] == auth:
                return cls(WireFormat.PUBLIC_MESSAGE, raw[4:start], auth)
        return cls(WireFormat.PUBLIC_MESSAGE, message.content.encode(), auth)

    def tbs(self, context: bytes | None) -> bytes:
        """FramedContentTBS; ``context`` for member and new_member_commit senders."""
        head = struct.pack(">HH", ProtocolVersion.MLS10, self.wire_format) + self.content
        return head if context is None else head + context

    def authenticated_content(self) -> bytes:
        return struct.pack(">H", self.wire_format) + self.content + self.auth

    def confirmed_transcript_input(self, signature: bytes) -> bytes:
        return struct.pack(">H", self.wire_format) + self.content + _opaque(signature)


def _opaque(data: bytes) -> bytes:
    w = Writer()
    w.opaque_v(data)
    return w.getvalue()


def _check_group(st: EpochState, group_id: bytes) -> None:
    if group_id != st.group_id:
        raise WrongGroup("message is for another group")


def _process_public(
    st: EpochState, message: PublicMessage, raw: bytes | None, now_ms: int | None
) -> tuple[EpochState, ProcessedMessage]:
    content = message.content
    _check_group(st, content.group_id)
    if content.epoch != st.number:
        raise WrongEpoch("handshake message is not for the current epoch")
    epoch = st.epoch
    suite = st.suite
    sender = content.sender
    stype = sender.sender_type
    body = content.content
    if isinstance(body, bytes):
        # RFC 9420 §6: application data is never a PublicMessage.
        raise GroupError("application data in a PublicMessage")
    credential: Credential | None
    with_context = True
    if stype == SenderType.MEMBER:
        if sender.index == st.own_index:
            raise OwnMessage("our own message came back")
        leaf = _member_leaf(epoch.tree, sender.index)
        key, credential = leaf.signature_key, leaf.credential
    elif stype == SenderType.EXTERNAL:
        if not isinstance(body, (Add, Remove, PreSharedKey, ReInit, GroupContextExtensions)):
            raise InvalidProposal("external senders may only send certain proposals")
        ext_sender = _external_sender(epoch.context, sender.index)
        key, credential = ext_sender.signature_key, ext_sender.credential
        with_context = False
    elif stype == SenderType.NEW_MEMBER_PROPOSAL:
        if not isinstance(body, Add):
            raise InvalidProposal("a new_member_proposal must be an Add")
        key = body.key_package.leaf_node.signature_key
        credential = body.key_package.leaf_node.credential
        with_context = False
    else:  # NEW_MEMBER_COMMIT
        if not isinstance(body, Commit) or body.path is None:
            raise InvalidCommit("an external commit must be a commit with a path")
        key = body.path.leaf_node.signature_key
        credential = body.path.leaf_node.credential
    enc = _Encoded.of_public(message, raw)
    tbs = enc.tbs(epoch.context_bytes if with_context else None)
    if message.membership_tag is not None:
        # §6.2: MAC(membership_key, AuthenticatedContentTBM = TBS || auth).
        expected = suite.mac(epoch.secrets.membership_key.expose(), tbs + enc.auth)
        if not hmac.compare_digest(expected, message.membership_tag):
            raise InvalidMembershipTag("membership tag does not verify")
    verify_labeled(suite, key, FRAMED_CONTENT_TBS_LABEL, tbs, message.auth.signature)
    return _handle_content(st, message.authenticated_content(), enc, credential, None, now_ms)


def _process_private(
    st: EpochState, message: PrivateMessage, now_ms: int | None
) -> tuple[EpochState, ProcessedMessage]:
    _check_group(st, message.group_id)
    suite = st.suite
    if message.epoch == st.number:
        context_bytes = st.epoch.context_bytes
        tree = st.epoch.tree
        sd_secret = st.epoch.secrets.sender_data_secret
        secret_tree = st.secret_tree
        current = True
    else:
        past = next((p for p in st.past if p.context.epoch == message.epoch), None)
        if past is None or message.content_type != ContentType.APPLICATION:
            raise WrongEpoch("message is not for an epoch we can read")
        context_bytes, tree = past.context.encode(), past.tree
        sd_secret, secret_tree = past.sender_data_secret, past.secret_tree
        current = False
    sender_data = decrypt_sender_data(suite, message, sd_secret)
    index = sender_data.leaf_index
    if index == st.own_index:
        raise OwnMessage("our own message came back")
    if index >= secret_tree.n_leaves:
        raise UnknownSender("sender data names a leaf outside the tree")
    leaf = _member_leaf(tree, index)
    pending = secret_tree.peek(
        index, RatchetType.for_content(message.content_type), sender_data.generation
    )
    auth = decrypt_private_content(suite, message, sender_data, pending.key, pending.nonce)
    enc = _Encoded.of(auth)
    verify_labeled(
        suite, leaf.signature_key, FRAMED_CONTENT_TBS_LABEL, enc.tbs(context_bytes),
        auth.auth.signature,
    )
    if not current:
        data = auth.content.content
        if not isinstance(data, bytes):  # pragma: no cover - epoch check above
            raise WrongEpoch("handshake message is not for the current epoch")
        pending.consume()
        return st, _processed(auth, leaf.credential, ApplicationMessage(data))
    return _handle_content(st, auth, enc, leaf.credential, pending, now_ms)


def _processed(
    auth: AuthenticatedContent,
    credential: Credential | None,
    content: ApplicationMessage | QueuedProposal | StagedCommit,
) -> ProcessedMessage:
    fc = auth.content
    return ProcessedMessage(
        group_id=fc.group_id,
        epoch=fc.epoch,
        sender=fc.sender,
        credential=credential,
        authenticated_data=fc.authenticated_data,
        wire_format=auth.wire_format,
        content=content,
    )


def _handle_content(
    st: EpochState,
    auth: AuthenticatedContent,
    enc: _Encoded,
    credential: Credential | None,
    pending: PendingKey | None,
    now_ms: int | None,
) -> tuple[EpochState, ProcessedMessage]:
    body = auth.content.content
    if isinstance(body, bytes):
        if pending is None:  # pragma: no cover - _process_public refuses it
            raise GroupError("application data outside a PrivateMessage")
        pending.consume()
        return st, _processed(auth, credential, ApplicationMessage(body))
    if isinstance(body, Commit):
        staged = _stage_commit(st, auth, enc, body, pending, now_ms)
        return st, _processed(auth, credential, staged)
    sender = auth.content.sender
    check_proposal(st.suite, st.epoch.tree, st.epoch.context, body, sender, now_ms=now_ms)
    ref = make_proposal_ref(st.suite, enc.authenticated_content())
    if ref not in st.proposals and len(st.proposals) >= MLS_MAX_PENDING_PROPOSALS:
        raise GroupError("too many proposals in this epoch")
    if pending is not None:
        pending.consume()
    queued = QueuedProposal(proposal=body, sender=sender, ref=ref)
    return (
        replace(st, proposals={**st.proposals, ref: queued}),
        _processed(auth, credential, queued),
    )


def _member_leaf(tree: RatchetTree, index: int) -> LeafNode:
    leaf = tree.leaf(index) if 0 <= index < tree.n_leaves else None
    if leaf is None:
        raise UnknownSender("sender is not a member of the group")
    return leaf


def _external_sender(context: GroupContext, index: int) -> ExternalSender:
    ext = find_extension(context.extensions, ExtensionType.EXTERNAL_SENDERS)
    if ext is None:
        raise UnknownSender("the group has no external senders")
    try:
        senders = ExternalSenders.decode(ext.extension_data).senders
    except DecodeError:
        raise UnknownSender("the group's external_senders do not decode") from None
    if not 0 <= index < len(senders):
        raise UnknownSender("no external sender with this index")
    return senders[index]


# --- §12.4.2: staging a received commit -----------------------------------------------


def _stage_commit(
    st: EpochState,
    auth: AuthenticatedContent,
    enc: _Encoded,
    commit: Commit,
    pending: PendingKey | None,
    now_ms: int | None,
) -> StagedCommit:
    suite = st.suite
    epoch = st.epoch
    sender = auth.content.sender
    own = st.own_index
    external = sender.sender_type == SenderType.NEW_MEMBER_COMMIT
    if sender.sender_type not in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT):
        raise InvalidCommit("commit from a sender that cannot commit")

    items: list[QueuedProposal] = []
    for por in commit.proposals:
        if isinstance(por, bytes):
            if external:
                raise InvalidCommit("an external commit holds proposals by reference")
            queued = st.proposals.get(por)
            if queued is None:
                raise UnknownProposal("commit references a proposal we do not know")
            items.append(queued)
        else:
            items.append(QueuedProposal(proposal=por, sender=sender))

    tree = epoch.tree.copy()
    committer = None if external else sender.index
    applied = apply_proposal_list(
        suite, tree, epoch.context, items, committer=committer, now_ms=now_ms
    )
    path = commit.path
    if path is None and applied.path_required:
        raise InvalidCommit("this commit requires an UpdatePath (§12.4)")
    removed = {i for i, _ in applied.removes}
    if own in removed:
        # §12.4.2: we cannot follow into the next epoch; report and stop here.
        return st.stage(
            auth.content, applied, None, committer=-1 if committer is None else committer,
            has_path=path is not None, self_removed=True, pending_key=pending,
        )

    private = epoch.private
    own_update = next((leaf for i, leaf in applied.updates if i == own), None)
    if own_update is not None:
        key = st.own_update_keys.get(own_update.encryption_key)
        if key is None:
            raise InvalidCommit("commit applies an Update of ours we hold no key for")
        private = private.with_leaf_private(key)
    private = private.pruned(tree)

    provisional = replace(
        epoch.context, epoch=epoch.context.epoch + 1, extensions=applied.extensions
    )
    if path is not None:
        leaf = path.leaf_node
        sender_index = tree.leftmost_blank_leaf() if external else sender.index
        if leaf.leaf_node_source != LeafNodeSource.COMMIT:
            raise UpdatePathError("update path leaf node source is not commit")
        check_leaf_node(
            suite,
            leaf,
            group_id=st.group_id,
            leaf_index=sender_index,
            required_capabilities=required_capabilities(applied.extensions),
            now_ms=now_ms,
        )
        if external:
            _merge_external_path(tree, applied, leaf, path)
        else:
            tree.check_leaf_fits(leaf, replacing=sender_index)
            merge_update_path(tree, sender_index, path)
        processed = decrypt_update_path(
            tree,
            private,
            sender_index,
            path,
            group_context=replace(provisional, tree_hash=tree.tree_hash()),
            excluded_leaves=[i for i, _ in applied.adds],
        )
        commit_secret = processed.commit_secret
        private = processed.private
        committer_index = sender_index
    else:
        commit_secret = zero_secret(suite)
        committer_index = sender.index
    psk = resolve_psks(
        suite,
        applied.psks,
        [st.find_psk, st.config.psk_lookup],
        missing="a committed pre-shared key is not available",
    )
    if applied.external_init is not None:
        try:
            init_secret = external_init_receive(
                suite,
                epoch.secrets.external_key_pair().private,
                applied.external_init.kem_output,
            )
        except (DecryptionError, InvalidKey):
            raise MlsDecryptionError("ExternalInit kem_output does not decapsulate") from None
    else:
        init_secret = epoch.secrets.init_secret

    tag = auth.auth.confirmation_tag
    if tag is None:  # pragma: no cover - AuthenticatedContent guarantees it
        raise InvalidCommit("commit without confirmation tag")
    nxt, _ = next_epoch(
        suite,
        provisional=provisional,
        tree=tree,
        private=private,
        confirmed_transcript_hash=suite.digest(
            epoch.interim_transcript_hash + enc.confirmed_transcript_input(auth.auth.signature)
        ),
        init_secret=init_secret,
        commit_secret=commit_secret,
        psk_secret=psk,
        received_tag=tag,
    )
    return st.stage(
        auth.content, applied, nxt, committer=committer_index, has_path=path is not None,
        self_removed=False, pending_key=pending,
    )


def _merge_external_path(
    tree: RatchetTree, applied: AppliedProposals, leaf: LeafNode, path: UpdatePath
) -> None:
    """§12.4.2 for an external commit: place the joiner at the leftmost blank leaf,
    then merge its path (the checks of ``merge_update_path``, whose own leaf
    check assumes the sender is already a member)."""
    for _, removed in applied.removes:
        # §12.2: a resync replaces the same participant.
        if removed.credential != leaf.credential:
            raise InvalidProposalList("an external resync must keep the removed credential")
    tree.check_leaf_fits(leaf)
    public_keys = [n.encryption_key for n in path.nodes]
    all_keys = [*public_keys, leaf.encryption_key]
    if len(set(all_keys)) != len(all_keys) or any(tree.has_encryption_key(k) for k in all_keys):
        raise DuplicateKey("update path reuses an encryption key")
    index = tree.add_leaf(leaf)
    if len(public_keys) != len(tree.filtered_direct_path(index)):
        raise UpdatePathError("update path length does not match the filtered direct path")
    tree.merge_path_keys(index, public_keys, leaf_parent_hash=leaf.parent_hash)
    tree.set_leaf(index, leaf)
