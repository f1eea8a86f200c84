"""RFC 9420 wire structures (§5.3, §7, §10–12), byte-exact and sans-IO.

Each struct is a frozen dataclass with ``write(w)`` / ``read(r)`` for use
inside larger structures and ``encode()`` / ``decode(data)`` for a whole
value (decoding consumes exactly and raises only ``DecodeError``). A struct
that is its fields in order is a ``codec.tls.tls_struct``: each field names
its codec once; one whose layout branches (a select) writes and reads by hand.

Selects are modelled as Python unions rather than tagged records:

* ``Proposal`` is the union of the seven proposal bodies; each body class
  carries its ``proposal_type``. ``Add.encode()`` is the bare ``Add`` struct;
  :func:`encode_proposal` is the ``Proposal`` select (type + body).
* ``ProposalOrRef`` is ``Proposal | bytes``: a ``bytes`` value is a
  ProposalRef (a reference), anything else a proposal by value.
* ``Node`` is ``LeafNode | ParentNode``; a ratchet tree is a list of
  ``Node | None`` (``None`` = blank), see :func:`read_ratchet_tree`.

Code points the RFC asks us to ignore when unknown (capabilities, extension
types) are kept as plain ints so they round-trip. Code points that select a
structure (credential, proposal, node, PSK type, leaf node source) must be
known: an unknown one leaves the rest of the bytes unparseable, so decoding
fails with ``DecodeError`` (RFC 9420 §13.5 forbids GREASE in those fields).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar, Self, get_args

from sottovoce.codec.tls import (
    OPAQUE_V,
    U16,
    U32,
    U64,
    Codec,
    Reader,
    TlsStruct,
    WireStruct,
    Writer,
    decode,
    optional_of,
    struct_of,
    tls,
    tls_struct,
    vector_of,
)
from sottovoce.crypto.labels import ref_hash, sign_with_label, verify_with_label
from sottovoce.crypto.sign import SigningKey, VerifyKey
from sottovoce.errors import DecodeError, SignatureError, UsageError
from sottovoce.limits import MAX_GROUP_DECODE_BYTES
from sottovoce.mls.common import (
    EXTENSIONS,
    CredentialType,
    Extension,
    GroupContext,
    ProposalType,
    ProtocolVersion,
    SignatureSuite,
    read_enum,
    read_extensions,
    write_extensions,
)
from sottovoce.mls.common import PreSharedKeyID as PreSharedKeyID
from sottovoce.mls.common import PSKType as PSKType
from sottovoce.mls.common import ResumptionPSKUsage as ResumptionPSKUsage
from sottovoce.mls.errors import InvalidSignature, MlsDecodeError
from sottovoce.secret import Secret

if TYPE_CHECKING:  # annotations only: these structs are parsed by the server's public
    # view (mls/public.py), which must not load the HPKE and AEAD the suite module does
    from dataclasses import Field

    from sottovoce.crypto.suite import CipherSuite

# --- code points local to these structs ---------------------------------------


class LeafNodeSource(IntEnum):
    """RFC 9420 §7.2."""

    KEY_PACKAGE = 1
    UPDATE = 2
    COMMIT = 3


class NodeType(IntEnum):
    """RFC 9420 §7.8."""

    LEAF = 1
    PARENT = 2


class ProposalOrRefType(IntEnum):
    """RFC 9420 §12.4."""

    PROPOSAL = 1
    REFERENCE = 2


# RFC 9420 §5.2 / §5.1.2 labels. RefHash labels carry the full "MLS 1.0 " text;
# SignWithLabel adds the prefix itself.
KEY_PACKAGE_REF_LABEL = b"MLS 1.0 KeyPackage Reference"
PROPOSAL_REF_LABEL = b"MLS 1.0 Proposal Reference"
LEAF_NODE_TBS_LABEL = b"LeafNodeTBS"
KEY_PACKAGE_TBS_LABEL = b"KeyPackageTBS"
GROUP_INFO_TBS_LABEL = b"GroupInfoTBS"


# Vectors of fixed-width integers are packed and unpacked in one struct call:
# capabilities and unmerged_leaves appear on every node of a large tree.


def _read_uints(r: Reader, width: int, fmt: str) -> tuple[int, ...]:
    data = r.opaque_v()
    if len(data) % width:
        raise DecodeError("integer vector length is not a multiple of its item size")
    return struct.unpack(f">{len(data) // width}{fmt}", data)


def _write_uints(w: Writer, values: tuple[int, ...], fmt: str) -> None:
    try:
        w.opaque_v(struct.pack(f">{len(values)}{fmt}", *values))
    except struct.error:
        raise UsageError("integer does not fit its vector item type") from None


#: ``uint16 items<V>`` (capability lists) and ``uint32 items<V>`` (unmerged leaves).
U16S = Codec(lambda w, v: _write_uints(w, v, "H"), lambda r: _read_uints(r, 2, "H"))
_U32S = Codec(lambda w, v: _write_uints(w, v, "I"), lambda r: _read_uints(r, 4, "I"))
#: ``opaque secret<V>`` held as a :class:`Secret`.
SECRET = Codec(lambda w, v: w.opaque_v(v.expose()), lambda r: Secret(r.opaque_v()))


def _verify(key: VerifyKey, label: bytes, tbs: bytes, signature: bytes) -> None:
    try:
        verify_with_label(key, label, tbs, signature)
    except SignatureError:
        raise InvalidSignature(f"{label.decode()} signature does not verify") from None


class _Signed(WireStruct):
    """A struct signed with SignWithLabel (§5.1.2) over its own fields: on the wire, its
    content then ``opaque signature<V>``; its TBS is the content alone (a subclass may
    bind more to it). A subclass writes the content, names ``TBS_LABEL`` and declares
    the ``signature`` field."""

    __slots__ = ()

    TBS_LABEL: ClassVar[bytes]
    signature: bytes
    if TYPE_CHECKING:  # every subclass is a dataclass, as ``replace`` needs
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def _write_content(self, w: Writer) -> None:
        raise NotImplementedError

    def write(self, w: Writer) -> None:
        self._write_content(w)
        w.opaque_v(self.signature)

    def tbs(self) -> bytes:
        """What is signed: the content, every field but the signature."""
        w = Writer()
        self._write_content(w)
        return w.getvalue()

    def signed(self, key: SigningKey) -> Self:
        """A copy carrying SignWithLabel(key, TBS_LABEL, tbs())."""
        return replace(self, signature=sign_with_label(key, self.TBS_LABEL, self.tbs()))

    def _verify_tbs(self, key: VerifyKey, tbs: bytes) -> None:
        _verify(key, self.TBS_LABEL, tbs, self.signature)


# --- credentials (§5.3) -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential(WireStruct):
    """RFC 9420 §5.3. ``identity`` for basic, ``certificates`` (DER, leaf first) for x509.

    Unknown credential types cannot be decoded (the select gives no length for
    their body) and raise ``DecodeError``; RFC 9420 §13.5 forbids GREASE here.
    """

    credential_type: CredentialType
    identity: bytes = b""
    certificates: tuple[bytes, ...] = ()

    @classmethod
    def basic(cls, identity: bytes) -> Credential:
        return cls(credential_type=CredentialType.BASIC, identity=identity)

    @classmethod
    def x509(cls, certificates: Sequence[bytes]) -> Credential:
        return cls(credential_type=CredentialType.X509, certificates=tuple(certificates))

    def write(self, w: Writer) -> None:
        w.u16(self.credential_type)
        if self.credential_type == CredentialType.BASIC:
            w.opaque_v(self.identity)
        elif self.credential_type == CredentialType.X509:
            w.vector_v(self.certificates, Writer.opaque_v)
        else:
            raise UsageError("unknown credential type")

    @classmethod
    def read(cls, r: Reader) -> Credential:
        ctype = read_enum(r, CredentialType, 2)
        if ctype == CredentialType.BASIC:
            return cls(credential_type=ctype, identity=r.opaque_v())
        return cls(credential_type=ctype, certificates=tuple(r.vector_v(Reader.opaque_v)))


# --- leaf nodes (§7.2) ------------------------------------------------------------


@tls_struct
class Capabilities(TlsStruct):
    """RFC 9420 §7.2. All lists are raw uint16 code points (unknown values are kept)."""

    versions: tuple[int, ...] = tls(U16S, default=(ProtocolVersion.MLS10,))
    cipher_suites: tuple[int, ...] = tls(U16S, default=())
    extensions: tuple[int, ...] = tls(U16S, default=())
    proposals: tuple[int, ...] = tls(U16S, default=())
    credentials: tuple[int, ...] = tls(U16S, default=())


@tls_struct
class Lifetime(TlsStruct):
    """RFC 9420 §7.2: seconds since the Unix epoch."""

    not_before: int = tls(U64)
    not_after: int = tls(U64)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeafNode(_Signed):
    """RFC 9420 §7.2.

    ``lifetime`` is present exactly for ``key_package`` leaves; ``parent_hash``
    is only encoded for ``commit`` leaves (it is ``b""`` otherwise).
    """

    TBS_LABEL: ClassVar[bytes] = LEAF_NODE_TBS_LABEL
    encryption_key: bytes
    signature_key: bytes
    credential: Credential
    capabilities: Capabilities
    leaf_node_source: LeafNodeSource
    lifetime: Lifetime | None = None
    parent_hash: bytes = b""
    extensions: tuple[Extension, ...] = ()
    signature: bytes = b""

    def __post_init__(self) -> None:
        if (self.lifetime is not None) != (self.leaf_node_source == LeafNodeSource.KEY_PACKAGE):
            raise UsageError("a LeafNode has a lifetime exactly when its source is key_package")
        if self.parent_hash and self.leaf_node_source != LeafNodeSource.COMMIT:
            raise UsageError("only a commit-source LeafNode carries a parent_hash")

    def _write_content(self, w: Writer) -> None:
        w.opaque_v(self.encryption_key)
        w.opaque_v(self.signature_key)
        self.credential.write(w)
        self.capabilities.write(w)
        w.u8(self.leaf_node_source)
        if self.lifetime is not None:
            self.lifetime.write(w)
        elif self.leaf_node_source == LeafNodeSource.COMMIT:
            w.opaque_v(self.parent_hash)
        write_extensions(w, self.extensions)

    @classmethod
    def read(cls, r: Reader) -> LeafNode:
        encryption_key = r.opaque_v()
        signature_key = r.opaque_v()
        credential = Credential.read(r)
        capabilities = Capabilities.read(r)
        source = read_enum(r, LeafNodeSource)
        lifetime = None
        parent_hash = b""
        if source == LeafNodeSource.KEY_PACKAGE:
            lifetime = Lifetime.read(r)
        elif source == LeafNodeSource.COMMIT:
            parent_hash = r.opaque_v()
        return cls(
            encryption_key=encryption_key,
            signature_key=signature_key,
            credential=credential,
            capabilities=capabilities,
            leaf_node_source=source,
            lifetime=lifetime,
            parent_hash=parent_hash,
            extensions=read_extensions(r),
            signature=r.opaque_v(),
        )

    def tbs(self, group_id: bytes | None = None, leaf_index: int | None = None) -> bytes:
        """LeafNodeTBS (§7.2): update/commit leaves are bound to group_id and leaf_index."""
        w = Writer()
        self._write_content(w)
        if self.leaf_node_source != LeafNodeSource.KEY_PACKAGE:
            if group_id is None or leaf_index is None:
                raise UsageError("update/commit LeafNodeTBS needs group_id and leaf_index")
            w.opaque_v(group_id)
            w.u32(leaf_index)
        return w.getvalue()

    def signed(
        self, key: SigningKey, group_id: bytes | None = None, leaf_index: int | None = None
    ) -> LeafNode:
        """A copy carrying SignWithLabel(key, "LeafNodeTBS", LeafNodeTBS)."""
        sig = sign_with_label(key, LEAF_NODE_TBS_LABEL, self.tbs(group_id, leaf_index))
        return replace(self, signature=sig)

    def verify_signature(
        self, suite: SignatureSuite, group_id: bytes | None = None, leaf_index: int | None = None
    ) -> None:
        """Check the signature under this leaf's own signature_key; raises InvalidSignature."""
        self._verify_tbs(suite.verify_key(self.signature_key), self.tbs(group_id, leaf_index))


