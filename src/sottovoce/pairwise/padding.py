"""Padding plaintexts to size buckets so ciphertext lengths leak little (docs/threat-model.md).

ISO/IEC 7816-4 style: ``content ‖ 0x80 ‖ 0x00…`` up to the bucket size, so the
pad is unambiguous and needs no length field.
"""

from __future__ import annotations

from sottovoce.errors import DecodeError, UsageError
from sottovoce.limits import MAX_PLAINTEXT_BYTES, PADDING_BUCKETS, PADDING_LARGE_STEP


def padded_size(n: int) -> int:
    """The bucket a plaintext of ``n`` bytes is padded to (one marker byte included)."""
    need = n + 1
    for bucket in PADDING_BUCKETS:
        if need <= bucket:
            return bucket
    return -(-need // PADDING_LARGE_STEP) * PADDING_LARGE_STEP


def pad(content: bytes) -> bytes:
    if len(content) > MAX_PLAINTEXT_BYTES:
        raise UsageError(f"plaintext larger than {MAX_PLAINTEXT_BYTES} bytes")
    size = padded_size(len(content))
    return content + b"\x80" + bytes(size - len(content) - 1)


def unpad(padded: bytes) -> bytes:
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80:
        raise DecodeError("invalid padding")
    return stripped[:-1]
