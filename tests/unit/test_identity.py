"""Identity (docs/architecture.md §Identity): device certificates, revocation, names,
safety numbers and key reprs."""

from __future__ import annotations

import pickle
from dataclasses import replace
from typing import Any

import pytest

from sottovoce.crypto.rng import Random
from sottovoce.errors import (
    CertificateExpired,
    CertificateRevoked,
    DecodeError,
    IdentityError,
    UsageError,
)
from sottovoce.identity import (
    AccountKey,
    DeviceCertificate,
    DevicePublicKeys,
    DeviceSigningKey,
    RevocationStatement,
    SafetyNumber,
    safety_number,
    validate_device_id,
    validate_username,
)
from sottovoce.limits import (
    CLOCK_SKEW_MS,
    DEVICE_CERT_MAX_LIFETIME_MS,
    DEVICE_ID_MAX_LEN,
    SAFETY_NUMBER_DIGITS,
    USERNAME_MAX_LEN,
)
from sottovoce.secret import Secret
from tests.pairwise_peers import DAY_MS, NOW_MS

USERNAME = "alice"
DEVICE_ID = "phone-1"
LIFETIME_MS = 30 * DAY_MS


@pytest.fixture
def ak(rng: Random) -> AccountKey:
    return AccountKey.generate(rng)


@pytest.fixture
def keys(rng: Random) -> DevicePublicKeys:
    return DevicePublicKeys(
        signing_key=DeviceSigningKey.generate(rng).public,
        olm_identity_key=rng(32),
        olm_signing_key=rng(32),
        mls_signature_key=rng(32),
    )


@pytest.fixture
def cert(ak: AccountKey, keys: DevicePublicKeys) -> DeviceCertificate:
    return DeviceCertificate.issue(
        ak,
        username=USERNAME,
        device_id=DEVICE_ID,
        keys=keys,
        now_ms=NOW_MS,
        lifetime_ms=LIFETIME_MS,
    )


def resign(cert: DeviceCertificate, ak: AccountKey, **changes: Any) -> DeviceCertificate:
    """A certificate with ``changes`` applied and a *valid* signature by ``ak``."""
    body = replace(cert, **changes, signature=b"")
    return replace(body, signature=ak.sign(body.tbs()))


# --- device certificates: issue, wire form ----------------------------------------


def test_certificate_issue_binds_every_field(
    cert: DeviceCertificate, ak: AccountKey, keys: DevicePublicKeys
) -> None:
    assert cert.username == USERNAME
    assert cert.device_id == DEVICE_ID
    assert cert.account_key == ak.public
    assert cert.keys == keys
    assert cert.created_at_ms == NOW_MS
    assert cert.expires_at_ms == NOW_MS + LIFETIME_MS
    assert len(cert.signature) == 64
    ak.verify_key.verify(cert.tbs(), cert.signature)


def test_certificate_encode_decode_round_trip(cert: DeviceCertificate) -> None:
    data = cert.encode()
    again = DeviceCertificate.decode(data)
    assert again == cert
    assert again.encode() == data
    again.verify(now_ms=NOW_MS, account_key=cert.account_key, username=USERNAME)


def test_certificate_round_trip_without_mls_key(ak: AccountKey, keys: DevicePublicKeys) -> None:
    cert = DeviceCertificate.issue(
        ak,
        username=USERNAME,
        device_id=DEVICE_ID,
        keys=replace(keys, mls_signature_key=b""),
        now_ms=NOW_MS,
    )
    assert DeviceCertificate.decode(cert.encode()) == cert
    assert cert.expires_at_ms - cert.created_at_ms == DEVICE_CERT_MAX_LIFETIME_MS


def test_certificate_decode_rejects_trailing_bytes(cert: DeviceCertificate) -> None:
    with pytest.raises(DecodeError):
        DeviceCertificate.decode(cert.encode() + b"\x00")


def test_certificate_decode_rejects_every_truncation(cert: DeviceCertificate) -> None:
    data = cert.encode()
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            DeviceCertificate.decode(data[:n])


