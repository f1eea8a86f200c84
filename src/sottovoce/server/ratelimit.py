"""Token buckets: per device (after auth), per IP (before auth), and abuse strikes
(docs/protocol.md §Limits)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict


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
        tokens = min(self._burst, self._tokens + (t - self._stamp) * self._rate)
        self._stamp = t
        if tokens >= cost:
            self._tokens = tokens - cost
            return 0
        self._tokens = tokens
        return max(1, math.ceil((cost - tokens) / self._rate * 1000))

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


class KeyedBuckets:
    """One bucket per key (IP address), the least recently used forgotten past ``max_keys``."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, cost: float = 1.0) -> int:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(cost)
