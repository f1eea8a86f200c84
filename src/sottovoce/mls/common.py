"""Code points and the small structs every MLS module shares (RFC 9420 §17, §8.1)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Protocol, TypeVar

from sottovoce.codec.tls import (
    OPAQUE_V,
    U16,
    U64,
    Codec,
    Reader,
    TlsStruct,
    WireStruct,
    Writer,
    tls,
    tls_struct,
    write_struct,
)
from sottovoce.errors import DecodeError, UsageError

if TYPE_CHECKING:
    from sottovoce.crypto.sign import VerifyKey


class ProtocolVersion(IntEnum):
    MLS10 = 1


class WireFormat(IntEnum):
    PUBLIC_MESSAGE = 1
    PRIVATE_MESSAGE = 2
    WELCOME = 3
    GROUP_INFO = 4
    KEY_PACKAGE = 5


class ContentType(IntEnum):
    APPLICATION = 1
    PROPOSAL = 2
    COMMIT = 3


class SenderType(IntEnum):
    MEMBER = 1
    EXTERNAL = 2
    NEW_MEMBER_PROPOSAL = 3
    NEW_MEMBER_COMMIT = 4


class ProposalType(IntEnum):
    ADD = 1
    UPDATE = 2
    REMOVE = 3
    PSK = 4
    REINIT = 5
    EXTERNAL_INIT = 6
    GROUP_CONTEXT_EXTENSIONS = 7


class ExtensionType(IntEnum):
    APPLICATION_ID = 1
    RATCHET_TREE = 2
    REQUIRED_CAPABILITIES = 3
    EXTERNAL_PUB = 4
    EXTERNAL_SENDERS = 5


class CredentialType(IntEnum):
    BASIC = 1
    X509 = 2


class SignatureSuite(Protocol):
    """What checking a signed MLS struct needs of a cipher suite (RFC 9420 §17.1): its
    id and its signature scheme. ``crypto.suite.CipherSuite`` is one; so is the public
    view's ``PublicSuite``, which carries no HPKE or AEAD."""

    @property
    def id(self) -> int: ...

    def verify_key(self, public: bytes) -> VerifyKey: ...


E = TypeVar("E", bound=IntEnum)


def read_enum(r: Reader, enum: type[E], width: int = 1) -> E:
    """Read a ``uint8``/``uint16`` code point that must be a known value of ``enum``."""
    value = r.u8() if width == 1 else r.u16()
    try:
        return enum(value)
    except ValueError:
        raise DecodeError(f"unknown {enum.__name__} {value}") from None


def enum_of(enum: type[IntEnum], width: int = 1) -> Codec:
    """A ``uint8`` (or ``uint16``) code point that must be a known value of ``enum``."""
    return Codec(Writer.u8 if width == 1 else Writer.u16, lambda r: read_enum(r, enum, width))


@tls_struct
class Extension(TlsStruct):
    """RFC 9420 §7.2: ``uint16 extension_type; opaque extension_data<V>``.

    Types are kept as plain ints: unknown (and GREASE) extension types must
    survive a round trip untouched.
    """

    extension_type: int = tls(U16)
    extension_data: bytes = tls(OPAQUE_V)


def write_extensions(w: Writer, extensions: tuple[Extension, ...]) -> None:
    w.vector_v(extensions, write_struct)


def read_extensions(r: Reader) -> tuple[Extension, ...]:
    exts = tuple(r.vector_v(Extension.read))
    seen: set[int] = set()
    for e in exts:
        # RFC 9420 §13.4: an extension type appears at most once in a list.
        if e.extension_type in seen:
            raise DecodeError("duplicate extension type")
        seen.add(e.extension_type)
    return exts


#: ``Extension extensions<V>``, each type at most once.
EXTENSIONS = Codec(write_extensions, read_extensions)


