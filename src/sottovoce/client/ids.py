"""The two fresh values every outgoing message is stamped with: the wall-clock time and
a random id (the client is the I/O edge; the core takes both as parameters)."""

from __future__ import annotations

import secrets
import time


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    """A random messageId / idempotencyKey (22 url-safe characters, 128 bits)."""
    return secrets.token_urlsafe(16)