def leaf_node_tbs(leaf: LeafNode, group_id: bytes | None, leaf_index: int | None) -> bytes:
    """RFC 9420 §7.2 LeafNodeTBS bytes (group_id/leaf_index ignored for key_package leaves)."""
    return leaf.tbs(group_id, leaf_index)


# --- parent nodes and the ratchet tree (§7.1, §12.4.3.3) ----------------------------


@tls_struct
class ParentNode(TlsStruct):
    """RFC 9420 §7.1."""

    encryption_key: bytes = tls(OPAQUE_V)
    parent_hash: bytes = tls(OPAQUE_V, default=b"")
    unmerged_leaves: tuple[int, ...] = tls(_U32S, default=())


Node = LeafNode | ParentNode


def write_node(w: Writer, node: Node) -> None:
    """RFC 9420 §12.4.3.3 ``Node``: a NodeType octet, then the node."""
    if isinstance(node, LeafNode):
        w.u8(NodeType.LEAF)
    else:
        w.u8(NodeType.PARENT)
    node.write(w)


def read_node(r: Reader) -> Node:
    if read_enum(r, NodeType) == NodeType.LEAF:
        return LeafNode.read(r)
    return ParentNode.read(r)


def write_optional_node(w: Writer, node: Node | None) -> None:
    """``optional<Node>`` (§2.1.1), one slot of a ratchet tree."""
    if node is None:
        w.u8(0)
    else:
        w.u8(1)
        write_node(w, node)


