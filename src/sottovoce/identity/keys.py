"""Account key (AK) and device signing keys: Ed25519, made on the device
(docs/architecture.md §Identity)."""

from __future__ import annotations

from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SignatureScheme, SigningKey, VerifyKey
from sottovoce.readonly import ReadOnly
from sottovoce.secret import Secret


class _Ed25519Key:
    """An Ed25519 key pair with a redacted repr; the private half never prints."""

    __slots__ = ("_key",)

    def __init__(self, private: bytes | Secret) -> None:
        self._key = SigningKey(SignatureScheme.ED25519, private)

    @classmethod
    def generate(cls, rng: Random) -> _Ed25519Key:
        return cls(rng(32))

    public = ReadOnly[bytes]("_key.verify_key.data")
    verify_key = ReadOnly[VerifyKey]("_key.verify_key")

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def private_bytes(self) -> Secret:
        """For sealing into the local store only."""
        return self._key.private_bytes()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(public={self.public.hex()[:16]}…)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("key objects cannot be pickled")


class AccountKey(_Ed25519Key):
    """The user's account key: signs device certificates and revocations."""

    @classmethod
    def generate(cls, rng: Random) -> AccountKey:
        return cls(rng(32))


class DeviceSigningKey(_Ed25519Key):
    """A device's own key: signs server challenges and its prekeys."""

    @classmethod
    def generate(cls, rng: Random) -> DeviceSigningKey:
        return cls(rng(32))
