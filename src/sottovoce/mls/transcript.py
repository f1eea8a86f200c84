"""Transcript hashes and the confirmation tag (RFC 9420 §8.2, §6.1).

::

    interim[n-1] ──┐
                   ├─ Hash(interim[n-1] || ConfirmedTranscriptHashInput) ─► confirmed[n]
    commit (wire_format, content, signature) ┘                                 │
                                                                               ▼
    confirmation_tag = MAC(confirmation_key[n], confirmed[n])                  │
                   └─ Hash(confirmed[n] || InterimTranscriptHashInput) ──► interim[n]

Both hashes start as the empty string at epoch 0.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sottovoce.codec.tls import OPAQUE_V, Reader, TlsStruct, WireStruct, Writer, tls, tls_struct
from sottovoce.crypto.suite import CipherSuite
from sottovoce.errors import UsageError
from sottovoce.mls.common import ContentType, WireFormat, read_enum
from sottovoce.mls.errors import InvalidConfirmationTag, MlsDecodeError
from sottovoce.mls.framing import AuthenticatedContent, FramedContent
from sottovoce.secret import Secret


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmedTranscriptHashInput(WireStruct):
    """RFC 9420 §8.2: the commit's AuthenticatedContent up to its signature."""

    wire_format: WireFormat
    content: FramedContent
    signature: bytes

    def __post_init__(self) -> None:
        if self.content.content_type != ContentType.COMMIT:
            raise UsageError("transcript hashes cover commits only")

    @classmethod
    def from_authenticated(cls, auth_content: AuthenticatedContent) -> ConfirmedTranscriptHashInput:
        return cls(
            wire_format=auth_content.wire_format,
            content=auth_content.content,
            signature=auth_content.auth.signature,
        )

    def write(self, w: Writer) -> None:
        w.u16(self.wire_format)
        self.content.write(w)
        w.opaque_v(self.signature)

    @classmethod
    def read(cls, r: Reader) -> ConfirmedTranscriptHashInput:
        wire_format = read_enum(r, WireFormat, 2)
        content = FramedContent.read(r)
        if content.content_type != ContentType.COMMIT:
            raise MlsDecodeError("ConfirmedTranscriptHashInput must carry a commit")
        return cls(wire_format=wire_format, content=content, signature=r.opaque_v())


@tls_struct
class InterimTranscriptHashInput(TlsStruct):
    """RFC 9420 §8.2."""

    confirmation_tag: bytes = tls(OPAQUE_V)


def confirmed_transcript_hash(
    suite: CipherSuite, interim_transcript_hash: bytes, auth_content: AuthenticatedContent
) -> bytes:
    """confirmed[n] = Hash(interim[n-1] || ConfirmedTranscriptHashInput[n])."""
    data = ConfirmedTranscriptHashInput.from_authenticated(auth_content).encode()
    return suite.digest(interim_transcript_hash + data)


def interim_transcript_hash(
    suite: CipherSuite, confirmed_transcript_hash: bytes, confirmation_tag: bytes
) -> bytes:
    """interim[n] = Hash(confirmed[n] || InterimTranscriptHashInput[n])."""
    data = InterimTranscriptHashInput(confirmation_tag=confirmation_tag).encode()
    return suite.digest(confirmed_transcript_hash + data)


def confirmation_tag(
    suite: CipherSuite, confirmation_key: bytes | Secret, confirmed_transcript_hash: bytes
) -> bytes:
    """MAC(confirmation_key, confirmed_transcript_hash) (§6.1)."""
    key = confirmation_key.expose() if isinstance(confirmation_key, Secret) else confirmation_key
    return suite.mac(key, confirmed_transcript_hash)


def verify_confirmation_tag(
    suite: CipherSuite,
    confirmation_key: bytes | Secret,
    confirmed_transcript_hash: bytes,
    tag: bytes,
) -> None:
    """Raise :class:`InvalidConfirmationTag` unless ``tag`` is right (constant time)."""
    expected = confirmation_tag(suite, confirmation_key, confirmed_transcript_hash)
    if not hmac.compare_digest(expected, tag):
        raise InvalidConfirmationTag("confirmation tag does not verify")


def next_transcript_hashes(
    suite: CipherSuite, interim_transcript_hash_before: bytes, auth_content: AuthenticatedContent
) -> tuple[bytes, bytes]:
    """``(confirmed, interim)`` after a commit whose ``auth`` carries its confirmation tag."""
    tag = auth_content.auth.confirmation_tag
    if tag is None:
        raise UsageError("transcript hashes cover commits only")
    confirmed = confirmed_transcript_hash(suite, interim_transcript_hash_before, auth_content)
    return confirmed, interim_transcript_hash(suite, confirmed, tag)
