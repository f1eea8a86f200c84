"""Signature schemes: Ed25519, Ed448 and ECDSA over P-256/P-384/P-521.

Key encodings follow RFC 9420 §5.1.1: EdDSA keys are the raw RFC 8032 bytes;
ECDSA public keys are uncompressed SEC1 points, private keys the big-endian
scalar, and signatures DER (as in TLS 1.3).
"""

from __future__ import annotations

from enum import Enum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from sottovoce.crypto.rng import Random
from sottovoce.errors import InvalidKey, SignatureError
from sottovoce.secret import Secret


class SignatureScheme(Enum):
    # TLS SignatureScheme code points (RFC 8446 §4.2.3).
    ED25519 = 0x0807
    ED448 = 0x0808
    ECDSA_SECP256R1_SHA256 = 0x0403
    ECDSA_SECP384R1_SHA384 = 0x0503
    ECDSA_SECP521R1_SHA512 = 0x0603


_CURVES: dict[SignatureScheme, tuple[ec.EllipticCurve, hashes.HashAlgorithm, int]] = {
    SignatureScheme.ECDSA_SECP256R1_SHA256: (ec.SECP256R1(), hashes.SHA256(), 32),
    SignatureScheme.ECDSA_SECP384R1_SHA384: (ec.SECP384R1(), hashes.SHA384(), 48),
    SignatureScheme.ECDSA_SECP521R1_SHA512: (ec.SECP521R1(), hashes.SHA512(), 66),
}

#: EdDSA (RFC 8032): private key class, public key class, private key size.
_EDDSA: dict[
    SignatureScheme,
    tuple[
        type[ed25519.Ed25519PrivateKey] | type[ed448.Ed448PrivateKey],
        type[ed25519.Ed25519PublicKey] | type[ed448.Ed448PublicKey],
        int,
    ],
] = {
    SignatureScheme.ED25519: (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey, 32),
    SignatureScheme.ED448: (ed448.Ed448PrivateKey, ed448.Ed448PublicKey, 57),
}

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NOENC = serialization.NoEncryption()


def _private_from_bytes(
    scheme: SignatureScheme, data: bytes
) -> ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | ec.EllipticCurvePrivateKey:
    try:
        if scheme in _EDDSA:
            return _EDDSA[scheme][0].from_private_bytes(data)
        curve, _, size = _CURVES[scheme]
        # Some encoders drop leading zero octets of the scalar; accept up to the size.
        if not 0 < len(data) <= size:
            raise ValueError
        return ec.derive_private_key(int.from_bytes(data, "big"), curve)
    except ValueError:
        raise InvalidKey("malformed private signature key") from None


def _public_from_bytes(
    scheme: SignatureScheme, data: bytes
) -> ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | ec.EllipticCurvePublicKey:
    try:
        if scheme in _EDDSA:
            return _EDDSA[scheme][1].from_public_bytes(data)
        curve, _, _ = _CURVES[scheme]
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, data)
    except ValueError:
        raise InvalidKey("malformed public signature key") from None


def _public_bytes(
    key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | ec.EllipticCurvePublicKey,
) -> bytes:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return key.public_bytes(_RAW, _RAW_PUB)


class VerifyKey:
    """A public signature key. Equality is by scheme and encoding."""

    __slots__ = ("_key", "data", "scheme")

    def __init__(self, scheme: SignatureScheme, data: bytes) -> None:
        self.scheme = scheme
        self._key = _public_from_bytes(scheme, data)
        self.data = bytes(data)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` is valid over ``message``."""
        try:
            if isinstance(self._key, ec.EllipticCurvePublicKey):
                self._key.verify(signature, message, ec.ECDSA(_CURVES[self.scheme][1]))
            else:
                self._key.verify(signature, message)
        except (InvalidSignature, ValueError):
            raise SignatureError("signature verification failed") from None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, VerifyKey)
            and other.scheme is self.scheme
            and other.data == self.data
        )

    def __hash__(self) -> int:
        return hash((self.scheme, self.data))

    def __repr__(self) -> str:
        return f"VerifyKey({self.scheme.name}, {self.data.hex()[:16]}…)"


class SigningKey:
    """A private signature key; never printed, never pickled."""

    __slots__ = ("_key", "_secret", "scheme", "verify_key")

    def __init__(self, scheme: SignatureScheme, private: bytes | Secret) -> None:
        raw = private.expose() if isinstance(private, Secret) else private
        self.scheme = scheme
        self._key = _private_from_bytes(scheme, raw)
        self._secret = Secret(raw)
        self.verify_key = VerifyKey(scheme, _public_bytes(self._key.public_key()))

    @classmethod
    def generate(cls, scheme: SignatureScheme, rng: Random) -> SigningKey:
        if scheme in _EDDSA:
            return cls(scheme, rng(_EDDSA[scheme][2]))
        _, _, size = _CURVES[scheme]
        order = _ORDERS[scheme]
        while True:  # rejection sampling for a uniform scalar in [1, n-1]
            raw = bytearray(rng(size))
            if scheme is SignatureScheme.ECDSA_SECP521R1_SHA512:
                raw[0] &= 0x01
            d = int.from_bytes(raw, "big")
            if 0 < d < order:
                return cls(scheme, bytes(raw))

    def sign(self, message: bytes) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(message, ec.ECDSA(_CURVES[self.scheme][1]))
        return self._key.sign(message)

    def private_bytes(self) -> Secret:
        return self._secret

    def __repr__(self) -> str:
        return f"SigningKey({self.scheme.name}, <redacted>)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("SigningKey objects cannot be pickled")


_ORDERS = {
    SignatureScheme.ECDSA_SECP256R1_SHA256: int(
        "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16
    ),
    SignatureScheme.ECDSA_SECP384R1_SHA384: int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
        "581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    SignatureScheme.ECDSA_SECP521R1_SHA512: int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "FA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature by raw public key; raises :class:`SignatureError`."""
    VerifyKey(SignatureScheme.ED25519, public).verify(message, signature)