def read_optional_node(r: Reader) -> Node | None:
    return r.optional(read_node)


def write_ratchet_tree(w: Writer, nodes: Sequence[Node | None]) -> None:
    """``optional<Node> ratchet_tree<V>`` with trailing blanks dropped (§12.4.3.3)."""
    end = len(nodes)
    while end and nodes[end - 1] is None:
        end -= 1
    w.vector_v(nodes[:end], write_optional_node)


def read_ratchet_tree(r: Reader) -> list[Node | None]:
    """Read a ratchet tree in array order (leaf ``L`` at ``2L``), unpadded.

    Structural rules checked here (§12.4.3.3): the tree is not empty, its
    last entry is not blank, leaves sit at even and parents at odd indices.
    Padding to ``2^(d+1) - 1`` nodes is left to the tree code.
    """
    nodes = r.vector_v(read_optional_node)
    if not nodes or nodes[-1] is None:
        raise MlsDecodeError("ratchet tree is empty or ends with a blank node")
    for i, node in enumerate(nodes):
        if node is not None and isinstance(node, LeafNode) != (i % 2 == 0):
            raise MlsDecodeError("ratchet tree node type does not match its position")
    return nodes


def encode_ratchet_tree(nodes: Sequence[Node | None]) -> bytes:
    w = Writer()
    write_ratchet_tree(w, nodes)
    return w.getvalue()


