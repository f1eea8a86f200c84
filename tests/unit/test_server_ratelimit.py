"""The per-device token bucket (server/ratelimit.py): refills at its rate, never past
its burst, and says how long to wait when empty."""

from __future__ import annotations

from sottovoce.server.ratelimit import TokenBucket


def test_an_idle_bucket_refills_to_its_burst_and_no_further() -> None:
    bucket = TokenBucket(10.0, 3, now=0.0)
    for _ in range(3):
        assert bucket.take(now=0.0) == 0
    assert bucket.take(now=0.0) == 100  # one token at 10/s: 100 ms
    # An hour idle buys the burst, not 36,000 tokens.
    for _ in range(3):
        assert bucket.take(now=3600.0) == 0
    assert bucket.take(now=3600.0) == 100


def test_tokens_come_back_at_the_rate() -> None:
    bucket = TokenBucket(10.0, 1, now=0.0)
    assert bucket.take(now=0.0) == 0
    assert bucket.take(now=0.05) == 50  # half a token back: 50 ms to go
    assert bucket.take(now=0.1) == 0
