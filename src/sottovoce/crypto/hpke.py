"""HPKE (RFC 9180) over `pyhpke`, with the ephemeral key drawn from our random source.

pyhpke's own ``seal`` generates the ephemeral key from OS randomness; here the
sender always passes ``ikm_e`` (from the caller's :data:`Random`) and the
ephemeral key pair is ``DeriveKeyPair(ikm_e)``, so the core stays sans-IO and
the RFC 9180 vectors can be replayed exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import pyhpke
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519

from sottovoce.crypto.rng import Random
from sottovoce.errors import DecryptionError, InvalidKey, UnsupportedError, UsageError
from sottovoce.secret import Secret


class KemId(IntEnum):
    P256_SHA256 = 0x0010
    P384_SHA384 = 0x0011
    P521_SHA512 = 0x0012
    X25519_SHA256 = 0x0020
    X448_SHA512 = 0x0021


class KdfId(IntEnum):
    HKDF_SHA256 = 0x0001
    HKDF_SHA384 = 0x0002
    HKDF_SHA512 = 0x0003


class AeadId(IntEnum):
    AES128GCM = 0x0001
    AES256GCM = 0x0002
    CHACHA20POLY1305 = 0x0003
    EXPORT_ONLY = 0xFFFF


#: Nsk: the length of a serialized private key, and the IKM length we draw.
_NSK = {
    KemId.P256_SHA256: 32,
    KemId.P384_SHA384: 48,
    KemId.P521_SHA512: 66,
    KemId.X25519_SHA256: 32,
    KemId.X448_SHA512: 56,
}


_EC_CURVES: dict[KemId, ec.EllipticCurve] = {
    KemId.P256_SHA256: ec.SECP256R1(),
    KemId.P384_SHA384: ec.SECP384R1(),
    KemId.P521_SHA512: ec.SECP521R1(),
}
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


@dataclass(frozen=True, slots=True)
class KemKeyPair:
    private: Secret
    public: bytes

    def __repr__(self) -> str:
        return f"KemKeyPair(public={self.public.hex()[:16]}…)"


class Context:
    """An HPKE encryption context (sender or recipient)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        try:
            return bytes(self._ctx.seal(plaintext, aad))
        except pyhpke.NotSupportedError:
            raise UsageError("this HPKE suite is export-only") from None

    def open(self, ciphertext: bytes, aad: bytes = b"") -> bytes:
        try:
            return bytes(self._ctx.open(ciphertext, aad))
        except Exception:
            raise DecryptionError("HPKE open failed") from None

    def export(self, exporter_context: bytes, length: int) -> bytes:
        return bytes(self._ctx.export(exporter_context, length))

    def __repr__(self) -> str:
        return "hpke.Context(<redacted>)"