def decode_ratchet_tree(data: bytes) -> list[Node | None]:
    """A ratchet tree (§12.4.3.3): up to MAX_GROUP_DECODE_BYTES, the size a room's
    largest tree needs in the suite with the largest keys (limits.py)."""
    return decode(read_ratchet_tree, data, max_bytes=MAX_GROUP_DECODE_BYTES)


_RATCHET_TREE = Codec(write_ratchet_tree, lambda r: tuple(read_ratchet_tree(r)))


# --- update paths (§7.6) ----------------------------------------------------------


@tls_struct
class HPKECiphertext(TlsStruct):
    """RFC 9420 §7.6."""

    kem_output: bytes = tls(OPAQUE_V)
    ciphertext: bytes = tls(OPAQUE_V)


@tls_struct
class UpdatePathNode(TlsStruct):
    """RFC 9420 §7.6: one ciphertext per node of the copath node's resolution."""

    encryption_key: bytes = tls(OPAQUE_V)
    encrypted_path_secret: tuple[HPKECiphertext, ...] = tls(vector_of(struct_of(HPKECiphertext)))


@tls_struct
class UpdatePath(TlsStruct):
    """RFC 9420 §7.6."""

    leaf_node: LeafNode = tls(struct_of(LeafNode))
    nodes: tuple[UpdatePathNode, ...] = tls(vector_of(struct_of(UpdatePathNode)))


