"""Proof of work for probes and first contact (docs/protocol.md §Proof of work).

A username lookup, a prekey claim or a prefix search costs the server one index
read; a script that runs millions of them learns which names exist and who
uses the service. Each such request to another account therefore carries a
hashcash-style proof: the server hands out a challenge token, and the client
finds a 64-bit counter such that SHA-256(token ‖ counter) starts with at least
``difficulty`` zero bits. Finding one takes 2^difficulty hashes on average;
checking it takes one.

The token is stateless for the server: it carries its own difficulty and
expiry and a MAC (HMAC-SHA-256, truncated to 128 bits) over those, a random
nonce, and the requester and target it was issued for, so a solution is good
only for the request it was asked for, by the one it was asked of, until it
expires. Spent tokens are remembered by the server until they expire (the
replay guard lives with the server component, server/pow_gate.py).

Why SHA-256 leading zero bits and not a memory-hard puzzle: the point is to
price bulk probing relative to one honest lookup, checking must cost
microseconds on the server, and the client is Python with nothing but hashlib
at hand; a memory-hard puzzle (argon2, Equihash) would cost the server
milliseconds per check and a native library on every client, for a gain that
only matters against GPU farms, which the adaptive difficulty answers too.

Everything here is pure: the caller passes time, keys and nonces in.

    token   = version(1) ‖ difficulty(1) ‖ expires_ms(8) ‖ nonce(16) ‖ mac(16)
    mac     = HMAC-SHA-256(key, DOMAIN ‖ len‖requester ‖ len‖target ‖ token[:26])[:16]
    proof   = token ‖ counter(8)            (what the request's ``pow`` field carries)
    valid   ⇔ leading_zero_bits(SHA-256(proof)) ≥ difficulty
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from sottovoce.errors import RemoteError, UsageError

DOMAIN = b"sottovoce pow v1"
VERSION = 1
NONCE_BYTES = 16
MAC_BYTES = 16
_HEAD = 1 + 1 + 8 + NONCE_BYTES
TOKEN_BYTES = _HEAD + MAC_BYTES
COUNTER_BYTES = 8
PROOF_BYTES = TOKEN_BYTES + COUNTER_BYTES
#: The difficulty while quiet: 2^16 SHA-256 calls on average, about 0.16 s of one core in
#: CPython at 400k hashes/s (bench/pow.py measures it; BENCHMARKS.md §Proof of work).
BASE_BITS = 16
#: No difficulty above this is ever issued or solved (2^40 hashes is days in Python).
MAX_BITS = 40


class PowError(RemoteError):
    """A proof of work is malformed, forged, expired or short of its difficulty."""

    code = "pow_required"


@dataclass(frozen=True, slots=True)
class Token:
    """What a challenge token says of itself (the client reads it without the key)."""

    difficulty: int
    expires_ms: int
    raw: bytes


def _mac(key: bytes, requester: str, target: str, head: bytes) -> bytes:
    msg = bytearray(DOMAIN)
    for part in (requester.encode(), target.encode()):
        msg += len(part).to_bytes(2, "big") + part
    msg += head
    return hmac.digest(key, bytes(msg), "sha256")[:MAC_BYTES]


def issue(
    key: bytes, requester: str, target: str, *, difficulty: int, now_ms: int, ttl_ms: int,
    nonce: bytes,
) -> bytes:
    """A challenge token for ``requester``'s request about ``target``."""
    if not 0 <= difficulty <= MAX_BITS:
        raise UsageError(f"difficulty must be 0-{MAX_BITS}")
    if len(nonce) != NONCE_BYTES:
        raise UsageError(f"the nonce must be {NONCE_BYTES} bytes")
    head = (bytes([VERSION, difficulty]) + (now_ms + ttl_ms).to_bytes(8, "big") + nonce)
    return head + _mac(key, requester, target, head)


