"""Device authentication (server/auth.py): a failure costs the same and says the same."""

from __future__ import annotations

import secrets

import pytest

from sottovoce.identity import AccountKey, DeviceCertificate, DevicePublicKeys, DeviceSigningKey
from sottovoce.protocol.events import auth_message
from sottovoce.server import auth
from sottovoce.server.errors import WireFailure

NONCE = bytes(32)


def _device() -> tuple[DeviceSigningKey, bytes]:
    ak = AccountKey.generate(secrets.token_bytes)
    dk = DeviceSigningKey.generate(secrets.token_bytes)
    keys = DevicePublicKeys(signing_key=dk.public, olm_identity_key=bytes(32),
                            olm_signing_key=bytes(32))
    cert = DeviceCertificate.issue(ak, username="alice", device_id="d1", keys=keys, now_ms=0)
    return dk, cert.encode()


def test_missing_device_costs_one_signature_check_like_a_real_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the decoy an unknown device is answered before any signature check, a
    timing difference that tells a stranger the device does not exist."""
    checks: list[bytes] = []
    real = auth.ed25519_verify

    def counting(key: bytes, message: bytes, signature: bytes) -> None:
        checks.append(key)
        real(key, message, signature)

    monkeypatch.setattr(auth, "ed25519_verify", counting)
    dk, cert = _device()
    decoy = auth.Decoy()
    good = dk.sign(auth_message(NONCE, "alice", "d1"))
    assert auth.authenticate_device(cert, NONCE, "alice", "d1", good, decoy=decoy).device_id == "d1"
    errors = []
    for stored, signature in [(cert, bytes(64)), (None, good), (None, bytes(64))]:
        with pytest.raises(WireFailure) as info:
            auth.authenticate_device(stored, NONCE, "alice", "d1", signature, decoy=decoy)
        errors.append((info.value.code, info.value.message, info.value.retryable))
    assert len(checks) == 4, "every attempt checks exactly one signature"
    assert errors == [("auth_failed", auth.AUTH_FAILED, False)] * 3