# --- key packages (§10) -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPackage(_Signed):
    """RFC 9420 §10; KeyPackageTBS is every field but the signature."""

    TBS_LABEL: ClassVar[bytes] = KEY_PACKAGE_TBS_LABEL
    version: int = ProtocolVersion.MLS10
    cipher_suite: int
    init_key: bytes
    leaf_node: LeafNode
    extensions: tuple[Extension, ...] = ()
    signature: bytes = b""

    def _write_content(self, w: Writer) -> None:
        w.u16(self.version)
        w.u16(self.cipher_suite)
        w.opaque_v(self.init_key)
        self.leaf_node.write(w)
        write_extensions(w, self.extensions)

    @classmethod
    def read(cls, r: Reader) -> KeyPackage:
        return cls(
            version=r.u16(),
            cipher_suite=r.u16(),
            init_key=r.opaque_v(),
            leaf_node=LeafNode.read(r),
            extensions=read_extensions(r),
            signature=r.opaque_v(),
        )

    def verify_signature(self, suite: SignatureSuite) -> None:
        """Check under ``leaf_node.signature_key``; raises InvalidSignature."""
        self._verify_tbs(suite.verify_key(self.leaf_node.signature_key), self.tbs())

    def ref(self, suite: CipherSuite) -> bytes:
        """KeyPackageRef (§5.2), with the hash of this KeyPackage's own suite."""
        return make_key_package_ref(suite, self.encode())


def make_key_package_ref(suite: CipherSuite, encoded_key_package: bytes) -> bytes:
    """RFC 9420 §5.2 MakeKeyPackageRef over the encoded KeyPackage."""
    return ref_hash(suite, KEY_PACKAGE_REF_LABEL, encoded_key_package)


def make_proposal_ref(suite: CipherSuite, encoded_authenticated_content: bytes) -> bytes:
    """RFC 9420 §5.2 MakeProposalRef over the encoded AuthenticatedContent."""
    return ref_hash(suite, PROPOSAL_REF_LABEL, encoded_authenticated_content)


# --- pre-shared keys (§8.4) -------------------------------------------------------
# PreSharedKeyID (with PSKType, ResumptionPSKUsage) lives in common, beside the other
# shared structs; it is re-exported here for the PreSharedKey proposal and GroupSecrets.


# --- proposals (§12.1) ------------------------------------------------------------


@tls_struct
class Add(TlsStruct):
    """RFC 9420 §12.1.1."""

    proposal_type: ClassVar[ProposalType] = ProposalType.ADD
    key_package: KeyPackage = tls(struct_of(KeyPackage))


@tls_struct
class Update(TlsStruct):
    """RFC 9420 §12.1.2."""

    proposal_type: ClassVar[ProposalType] = ProposalType.UPDATE
    leaf_node: LeafNode = tls(struct_of(LeafNode))


@tls_struct
class Remove(TlsStruct):
    """RFC 9420 §12.1.3."""

    proposal_type: ClassVar[ProposalType] = ProposalType.REMOVE
    removed: int = tls(U32)


