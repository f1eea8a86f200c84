"""The proof-of-work gate in front of probes and first contact
(docs/protocol.md §Proof of work): ``sottovoce.username.check``, ``sottovoce.directory.lookup``,
``sottovoce.prekeys.claim`` (the start of every session with another account, so of
every first message and contact request) and ``sottovoce.find``.

A request without a proof, or with a wrong, expired or replayed one, is refused with
``pow_required`` whose details carry a fresh challenge and its difficulty; the
client solves it and sends the request again with ``pow``. The tokens are MAC'd
(protocol/pow.py), so the gate keeps no state per challenge, only the tokens spent
until they expire (the replay guard) and, per requester and target, a pass: once a
requester paid for a target, its later requests about that target (the lookup
before each session, the claim after it) go through for ``pass_ttl_ms``. An
account asking about itself never pays.

The MAC key lives in memory. A registration answers its challenge on a new
connection, which behind a load balancer may reach another node, so nodes that
share a key-transparency log (and so its VRF key file) derive the same MAC key
from it (:meth:`PowGate.use_key`); a server without the log makes one at start.
The replay guard and the passes are per node: a client that moves pays again.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict

from sottovoce.protocol import pow as pw
from sottovoce.protocol.fields import b64
from sottovoce.server.errors import WireFailure

_KEY_BYTES = 32


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class PowRequired(WireFailure):
    """No valid proof: here is the challenge to solve and its difficulty."""

    def __init__(self, message: str, token: bytes, difficulty: int) -> None:
        super().__init__("pow_required", message, retryable=True,
                         details={"challenge": b64(token), "difficulty": difficulty})


class PowGate:
    def __init__(
        self, rule: pw.DifficultyRule, *, ttl_ms: int = 120_000, pass_ttl_ms: int = 86_400_000,
        max_entries: int = 100_000,
    ) -> None:
        self._key = os.urandom(_KEY_BYTES)
        self._ttl = ttl_ms
        self._pass_ttl = pass_ttl_ms
        self._max = max_entries
        self.difficulty = pw.Difficulty(rule)
        #: Spent tokens until they expire, in expiry order (one TTL for all).
        self._spent: OrderedDict[bytes, int] = OrderedDict()
        #: (requester, target) -> until when its requests go through without a proof.
        self._passes: OrderedDict[tuple[str, str], int] = OrderedDict()
        #: For the metrics and tests: challenges issued, proofs accepted.
        self.issued = 0
        self.accepted = 0


    def use_key(self, key: bytes) -> None:
        """MAC challenges under ``key`` (the same on every node of a deployment), so a
        challenge one node issued is answered at any of them."""
        if len(key) != _KEY_BYTES:
            raise ValueError("a proof-of-work MAC key is 32 bytes")
        self._key = bytes(key)

    def challenge(self, requester: str, target: str, why: str) -> PowRequired:
        """A fresh challenge (counted against requester and target) in a refusal."""
        now = _now_ms()
        bits = self.difficulty.next(requester, target, now)
        token = pw.issue(self._key, requester, target, difficulty=bits, now_ms=now,
                         ttl_ms=self._ttl, nonce=os.urandom(pw.NONCE_BYTES))
        self.issued += 1
        return PowRequired(why, token, bits)

    def passed(self, requester: str, target: str) -> bool:
        """Whether ``requester`` may ask about ``target`` without a proof now."""
        if requester == target:
            return True
        until = self._passes.get((requester, target))
        return until is not None and until > _now_ms()

    def require(self, requester: str, target: str, proof: bytes | None) -> None:
        """Let the request through, or raise :class:`PowRequired`. ``requester`` is
        ``@user`` for an authenticated device, the address key before login."""
        if self.passed(requester, target):
            return
        self.spend(requester, target, proof)
        until = _now_ms() + self._pass_ttl
        self._passes[(requester, target)] = until
        self._passes.move_to_end((requester, target))
        while len(self._passes) > self._max:
            self._passes.popitem(last=False)

    def spend(self, requester: str, target: str, proof: bytes | None) -> None:
        """Check and use up ``proof`` (no pass is given: each request pays)."""
        if proof is None:
            raise self.challenge(requester, target, "this request needs a proof of work")
        now = _now_ms()
        try:
            token = pw.check(self._key, requester, target, proof, now_ms=now)
        except pw.PowError as exc:
            raise self.challenge(requester, target, str(exc)) from None
        self._forget_spent(now)
        if token.raw in self._spent:
            raise self.challenge(requester, target, "proof of work already used")
        self._spent[token.raw] = token.expires_ms
        self.accepted += 1

    def _forget_spent(self, now: int) -> None:
        while self._spent:
            raw, expires = next(iter(self._spent.items()))
            if expires > now and len(self._spent) < self._max:
                break
            del self._spent[raw]
