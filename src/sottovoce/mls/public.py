"""The public view of an MLS group (RFC 9420): what anyone may parse and check
without a secret, which is what the delivery service may check.

::

    PublicMessage commit ──check_member_commit(bytes, PublicGroupInfo, proposals)──► MemberCommit
        §6.2 framing; a member sender of the GroupInfo's epoch whose leaf signed the
        FramedContentTBS; every proposal by reference carried beside it, signed by its
        own member sender (what a room's rules need: who proposed what)
    PublicMessage commit ──check_external_commit(bytes, GroupContext)──► ExternalCommit
        §6.2 framing; sender new_member_commit; group id and epoch; §12.2 list of an
        external commit; FramedContentTBS signed by the UpdatePath leaf it adds
        (and that leaf's own signature once its leaf index is known, §7.3)
    GroupInfo ──check_group_info(bytes)──► PublicGroupInfo
        §12.4.3: signed by the ``signer`` leaf of its ratchet tree (or a given key)
    KeyPackage ──check_key_package(KeyPackage)──► PublicSuite
        §10.1 without group policy: suite, version, leaf node, lifetime, signatures

The §6 framing structs that carry no key material live here too (``Sender``,
``FramedContent``, ``FramedContentAuthData``, ``AuthenticatedContent``,
``PublicMessage``); :mod:`sottovoce.mls.framing` re-exports them and adds what
needs keys (membership tags, PrivateMessage encryption).

What this module may import is the point of it: the codec, signature checks,
hashes and the pure wire structs of :mod:`~sottovoce.mls.common` and
:mod:`~sottovoce.mls.messages` -- never the key schedule, the secret tree, TreeKEM,
HPKE or AEAD. The server imports this module and nothing else of ``mls/``; a test
walks what it pulls in. A suite is therefore a :class:`PublicSuite` here (hash and
signature scheme), read from :mod:`sottovoce.crypto.mls_suites`, the table
``crypto.suite`` is built on too.

None of these checks makes a message trustworthy for a member: membership tags,
confirmation tags and the key schedule (only members can check them) still decide.
They let the delivery service refuse what no member could ever accept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from sottovoce.codec.tls import Encodable, Reader, WireStruct, Writer, decode
from sottovoce.crypto.labels import verify_with_label
from sottovoce.crypto.mls_suites import PublicSuite, suite_entry
from sottovoce.errors import (
    DecodeError,
    InvalidKey,
    SignatureError,
    UnsupportedError,
    UsageError,
)
from sottovoce.limits import MAX_DECODE_BYTES
from sottovoce.mls.common import (
    ContentType,
    CredentialType,
    ExtensionType,
    GroupContext,
    PreSharedKeyID,
    ProposalType,
    ProtocolVersion,
    PSKType,
    SenderType,
    SignatureSuite,
    WireFormat,
    read_enum,
)
from sottovoce.mls.errors import (
    InvalidCommit,
    InvalidKeyPackage,
    InvalidLeafNode,
    InvalidProposal,
    InvalidProposalList,
    InvalidSignature,
    InvalidWelcome,
    MlsDecodeError,
    MlsError,
    TreeError,
    UnknownWireFormat,
    UnsupportedCipherSuite,
    WrongEpoch,
    WrongGroup,
)
from sottovoce.mls.messages import (
    GROUP_INFO_TBS_LABEL,
    PROPOSAL_REF_LABEL,
    Commit,
    ExternalInit,
    ExternalPub,
    GroupInfo,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    Node,
    PreSharedKey,
    Proposal,
    Remove,
    RequiredCapabilities,
    decode_ratchet_tree,
    find_extension,
    make_proposal_ref,
    read_proposal,
    write_proposal,
)

if TYPE_CHECKING:
    from sottovoce.crypto.suite import CipherSuite

__all__ = [
    "DEFAULT_EXTENSIONS",
    "DEFAULT_PROPOSALS",
    "FRAMED_CONTENT_TBS_LABEL",
    "AuthenticatedContent",
    "Content",
    "ExternalCommit",
    "FramedContent",
    "FramedContentAuthData",
    "MemberCommit",
    "MlsError",
    "PublicGroupInfo",
    "PublicMessage",
    "PublicSuite",
    "Sender",
    "check_external_commit",
    "check_group_info",
    "check_key_package",
    "check_leaf_node",
    "check_member_commit",
    "content_type_of",
    "decode_key_package",
    "decode_mls",
    "decode_public",
    "external_pub_of",
    "framed_content_tbs",
    "is_external_commit",
    "leaf_identity",
    "public_suite",
    "read_content",
    "verify_group_info",
    "verify_labeled",
    "write_content",
]

# RFC 9420 §7.2: default extension and proposal types are supported implicitly
# (they MUST NOT even be listed in capabilities).
DEFAULT_EXTENSIONS = frozenset(int(e) for e in ExtensionType)
DEFAULT_PROPOSALS = frozenset(int(p) for p in ProposalType)


# --- cipher suites, as far as public checks need them (§17.1) ------------------------


def public_suite(suite_id: int) -> PublicSuite:
    """The suite ``suite_id``; raises :class:`UnsupportedCipherSuite` for one we lack."""
    try:
        _, hash_, scheme = suite_entry(suite_id)
    except UnsupportedError as exc:
        raise UnsupportedCipherSuite(str(exc)) from None
    return PublicSuite(suite_id, hash_, scheme)


def verify_labeled(
    suite: SignatureSuite, key: bytes, label: bytes, tbs: bytes, sig: bytes
) -> None:
    """VerifyWithLabel (§5.1.2) under the public key ``key`` (as it came from a leaf or
    an extension); a key that does not decode or a bad signature raises InvalidSignature."""
    try:
        verify_with_label(suite.verify_key(key), label, tbs, sig)
    except (SignatureError, InvalidKey):
        raise InvalidSignature(f"{label.decode()} signature does not verify") from None


# --- §6 framing without keys --------------------------------------------------------


#: RFC 9420 §6.1 SignWithLabel label for FramedContentTBS.
FRAMED_CONTENT_TBS_LABEL = b"FramedContentTBS"

#: ``application_data`` (bytes), a Proposal, or a Commit (§6 FramedContent select).
Content = bytes | Proposal | Commit


def content_type_of(content: Content) -> ContentType:
    if isinstance(content, bytes):
        return ContentType.APPLICATION
    if isinstance(content, Commit):
        return ContentType.COMMIT
    return ContentType.PROPOSAL


def write_content(w: Writer, content: Content) -> None:
    if isinstance(content, bytes):
        w.opaque_v(content)
    elif isinstance(content, Commit):
        content.write(w)
    else:
        write_proposal(w, content)


def read_content(r: Reader, content_type: ContentType) -> Content:
    if content_type == ContentType.APPLICATION:
        return r.opaque_v()
    if content_type == ContentType.PROPOSAL:
        return read_proposal(r)
    return Commit.read(r)


# --- Sender and FramedContent (§6) ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Sender(WireStruct):
    """RFC 9420 §6. ``index`` is the leaf index (member) or sender index (external)."""

    sender_type: SenderType
    index: int = 0

    def __post_init__(self) -> None:
        if self.index and self.sender_type in (
            SenderType.NEW_MEMBER_PROPOSAL,
            SenderType.NEW_MEMBER_COMMIT,
        ):
            raise UsageError("new-member senders carry no index")

    @classmethod
    def member(cls, leaf_index: int) -> Sender:
        return cls(sender_type=SenderType.MEMBER, index=leaf_index)

    @classmethod
    def external(cls, sender_index: int) -> Sender:
        return cls(sender_type=SenderType.EXTERNAL, index=sender_index)

    @classmethod
    def new_member_proposal(cls) -> Sender:
        return cls(sender_type=SenderType.NEW_MEMBER_PROPOSAL)

    @classmethod
    def new_member_commit(cls) -> Sender:
        return cls(sender_type=SenderType.NEW_MEMBER_COMMIT)

    def write(self, w: Writer) -> None:
        w.u8(self.sender_type)
        if self.sender_type in (SenderType.MEMBER, SenderType.EXTERNAL):
            w.u32(self.index)

    @classmethod
    def read(cls, r: Reader) -> Sender:
        sender_type = read_enum(r, SenderType)
        if sender_type in (SenderType.MEMBER, SenderType.EXTERNAL):
            return cls(sender_type=sender_type, index=r.u32())
        return cls(sender_type=sender_type)


@dataclass(frozen=True, slots=True, kw_only=True)
class FramedContent(WireStruct):
    """RFC 9420 §6."""

    group_id: bytes
    epoch: int
    sender: Sender
    authenticated_data: bytes = b""
    content: Content

    @property
    def content_type(self) -> ContentType:
        return content_type_of(self.content)

    def write(self, w: Writer) -> None:
        w.opaque_v(self.group_id)
        w.u64(self.epoch)
        self.sender.write(w)
        w.opaque_v(self.authenticated_data)
        w.u8(content_type_of(self.content))
        write_content(w, self.content)

    @classmethod
    def read(cls, r: Reader) -> FramedContent:
        group_id = r.opaque_v()
        epoch = r.u64()
        sender = Sender.read(r)
        authenticated_data = r.opaque_v()
        content = read_content(r, read_enum(r, ContentType))
        return cls(
            group_id=group_id,
            epoch=epoch,
            sender=sender,
            authenticated_data=authenticated_data,
            content=content,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FramedContentAuthData(Encodable):
    """RFC 9420 §6.1: the signature, plus the confirmation tag for commits.

    Its layout depends on the enclosing content type, so ``read``/``decode``
    take that content type.
    """

    signature: bytes
    confirmation_tag: bytes | None = None

    def write(self, w: Writer) -> None:
        w.opaque_v(self.signature)
        if self.confirmation_tag is not None:
            w.opaque_v(self.confirmation_tag)

    @classmethod
    def read(cls, r: Reader, content_type: ContentType) -> FramedContentAuthData:
        signature = r.opaque_v()
        tag = r.opaque_v() if content_type == ContentType.COMMIT else None
        return cls(signature=signature, confirmation_tag=tag)

    @classmethod
    def decode(cls, data: bytes, content_type: ContentType) -> FramedContentAuthData:
        return decode(lambda r: cls.read(r, content_type), data)


def _check_auth(content: FramedContent, auth: FramedContentAuthData) -> None:
    # RFC 9420 §6.1: a confirmation tag exactly when the content is a commit.
    if (auth.confirmation_tag is not None) != isinstance(content.content, Commit):
        raise UsageError("confirmation_tag must be present exactly for commits")


def framed_content_tbs(
    wire_format: WireFormat, content: FramedContent, group_context: GroupContext | None
) -> bytes:
    """FramedContentTBS (§6.1). The GroupContext is included for member and
    new_member_commit senders (and must then be given); it is ignored otherwise."""
    w = Writer()
    w.u16(ProtocolVersion.MLS10)
    w.u16(wire_format)
    content.write(w)
    if content.sender.sender_type in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT):
        if group_context is None:
            raise UsageError("FramedContentTBS for this sender needs the GroupContext")
        group_context.write(w)
    return w.getvalue()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticatedContent(WireStruct):
    """RFC 9420 §6: what the group layer processes, whatever the wire protection."""

    wire_format: WireFormat
    content: FramedContent
    auth: FramedContentAuthData

    def __post_init__(self) -> None:
        _check_auth(self.content, self.auth)

    def write(self, w: Writer) -> None:
        w.u16(self.wire_format)
        self.content.write(w)
        self.auth.write(w)

    @classmethod
    def read(cls, r: Reader) -> AuthenticatedContent:
        wire_format = read_enum(r, WireFormat, 2)
        if wire_format not in (WireFormat.PUBLIC_MESSAGE, WireFormat.PRIVATE_MESSAGE):
            raise MlsDecodeError("AuthenticatedContent wire format must be public or private")
        content = FramedContent.read(r)
        auth = FramedContentAuthData.read(r, content.content_type)
        return cls(wire_format=wire_format, content=content, auth=auth)

    def tbs(self, group_context: GroupContext | None) -> bytes:
        return framed_content_tbs(self.wire_format, self.content, group_context)

    def proposal_ref(self, suite: CipherSuite) -> bytes:
        """ProposalRef (§5.2) of the proposal this content carries."""
        if self.content.content_type != ContentType.PROPOSAL:
            raise UsageError("only proposal content has a ProposalRef")
        return make_proposal_ref(suite, self.encode())


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicMessage(WireStruct):
    """RFC 9420 §6.2. ``membership_tag`` is present exactly for member senders."""

    content: FramedContent
    auth: FramedContentAuthData
    membership_tag: bytes | None = None

    def __post_init__(self) -> None:
        _check_auth(self.content, self.auth)
        if (self.membership_tag is not None) != (
            self.content.sender.sender_type == SenderType.MEMBER
        ):
            raise UsageError("membership_tag must be present exactly for member senders")

    def write(self, w: Writer) -> None:
        self.content.write(w)
        self.auth.write(w)
        if self.membership_tag is not None:
            w.opaque_v(self.membership_tag)

    @classmethod
    def read(cls, r: Reader) -> PublicMessage:
        content = FramedContent.read(r)
        auth = FramedContentAuthData.read(r, content.content_type)
        tag = r.opaque_v() if content.sender.sender_type == SenderType.MEMBER else None
        return cls(content=content, auth=auth, membership_tag=tag)

    def authenticated_content(self) -> AuthenticatedContent:
        """The AuthenticatedContent, without checking the membership tag."""
        return AuthenticatedContent(
            wire_format=WireFormat.PUBLIC_MESSAGE, content=self.content, auth=self.auth
        )


# --- MLSMessage with a public body (§6) -----------------------------------------------

T = TypeVar("T")


def decode_mls(
    read: Callable[[Reader], T], data: bytes, *, max_bytes: int = MAX_DECODE_BYTES
) -> T:
    """``codec.decode`` for MLS input: malformed bytes raise :class:`MlsDecodeError`, which
    is a ``DecodeError`` and an MLS error (the codec's own is only the first)."""
    try:
        return decode(read, data, max_bytes=max_bytes)
    except MlsDecodeError:
        raise
    except DecodeError as exc:
        raise MlsDecodeError(f"MLS message does not decode: {exc}") from None


def _read_public(r: Reader) -> PublicMessage | GroupInfo | KeyPackage:
    if r.u16() != ProtocolVersion.MLS10:
        raise MlsDecodeError("unsupported MLS protocol version")
    wire_format = r.u16()
    if wire_format == WireFormat.PUBLIC_MESSAGE:
        return PublicMessage.read(r)
    if wire_format == WireFormat.GROUP_INFO:
        return GroupInfo.read(r)
    if wire_format == WireFormat.KEY_PACKAGE:
        key_package = KeyPackage.read(r)
        # RFC 9420 §10: a KeyPackage's version must match its MLSMessage's.
        if key_package.version != ProtocolVersion.MLS10:
            raise MlsDecodeError("KeyPackage version differs from MLSMessage version")
        return key_package
    if wire_format in (WireFormat.PRIVATE_MESSAGE, WireFormat.WELCOME):
        raise MlsDecodeError("an encrypted MLS message has no public view")
    raise UnknownWireFormat("unknown MLS wire format")


def decode_public(data: bytes) -> PublicMessage | GroupInfo | KeyPackage:
    """The body of an MLSMessage (§6) that is a PublicMessage, GroupInfo or KeyPackage.

    Anything else, or bytes that do not decode exactly, raise :class:`MlsDecodeError`.
    """
    return decode_mls(_read_public, data)


B = TypeVar("B", PublicMessage, GroupInfo, KeyPackage)


def _decode_body(data: bytes, kind: type[B], error: type[MlsError], what: str) -> B:
    """A peer's MLSMessage that must carry a ``kind``: anything else is an ``error``."""
    try:
        body = decode_public(data)
    except MlsDecodeError:
        raise error(f"the {what} does not decode") from None
    if not isinstance(body, kind):
        raise error(f"the message is not a {what}")
    return body


# --- leaf nodes and KeyPackages (§7.3, §10.1) ----------------------------------------


def check_leaf_node(
    suite: SignatureSuite,
    leaf: LeafNode,
    *,
    group_id: bytes | None,
    leaf_index: int | None,
    required_capabilities: RequiredCapabilities | None = None,
    now_ms: int | None = None,
) -> None:
    """The leaf-local checks of RFC 9420 §7.3 (everything that needs no other leaf).

    * the signature under the leaf's own ``signature_key``, over LeafNodeTBS with
      ``group_id``/``leaf_index`` for ``update``/``commit`` leaves;
    * the credential type is listed in its own capabilities (§7.2);
    * every non-default extension in the leaf is listed in its capabilities;
    * the group's ``required_capabilities``, if given, are all listed;
    * the lifetime covers ``now_ms`` if ``now_ms`` is given (key_package leaves).

    Credential *validation* (is this identity acceptable?) is the application's
    and stays with the group layer. Raises :class:`InvalidSignature` or
    :class:`InvalidLeafNode`.
    """
    try:
        leaf.verify_signature(suite, group_id, leaf_index)
    except InvalidKey:
        raise InvalidSignature("leaf node signature key is malformed") from None
    caps = leaf.capabilities
    if int(leaf.credential.credential_type) not in caps.credentials:
        raise InvalidLeafNode("leaf credential type is not in its own capabilities")
    for ext in leaf.extensions:
        if ext.extension_type not in DEFAULT_EXTENSIONS and ext.extension_type not in (
            caps.extensions
        ):
            raise InvalidLeafNode("leaf carries an extension its capabilities do not list")
    if required_capabilities is not None:
        rc = required_capabilities
        if any(e not in DEFAULT_EXTENSIONS and e not in caps.extensions
               for e in rc.extension_types):
            raise InvalidLeafNode("leaf does not support a required extension")
        if any(p not in DEFAULT_PROPOSALS and p not in caps.proposals
               for p in rc.proposal_types):
            raise InvalidLeafNode("leaf does not support a required proposal type")
        # §11.1: credential types are never implicitly supported.
        if any(c not in caps.credentials for c in rc.credential_types):
            raise InvalidLeafNode("leaf does not support a required credential type")
    if now_ms is not None and leaf.lifetime is not None:
        now_s = now_ms // 1000
        if not leaf.lifetime.not_before <= now_s <= leaf.lifetime.not_after:
            raise InvalidLeafNode("leaf node lifetime does not cover the current time")


def check_key_package(
    key_package: KeyPackage,
    *,
    cipher_suite_id: int | None = None,
    version: int = ProtocolVersion.MLS10,
    required: RequiredCapabilities | None = None,
    now_ms: int | None = None,
) -> PublicSuite:
    """RFC 9420 §10.1: is ``key_package`` well formed, signed and current?

    Checks the version, the cipher suite (a known one, equal to ``cipher_suite_id``
    when given: the group's), that the leaf node is a valid ``key_package`` leaf
    (:func:`check_leaf_node`, with the group's ``required`` capabilities and the
    lifetime covering ``now_ms`` when given) advertising the version and suite, the
    KeyPackage signature, that ``init_key`` differs from the leaf's
    ``encryption_key``, and that the KeyPackage's own extensions are listed in its
    capabilities. Returns the suite.

    Raises :class:`UnsupportedCipherSuite` for a suite we do not know or that
    differs from the group's, :class:`InvalidKeyPackage` or
    :class:`InvalidSignature` otherwise.
    """
    if key_package.version != version:
        raise InvalidKeyPackage("KeyPackage protocol version differs from the group's")
    if cipher_suite_id is not None and key_package.cipher_suite != cipher_suite_id:
        raise UnsupportedCipherSuite("KeyPackage cipher suite differs from the group's")
    suite = public_suite(key_package.cipher_suite)
    leaf = key_package.leaf_node
    if leaf.leaf_node_source != LeafNodeSource.KEY_PACKAGE:
        raise InvalidKeyPackage("KeyPackage leaf node source is not key_package")
    caps = leaf.capabilities
    if version not in caps.versions or key_package.cipher_suite not in caps.cipher_suites:
        raise InvalidKeyPackage("KeyPackage leaf does not advertise its version and suite")
    try:
        check_leaf_node(
            suite, leaf, group_id=None, leaf_index=None, required_capabilities=required,
            now_ms=now_ms,
        )
    except TreeError as exc:
        raise InvalidKeyPackage(f"KeyPackage leaf node is invalid: {exc}") from None
    try:
        key_package.verify_signature(suite)
    except InvalidKey:
        raise InvalidSignature("KeyPackage signature key is malformed") from None
    if key_package.init_key == leaf.encryption_key:
        raise InvalidKeyPackage("KeyPackage init_key equals the leaf encryption_key")
    for ext in key_package.extensions:
        if ext.extension_type not in DEFAULT_EXTENSIONS and ext.extension_type not in (
            caps.extensions
        ):
            raise InvalidKeyPackage("KeyPackage carries an extension its capabilities omit")
    return suite


def leaf_identity(leaf: LeafNode) -> bytes | None:
    """The identity of a leaf's basic credential (§5.3); ``None`` for another type."""
    credential = leaf.credential
    return credential.identity if credential.credential_type == CredentialType.BASIC else None


def decode_key_package(data: bytes) -> KeyPackage:
    """An MLSMessage(KeyPackage) from a peer; anything else is an :class:`InvalidKeyPackage`."""
    return _decode_body(data, KeyPackage, InvalidKeyPackage, "KeyPackage")


# --- GroupInfo (§12.4.3) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicGroupInfo:
    """A GroupInfo whose signature verified, with its public tree and ``external_pub``."""

    group_info: GroupInfo
    suite: PublicSuite
    #: The ``ratchet_tree`` extension's leaves by leaf index (``None`` = blank);
    #: empty when the GroupInfo carries no tree.
    leaves: tuple[LeafNode | None, ...]
    #: The ``external_pub`` extension's HPKE public key, if present (§12.4.3.2).
    external_pub: bytes | None

    @property
    def context(self) -> GroupContext:
        return self.group_info.group_context

    def joiner_index(self, removed: int | None = None) -> int:
        """The leaf an external joiner takes (§12.4.2, §7.7 add): the leftmost blank
        leaf once ``removed`` is blanked, else the first leaf past the tree."""
        for index, leaf in enumerate(self.leaves):
            if leaf is None or index == removed:
                return index
        return len(self.leaves)


def _leaves(nodes: Sequence[Node | None]) -> tuple[LeafNode | None, ...]:
    # Array order (RFC 9420 appendix C): leaf L is node 2L; decode checked node types.
    return tuple(n if isinstance(n, LeafNode) else None for n in nodes[::2])


def check_group_info(
    data: bytes | GroupInfo, *, signer_key: bytes | None = None
) -> PublicGroupInfo:
    """A GroupInfo (§12.4.3) checked without secrets: it decodes, names a known suite
    and version, its extensions decode, and it is signed by its ``signer`` leaf in
    its own ratchet tree -- or, without a tree, by ``signer_key``. With both, the
    signer leaf must hold ``signer_key``.

    Raises :class:`InvalidWelcome`, :class:`UnsupportedCipherSuite` or
    :class:`InvalidSignature`. Whether the tree hashes to the GroupContext's
    ``tree_hash`` and every leaf in it is valid is checked by a joiner (it needs
    the whole tree); the signature binds the tree to the signer either way.
    """
    info = data if isinstance(data, GroupInfo) else _decode_body(
        data, GroupInfo, InvalidWelcome, "GroupInfo"
    )
    context = info.group_context
    if context.version != ProtocolVersion.MLS10:
        raise InvalidWelcome("the GroupInfo names another protocol version")
    suite = public_suite(context.cipher_suite)
    leaves: tuple[LeafNode | None, ...] = ()
    tree = find_extension(info.extensions, ExtensionType.RATCHET_TREE)
    if tree is not None:
        try:
            leaves = _leaves(decode_ratchet_tree(tree.extension_data))
        except DecodeError:
            raise InvalidWelcome("the ratchet tree does not decode") from None
    external_pub = external_pub_of(info)
    if leaves:
        signer = leaves[info.signer] if info.signer < len(leaves) else None
        if signer is not None and signer_key is not None and signer.signature_key != signer_key:
            raise InvalidWelcome("the GroupInfo signer leaf does not hold the expected key")
        verify_group_info(suite, info, signer)
    elif signer_key is not None:
        verify_labeled(suite, signer_key, GROUP_INFO_TBS_LABEL, info.tbs(), info.signature)
    else:
        raise InvalidWelcome("a GroupInfo without its ratchet tree needs the signer's key")
    return PublicGroupInfo(group_info=info, suite=suite, leaves=leaves, external_pub=external_pub)


def verify_group_info(suite: SignatureSuite, info: GroupInfo, signer: LeafNode | None) -> None:
    """§12.4.3.1: ``info`` is signed by ``signer``, the leaf at its ``signer`` index
    (``None`` when that leaf is blank or outside the tree, which is an error)."""
    if signer is None:
        raise InvalidWelcome("the GroupInfo signer is not a member")
    verify_labeled(suite, signer.signature_key, GROUP_INFO_TBS_LABEL, info.tbs(), info.signature)


def external_pub_of(info: GroupInfo) -> bytes | None:
    """The HPKE public key of ``info``'s ``external_pub`` extension (§12.4.3.2), if any;
    one that does not decode is an :class:`InvalidWelcome`."""
    ext = find_extension(info.extensions, ExtensionType.EXTERNAL_PUB)
    if ext is None:
        return None
    try:
        return ExternalPub.decode(ext.extension_data).external_pub
    except DecodeError:
        raise InvalidWelcome("external_pub does not decode") from None


# --- external commits (§12.4.3.2) ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalCommit:
    """An external commit that passed the public checks of :func:`check_external_commit`."""

    message: PublicMessage
    commit: Commit
    #: The joiner's new leaf (the UpdatePath's): its key signed the commit.
    leaf: LeafNode
    #: The leaf a Remove frees for a resync of the same client (§12.2), if any.
    removed: int | None
    #: The PreSharedKey proposals' ids, in order (§8.4).
    psks: tuple[PreSharedKeyID, ...]

    @property
    def joiner_identity(self) -> bytes | None:
        """The identity of the new leaf's basic credential (§5.3); ``None`` for another type."""
        return leaf_identity(self.leaf)

    @property
    def external_psk_ids(self) -> tuple[bytes, ...]:
        """The ``psk_id`` of every external PSK the commit injects (§8.4)."""
        return tuple(p.psk_id for p in self.psks if p.psktype == PSKType.EXTERNAL)


def _external_proposals(
    suite: PublicSuite, proposals: Sequence[Proposal | bytes]
) -> tuple[int | None, tuple[PreSharedKeyID, ...]]:
    # §12.2: by value only; exactly one ExternalInit, at most one Remove, PSKs, nothing else.
    inits, removes, psks = 0, list[int](), list[PreSharedKeyID]()
    for item in proposals:
        if isinstance(item, bytes):
            raise InvalidCommit("an external commit holds proposals by reference")
        if isinstance(item, ExternalInit):
            inits += 1
        elif isinstance(item, Remove):
            removes.append(item.removed)
        elif isinstance(item, PreSharedKey):
            # §12.1.4: a fresh nonce of Nh bytes.
            if len(item.psk.psk_nonce) != suite.nh:
                raise InvalidProposal("psk_nonce is not Nh bytes")
            psks.append(item.psk)
        else:
            raise InvalidProposalList("an external commit carries a forbidden proposal")
    if inits != 1:
        raise InvalidProposalList("an external commit needs exactly one ExternalInit")
    if len(removes) > 1:
        raise InvalidProposalList("an external commit removes at most one leaf")
    if len({p.encode() for p in psks}) != len(psks):
        raise InvalidProposalList("the same PreSharedKeyID twice")
    return (removes[0] if removes else None), tuple(psks)


def is_external_commit(data: bytes) -> bool:
    """Whether ``data`` is an MLSMessage(PublicMessage) from a ``new_member_commit`` sender
    (an external commit, §12.4.3.2, to be checked with :func:`check_external_commit`);
    anything else -- a PrivateMessage above all -- is not, and is not read further."""
    try:
        message = decode_public(data)
    except MlsDecodeError:
        return False
    return (
        isinstance(message, PublicMessage)
        and message.content.sender.sender_type == SenderType.NEW_MEMBER_COMMIT
    )


def check_external_commit(
    data: bytes, group_info: PublicGroupInfo, *, now_ms: int | None = None
) -> ExternalCommit:
    """What the delivery service can check of an external commit (§12.4.3.2) into the
    epoch ``group_info`` describes (the one the joiner used), without any key:

    * it is an MLSMessage(PublicMessage) carrying a Commit from a ``new_member_commit``
      sender (§6), for ``group_info``'s group id and epoch;
    * its proposals follow §12.2 for external commits and it has an UpdatePath (§12.4);
    * FramedContentTBS (with the GroupContext, §6.1) is signed by the key in the
      UpdatePath's leaf, the leaf it adds; when ``group_info`` carries the tree, that
      leaf's own signature is checked at the index it takes (§7.3) and a Remove must
      name a leaf of the same credential (a resync, §12.2).

    Raises :class:`MlsDecodeError`, :class:`InvalidCommit` (and its list/proposal
    kin), :class:`WrongGroup`, :class:`WrongEpoch`, :class:`InvalidSignature` or
    :class:`InvalidLeafNode`.
    """
    message = decode_public(data)
    if not isinstance(message, PublicMessage):
        raise InvalidCommit("an external commit is a PublicMessage")
    content = message.content
    commit = content.content
    if not isinstance(commit, Commit):
        raise InvalidCommit("the message does not carry a commit")
    if content.sender.sender_type != SenderType.NEW_MEMBER_COMMIT:
        raise InvalidCommit("the commit's sender is not a new_member_commit")
    context = group_info.context
    if content.group_id != context.group_id:
        raise WrongGroup("the commit is for another group")
    if content.epoch != context.epoch:
        raise WrongEpoch("the commit is not for the group's current epoch")
    suite = group_info.suite
    removed, psks = _external_proposals(suite, commit.proposals)
    path = commit.path
    if path is None:
        raise InvalidCommit("an external commit needs an UpdatePath")
    leaf = path.leaf_node
    if leaf.leaf_node_source != LeafNodeSource.COMMIT:
        raise InvalidCommit("the UpdatePath leaf's source is not commit")
    if message.auth.confirmation_tag is None or len(message.auth.confirmation_tag) != suite.nh:
        raise InvalidCommit("the confirmation tag is not Nh bytes")
    tbs = framed_content_tbs(WireFormat.PUBLIC_MESSAGE, content, context)
    verify_labeled(
        suite, leaf.signature_key, FRAMED_CONTENT_TBS_LABEL, tbs, message.auth.signature
    )
    if group_info.leaves:
        if removed is not None:
            old = group_info.leaves[removed] if removed < len(group_info.leaves) else None
            if old is None or old.credential != leaf.credential:
                raise InvalidProposalList("an external resync must remove its own leaf")
        check_leaf_node(
            suite, leaf, group_id=context.group_id,
            leaf_index=group_info.joiner_index(removed), now_ms=now_ms,
        )
    return ExternalCommit(message=message, commit=commit, leaf=leaf, removed=removed, psks=psks)


# --- member commits (§12.4) -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberCommit:
    """A member's commit that passed :func:`check_member_commit`."""

    message: PublicMessage
    commit: Commit
    #: The committer's leaf index in the epoch the commit was made in.
    committer: int
    #: Every proposal the commit covers, in order, with the leaf index of its sender
    #: (the committer for a proposal by value, §12.4).
    proposals: tuple[tuple[int, Proposal], ...]


def _member_signed(
    data: bytes, group_info: PublicGroupInfo, what: str
) -> tuple[PublicMessage, int]:
    """A PublicMessage of ``group_info``'s group and epoch from a member whose leaf
    (in ``group_info``'s tree) signed it; its sender's leaf index."""
    try:
        message = decode_public(data)
    except MlsDecodeError:
        raise InvalidCommit(f"the {what} is not a PublicMessage") from None
    if not isinstance(message, PublicMessage):
        raise InvalidCommit(f"the {what} is not a PublicMessage")
    content = message.content
    context = group_info.context
    if content.sender.sender_type != SenderType.MEMBER:
        raise InvalidCommit(f"the {what}'s sender is not a member")
    if content.group_id != context.group_id:
        raise WrongGroup(f"the {what} is for another group")
    if content.epoch != context.epoch:
        raise WrongEpoch(f"the {what} is not for the group's current epoch")
    index = content.sender.index
    leaf = group_info.leaves[index] if index < len(group_info.leaves) else None
    if leaf is None:
        raise InvalidCommit(f"the {what}'s sender is not a member")
    tbs = framed_content_tbs(WireFormat.PUBLIC_MESSAGE, content, context)
    verify_labeled(
        group_info.suite, leaf.signature_key, FRAMED_CONTENT_TBS_LABEL, tbs,
        message.auth.signature,
    )
    return message, index


def _proposal_ref(suite: PublicSuite, message: PublicMessage) -> bytes:
    # §5.2: MakeProposalRef = RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent).
    w = Writer()
    w.opaque_v(PROPOSAL_REF_LABEL)
    w.opaque_v(message.authenticated_content().encode())
    return suite.digest(w.getvalue())


def check_member_commit(
    data: bytes, group_info: PublicGroupInfo, proposals: Sequence[bytes] = ()
) -> MemberCommit:
    """What the delivery service can check of a member's commit into the epoch
    ``group_info`` describes (its GroupInfo must carry the ratchet tree):

    * it is an MLSMessage(PublicMessage) carrying a Commit from a ``member`` sender
      (§6.2), for ``group_info``'s group id and epoch;
    * FramedContentTBS (with the GroupContext, §6.1) is signed by the sender's leaf;
    * every proposal it holds by reference is one of ``proposals`` (MLSMessages of
      this epoch), each a PublicMessage signed by its own member sender.

    The membership tag and the confirmation tag need the epoch's secrets: members
    check them. Raises :class:`MlsDecodeError`, :class:`InvalidCommit`,
    :class:`WrongGroup`, :class:`WrongEpoch` or :class:`InvalidSignature`.
    """
    if not group_info.leaves:
        raise InvalidCommit("the GroupInfo carries no ratchet tree to check a commit by")
    message, committer = _member_signed(data, group_info, "commit")
    commit = message.content.content
    if not isinstance(commit, Commit):
        raise InvalidCommit("the message does not carry a commit")
    by_ref: dict[bytes, tuple[int, Proposal]] = {}
    for raw in proposals:
        prop_message, sender = _member_signed(raw, group_info, "proposal")
        proposal = prop_message.content.content
        if isinstance(proposal, (bytes, Commit)):
            raise InvalidCommit("a referenced message does not carry a proposal")
        by_ref[_proposal_ref(group_info.suite, prop_message)] = (sender, proposal)
    covered: list[tuple[int, Proposal]] = []
    for item in commit.proposals:
        if isinstance(item, bytes):
            found = by_ref.get(item)
            if found is None:
                raise InvalidCommit("the commit references a proposal it does not carry")
            covered.append(found)
        else:
            covered.append((committer, item))
    return MemberCommit(
        message=message, commit=commit, committer=committer, proposals=tuple(covered)
    )