@tls_struct
class PreSharedKey(TlsStruct):
    """RFC 9420 §12.1.4."""

    proposal_type: ClassVar[ProposalType] = ProposalType.PSK
    psk: PreSharedKeyID = tls(struct_of(PreSharedKeyID))


@tls_struct
class ReInit(TlsStruct):
    """RFC 9420 §12.1.5."""

    proposal_type: ClassVar[ProposalType] = ProposalType.REINIT
    group_id: bytes = tls(OPAQUE_V)
    version: int = tls(U16, default=ProtocolVersion.MLS10)
    cipher_suite: int = tls(U16)
    extensions: tuple[Extension, ...] = tls(EXTENSIONS, default=())


@tls_struct
class ExternalInit(TlsStruct):
    """RFC 9420 §12.1.6."""

    proposal_type: ClassVar[ProposalType] = ProposalType.EXTERNAL_INIT
    kem_output: bytes = tls(OPAQUE_V)


@tls_struct
class GroupContextExtensions(TlsStruct):
    """RFC 9420 §12.1.7."""

    proposal_type: ClassVar[ProposalType] = ProposalType.GROUP_CONTEXT_EXTENSIONS
    extensions: tuple[Extension, ...] = tls(EXTENSIONS, default=())


Proposal = Add | Update | Remove | PreSharedKey | ReInit | ExternalInit | GroupContextExtensions

#: Each proposal's reader by its ``proposal_type``, from the classes of :data:`Proposal`.
_PROPOSAL_READERS: dict[ProposalType, Callable[[Reader], Proposal]] = {
    cls.proposal_type: cls.read for cls in get_args(Proposal)
}


def write_proposal(w: Writer, proposal: Proposal) -> None:
    """RFC 9420 §12.1 ``Proposal``: uint16 proposal_type, then the body."""
    w.u16(proposal.proposal_type)
    proposal.write(w)


def read_proposal(r: Reader) -> Proposal:
    ptype = read_enum(r, ProposalType, 2)
    return _PROPOSAL_READERS[ptype](r)


def encode_proposal(proposal: Proposal) -> bytes:
    w = Writer()
    write_proposal(w, proposal)
    return w.getvalue()


def decode_proposal(data: bytes) -> Proposal:
    return decode(read_proposal, data)


# --- commit (§12.4) ---------------------------------------------------------------

#: A proposal by value, or a ProposalRef (``bytes``) by reference.
ProposalOrRef = Proposal | bytes


def write_proposal_or_ref(w: Writer, item: ProposalOrRef) -> None:
    if isinstance(item, bytes):
        w.u8(ProposalOrRefType.REFERENCE)
        w.opaque_v(item)
    else:
        w.u8(ProposalOrRefType.PROPOSAL)
        write_proposal(w, item)


def read_proposal_or_ref(r: Reader) -> ProposalOrRef:
    if read_enum(r, ProposalOrRefType) == ProposalOrRefType.REFERENCE:
        return r.opaque_v()
    return read_proposal(r)


@tls_struct
class Commit(TlsStruct):
    """RFC 9420 §12.4."""

    proposals: tuple[ProposalOrRef, ...] = tls(
        vector_of(Codec(write_proposal_or_ref, read_proposal_or_ref)), default=()
    )
    path: UpdatePath | None = tls(optional_of(struct_of(UpdatePath)), default=None)


# --- group info and welcome (§12.4.3) ---------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupInfo(_Signed):
    """RFC 9420 §12.4.3; GroupInfoTBS is every field but the signature."""

    TBS_LABEL: ClassVar[bytes] = GROUP_INFO_TBS_LABEL
    group_context: GroupContext
    extensions: tuple[Extension, ...] = ()
    confirmation_tag: bytes
    signer: int
    signature: bytes = b""

    def _write_content(self, w: Writer) -> None:
        self.group_context.write(w)
        write_extensions(w, self.extensions)
        w.opaque_v(self.confirmation_tag)
        w.u32(self.signer)

    @classmethod
    def read(cls, r: Reader) -> GroupInfo:
        return cls(
            group_context=GroupContext.read(r),
            extensions=read_extensions(r),
            confirmation_tag=r.opaque_v(),
            signer=r.u32(),
            signature=r.opaque_v(),
        )

    def verify_signature(self, key: VerifyKey) -> None:
        """Check under the signer's leaf key (the caller looks it up); raises InvalidSignature."""
        self._verify_tbs(key, self.tbs())


