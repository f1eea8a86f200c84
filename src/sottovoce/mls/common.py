"""Code points and the small structs every MLS module shares (RFC 9420 §17, §8.1)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError


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


E = TypeVar("E", bound=IntEnum)


def read_enum(r: Reader, enum: type[E], width: int = 1) -> E:
    """Read a ``uint8``/``uint16`` code point that must be a known value of ``enum``."""
    value = r.u8() if width == 1 else r.u16()
    try:
        return enum(value)
    except ValueError:
        raise DecodeError(f"unknown {enum.__name__} {value}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Extension:
    """RFC 9420 §7.2: ``uint16 extension_type; opaque extension_data<V>``.

    Types are kept as plain ints: unknown (and GREASE) extension types must
    survive a round trip untouched.
    """

    extension_type: int
    extension_data: bytes

    def write(self, w: Writer) -> None:
        w.u16(self.extension_type)
        w.opaque_v(self.extension_data)

    @classmethod
    def read(cls, r: Reader) -> Extension:
        return cls(extension_type=r.u16(), extension_data=r.opaque_v())


def write_extensions(w: Writer, extensions: tuple[Extension, ...]) -> None:
    w.vector_v(extensions, lambda w2, e: e.write(w2))


def read_extensions(r: Reader) -> tuple[Extension, ...]:
    exts = tuple(r.vector_v(Extension.read))
    seen: set[int] = set()
    for e in exts:
        # RFC 9420 §13.4: an extension type appears at most once in a list.
        if e.extension_type in seen:
            raise DecodeError("duplicate extension type")
        seen.add(e.extension_type)
    return exts


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupContext:
    """RFC 9420 §8.1."""

    version: int = ProtocolVersion.MLS10
    cipher_suite: int
    group_id: bytes
    epoch: int
    tree_hash: bytes
    confirmed_transcript_hash: bytes
    extensions: tuple[Extension, ...] = ()

    def write(self, w: Writer) -> None:
        w.u16(self.version)
        w.u16(self.cipher_suite)
        w.opaque_v(self.group_id)
        w.u64(self.epoch)
        w.opaque_v(self.tree_hash)
        w.opaque_v(self.confirmed_transcript_hash)
        write_extensions(w, self.extensions)

    def encode(self) -> bytes:
        w = Writer()
        self.write(w)
        return w.getvalue()

    @classmethod
    def read(cls, r: Reader) -> GroupContext:
        return cls(
            version=r.u16(),
            cipher_suite=r.u16(),
            group_id=r.opaque_v(),
            epoch=r.u64(),
            tree_hash=r.opaque_v(),
            confirmed_transcript_hash=r.opaque_v(),
            extensions=read_extensions(r),
        )

    @classmethod
    def decode(cls, data: bytes) -> GroupContext:
        return decode(cls.read, data)