@tls_struct
class GroupContext(TlsStruct):
    """RFC 9420 §8.1."""

    version: int = tls(U16, default=ProtocolVersion.MLS10)
    cipher_suite: int = tls(U16)
    group_id: bytes = tls(OPAQUE_V)
    epoch: int = tls(U64)
    tree_hash: bytes = tls(OPAQUE_V)
    confirmed_transcript_hash: bytes = tls(OPAQUE_V)
    extensions: tuple[Extension, ...] = tls(EXTENSIONS, default=())


# --- pre-shared key ids (§8.4) --------------------------------------------------------
# Plain wire data (no key material), shared by the PreSharedKey proposal, GroupSecrets
# and the key schedule that turns the keys they name into psk_secret.


class PSKType(IntEnum):
    EXTERNAL = 1
    RESUMPTION = 2


class ResumptionPSKUsage(IntEnum):
    APPLICATION = 1
    REINIT = 2
    BRANCH = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class PreSharedKeyID(WireStruct):
    """RFC 9420 §8.4 PreSharedKeyID; build with :meth:`external` or :meth:`resumption`.

    For an external PSK only ``psk_id`` is meaningful; for a resumption PSK only
    ``usage``, ``psk_group_id`` and ``psk_epoch``. A fresh ``psk_nonce`` of Nh
    bytes is required when injecting (§8.4); the group layer checks its length.
    """

    psktype: PSKType
    psk_nonce: bytes
    psk_id: bytes = b""
    usage: ResumptionPSKUsage | None = None
    psk_group_id: bytes = b""
    psk_epoch: int = 0

    def __post_init__(self) -> None:
        # Structs validate themselves: a malformed one cannot exist.
        try:
            object.__setattr__(self, "psktype", PSKType(self.psktype))
            if self.usage is not None:
                object.__setattr__(self, "usage", ResumptionPSKUsage(self.usage))
        except ValueError:
            raise UsageError("unknown PSK type or resumption usage") from None
        if self.psktype is PSKType.EXTERNAL:
            if self.usage is not None or self.psk_group_id or self.psk_epoch:
                raise UsageError("an external PSK id carries only psk_id")
        elif self.psktype is PSKType.RESUMPTION:
            if self.usage is None or self.psk_id:
                raise UsageError("a resumption PSK id needs usage and no psk_id")
            if not 0 <= self.psk_epoch < 1 << 64:
                raise UsageError("psk_epoch is not a uint64")

    @classmethod
    def external(cls, psk_id: bytes, psk_nonce: bytes) -> PreSharedKeyID:
        return cls(psktype=PSKType.EXTERNAL, psk_id=psk_id, psk_nonce=psk_nonce)

    @classmethod
    def resumption(
        cls, usage: ResumptionPSKUsage, psk_group_id: bytes, psk_epoch: int, psk_nonce: bytes
    ) -> PreSharedKeyID:
        return cls(
            psktype=PSKType.RESUMPTION,
            usage=usage,
            psk_group_id=psk_group_id,
            psk_epoch=psk_epoch,
            psk_nonce=psk_nonce,
        )

    def write(self, w: Writer) -> None:
        w.u8(self.psktype)
        if self.psktype is PSKType.EXTERNAL:
            w.opaque_v(self.psk_id)
        else:
            if self.usage is None:  # pragma: no cover - excluded by __post_init__
                raise UsageError("a resumption PSK id needs usage")
            w.u8(self.usage)
            w.opaque_v(self.psk_group_id)
            w.u64(self.psk_epoch)
        w.opaque_v(self.psk_nonce)

    @classmethod
    def read(cls, r: Reader) -> PreSharedKeyID:
        psktype = read_enum(r, PSKType)
        if psktype is PSKType.EXTERNAL:
            return cls.external(psk_id=r.opaque_v(), psk_nonce=r.opaque_v())
        usage = read_enum(r, ResumptionPSKUsage)
        group_id = r.opaque_v()
        epoch = r.u64()
        return cls.resumption(usage, group_id, epoch, r.opaque_v())