@tls_struct
class PathSecret(TlsStruct):
    """RFC 9420 §12.4.3.1."""

    path_secret: Secret = tls(SECRET)


@tls_struct
class GroupSecrets(TlsStruct):
    """RFC 9420 §12.4.3.1 (the HPKE plaintext of a Welcome)."""

    joiner_secret: Secret = tls(SECRET)
    path_secret: PathSecret | None = tls(optional_of(struct_of(PathSecret)), default=None)
    psks: tuple[PreSharedKeyID, ...] = tls(vector_of(struct_of(PreSharedKeyID)), default=())


@tls_struct
class EncryptedGroupSecrets(TlsStruct):
    """RFC 9420 §12.4.3.1."""

    new_member: bytes = tls(OPAQUE_V)  # KeyPackageRef
    encrypted_group_secrets: HPKECiphertext = tls(struct_of(HPKECiphertext))


@tls_struct
class Welcome(TlsStruct):
    """RFC 9420 §12.4.3.1."""

    cipher_suite: int = tls(U16)
    secrets: tuple[EncryptedGroupSecrets, ...] = tls(vector_of(struct_of(EncryptedGroupSecrets)))
    encrypted_group_info: bytes = tls(OPAQUE_V)

    def find_secrets(self, key_package_ref: bytes) -> EncryptedGroupSecrets | None:
        """The entry addressed to ``key_package_ref``, if any (§12.4.3.1)."""
        for entry in self.secrets:
            if entry.new_member == key_package_ref:
                return entry
        return None


# --- extension payloads (§12.4.3.3, §11.1, §12.1.8.1, §12.4.3.2, §5.3.3) -----------------


@tls_struct
class ApplicationId(TlsStruct):
    """RFC 9420 §5.3.3 ``application_id`` leaf extension payload."""

    application_id: bytes = tls(OPAQUE_V)


@tls_struct
class RatchetTree(TlsStruct):
    """RFC 9420 §12.4.3.3 ``ratchet_tree`` extension payload (array order, blanks = None)."""

    nodes: tuple[Node | None, ...] = tls(_RATCHET_TREE)


@tls_struct
class RequiredCapabilities(TlsStruct):
    """RFC 9420 §11.1 ``required_capabilities`` group context extension payload."""

    extension_types: tuple[int, ...] = tls(U16S, default=())
    proposal_types: tuple[int, ...] = tls(U16S, default=())
    credential_types: tuple[int, ...] = tls(U16S, default=())


@tls_struct
class ExternalPub(TlsStruct):
    """RFC 9420 §12.4.3.2 ``external_pub`` GroupInfo extension payload."""

    external_pub: bytes = tls(OPAQUE_V)


@tls_struct
class ExternalSender(TlsStruct):
    """RFC 9420 §12.1.8.1: one entry of the ``external_senders`` extension."""

    signature_key: bytes = tls(OPAQUE_V)
    credential: Credential = tls(struct_of(Credential))


@tls_struct
class ExternalSenders(TlsStruct):
    """RFC 9420 §12.1.8.1 ``ExternalSender external_senders<V>`` payload."""

    senders: tuple[ExternalSender, ...] = tls(vector_of(struct_of(ExternalSender)), default=())


def find_extension(extensions: Sequence[Extension], extension_type: int) -> Extension | None:
    """The extension of ``extension_type`` in a list (there is at most one, §13.4)."""
    for ext in extensions:
        if ext.extension_type == extension_type:
            return ext
    return None

