"""Proof of work: tokens, solutions, the adaptive difficulty (protocol/pow.py) and the
server's gate with its replay guard and passes (server/pow_gate.py)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from sottovoce.protocol import pow as pw
from sottovoce.server.pow_gate import PowGate, PowRequired

KEY = b"k" * 32
NONCE = b"n" * pw.NONCE_BYTES


def token(bits: int = 8, *, requester: str = "alice", target: str = "bob",
          now: int = 1_000, ttl: int = 60_000) -> bytes:
    return pw.issue(KEY, requester, target, difficulty=bits, now_ms=now, ttl_ms=ttl,
                    nonce=NONCE)


def test_a_solution_meets_its_difficulty_and_checks() -> None:
    proof = pw.solve(token(10))
    assert len(proof) == pw.PROOF_BYTES
    assert pw.leading_zero_bits(hashlib.sha256(proof).digest()) >= 10
    checked = pw.check(KEY, "alice", "bob", proof, now_ms=2_000)
    assert checked.difficulty == 10
    assert checked.expires_ms == 61_000


@pytest.mark.parametrize(("requester", "target", "key"), [
    ("mallory", "bob", KEY), ("alice", "carol", KEY), ("alice", "bob", b"x" * 32),
])
def test_a_solution_is_bound_to_requester_target_and_key(
    requester: str, target: str, key: bytes,
) -> None:
    proof = pw.solve(token(4))
    with pytest.raises(pw.PowError, match="another challenge"):
        pw.check(key, requester, target, proof, now_ms=2_000)


def test_an_expired_token_is_refused() -> None:
    proof = pw.solve(token(4, ttl=500))
    with pytest.raises(pw.PowError, match="expired"):
        pw.check(KEY, "alice", "bob", proof, now_ms=1_500)


def test_a_lowered_difficulty_breaks_the_mac_and_a_short_counter_fails() -> None:
    raw = token(20)
    lowered = raw[:1] + bytes([0]) + raw[2:]
    with pytest.raises(pw.PowError, match="another challenge"):
        pw.check(KEY, "alice", "bob", lowered + bytes(8), now_ms=2_000)
    # Find a counter that misses 20 bits: the first one almost surely does.
    for counter in range(64):
        proof = raw + counter.to_bytes(8, "big")
        if pw.leading_zero_bits(hashlib.sha256(proof).digest()) < 20:
            break
    with pytest.raises(pw.PowError, match="short"):
        pw.check(KEY, "alice", "bob", proof, now_ms=2_000)


def test_malformed_tokens_and_proofs_are_refused() -> None:
    with pytest.raises(pw.PowError):
        pw.read_token(b"short")
    with pytest.raises(pw.PowError):
        pw.check(KEY, "alice", "bob", token(4), now_ms=2_000)  # no counter
    with pytest.raises(pw.PowError, match="more than"):
        pw.solve(token(30), max_bits=20)


def test_difficulty_rises_with_one_requesters_rate_and_falls_back_when_quiet() -> None:
    d = pw.Difficulty(pw.DifficultyRule(base_bits=10, half_life_ms=1_000, requester_free=4,
                                        target_free=1_000, max_extra=5))
    levels = [d.next("mallory", f"name{i}", 0) for i in range(64)]
    assert levels[:4] == [10] * 4
    assert levels[4] == 11  # 5 > 4: one doubling started
    assert levels[-1] == 14  # 64 / 4 = 2^4
    assert levels == sorted(levels)
    assert d.next("alice", "name0", 0) == 10  # another requester is not charged
    assert d.next("mallory", "x", 30_000) == 10  # 30 half-lives later: quiet again


def test_difficulty_rises_per_target_name_whoever_asks() -> None:
    d = pw.Difficulty(pw.DifficultyRule(base_bits=8, half_life_ms=60_000, requester_free=1_000,
                                        target_free=8, max_extra=3))
    levels = [d.next(f"addr:10.0.0.{i}", "bob", 0) for i in range(100)]
    assert levels[0] == 8
    assert levels[-1] == 11  # capped at base + max_extra
    assert d.next("addr:10.0.0.1", "carol", 0) == 8


def challenge_of(exc: PowRequired) -> bytes:
    assert exc.code == "pow_required"
    assert exc.retryable
    raw = base64.b64decode(exc.details["challenge"])
    assert pw.read_token(raw).difficulty == exc.details["difficulty"]
    return raw


def test_gate_asks_checks_refuses_replay_and_gives_a_pass() -> None:
    gate = PowGate(pw.DifficultyRule(base_bits=6))
    with pytest.raises(PowRequired) as info:
        gate.require("alice", "bob", None)
    proof = pw.solve(challenge_of(info.value))
    with pytest.raises(PowRequired, match="another challenge"):
        gate.require("mallory", "bob", proof)  # not hers
    gate.spend("alice", "bob", proof)
    assert gate.accepted == 1
    with pytest.raises(PowRequired, match="already used"):
        gate.spend("alice", "bob", proof)
    # require() with a fresh proof leaves a pass: later requests about bob go through.
    with pytest.raises(PowRequired) as info:
        gate.require("alice", "bob", None)
    gate.require("alice", "bob", pw.solve(challenge_of(info.value)))
    gate.require("alice", "bob", None)
    with pytest.raises(PowRequired):
        gate.require("alice", "carol", None)  # the pass is for bob only
    gate.require("alice", "alice", None)  # an account never pays for itself


def test_nodes_that_share_the_log_key_take_each_others_challenges() -> None:
    """A registration sends its proof on a new connection, which a balancer may give to
    another node: gates keyed from the same VRF key accept it, others do not."""
    from sottovoce.kt.vrf import VRFSecretKey

    shared = VRFSecretKey(bytes(range(32))).derive_key(b"proof-of-work MAC")
    assert shared == VRFSecretKey(bytes(range(32))).derive_key(b"proof-of-work MAC")
    assert shared != VRFSecretKey(bytes(range(32))).derive_key(b"another purpose")
    one, two, alone = (PowGate(pw.DifficultyRule(base_bits=6)) for _ in range(3))
    one.use_key(shared)
    two.use_key(shared)
    with pytest.raises(PowRequired) as info:
        one.spend("addr:1", "name:bob", None)
    proof = pw.solve(challenge_of(info.value))
    with pytest.raises(PowRequired, match="another challenge"):
        alone.spend("addr:1", "name:bob", proof)  # a key of its own
    two.spend("addr:1", "name:bob", proof)
    with pytest.raises(ValueError):
        one.use_key(b"short")
