"""Contract tests for `sottovoce.secret` and the `sottovoce.crypto` primitive wrappers."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

import sottovoce.secret
from sottovoce.crypto import aead, kdf
from sottovoce.crypto.dh import X25519PrivateKey
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SignatureScheme, SigningKey, VerifyKey
from sottovoce.errors import CryptoError, DecryptionError, InvalidKey, SignatureError, UsageError
from sottovoce.secret import Secret
from tests.conftest import deterministic_rng

# --- Secret (docs/architecture.md §Rules) ---------------------------------------------

SECRET_BYTES = bytes.fromhex("deadbeefcafebabe0123456789abcdef")


@pytest.mark.parametrize(
    "render",
    [repr, str, format, lambda s: f"{s}", lambda s: f"{s!r:>60}"],
    ids=["repr", "str", "format", "fstring", "fstring-repr-padded"],
)
def test_secret_repr_and_str_are_redacted(render: object) -> None:
    s = Secret(SECRET_BYTES)
    text = render(s)  # type: ignore[operator]
    assert "redacted" in text
    assert str(len(SECRET_BYTES)) in text  # the length is all that shows
    for leak in (
        SECRET_BYTES.hex(),
        SECRET_BYTES.hex().upper(),
        repr(SECRET_BYTES)[2:-1],
        "deadbeef",
        "de ad",
        "222, 173",
    ):
        assert leak not in text


def test_secret_redacted_inside_containers_and_exceptions() -> None:
    s = Secret(SECRET_BYTES)
    assert "deadbeef" not in repr([s, {"k": s}])
    assert "deadbeef" not in str(ValueError(s))


def test_secret_equality_is_by_value_between_secrets_only() -> None:
    a, b = Secret(SECRET_BYTES), Secret(bytearray(SECRET_BYTES))
    assert a == b
    assert (a != b) is False  # __ne__ is defined consistently
    assert a != Secret(SECRET_BYTES[:-1] + b"\x00")
    assert a != Secret(SECRET_BYTES[:-1])  # different length
    assert a != Secret(b"")
    # Never equal to raw bytes: comparing a secret with bytes is a bug, not a match.
    assert a != SECRET_BYTES
    assert not (a == SECRET_BYTES)  # noqa: SIM201
    assert a.__eq__(SECRET_BYTES) is NotImplemented


def test_secret_equality_uses_constant_time_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []

    def spy(x: bytes, y: bytes) -> bool:
        calls.append((x, y))
        return x == y

    monkeypatch.setattr(sottovoce.secret, "hmac", SimpleNamespace(compare_digest=spy))
    assert Secret(b"abc") == Secret(b"abc")
    assert Secret(b"abc") != Secret(b"abd")
    assert calls == [(b"abc", b"abc"), (b"abc", b"abd")]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_secret_pickling_is_refused(protocol: int) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Secret(SECRET_BYTES), protocol=protocol)


def test_secret_is_not_hashable() -> None:
    s = Secret(SECRET_BYTES)
    with pytest.raises(TypeError):
        hash(s)
    with pytest.raises(TypeError):
        {s}  # noqa: B018
    with pytest.raises(TypeError):
        {s: 1}  # noqa: B018


def test_secret_expose_len_bool_and_copy_on_construction() -> None:
    source = bytearray(SECRET_BYTES)
    s = Secret(source)
    source[0] ^= 0xFF  # mutating the source must not change the secret
    assert s.expose() == SECRET_BYTES
    assert isinstance(s.expose(), bytes)
    assert len(s) == len(SECRET_BYTES)
    assert s
    assert not Secret(b"")
    assert Secret(memoryview(SECRET_BYTES)).expose() == SECRET_BYTES


def test_secret_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        Secret("deadbeef")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Secret(1234)  # type: ignore[arg-type]


def test_secret_has_no_instance_dict() -> None:
    # __slots__: nothing can be stashed on a Secret beside the value.
    with pytest.raises(AttributeError):
        Secret(b"x").extra = 1  # type: ignore[attr-defined]


# --- AEAD -----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", list(aead.Aead))
def test_aead_seal_open_round_trip(alg: aead.Aead, rng: Random) -> None:
    key, nonce = rng(alg.key_size), rng(alg.nonce_size)
    for pt in (b"", b"x", rng(1000)):
        ct = aead.seal(alg, key, nonce, pt, b"header")
        assert len(ct) == len(pt) + alg.tag_size
        assert ct[: len(pt)] != pt or not pt
        assert aead.open_(alg, key, nonce, ct, b"header") == pt
        # The keyed form is the same cipher.
        k = aead.AeadKey(alg, key)
        assert k.seal(nonce, pt, b"header") == ct
        assert k.open(nonce, ct, b"header") == pt


@pytest.mark.parametrize("alg", list(aead.Aead))
def test_aead_any_tampering_is_one_opaque_decryption_error(alg: aead.Aead, rng: Random) -> None:
    key, nonce, pt = rng(alg.key_size), rng(alg.nonce_size), b"attack at dawn"
    ct = aead.seal(alg, key, nonce, pt, b"aad")
    k = aead.AeadKey(alg, key)
    bad_cts = []
    for pos in range(len(ct)):
        flipped = bytearray(ct)
        flipped[pos] ^= 0x80
        bad_cts.append(bytes(flipped))
    bad_cts += [ct[:-1], ct[: alg.tag_size - 1], b"", ct + b"\x00"]
    for bad in bad_cts:
        with pytest.raises(DecryptionError) as exc:
            aead.open_(alg, key, nonce, bad, b"aad")
        assert pt.hex() not in str(exc.value)
        with pytest.raises(DecryptionError):
            k.open(nonce, bad, b"aad")
    for call in (
        lambda: aead.open_(alg, key, nonce, ct, b"other aad"),
        lambda: aead.open_(alg, key, nonce, ct),
        lambda: aead.open_(alg, rng(alg.key_size), nonce, ct, b"aad"),
        lambda: aead.open_(alg, key, rng(alg.nonce_size), ct, b"aad"),
        lambda: k.open(nonce, ct, b"other aad"),
    ):
        with pytest.raises(DecryptionError):
            call()


@pytest.mark.parametrize("alg", list(aead.Aead))
def test_aead_wrong_key_or_nonce_length_is_usage_error(alg: aead.Aead) -> None:
    with pytest.raises(UsageError):
        aead.seal(alg, bytes(alg.key_size + 1), bytes(12), b"")
    with pytest.raises(UsageError):
        aead.seal(alg, bytes(alg.key_size), bytes(11), b"")
    with pytest.raises(UsageError):
        aead.open_(alg, bytes(alg.key_size), bytes(13), bytes(16))
    with pytest.raises(UsageError):
        aead.AeadKey(alg, bytes(alg.key_size - 1))


def test_aead_key_repr_is_redacted() -> None:
    key = bytes.fromhex("00112233445566778899aabbccddeeff")
    text = repr(aead.AeadKey(aead.Aead.AES128GCM, key))
    assert "redacted" in text
    assert key.hex() not in text


# --- signatures -------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_sign_generate_sign_verify(scheme: SignatureScheme) -> None:
    key = SigningKey.generate(scheme, deterministic_rng(b"sign-" + scheme.name.encode()))
    again = SigningKey.generate(scheme, deterministic_rng(b"sign-" + scheme.name.encode()))
    assert key.verify_key == again.verify_key  # generation depends only on the rng
    assert key.private_bytes() == again.private_bytes()
    msg = b"RFC 9420 \xc2\xa75.1.2 content"
    sig = key.sign(msg)
    key.verify_key.verify(msg, sig)
    # Round trip of the public encoding (RFC 9420 §5.1.1).
    vk = VerifyKey(scheme, key.verify_key.data)
    assert vk == key.verify_key
    assert hash(vk) == hash(key.verify_key)
    vk.verify(msg, sig)
    # Re-loading the private key gives the same public key.
    assert SigningKey(scheme, key.private_bytes()).verify_key == key.verify_key


@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_sign_rejects_tampered_message_and_signature(scheme: SignatureScheme, rng: Random) -> None:
    key = SigningKey.generate(scheme, rng)
    msg = b"hello"
    sig = key.sign(msg)
    bad_sig = bytearray(sig)
    bad_sig[len(sig) // 2] ^= 0x01
    other = SigningKey.generate(scheme, rng)
    for m, s, vk in (
        (b"hellp", sig, key.verify_key),
        (msg + b"\x00", sig, key.verify_key),
        (b"", sig, key.verify_key),
        (msg, b"", key.verify_key),
        (msg, bytes(bad_sig), key.verify_key),
        (msg, sig[:-1], key.verify_key),
        (msg, sig, other.verify_key),
    ):
        with pytest.raises(SignatureError):
            vk.verify(m, s)


@pytest.mark.parametrize("scheme", list(SignatureScheme))
@pytest.mark.parametrize(
    "public",
    [b"", b"\x04", b"\x04" + b"\x01" * 10, bytes(200)],
    ids=["empty", "04", "short", "long"],
)
def test_sign_malformed_public_key_is_invalid_key(scheme: SignatureScheme, public: bytes) -> None:
    with pytest.raises(InvalidKey):
        VerifyKey(scheme, public)


def test_sign_ecdsa_point_off_curve_is_invalid_key() -> None:
    with pytest.raises(InvalidKey):
        VerifyKey(SignatureScheme.ECDSA_SECP256R1_SHA256, b"\x04" + b"\x01" * 64)


#: RFC 9420 §5.1.1 private key sizes: raw EdDSA seeds, big-endian ECDSA scalars.
PRIVATE_KEY_SIZE = {
    SignatureScheme.ED25519: 32,
    SignatureScheme.ED448: 57,
    SignatureScheme.ECDSA_SECP256R1_SHA256: 32,
    SignatureScheme.ECDSA_SECP384R1_SHA384: 48,
    SignatureScheme.ECDSA_SECP521R1_SHA512: 66,
}


@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_sign_private_key_encoding_size(scheme: SignatureScheme, rng: Random) -> None:
    key = SigningKey.generate(scheme, rng)
    assert len(key.private_bytes()) == PRIVATE_KEY_SIZE[scheme]


@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_sign_malformed_private_key_is_invalid_key(scheme: SignatureScheme) -> None:
    with pytest.raises(InvalidKey):
        SigningKey(scheme, b"\x01" * (PRIVATE_KEY_SIZE[scheme] + 1))
    if not scheme.name.startswith("ECDSA"):
        with pytest.raises(InvalidKey):
            SigningKey(scheme, b"\x01" * 7)
    else:
        # Short big-endian scalars (leading zeros dropped) are accepted, as some encoders
        # emit them (the mlswg suite-5 vectors do).
        assert SigningKey(scheme, b"\x01" * 7).verify_key.scheme is scheme
        with pytest.raises(InvalidKey):  # the zero scalar is not a key
            SigningKey(scheme, bytes(PRIVATE_KEY_SIZE[scheme]))


def test_sign_ed25519_rfc8032_7_1_test_1() -> None:
    key = SigningKey(
        SignatureScheme.ED25519,
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
    )
    assert key.verify_key.data.hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert key.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065"
        "224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_signing_key_is_redacted_and_not_picklable(rng: Random) -> None:
    key = SigningKey.generate(SignatureScheme.ED25519, rng)
    raw = key.private_bytes().expose()
    assert raw.hex() not in repr(key)
    assert "redacted" in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)


# --- X25519 (RFC 7748) ------------------------------------------------------------------


def test_dh_exchange_agrees(rng: Random) -> None:
    alice, bob = X25519PrivateKey.generate(rng), X25519PrivateKey.generate(rng)
    shared = alice.exchange(bob.public)
    assert isinstance(shared, Secret)
    assert len(shared) == 32
    assert shared == bob.exchange(alice.public)
    assert shared != X25519PrivateKey.generate(rng).exchange(bob.public)


def test_dh_rfc7748_6_1() -> None:
    alice = X25519PrivateKey(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = X25519PrivateKey(
        Secret(bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    )
    assert alice.public.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob.public.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    want = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert alice.exchange(bob.public).expose().hex() == want
    assert bob.exchange(alice.public).expose().hex() == want


def test_dh_rejects_low_order_and_malformed_points(rng: Random) -> None:
    key = X25519PrivateKey.generate(rng)
    # RFC 7748 §6.1: an all-zero shared secret (low-order point) must be rejected.
    for bad in (bytes(32), (1).to_bytes(32, "little"), bytes(31), b""):
        with pytest.raises(CryptoError):
            key.exchange(bad)


def test_dh_malformed_private_key_and_redacted_repr(rng: Random) -> None:
    with pytest.raises(InvalidKey):
        X25519PrivateKey(bytes(31))
    raw = rng(32)
    assert raw.hex() not in repr(X25519PrivateKey(raw))


# --- hash / HMAC / HKDF ---------------------------------------------------------------


def test_kdf_rfc5869_a_1_test_case_1_sha256() -> None:
    ikm = bytes([0x0B] * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    prk = kdf.hkdf_extract(kdf.Hash.SHA256, salt, ikm)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = kdf.hkdf_expand(kdf.Hash.SHA256, prk, info, 42)
    want = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    assert okm.hex() == want
    assert kdf.hkdf(kdf.Hash.SHA256, ikm, salt, info, 42).hex() == want


def test_kdf_rfc5869_a_3_empty_salt_means_hashlen_zeros() -> None:
    ikm = bytes([0x0B] * 22)
    prk = kdf.hkdf_extract(kdf.Hash.SHA256, b"", ikm)
    assert prk.hex() == "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04"
    assert kdf.hkdf_expand(kdf.Hash.SHA256, prk, b"", 42).hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


@pytest.mark.parametrize("alg", list(kdf.Hash))
def test_kdf_expand_length_bounds(alg: kdf.Hash) -> None:
    prk = bytes(alg.size)
    assert len(kdf.hkdf_expand(alg, prk, b"", 255 * alg.size)) == 255 * alg.size
    for bad in (0, -1, 255 * alg.size + 1):
        with pytest.raises(UsageError):
            kdf.hkdf_expand(alg, prk, b"", bad)


def test_kdf_digest_and_hmac_known_answers() -> None:
    # FIPS 180-2 "abc" and RFC 4231 §4.3 test case 2.
    assert kdf.digest(kdf.Hash.SHA256, b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert kdf.hmac(kdf.Hash.SHA256, b"Jefe", b"what do ya want for nothing?").hex() == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    for alg in kdf.Hash:
        assert len(kdf.digest(alg, b"")) == alg.size
        assert len(kdf.hmac(alg, b"k", b"")) == alg.size
