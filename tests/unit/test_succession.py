"""Account-key succession (identity/succession.py): the outcome depends only on which
signed statements exist, never on their order.

The stolen-device scenario: the thief holds AK0 (copied from a revoked device); the
owner rotates AK0 -> AKo, the thief races with AK0 -> AKt and AKt -> AKt2, the owner
uses the printed recovery code (RK0 -> AKr, RK1), and the thief keeps going after
that. Every one of the 5! orderings must end with the owner's chain.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest

from sottovoce.errors import DecodeError, UsageError
from sottovoce.identity.certificates import (
    AccountDeletion,
    DeviceCertificate,
    DevicePublicKeys,
    RevocationStatement,
)
from sottovoce.identity.keys import AccountKey
from sottovoce.identity.succession import (
    Genesis,
    Recovery,
    Statement,
    Succession,
    decode_statement,
    new_recovery_code,
    parse_recovery_code,
    recovery_key_from_code,
    resolve,
)

NOW = 1_800_000_000_000
USER = "owner"


def _k(name: str) -> AccountKey:
    return AccountKey(hashlib.sha256(name.encode()).digest())


AK0, AKO, AKT, AKT2, AKT3, AKR = (_k(n) for n in ("ak0", "ako", "akt", "akt2", "akt3", "akr"))
RK0, RK1, RK2 = _k("rk0"), _k("rk1"), _k("rk2")
GENESIS = Genesis(username=USER, account_key=AK0.public, recovery_key=RK0.public)


def _cert(ak: AccountKey, device: str) -> DeviceCertificate:
    keys = DevicePublicKeys(
        signing_key=_k(device).public,
        olm_identity_key=_k(device + "o").public,
        olm_signing_key=_k(device + "s").public,
    )
    return DeviceCertificate.issue(ak, username=USER, device_id=device, keys=keys, now_ms=NOW)


OWNER_SUCCESSION = Succession.issue(AK0, AKO, username=USER, now_ms=NOW + 1)
THIEF_SUCCESSION = Succession.issue(AK0, AKT, username=USER, now_ms=NOW + 2)
THIEF_SECOND = Succession.issue(AKT, AKT2, username=USER, now_ms=NOW + 3)
OWNER_RECOVERY = Recovery.issue(RK0, AKR, RK1, username=USER, now_ms=NOW + 4)
THIEF_AFTER_RECOVERY = Succession.issue(AKT2, AKT3, username=USER, now_ms=NOW + 5)
SCENARIO: list[Statement] = [OWNER_SUCCESSION, THIEF_SUCCESSION, THIEF_SECOND, OWNER_RECOVERY,
                             THIEF_AFTER_RECOVERY]


@pytest.mark.parametrize("order", list(itertools.permutations(range(5))),
                         ids=lambda o: "".join(map(str, o)))
def test_every_ordering_of_the_stolen_device_race_ends_with_the_owners_chain(
    order: tuple[int, ...]
) -> None:
    arrived: list[Statement] = []
    for i in order:
        arrived.append(SCENARIO[i])
        # The thief's replay of the very same succession changes nothing either.
        arrived.append(THIEF_SUCCESSION)
    # Devices: the owner re-certifies its phone under AKR; the thief certifies its own
    # device under every key it holds and revokes the owner's phone with them.
    arrived += [_cert(AKR, "phone"), _cert(AKT2, "thief"), _cert(AKT3, "thief"), _cert(AK0, "t0")]
    arrived += [RevocationStatement.issue(k, username=USER, device_id="phone", now_ms=NOW)
                for k in (AK0, AKT, AKT2, AKT3)]
    head = resolve(GENESIS, arrived, now_ms=NOW)
    assert head.account_key == AKR.public
    assert head.recovery_key == RK1.public
    assert not head.forked
    assert [c.device_id for c in head.devices] == ["phone"]
    assert head.accepts(AKR.public) and not head.accepts(AKT3.public)
    assert not head.accepts(AK0.public)


def test_two_successions_by_one_key_are_a_fork_until_recovery() -> None:
    head = resolve(GENESIS, [OWNER_SUCCESSION, THIEF_SUCCESSION], now_ms=NOW)
    assert head.forked and head.account_key == AK0.public
    assert not head.accepts(AK0.public)  # contacts stop encrypting to the account
    settled = resolve(GENESIS, [OWNER_SUCCESSION, THIEF_SUCCESSION, OWNER_RECOVERY], now_ms=NOW)
    assert not settled.forked and settled.account_key == AKR.public


def test_a_single_succession_moves_the_head_and_old_certificates_lapse() -> None:
    statements: list[Statement] = [_cert(AK0, "laptop"), OWNER_SUCCESSION, _cert(AKO, "phone")]
    head = resolve(GENESIS, statements, now_ms=NOW)
    assert head.account_key == AKO.public and head.chain == (AK0.public, AKO.public)
    assert [c.device_id for c in head.devices] == ["phone"]
    revoked = resolve(GENESIS, [*statements, RevocationStatement.issue(
        AKO, username=USER, device_id="phone", now_ms=NOW)], now_ms=NOW)
    assert revoked.devices == ()


def test_rk_is_replaced_at_each_use() -> None:
    second = Recovery.issue(RK1, AKO, RK2, username=USER, now_ms=NOW + 9)
    head = resolve(GENESIS, [OWNER_RECOVERY, second], now_ms=NOW)
    assert (head.account_key, head.recovery_key) == (AKO.public, RK2.public)
    # The spent RK0 signing another recovery is not on the chain any more... unless
    # it conflicts with its own first use, which is a fork.
    reuse = Recovery.issue(RK0, AKT, RK2, username=USER, now_ms=NOW + 10)
    assert resolve(GENESIS, [OWNER_RECOVERY, reuse], now_ms=NOW).forked


def test_the_account_key_alone_can_never_replace_rk() -> None:
    # A "recovery" signed with AK0 in the RK's place is not signed by the RK: ignored.
    fake = Recovery.issue(AK0, AKT, RK2, username=USER, now_ms=NOW)
    head = resolve(GENESIS, [fake], now_ms=NOW)
    assert head.recovery_key == RK0.public and head.account_key == AK0.public


def test_bad_signatures_and_other_accounts_are_ignored() -> None:
    forged = Succession(username=USER, old_key=AK0.public, new_key=AKT.public, signed_at_ms=NOW,
                        signature=OWNER_SUCCESSION.signature,
                        new_signature=OWNER_SUCCESSION.new_signature)
    one_sided = Succession(username=USER, old_key=AK0.public, new_key=AKT.public,
                           signed_at_ms=NOW, signature=THIEF_SUCCESSION.signature,
                           new_signature=bytes(64))
    other = Succession.issue(AK0, AKT, username="someone", now_ms=NOW)
    head = resolve(GENESIS, [forged, one_sided, other, OWNER_SUCCESSION], now_ms=NOW)
    assert head.account_key == AKO.public and not head.forked


def test_statements_round_trip_and_reject_bad_bytes() -> None:
    for kind, st in (("succession", OWNER_SUCCESSION), ("recovery", OWNER_RECOVERY)):
        assert decode_statement(kind, st.encode()) == st
        with pytest.raises(DecodeError):
            decode_statement(kind, st.encode()[:-1])
    with pytest.raises(DecodeError):
        decode_statement("nonsense", b"")


def test_recovery_code_round_trip_typos_and_derivation() -> None:
    seq = iter(range(1000))
    rng = lambda n: bytes(next(seq) % 256 for _ in range(n))  # noqa: E731
    code = new_recovery_code(rng).expose().decode()
    assert len(code.replace("-", "")) == 28 and "Secret" not in code
    assert parse_recovery_code(code.lower().replace("0", "o")) == parse_recovery_code(code)
    typo = ("1" if code[0] != "1" else "2") + code[1:]
    with pytest.raises(UsageError):
        parse_recovery_code(typo)
    with pytest.raises(UsageError):
        parse_recovery_code(code[:-1])
    rk = recovery_key_from_code(code, username=USER)
    assert rk.public == recovery_key_from_code(code.lower(), username=USER).public
    assert rk.public != recovery_key_from_code(code, username="another").public


@pytest.mark.parametrize(
    "cls", [DeviceCertificate, RevocationStatement, AccountDeletion, Succession, Recovery]
)
def test_a_statement_signs_every_field_but_its_signatures_which_come_last(cls: type) -> None:
    names = tuple(name for name, _ in cls._tls_writers)
    assert names[-len(cls._SIGNATURES):] == cls._SIGNATURES
    assert not set(cls._SIGNATURES) & set(names[: -len(cls._SIGNATURES)])
