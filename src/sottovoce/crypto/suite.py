"""The seven MLS cipher suites (RFC 9420 §17.1) as one object each.

A :class:`CipherSuite` bundles the hash/KDF, AEAD, HPKE and signature scheme of
a suite. The RFC 9420 labelled operations built on it are in
:mod:`sottovoce.crypto.labels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from sottovoce.crypto import kdf
from sottovoce.crypto.aead import Aead, AeadKey
from sottovoce.crypto.hpke import AeadId, Hpke, KdfId, KemId, KemKeyPair
from sottovoce.crypto.kdf import Hash
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SignatureScheme, SigningKey, VerifyKey
from sottovoce.errors import UnsupportedError


@dataclass(frozen=True, slots=True)
class CipherSuite:
    id: int
    name: str
    hash: Hash
    aead: Aead
    signature: SignatureScheme
    hpke: Hpke = field(compare=False, repr=False)

    # --- hash, MAC, KDF --------------------------------------------------------

    @property
    def nh(self) -> int:
        """KDF.Nh: the hash output size, used for secrets throughout."""
        return self.hash.size

    def digest(self, data: bytes) -> bytes:
        return kdf.digest(self.hash, data)

    def mac(self, key: bytes, data: bytes) -> bytes:
        return kdf.hmac(self.hash, key, data)

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        return kdf.hkdf_extract(self.hash, salt, ikm)

    def expand(self, prk: bytes, info: bytes, length: int) -> bytes:
        return kdf.hkdf_expand(self.hash, prk, info, length)

    # --- AEAD ------------------------------------------------------------------

    @property
    def aead_key_size(self) -> int:
        return self.aead.key_size

    @property
    def aead_nonce_size(self) -> int:
        return self.aead.nonce_size

    def aead_key(self, key: bytes) -> AeadKey:
        return AeadKey(self.aead, key)

    # --- HPKE ------------------------------------------------------------------

    def derive_hpke_key_pair(self, ikm: bytes) -> KemKeyPair:
        return self.hpke.derive_key_pair(ikm)

    def generate_hpke_key_pair(self, rng: Random) -> KemKeyPair:
        return self.hpke.generate_key_pair(rng)

    # --- signatures ------------------------------------------------------------

    def generate_signing_key(self, rng: Random) -> SigningKey:
        return SigningKey.generate(self.signature, rng)

    def signing_key(self, private: bytes) -> SigningKey:
        return SigningKey(self.signature, private)

    def verify_key(self, public: bytes) -> VerifyKey:
        return VerifyKey(self.signature, public)


_TABLE = {
    1: ("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", KemId.X25519_SHA256, KdfId.HKDF_SHA256,
        AeadId.AES128GCM, Hash.SHA256, Aead.AES128GCM, SignatureScheme.ED25519),
    2: ("MLS_128_DHKEMP256_AES128GCM_SHA256_P256", KemId.P256_SHA256, KdfId.HKDF_SHA256,
        AeadId.AES128GCM, Hash.SHA256, Aead.AES128GCM, SignatureScheme.ECDSA_SECP256R1_SHA256),
    3: ("MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519", KemId.X25519_SHA256,
        KdfId.HKDF_SHA256, AeadId.CHACHA20POLY1305, Hash.SHA256, Aead.CHACHA20POLY1305,
        SignatureScheme.ED25519),
    4: ("MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448", KemId.X448_SHA512, KdfId.HKDF_SHA512,
        AeadId.AES256GCM, Hash.SHA512, Aead.AES256GCM, SignatureScheme.ED448),
    5: ("MLS_256_DHKEMP521_AES256GCM_SHA512_P521", KemId.P521_SHA512, KdfId.HKDF_SHA512,
        AeadId.AES256GCM, Hash.SHA512, Aead.AES256GCM, SignatureScheme.ECDSA_SECP521R1_SHA512),
    6: ("MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448", KemId.X448_SHA512,
        KdfId.HKDF_SHA512, AeadId.CHACHA20POLY1305, Hash.SHA512, Aead.CHACHA20POLY1305,
        SignatureScheme.ED448),
    7: ("MLS_256_DHKEMP384_AES256GCM_SHA384_P384", KemId.P384_SHA384, KdfId.HKDF_SHA384,
        AeadId.AES256GCM, Hash.SHA384, Aead.AES256GCM, SignatureScheme.ECDSA_SECP384R1_SHA384),
}

#: Suite 1 is the mandatory-to-implement default (RFC 9420 §17.1).
DEFAULT_SUITE_ID = 1
SUPPORTED_SUITES = tuple(sorted(_TABLE))


@cache
def cipher_suite(suite_id: int) -> CipherSuite:
    """Return the suite for an RFC 9420 code point, or raise :class:`UnsupportedError`."""
    try:
        name, kem, kdf_id, aead_id, hash_, aead, sig = _TABLE[suite_id]
    except KeyError:
        raise UnsupportedError(f"unsupported MLS cipher suite {suite_id:#06x}") from None
    return CipherSuite(suite_id, name, hash_, aead, sig, Hpke(kem, kdf_id, aead_id))
