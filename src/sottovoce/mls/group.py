"""The MLS group state machine (RFC 9420 §8, §10–§14), sans-IO.

::

      generate_key_package()                    Group.create()  (epoch 0)
                                                       │
      Welcome ───── Group.join_from_welcome() ───────┐ │
      GroupInfo ─── Group.join_by_external_commit() ─┤ │
                                                     ▼ ▼
                         ┌───────────────────────────────────────────┐
                         │ Group (epoch n, trusted): context, tree,  │
                         │ private keys, epoch secrets, secret tree, │
                         │ proposal cache                            │
                         └─────┬──────────────────────────▲──────────┘
      process_message(bytes)   │ decode; group, epoch,    │ merge_staged_commit()
                               │ sender; membership tag   │ merge_pending_commit()
                               │ or decryption; signature │
                               ▼                          │
      ProcessedMessage.content:                           │
        ApplicationMessage   (key consumed)               │
        QueuedProposal       (cached by ProposalRef)      │
        StagedCommit ──── the caller inspects it ─────────┤
                                                          │
      commit(...) ──► CommitBundle(commit, welcome, staged = the pending commit)

Untrusted input becomes trusted only through validation: a commit is staged
on copies (``RatchetTree.copy()``, immutable ``TreeKemPrivate``, a new key
schedule) and nothing in the group changes until :meth:`Group.merge_staged_commit`.
Every failed operation leaves the group exactly as it was; the only state a
*successful* receive changes before a merge is the secret tree (a consumed
application or proposal key) and the proposal cache.

Randomness (``rng``) and time (``now_ms``, Unix milliseconds) are parameters.
``now_ms=None`` on a receive path skips the lifetime checks of received leaves,
which RFC 9420 §7.3 only RECOMMENDS (a leaf may expire in transit).
"""

from __future__ import annotations

import hmac
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from sottovoce.codec.tls import Writer
from sottovoce.crypto.labels import verify_with_label
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey, VerifyKey
from sottovoce.crypto.suite import CipherSuite, cipher_suite
from sottovoce.errors import (
    DecodeError,
    DecryptionError,
    InvalidKey,
    SignatureError,
    UnsupportedError,
    UsageError,
)
from sottovoce.limits import (
    MLS_KEY_PACKAGE_LIFETIME_MS,
    MLS_LIFETIME_SKEW_MS,
    MLS_MAX_PENDING_PROPOSALS,
    MLS_PAST_EPOCHS,
    MLS_RESUMPTION_PSK_EPOCHS,
)
from sottovoce.mls.common import (
    ContentType,
    Extension,
    ExtensionType,
    GroupContext,
    ProtocolVersion,
    SenderType,
    WireFormat,
)
from sottovoce.mls.errors import (
    InvalidMembershipTag,
    InvalidSignature,
    MlsDecodeError,
    MlsDecryptionError,
    MlsError,
)
from sottovoce.mls.framing import (
    FRAMED_CONTENT_TBS_LABEL,
    AuthenticatedContent,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
    authenticate,
    decrypt_private_content,
    decrypt_sender_data,
    protect_private,
    protect_public,
    sign_content,
)
from sottovoce.mls.key_schedule import (
    EpochSecrets,
    PreSharedKeyID,
    PSKType,
    ResumptionPSKUsage,
    external_init_receive,
    external_init_send,
    join_epoch,
    psk_secret,
    start_epoch,
    zero_secret,
)
from sottovoce.mls.messages import (
    Add,
    Capabilities,
    Commit,
    Credential,
    ExternalInit,
    ExternalPub,
    ExternalSender,
    ExternalSenders,
    GroupContextExtensions,
    GroupInfo,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    PreSharedKey,
    Proposal,
    ProposalOrRef,
    ReInit,
    Remove,
    RequiredCapabilities,
    Update,
    UpdatePath,
    Welcome,
    find_extension,
    make_proposal_ref,
)
from sottovoce.mls.proposals import (
    AppliedProposals,
    GroupError,
    GroupInactive,
    InvalidCommit,
    InvalidKeyPackage,
    InvalidProposal,
    InvalidProposalList,
    InvalidWelcome,
    MissingPsk,
    NoMatchingKeyPackage,
    OwnMessage,
    QueuedProposal,
    UnknownProposal,
    UnknownSender,
    UnsupportedCipherSuite,
    WrongEpoch,
    WrongGroup,
    apply_proposal_list,
    check_group_context_extensions,
    check_proposal,
    required_capabilities,
    validate_key_package,
)
from sottovoce.mls.public import decode_mls
from sottovoce.mls.secret_tree import PendingKey, RatchetType, SecretTree
from sottovoce.mls.transcript import (
    ConfirmedTranscriptHashInput,
    confirmation_tag,
    interim_transcript_hash,
    verify_confirmation_tag,
)
from sottovoce.mls.tree import DuplicateKey, RatchetTree, TreeError, check_leaf_node
from sottovoce.mls.treekem import (
    TreeKemPrivate,
    UpdatePathError,
    create_update_path,
    decrypt_update_path,
    merge_update_path,
)
from sottovoce.mls.welcome import (
    NewMember,
    build_welcome,
    decrypt_group_info,
    decrypt_group_secrets,
)
from sottovoce.secret import Secret

__all__ = [
    "ApplicationMessage",
    "CommitBundle",
    "ExternalJoin",
    "Group",
    "GroupConfig",
    "GroupError",
    "GroupInactive",
    "InvalidCommit",
    "InvalidKeyPackage",
    "InvalidProposal",
    "InvalidProposalList",
    "InvalidWelcome",
    "KeyPackagePrivate",
    "Member",
    "MissingPsk",
    "NoMatchingKeyPackage",
    "OwnMessage",
    "ProcessedMessage",
    "PskLookup",
    "PskStore",
    "QueuedProposal",
    "StagedCommit",
    "UnknownProposal",
    "UnknownSender",
    "UnsupportedCipherSuite",
    "WrongEpoch",
    "WrongGroup",
    "default_capabilities",
    "generate_key_package",
    "validate_key_package",
]


# --- key packages (§10) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPackagePrivate:
    """The private keys behind one KeyPackage: its ``init_key`` and its leaf's encryption key.

    Keep it until the KeyPackage is used (a Welcome arrives) or expires; the
    signing key is the caller's long-term key and is passed separately.
    """

    init_private: Secret
    encryption_private: Secret


def default_capabilities(suite: CipherSuite, credential: Credential) -> Capabilities:
    """MLS 1.0, the given suite, and the credential's own type (§7.2).

    Default extension and proposal types are implicit and are not listed.
    """
    return Capabilities(
        versions=(ProtocolVersion.MLS10,),
        cipher_suites=(suite.id,),
        credentials=(int(credential.credential_type),),
    )


def _suite_of(suite: CipherSuite | int) -> CipherSuite:
    return suite if isinstance(suite, CipherSuite) else cipher_suite(suite)


