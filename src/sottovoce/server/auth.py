"""Challenge/response authentication of a device (docs/protocol.md §Session: no passwords).

::

    server ── sottovoce.challenge {nonce} ──► device          (on connect, and after a failure)
    server ◄── sottovoce.auth {username, deviceId, sig} ──    sig = Ed25519_device(auth_message)

A challenge is single use and lives ``challenge_ttl_ms``: whatever the outcome
of an attempt, its nonce is spent, so a captured signature can never be
replayed (another connection has another nonce; this one has been consumed).
Signatures are checked once per connection, never per message (docs/architecture.md §Hot path).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sottovoce.crypto.sign import ed25519_verify
from sottovoce.errors import (
    CertificateExpired,
    DecodeError,
    IdentityError,
    SignatureError,
    UsageError,
)
from sottovoce.identity import DeviceCertificate, validate_username
from sottovoce.protocol.events import NONCE_BYTES, auth_message
from sottovoce.server.errors import WireFailure


@dataclass(slots=True)
class Challenge:
    nonce: bytes
    issued_at_ms: int
    used: bool = False


def new_challenge(now_ms: int) -> Challenge:
    return Challenge(nonce=secrets.token_bytes(NONCE_BYTES), issued_at_ms=now_ms)


def spend(challenge: Challenge | None, *, now_ms: int, ttl_ms: int) -> bytes:
    """Consume the connection's challenge; raises if absent, used or expired."""
    if challenge is None or challenge.used:
        raise WireFailure(
            "challenge_used", "challenge already answered; answer the new one", retryable=True
        )
    challenge.used = True
    if now_ms - challenge.issued_at_ms > ttl_ms:
        raise WireFailure(
            "challenge_expired", "challenge expired; answer the new one", retryable=True
        )
    return challenge.nonce


def verify_possession(
    signing_key: bytes, nonce: bytes, username: str, device_id: str, signature: bytes
) -> None:
    """The device key signed this connection's nonce for this username and device."""
    try:
        ed25519_verify(signing_key, auth_message(nonce, username, device_id), signature)
    except SignatureError:
        raise WireFailure("auth_failed", "challenge signature is invalid") from None


def check_certificate(
    raw: bytes, *, now_ms: int, account_key: bytes | None = None
) -> DeviceCertificate:
    """Decode and verify a device certificate uploaded by a device."""
    try:
        cert = DeviceCertificate.decode(raw)
    except DecodeError:
        raise WireFailure("invalid_certificate", "certificate does not decode") from None
    try:
        validate_username(cert.username)
    except UsageError as exc:
        raise WireFailure("invalid_username", str(exc)) from None
    try:
        cert.verify(now_ms=now_ms, account_key=account_key)
    except CertificateExpired:
        raise WireFailure("certificate_expired", "device certificate has expired") from None
    except IdentityError as exc:
        raise WireFailure("invalid_certificate", str(exc)) from None
    return cert
