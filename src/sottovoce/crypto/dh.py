"""X25519 Diffie-Hellman (RFC 7748) for the non-MLS parts of the protocol."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from sottovoce.crypto.rng import Random
from sottovoce.errors import CryptoError, InvalidKey
from sottovoce.secret import Secret


class X25519PrivateKey:
    __slots__ = ("_key", "public")

    def __init__(self, private: bytes | Secret) -> None:
        raw = private.expose() if isinstance(private, Secret) else private
        try:
            self._key = x25519.X25519PrivateKey.from_private_bytes(raw)
        except ValueError:
            raise InvalidKey("malformed X25519 private key") from None
        self.public = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls, rng: Random) -> X25519PrivateKey:
        return cls(rng(32))

    def exchange(self, peer_public: bytes) -> Secret:
        try:
            peer = x25519.X25519PublicKey.from_public_bytes(peer_public)
            return Secret(self._key.exchange(peer))
        except ValueError:
            # Wrong length, or a low-order point giving an all-zero secret.
            raise CryptoError("X25519 exchange failed") from None

    def __repr__(self) -> str:
        return "X25519PrivateKey(<redacted>)"