def test_certificate_decode_rejects_unknown_version(cert: DeviceCertificate) -> None:
    data = cert.encode()
    with pytest.raises(DecodeError):
        DeviceCertificate.decode(b"\x02" + data[1:])


def test_certificate_every_flipped_byte_fails_decode_or_verify(cert: DeviceCertificate) -> None:
    data = cert.encode()
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises((DecodeError, IdentityError)):
            DeviceCertificate.decode(bytes(tampered)).verify(
                now_ms=NOW_MS, account_key=cert.account_key
            )


# --- device certificates: verification ---------------------------------------------


def test_certificate_verify_ok(cert: DeviceCertificate, ak: AccountKey) -> None:
    cert.verify(now_ms=NOW_MS, account_key=ak.public, username=USERNAME)  # no exception
    # Unpinned (first contact) verification checks the self-consistency only.
    cert.verify(now_ms=NOW_MS)


def test_certificate_from_wrong_account_key_is_rejected(
    cert: DeviceCertificate, rng: Random
) -> None:
    other = AccountKey.generate(rng)
    with pytest.raises(IdentityError):
        cert.verify(now_ms=NOW_MS, account_key=other.public)


def test_certificate_issued_by_another_account_key_is_rejected_when_pinned(
    cert: DeviceCertificate, ak: AccountKey, rng: Random
) -> None:
    mallory = AccountKey.generate(rng)
    forged = resign(cert, mallory, account_key=mallory.public)
    forged.verify(now_ms=NOW_MS)  # self-consistent ...
    with pytest.raises(IdentityError):  # ... but not alice's
        forged.verify(now_ms=NOW_MS, account_key=ak.public)


def test_certificate_for_wrong_username_is_rejected(cert: DeviceCertificate) -> None:
    with pytest.raises(IdentityError):
        cert.verify(now_ms=NOW_MS, username="alicia")


@pytest.mark.parametrize(
    "field",
    [
        "version",
        "username",
        "account_key",
        "device_id",
        "keys.signing_key",
        "keys.olm_identity_key",
        "keys.olm_signing_key",
        "keys.mls_signature_key",
        "created_at_ms",
        "expires_at_ms",
    ],
)
def test_certificate_tampered_field_breaks_the_signature(
    cert: DeviceCertificate, field: str, rng: Random
) -> None:
    if field.startswith("keys."):
        name = field.removeprefix("keys.")
        tampered = replace(cert, keys=replace(cert.keys, **{name: rng(32)}))
    elif field == "account_key":
        tampered = replace(cert, account_key=AccountKey.generate(rng).public)
    elif field == "username":
        tampered = replace(cert, username="mallory")
    elif field == "device_id":
        tampered = replace(cert, device_id="phone-2")
    elif field == "version":
        tampered = replace(cert, version=2)
    elif field == "created_at_ms":
        tampered = replace(cert, created_at_ms=cert.created_at_ms - 1)
    else:
        tampered = replace(cert, expires_at_ms=cert.expires_at_ms + DAY_MS)
    assert tampered != cert
    with pytest.raises(IdentityError) as info:
        tampered.verify(now_ms=NOW_MS)
    assert type(info.value) is IdentityError


@pytest.mark.parametrize("how", ["random", "other-key", "other-message", "empty"])
def test_certificate_forged_signature_is_rejected(
    cert: DeviceCertificate, rng: Random, how: str
) -> None:
    if how == "random":
        sig = rng(64)
    elif how == "other-key":
        sig = AccountKey.generate(rng).sign(cert.tbs())
    elif how == "other-message":
        sig = AccountKey(rng(32)).sign(cert.tbs() + b"x")
    else:
        sig = b""
    with pytest.raises(IdentityError):
        replace(cert, signature=sig).verify(now_ms=NOW_MS)


def test_certificate_expires_at_expires_at_ms(cert: DeviceCertificate) -> None:
    cert.verify(now_ms=cert.expires_at_ms - 1)
    with pytest.raises(CertificateExpired):
        cert.verify(now_ms=cert.expires_at_ms)
    with pytest.raises(CertificateExpired):
        cert.verify(now_ms=cert.expires_at_ms + DAY_MS)


