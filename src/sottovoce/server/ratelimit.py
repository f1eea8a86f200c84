"""Token buckets: per device (after auth), per IP (before auth), per device for resumes,
and abuse strikes (docs/protocol.md §Limits)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Hashable


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take()`` returns 0 or ms to wait."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, *, now: float | None = None) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic() if now is None else now

    def take(self, cost: float = 1.0, *, now: float | None = None) -> int:
        """Spend ``cost`` tokens if there are enough; else return the wait in ms (>= 1)."""
        t = time.monotonic() if now is None else now
        tokens = self._tokens + (t - self._stamp) * self._rate
        if tokens > self._burst:  # min(), without the call: once per frame
            tokens = self._burst
        self._stamp = t
        if tokens >= cost:
            self._tokens = tokens - cost
            return 0
        self._tokens = tokens
        return max(1, math.ceil((cost - tokens) / self._rate * 1000))

    def reserve(self, cost: float = 1.0, *, now: float | None = None) -> int:
        """Spend ``cost`` tokens now, going into debt if need be (at most one ``cost``
        deep); returns how long (ms) the caller must wait before acting, 0 if none.
        Unlike :meth:`take`, a caller that asks again while waiting pushes its own
        turn further back instead of getting the same early one."""
        t = time.monotonic() if now is None else now
        tokens = min(self._burst, self._tokens + (t - self._stamp) * self._rate)
        self._stamp = t
        self._tokens = max(tokens - cost, -cost)
        if self._tokens >= 0:
            return 0
        return max(1, math.ceil(-self._tokens / self._rate * 1000))

    def refund(self, cost: float = 1.0) -> None:
        self._tokens = min(self._burst, self._tokens + cost)


class Strikes:
    """Counts consecutive bad or rate-limited requests; a good one forgives one strike."""

    __slots__ = ("_count", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._count = 0

    def hit(self) -> bool:
        """Record a strike; True when the limit is reached (close the connection)."""
        self._count += 1
        return self._count >= self._limit

    def good(self) -> None:
        if self._count:
            self._count -= 1


class ClaimLimits:
    """One-time prekeys and KeyPackages handed to other accounts (docs/threat-model.md).

    Each is spent by the claim that takes it, so a stranger who claims in a loop
    would strip a user of them and leave everyone who contacts that user with
    the reusable fallback key (weaker forward secrecy of first messages). A
    requester gets ``per_requester`` one-time keys of a target per hour, and all
    requesters together ``per_target``; past either, a claim is still answered,
    with the fallback / last-resort key, which consumes nothing. An account
    claiming its own other devices' keys is not limited. "Stranger" is, for now,
    any other account: nothing here knows contacts.
    """

    HOUR_S = 3600

    def __init__(self, per_requester: int, per_target: int) -> None:
        self._pair = KeyedBuckets(per_requester / self.HOUR_S, per_requester)
        self._target = KeyedBuckets(per_target / self.HOUR_S, per_target)
        #: (kind, "one_time" | "limited") -> claims, for the metrics.
        self.counts: dict[tuple[str, str], int] = {}

    def one_time(self, kind: str, requester: str, target: str) -> bool:
        """Whether this claim may take one-time keys (``kind``: prekey, keypackage)."""
        allowed = requester == target or self._take(kind, requester, target)
        key = (kind, "one_time" if allowed else "limited")
        self.counts[key] = self.counts.get(key, 0) + 1
        return allowed

    def _take(self, kind: str, requester: str, target: str) -> bool:
        pair = self._pair.bucket((kind, requester, target))
        if pair.take():
            return False
        if self._target.take((kind, target)):
            pair.refund()
            return False
        return True


class KeyedBuckets:
    """One bucket per key (an IP address, a device), the least recently used forgotten
    past ``max_keys``."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def bucket(self, key: Hashable) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def take(self, key: Hashable, cost: float = 1.0) -> int:
        return self.bucket(key).take(cost)

    def reserve(self, key: Hashable, cost: float = 1.0) -> int:
        return self.bucket(key).reserve(cost)
