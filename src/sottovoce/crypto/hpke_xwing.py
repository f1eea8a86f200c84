"""HPKE (RFC 9180) mode_base with the X-Wing KEM (KEM id 0x647a), with no pyhpke.

pyhpke knows no hybrid KEM, so this module runs RFC 9180's key schedule itself
(HKDF labelled extract/expand, base nonce XOR sequence number, exporter) over
X-Wing, whose ``Encap``/``Decap`` are the KEM's own and whose shared secret is
used as is (the X-Wing draft's "Use in HPKE"). It offers the surface of
:class:`sottovoce.crypto.hpke.Hpke` that MLS needs: key derivation, base-mode
single-shot seal/open and contexts with export. X-Wing is not an authenticated
KEM, so auth modes are refused; PSK mode is supported because it is only key
schedule.
"""

from __future__ import annotations

from sottovoce.crypto import aead as aead_mod
from sottovoce.crypto import kdf, xwing
from sottovoce.crypto.aead import Aead
from sottovoce.crypto.hpke import AeadId, KdfId, KemKeyPair
from sottovoce.crypto.kdf import Hash
from sottovoce.crypto.rng import Random
from sottovoce.errors import DecryptionError, UsageError
from sottovoce.secret import Secret

#: The X-Wing draft's HPKE KEM identifier (25519 + 203), not yet assigned by IANA.
XWING_KEM_ID = 0x647A
_AEADS = {
    AeadId.AES128GCM: Aead.AES128GCM,
    AeadId.AES256GCM: Aead.AES256GCM,
    AeadId.CHACHA20POLY1305: Aead.CHACHA20POLY1305,
}
_HASHES = {KdfId.HKDF_SHA256: Hash.SHA256, KdfId.HKDF_SHA384: Hash.SHA384,
           KdfId.HKDF_SHA512: Hash.SHA512}
_MODE_BASE, _MODE_PSK = 0, 1


class XWingContext:
    """An HPKE encryption context (sender or recipient) of the X-Wing suite."""

    __slots__ = ("_aead", "_base_nonce", "_exporter", "_hash", "_key", "_seq", "_suite_id")

    def __init__(self, hash_: Hash, aead: Aead, suite_id: bytes, key: bytes,
                 base_nonce: bytes, exporter: bytes) -> None:
        self._hash, self._aead, self._suite_id = hash_, aead, suite_id
        self._key, self._base_nonce, self._exporter = key, base_nonce, exporter
        self._seq = 0

    def _nonce(self) -> bytes:
        seq = self._seq.to_bytes(len(self._base_nonce), "big")
        return bytes(a ^ b for a, b in zip(self._base_nonce, seq, strict=True))

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        out = aead_mod.seal(self._aead, self._key, self._nonce(), plaintext, aad)
        self._seq += 1
        return out

    def open(self, ciphertext: bytes, aad: bytes = b"") -> bytes:
        try:
            out = aead_mod.open_(self._aead, self._key, self._nonce(), ciphertext, aad)
        except Exception:
            raise DecryptionError("HPKE open failed") from None
        self._seq += 1
        return out

    def export(self, exporter_context: bytes, length: int) -> bytes:
        return _labeled_expand(self._hash, self._suite_id, self._exporter, b"sec",
                               exporter_context, length)

    def __repr__(self) -> str:
        return "hpke.XWingContext(<redacted>)"


