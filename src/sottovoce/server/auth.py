"""Challenge/response authentication of a device (docs/protocol.md §Session: no passwords).

::

    server ── sottovoce.challenge {nonce} ──► device          (on connect, and after a failure)
    server ◄── sottovoce.auth {username, deviceId, sig} ──    sig = Ed25519_device(auth_message)

A challenge is single use and lives ``challenge_ttl_ms``: whatever the outcome
of an attempt, its nonce is spent, so a captured signature can never be
replayed (another connection has another nonce; this one has been consumed).
Signatures are checked once per connection, never per message (docs/architecture.md §Hot path).

A failed ``sottovoce.auth`` says nothing about why: an unknown device, a revoked
one and a wrong signature get the same ``auth_failed`` error after the same
work (one certificate decode and one signature check, against a decoy for a
device that is not there), so a stranger cannot learn which (username, device)
pairs exist (docs/threat-model.md).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from sottovoce.crypto.sign import ed25519_verify
from sottovoce.errors import (
    CertificateExpired,
    IdentityError,
    SignatureError,
    UsageError,
)
from sottovoce.identity import (
    AccountKey,
    DeviceCertificate,
    DevicePublicKeys,
    DeviceSigningKey,
    validate_username,
)
from sottovoce.protocol.events import NONCE_BYTES, auth_message
from sottovoce.server.errors import WireFailure, decoded

#: The one answer to a failed possession proof, whatever the reason.
AUTH_FAILED = "authentication failed"


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
        raise WireFailure("auth_failed", AUTH_FAILED) from None


def _decoy_certificate() -> bytes:
    account = AccountKey.generate(secrets.token_bytes)
    device = DeviceSigningKey.generate(secrets.token_bytes)
    keys = DevicePublicKeys(
        signing_key=device.public,
        olm_identity_key=secrets.token_bytes(32),
        olm_signing_key=secrets.token_bytes(32),
    )
    return DeviceCertificate.issue(
        account, username="decoy", device_id="decoy", keys=keys, now_ms=0
    ).encode()


@dataclass(slots=True)
class Decoy:
    """A certificate nobody holds the key of: checked in place of a missing device."""

    certificate: bytes = field(default_factory=_decoy_certificate)


def authenticate_device(
    certificate: bytes | None, nonce: bytes, username: str, device_id: str, signature: bytes,
    *, decoy: Decoy,
) -> DeviceCertificate:
    """Check the signature of a device's stored certificate (``None``: no such active
    device). Either way the same work is done and the same error raised."""
    cert = DeviceCertificate.decode(certificate if certificate is not None else decoy.certificate)
    verify_possession(cert.keys.signing_key, nonce, username, device_id, signature)
    if certificate is None:  # the decoy's key is thrown away: its check never passes
        raise WireFailure("auth_failed", AUTH_FAILED)
    return cert


def check_certificate(
    raw: bytes, *, now_ms: int, account_key: bytes | None = None
) -> DeviceCertificate:
    """Decode and verify a device certificate uploaded by a device."""
    cert = decoded(DeviceCertificate.decode, raw, "invalid_certificate", "certificate")
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
