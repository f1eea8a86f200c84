"""ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381 §5, suite string 0x03).

Key transparency labels are VRF outputs of usernames, so the map cannot be
enumerated with a dictionary of names, while anyone holding the log's VRF public
key can check that a label belongs to a name (docs/architecture.md §Planned: kt/).

    prove(SK, alpha):  H = encode_to_curve(PK, alpha)       §5.4.1.1 (try and increment)
                       Gamma = x*H;  k = nonce(SK, H)        §5.4.2.2 (from RFC 8032)
                       c = challenge(Y, H, Gamma, k*B, k*H)  §5.4.3
                       pi = Gamma || c (16 bytes) || s = k + c*x mod q (32 bytes)
    verify(PK, alpha, pi): U = s*B - c*Y,  V = s*H - c*Gamma, c == challenge(Y, H, Gamma, U, V)
    beta = SHA-512(0x03 || 0x03 || 8*Gamma || 0x00)          §5.2

Point arithmetic is libsodium's (PyNaCl): ``cryptography`` has no Edwards point
operations. Validation is stricter than the RFC's minimum, never looser:

* the public key must be a canonical encoding of a point of the prime-order
  subgroup (libsodium's checks before any scalar multiplication), which includes RFC 9381
  §5.4.5's validate_key (no small-order key); this verifier always validates;
* Gamma in a proof must likewise be canonical and in the prime-order subgroup.
  An honest prover's Gamma = x*H always is; a Gamma with a torsion component
  could only come from a prover trying to make two proofs for one output;
* s must be below q (§5.4.4 step 8); a proof whose U or V computation meets
  the identity (s = 0 or c = 0, which an honest prover hits with probability
  about 2^-128) is refused, as libsodium refuses identity results.

In encode_to_curve, hash candidates are decoded strictly per RFC 8032 §5.1.3
(y < p; x = 0 with the sign bit set is invalid), and cofactor clearing (8*P,
by three doublings) turns any curve point into one of the prime-order subgroup.
Proving runs in time that depends on alpha (§5.4.1.1 says so); alpha here is a
public username.
"""

from __future__ import annotations

import hashlib
import hmac

from nacl import bindings as sodium
from nacl.exceptions import CryptoError as SodiumError

from sottovoce.crypto.rng import Random
from sottovoce.errors import InternalError, UsageError
from sottovoce.kt.errors import VRFError
from sottovoce.secret import Secret

SUITE_STRING = b"\x03"
#: ptLen + cLen + qLen (RFC 9381 §5.5).
PROOF_SIZE = 32 + 16 + 32
#: hLen: beta is a SHA-512 output.
OUTPUT_SIZE = 64
PUBLIC_KEY_SIZE = 32

_P = 2**255 - 19
#: q, the order of the prime-order subgroup (RFC 8032 §5.1: L).
_Q = 2**252 + 27742317777372353535851937790883648493
_IDENTITY = b"\x01" + bytes(31)


def _sha512(*parts: bytes) -> bytes:
    h = hashlib.sha512()
    for p in parts:
        h.update(p)
    return h.digest()


def _le(n: int) -> bytes:
    return n.to_bytes(32, "little")


def _is_decodable(s: bytes) -> bool:
    """RFC 8032 §5.1.3 string_to_point, strictly: y < p, x recoverable, and no
    negative zero. libsodium's decoder (reached through ``_double``) checks that
    x exists; the two canonicality rules it leaves to us are checked here."""
    y = int.from_bytes(s, "little") & ((1 << 255) - 1)
    if y >= _P:
        return False
    return not (s[31] & 0x80 and y in (1, _P - 1))  # x = 0 exactly for these two y


def _double(p: bytes) -> bytes:
    return sodium.crypto_core_ed25519_add(p, p)


def _cofactor_times(p: bytes) -> bytes:
    """8*P by three doublings (works for any curve point, unlike libsodium's scalar
    multiplication, which takes only points of the prime-order subgroup)."""
    return _double(_double(_double(p)))


def _encode_to_curve(pk: bytes, alpha: bytes) -> bytes:
    """RFC 9381 §5.4.1.1 with encode_to_curve_salt = PK_string and
    interpret_hash_value_as_a_point(s) = string_to_point(s[0:32])."""
    for ctr in range(256):
        candidate = _sha512(SUITE_STRING, b"\x01", pk, alpha, bytes((ctr,)), b"\x00")[:32]
        if not _is_decodable(candidate):
            continue
        try:
            h = _cofactor_times(candidate)
        except SodiumError:
            continue  # not the y coordinate of a curve point
        if h != _IDENTITY:
            return h
    # Each try succeeds with probability about 1/2: 256 failures do not happen.
    raise InternalError("ECVRF encode_to_curve found no point")


def _challenge(*points: bytes) -> bytes:
    """RFC 9381 §5.4.3: the first cLen = 16 bytes of the hash (as a string)."""
    return _sha512(SUITE_STRING, b"\x02", *points, b"\x00")[:16]


def proof_to_hash(pi: bytes) -> bytes:
    """RFC 9381 §5.2 on a proof's Gamma. Call only on a proof that verified (or one
    :meth:`VRFSecretKey.prove` made): this checks nothing but the encoding."""
    if len(pi) != PROOF_SIZE:
        raise VRFError("VRF proof has the wrong length")
    try:
        gamma8 = _cofactor_times(pi[:32])
    except SodiumError:
        raise VRFError("VRF proof's Gamma is not a curve point") from None
    return _sha512(SUITE_STRING, b"\x03", gamma8, b"\x00")