def read_token(raw: bytes) -> Token:
    """Parse a token (no MAC check: only its issuer can make one)."""
    if len(raw) != TOKEN_BYTES or raw[0] != VERSION or raw[1] > MAX_BITS:
        raise PowError("malformed proof-of-work challenge")
    return Token(difficulty=raw[1], expires_ms=int.from_bytes(raw[2:10], "big"), raw=raw)


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def solve(token: bytes, *, max_bits: int = MAX_BITS) -> bytes:
    """The proof for ``token``: the token and the first counter that meets its difficulty.
    Takes 2^difficulty hashes on average: run it off the event loop."""
    bits = read_token(token).difficulty
    if bits > max_bits:
        raise PowError(f"the server asks for {bits} bits of work (more than {max_bits})")
    base = hashlib.sha256(token)
    shift = 256 - bits
    counter = 0
    while True:
        h = base.copy()
        c = counter.to_bytes(COUNTER_BYTES, "big")
        h.update(c)
        if int.from_bytes(h.digest(), "big") >> shift == 0:
            return token + c
        counter += 1


def check(key: bytes, requester: str, target: str, proof: bytes, *, now_ms: int) -> Token:
    """The token of a valid proof for this requester and target; else :class:`PowError`."""
    if len(proof) != PROOF_BYTES:
        raise PowError("malformed proof of work")
    token = read_token(proof[:TOKEN_BYTES])
    head, mac = token.raw[:_HEAD], token.raw[_HEAD:]
    if not hmac.compare_digest(mac, _mac(key, requester, target, head)):
        raise PowError("proof of work for another challenge")
    if now_ms >= token.expires_ms:
        raise PowError("proof-of-work challenge expired")
    if leading_zero_bits(hashlib.sha256(proof).digest()) < token.difficulty:
        raise PowError("proof of work falls short of its difficulty")
    return token


class DecayingCounts:
    """Event counts per key that halve every ``half_life_ms`` (an exponentially weighted
    rate), the least recently touched forgotten past ``max_keys``."""

    def __init__(self, half_life_ms: int, *, max_keys: int = 100_000) -> None:
        self._half_life = half_life_ms
        self._max = max_keys
        self._counts: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def value(self, key: Hashable, now_ms: int) -> float:
        found = self._counts.get(key)
        if found is None:
            return 0.0
        count, stamp = found
        return float(count * 0.5 ** (max(0, now_ms - stamp) / self._half_life))

    def add(self, key: Hashable, now_ms: int) -> float:
        count = self.value(key, now_ms) + 1.0
        self._counts[key] = (count, now_ms)
        self._counts.move_to_end(key)
        while len(self._counts) > self._max:
            self._counts.popitem(last=False)
        return count


@dataclass(frozen=True, slots=True)
class DifficultyRule:
    """How the difficulty follows abuse: ``base_bits`` while quiet; one more bit for each
    doubling of the requests of one requester past ``requester_free`` (or of all requests
    about one target past ``target_free``) within about one half-life; at most
    ``max_extra`` more."""

    base_bits: int
    half_life_ms: int = 60_000
    requester_free: float = 16.0
    target_free: float = 64.0
    max_extra: int = 8


def _extra(count: float, free: float) -> int:
    return 0 if count <= free else math.ceil(math.log2(count / free))


class Difficulty:
    """The adaptive difficulty: each challenge asked for counts against its requester and
    its target, and the difficulty of the next one follows the two counts."""

    def __init__(self, rule: DifficultyRule) -> None:
        self.rule = rule
        self._requesters = DecayingCounts(rule.half_life_ms)
        self._targets = DecayingCounts(rule.half_life_ms)

    def next(self, requester: str, target: str, now_ms: int) -> int:
        """Count one more challenge for ``requester`` about ``target``; its difficulty."""
        rule = self.rule
        by_requester = self._requesters.add(requester, now_ms)
        by_target = self._targets.add(target, now_ms)
        extra = max(_extra(by_requester, rule.requester_free),
                    _extra(by_target, rule.target_free))
        return min(MAX_BITS, rule.base_bits + min(rule.max_extra, extra))
