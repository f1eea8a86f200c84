"""What the blindness kit searches for, and the search itself (pure: bytes in, hits out).

A secret (a canary plaintext or a private key) can reach the server's bytes
raw, hex-encoded, or base64-encoded somewhere inside a longer text. Each secret
becomes a handful of *needles*; a needle is found with ``bytes.find`` in every
scanned blob.

Base64 works in 3-byte groups, so the same secret encodes differently
depending on where it sits in the longer text (offset mod 3). For each
alignment ``shift`` the needle is the base64 of ``bytes(shift) + secret`` with
the characters that also depend on the unknown neighbours cut off::

    secret at offset ≡ shift (mod 3) inside a larger blob
    bits:    |prefix (8·shift)|      secret (8·n)       |next bytes…
    chars:   |c0|c1|c2|c3|c4|c5|c6|c7| … |ck|ck+1|
              └ mixed ┘└──── only secret bits ────┘└ mixed ┘
    needle = chars[ceil(8·shift/6) : floor(8·(shift+n)/6)]

That middle run appears in the base64 of any blob holding the secret at that
alignment, whatever surrounds it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

#: Needles shorter than this are not searched: they could match by chance. A
#: secret of 12 bytes yields base64 needles of at least 14 characters.
MIN_NEEDLE_BYTES = 12
#: The kit refuses secrets shorter than this (a short secret is a false-positive risk).
MIN_SECRET_BYTES = 12
#: Large files are read in chunks of this size (with an overlap, so a needle
#: spanning two chunks is still found).
CHUNK_BYTES = 8 * 1024 * 1024
#: Block size of the scanner's index (see :class:`Scanner`): needles of at least
#: 2·GRAM-1 bytes are found by one dict lookup per GRAM bytes of input.
GRAM = 12


@dataclass(frozen=True, slots=True, kw_only=True)
class Needle:
    """One encoding of one secret."""

    label: str  # what the secret is, e.g. "1:1 offline canary #2" (never the secret)
    kind: str  # "canary" | "key" | "control"
    encoding: str  # "raw" | "hex" | "HEX" | "base64+1" | "base64url+2" …
    pattern: bytes
    preview: str  # a short prefix of the secret for the report, never the whole

    def __repr__(self) -> str:
        return f"Needle({self.label!r}, {self.encoding})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Hit:
    needle: Needle
    offset: int  # where the needle starts in the scanned blob/stream


def _preview(secret: bytes, kind: str) -> str:
    if kind == "key":
        return secret[:2].hex() + "…"
    text = secret[:10].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text) + "…"


def base64_needles(secret: bytes) -> list[tuple[str, bytes]]:
    """The base64 runs (standard and url-safe, alignments 0, 1, 2) of ``secret``."""
    out: list[tuple[str, bytes]] = []
    n = len(secret)
    for shift in range(3):
        start = -(-8 * shift // 6)  # ceil
        end = 8 * (shift + n) // 6  # floor
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            run = encode(bytes(shift) + secret)[start:end]
            out.append((f"{name}+{shift}", run))
    return out


def needles_for(secret: bytes, *, label: str, kind: str) -> list[Needle]:
    """Every needle of one secret: raw, hex (lower and upper), base64 (6 variants).

    Identical patterns (e.g. standard and url-safe base64 when the text has no
    ``+``/``/``) are kept once.
    """
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"a secret to search for must be at least {MIN_SECRET_BYTES} bytes")
    preview = _preview(secret, kind)
    candidates = [
        ("raw", secret),
        ("hex", secret.hex().encode()),
        ("HEX", secret.hex().upper().encode()),
        *base64_needles(secret),
    ]
    seen: set[bytes] = set()
    out: list[Needle] = []
    for encoding, pattern in candidates:
        if pattern in seen or len(pattern) < MIN_NEEDLE_BYTES:
            continue
        seen.add(pattern)
        out.append(
            Needle(label=label, kind=kind, encoding=encoding, pattern=pattern, preview=preview)
        )
    return out


class Scanner:
    """Finds every needle in blobs or chunked streams.

    Two strategies, same result:

    * needles of at least ``2·GRAM - 1`` bytes (nearly all: a 32-byte key is
      the shortest raw secret) are found through an index of their GRAM-byte
      substrings. Any occurrence of such a needle contains a GRAM-byte block
      starting at a multiple of GRAM in the blob, so the blob is read in steps
      of GRAM with one dict lookup each, and candidates are checked in place.
      The cost does not grow with the number of needles (~1,500 in an audit);
    * shorter needles: one ``bytes.find`` pass each.
    """

    def __init__(self, needles: Iterable[Needle]) -> None:
        self.needles = list(needles)
        self.overlap = max((len(n.pattern) for n in self.needles), default=1) - 1
        self._index: dict[bytes, list[tuple[Needle, int]]] = {}
        self._short: list[Needle] = []
        for needle in self.needles:
            if len(needle.pattern) < 2 * GRAM - 1:
                self._short.append(needle)
                continue
            for j in range(len(needle.pattern) - GRAM + 1):
                self._index.setdefault(needle.pattern[j : j + GRAM], []).append((needle, j))

    def scan(self, blob: bytes | memoryview, *, base_offset: int = 0) -> list[Hit]:
        """Every occurrence of every needle in ``blob``, sorted by offset."""
        data = bytes(blob) if isinstance(blob, memoryview) else blob
        found: set[tuple[int, int]] = set()  # (offset, needle number)
        hits: list[Hit] = []
        index = self._index
        if index:
            get = index.get
            for p in range(0, len(data) - GRAM + 1, GRAM):
                candidates = get(data[p : p + GRAM])
                if candidates is None:
                    continue
                for needle, j in candidates:
                    start = p - j
                    key = (start, id(needle))
                    if start >= 0 and key not in found and data.startswith(needle.pattern, start):
                        found.add(key)
                        hits.append(Hit(needle=needle, offset=base_offset + start))
        for needle in self._short:
            pos = data.find(needle.pattern)
            while pos >= 0:
                hits.append(Hit(needle=needle, offset=base_offset + pos))
                pos = data.find(needle.pattern, pos + 1)
        hits.sort(key=lambda h: (h.offset, h.needle.label, h.needle.encoding))
        return hits

    def scan_chunks(self, chunks: Iterable[bytes]) -> Iterator[Hit]:
        """Scan a stream given in chunks; a needle across a chunk boundary is found once."""
        tail = b""
        tail_offset = 0  # stream offset of tail[0]
        for chunk in chunks:
            if not chunk:
                continue
            window = tail + chunk
            for hit in self.scan(window, base_offset=tail_offset):
                # A hit lying wholly inside the old tail was reported last round.
                if hit.offset + len(hit.needle.pattern) > tail_offset + len(tail):
                    yield hit
            keep = min(self.overlap, len(window))
            tail_offset += len(window) - keep
            tail = window[len(window) - keep :] if keep else b""


def dedupe(hits: Iterable[Hit]) -> list[Hit]:
    """One hit per (secret, offset): url-safe and standard base64 often coincide."""
    seen: set[tuple[str, int]] = set()
    out: list[Hit] = []
    for hit in hits:
        key = (hit.needle.label, hit.offset)
        if key not in seen:
            seen.add(key)
            out.append(hit)
    return out
