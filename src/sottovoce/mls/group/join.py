"""Joining a group (RFC 9420 §12.4.3): from a Welcome (§12.4.3.1) or by an external
commit from a GroupInfo (§12.4.3.2).

::

    Welcome ─► GroupSecrets (our init key) ─► PSKs ─► GroupInfo (welcome key)
            ─► tree: decodes, valid, hashes to the context ─► GroupInfo signature
            ─► our leaf, path secret ─► key schedule, confirmation tag
            ─► §11.2/§11.3 resumption rules ─► EpochState (new epoch)

    GroupInfo ─► tree checks and signature as above ─► external_pub ─► ExternalInit
              ─► our new leaf and UpdatePath ─► sealed commit ─► EpochState (new epoch)
                                                               + the commit to send

Every check of the joiner's input raises a typed MLS error (never a bare
``DecodeError``); a caller mistake raises ``UsageError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite, cipher_suite
from sottovoce.errors import DecodeError, InvalidKey, UnsupportedError, UsageError
from sottovoce.limits import MAX_GROUP_DECODE_BYTES
from sottovoce.mls.common import Extension, ExtensionType, ProtocolVersion, WireFormat
from sottovoce.mls.config import GroupConfig, PskLookup, resolve_psks
from sottovoce.mls.epoch import Epoch
from sottovoce.mls.errors import (
    GroupError,
    InvalidProposal,
    InvalidWelcome,
    MlsDecodeError,
    UnsupportedCipherSuite,
)
from sottovoce.mls.framing import (
    FramedContent,
    MLSMessage,
    Sender,
    decode_message,
    protect_public,
)
from sottovoce.mls.group.commit import seal_commit
from sottovoce.mls.group.epoch_state import EpochState
from sottovoce.mls.group.keypackage import (
    KeyPackagePrivate,
    check_signing_key,
    default_capabilities,
)
from sottovoce.mls.group.resume import check_resumption
from sottovoce.mls.key_schedule import (
    PreSharedKeyID,
    PSKType,
    ResumptionPSKUsage,
    external_init_send,
    join_epoch,
    zero_secret,
)
from sottovoce.mls.messages import (
    Capabilities,
    Commit,
    Credential,
    ExternalInit,
    GroupInfo,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    PreSharedKey,
    Proposal,
    Remove,
    RequiredCapabilities,
    Welcome,
    find_extension,
)
from sottovoce.mls.proposals import (
    QueuedProposal,
    apply_proposal_list,
    check_group_context_extensions,
    required_capabilities,
)
from sottovoce.mls.public import external_pub_of, verify_group_info
from sottovoce.mls.transcript import interim_transcript_hash, verify_confirmation_tag
from sottovoce.mls.tree import RatchetTree, TreeError
from sottovoce.mls.treekem import TreeKemPrivate, create_update_path
from sottovoce.mls.welcome import decrypt_group_info, decrypt_group_secrets

__all__ = ["by_external_commit", "from_welcome"]


def welcome_group_info(
    welcome: Welcome, key_package: KeyPackage, key_package_private: KeyPackagePrivate
) -> GroupInfo:
    """The Welcome's GroupInfo, decrypted for ``key_package`` (a Welcome with PSKs is
    refused here); unchecked: see :meth:`Group.welcome_group_info`."""
    suite = _suite(welcome.cipher_suite, "Welcome")
    opened = decrypt_group_secrets(suite, welcome, key_package, key_package_private.init_private)
    if opened.psks:
        raise InvalidWelcome("a Welcome with pre-shared keys is opened by joining")
    return decrypt_group_info(suite, welcome, opened.joiner_secret, zero_secret(suite))


def from_welcome(
    welcome: bytes | MLSMessage | Welcome,
    key_package: KeyPackage,
    key_package_private: KeyPackagePrivate,
    *,
    signing_key: SigningKey,
    ratchet_tree: bytes | RatchetTree | None,
    psk_lookup: PskLookup | None,
    now_ms: int | None,
    config: GroupConfig | None,
    resumed_from: EpochState | None,
) -> EpochState:
    """Our state in the group a Welcome addressed to ``key_package`` opens (§12.4.3.1);
    see :meth:`Group.join_from_welcome` for the checks and errors."""
    cfg = config or GroupConfig()
    if psk_lookup is not None:
        # Kept: later PSK proposals may name the same external PSKs.
        cfg = replace(cfg, psk_lookup=psk_lookup)
    body = _joining_body(welcome, "Welcome")
    if not isinstance(body, Welcome):
        raise InvalidWelcome("message is not a Welcome")
    if body.cipher_suite != key_package.cipher_suite:
        raise UnsupportedCipherSuite("Welcome cipher suite differs from the KeyPackage's")
    suite = _suite(body.cipher_suite, "Welcome")
    check_signing_key(suite, signing_key)
    if signing_key.verify_key.data != key_package.leaf_node.signature_key:
        raise UsageError("signing key does not match the KeyPackage")

    group_secrets = decrypt_group_secrets(
        suite, body, key_package, key_package_private.init_private
    )

    # PSKs (§12.4.3.1): at most one reinit/branch PSK, every PSK known.
    resumption_usage = [
        p.usage
        for p in group_secrets.psks
        if p.psktype == PSKType.RESUMPTION
        and p.usage in (ResumptionPSKUsage.REINIT, ResumptionPSKUsage.BRANCH)
    ]
    if len(resumption_usage) > 1:
        raise InvalidWelcome("more than one reinit/branch PSK")
    psk = resolve_psks(
        suite,
        group_secrets.psks,
        [None if resumed_from is None else resumed_from.find_psk, cfg.psk_lookup],
        missing="the Welcome needs a pre-shared key we do not have",
        bad_nonce=InvalidWelcome,
    )

    group_info = decrypt_group_info(suite, body, group_secrets.joiner_secret, psk)
    context = group_info.group_context
    if context.cipher_suite != key_package.cipher_suite or context.version != (
        ProtocolVersion.MLS10
    ):
        raise InvalidWelcome("GroupInfo suite or version differs from the KeyPackage's")
    tree = _checked_tree(suite, group_info, ratchet_tree, now_ms)

    # Our leaf is the KeyPackage's, verbatim.
    my_index = tree.find_leaf_by_signature_key(key_package.leaf_node.signature_key)
    if my_index is None or tree.leaf(my_index) != key_package.leaf_node:
        raise InvalidWelcome("our KeyPackage leaf is not in the tree")
    _check_supported(context.extensions, key_package.leaf_node)
    private = TreeKemPrivate.for_leaf(
        suite, my_index, key_package_private.encryption_private
    )
    if group_secrets.path_secret is not None:
        if group_info.signer == my_index:
            raise InvalidWelcome("the Welcome's signer is the joiner")
        private = private.with_welcome_secret(
            tree, group_info.signer, group_secrets.path_secret.path_secret.expose()
        )
    try:
        private.check(tree)
    except TreeError:
        raise InvalidWelcome("our private keys do not match the tree") from None

    transition = join_epoch(
        suite, joiner_secret=group_secrets.joiner_secret, psk_secret=psk, group_context=context
    )
    verify_confirmation_tag(
        suite,
        transition.epoch.confirmation_key,
        context.confirmed_transcript_hash,
        group_info.confirmation_tag,
    )
    if resumption_usage or resumed_from is not None:
        check_resumption(context, group_secrets.psks, resumed_from)
    epoch = Epoch.confirmed(
        suite, context=context, tree=tree, private=private, secrets=transition.epoch,
        confirmation_tag=group_info.confirmation_tag,
    )
    return EpochState.start(suite=suite, signing_key=signing_key, epoch=epoch, config=cfg)


def by_external_commit(
    group_info: bytes | MLSMessage | GroupInfo,
    *,
    credential: Credential,
    signing_key: SigningKey,
    rng: Random,
    now_ms: int | None,
    ratchet_tree: bytes | RatchetTree | None,
    capabilities: Capabilities | None,
    leaf_extensions: Sequence[Extension],
    psks: Sequence[PreSharedKeyID],
    remove_leaf: int | None,
    authenticated_data: bytes,
    config: GroupConfig | None,
) -> tuple[EpochState, bytes]:
    """Our state in the epoch our external commit starts (§12.4.3.2), and that commit;
    see :meth:`Group.join_by_external_commit` for the checks and errors."""
    cfg = config or GroupConfig()
    body = _joining_body(group_info, "GroupInfo")
    if not isinstance(body, GroupInfo):
        raise InvalidWelcome("message is not a GroupInfo")
    gi = body
    context = gi.group_context
    suite = _suite(context.cipher_suite, "GroupInfo")
    check_signing_key(suite, signing_key)
    tree = _checked_tree(suite, gi, ratchet_tree, now_ms)
    external_pub = external_pub_of(gi)
    if external_pub is None:
        raise InvalidWelcome("GroupInfo has no external_pub extension")
    try:
        kem_output, init_secret = external_init_send(suite, external_pub, rng)
    except InvalidKey:
        raise InvalidWelcome("external_pub is not a valid HPKE key") from None

    sender = Sender.new_member_commit()
    proposals: list[Proposal] = [ExternalInit(kem_output=kem_output)]
    if remove_leaf is not None:
        old = tree.leaf(remove_leaf) if 0 <= remove_leaf < tree.n_leaves else None
        if old is None or old.credential != credential:
            raise UsageError("remove_leaf must name our own previous leaf")
        proposals.append(Remove(removed=remove_leaf))
    proposals.extend(PreSharedKey(psk=p) for p in psks)
    items = [QueuedProposal(proposal=p, sender=sender) for p in proposals]
    staged_tree = tree.copy()
    applied = apply_proposal_list(
        suite, staged_tree, context, items, committer=None, now_ms=now_ms
    )
    caps = capabilities if capabilities is not None else default_capabilities(
        suite, credential
    )
    template = LeafNode(
        encryption_key=b"",  # replaced by create_update_path
        signature_key=signing_key.verify_key.data,
        credential=credential,
        capabilities=caps,
        leaf_node_source=LeafNodeSource.COMMIT,
        extensions=tuple(leaf_extensions),
    )
    _check_supported(applied.extensions, template)
    try:
        staged_tree.check_leaf_fits(template)
    except TreeError as exc:  # e.g. our key is in the tree: pass remove_leaf
        raise UsageError(f"our leaf does not fit the group: {exc}") from None
    index = staged_tree.add_leaf(template)
    provisional = replace(context, epoch=context.epoch + 1, extensions=applied.extensions)
    created = create_update_path(
        staged_tree,
        index,
        leaf_node=template,
        signing_key=signing_key,
        group_context=provisional,
        rng=rng,
    )
    psk = resolve_psks(
        suite,
        applied.psks,
        [cfg.psk_lookup],
        missing="no value for a pre-shared key of the external commit",
    )
    content = FramedContent(
        group_id=context.group_id,
        epoch=context.epoch,
        sender=sender,
        authenticated_data=authenticated_data,
        content=Commit(proposals=tuple(proposals), path=created.update_path),
    )
    auth, epoch, _ = seal_commit(
        suite,
        signing_key,
        wire_format=WireFormat.PUBLIC_MESSAGE,
        content=content,
        context=context,
        interim_transcript_hash=interim_transcript_hash(
            suite, context.confirmed_transcript_hash, gi.confirmation_tag
        ),
        provisional=provisional,
        tree=staged_tree,
        private=created.private,
        init_secret=init_secret,
        commit_secret=created.commit_secret,
        psk_secret=psk,
    )
    message = MLSMessage(body=protect_public(suite, auth, None, None)).encode()
    state = EpochState.start(suite=suite, signing_key=signing_key, epoch=epoch, config=cfg)
    return state, message


def _joining_body(message: bytes | MLSMessage | Welcome | GroupInfo, what: str) -> object:
    """The body of a Welcome or GroupInfo handed to a join: bytes that do not
    decode are an invalid Welcome/GroupInfo (RFC 9420 §12.4.3), like every other
    way the joiner's input can be wrong."""
    if isinstance(message, Welcome | GroupInfo):
        return message
    try:
        return decode_message(message, max_bytes=MAX_GROUP_DECODE_BYTES).body
    except MlsDecodeError:
        raise InvalidWelcome(f"the {what} does not decode") from None


