"""One root exception and its per-layer subclasses.

Every error falls on one side of a three-way split (docs/architecture.md §Rules):

* :class:`UsageError`  -- the caller misused an API (a bug in *our* caller);
* :class:`RemoteError` -- a peer or the network handed us bad input;
* :class:`InternalError` -- an invariant of our own broke (a bug in sottovoce).

Each class carries a stable wire ``code`` and a ``retryable`` flag so that the
server and client convert it exactly once, at their edge, into a
``ksmpv3.error``. Messages never contain plaintext, ciphertext or key material.
"""

from __future__ import annotations

from typing import Any


class SottovoceError(Exception):
    """Root of every error raised by sottovoce."""

    code: str = "internal_error"
    retryable: bool = False


class UsageError(SottovoceError):
    """The caller used an API wrongly (bad argument, wrong state)."""

    code = "bad_request"


class RemoteError(SottovoceError):
    """Input from a peer, the server or the network is invalid."""

    code = "bad_input"


class InternalError(SottovoceError):
    """An invariant inside sottovoce broke; this is our bug."""

    code = "internal_error"


class WireError(RemoteError):
    """A refusal as ``ksmpv3.error`` carries it between server and client: a code,
    whether (and after how long) a retry may succeed, and the code's details.

    The server raises one to refuse a request; the client raises one when it is
    refused. ``message`` is the human half, and never holds anything secret.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after_ms: int = 0,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        self.details = details or {}


# --- codec -------------------------------------------------------------------


class DecodeError(RemoteError):
    """Bytes on the wire do not decode to the expected structure."""

    code = "decode_error"


# --- crypto ------------------------------------------------------------------


class CryptoError(RemoteError):
    """A cryptographic check failed."""

    code = "crypto_error"


class DecryptionError(CryptoError):
    """Authenticated decryption failed. Deliberately says nothing more (no oracle)."""

    code = "decryption_failed"


class SignatureError(CryptoError):
    """A signature did not verify."""

    code = "bad_signature"


class InvalidKey(CryptoError):
    """A public or private key is malformed or of the wrong type."""

    code = "bad_key"


class UnsupportedError(RemoteError):
    """A peer asked for an algorithm, suite or version we do not support."""

    code = "unsupported"


# --- identity ----------------------------------------------------------------


class IdentityError(RemoteError):
    """A certificate, revocation statement or safety-number input is invalid."""

    code = "identity_error"


class CertificateExpired(IdentityError):
    code = "certificate_expired"


class CertificateRevoked(IdentityError):
    code = "certificate_revoked"


# --- pairwise ----------------------------------------------------------------


class PairwiseError(RemoteError):
    """A 1:1 (Olm) session operation failed because of remote input."""

    code = "pairwise_error"


class PrekeyBundleError(PairwiseError):
    """A prekey bundle failed verification; no session was opened."""

    code = "bad_prekey_bundle"


class SessionMismatch(PairwiseError):
    """A message does not belong to this session."""

    code = "session_mismatch"


class DuplicateMessage(PairwiseError):
    """The message was already decrypted once (replay or duplicate delivery)."""

    code = "duplicate_message"


class MessageDecryptionError(PairwiseError, DecryptionError):
    """An Olm message could not be decrypted; session state is unchanged."""

    code = "decryption_failed"


class SealedStateError(PairwiseError, DecryptionError):
    """Sealed session state could not be opened (wrong key, tampered or truncated)."""

    code = "sealed_state_invalid"
