"""Errors of the MLS layer (RFC 9420), each on the remote side of the split.

Every class here is a :class:`~sottovoce.errors.RemoteError`: a peer handed
us an MLS object that does not authenticate or does not follow the rules.
Where a broader category exists (signature, decryption, decoding) the MLS
error also derives from it, so callers may catch either.
"""

from __future__ import annotations

from sottovoce.errors import (
    CryptoError,
    DecodeError,
    DecryptionError,
    RemoteError,
    SignatureError,
)


class MlsError(RemoteError):
    """Root of the MLS errors caused by remote input."""

    code = "mls_error"


class ValidationError(MlsError):
    """An MLS object decodes but breaks a rule of RFC 9420 (wrong sender, epoch, ...)."""

    code = "mls_invalid"


class InvalidSignature(MlsError, SignatureError):
    """A SignWithLabel signature (RFC 9420 §5.1.2) did not verify; empty ones never do."""

    code = "bad_signature"


class InvalidMembershipTag(MlsError, CryptoError):
    """RFC 9420 §6.2: a PublicMessage's membership_tag is wrong or missing."""

    code = "mls_bad_membership_tag"


class InvalidConfirmationTag(MlsError, CryptoError):
    """RFC 9420 §8.2: a confirmation_tag does not match the confirmed transcript."""

    code = "mls_bad_confirmation_tag"


class MlsDecryptionError(MlsError, DecryptionError):
    """RFC 9420 §6.3: a PrivateMessage (sender data or content) did not open."""

    code = "decryption_failed"


class MlsDecodeError(MlsError, DecodeError):
    """MLS bytes are malformed in an MLS-specific way (bad select value, padding, ...)."""

    code = "decode_error"


class InvalidPadding(MlsDecodeError):
    """RFC 9420 §6.3.1: PrivateMessageContent padding holds a non-zero byte."""


class UnknownWireFormat(MlsDecodeError):
    """RFC 9420 §6: an MLSMessage carries a wire format this version does not define."""