class VRFSecretKey:
    """An ECVRF secret key: a 32-byte RFC 8032 seed. Never printed, never pickled."""

    __slots__ = ("_nonce_key", "_seed", "_x", "public")

    def __init__(self, seed: bytes | Secret) -> None:
        raw = seed.expose() if isinstance(seed, Secret) else bytes(seed)
        if len(raw) != 32:
            raise UsageError("an ECVRF secret key is 32 bytes")
        # RFC 8032 §5.1.5: the secret scalar and the nonce key from SHA-512(SK).
        h = bytearray(hashlib.sha512(raw).digest())
        h[0] &= 248
        h[31] &= 127
        h[31] |= 64
        self._x = int.from_bytes(h[:32], "little")
        self._nonce_key = Secret(bytes(h[32:]))
        self._seed = Secret(raw)
        self.public: bytes = sodium.crypto_scalarmult_ed25519_base_noclamp(_le(self._x % _Q))

    @classmethod
    def generate(cls, rng: Random) -> VRFSecretKey:
        return cls(rng(32))

    def private_bytes(self) -> Secret:
        """For sealing into the server's key store only."""
        return self._seed

    def derive_key(self, label: bytes) -> bytes:
        """A 32-byte key for another purpose of the same deployment (HMAC-SHA-256 of
        ``label`` under the seed): nodes that share this key file share it too, and it
        tells nothing about the seed or the VRF's outputs."""
        return hmac.new(self._seed.expose(), b"sottovoce derived key: " + label,
                        hashlib.sha256).digest()

    def prove(self, alpha: bytes) -> bytes:
        """RFC 9381 §5.1: the 80-byte proof pi for ``alpha``."""
        x = self._x % _Q
        h = _encode_to_curve(self.public, alpha)
        gamma = sodium.crypto_scalarmult_ed25519_noclamp(_le(x), h)
        # §5.4.2.2: k = SHA-512(the second half of SHA-512(SK) || h_string) mod q.
        k = int.from_bytes(_sha512(self._nonce_key.expose(), h), "little") % _Q
        u = sodium.crypto_scalarmult_ed25519_base_noclamp(_le(k))
        v = sodium.crypto_scalarmult_ed25519_noclamp(_le(k), h)
        c = _challenge(self.public, h, gamma, u, v)
        s = (k + int.from_bytes(c, "little") * x) % _Q
        return gamma + c + _le(s)

    def evaluate(self, alpha: bytes) -> tuple[bytes, bytes]:
        """(beta, pi) for ``alpha``."""
        pi = self.prove(alpha)
        return proof_to_hash(pi), pi

    def __repr__(self) -> str:
        return f"VRFSecretKey(public={self.public.hex()[:16]}…)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("key objects cannot be pickled")


def verify(public_key: bytes, alpha: bytes, pi: bytes) -> bytes:
    """RFC 9381 §5.3 with validate_key = TRUE: return beta, or raise :class:`VRFError`."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise VRFError("VRF public key has the wrong length")
    if not isinstance(pi, bytes) or len(pi) != PROOF_SIZE:
        raise VRFError("VRF proof has the wrong length")
    # §5.4.4: decode (Gamma, c, s). The point checks -- canonical encoding, not of small
    # order, in the prime-order subgroup (which covers §5.4.5 validate_key) -- are
    # those crypto_scalarmult_ed25519_noclamp makes on Y and Gamma below: it refuses
    # any other point, and doing them twice would double the cost of a verification.
    gamma, c, s_string = pi[:32], pi[32:48], pi[48:]
    s = int.from_bytes(s_string, "little")
    if s >= _Q:
        raise VRFError("VRF proof's s is not reduced")
    h = _encode_to_curve(public_key, alpha)
    c32 = c + bytes(16)
    try:
        u = sodium.crypto_core_ed25519_sub(
            sodium.crypto_scalarmult_ed25519_base_noclamp(s_string),
            sodium.crypto_scalarmult_ed25519_noclamp(c32, public_key),
        )
        v = sodium.crypto_core_ed25519_sub(
            sodium.crypto_scalarmult_ed25519_noclamp(s_string, h),
            sodium.crypto_scalarmult_ed25519_noclamp(c32, gamma),
        )
    except SodiumError:
        raise VRFError("VRF proof is invalid") from None
    if not hmac.compare_digest(_challenge(public_key, h, gamma, u, v), c):
        raise VRFError("VRF proof is invalid")
    return proof_to_hash(pi)


#: Proofs :func:`verify_cached` saw verify: (public key, alpha, proof) -> beta. A
#: name's proof never changes (the VRF is deterministic), and a client looks the same
#: contacts up at every new checkpoint, so each is checked once per session. Only
#: successes are kept, keyed by every input, so a hit is exactly as strong as a
#: verification; when full, it starts again empty.
_VERIFIED: dict[tuple[bytes, bytes, bytes], bytes] = {}
_VERIFIED_MAX = 1024


def verify_cached(public_key: bytes, alpha: bytes, pi: bytes) -> bytes:
    """:func:`verify`, answered from memory for a (key, alpha, proof) that verified
    before (four scalar multiplications, about two thirds of a lookup's check)."""
    if not (type(public_key) is type(alpha) is type(pi) is bytes):
        return verify(public_key, alpha, pi)  # which refuses them with its own errors
    entry = (public_key, alpha, pi)
    beta = _VERIFIED.get(entry)
    if beta is None:
        beta = verify(public_key, alpha, pi)
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()  # one step, safe beside other threads
        _VERIFIED[entry] = beta
    return beta

