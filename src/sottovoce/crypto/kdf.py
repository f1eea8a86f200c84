"""Hashes, HMAC and HKDF (RFC 5869) with explicit extract/expand steps."""

from __future__ import annotations

import hmac as _hmac
from enum import Enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from sottovoce.errors import UsageError


class Hash(Enum):
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    @property
    def size(self) -> int:
        return _SIZES[self]

    def _algorithm(self) -> hashes.HashAlgorithm:
        return _ALGS[self]()


_SIZES = {Hash.SHA256: 32, Hash.SHA384: 48, Hash.SHA512: 64}
_ALGS: dict[Hash, type[hashes.HashAlgorithm]] = {
    Hash.SHA256: hashes.SHA256,
    Hash.SHA384: hashes.SHA384,
    Hash.SHA512: hashes.SHA512,
}


def digest(alg: Hash, data: bytes) -> bytes:
    h = hashes.Hash(alg._algorithm())
    h.update(data)
    return h.finalize()


def hmac(alg: Hash, key: bytes, data: bytes) -> bytes:
    return _hmac.new(key, data, alg.value).digest()


def hkdf_extract(alg: Hash, salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 §2.2. An empty salt means ``HashLen`` zero bytes."""
    return hmac(alg, salt or bytes(alg.size), ikm)


def hkdf_expand(alg: Hash, prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 §2.3."""
    if not 0 < length <= 255 * alg.size:
        raise UsageError("HKDF-Expand length out of range")
    if length <= alg.size:
        # One block: T(1) = HMAC(PRK, info ‖ 0x01). The MLS ratchets call this
        # thousands of times per operation; one HMAC is ~4x cheaper than HKDFExpand.
        return _hmac.new(prk, info + b"\x01", alg.value).digest()[:length]
    return HKDFExpand(alg._algorithm(), length, info).derive(prk)


def hkdf(alg: Hash, ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(alg, hkdf_extract(alg, salt, ikm), info, length)
