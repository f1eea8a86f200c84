"""HPKE (RFC 9180) with the X-Wing KEM: base and PSK mode round trips, export, refusals."""

from __future__ import annotations

import pytest

from sottovoce.crypto import xwing
from sottovoce.crypto.hpke import AeadId, KdfId
from sottovoce.crypto.hpke_xwing import XWingHpke
from sottovoce.crypto.rng import Random
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import DecryptionError, InvalidKey, UsageError

HPKE = XWingHpke(KdfId.HKDF_SHA256, AeadId.AES128GCM)


def test_single_shot_base_mode_round_trip(rng: Random) -> None:
    kp = HPKE.generate_key_pair(rng)
    assert len(kp.public) == xwing.PUBLIC_KEY_SIZE
    enc, ct = HPKE.seal(kp.public, b"info", b"aad", b"secret message", rng)
    assert len(enc) == xwing.CIPHERTEXT_SIZE
    assert HPKE.open(enc, kp.private, b"info", b"aad", ct) == b"secret message"
    with pytest.raises(DecryptionError):
        HPKE.open(enc, kp.private, b"other info", b"aad", ct)
    with pytest.raises(DecryptionError):
        HPKE.open(enc, kp.private, b"info", b"other aad", ct)
    other = HPKE.generate_key_pair(rng)
    with pytest.raises(DecryptionError):
        HPKE.open(enc, other.private, b"info", b"aad", ct)


def test_context_sequence_and_export_agree(rng: Random) -> None:
    kp = HPKE.generate_key_pair(rng)
    enc, sender = HPKE.setup_sender(kp.public, b"i", ikm_e=rng(32))
    recipient = HPKE.setup_recipient(enc, kp.private, b"i")
    c1, c2 = sender.seal(b"one"), sender.seal(b"two")
    assert c1 != c2
    assert recipient.open(c1) == b"one" and recipient.open(c2) == b"two"
    assert sender.export(b"ctx", 32) == recipient.export(b"ctx", 32)
    assert sender.export(b"ctx", 32) != sender.export(b"other", 32)


def test_psk_mode_binds_the_psk(rng: Random) -> None:
    kp = HPKE.generate_key_pair(rng)
    enc, s = HPKE.setup_sender(kp.public, b"", ikm_e=rng(32), psk=b"k" * 32, psk_id=b"id")
    ct = s.seal(b"x")
    good = HPKE.setup_recipient(enc, kp.private, b"", psk=b"k" * 32, psk_id=b"id")
    assert good.open(ct) == b"x"
    with pytest.raises(DecryptionError):
        HPKE.setup_recipient(enc, kp.private, b"").open(ct)


def test_auth_mode_and_bad_keys_are_refused(rng: Random) -> None:
    kp = HPKE.generate_key_pair(rng)
    with pytest.raises(UsageError):
        HPKE.setup_sender(kp.public, b"", ikm_e=rng(32), sender_private=kp.private)
    with pytest.raises(InvalidKey):
        HPKE.seal(kp.public[:-1], b"", b"", b"x", rng)
    with pytest.raises(DecryptionError):
        HPKE.open(b"\0" * 10, kp.private, b"", b"", b"x" * 20)


def test_derive_key_pair_is_deterministic_and_matches_public_from_private() -> None:
    a, b = HPKE.derive_key_pair(b"ikm"), HPKE.derive_key_pair(b"ikm")
    assert a.public == b.public and a.private.expose() == b.private.expose()
    assert HPKE.public_from_private(a.private) == a.public
    assert HPKE.derive_key_pair(b"ikm2").public != a.public


def test_the_hybrid_mls_suite_uses_xwing() -> None:
    suite = cipher_suite(0xF001)
    assert suite.name == "MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519"
    assert isinstance(suite.hpke, XWingHpke)
    assert suite.nh == 32 and suite.aead_key_size == 16


def test_ml_kem_encapsulation_key_check_refuses_an_out_of_range_coefficient(rng: Random) -> None:
    """FIPS 203 §7.2: a coefficient >= q (here 0xFFF) in pk_M fails encapsulation."""
    kp = HPKE.generate_key_pair(rng)
    bad = b"\xff\xff" + kp.public[2:]
    with pytest.raises(InvalidKey):
        HPKE.seal(bad, b"", b"", b"x", rng)
    with pytest.raises(InvalidKey):
        xwing.encapsulate(bad, rng(32))
