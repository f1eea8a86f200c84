"""The SFrame header (RFC 9605 §4.3).

::

     0 1 2 3 4 5 6 7
    +-+-+-+-+-+-+-+-+------------+------------+
    |X|  K  |Y|  C  |   KID...   |   CTR...   |
    +-+-+-+-+-+-+-+-+------------+------------+

A value 0-7 sits in K (or C) with its flag clear; a larger one is appended
big-endian in the minimum number of bytes (1-8) and K (or C) holds that
length minus one. KID comes before CTR.

:func:`encode_header` / :func:`parse_header` are the hot-path functions used
by :mod:`sottovoce.sframe.context`; :class:`SFrameHeader` is the wire struct
(``decode`` consumes exactly). Decoding is strict: a non-minimal encoding (a
value below 8 in extended form, or a leading zero byte) is rejected, because
the RFC says the value MUST use the minimum number of bytes, and a header has
one encoding only (it is authenticated as AAD byte for byte).
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.errors import UsageError
from sottovoce.limits import SFRAME_MAX_COUNTER, SFRAME_MAX_KID
from sottovoce.sframe.errors import HeaderDecodeError

#: The longest header: config byte + 8-byte KID + 8-byte CTR.
MAX_HEADER_SIZE = 17

#: Headers of KID < 8 and CTR < 8 are the config byte alone; made once.
_SHORT = tuple(bytes((b,)) for b in range(128))


def _compact(value: int) -> tuple[int, bytes]:
    """(3-bit field with the flag as bit 3, appended bytes) for one header value."""
    if value < 8:
        return value, b""
    n = (value.bit_length() + 7) >> 3
    return 0x08 | (n - 1), value.to_bytes(n, "big")


def encode_header(kid: int, ctr: int) -> bytes:
    """The RFC 9605 §4.3 header for (KID, CTR), minimal form."""
    if not (0 <= kid <= SFRAME_MAX_KID and 0 <= ctr <= SFRAME_MAX_COUNTER):
        raise UsageError("SFrame KID and CTR must fit in 64 bits")
    if kid < 8 and ctr < 8:
        return _SHORT[(kid << 4) | ctr]
    k, kid_bytes = _compact(kid)
    c, ctr_bytes = _compact(ctr)
    return bytes(((k << 4) | c,)) + kid_bytes + ctr_bytes


def _layout(config: int) -> tuple[int, int, int, int, int, int, int]:
    """How to read a header from its config byte: (header length, CTR bits in the
    appended integer, CTR mask, short KID or -1, short CTR or -1, least KID, least
    CTR). The least values make "minimum number of bytes" one comparison."""
    klen = ((config >> 4) & 0x07) + 1 if config & 0x80 else 0
    clen = (config & 0x07) + 1 if config & 0x08 else 0
    return (
        1 + klen + clen,
        8 * clen,
        (1 << (8 * clen)) - 1,
        -1 if klen else (config >> 4) & 0x07,
        -1 if clen else config & 0x07,
        max(8, 1 << (8 * (klen - 1))) if klen else 0,
        max(8, 1 << (8 * (clen - 1))) if clen else 0,
    )


_LAYOUTS = tuple(_layout(c) for c in range(256))


def parse_header(data: bytes) -> tuple[int, int, int]:
    """``(kid, ctr, header_length)`` of the header at the start of ``data``.

    The bytes after the header (the AEAD ciphertext) are not looked at.
    Raises :class:`HeaderDecodeError` on a truncated or non-minimal header.
    """
    if not data:
        raise HeaderDecodeError("SFrame header truncated")
    hlen, cbits, cmask, kid, ctr, kmin, cmin = _LAYOUTS[data[0]]
    if hlen == 1:
        return kid, ctr, 1
    if len(data) < hlen:
        raise HeaderDecodeError("SFrame header truncated")
    # KID and CTR bytes are adjacent: read them as one integer and split it.
    value = int.from_bytes(data[1:hlen], "big")
    # RFC 9605 §4.3: an appended value "MUST be encoded with the minimum number
    # of bytes required", and is >= 8 (smaller ones live in the config byte).
    if kid < 0:
        kid = value >> cbits
        if kid < kmin:
            raise HeaderDecodeError("SFrame header KID not minimally encoded")
    if ctr < 0:
        ctr = value & cmask
        if ctr < cmin:
            raise HeaderDecodeError("SFrame header CTR not minimally encoded")
    return kid, ctr, hlen


@dataclass(frozen=True, slots=True, kw_only=True)
class SFrameHeader:
    """An SFrame header: key id and counter, each an unsigned 64-bit integer."""

    kid: int
    ctr: int

    def __post_init__(self) -> None:
        if not (0 <= self.kid <= SFRAME_MAX_KID and 0 <= self.ctr <= SFRAME_MAX_COUNTER):
            raise UsageError("SFrame KID and CTR must fit in 64 bits")

    def encode(self) -> bytes:
        return encode_header(self.kid, self.ctr)

    @classmethod
    def parse(cls, data: bytes) -> tuple[SFrameHeader, int]:
        """The header at the start of ``data`` and its length in bytes."""
        kid, ctr, n = parse_header(data)
        return cls(kid=kid, ctr=ctr), n

    @classmethod
    def decode(cls, data: bytes) -> SFrameHeader:
        """Decode a header that is exactly ``data`` (no trailing bytes)."""
        header, n = cls.parse(data)
        if n != len(data):
            raise HeaderDecodeError("trailing bytes after SFrame header")
        return header
