"""The seven MLS cipher suites (RFC 9420 §17.1) and the hybrid X-Wing one, as one object each.

A :class:`CipherSuite` bundles the hash/KDF, AEAD, HPKE and signature scheme of
a suite. Which suites exist, with their names, hashes and signature schemes, is
:mod:`sottovoce.crypto.mls_suites` (it loads no HPKE or AEAD). The RFC 9420
labelled operations built on a suite are in :mod:`sottovoce.crypto.labels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from sottovoce.crypto import kdf
from sottovoce.crypto.aead import Aead, AeadKey
from sottovoce.crypto.hpke import AeadId, Hpke, KdfId, KemId, KemKeyPair
from sottovoce.crypto.hpke_xwing import XWingHpke
from sottovoce.crypto.kdf import Hash
from sottovoce.crypto.mls_suites import DEFAULT_SUITE_ID as DEFAULT_SUITE_ID
from sottovoce.crypto.mls_suites import SUPPORTED_SUITES as SUPPORTED_SUITES
from sottovoce.crypto.mls_suites import PublicSuite, suite_entry
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.readonly import ReadOnly


@dataclass(frozen=True, slots=True, kw_only=True)
class CipherSuite(PublicSuite):
    """A whole suite: the public part (id, hash, signature scheme; ``nh``, ``digest``,
    ``verify_key``) with its name, AEAD and HPKE."""

    name: str
    aead: Aead
    hpke: Hpke | XWingHpke = field(compare=False, repr=False)

    # --- hash, MAC, KDF --------------------------------------------------------

    def mac(self, key: bytes, data: bytes) -> bytes:
        return kdf.hmac(self.hash, key, data)

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        return kdf.hkdf_extract(self.hash, salt, ikm)

    def expand(self, prk: bytes, info: bytes, length: int) -> bytes:
        return kdf.hkdf_expand(self.hash, prk, info, length)

    # --- AEAD ------------------------------------------------------------------

    aead_key_size = ReadOnly[int]("aead.key_size")
    aead_nonce_size = ReadOnly[int]("aead.nonce_size")

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


#: What members add to each suite of :data:`~sottovoce.crypto.mls_suites.SUITE_TABLE`:
#: the HPKE KEM (None: X-Wing, run by :mod:`~sottovoce.crypto.hpke_xwing`), and the
#: AEAD (of messages and of HPKE alike).
_KEM_AND_AEAD: dict[int, tuple[KemId | None, Aead]] = {
    1: (KemId.X25519_SHA256, Aead.AES128GCM),
    2: (KemId.P256_SHA256, Aead.AES128GCM),
    3: (KemId.X25519_SHA256, Aead.CHACHA20POLY1305),
    4: (KemId.X448_SHA512, Aead.AES256GCM),
    5: (KemId.P521_SHA512, Aead.AES256GCM),
    6: (KemId.X448_SHA512, Aead.CHACHA20POLY1305),
    7: (KemId.P384_SHA384, Aead.AES256GCM),
    0xF001: (None, Aead.AES128GCM),
}
#: RFC 9420 §17.1: a suite's HPKE runs HKDF over the suite's hash and the suite's AEAD.
_HPKE_KDF = {
    Hash.SHA256: KdfId.HKDF_SHA256,
    Hash.SHA384: KdfId.HKDF_SHA384,
    Hash.SHA512: KdfId.HKDF_SHA512,
}
_HPKE_AEAD = {
    Aead.AES128GCM: AeadId.AES128GCM,
    Aead.AES256GCM: AeadId.AES256GCM,
    Aead.CHACHA20POLY1305: AeadId.CHACHA20POLY1305,
}


@cache
def cipher_suite(suite_id: int) -> CipherSuite:
    """Return the suite for an RFC 9420 code point, or raise :class:`UnsupportedError`."""
    name, hash_, sig = suite_entry(suite_id)
    kem, aead = _KEM_AND_AEAD[suite_id]
    hpke: Hpke | XWingHpke
    if kem is None:
        hpke = XWingHpke(_HPKE_KDF[hash_], _HPKE_AEAD[aead])
    else:
        hpke = Hpke(kem, _HPKE_KDF[hash_], _HPKE_AEAD[aead])
    return CipherSuite(id=suite_id, hash=hash_, signature=sig, name=name, aead=aead, hpke=hpke)