def test_certificate_not_yet_valid_beyond_clock_skew(cert: DeviceCertificate) -> None:
    cert.verify(now_ms=cert.created_at_ms - CLOCK_SKEW_MS)  # within tolerated skew
    with pytest.raises(IdentityError) as info:
        cert.verify(now_ms=cert.created_at_ms - CLOCK_SKEW_MS - 1)
    assert type(info.value) is IdentityError


def test_certificate_lifetime_over_maximum_is_refused_at_issue(
    ak: AccountKey, keys: DevicePublicKeys
) -> None:
    for lifetime in (0, -1, DEVICE_CERT_MAX_LIFETIME_MS + 1):
        with pytest.raises(UsageError):
            DeviceCertificate.issue(
                ak,
                username=USERNAME,
                device_id=DEVICE_ID,
                keys=keys,
                now_ms=NOW_MS,
                lifetime_ms=lifetime,
            )


def test_certificate_lifetime_over_maximum_is_rejected_even_if_signed(
    cert: DeviceCertificate, ak: AccountKey
) -> None:
    too_long = resign(cert, ak, expires_at_ms=cert.created_at_ms + DEVICE_CERT_MAX_LIFETIME_MS + 1)
    with pytest.raises(IdentityError) as info:
        too_long.verify(now_ms=NOW_MS, account_key=ak.public)
    assert type(info.value) is IdentityError
    at_max = resign(cert, ak, expires_at_ms=cert.created_at_ms + DEVICE_CERT_MAX_LIFETIME_MS)
    at_max.verify(now_ms=NOW_MS, account_key=ak.public)


def test_certificate_of_revoked_device_is_rejected(cert: DeviceCertificate) -> None:
    with pytest.raises(CertificateRevoked):
        cert.verify(now_ms=NOW_MS, revoked_device_ids={DEVICE_ID})
    with pytest.raises(CertificateRevoked):
        cert.verify(now_ms=NOW_MS, revoked_device_ids=frozenset({"tablet", DEVICE_ID}))
    cert.verify(now_ms=NOW_MS, revoked_device_ids={"tablet"})


def test_certificate_with_malformed_names_is_an_identity_error(
    cert: DeviceCertificate, ak: AccountKey
) -> None:
    # Names are validated on verify too: decode accepts any ASCII.
    for changes in ({"username": "Alice!"}, {"device_id": "dev ice"}):
        bad = resign(cert, ak, **changes)
        with pytest.raises(IdentityError):
            DeviceCertificate.decode(bad.encode()).verify(now_ms=NOW_MS)


def test_identity_error_subclasses_keep_their_codes() -> None:
    assert issubclass(CertificateExpired, IdentityError)
    assert issubclass(CertificateRevoked, IdentityError)
    assert CertificateExpired.code == "certificate_expired"
    assert CertificateRevoked.code == "certificate_revoked"


# --- revocation statements ---------------------------------------------------------


@pytest.fixture
def revocation(ak: AccountKey) -> RevocationStatement:
    return RevocationStatement.issue(ak, username=USERNAME, device_id=DEVICE_ID, now_ms=NOW_MS)


def test_revocation_sign_verify_round_trip(revocation: RevocationStatement, ak: AccountKey) -> None:
    revocation.verify(account_key=ak.public, username=USERNAME)
    again = RevocationStatement.decode(revocation.encode())
    assert again == revocation
    again.verify(account_key=ak.public)


def test_revocation_from_wrong_account_key_is_rejected(
    revocation: RevocationStatement, ak: AccountKey, rng: Random
) -> None:
    other = AccountKey.generate(rng)
    with pytest.raises(IdentityError):
        revocation.verify(account_key=other.public)
    forged = RevocationStatement.issue(other, username=USERNAME, device_id=DEVICE_ID, now_ms=NOW_MS)
    with pytest.raises(IdentityError):
        forged.verify(account_key=ak.public)
    with pytest.raises(IdentityError):  # claims alice's key, signed by another
        replace(forged, account_key=ak.public).verify(account_key=ak.public)