def _lifetime(now_ms: int, lifetime_ms: int) -> Lifetime:
    if now_ms < 0 or lifetime_ms <= 0:
        raise UsageError("now_ms must be non-negative and lifetime_ms positive")
    start = max(0, now_ms - MLS_LIFETIME_SKEW_MS) // 1000
    return Lifetime(not_before=start, not_after=(now_ms + lifetime_ms) // 1000)


def _check_signing_key(suite: CipherSuite, signing_key: SigningKey) -> None:
    if signing_key.scheme is not suite.signature:
        raise UsageError("signing key scheme does not match the cipher suite")


def generate_key_package(
    suite: CipherSuite | int,
    credential: Credential,
    signing_key: SigningKey,
    rng: Random,
    now_ms: int,
    lifetime_ms: int = MLS_KEY_PACKAGE_LIFETIME_MS,
    extensions: Sequence[Extension] = (),
    capabilities: Capabilities | None = None,
    leaf_extensions: Sequence[Extension] = (),
) -> tuple[KeyPackage, KeyPackagePrivate]:
    """A fresh, signed KeyPackage (§10) and its private keys.

    ``init_key`` and the leaf ``encryption_key`` are two independent HPKE key
    pairs from ``rng``; the leaf's lifetime runs from ``now_ms`` (minus a small
    clock-skew allowance) for ``lifetime_ms``. The result passes
    :func:`validate_key_package`; a caller mistake (a key of another scheme,
    extensions not listed in ``capabilities``) raises ``UsageError``.
    """
    s = _suite_of(suite)
    _check_signing_key(s, signing_key)
    caps = capabilities if capabilities is not None else default_capabilities(s, credential)
    init = s.generate_hpke_key_pair(rng)
    enc = s.generate_hpke_key_pair(rng)
    leaf = LeafNode(
        encryption_key=enc.public,
        signature_key=signing_key.verify_key.data,
        credential=credential,
        capabilities=caps,
        leaf_node_source=LeafNodeSource.KEY_PACKAGE,
        lifetime=_lifetime(now_ms, lifetime_ms),
        extensions=tuple(leaf_extensions),
    ).signed(signing_key)
    kp = KeyPackage(
        cipher_suite=s.id, init_key=init.public, leaf_node=leaf, extensions=tuple(extensions)
    ).signed(signing_key)
    try:
        validate_key_package(kp, cipher_suite_id=s.id, now_ms=now_ms)
    except MlsError as exc:
        raise UsageError(f"generated KeyPackage would be invalid: {exc}") from None
    return kp, KeyPackagePrivate(init_private=init.private, encryption_private=enc.private)


# --- configuration ------------------------------------------------------------------------

#: Looks up a pre-shared key by its id (external PSKs by ``psk_id``, or resumption
#: PSKs of other groups); ``None`` if unknown.
PskLookup = Callable[[PreSharedKeyID], bytes | Secret | None]


class PskStore:
    """A small in-memory :data:`PskLookup` for external PSKs, keyed by ``psk_id``."""

    __slots__ = ("_psks",)

    def __init__(self, psks: Mapping[bytes, bytes | Secret] | None = None) -> None:
        self._psks: dict[bytes, Secret] = {}
        for psk_id, value in (psks or {}).items():
            self.add(psk_id, value)

    def add(self, psk_id: bytes, value: bytes | Secret) -> None:
        self._psks[bytes(psk_id)] = value if isinstance(value, Secret) else Secret(value)

    def __call__(self, psk: PreSharedKeyID) -> Secret | None:
        if psk.psktype != PSKType.EXTERNAL:
            return None
        return self._psks.get(psk.psk_id)

    def __repr__(self) -> str:
        return f"PskStore({len(self._psks)} keys)"


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupConfig:
    """Per-group policy; everything has a safe default."""

    #: Wire format of our proposals and commits. PrivateMessage hides them from
    #: the delivery service (§6); PublicMessage lets it inspect them.
    handshake_wire_format: WireFormat = WireFormat.PRIVATE_MESSAGE
    #: Put the ratchet tree into the Welcome's GroupInfo (§12.4.3.3); without it
    #: joiners need the tree from elsewhere (``ratchet_tree=`` when joining).
    ratchet_tree_in_welcome: bool = True
    #: Past epochs whose application keys are kept for late messages.
    max_past_epochs: int = MLS_PAST_EPOCHS
    #: Epochs whose resumption_psk is kept (§8.6).
    max_resumption_psks: int = MLS_RESUMPTION_PSK_EPOCHS
    #: Zero octets appended to every PrivateMessage content (§6.3.1 padding).
    padding: int = 0
    #: External PSKs and resumption PSKs of other groups.
    psk_lookup: PskLookup | None = None

    def __post_init__(self) -> None:
        if self.handshake_wire_format not in (
            WireFormat.PUBLIC_MESSAGE,
            WireFormat.PRIVATE_MESSAGE,
        ):
            raise UsageError("handshake wire format must be public or private message")
        if self.max_past_epochs < 0 or self.max_resumption_psks < 1 or self.padding < 0:
            raise UsageError("invalid group configuration")


# --- public results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """A member of the group: its leaf index and leaf node."""

    index: int
    leaf: LeafNode

    @property
    def credential(self) -> Credential:
        return self.leaf.credential

    @property
    def signature_key(self) -> bytes:
        return self.leaf.signature_key

    @property
    def encryption_key(self) -> bytes:
        return self.leaf.encryption_key


@dataclass(frozen=True, slots=True)
class ApplicationMessage:
    """Decrypted application data (§6.3), already authenticated."""

    data: bytes

    def __repr__(self) -> str:
        return f"ApplicationMessage(<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class _Epoch:
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


def _verify_content(suite: CipherSuite, key: bytes, tbs: bytes, signature: bytes) -> None:
    """VerifyWithLabel(key, "FramedContentTBS", tbs, signature) (§6.1)."""
    try:
        verify_with_label(_verify_key(suite, key), FRAMED_CONTENT_TBS_LABEL, tbs, signature)
    except SignatureError:
        raise InvalidSignature("FramedContentTBS signature does not verify") from None


@dataclass(slots=True)
class _PastEpoch:
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
    _owner: object = field(repr=False)
    _base_epoch: int = field(repr=False)
    _next: _Epoch | None = field(repr=False)
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
        nxt = self._next
        if nxt is None or not 0 <= index < nxt.tree.n_leaves:
            return None
        leaf = nxt.tree.leaf(index)
        return None if leaf is None else Member(index, leaf)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitBundle:
    """What :meth:`Group.commit` produces. Send ``commit`` to the group and
    ``welcome`` to the new members; merge ``staged`` once the delivery service
    accepted the commit (:meth:`Group.merge_pending_commit`)."""

    commit: bytes
    welcome: bytes | None
    staged: StagedCommit


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalJoin:
    """The result of :meth:`Group.join_by_external_commit`: the joiner's group (already
    in the new epoch) and the commit to send. Use the group once the commit is accepted."""

    group: Group
    commit: bytes


# --- the group ------------------------------------------------------------------------------


def _verify_key(suite: CipherSuite, data: bytes) -> VerifyKey:
    try:
        return suite.verify_key(data)
    except InvalidKey:
        raise InvalidSignature("sender signature key is malformed") from None


def _decode_message(message: bytes | MLSMessage) -> MLSMessage:
    """The MLSMessage of ``message``; malformed bytes raise :class:`MlsDecodeError`,
    which is both an MLS error and a ``DecodeError`` (the codec's own is neither)."""
    return message if isinstance(message, MLSMessage) else decode_mls(MLSMessage.read, message)


def _joining_body(message: bytes | MLSMessage | Welcome | GroupInfo, what: str) -> object:
    """The body of a Welcome or GroupInfo handed to a join: bytes that do not
    decode are an invalid Welcome/GroupInfo (RFC 9420 §12.4.3), like every other
    way the joiner's input can be wrong."""
    if isinstance(message, Welcome | GroupInfo):
        return message
    try:
        return _decode_message(message).body
    except MlsDecodeError:
        raise InvalidWelcome(f"the {what} does not decode") from None


class Group:
    """One member's state of an MLS group. Not thread-safe; one instance per group.

    Build with :meth:`create`, :meth:`join_from_welcome` or
    :meth:`join_by_external_commit`.
    """

    __slots__ = (
        "_active",
        "_config",
        "_epoch",
        "_own_update_keys",
        "_past",
        "_pending_commit",
        "_proposals",
        "_reinit",
        "_removed",
        "_resumption_psks",
        "_secret_tree",
        "_signing_key",
        "_token",
        "suite",
    )

    suite: CipherSuite
    _epoch: _Epoch

    def __init__(
        self,
        *,
        suite: CipherSuite,
        signing_key: SigningKey,
        epoch: _Epoch,
        config: GroupConfig,
    ) -> None:
        """Internal; use the constructors above."""
        _check_signing_key(suite, signing_key)
        self.suite = suite
        self._signing_key = signing_key
        self._config = config
        self._epoch = epoch
        self._secret_tree = epoch.secrets.secret_tree(epoch.tree.n_leaves)
        self._proposals: OrderedDict[bytes, QueuedProposal] = OrderedDict()
        self._own_update_keys: dict[bytes, Secret] = {}
        self._past: list[tuple[int, _PastEpoch]] = []
        self._resumption_psks: OrderedDict[int, Secret] = OrderedDict(
            [(epoch.context.epoch, epoch.secrets.resumption_psk)]
        )
        self._pending_commit: StagedCommit | None = None
        self._reinit: ReInit | None = None
        self._removed = False
        self._active = True
        self._token = object()

    def __repr__(self) -> str:
        return (
            f"Group(epoch={self.epoch}, leaf={self.own_leaf_index}, "
            f"members={self._epoch.tree.member_count()}, active={self._active})"
        )

    # --- construction ---------------------------------------------------------------

    @classmethod
    def create(
        cls,
        suite: CipherSuite | int,
        *,
        credential: Credential,
        signing_key: SigningKey,
        rng: Random,
        now_ms: int,
        group_id: bytes | None = None,
        extensions: Sequence[Extension] = (),
        capabilities: Capabilities | None = None,
        leaf_extensions: Sequence[Extension] = (),
        lifetime_ms: int = MLS_KEY_PACKAGE_LIFETIME_MS,
        config: GroupConfig | None = None,
    ) -> Group:
        """A one-member group at epoch 0 (§11).

        ``group_id`` defaults to ``Nh`` random bytes (§11). ``extensions`` are the
        GroupContext extensions, e.g. ``required_capabilities`` or
        ``external_senders``; our own leaf must support them.
        """
        s = _suite_of(suite)
        _check_signing_key(s, signing_key)
        gid = group_id if group_id is not None else rng(s.nh)
        caps = capabilities if capabilities is not None else default_capabilities(s, credential)
        kp = s.generate_hpke_key_pair(rng)
        leaf = LeafNode(
            encryption_key=kp.public,
            signature_key=signing_key.verify_key.data,
            credential=credential,
            capabilities=caps,
            leaf_node_source=LeafNodeSource.KEY_PACKAGE,
            lifetime=_lifetime(now_ms, lifetime_ms),
            extensions=tuple(leaf_extensions),
        ).signed(signing_key)
        try:
            check_leaf_node(
                s,
                leaf,
                group_id=None,
                leaf_index=None,
                required_capabilities=required_capabilities(extensions),
            )
            check_group_context_extensions(extensions, [leaf])
        except MlsError as exc:
            raise UsageError(f"our leaf does not fit the group's extensions: {exc}") from None
        tree = RatchetTree.create(s, leaf)
        context = GroupContext(
            cipher_suite=s.id,
            group_id=gid,
            epoch=0,
            tree_hash=tree.tree_hash(),
            confirmed_transcript_hash=b"",
            extensions=tuple(extensions),
        )
        # §11: a random epoch secret; the interim transcript hash from the
        # confirmation tag over the empty confirmed transcript hash.
        epoch_secrets = EpochSecrets.from_epoch_secret(s, rng(s.nh))
        tag = confirmation_tag(s, epoch_secrets.confirmation_key, b"")
        epoch = _Epoch(
            context=context,
            tree=tree,
            private=TreeKemPrivate.for_leaf(s, 0, kp.private),
            secrets=epoch_secrets,
            interim_transcript_hash=interim_transcript_hash(s, b"", tag),
            confirmation_tag=tag,
        )
        return cls(suite=s, signing_key=signing_key, epoch=epoch, config=config or GroupConfig())

    @classmethod
    def join_from_welcome(
        cls,
        welcome: bytes | MLSMessage | Welcome,
        key_package: KeyPackage,
        key_package_private: KeyPackagePrivate,
        *,
        signing_key: SigningKey,
        ratchet_tree: bytes | RatchetTree | None = None,
        psk_lookup: PskLookup | None = None,
        now_ms: int | None = None,
        config: GroupConfig | None = None,
        resumed_from: Group | None = None,
    ) -> Group:
        """Join a group from a Welcome addressed to ``key_package`` (§12.4.3.1).

        The ratchet tree comes from the GroupInfo's ``ratchet_tree`` extension
        or from ``ratchet_tree`` (encoded ``optional<Node> ratchet_tree<V>``).
        Checks: our entry decrypts with the init key; every PSK is known (via
        ``psk_lookup``, the config's, or ``resumed_from``'s resumption PSKs); the
        GroupInfo decrypts; the tree is valid and hashes to the GroupContext's
        ``tree_hash``; the GroupInfo is signed by the leaf ``signer``; our leaf
        is in the tree exactly as in the KeyPackage; the path secret derives the
        tree's keys; the confirmation tag matches; and for a reinit/branch
        resumption PSK, the §11.2/§11.3 rules (epoch 1, matching parameters).

        Raises :class:`InvalidWelcome`, :class:`NoMatchingKeyPackage`,
        :class:`MissingPsk`, :class:`UnsupportedCipherSuite`, tree errors or
        signature / confirmation-tag errors.
        """
        cfg = config or GroupConfig()
        if psk_lookup is not None:
            # Kept: later PSK proposals may name the same external PSKs.
            cfg = replace(cfg, psk_lookup=psk_lookup)
        lookup = cfg.psk_lookup
        body = _joining_body(welcome, "Welcome")
        if not isinstance(body, Welcome):
            raise InvalidWelcome("message is not a Welcome")
        if body.cipher_suite != key_package.cipher_suite:
            raise UnsupportedCipherSuite("Welcome cipher suite differs from the KeyPackage's")
        try:
            suite = cipher_suite(body.cipher_suite)
        except UnsupportedError:
            raise UnsupportedCipherSuite("Welcome cipher suite is not supported") from None
        _check_signing_key(suite, signing_key)
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
        psk_values: list[tuple[PreSharedKeyID, Secret | bytes]] = []
        for psk_id in group_secrets.psks:
            if len(psk_id.psk_nonce) != suite.nh:
                raise InvalidWelcome("psk_nonce is not Nh bytes")
            value: Secret | bytes | None = None
            if resumed_from is not None:
                value = resumed_from.find_psk(psk_id)
            if value is None and lookup is not None:
                value = lookup(psk_id)
            if value is None:
                raise MissingPsk("the Welcome needs a pre-shared key we do not have")
            psk_values.append((psk_id, value))
        psk = psk_secret(suite, psk_values)

        group_info = decrypt_group_info(suite, body, group_secrets.joiner_secret, psk)
        context = group_info.group_context
        if context.cipher_suite != key_package.cipher_suite or context.version != (
            ProtocolVersion.MLS10
        ):
            raise InvalidWelcome("GroupInfo suite or version differs from the KeyPackage's")
        tree = _tree_for_join(suite, group_info, ratchet_tree)
        required = _required_or_invalid(context.extensions, InvalidWelcome)
        tree.validate(
            context.group_id,
            tree_hash=context.tree_hash,
            required_capabilities=required,
            now_ms=now_ms,
        )
        _verify_group_info(suite, tree, group_info)

        # Our leaf is the KeyPackage's, verbatim.
        my_index = tree.find_leaf_by_signature_key(key_package.leaf_node.signature_key)
        if my_index is None or tree.leaf(my_index) != key_package.leaf_node:
            raise InvalidWelcome("our KeyPackage leaf is not in the tree")
        leaf = key_package.leaf_node
        try:
            check_group_context_extensions(context.extensions, [leaf])
        except InvalidProposal:
            raise InvalidWelcome("we do not support the group's extensions") from None
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
            _check_resumption(context, group_secrets.psks, resumed_from)
        epoch = _Epoch(
            context=context,
            tree=tree,
            private=private,
            secrets=transition.epoch,
            interim_transcript_hash=interim_transcript_hash(
                suite, context.confirmed_transcript_hash, group_info.confirmation_tag
            ),
            confirmation_tag=group_info.confirmation_tag,
        )
        return cls(suite=suite, signing_key=signing_key, epoch=epoch, config=cfg)

    @classmethod
    def join_by_external_commit(
        cls,
        group_info: bytes | MLSMessage | GroupInfo,
        *,
        credential: Credential,
        signing_key: SigningKey,
        rng: Random,
        now_ms: int | None = None,
        ratchet_tree: bytes | RatchetTree | None = None,
        capabilities: Capabilities | None = None,
        leaf_extensions: Sequence[Extension] = (),
        psks: Sequence[PreSharedKeyID] = (),
        remove_leaf: int | None = None,
        authenticated_data: bytes = b"",
        config: GroupConfig | None = None,
    ) -> ExternalJoin:
        """Join by an external commit (§12.4.3.2) from a GroupInfo with ``external_pub``.

        The commit carries ExternalInit (and PSK proposals for ``psks``), and a
        Remove of ``remove_leaf`` to resync a previous appearance of ourselves
        (its credential must equal ``credential``). It is always a PublicMessage
        with an UpdatePath. Returns our group in the new epoch and the commit;
        the group is only real once the delivery service accepted the commit.

        Remote input that does not check out (bytes that do not decode, a tree or
        ``external_pub`` that does not decode or verify, a group we cannot
        support) raises :class:`InvalidWelcome`, a tree error,
        :class:`UnsupportedCipherSuite` or a signature error, never a bare
        ``DecodeError``; :class:`MissingPsk` when ``psks`` names a key the
        config's ``psk_lookup`` does not know.
        """
        cfg = config or GroupConfig()
        body = _joining_body(group_info, "GroupInfo")
        if not isinstance(body, GroupInfo):
            raise InvalidWelcome("message is not a GroupInfo")
        gi = body
        context = gi.group_context
        try:
            suite = cipher_suite(context.cipher_suite)
        except UnsupportedError:
            raise UnsupportedCipherSuite("GroupInfo cipher suite is not supported") from None
        _check_signing_key(suite, signing_key)
        tree = _tree_for_join(suite, gi, ratchet_tree)
        required = _required_or_invalid(context.extensions, InvalidWelcome)
        tree.validate(
            context.group_id, tree_hash=context.tree_hash, required_capabilities=required,
            now_ms=now_ms,
        )
        _verify_group_info(suite, tree, gi)
        ext = find_extension(gi.extensions, ExtensionType.EXTERNAL_PUB)
        if ext is None:
            raise InvalidWelcome("GroupInfo has no external_pub extension")
        try:
            external_pub = ExternalPub.decode(ext.extension_data).external_pub
        except DecodeError:  # the codec's, not an MlsError: catch the base class
            raise InvalidWelcome("external_pub does not decode") from None
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
        try:
            check_group_context_extensions(applied.extensions, [template])
        except InvalidProposal:
            raise InvalidWelcome("we do not support the group's extensions") from None
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
        lookup = cfg.psk_lookup
        psk_values: list[tuple[PreSharedKeyID, Secret | bytes]] = []
        for p in applied.psks:
            value = lookup(p) if lookup is not None else None
            if value is None:
                raise MissingPsk("no value for a pre-shared key of the external commit")
            psk_values.append((p, value))
        psk = psk_secret(suite, psk_values)

        commit = Commit(proposals=tuple(proposals), path=created.update_path)
        content = FramedContent(
            group_id=context.group_id,
            epoch=context.epoch,
            sender=sender,
            authenticated_data=authenticated_data,
            content=commit,
        )
        wf = WireFormat.PUBLIC_MESSAGE
        signature = sign_content(signing_key, wf, content, context)
        interim_before = interim_transcript_hash(
            suite, context.confirmed_transcript_hash, gi.confirmation_tag
        )
        confirmed = suite.digest(
            interim_before
            + ConfirmedTranscriptHashInput(
                wire_format=wf, content=content, signature=signature
            ).encode()
        )
        new_context = replace(
            provisional, tree_hash=staged_tree.tree_hash(), confirmed_transcript_hash=confirmed
        )
        transition = start_epoch(
            suite,
            init_secret=init_secret,
            commit_secret=created.commit_secret,
            psk_secret=psk,
            group_context=new_context,
        )
        tag = confirmation_tag(suite, transition.epoch.confirmation_key, confirmed)
        auth_content = AuthenticatedContent(
            wire_format=wf,
            content=content,
            auth=FramedContentAuthData(signature=signature, confirmation_tag=tag),
        )
        message = MLSMessage(body=protect_public(suite, auth_content, None, None)).encode()
        epoch = _Epoch(
            context=new_context,
            tree=staged_tree,
            private=created.private,
            secrets=transition.epoch,
            interim_transcript_hash=interim_transcript_hash(suite, confirmed, tag),
            confirmation_tag=tag,
        )
        group = cls(suite=suite, signing_key=signing_key, epoch=epoch, config=cfg)
        return ExternalJoin(group=group, commit=message)

    # --- reading the state -------------------------------------------------------------

    @property
    def group_id(self) -> bytes:
        return self._epoch.context.group_id

    @property
    def epoch(self) -> int:
        return self._epoch.context.epoch

    @property
    def group_context(self) -> GroupContext:
        return self._epoch.context

    @property
    def own_leaf_index(self) -> int:
        return self._epoch.private.leaf_index

    @property
    def own_leaf(self) -> LeafNode:
        leaf = self._epoch.tree.leaf(self.own_leaf_index)
        if leaf is None:  # pragma: no cover - a removed member keeps its old tree
            raise UsageError("we are not in the tree")
        return leaf

    @property
    def epoch_authenticator(self) -> Secret:
        """§8.7: equal across members iff they share the epoch's view."""
        return self._epoch.secrets.epoch_authenticator

    @property
    def confirmation_tag(self) -> bytes:
        return self._epoch.confirmation_tag

    @property
    def tree_hash(self) -> bytes:
        return self._epoch.context.tree_hash

    @property
    def is_active(self) -> bool:
        """False once we were removed or a ReInit was committed."""
        return self._active

    @property
    def removed(self) -> bool:
        return self._removed

    @property
    def pending_reinit(self) -> ReInit | None:
        """The committed ReInit this group is waiting to be replaced by (§11.2)."""
        return self._reinit

    @property
    def pending_commit(self) -> StagedCommit | None:
        return self._pending_commit

    @property
    def pending_proposals(self) -> tuple[QueuedProposal, ...]:
        return tuple(self._proposals.values())

    def members(self) -> list[Member]:
        return [Member(i, leaf) for i, leaf in self._epoch.tree.leaves()]

    def member(self, index: int) -> Member | None:
        if not 0 <= index < self._epoch.tree.n_leaves:
            return None
        leaf = self._epoch.tree.leaf(index)
        return None if leaf is None else Member(index, leaf)

    def export_ratchet_tree(self) -> bytes:
        """The encoded ratchet tree, for joiners whose Welcome does not carry it."""
        return self._epoch.tree.encode()

    # --- persistence (sottovoce.mls.state) -------------------------------------------

    def to_state(self) -> bytes:
        """Everything this member holds, as bytes to seal and store (they are secret).

        :meth:`from_state` continues exactly here; the config's ``psk_lookup``
        is not stored. See :mod:`sottovoce.mls.state`.
        """
        from sottovoce.mls.state import encode_group_state  # state imports this module

        return encode_group_state(self)

    @classmethod
    def from_state(cls, data: bytes, *, psk_lookup: PskLookup | None = None) -> Group:
        """The group :meth:`to_state` saved; raises only ``InvalidGroupState`` (a
        ``DecodeError``) on damaged or inconsistent input."""
        from sottovoce.mls.state import decode_group_state

        return decode_group_state(data, psk_lookup=psk_lookup)

    def export_secret(self, label: bytes, context: bytes, length: int) -> Secret:
        """MLS-Exporter(label, context, length) of the current epoch (§8.5)."""
        return self._epoch.secrets.exporter(label, context, length)

    def resumption_psk(self, epoch: int | None = None) -> Secret | None:
        """The resumption_psk of ``epoch`` (default: the current one) if still kept (§8.6)."""
        return self._resumption_psks.get(self.epoch if epoch is None else epoch)

    def find_psk(self, psk_id: PreSharedKeyID) -> Secret | None:
        """A :data:`PskLookup` for this group's resumption PSKs."""
        if psk_id.psktype != PSKType.RESUMPTION or psk_id.psk_group_id != self.group_id:
            return None
        return self._resumption_psks.get(psk_id.psk_epoch)

    def group_info(
        self,
        *,
        with_ratchet_tree: bool = True,
        with_external_pub: bool = True,
        extensions: Sequence[Extension] = (),
    ) -> bytes:
        """A signed MLSMessage(GroupInfo) for the current epoch (§12.4.3), for external
        joins (``external_pub``) or to publish the state."""
        gi = self._group_info(
            self._epoch,
            with_ratchet_tree=with_ratchet_tree,
            with_external_pub=with_external_pub,
            extensions=extensions,
        )
        return MLSMessage(body=gi).encode()

    def staged_group_info(
        self,
        staged: StagedCommit,
        *,
        with_ratchet_tree: bool = True,
        with_external_pub: bool = True,
    ) -> bytes | None:
        """A signed MLSMessage(GroupInfo) for the epoch ``staged`` starts, signed by us.

        A committer publishes it with its commit so external joiners see the new
        epoch before anyone merged. ``staged`` must be this group's (our pending
        commit or one we processed) for the current epoch; ``None`` when the commit
        removes us (no new epoch to describe).
        """
        if staged._owner is not self._token or staged._base_epoch != self.epoch:
            raise UsageError("this staged commit is not for this group's current epoch")
        if staged._next is None:
            return None
        gi = self._group_info(
            staged._next,
            with_ratchet_tree=with_ratchet_tree,
            with_external_pub=with_external_pub,
        )
        return MLSMessage(body=gi).encode()

    # --- sending -----------------------------------------------------------------------

    def encrypt_application(
        self, data: bytes, *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        """Encrypt application data as an MLSMessage(PrivateMessage) (§6.3).

        RFC 9420 §12.4: a member that has seen valid proposals in this epoch
        must commit them before sending application data.
        """
        self._require_active()
        if self._proposals:
            raise UsageError("commit the pending proposals before sending application data")
        content = FramedContent(
            group_id=self.group_id,
            epoch=self.epoch,
            sender=Sender.member(self.own_leaf_index),
            authenticated_data=authenticated_data,
            content=bytes(data),
        )
        auth = authenticate(
            self._signing_key, WireFormat.PRIVATE_MESSAGE, content, self._epoch.context
        )
        return self._protect(auth, rng)

    def propose(
        self, proposal: Proposal, *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        """Send ``proposal`` by itself (to be committed by reference); returns the message.

        The proposal is checked like a received one and cached, so our own next
        commit includes it.
        """
        self._require_active()
        if isinstance(proposal, Update):
            raise UsageError("use propose_update(), which keeps the new leaf's private key")
        return self._send_proposal(proposal, rng, authenticated_data)

    def propose_add(
        self, key_package: KeyPackage, *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        return self.propose(Add(key_package=key_package), rng=rng,
                            authenticated_data=authenticated_data)

    def propose_remove(
        self, leaf_index: int, *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        return self.propose(Remove(removed=leaf_index), rng=rng,
                            authenticated_data=authenticated_data)

    def leave(self, *, rng: Random) -> bytes:
        """Propose our own removal; another member must commit it (§12.2)."""
        return self.propose_remove(self.own_leaf_index, rng=rng)

    def propose_psk(
        self, psk_id: PreSharedKeyID, *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        return self.propose(PreSharedKey(psk=psk_id), rng=rng,
                            authenticated_data=authenticated_data)

    def external_psk_id(self, psk_id: bytes, *, rng: Random) -> PreSharedKeyID:
        """A PreSharedKeyID for an external PSK with a fresh nonce (§8.4)."""
        return PreSharedKeyID.external(psk_id, rng(self.suite.nh))

    def resumption_psk_id(self, epoch: int | None = None, *, rng: Random) -> PreSharedKeyID:
        """An application-usage resumption PSK id of this group (§8.6)."""
        e = self.epoch if epoch is None else epoch
        if e not in self._resumption_psks:
            raise UsageError("that epoch's resumption PSK is no longer kept")
        return PreSharedKeyID.resumption(
            ResumptionPSKUsage.APPLICATION, self.group_id, e, rng(self.suite.nh)
        )

    def propose_group_context_extensions(
        self, extensions: Sequence[Extension], *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        return self.propose(
            GroupContextExtensions(extensions=tuple(extensions)), rng=rng,
            authenticated_data=authenticated_data,
        )

    def propose_reinit(
        self,
        *,
        rng: Random,
        group_id: bytes | None = None,
        cipher_suite_id: int | None = None,
        extensions: Sequence[Extension] | None = None,
        authenticated_data: bytes = b"",
    ) -> bytes:
        """Propose reinitializing into a new group (§12.1.5, §11.2)."""
        return self.propose(self.reinit_proposal(
            rng=rng, group_id=group_id, cipher_suite_id=cipher_suite_id, extensions=extensions
        ), rng=rng, authenticated_data=authenticated_data)

    def reinit_proposal(
        self,
        *,
        rng: Random,
        group_id: bytes | None = None,
        cipher_suite_id: int | None = None,
        extensions: Sequence[Extension] | None = None,
    ) -> ReInit:
        suite_id = self.suite.id if cipher_suite_id is None else cipher_suite_id
        return ReInit(
            group_id=group_id if group_id is not None else rng(cipher_suite(suite_id).nh),
            cipher_suite=suite_id,
            extensions=tuple(self.group_context.extensions if extensions is None else extensions),
        )

    def propose_update(
        self,
        *,
        rng: Random,
        capabilities: Capabilities | None = None,
        leaf_extensions: Sequence[Extension] | None = None,
        authenticated_data: bytes = b"",
    ) -> bytes:
        """Propose a fresh leaf encryption key for ourselves (§12.1.2)."""
        self._require_active()
        kp = self.suite.generate_hpke_key_pair(rng)
        leaf = self._new_own_leaf(
            LeafNodeSource.UPDATE, kp.public, capabilities, leaf_extensions
        )
        message = self._send_proposal(Update(leaf_node=leaf), rng, authenticated_data)
        self._own_update_keys[kp.public] = kp.private
        return message

    def commit(
        self,
        *,
        rng: Random,
        now_ms: int | None = None,
        proposals: Sequence[Proposal] = (),
        include_pending: bool = True,
        with_path: bool = True,
        authenticated_data: bytes = b"",
        capabilities: Capabilities | None = None,
        leaf_extensions: Sequence[Extension] | None = None,
    ) -> CommitBundle:
        """Create a commit (§12.4.1) over ``proposals`` (by value) and, if
        ``include_pending``, the cached proposals of this epoch (by reference).

        Cached proposals are filtered as §12.2 suggests (Removes win over
        Updates, the latest Update per leaf, no duplicate Adds/PSKs, a ReInit
        only alone, none that removes us). ``with_path=False`` omits the
        UpdatePath when no covered proposal requires one (§12.4; a
        ``UsageError`` otherwise). ``capabilities``/``leaf_extensions`` change
        our leaf in the path. The result becomes the pending commit: merge it
        with :meth:`merge_pending_commit` once the delivery service accepted it.
        """
        return self._commit(
            rng=rng,
            now_ms=now_ms,
            proposals=proposals,
            include_pending=include_pending,
            with_path=with_path,
            authenticated_data=authenticated_data,
            capabilities=capabilities,
            leaf_extensions=leaf_extensions,
        )

    def add_members(
        self, key_packages: Sequence[KeyPackage], *, rng: Random, now_ms: int | None = None
    ) -> CommitBundle:
        return self.commit(
            rng=rng, now_ms=now_ms, proposals=[Add(key_package=kp) for kp in key_packages]
        )

    def remove_members(
        self, leaf_indices: Sequence[int], *, rng: Random, now_ms: int | None = None
    ) -> CommitBundle:
        return self.commit(
            rng=rng, now_ms=now_ms, proposals=[Remove(removed=i) for i in leaf_indices]
        )

    def self_update(self, *, rng: Random, now_ms: int | None = None) -> CommitBundle:
        """An empty commit with a path: fresh keys on our whole direct path (§12.4)."""
        return self.commit(rng=rng, now_ms=now_ms, include_pending=False)

    def merge_pending_commit(self) -> StagedCommit:
        """Apply our own pending commit (after the delivery service accepted it)."""
        staged = self._pending_commit
        if staged is None:
            raise UsageError("no pending commit")
        self.merge_staged_commit(staged)
        return staged

    def clear_pending_commit(self) -> None:
        """Drop our pending commit (the delivery service took another one)."""
        self._pending_commit = None

    # --- receiving -----------------------------------------------------------------------

    def process_message(
        self, message: bytes | MLSMessage, *, now_ms: int | None = None
    ) -> ProcessedMessage:
        """Authenticate and interpret a PublicMessage or PrivateMessage of this group.

        Application data comes back decrypted (its key consumed); a proposal is
        checked and cached for the epoch's commits; a commit comes back as a
        :class:`StagedCommit` to inspect and then :meth:`merge_staged_commit`.
        On any error the group is unchanged. Raises :class:`MlsDecodeError` (a
        ``DecodeError``),
        :class:`WrongGroup`, :class:`WrongEpoch`, :class:`UnknownSender`,
        :class:`OwnMessage`, membership-tag, decryption, replay and signature
        errors, and the proposal/commit validation errors.
        """
        body = _decode_message(message).body
        if isinstance(body, PublicMessage):
            if not self._active:
                raise WrongEpoch("the group moved on without us (removed or reinitialized)")
            raw = bytes(message) if not isinstance(message, MLSMessage) else None
            return self._process_public(body, raw, now_ms)
        if isinstance(body, PrivateMessage):
            if not self._active and body.content_type != ContentType.APPLICATION:
                # Late application data of our last epoch may still be read
                # (§12.4.2); handshake messages of a group we left may not.
                raise WrongEpoch("the group moved on without us (removed or reinitialized)")
            return self._process_private(body, now_ms)
        raise GroupError("not a PublicMessage or PrivateMessage")

    def merge_staged_commit(self, staged: StagedCommit) -> None:
        """Move to the epoch ``staged`` starts (§12.4.2 "consider the new GroupContext
        the current state"). Only a commit staged by this group for its current
        epoch can be merged."""
        if staged._owner is not self._token or staged._base_epoch != self.epoch:
            raise UsageError("this staged commit is not for this group's current epoch")
        if staged._pending_key is not None:
            # The PrivateMessage's handshake key: used now, so never again.
            staged._pending_key.consume()
        self._proposals.clear()
        self._own_update_keys.clear()
        self._pending_commit = None
        if staged.self_removed or staged._next is None:
            self._removed = True
            self._active = False
            return
        if self._config.max_past_epochs:
            old = self._epoch
            self._past.append(
                (
                    old.context.epoch,
                    _PastEpoch(
                        context=old.context,
                        tree=old.tree,
                        sender_data_secret=old.secrets.sender_data_secret,
                        secret_tree=self._secret_tree,
                    ),
                )
            )
            del self._past[: -self._config.max_past_epochs]
        nxt = staged._next
        self._epoch = nxt
        self._secret_tree = nxt.secrets.secret_tree(nxt.tree.n_leaves)
        self._resumption_psks[nxt.context.epoch] = nxt.secrets.resumption_psk
        while len(self._resumption_psks) > self._config.max_resumption_psks:
            self._resumption_psks.popitem(last=False)
        if staged.reinit is not None:
            # §12.4.2: a committed ReInit retires the group; wait for the Welcome.
            self._reinit = staged.reinit
            self._active = False

    # --- reinit and branch (§11.2, §11.3) -----------------------------------------------

    def reinit(
        self,
        key_packages: Sequence[KeyPackage],
        *,
        rng: Random,
        now_ms: int,
        signing_key: SigningKey | None = None,
        capabilities: Capabilities | None = None,
        config: GroupConfig | None = None,
    ) -> tuple[Group, CommitBundle]:
        """Create the group a committed ReInit asks for (§11.2): same members
        (by their new ``key_packages``), the ReInit's parameters, and a
        ``reinit`` resumption PSK of this group's current epoch. Returns the new
        group (epoch 0, with a pending commit to epoch 1) and the commit/Welcome.
        """
        reinit = self._reinit
        if reinit is None:
            raise UsageError("no ReInit was committed in this group")
        new_suite = cipher_suite(reinit.cipher_suite)
        key = signing_key if signing_key is not None else self._signing_key
        psk_id = PreSharedKeyID.resumption(
            ResumptionPSKUsage.REINIT, self.group_id, self.epoch, rng(new_suite.nh)
        )
        return self._resume_into(
            new_suite,
            group_id=reinit.group_id,
            extensions=reinit.extensions,
            key_packages=key_packages,
            psk_id=psk_id,
            usage=ResumptionPSKUsage.REINIT,
            rng=rng,
            now_ms=now_ms,
            signing_key=key,
            capabilities=capabilities,
            config=config,
        )

    def branch(
        self,
        key_packages: Sequence[KeyPackage],
        *,
        rng: Random,
        now_ms: int,
        group_id: bytes | None = None,
        extensions: Sequence[Extension] | None = None,
        config: GroupConfig | None = None,
    ) -> tuple[Group, CommitBundle]:
        """A subgroup of some members (§11.3): same version and suite, a ``branch``
        resumption PSK of this epoch. Returns the new group (with a pending
        commit to epoch 1) and the commit/Welcome for ``key_packages``."""
        self._require_active()
        psk_id = PreSharedKeyID.resumption(
            ResumptionPSKUsage.BRANCH, self.group_id, self.epoch, rng(self.suite.nh)
        )
        return self._resume_into(
            self.suite,
            group_id=group_id if group_id is not None else rng(self.suite.nh),
            extensions=self.group_context.extensions if extensions is None else extensions,
            key_packages=key_packages,
            psk_id=psk_id,
            usage=ResumptionPSKUsage.BRANCH,
            rng=rng,
            now_ms=now_ms,
            signing_key=self._signing_key,
            capabilities=None,
            config=config,
        )

    def _resume_into(
        self,
        suite: CipherSuite,
        *,
        group_id: bytes,
        extensions: Sequence[Extension],
        key_packages: Sequence[KeyPackage],
        psk_id: PreSharedKeyID,
        usage: ResumptionPSKUsage,
        rng: Random,
        now_ms: int,
        signing_key: SigningKey,
        capabilities: Capabilities | None,
        config: GroupConfig | None,
    ) -> tuple[Group, CommitBundle]:
        value = self.resumption_psk()
        if value is None:  # pragma: no cover - the current epoch's is always kept
            raise UsageError("resumption PSK of the current epoch is missing")
        new = Group.create(
            suite,
            credential=self.own_leaf.credential,
            signing_key=signing_key,
            rng=rng,
            now_ms=now_ms,
            group_id=group_id,
            extensions=extensions,
            capabilities=capabilities,
            config=config or self._config,
        )
        bundle = new._commit(
            rng=rng,
            now_ms=now_ms,
            proposals=[*(Add(key_package=kp) for kp in key_packages), PreSharedKey(psk=psk_id)],
            include_pending=False,
            with_path=True,
            extra_psks={psk_id.encode(): value},
            allowed_psk_usage=usage,
        )
        return new, bundle

    # --- internals: sending ---------------------------------------------------------------

    def _require_active(self) -> None:
        if not self._active:
            raise GroupInactive("the group is inactive (removed, or reinitialized)")

    def _new_own_leaf(
        self,
        source: LeafNodeSource,
        encryption_key: bytes,
        capabilities: Capabilities | None,
        leaf_extensions: Sequence[Extension] | None,
    ) -> LeafNode:
        current = self.own_leaf
        return replace(
            current,
            encryption_key=encryption_key,
            leaf_node_source=source,
            lifetime=None,
            parent_hash=b"",
            capabilities=current.capabilities if capabilities is None else capabilities,
            extensions=current.extensions if leaf_extensions is None else tuple(leaf_extensions),
            signature=b"",
        ).signed(self._signing_key, self.group_id, self.own_leaf_index)

    def _send_proposal(self, proposal: Proposal, rng: Random, authenticated_data: bytes) -> bytes:
        st = self._epoch
        me = Sender.member(self.own_leaf_index)
        check_proposal(self.suite, st.tree, st.context, proposal, me)
        if len(self._proposals) >= MLS_MAX_PENDING_PROPOSALS:
            raise UsageError("too many pending proposals; commit first")
        content = FramedContent(
            group_id=self.group_id,
            epoch=self.epoch,
            sender=me,
            authenticated_data=authenticated_data,
            content=proposal,
        )
        auth = authenticate(
            self._signing_key, self._config.handshake_wire_format, content, st.context
        )
        ref = auth.proposal_ref(self.suite)
        message = self._protect(auth, rng)
        self._proposals[ref] = QueuedProposal(proposal=proposal, sender=me, ref=ref)
        return message

    def _protect(self, auth: AuthenticatedContent, rng: Random) -> bytes:
        st = self._epoch
        if auth.wire_format == WireFormat.PUBLIC_MESSAGE:
            body: PublicMessage | PrivateMessage = protect_public(
                self.suite, auth, st.secrets.membership_key, st.context
            )
        else:
            body = protect_private(
                self.suite,
                auth,
                self._secret_tree,
                st.secrets.sender_data_secret,
                rng,
                padding=self._config.padding,
            )
        return MLSMessage(body=body).encode()

    def _select_pending(self, by_value: Sequence[Proposal]) -> list[QueuedProposal]:
        """The cached proposals to commit by reference, filtered per §12.2's SHOULDs."""
        own = self.own_leaf_index
        queued = list(self._proposals.values())
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
                present = self._epoch.tree.find_leaf_by_signature_key(key)
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

    def _resolve_psks(
        self,
        psk_ids: Sequence[PreSharedKeyID],
        extra: Mapping[bytes, Secret] | None = None,
    ) -> Secret:
        values: list[tuple[PreSharedKeyID, Secret | bytes]] = []
        lookup = self._config.psk_lookup
        for psk_id in psk_ids:
            value: Secret | bytes | None = None
            if extra is not None:
                value = extra.get(psk_id.encode())
            if value is None:
                value = self.find_psk(psk_id)
            if value is None and lookup is not None:
                value = lookup(psk_id)
            if value is None:
                raise MissingPsk("a committed pre-shared key is not available")
            values.append((psk_id, value))
        return psk_secret(self.suite, values)

    def _commit(
        self,
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
    ) -> CommitBundle:
        self._require_active()
        suite = self.suite
        st = self._epoch
        own = self.own_leaf_index
        me = Sender.member(own)
        if any(isinstance(p, Update) for p in proposals):
            raise UsageError("a committer does not commit an Update of its own")
        items = self._select_pending(proposals) if include_pending else []
        items += [QueuedProposal(proposal=p, sender=me) for p in proposals]
        tree = st.tree.copy()
        applied = apply_proposal_list(
            suite,
            tree,
            st.context,
            items,
            committer=own,
            now_ms=now_ms,
            allowed_psk_usage=allowed_psk_usage,
        )
        if applied.path_required and not with_path:
            raise UsageError("these proposals require an UpdatePath (§12.4)")
        provisional = replace(
            st.context, epoch=st.context.epoch + 1, extensions=applied.extensions
        )
        added = [i for i, _ in applied.adds]
        created = None
        if with_path:
            template = self.own_leaf
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
                signing_key=self._signing_key,
                group_context=provisional,
                excluded_leaves=added,
                rng=rng,
            )
            commit_secret = created.commit_secret
            private = created.private
        else:
            commit_secret = zero_secret(suite)
            private = st.private.pruned(tree)
        psk = self._resolve_psks(applied.psks, extra_psks)

        commit = Commit(
            proposals=tuple(_por(q) for q in items),
            path=None if created is None else created.update_path,
        )
        wf = self._config.handshake_wire_format
        content = FramedContent(
            group_id=self.group_id,
            epoch=self.epoch,
            sender=me,
            authenticated_data=authenticated_data,
            content=commit,
        )
        signature = sign_content(self._signing_key, wf, content, st.context)
        confirmed = suite.digest(
            st.interim_transcript_hash
            + ConfirmedTranscriptHashInput(
                wire_format=wf, content=content, signature=signature
            ).encode()
        )
        new_context = replace(
            provisional, tree_hash=tree.tree_hash(), confirmed_transcript_hash=confirmed
        )
        transition = start_epoch(
            suite,
            init_secret=st.secrets.init_secret,
            commit_secret=commit_secret,
            psk_secret=psk,
            group_context=new_context,
        )
        tag = confirmation_tag(suite, transition.epoch.confirmation_key, confirmed)
        nxt = _Epoch(
            context=new_context,
            tree=tree,
            private=private,
            secrets=transition.epoch,
            interim_transcript_hash=interim_transcript_hash(suite, confirmed, tag),
            confirmation_tag=tag,
        )
        welcome = None
        if applied.adds:
            group_info = self._group_info(
                nxt,
                with_ratchet_tree=self._config.ratchet_tree_in_welcome,
                with_external_pub=False,
            )
            welcome = build_welcome(
                suite,
                group_info=group_info,
                joiner_secret=transition.joiner_secret,
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
        auth = AuthenticatedContent(
            wire_format=wf,
            content=content,
            auth=FramedContentAuthData(signature=signature, confirmation_tag=tag),
        )
        # Last: protecting as a PrivateMessage uses a handshake key of this epoch.
        message = self._protect(auth, rng)
        staged = self._staged(
            content, applied, nxt, committer=own, has_path=created is not None,
            self_removed=False, pending_key=None,
        )
        self._pending_commit = staged
        return CommitBundle(
            commit=message,
            welcome=None if welcome is None else MLSMessage(body=welcome).encode(),
            staged=staged,
        )

    def _staged(
        self,
        content: FramedContent,
        applied: AppliedProposals,
        nxt: _Epoch | None,
        *,
        committer: int,
        has_path: bool,
        self_removed: bool,
        pending_key: PendingKey | None,
    ) -> StagedCommit:
        return StagedCommit(
            group_id=self.group_id,
            epoch=self.epoch + 1,
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
            _owner=self._token,
            _base_epoch=self.epoch,
            _next=nxt,
            _pending_key=pending_key,
        )

    def _group_info(
        self,
        epoch: _Epoch,
        *,
        with_ratchet_tree: bool,
        with_external_pub: bool,
        extensions: Sequence[Extension] = (),
    ) -> GroupInfo:
        exts = list(extensions)
        if with_ratchet_tree:
            exts.append(epoch.tree.to_extension())
        if with_external_pub:
            exts.append(
                Extension(
                    extension_type=ExtensionType.EXTERNAL_PUB,
                    extension_data=ExternalPub(
                        external_pub=epoch.secrets.external_pub()
                    ).encode(),
                )
            )
        return GroupInfo(
            group_context=epoch.context,
            extensions=tuple(exts),
            confirmation_tag=epoch.confirmation_tag,
            signer=epoch.private.leaf_index,
        ).signed(self._signing_key)

    # --- internals: receiving -------------------------------------------------------------

    def _check_group(self, group_id: bytes) -> None:
        if group_id != self.group_id:
            raise WrongGroup("message is for another group")

    def _process_public(
        self, message: PublicMessage, raw: bytes | None, now_ms: int | None
    ) -> ProcessedMessage:
        content = message.content
        self._check_group(content.group_id)
        if content.epoch != self.epoch:
            raise WrongEpoch("handshake message is not for the current epoch")
        st = self._epoch
        suite = self.suite
        sender = content.sender
        stype = sender.sender_type
        body = content.content
        if isinstance(body, bytes):
            # RFC 9420 §6: application data is never a PublicMessage.
            raise GroupError("application data in a PublicMessage")
        credential: Credential | None
        with_context = True
        if stype == SenderType.MEMBER:
            if sender.index == self.own_leaf_index:
                raise OwnMessage("our own message came back")
            leaf = _member_leaf(st.tree, sender.index)
            key, credential = leaf.signature_key, leaf.credential
        elif stype == SenderType.EXTERNAL:
            if not isinstance(body, (Add, Remove, PreSharedKey, ReInit, GroupContextExtensions)):
                raise InvalidProposal("external senders may only send certain proposals")
            ext_sender = _external_sender(st.context, sender.index)
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
        tbs = enc.tbs(st.context_bytes if with_context else None)
        if message.membership_tag is not None:
            # §6.2: MAC(membership_key, AuthenticatedContentTBM = TBS || auth).
            expected = suite.mac(st.secrets.membership_key.expose(), tbs + enc.auth)
            if not hmac.compare_digest(expected, message.membership_tag):
                raise InvalidMembershipTag("membership tag does not verify")
        _verify_content(suite, key, tbs, message.auth.signature)
        return self._handle_content(message.authenticated_content(), enc, credential, None, now_ms)

    def _process_private(self, message: PrivateMessage, now_ms: int | None) -> ProcessedMessage:
        self._check_group(message.group_id)
        suite = self.suite
        if message.epoch == self.epoch:
            context_bytes = self._epoch.context_bytes
            tree = self._epoch.tree
            sd_secret = self._epoch.secrets.sender_data_secret
            secret_tree = self._secret_tree
            current = True
        else:
            past = next((p for e, p in self._past if e == message.epoch), None)
            if past is None or message.content_type != ContentType.APPLICATION:
                raise WrongEpoch("message is not for an epoch we can read")
            context_bytes, tree = past.context.encode(), past.tree
            sd_secret, secret_tree = past.sender_data_secret, past.secret_tree
            current = False
        sender_data = decrypt_sender_data(suite, message, sd_secret)
        index = sender_data.leaf_index
        if index == self.own_leaf_index:
            raise OwnMessage("our own message came back")
        if index >= secret_tree.n_leaves:
            raise UnknownSender("sender data names a leaf outside the tree")
        leaf = _member_leaf(tree, index)
        pending = secret_tree.peek(
            index, RatchetType.for_content(message.content_type), sender_data.generation
        )
        auth = decrypt_private_content(suite, message, sender_data, pending.key, pending.nonce)
        enc = _Encoded.of(auth)
        _verify_content(suite, leaf.signature_key, enc.tbs(context_bytes), auth.auth.signature)
        if not current:
            data = auth.content.content
            if not isinstance(data, bytes):  # pragma: no cover - epoch check above
                raise WrongEpoch("handshake message is not for the current epoch")
            pending.consume()
            return self._processed(auth, leaf.credential, ApplicationMessage(data))
        return self._handle_content(auth, enc, leaf.credential, pending, now_ms)

    def _processed(
        self,
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
        self,
        auth: AuthenticatedContent,
        enc: _Encoded,
        credential: Credential | None,
        pending: PendingKey | None,
        now_ms: int | None,
    ) -> ProcessedMessage:
        body = auth.content.content
        if isinstance(body, bytes):
            if pending is None:  # pragma: no cover - unprotect_public refuses it
                raise GroupError("application data outside a PrivateMessage")
            pending.consume()
            return self._processed(auth, credential, ApplicationMessage(body))
        if isinstance(body, Commit):
            staged = self._stage_received_commit(auth, enc, body, pending, now_ms)
            return self._processed(auth, credential, staged)
        st = self._epoch
        sender = auth.content.sender
        check_proposal(self.suite, st.tree, st.context, body, sender, now_ms=now_ms)
        ref = make_proposal_ref(self.suite, enc.authenticated_content())
        if ref not in self._proposals and len(self._proposals) >= MLS_MAX_PENDING_PROPOSALS:
            raise GroupError("too many proposals in this epoch")
        if pending is not None:
            pending.consume()
        queued = QueuedProposal(proposal=body, sender=sender, ref=ref)
        self._proposals[ref] = queued
        return self._processed(auth, credential, queued)

    def _stage_received_commit(
        self,
        auth: AuthenticatedContent,
        enc: _Encoded,
        commit: Commit,
        pending: PendingKey | None,
        now_ms: int | None,
    ) -> StagedCommit:
        suite = self.suite
        st = self._epoch
        sender = auth.content.sender
        own = self.own_leaf_index
        external = sender.sender_type == SenderType.NEW_MEMBER_COMMIT
        if sender.sender_type not in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT):
            raise InvalidCommit("commit from a sender that cannot commit")

        items: list[QueuedProposal] = []
        for por in commit.proposals:
            if isinstance(por, bytes):
                if external:
                    raise InvalidCommit("an external commit holds proposals by reference")
                queued = self._proposals.get(por)
                if queued is None:
                    raise UnknownProposal("commit references a proposal we do not know")
                items.append(queued)
            else:
                items.append(QueuedProposal(proposal=por, sender=sender))

        tree = st.tree.copy()
        committer = None if external else sender.index
        applied = apply_proposal_list(
            suite, tree, st.context, items, committer=committer, now_ms=now_ms
        )
        path = commit.path
        if path is None and applied.path_required:
            raise InvalidCommit("this commit requires an UpdatePath (§12.4)")
        removed = {i for i, _ in applied.removes}
        if own in removed:
            # §12.4.2: we cannot follow into the next epoch; report and stop here.
            return self._staged(
                auth.content, applied, None, committer=-1 if committer is None else committer,
                has_path=path is not None, self_removed=True, pending_key=pending,
            )

        private = st.private
        own_update = next((leaf for i, leaf in applied.updates if i == own), None)
        if own_update is not None:
            key = self._own_update_keys.get(own_update.encryption_key)
            if key is None:
                raise InvalidCommit("commit applies an Update of ours we hold no key for")
            private = private.with_leaf_private(key)
        private = private.pruned(tree)

        provisional = replace(
            st.context, epoch=st.context.epoch + 1, extensions=applied.extensions
        )
        if path is not None:
            leaf = path.leaf_node
            sender_index = tree.leftmost_blank_leaf() if external else sender.index
            if leaf.leaf_node_source != LeafNodeSource.COMMIT:
                raise UpdatePathError("update path leaf node source is not commit")
            check_leaf_node(
                suite,
                leaf,
                group_id=self.group_id,
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
        psk = self._resolve_psks(applied.psks)
        if applied.external_init is not None:
            try:
                init_secret = external_init_receive(
                    suite,
                    st.secrets.external_key_pair().private,
                    applied.external_init.kem_output,
                )
            except (DecryptionError, InvalidKey):
                raise MlsDecryptionError("ExternalInit kem_output does not decapsulate") from None
        else:
            init_secret = st.secrets.init_secret

        confirmed = suite.digest(
            st.interim_transcript_hash + enc.confirmed_transcript_input(auth.auth.signature)
        )
        new_context = replace(
            provisional, tree_hash=tree.tree_hash(), confirmed_transcript_hash=confirmed
        )
        transition = start_epoch(
            suite,
            init_secret=init_secret,
            commit_secret=commit_secret,
            psk_secret=psk,
            group_context=new_context,
        )
        tag = auth.auth.confirmation_tag
        if tag is None:  # pragma: no cover - AuthenticatedContent guarantees it
            raise InvalidCommit("commit without confirmation tag")
        verify_confirmation_tag(suite, transition.epoch.confirmation_key, confirmed, tag)
        nxt = _Epoch(
            context=new_context,
            tree=tree,
            private=private,
            secrets=transition.epoch,
            interim_transcript_hash=interim_transcript_hash(suite, confirmed, tag),
            confirmation_tag=tag,
        )
        return self._staged(
            auth.content, applied, nxt, committer=committer_index, has_path=path is not None,
            self_removed=False, pending_key=pending,
        )


# --- module helpers ----------------------------------------------------------------------


def _por(item: QueuedProposal) -> ProposalOrRef:
    return item.ref if item.ref is not None else item.proposal


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


def _required_or_invalid(
    extensions: Sequence[Extension], error: type[GroupError]
) -> RequiredCapabilities | None:
    try:
        return required_capabilities(extensions)
    except InvalidProposal:
        raise error("required_capabilities does not decode") from None


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


def _verify_group_info(suite: CipherSuite, tree: RatchetTree, group_info: GroupInfo) -> None:
    # §12.4.3.1: signed by the leaf at `signer`; a blank signer is an error.
    signer = group_info.signer
    leaf = tree.leaf(signer) if 0 <= signer < tree.n_leaves else None
    if leaf is None:
        raise InvalidWelcome("GroupInfo signer is not a member")
    try:
        key = suite.verify_key(leaf.signature_key)
    except InvalidKey:
        raise InvalidSignature("GroupInfo signer key is malformed") from None
    group_info.verify_signature(key)


def _check_resumption(
    context: GroupContext, psks: Sequence[PreSharedKeyID], resumed_from: Group | None
) -> None:
    """§11.2 / §11.3 checks for a Welcome that resumes an older group."""
    resumption = [
        p for p in psks
        if p.psktype == PSKType.RESUMPTION
        and p.usage in (ResumptionPSKUsage.REINIT, ResumptionPSKUsage.BRANCH)
    ]
    if not resumption:
        if resumed_from is not None:
            raise InvalidWelcome("the Welcome carries no reinit/branch PSK")
        return
    psk = resumption[0]
    if context.epoch != 1:
        raise InvalidWelcome("a reinit/branch Welcome must start at epoch 1")
    if resumed_from is None:
        return
    if psk.psk_group_id != resumed_from.group_id:
        raise InvalidWelcome("the resumption PSK names another group")
    if psk.usage == ResumptionPSKUsage.REINIT:
        reinit = resumed_from.pending_reinit
        if reinit is None or psk.psk_epoch != resumed_from.epoch:
            raise InvalidWelcome("the old group did not commit a ReInit at that epoch")
        if (
            context.group_id != reinit.group_id
            or context.version != reinit.version
            or context.cipher_suite != reinit.cipher_suite
            or context.extensions != reinit.extensions
        ):
            raise InvalidWelcome("the new group does not match the ReInit proposal")
    elif (
        context.version != resumed_from.group_context.version
        or context.cipher_suite != resumed_from.group_context.cipher_suite
    ):
        raise InvalidWelcome("a branch keeps the old group's version and suite")


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