def _suite(suite_id: int, what: str) -> CipherSuite:
    try:
        return cipher_suite(suite_id)
    except UnsupportedError:
        raise UnsupportedCipherSuite(f"{what} cipher suite is not supported") from None


def _checked_tree(
    suite: CipherSuite, group_info: GroupInfo, ratchet_tree: bytes | RatchetTree | None,
    now_ms: int | None,
) -> RatchetTree:
    """The group's ratchet tree (from the GroupInfo, or ``ratchet_tree``), valid,
    hashing to the GroupContext's ``tree_hash``, and holding the GroupInfo's
    signer (§12.4.3.1)."""
    context = group_info.group_context
    tree = _tree_for_join(suite, group_info, ratchet_tree)
    tree.validate(
        context.group_id,
        tree_hash=context.tree_hash,
        required_capabilities=_required_or_invalid(context.extensions, InvalidWelcome),
        now_ms=now_ms,
    )
    signer = group_info.signer
    verify_group_info(
        suite, group_info, tree.leaf(signer) if 0 <= signer < tree.n_leaves else None
    )
    return tree


def _tree_for_join(
    suite: CipherSuite, group_info: GroupInfo, ratchet_tree: bytes | RatchetTree | None
) -> RatchetTree:
    if isinstance(ratchet_tree, RatchetTree):
        return ratchet_tree.copy()
    if ratchet_tree is None:
        ext = find_extension(group_info.extensions, ExtensionType.RATCHET_TREE)
        if ext is None:
            # §12.4.3.3 lets a group convey its tree some other way: the caller's to pass.
            raise UsageError("the GroupInfo carries no ratchet tree; pass ratchet_tree=")
        ratchet_tree = ext.extension_data
    try:
        return RatchetTree.decode(suite, ratchet_tree)
    except DecodeError:
        raise InvalidWelcome("the ratchet tree does not decode") from None


def _required_or_invalid(
    extensions: Sequence[Extension], error: type[GroupError]
) -> RequiredCapabilities | None:
    try:
        return required_capabilities(extensions)
    except InvalidProposal:
        raise error("required_capabilities does not decode") from None


def _check_supported(extensions: Sequence[Extension], leaf: LeafNode) -> None:
    # §12.4.3.1 / §12.4.3.2: the joiner must support the group's extensions.
    try:
        check_group_context_extensions(extensions, [leaf])
    except InvalidProposal:
        raise InvalidWelcome("we do not support the group's extensions") from None
