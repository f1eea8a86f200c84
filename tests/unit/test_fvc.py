"""Friend verification codes on the owner's device (client/fvc.py, protocol/fvc.py): the
TOTP window of one step either side, one use per step, proofs bound to both names,
static-code hashes, and the sync between the account's devices."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyotp
import pytest

from sottovoce.client.fvc import FriendCodes
from sottovoce.client.store import TEST_KDF, Store
from sottovoce.errors import DecodeError
from sottovoce.protocol import fvc

NOW = 1_800_000_000  # on a step boundary plus 30 s below


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW + 30)

    def __call__(self) -> float:
        return self.now


def codes_of(tmp_path: Path, name: str, clock: Clock) -> FriendCodes:
    store = Store.create(tmp_path / name, "pass", kdf=TEST_KDF)
    return FriendCodes(store, link=None, me="alice", clock_s=clock)  # type: ignore[arg-type]


def test_rfc_6238_codes_of_eight_digits_and_sixty_seconds() -> None:
    # RFC 6238 Appendix B's SHA-1 seed, at T = 59 s with X = 30 s gives 94287082;
    # with our 60 s step the same instant is step 0, i.e. HOTP(0) of the seed.
    seed = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # base32 of "12345678901234567890"
    assert pyotp.TOTP(seed, digits=8, interval=30).at(59) == "94287082"
    assert pyotp.TOTP(seed, digits=8, interval=60).at(59) == pyotp.HOTP(seed, digits=8).at(0)


def test_window_replay_and_outside(tmp_path: Path) -> None:
    clock = Clock()
    codes = codes_of(tmp_path, "a", clock)
    current, left = asyncio.run(codes.current())
    assert len(current) == 8 and current.isdigit() and left == 30
    state = codes._state()
    assert state is not None
    totp = codes._totp(state)
    before = totp.at(NOW - 60)
    far = totp.at(NOW - 120)
    after = totp.at(NOW + 60)
    assert not codes.check(far)  # two steps back: outside the window
    assert codes.check(before)  # one step back: accepted
    assert codes.check(current)
    assert not codes.check(current)  # used: refused again
    assert not codes.check(before)  # older than a used step: refused too
    assert codes.check(after)  # one step ahead: accepted
    assert not codes.check("00000000")


def test_a_proof_is_bound_to_owner_and_requester(tmp_path: Path) -> None:
    clock = Clock()
    codes = codes_of(tmp_path, "a", clock)
    code, _ = asyncio.run(codes.current())
    for_mallory = fvc.code_proof(code, owner="alice", requester="mallory")
    assert not asyncio.run(codes.check_proof("bob", for_mallory))
    assert not asyncio.run(codes.check_proof(
        "bob", fvc.code_proof(code, owner="carol", requester="bob")))
    assert asyncio.run(codes.check_proof(
        "bob", fvc.code_proof(code, owner="alice", requester="bob")))
    assert not asyncio.run(codes.check_proof(
        "bob", fvc.code_proof(code, owner="alice", requester="bob")))  # spent


def test_another_device_takes_the_secret_and_the_used_step(tmp_path: Path) -> None:
    clock = Clock()
    phone, laptop = codes_of(tmp_path, "phone", clock), codes_of(tmp_path, "laptop", clock)
    sent: list[bytes] = []

    async def send_own(content_type: str, body: bytes) -> None:
        assert content_type == "fvc"
        sent.append(body)

    phone.send_own = send_own
    code, _ = asyncio.run(phone.current())
    laptop.apply(sent[-1])
    assert asyncio.run(laptop.current())[0] == code
    assert phone.check(code)
    asyncio.run(phone.spent_elsewhere())
    laptop.apply(sent[-1])
    assert not laptop.check(code)  # used on the phone
    with pytest.raises(DecodeError):
        laptop.apply(b'{"secret": 3}')


def test_static_code_hashes() -> None:
    code = fvc.static_code(7, "12345678")
    assert code == "07-12345678" and fvc.static_slot(code) == 7
    assert fvc.static_slot("12345678") is None and fvc.is_totp("12345678")
    salt = bytes(range(16))
    digest = fvc.static_hash(code, salt)
    assert len(digest) == 32 and digest != fvc.static_hash(code, bytes(16))
    assert fvc.static_matches(code, salt, digest)
    assert not fvc.static_matches("07-12345679", salt, digest)


def test_a_waiting_request_is_judged_at_the_servers_receive_stamp(tmp_path: Path) -> None:
    """A request that waited on the server while the owner was offline: its code is
    checked as of the receive stamp, within a week and not ahead of the owner's clock."""
    clock = Clock()
    codes = codes_of(tmp_path, "a", clock)
    code, _ = asyncio.run(codes.current())
    stamp_ms = int(clock.now * 1000)
    proof = fvc.code_proof(code, owner="alice", requester="bob")
    clock.now += 180  # the owner comes back three minutes later
    assert not asyncio.run(codes.check_proof("bob", proof))  # as of now: expired
    assert asyncio.run(codes.check_proof("bob", proof, stamp_ms))  # as of the stamp
    assert not asyncio.run(codes.check_proof("bob", proof, stamp_ms))  # used: refused
    now = int(clock.now)
    assert codes.judged_at(None) == now
    assert codes.judged_at((now - fvc.REQUEST_MAX_AGE_S) * 1000) == now - fvc.REQUEST_MAX_AGE_S
    assert codes.judged_at((now - fvc.REQUEST_MAX_AGE_S - 1) * 1000) is None  # too old
    assert codes.judged_at((now + fvc.STAMP_SKEW_S + 1) * 1000) is None  # from the future


def test_a_stamp_out_of_bounds_lets_nobody_in(tmp_path: Path) -> None:
    clock = Clock()
    codes = codes_of(tmp_path, "a", clock)
    state = asyncio.run(codes._ensure())
    old = NOW - fvc.REQUEST_MAX_AGE_S - 600
    code = codes._totp(state).at(old)  # the code of that old moment
    proof = fvc.code_proof(code, owner="alice", requester="bob")
    assert not asyncio.run(codes.check_proof("bob", proof, old * 1000))


def test_grants_are_the_same_on_each_device_and_withdrawable(tmp_path: Path) -> None:
    """Every device of the account derives the same capability for a contact, and can
    name every capability a contact may hold (its grant, one per static code)."""
    clock = Clock()
    phone, laptop = codes_of(tmp_path, "phone", clock), codes_of(tmp_path, "laptop", clock)
    sent: list[bytes] = []

    async def send_own(content_type: str, body: bytes) -> None:
        sent.append(body)

    phone.send_own = send_own
    assert phone.withdraw_tokens("bob") == []  # never granted anything
    token = asyncio.run(phone.grant_token("bob"))
    assert token != asyncio.run(phone.grant_token("carol")) and len(token) == 32
    laptop.apply(sent[-1])
    assert asyncio.run(laptop.grant_token("bob")) == token
    state = phone._state()
    assert state is not None
    state["static"] = [(bytes([7]) * 32).hex()]
    phone._save(state)
    asyncio.run(phone._sync(state))
    laptop.apply(sent[-1])
    digest = bytes([7]) * 32
    assert laptop.withdraw_tokens("bob") == [token, fvc.static_grant_token(digest, "bob")]