class Hpke:
    """One HPKE suite (KEM, KDF, AEAD)."""

    __slots__ = ("_suite", "aead", "kdf", "kem")

    def __init__(self, kem: KemId, kdf: KdfId, aead: AeadId) -> None:
        self.kem, self.kdf, self.aead = kem, kdf, aead
        try:
            self._suite = pyhpke.CipherSuite.new(
                pyhpke.KEMId(int(kem)), pyhpke.KDFId(int(kdf)), pyhpke.AEADId(int(aead))
            )
        except (ValueError, pyhpke.NotSupportedError):
            raise UnsupportedError("HPKE suite not supported") from None

    @property
    def private_key_size(self) -> int:
        return _NSK[self.kem]

    # --- keys ----------------------------------------------------------------

    def derive_key_pair(self, ikm: bytes) -> KemKeyPair:
        kp = self._suite.kem.derive_key_pair(ikm)
        raw = bytes(kp.private_key.to_private_bytes())
        # pyhpke 0.6.5 zero-pads EC scalars to the curve size in *bits*; RFC 9180
        # §7.1.2 SerializePrivateKey is exactly Nsk big-endian bytes.
        private = int.from_bytes(raw, "big").to_bytes(self.private_key_size, "big")
        return KemKeyPair(Secret(private), bytes(kp.public_key.to_public_bytes()))

    def generate_key_pair(self, rng: Random) -> KemKeyPair:
        return self.derive_key_pair(rng(self.private_key_size))

    def public_from_private(self, private: bytes | Secret) -> bytes:
        """SerializePublicKey(pk(sk)) (RFC 9180 §7.1.1)."""
        raw = private.expose() if isinstance(private, Secret) else private
        try:
            if self.kem is KemId.X25519_SHA256:
                return x25519.X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(
                    _RAW, _RAW_PUB
                )
            if self.kem is KemId.X448_SHA512:
                return x448.X448PrivateKey.from_private_bytes(raw).public_key().public_bytes(
                    _RAW, _RAW_PUB
                )
            curve = _EC_CURVES[self.kem]
            key = ec.derive_private_key(int.from_bytes(raw, "big"), curve)
            return key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        except ValueError:
            raise InvalidKey("malformed HPKE private key") from None

    def _private(self, private: bytes | Secret) -> Any:
        raw = private.expose() if isinstance(private, Secret) else private
        try:
            return self._suite.kem.deserialize_private_key(raw)
        except Exception:
            raise InvalidKey("malformed HPKE private key") from None

    def _public(self, public: bytes) -> Any:
        try:
            return self._suite.kem.deserialize_public_key(public)
        except Exception:
            raise InvalidKey("malformed HPKE public key") from None

    # --- contexts (RFC 9180 §5) ------------------------------------------------

    def setup_sender(
        self,
        recipient_public: bytes,
        info: bytes,
        *,
        ikm_e: bytes,
        psk: bytes = b"",
        psk_id: bytes = b"",
        sender_private: bytes | Secret | None = None,
    ) -> tuple[bytes, Context]:
        if bool(psk) != bool(psk_id):
            raise UsageError("psk and psk_id must be given together")
        eks = self._suite.kem.derive_key_pair(ikm_e)
        sks = None if sender_private is None else self._private(sender_private)
        try:
            enc, ctx = self._suite.create_sender_context(
                self._public(recipient_public), info, sks=sks, psk=psk, psk_id=psk_id, eks=eks
            )
        except InvalidKey:
            raise
        except Exception:
            raise InvalidKey("HPKE encapsulation failed") from None
        return bytes(enc), Context(ctx)

    def setup_recipient(
        self,
        enc: bytes,
        recipient_private: bytes | Secret,
        info: bytes,
        *,
        psk: bytes = b"",
        psk_id: bytes = b"",
        sender_public: bytes | None = None,
    ) -> Context:
        if bool(psk) != bool(psk_id):
            raise UsageError("psk and psk_id must be given together")
        pks = None if sender_public is None else self._public(sender_public)
        skr = self._private(recipient_private)
        try:
            ctx = self._suite.create_recipient_context(
                enc, skr, info, pks=pks, psk=psk, psk_id=psk_id
            )
        except Exception:
            raise DecryptionError("HPKE decapsulation failed") from None
        return Context(ctx)

    # --- single shot (RFC 9180 §6) -----------------------------------------

    def seal(
        self, recipient_public: bytes, info: bytes, aad: bytes, plaintext: bytes, rng: Random
    ) -> tuple[bytes, bytes]:
        enc, ctx = self.setup_sender(
            recipient_public, info, ikm_e=rng(self.private_key_size)
        )
        return enc, ctx.seal(plaintext, aad)

    def open(
        self,
        enc: bytes,
        recipient_private: bytes | Secret,
        info: bytes,
        aad: bytes,
        ciphertext: bytes,
    ) -> bytes:
        return self.setup_recipient(enc, recipient_private, info).open(ciphertext, aad)

    def __repr__(self) -> str:
        return f"Hpke({self.kem.name}, {self.kdf.name}, {self.aead.name})"
