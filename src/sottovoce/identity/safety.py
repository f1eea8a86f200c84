"""Safety numbers: what two people compare to know no one sits between them.

    fingerprint(AK) = first 30 bytes of SHA-512^5200(version ‖ AK ‖ AK)
    digits(fp)      = 6 chunks of 5 bytes, each as a 5-digit number (mod 10^5)
    safety number   = digits(lower fp) ‖ digits(higher fp)       (60 digits)

Both sides sort the two fingerprints the same way, so the number is equal on
both devices whatever the order of the arguments. The hash is iterated to make
a collision on the displayed digits expensive to search for. The QR payload
carries both fingerprints (sorted) so that a scan compares all 60 bytes rather
than the 60 digits.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sottovoce.crypto.kdf import Hash, digest
from sottovoce.errors import DecodeError, UsageError
from sottovoce.limits import SAFETY_NUMBER_DIGITS, SAFETY_NUMBER_ITERATIONS

_VERSION = 1
_FP_LEN = 30
_QR_MAGIC = b"SVSN"


def fingerprint(account_key: bytes) -> bytes:
    if len(account_key) != 32:
        raise UsageError("account key must be 32 bytes")
    h = _VERSION.to_bytes(2, "big") + account_key
    for _ in range(SAFETY_NUMBER_ITERATIONS):
        h = digest(Hash.SHA512, h + account_key)
    return h[:_FP_LEN]


def _digits(fp: bytes) -> str:
    return "".join(
        f"{int.from_bytes(fp[i : i + 5], 'big') % 100000:05d}" for i in range(0, _FP_LEN, 5)
    )


@dataclass(frozen=True, slots=True)
class SafetyNumber:
    """The safety number of a pair of accounts."""

    low: bytes
    high: bytes

    @property
    def digits(self) -> str:
        """60 digits, no separators."""
        value = _digits(self.low) + _digits(self.high)
        if len(value) != SAFETY_NUMBER_DIGITS:  # pragma: no cover - arithmetic guarantee
            raise UsageError("safety number has the wrong length")
        return value

    def grouped(self) -> str:
        """12 groups of 5 digits, three rows of four: how people read it aloud."""
        d = self.digits
        groups = [d[i : i + 5] for i in range(0, len(d), 5)]
        return "\n".join(" ".join(groups[i : i + 4]) for i in range(0, 12, 4))

    def qr_payload(self) -> bytes:
        return _QR_MAGIC + bytes((_VERSION,)) + self.low + self.high

    def matches_qr(self, payload: bytes) -> bool:
        """Constant-time comparison of a scanned payload with ours."""
        if len(payload) != len(_QR_MAGIC) + 1 + 2 * _FP_LEN or not payload.startswith(
            _QR_MAGIC
        ):
            raise DecodeError("not a sottovoce safety-number QR code")
        if payload[len(_QR_MAGIC)] != _VERSION:
            raise DecodeError("unsupported safety-number version")
        return hmac.compare_digest(payload, self.qr_payload())


def safety_number(account_key_a: bytes, account_key_b: bytes) -> SafetyNumber:
    fa, fb = fingerprint(account_key_a), fingerprint(account_key_b)
    low, high = (fa, fb) if fa <= fb else (fb, fa)
    return SafetyNumber(low, high)
