"""Errors of the SFrame layer (RFC 9605).

Remote side (a frame from the network is bad): :class:`SFrameError` and its
subclasses. Decryption failures are one opaque class (:class:`FrameDecryptionError`)
whatever failed inside -- tag, length, key -- so a receiver is no oracle
(RFC 9605 §4.4.4: discard invalid ciphertexts indistinguishably).

Caller side: :class:`CounterExhausted` and :class:`KeyUsageError` are
:class:`~sottovoce.errors.UsageError`: the application must rekey, or used a
key for the wrong direction.
"""

from __future__ import annotations

from sottovoce.errors import DecodeError, DecryptionError, RemoteError, UsageError


class SFrameError(RemoteError):
    """Root of the SFrame errors caused by a frame from the network."""

    code = "sframe_error"


class HeaderDecodeError(SFrameError, DecodeError):
    """RFC 9605 §4.3: the SFrame header is truncated, non-minimal or out of range."""

    code = "decode_error"


class UnknownKeyId(SFrameError):
    """RFC 9605 §4.4.4: no receive key for the KID in the header.

    The KID is public (it is in the clear header), so saying so is no oracle;
    the application MAY buffer the frame and retry once the key arrives.
    """

    code = "sframe_unknown_kid"
    retryable = True


class ReplayError(SFrameError):
    """The (KID, CTR) was already accepted, or CTR is older than the replay window."""

    code = "sframe_replay"


class FrameDecryptionError(SFrameError, DecryptionError):
    """Authenticated decryption of a frame failed. Deliberately says nothing more."""

    code = "decryption_failed"


class KeyUsageError(UsageError):
    """RFC 9605 §4.4.1: a key is for sending or for receiving, never both, and a
    send KID is never installed twice (that would reuse (key, nonce) pairs)."""

    code = "bad_request"


class CounterExhausted(UsageError):
    """RFC 9605 §7.4: the send counter for a KID is used up; rekey (new epoch / KID)."""

    code = "sframe_counter_exhausted"