def test_revocation_for_wrong_username_is_rejected(
    revocation: RevocationStatement, ak: AccountKey
) -> None:
    with pytest.raises(IdentityError):
        revocation.verify(account_key=ak.public, username="bob")


@pytest.mark.parametrize(
    "changes",
    [
        {"username": "mallory"},
        {"device_id": "laptop"},
        {"revoked_at_ms": NOW_MS + 1},
        {"signature": bytes(64)},
    ],
    ids=["username", "device_id", "revoked_at_ms", "signature"],
)
def test_revocation_tampered_field_is_rejected(
    revocation: RevocationStatement, ak: AccountKey, changes: dict[str, Any]
) -> None:
    with pytest.raises(IdentityError):
        replace(revocation, **changes).verify(account_key=ak.public)


def test_revocation_decode_rejects_truncation_and_trailing_bytes(
    revocation: RevocationStatement,
) -> None:
    data = revocation.encode()
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            RevocationStatement.decode(data[:n])
    with pytest.raises(DecodeError):
        RevocationStatement.decode(data + b"\x00")


def test_certificate_signature_cannot_be_replayed_as_revocation(
    cert: DeviceCertificate, ak: AccountKey
) -> None:
    # Domain separation: the account key signs different labels for each structure.
    replayed = RevocationStatement(
        username=USERNAME,
        account_key=ak.public,
        device_id=DEVICE_ID,
        revoked_at_ms=NOW_MS,
        signature=cert.signature,
    )
    with pytest.raises(IdentityError):
        replayed.verify(account_key=ak.public)


# --- names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["abc", "alice", "bob_1", "a.b-c", "x" * USERNAME_MAX_LEN, "007", "a-9"]
)
def test_valid_usernames_are_accepted(name: str) -> None:
    assert validate_username(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "ab",
        "x" * (USERNAME_MAX_LEN + 1),
        "Alice",
        "_alice",
        "alice.",
        "-bob",
        "al ice",
        "al@ce",
        "alicé",
        "alice\n",
        "a/b",
    ],
)
def test_invalid_usernames_are_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError):
        validate_username(name)


@pytest.mark.parametrize(
    "device_id", ["a", "phone", "Phone-1", "dev_2", "-", "x" * DEVICE_ID_MAX_LEN]
)
def test_valid_device_ids_are_accepted(device_id: str) -> None:
    assert validate_device_id(device_id) == device_id


@pytest.mark.parametrize(
    "device_id", ["", "x" * (DEVICE_ID_MAX_LEN + 1), "a b", "a.b", "a/b", "é", "a\n", "a:b"]
)
def test_invalid_device_ids_are_a_usage_error(device_id: str) -> None:
    with pytest.raises(UsageError):
        validate_device_id(device_id)


def test_issue_refuses_invalid_names(ak: AccountKey, keys: DevicePublicKeys) -> None:
    with pytest.raises(UsageError):
        DeviceCertificate.issue(ak, username="A", device_id=DEVICE_ID, keys=keys, now_ms=NOW_MS)
    with pytest.raises(UsageError):
        DeviceCertificate.issue(ak, username=USERNAME, device_id="a b", keys=keys, now_ms=NOW_MS)
    with pytest.raises(UsageError):
        RevocationStatement.issue(ak, username=USERNAME, device_id="", now_ms=NOW_MS)


# --- safety numbers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def account_keys() -> tuple[bytes, bytes, bytes]:
    return (
        AccountKey(bytes(range(32))).public,
        AccountKey(bytes(range(1, 33))).public,
        AccountKey(bytes(range(2, 34))).public,
    )


@pytest.fixture(scope="module")
def number(account_keys: tuple[bytes, bytes, bytes]) -> SafetyNumber:
    a, b, _ = account_keys
    return safety_number(a, b)


def test_safety_number_is_60_digits(number: SafetyNumber) -> None:
    assert len(number.digits) == SAFETY_NUMBER_DIGITS == 60
    assert number.digits.isdigit()
    assert number.digits.isascii()


