"""Identity (docs/architecture.md §Identity): the account key's account-deletion statement.

Like the revocation statement: only the account key makes one, every field is
under the signature, the domain label keeps other signatures of the same key
from being replayed as a deletion, and (deletion only) a statement is accepted
for ``ACCOUNT_DELETION_MAX_AGE_MS`` after it was signed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from sottovoce.crypto.rng import Random
from sottovoce.errors import DecodeError, IdentityError, UsageError
from sottovoce.identity import AccountDeletion, AccountKey, RevocationStatement
from sottovoce.limits import ACCOUNT_DELETION_MAX_AGE_MS, CLOCK_SKEW_MS
from tests.pairwise_peers import NOW_MS

USERNAME = "alice"


@pytest.fixture
def ak(rng: Random) -> AccountKey:
    return AccountKey.generate(rng)


@pytest.fixture
def deletion(ak: AccountKey) -> AccountDeletion:
    return AccountDeletion.issue(ak, username=USERNAME, now_ms=NOW_MS)


def test_deletion_sign_verify_round_trip(deletion: AccountDeletion, ak: AccountKey) -> None:
    deletion.verify(account_key=ak.public, username=USERNAME, now_ms=NOW_MS)
    again = AccountDeletion.decode(deletion.encode())
    assert again == deletion
    assert again.deleted_at_ms == NOW_MS and again.account_key == ak.public
    again.verify(account_key=ak.public, username=USERNAME, now_ms=NOW_MS + 1000)


def test_deletion_by_another_account_key_is_rejected(
    deletion: AccountDeletion, ak: AccountKey, rng: Random
) -> None:
    other = AccountKey.generate(rng)
    with pytest.raises(IdentityError, match="different account key"):
        deletion.verify(account_key=other.public, username=USERNAME, now_ms=NOW_MS)
    forged = AccountDeletion.issue(other, username=USERNAME, now_ms=NOW_MS)
    with pytest.raises(IdentityError, match="different account key"):
        forged.verify(account_key=ak.public, username=USERNAME, now_ms=NOW_MS)
    # Claims alice's key but is signed by another one.
    with pytest.raises(IdentityError, match="signature is invalid"):
        replace(forged, account_key=ak.public).verify(
            account_key=ak.public, username=USERNAME, now_ms=NOW_MS
        )


def test_deletion_of_another_username_is_rejected(
    deletion: AccountDeletion, ak: AccountKey
) -> None:
    with pytest.raises(IdentityError, match="different username"):
        deletion.verify(account_key=ak.public, username="bob", now_ms=NOW_MS)


@pytest.mark.parametrize(
    "changes",
    [{"username": "mallory"}, {"deleted_at_ms": NOW_MS + 1}, {"signature": bytes(64)}],
    ids=["username", "deleted_at_ms", "signature"],
)
def test_deletion_tampered_field_is_rejected(
    deletion: AccountDeletion, ak: AccountKey, changes: dict[str, Any]
) -> None:
    tampered = replace(deletion, **changes)
    with pytest.raises(IdentityError):
        tampered.verify(account_key=ak.public, username=tampered.username, now_ms=NOW_MS)


def test_deletion_is_accepted_only_while_fresh(deletion: AccountDeletion, ak: AccountKey) -> None:
    key = ak.public
    deletion.verify(account_key=key, username=USERNAME, now_ms=NOW_MS + ACCOUNT_DELETION_MAX_AGE_MS)
    with pytest.raises(IdentityError, match="too old"):
        deletion.verify(account_key=key, username=USERNAME,
                        now_ms=NOW_MS + ACCOUNT_DELETION_MAX_AGE_MS + 1)
    deletion.verify(account_key=key, username=USERNAME, now_ms=NOW_MS - CLOCK_SKEW_MS)
    with pytest.raises(IdentityError, match="future"):
        deletion.verify(account_key=key, username=USERNAME, now_ms=NOW_MS - CLOCK_SKEW_MS - 1)


def test_deletion_decode_rejects_truncation_and_trailing_bytes(
    deletion: AccountDeletion,
) -> None:
    data = deletion.encode()
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            AccountDeletion.decode(data[:n])
    with pytest.raises(DecodeError):
        AccountDeletion.decode(data + b"\x00")


def test_deletion_decode_rejects_wrong_key_and_signature_lengths(
    deletion: AccountDeletion,
) -> None:
    short_key = replace(deletion, account_key=deletion.account_key[:31])
    with pytest.raises(DecodeError):
        AccountDeletion.decode(short_key.encode())
    short_sig = replace(deletion, signature=deletion.signature[:63])
    with pytest.raises(DecodeError):
        AccountDeletion.decode(short_sig.encode())


def test_issue_refuses_an_invalid_username(ak: AccountKey) -> None:
    with pytest.raises(UsageError):
        AccountDeletion.issue(ak, username="Not Valid", now_ms=NOW_MS)


def test_revocation_signature_cannot_be_replayed_as_deletion(ak: AccountKey) -> None:
    # Domain separation: the same key signs a different label for each statement.
    revocation = RevocationStatement.issue(ak, username=USERNAME, device_id="d1", now_ms=NOW_MS)
    replayed = AccountDeletion(
        username=USERNAME, account_key=ak.public, deleted_at_ms=NOW_MS,
        signature=revocation.signature,
    )
    with pytest.raises(IdentityError, match="signature is invalid"):
        replayed.verify(account_key=ak.public, username=USERNAME, now_ms=NOW_MS)
    # And the other way round: a deletion's signature is no revocation.
    deletion = AccountDeletion.issue(ak, username=USERNAME, now_ms=NOW_MS)
    with pytest.raises(IdentityError):
        replace(revocation, signature=deletion.signature).verify(account_key=ak.public)