def _labeled_extract(h: Hash, suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return kdf.hkdf_extract(h, salt, b"HPKE-v1" + suite_id + label + ikm)


def _labeled_expand(h: Hash, suite_id: bytes, prk: bytes, label: bytes, info: bytes,
                    length: int) -> bytes:
    labeled = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    return kdf.hkdf_expand(h, prk, labeled, length)


def key_schedule(h: Hash, aead: Aead, suite_id: bytes, mode: int, shared: bytes, info: bytes,
                 psk: bytes = b"", psk_id: bytes = b"") -> XWingContext:
    """RFC 9180 §5.1 KeySchedule for any KEM's shared secret (tested against the RFC's
    vectors with their DHKEM secrets, since none are published for X-Wing)."""
    psk_id_hash = _labeled_extract(h, suite_id, b"", b"psk_id_hash", psk_id)
    info_hash = _labeled_extract(h, suite_id, b"", b"info_hash", info)
    context = bytes([mode]) + psk_id_hash + info_hash
    secret = _labeled_extract(h, suite_id, shared, b"secret", psk)
    key = _labeled_expand(h, suite_id, secret, b"key", context, aead.key_size)
    nonce = _labeled_expand(h, suite_id, secret, b"base_nonce", context, aead.nonce_size)
    exporter = _labeled_expand(h, suite_id, secret, b"exp", context, h.size)
    return XWingContext(h, aead, suite_id, key, nonce, exporter)


class XWingHpke:
    """HPKE with KEM X-Wing and the given KDF and AEAD (RFC 9180 §5, §6)."""

    __slots__ = ("_aead", "_hash", "_suite_id", "aead", "kdf", "kem")

    def __init__(self, kdf_id: KdfId, aead_id: AeadId) -> None:
        self.kem, self.kdf, self.aead = XWING_KEM_ID, kdf_id, aead_id
        self._hash, self._aead = _HASHES[kdf_id], _AEADS[aead_id]
        self._suite_id = (b"HPKE" + XWING_KEM_ID.to_bytes(2, "big")
                          + int(kdf_id).to_bytes(2, "big") + int(aead_id).to_bytes(2, "big"))

    @property
    def private_key_size(self) -> int:
        return xwing.SEED_SIZE

    def derive_key_pair(self, ikm: bytes) -> KemKeyPair:
        seed = xwing.derive_seed(ikm)
        return KemKeyPair(Secret(seed), xwing.public_key(seed))

    def generate_key_pair(self, rng: Random) -> KemKeyPair:
        seed = rng(xwing.SEED_SIZE)
        return KemKeyPair(Secret(seed), xwing.public_key(seed))

    def public_from_private(self, private: bytes | Secret) -> bytes:
        return xwing.public_key(private.expose() if isinstance(private, Secret) else private)

    def _schedule(self, mode: int, shared: bytes, info: bytes, psk: bytes,
                  psk_id: bytes) -> XWingContext:
        return key_schedule(self._hash, self._aead, self._suite_id, mode, shared, info, psk,
                            psk_id)

    @staticmethod
    def _mode(psk: bytes, psk_id: bytes, sender: object) -> int:
        if sender is not None:
            raise UsageError("X-Wing is not an authenticated KEM: no auth modes")
        if bool(psk) != bool(psk_id):
            raise UsageError("psk and psk_id must be given together")
        return _MODE_PSK if psk else _MODE_BASE

    def setup_sender(
        self, recipient_public: bytes, info: bytes, *, ikm_e: bytes, psk: bytes = b"",
        psk_id: bytes = b"", sender_private: bytes | Secret | None = None,
    ) -> tuple[bytes, XWingContext]:
        """``ikm_e`` (32 bytes) is the X25519 ephemeral key; see :mod:`sottovoce.crypto.xwing`."""
        mode = self._mode(psk, psk_id, sender_private)
        shared, enc = xwing.encapsulate(recipient_public, ikm_e[: xwing.SEED_SIZE])
        return enc, self._schedule(mode, shared, info, psk, psk_id)

    def setup_recipient(
        self, enc: bytes, recipient_private: bytes | Secret, info: bytes, *, psk: bytes = b"",
        psk_id: bytes = b"", sender_public: bytes | None = None,
    ) -> XWingContext:
        mode = self._mode(psk, psk_id, sender_public)
        raw = recipient_private.expose() if isinstance(recipient_private, Secret) else (
            recipient_private)
        shared = xwing.decapsulate(enc, raw)
        return self._schedule(mode, shared, info, psk, psk_id)

    def seal(self, recipient_public: bytes, info: bytes, aad: bytes, plaintext: bytes,
             rng: Random) -> tuple[bytes, bytes]:
        enc, ctx = self.setup_sender(recipient_public, info, ikm_e=rng(xwing.SEED_SIZE))
        return enc, ctx.seal(plaintext, aad)

    def open(self, enc: bytes, recipient_private: bytes | Secret, info: bytes, aad: bytes,
             ciphertext: bytes) -> bytes:
        return self.setup_recipient(enc, recipient_private, info).open(ciphertext, aad)

    def __repr__(self) -> str:
        return f"XWingHpke({self.kdf.name}, {self.aead.name})"