def test_safety_number_is_equal_whatever_the_argument_order(
    account_keys: tuple[bytes, bytes, bytes], number: SafetyNumber
) -> None:
    a, b, _ = account_keys
    swapped = safety_number(b, a)
    assert swapped == number
    assert swapped.digits == number.digits
    assert swapped.qr_payload() == number.qr_payload()


def test_safety_number_differs_when_either_key_changes(
    account_keys: tuple[bytes, bytes, bytes], number: SafetyNumber
) -> None:
    a, b, c = account_keys
    assert safety_number(a, c).digits != number.digits
    assert safety_number(c, b).digits != number.digits
    assert safety_number(a, c).digits != safety_number(c, b).digits


def test_safety_number_grouped_is_12_groups_of_5(number: SafetyNumber) -> None:
    text = number.grouped()
    rows = text.split("\n")
    groups = text.split()
    assert len(rows) == 3
    assert all(len(row.split(" ")) == 4 for row in rows)
    assert len(groups) == 12
    assert all(len(g) == 5 and g.isdigit() for g in groups)
    assert "".join(groups) == number.digits


def test_safety_number_qr_matches_on_both_sides(
    account_keys: tuple[bytes, bytes, bytes], number: SafetyNumber
) -> None:
    a, b, _ = account_keys
    theirs = safety_number(b, a)
    assert number.matches_qr(theirs.qr_payload())
    assert theirs.matches_qr(number.qr_payload())


def test_safety_number_qr_from_another_pair_does_not_match(
    account_keys: tuple[bytes, bytes, bytes], number: SafetyNumber
) -> None:
    a, _, c = account_keys
    assert not number.matches_qr(safety_number(a, c).qr_payload())
    # The same fingerprints in the other order are not a canonical payload.
    payload = number.qr_payload()
    swapped = payload[:5] + number.high + number.low
    assert not number.matches_qr(swapped)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: b"",
        lambda p: p[:-1],
        lambda p: p + b"\x00",
        lambda p: b"XVSN" + p[4:],
        lambda p: p[:4] + b"\x02" + p[5:],
        lambda p: bytes(len(p)),
    ],
    ids=["empty", "truncated", "trailing", "magic", "version", "zeros"],
)
def test_safety_number_malformed_qr_is_a_decode_error(number: SafetyNumber, mangle: Any) -> None:
    with pytest.raises(DecodeError):
        number.matches_qr(mangle(number.qr_payload()))


def test_safety_number_refuses_keys_of_wrong_length(
    account_keys: tuple[bytes, bytes, bytes],
) -> None:
    a, _, _ = account_keys
    with pytest.raises(UsageError):
        safety_number(a, a[:31])


# --- secrets never print -------------------------------------------------------------


def _leaks(text: str, private: bytes) -> bool:
    return (
        private.hex() in text.lower()
        or private.hex()[:16] in text.lower()
        or repr(private) in text
        or private.decode("latin-1") in text
    )


@pytest.mark.parametrize("cls", [AccountKey, DeviceSigningKey])
def test_key_reprs_never_contain_private_bytes(cls: type[AccountKey], rng: Random) -> None:
    private = rng(32)
    key = cls(private)
    assert key.private_bytes().expose() == private
    for text in (repr(key), str(key), f"{key!r}", repr([key])):
        assert not _leaks(text, private)
    assert key.public.hex()[:16] in repr(key)
    assert not _leaks(repr(key.private_bytes()), private)


def test_secret_repr_never_contains_the_bytes(rng: Random) -> None:
    value = rng(32)
    secret = Secret(value)
    for text in (repr(secret), str(secret), f"{secret}", repr({"k": secret})):
        assert not _leaks(text, value)
        assert "32 bytes redacted" in text


@pytest.mark.parametrize("cls", [AccountKey, DeviceSigningKey])
def test_keys_and_secrets_refuse_pickling(cls: type[AccountKey], rng: Random) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(cls(rng(32)))
    with pytest.raises(TypeError):
        pickle.dumps(Secret(rng(32)))
