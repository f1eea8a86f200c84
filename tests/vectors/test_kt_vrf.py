"""ECVRF-EDWARDS25519-SHA512-TAI against RFC 9381 Appendix B.3 (Examples 16-18), with
the negative cases RFC 9381 §5.3, §5.4.4 and §5.4.5 call for: small-order and
non-canonical keys, Gamma off the prime-order subgroup, an unreduced s, and any
changed byte."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from nacl import bindings as sodium

from sottovoce.kt import vrf
from sottovoce.kt.errors import VRFError
from tests.vectors.loader import params

FILE = "kt/vrf/rfc9381-b3-edwards25519-sha512-tai.json"
VECTORS = params(FILE, lambda v: f"example{v['example']}", key="vectors")

_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493
#: RFC 9381 §5.4.5: the y coordinates of the eight small-order points, and p, p+1.
_BAD_Y2 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
_SMALL_ORDER_Y = [0, 1, _BAD_Y2, _P - _BAD_Y2, _P - 1, _P, _P + 1]


def _h(v: str) -> bytes:
    return bytes.fromhex(v)


@pytest.mark.parametrize("v", VECTORS)
def test_rfc9381_b3_prove_and_verify(v: dict[str, Any]) -> None:
    sk = vrf.VRFSecretKey(_h(v["SK"]))
    alpha = _h(v["alpha"])
    assert sk.public == _h(v["PK"])
    pi = sk.prove(alpha)
    assert pi == _h(v["pi"])
    assert vrf.proof_to_hash(pi) == _h(v["beta"])
    assert vrf.verify(_h(v["PK"]), alpha, _h(v["pi"])) == _h(v["beta"])
    assert sk.evaluate(alpha) == (_h(v["beta"]), _h(v["pi"]))


@pytest.mark.parametrize("v", VECTORS)
def test_rfc9381_b3_intermediate_values(v: dict[str, Any]) -> None:
    # x (RFC 8032 §5.1.5), H after ctr tries (§5.4.1.1), k (§5.4.2.2), U and V.
    sk = vrf.VRFSecretKey(_h(v["SK"]))
    assert sk._x.to_bytes(32, "little") == _h(v["x"])
    h = vrf._encode_to_curve(_h(v["PK"]), _h(v["alpha"]))
    assert h == _h(v["H"])
    k_string = hashlib.sha512(hashlib.sha512(_h(v["SK"])).digest()[32:] + h).digest()
    assert k_string == _h(v["k_string"])
    k = int.from_bytes(k_string, "little") % _Q
    assert k.to_bytes(32, "little") == _h(v["k"])
    assert sodium.crypto_scalarmult_ed25519_base_noclamp(_h(v["k"])) == _h(v["U"])
    assert sodium.crypto_scalarmult_ed25519_noclamp(_h(v["k"]), h) == _h(v["V"])


def _vector(n: int = 0) -> tuple[bytes, bytes, bytes]:
    v = VECTORS[n].values[0]
    return _h(v["PK"]), _h(v["alpha"]), _h(v["pi"])


@pytest.mark.parametrize("y", _SMALL_ORDER_Y)
@pytest.mark.parametrize("sign", [0, 0x80])
def test_rfc9381_5_4_5_small_order_and_non_canonical_keys_are_invalid(y: int, sign: int) -> None:
    _, alpha, pi = _vector()
    key = bytearray(y.to_bytes(32, "little"))
    key[31] |= sign
    with pytest.raises(VRFError):
        vrf.verify(bytes(key), alpha, pi)


def test_a_key_with_a_torsion_component_is_invalid() -> None:
    pk, alpha, pi = _vector()
    order4 = bytes(32)  # y = 0: a point of order 4
    mixed = sodium.crypto_core_ed25519_add(pk, order4)
    with pytest.raises(VRFError):
        vrf.verify(mixed, alpha, pi)


def test_non_canonical_encodings_are_invalid() -> None:
    # RFC 8032 §5.1.3: y >= p does not decode (only y < 19 has a second encoding y + p),
    # nor does x = 0 with the sign bit set.
    _, alpha, pi = _vector()
    for y in range(19):
        for sign in (0, 0x80):
            key = bytearray((y + _P).to_bytes(32, "little"))
            key[31] |= sign
            with pytest.raises(VRFError):
                vrf.verify(bytes(key), alpha, pi)
            assert not vrf._is_decodable(bytes(key))
    for y in (1, _P - 1):
        negative_zero = bytearray(y.to_bytes(32, "little"))
        negative_zero[31] |= 0x80
        assert not vrf._is_decodable(bytes(negative_zero))
        assert vrf._is_decodable(y.to_bytes(32, "little"))


def test_rfc9381_5_4_4_s_must_be_reduced() -> None:
    pk, alpha, pi = _vector()
    s = int.from_bytes(pi[48:], "little")
    with pytest.raises(VRFError):
        vrf.verify(pk, alpha, pi[:48] + (s + _Q).to_bytes(32, "little"))


def test_gamma_off_the_prime_order_subgroup_is_invalid() -> None:
    pk, alpha, pi = _vector()
    # Gamma + T (T of order 8 or 4) hashes to the same beta after cofactor clearing
    # (RFC 9381 §5.2), so refusing it is stricter than the RFC, never weaker.
    for torsion in (bytes(32), (_BAD_Y2).to_bytes(32, "little")):
        mixed = sodium.crypto_core_ed25519_add(pi[:32], torsion)
        forged = mixed + pi[32:]
        assert vrf.proof_to_hash(forged) == vrf.proof_to_hash(pi)
        with pytest.raises(VRFError):
            vrf.verify(pk, alpha, forged)
    for y in _SMALL_ORDER_Y[:5]:
        with pytest.raises(VRFError):
            vrf.verify(pk, alpha, y.to_bytes(32, "little") + pi[32:])


def test_any_changed_byte_or_input_is_invalid() -> None:
    pk, alpha, pi = _vector(1)
    for i in range(0, vrf.PROOF_SIZE, 5):
        bad = bytearray(pi)
        bad[i] ^= 0x01
        with pytest.raises(VRFError):
            vrf.verify(pk, alpha, bytes(bad))
    with pytest.raises(VRFError):
        vrf.verify(pk, alpha + b"\x00", pi)
    other_pk, _, _ = _vector(2)
    with pytest.raises(VRFError):
        vrf.verify(other_pk, alpha, pi)
    for wrong in (pi[:-1], pi + b"\x00", b""):
        with pytest.raises(VRFError):
            vrf.verify(pk, alpha, wrong)
    with pytest.raises(VRFError):
        vrf.verify(pk[:31], alpha, pi)


def test_zero_c_or_s_is_refused() -> None:
    pk, alpha, pi = _vector()
    with pytest.raises(VRFError):
        vrf.verify(pk, alpha, pi[:32] + bytes(16) + pi[48:])
    with pytest.raises(VRFError):
        vrf.verify(pk, alpha, pi[:48] + bytes(32))


def test_secret_key_never_prints_or_pickles() -> None:
    import pickle

    sk = vrf.VRFSecretKey(bytes(range(32)))
    assert bytes(range(32)).hex() not in repr(sk)
    with pytest.raises(TypeError):
        pickle.dumps(sk)


def test_the_cached_verifier_keeps_only_successes_and_needs_every_input_equal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pk, alpha, pi = _vector(1)
    monkeypatch.setattr(vrf, "_VERIFIED", {})
    calls: list[bytes] = []
    real = vrf.verify

    def counted(key: bytes, a: bytes, p: bytes) -> bytes:
        calls.append(p)
        return real(key, a, p)

    monkeypatch.setattr(vrf, "verify", counted)
    beta = vrf.verify_cached(pk, alpha, pi)
    assert beta == real(pk, alpha, pi)
    assert vrf.verify_cached(pk, alpha, pi) == beta and len(calls) == 1  # a hit
    bad = bytearray(pi)
    bad[40] ^= 1
    for _ in range(2):  # a failure is never kept: checked, and refused, each time
        with pytest.raises(VRFError):
            vrf.verify_cached(pk, alpha, bytes(bad))
    assert len(calls) == 3
    other_pk, _, _ = _vector(2)
    with pytest.raises(VRFError):  # the proof that verified, under another key or name
        vrf.verify_cached(other_pk, alpha, pi)
    with pytest.raises(VRFError):
        vrf.verify_cached(pk, alpha + b"\x00", pi)
    with pytest.raises(VRFError):  # not bytes: verify's own refusal, nothing cached
        vrf.verify_cached(pk, alpha, bytearray(pi))  # type: ignore[arg-type]
    assert list(vrf._VERIFIED) == [(pk, alpha, pi)]
