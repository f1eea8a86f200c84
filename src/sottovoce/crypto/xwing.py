"""X-Wing: the hybrid X25519 + ML-KEM-768 KEM (draft-connolly-cfrg-xwing-kem).

The shared secret is SHA3-256(ss_M || ss_X || ct_X || pk_X || label), so it
stays secret while either X25519 or ML-KEM-768 holds. Keys are the 32-byte seed
(decapsulation key) and pk_M || pk_X (1,216-byte encapsulation key); the
ciphertext is ct_M || ct_X (1,120 bytes).

Randomness: the X25519 ephemeral key comes from the caller (``ekx``), as every
other key in the core does. The ML-KEM-768 half is ``cryptography``'s
encapsulation, which draws its 32-byte message from OpenSSL's DRBG because the
library exposes no derandomised encapsulation; that is the one place in the core
where randomness is not passed in, and why the published vectors are replayed
for key generation and decapsulation (and the X25519 half of encapsulation) only.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from sottovoce.errors import DecryptionError, InvalidKey

#: The six-byte X-Wing label ("\\./" over "/^\\").
LABEL = bytes.fromhex("5c2e2f2f5e5c")
SEED_SIZE = 32
PUBLIC_KEY_SIZE = 1216
CIPHERTEXT_SIZE = 1120
SHARED_SECRET_SIZE = 32
_PK_M = 1184
_CT_M = 1088
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


def _expand(seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    """The ML-KEM and X25519 private keys a 32-byte decapsulation key stands for."""
    if len(seed) != SEED_SIZE:
        raise InvalidKey("an X-Wing private key is 32 bytes")
    expanded = hashlib.shake_256(seed).digest(96)
    return (
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        x25519.X25519PrivateKey.from_private_bytes(expanded[64:]),
    )


def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + LABEL).digest()


def public_key(seed: bytes) -> bytes:
    """GenerateKeyPairDerand's encapsulation key for a decapsulation key (seed)."""
    sk_m, sk_x = _expand(seed)
    return sk_m.public_key().public_bytes_raw() + sk_x.public_key().public_bytes(
        _RAW, _RAW_PUB
    )


def derive_seed(ikm: bytes) -> bytes:
    """HPKE DeriveKeyPair's private key: SHAKE256(ikm) truncated to 32 bytes."""
    return hashlib.shake_256(ikm).digest(SEED_SIZE)


def encapsulate_x25519(public: bytes, ekx: bytes) -> tuple[bytes, bytes, bytes]:
    """The X25519 half of encapsulation: (ss_X, ct_X, pk_X)."""
    if len(public) != PUBLIC_KEY_SIZE or len(ekx) != 32:
        raise InvalidKey("malformed X-Wing public key")
    pk_x = public[_PK_M:]
    eph = x25519.X25519PrivateKey.from_private_bytes(ekx)
    try:
        ss_x = eph.exchange(x25519.X25519PublicKey.from_public_bytes(pk_x))
    except ValueError:
        raise InvalidKey("malformed X-Wing public key") from None
    return ss_x, eph.public_key().public_bytes(_RAW, _RAW_PUB), pk_x


def encapsulate(public: bytes, ekx: bytes) -> tuple[bytes, bytes]:
    """Encapsulate to ``public``: (shared secret, ciphertext).

    ``ekx`` is the caller's 32 random bytes for the X25519 ephemeral key. The
    ML-KEM encapsulation key check (FIPS 203 §7.2) is done by ``cryptography``
    when it loads the key; a failure is :class:`InvalidKey`.
    """
    ss_x, ct_x, pk_x = encapsulate_x25519(public, ekx)
    try:
        pk_m = mlkem.MLKEM768PublicKey.from_public_bytes(public[:_PK_M])
    except ValueError:
        raise InvalidKey("malformed X-Wing public key") from None
    ss_m, ct_m = pk_m.encapsulate()
    return _combine(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x


def decapsulate(ciphertext: bytes, seed: bytes) -> bytes:
    """Decapsulate: the shared secret (ML-KEM rejects implicitly, never raises on a bad ct)."""
    if len(ciphertext) != CIPHERTEXT_SIZE:
        raise DecryptionError("malformed X-Wing ciphertext")
    sk_m, sk_x = _expand(seed)
    ct_x = ciphertext[_CT_M:]
    try:
        ss_x = sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    except ValueError:
        raise DecryptionError("malformed X-Wing ciphertext") from None
    ss_m = sk_m.decapsulate(ciphertext[:_CT_M])
    pk_x = sk_x.public_key().public_bytes(_RAW, _RAW_PUB)
    return _combine(ss_m, ss_x, ct_x, pk_x)
