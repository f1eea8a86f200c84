"""The random source type every sans-IO function takes as a parameter."""

from __future__ import annotations

from collections.abc import Callable

#: ``rng(n)`` returns ``n`` uniformly random bytes. The I/O layer passes
#: ``secrets.token_bytes``; tests pass a seeded deterministic source.
Random = Callable[[int], bytes]
