"""Message framing (RFC 9420 §6): content, authentication, public and private messages.

::

    FramedContent ──sign (FramedContentTBS)──► AuthenticatedContent
                                                   │
              ┌── membership_tag (§6.2) ───────────┤
              ▼                                    ▼
        PublicMessage                        PrivateMessage (§6.3):
          ciphertext            = AEAD(ratchet key, nonce ^ reuse_guard,
                                       PrivateMessageContent, PrivateContentAAD)
          encrypted_sender_data = AEAD(key/nonce from sender_data_secret and
                                       ciphertext[:Nh], SenderData, SenderDataAAD)

The functions here are pure: keys, the secret tree and randomness are passed
in. Verifying *which* key signed (the sender's leaf, an external sender, the
joiner's leaf) and checking group id / epoch are the group layer's job; this
module checks the cryptography and the structural rules of §6.

The structs that hold no key (``Sender``, ``FramedContent``,
``FramedContentAuthData``, ``AuthenticatedContent``, ``PublicMessage``) are
defined in :mod:`sottovoce.mls.public`, which the delivery service imports, and
re-exported here; what needs a key or the secret tree stays in this module.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from sottovoce.codec.tls import (
    OPAQUE_V,
    U32,
    U64,
    Codec,
    Encodable,
    Reader,
    TlsStruct,
    WireStruct,
    Writer,
    decode,
    tls,
    tls_struct,
)
from sottovoce.crypto.labels import sign_with_label, verify_with_label
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey, VerifyKey
from sottovoce.crypto.suite import CipherSuite
from sottovoce.errors import DecryptionError, SignatureError, UsageError
from sottovoce.limits import MAX_DECODE_BYTES
from sottovoce.mls.common import (
    ContentType,
    GroupContext,
    ProtocolVersion,
    SenderType,
    WireFormat,
    enum_of,
)
from sottovoce.mls.errors import (
    InvalidMembershipTag,
    InvalidPadding,
    InvalidSignature,
    MlsDecodeError,
    MlsDecryptionError,
    UnknownWireFormat,
    ValidationError,
)
from sottovoce.mls.messages import GroupInfo, KeyPackage, Welcome
from sottovoce.mls.public import FRAMED_CONTENT_TBS_LABEL as FRAMED_CONTENT_TBS_LABEL
from sottovoce.mls.public import AuthenticatedContent as AuthenticatedContent
from sottovoce.mls.public import Content as Content
from sottovoce.mls.public import FramedContent as FramedContent
from sottovoce.mls.public import FramedContentAuthData as FramedContentAuthData
from sottovoce.mls.public import PublicMessage as PublicMessage
from sottovoce.mls.public import Sender as Sender
from sottovoce.mls.public import content_type_of as content_type_of
from sottovoce.mls.public import decode_mls, read_content, write_content
from sottovoce.mls.public import framed_content_tbs as framed_content_tbs
from sottovoce.mls.secret_tree import PendingKey, RatchetType, SecretTree, sender_data_key_nonce
from sottovoce.secret import Secret

#: RFC 9420 §6.3.1: the reuse guard is four bytes, XORed into the nonce.
REUSE_GUARD_SIZE = 4


def _raw(value: bytes | Secret) -> bytes:
    return value.expose() if isinstance(value, Secret) else value


# --- signatures (§6.1) --------------------------------------------------------------------


def sign_content(
    key: SigningKey,
    wire_format: WireFormat,
    content: FramedContent,
    group_context: GroupContext | None,
) -> bytes:
    """SignWithLabel(key, "FramedContentTBS", FramedContentTBS)."""
    tbs = framed_content_tbs(wire_format, content, group_context)
    return sign_with_label(key, FRAMED_CONTENT_TBS_LABEL, tbs)


def authenticate(
    key: SigningKey,
    wire_format: WireFormat,
    content: FramedContent,
    group_context: GroupContext | None,
    confirmation_tag: bytes | None = None,
) -> AuthenticatedContent:
    """Sign ``content`` into an AuthenticatedContent.

    Commits need their confirmation tag, which depends on the signature
    (§8.2): sign with :func:`sign_content`, compute the tag, then build the
    AuthenticatedContent directly.
    """
    signature = sign_content(key, wire_format, content, group_context)
    auth = FramedContentAuthData(signature=signature, confirmation_tag=confirmation_tag)
    return AuthenticatedContent(wire_format=wire_format, content=content, auth=auth)


def verify_content_signature(
    key: VerifyKey, auth_content: AuthenticatedContent, group_context: GroupContext | None
) -> None:
    """Check the FramedContentTBS signature under ``key``; raises :class:`InvalidSignature`.

    The caller picks ``key`` by sender type (§6.1): the member's leaf, the
    external sender, the new member's KeyPackage or UpdatePath leaf.
    """
    tbs = auth_content.tbs(group_context)
    try:
        verify_with_label(key, FRAMED_CONTENT_TBS_LABEL, tbs, auth_content.auth.signature)
    except SignatureError:
        raise InvalidSignature("FramedContentTBS signature does not verify") from None


# --- PublicMessage (§6.2) -------------------------------------------------------------------


def _tbm(auth_content: AuthenticatedContent, group_context: GroupContext) -> bytes:
    # AuthenticatedContentTBM = FramedContentTBS || FramedContentAuthData.
    w = Writer()
    w.raw(auth_content.tbs(group_context))
    auth_content.auth.write(w)
    return w.getvalue()


def membership_tag(
    suite: CipherSuite,
    membership_key: bytes | Secret,
    auth_content: AuthenticatedContent,
    group_context: GroupContext,
) -> bytes:
    """MAC(membership_key, AuthenticatedContentTBM) (§6.2)."""
    return suite.mac(_raw(membership_key), _tbm(auth_content, group_context))


def protect_public(
    suite: CipherSuite,
    auth_content: AuthenticatedContent,
    membership_key: bytes | Secret | None,
    group_context: GroupContext | None,
) -> PublicMessage:
    """Wrap signed content as a PublicMessage, adding the membership tag for members.

    Application data must never travel as a PublicMessage (§6).
    """
    if auth_content.wire_format != WireFormat.PUBLIC_MESSAGE:
        raise UsageError("content was signed for another wire format")
    if auth_content.content.content_type == ContentType.APPLICATION:
        raise UsageError("application data must be sent as a PrivateMessage")
    tag = None
    if auth_content.content.sender.sender_type == SenderType.MEMBER:
        if membership_key is None or group_context is None:
            raise UsageError("a member's PublicMessage needs membership_key and GroupContext")
        tag = membership_tag(suite, membership_key, auth_content, group_context)
    return PublicMessage(content=auth_content.content, auth=auth_content.auth, membership_tag=tag)


def unprotect_public(
    suite: CipherSuite,
    message: PublicMessage,
    membership_key: bytes | Secret,
    group_context: GroupContext,
) -> AuthenticatedContent:
    """Check a PublicMessage's membership tag (member senders) and return its content.

    Raises :class:`InvalidMembershipTag`, or :class:`ValidationError` for
    application data. The signature is checked separately with
    :func:`verify_content_signature` once the caller knows the sender's key.
    """
    auth_content = message.authenticated_content()
    if auth_content.content.content_type == ContentType.APPLICATION:
        raise ValidationError("application data in a PublicMessage")
    if message.membership_tag is not None:
        expected = membership_tag(suite, membership_key, auth_content, group_context)
        if not hmac.compare_digest(expected, message.membership_tag):
            raise InvalidMembershipTag("membership tag does not verify")
    return auth_content


# --- PrivateMessage (§6.3) ------------------------------------------------------------------


@tls_struct
class PrivateMessage(TlsStruct):
    """RFC 9420 §6.3."""

    group_id: bytes = tls(OPAQUE_V)
    epoch: int = tls(U64)
    content_type: ContentType = tls(enum_of(ContentType))
    authenticated_data: bytes = tls(OPAQUE_V, default=b"")
    encrypted_sender_data: bytes = tls(OPAQUE_V)
    ciphertext: bytes = tls(OPAQUE_V)

    def sender_data_aad(self) -> bytes:
        """SenderDataAAD (§6.3.2)."""
        w = Writer()
        w.opaque_v(self.group_id)
        w.u64(self.epoch)
        w.u8(self.content_type)
        return w.getvalue()

    def content_aad(self) -> bytes:
        """PrivateContentAAD (§6.3.1)."""
        w = Writer()
        w.opaque_v(self.group_id)
        w.u64(self.epoch)
        w.u8(self.content_type)
        w.opaque_v(self.authenticated_data)
        return w.getvalue()


_REUSE_GUARD = Codec(Writer.raw, lambda r: r.raw(REUSE_GUARD_SIZE))


@tls_struct
class SenderData(TlsStruct):
    """RFC 9420 §6.3.2."""

    leaf_index: int = tls(U32)
    generation: int = tls(U32)
    reuse_guard: bytes = tls(_REUSE_GUARD)

    def __post_init__(self) -> None:
        if len(self.reuse_guard) != REUSE_GUARD_SIZE:
            raise UsageError("reuse_guard must be 4 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateMessageContent(Encodable):
    """RFC 9420 §6.3.1: content, auth, then ``padding`` zero octets."""

    content: Content
    auth: FramedContentAuthData
    padding: int = 0

    def write(self, w: Writer) -> None:
        write_content(w, self.content)
        self.auth.write(w)
        if self.padding:
            w.raw(bytes(self.padding))

    @classmethod
    def read(cls, r: Reader, content_type: ContentType) -> PrivateMessageContent:
        content = read_content(r, content_type)
        auth = FramedContentAuthData.read(r, content_type)
        rest = r.raw(r.remaining)
        # RFC 9420 §6.3.1: padding MUST be all zero, else the message is malformed.
        if rest.count(0) != len(rest):
            raise InvalidPadding("non-zero padding in PrivateMessageContent")
        return cls(content=content, auth=auth, padding=len(rest))

    @classmethod
    def decode(cls, data: bytes, content_type: ContentType) -> PrivateMessageContent:
        return decode(lambda r: cls.read(r, content_type), data)


def _guarded_nonce(nonce: bytes, reuse_guard: bytes) -> bytes:
    # RFC 9420 §6.3.1: XOR the reuse guard into the first four nonce bytes.
    head = int.from_bytes(nonce[:4], "big") ^ int.from_bytes(reuse_guard, "big")
    return head.to_bytes(4, "big") + nonce[4:]


def encrypt_private(
    suite: CipherSuite,
    auth_content: AuthenticatedContent,
    *,
    key: bytes | Secret,
    nonce: bytes | Secret,
    generation: int,
    reuse_guard: bytes,
    sender_data_secret: bytes | Secret,
    padding: int = 0,
) -> PrivateMessage:
    """Encrypt signed member content with an explicit ratchet key/nonce (§6.3).

    Most callers use :func:`protect_private`, which takes the key from the
    secret tree and the reuse guard from ``rng``.
    """
    content = auth_content.content
    if auth_content.wire_format != WireFormat.PRIVATE_MESSAGE:
        raise UsageError("content was signed for another wire format")
    if content.sender.sender_type != SenderType.MEMBER:
        raise UsageError("only members send PrivateMessages")
    if padding < 0:
        raise UsageError("padding must be non-negative")
    shell = PrivateMessage(
        group_id=content.group_id,
        epoch=content.epoch,
        content_type=content.content_type,
        authenticated_data=content.authenticated_data,
        encrypted_sender_data=b"",
        ciphertext=b"",
    )
    plaintext = PrivateMessageContent(
        content=content.content, auth=auth_content.auth, padding=padding
    ).encode()
    aead = suite.aead_key(_raw(key))
    ciphertext = aead.seal(_guarded_nonce(_raw(nonce), reuse_guard), plaintext, shell.content_aad())
    sender_data = SenderData(
        leaf_index=content.sender.index, generation=generation, reuse_guard=reuse_guard
    )
    sd_key, sd_nonce = sender_data_key_nonce(suite, sender_data_secret, ciphertext)
    encrypted_sender_data = suite.aead_key(sd_key).seal(
        sd_nonce, sender_data.encode(), shell.sender_data_aad()
    )
    return PrivateMessage(
        group_id=shell.group_id,
        epoch=shell.epoch,
        content_type=shell.content_type,
        authenticated_data=shell.authenticated_data,
        encrypted_sender_data=encrypted_sender_data,
        ciphertext=ciphertext,
    )


def protect_private(
    suite: CipherSuite,
    auth_content: AuthenticatedContent,
    secret_tree: SecretTree,
    sender_data_secret: bytes | Secret,
    rng: Random,
    padding: int = 0,
) -> PrivateMessage:
    """Encrypt signed member content as a PrivateMessage with our next ratchet key (§6.3).

    Consumes one generation of the sender's handshake or application ratchet.
    """
    leaf = auth_content.content.sender.index
    if auth_content.content.sender.sender_type != SenderType.MEMBER:
        raise UsageError("only members send PrivateMessages")
    ratchet = RatchetType.for_content(auth_content.content.content_type)
    generation, key, nonce = secret_tree.next_key(leaf, ratchet)
    return encrypt_private(
        suite,
        auth_content,
        key=key,
        nonce=nonce,
        generation=generation,
        reuse_guard=rng(REUSE_GUARD_SIZE),
        sender_data_secret=sender_data_secret,
        padding=padding,
    )


def decrypt_sender_data(
    suite: CipherSuite, message: PrivateMessage, sender_data_secret: bytes | Secret
) -> SenderData:
    """Open ``encrypted_sender_data`` (§6.3.2); raises :class:`MlsDecryptionError`.

    The caller must still check that ``leaf_index`` names a non-blank leaf.
    """
    sd_key, sd_nonce = sender_data_key_nonce(suite, sender_data_secret, message.ciphertext)
    try:
        plain = suite.aead_key(sd_key).open(
            sd_nonce, message.encrypted_sender_data, message.sender_data_aad()
        )
    except DecryptionError:
        raise MlsDecryptionError("sender data does not decrypt") from None
    return SenderData.decode(plain)


def decrypt_private_content(
    suite: CipherSuite,
    message: PrivateMessage,
    sender_data: SenderData,
    key: bytes | Secret,
    nonce: bytes | Secret,
) -> AuthenticatedContent:
    """Open the content with the sender's ratchet key/nonce (§6.3.1).

    Raises :class:`MlsDecryptionError`, or ``DecodeError``/:class:`InvalidPadding`
    for a malformed plaintext. The signature is not checked here.
    """
    aead = suite.aead_key(_raw(key))
    try:
        plain = aead.open(
            _guarded_nonce(_raw(nonce), sender_data.reuse_guard),
            message.ciphertext,
            message.content_aad(),
        )
    except DecryptionError:
        raise MlsDecryptionError("content does not decrypt") from None
    inner = PrivateMessageContent.decode(plain, message.content_type)
    content = FramedContent(
        group_id=message.group_id,
        epoch=message.epoch,
        sender=Sender.member(sender_data.leaf_index),
        authenticated_data=message.authenticated_data,
        content=inner.content,
    )
    return AuthenticatedContent(
        wire_format=WireFormat.PRIVATE_MESSAGE, content=content, auth=inner.auth
    )


class OpenedPrivateMessage(NamedTuple):
    """A decrypted PrivateMessage and the ratchet key it used, not yet consumed."""

    content: AuthenticatedContent
    pending_key: PendingKey


def open_private(
    suite: CipherSuite,
    message: PrivateMessage,
    secret_tree: SecretTree,
    sender_data_secret: bytes | Secret,
) -> OpenedPrivateMessage:
    """Decrypt without touching the secret tree (check, then commit).

    Call ``pending_key.consume()`` once the content is accepted (sender leaf
    non-blank per §6.3.2, signature verified); on any error the tree is
    unchanged. Raises
    :class:`MlsDecryptionError`, :class:`ValidationError` (leaf outside the
    tree), ``DecodeError`` or the secret tree's generation errors.
    """
    sender_data = decrypt_sender_data(suite, message, sender_data_secret)
    if sender_data.leaf_index >= secret_tree.n_leaves:
        raise ValidationError("sender data names a leaf outside the tree")
    ratchet = RatchetType.for_content(message.content_type)
    pending = secret_tree.peek(sender_data.leaf_index, ratchet, sender_data.generation)
    content = decrypt_private_content(suite, message, sender_data, pending.key, pending.nonce)
    return OpenedPrivateMessage(content, pending)


def unprotect_private(
    suite: CipherSuite,
    message: PrivateMessage,
    secret_tree: SecretTree,
    sender_data_secret: bytes | Secret,
) -> AuthenticatedContent:
    """:func:`open_private`, consuming the key as soon as the AEAD authenticated."""
    opened = open_private(suite, message, secret_tree, sender_data_secret)
    opened.pending_key.consume()
    return opened.content


# --- MLSMessage (§6) ----------------------------------------------------------------------

MessageBody = PublicMessage | PrivateMessage | Welcome | GroupInfo | KeyPackage

_BODY_READERS: dict[int, Callable[[Reader], MessageBody]] = {
    WireFormat.PUBLIC_MESSAGE: PublicMessage.read,
    WireFormat.PRIVATE_MESSAGE: PrivateMessage.read,
    WireFormat.WELCOME: Welcome.read,
    WireFormat.GROUP_INFO: GroupInfo.read,
    WireFormat.KEY_PACKAGE: KeyPackage.read,
}
_BODY_FORMATS: dict[type, WireFormat] = {
    PublicMessage: WireFormat.PUBLIC_MESSAGE,
    PrivateMessage: WireFormat.PRIVATE_MESSAGE,
    Welcome: WireFormat.WELCOME,
    GroupInfo: WireFormat.GROUP_INFO,
    KeyPackage: WireFormat.KEY_PACKAGE,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class MLSMessage(WireStruct):
    """RFC 9420 §6: version, wire format, and the selected body."""

    version: int = ProtocolVersion.MLS10
    body: MessageBody

    @property
    def wire_format(self) -> WireFormat:
        return _BODY_FORMATS[type(self.body)]

    def write(self, w: Writer) -> None:
        w.u16(self.version)
        w.u16(_BODY_FORMATS[type(self.body)])
        self.body.write(w)

    @classmethod
    def read(cls, r: Reader) -> MLSMessage:
        version = r.u16()
        if version != ProtocolVersion.MLS10:
            raise MlsDecodeError("unsupported MLS protocol version")
        raw_format = r.u16()
        reader = _BODY_READERS.get(raw_format)
        if reader is None:
            raise UnknownWireFormat("unknown MLS wire format")
        body: MessageBody = reader(r)
        # RFC 9420 §10: a KeyPackage's version must match its MLSMessage's.
        if isinstance(body, KeyPackage) and body.version != version:
            raise MlsDecodeError("KeyPackage version differs from MLSMessage version")
        return cls(version=version, body=body)


def decode_message(
    message: bytes | MLSMessage, *, max_bytes: int = MAX_DECODE_BYTES
) -> MLSMessage:
    """The MLSMessage of ``message``; malformed bytes raise :class:`MlsDecodeError`,
    which is both an MLS error and a ``DecodeError`` (the codec's own is neither).
    ``max_bytes``: larger for a Welcome or GroupInfo handed to a join."""
    if isinstance(message, MLSMessage):
        return message
    return decode_mls(MLSMessage.read, message, max_bytes=max_bytes)
