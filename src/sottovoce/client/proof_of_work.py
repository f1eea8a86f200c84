"""Answering the server's ``pow_required`` (docs/protocol.md §Proof of work): the refusal
carries a challenge; the client solves it off the event loop (a thread: hashing holds
the GIL only between hashlib calls, so the loop keeps running) and sends the same
request again with ``pow``. A few rounds at most: each refusal names a fresh
challenge, and one that asks for more work than :data:`MAX_BITS` is not attempted."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from sottovoce.client.errors import ServerError
from sottovoce.protocol import events as ev
from sottovoce.protocol import pow as pw

T = TypeVar("T")
E = TypeVar("E", bound=ev.ClientEvent)
#: The most work a client does for one request: 2^28 hashes, about ten minutes in Python.
MAX_BITS = 28
#: From this difficulty on (about a second of one core) the CLI says it is working.
SLOW_BITS = 18
#: Requests sent before giving up (the difficulty may rise between two of them).
ATTEMPTS = 4


def needs_proof(event: ev.ClientEvent, exc: ServerError) -> bool:
    return exc.code == "pow_required" and "pow" in getattr(event, "__dataclass_fields__", {})


def difficulty_of(exc: ServerError) -> int:
    """The difficulty a ``pow_required`` refusal asks for (0 if it names none)."""
    bits = exc.details.get("difficulty")
    return bits if isinstance(bits, int) and not isinstance(bits, bool) else 0


async def solve(exc: ServerError) -> bytes:
    """The proof for the challenge in a ``pow_required`` refusal."""
    raw = exc.details.get("challenge")
    try:
        token = base64.b64decode(raw if isinstance(raw, str) else "", validate=True)
    except (binascii.Error, ValueError):
        raise pw.PowError("the server sent a malformed proof-of-work challenge") from None
    pw.read_token(token)
    return await asyncio.to_thread(pw.solve, token, max_bits=MAX_BITS)


def with_cap(event: E, cap_for: Callable[[str], bytes | None] | None) -> E:
    """``event`` with the capability a strict account granted us for its ``username``
    (client/discovery.py), if it takes one and we hold one."""
    if cap_for is None or "cap" not in getattr(event, "__dataclass_fields__", {}):
        return event
    name = getattr(event, "username", None)
    cap = cap_for(name) if isinstance(name, str) else None
    return event if cap is None else cast(E, dataclasses.replace(cast(Any, event), cap=cap))


async def with_proof(event: E, ask: Callable[[E], Awaitable[T]],
                     on_pow: Callable[[int], None] | None = None) -> T:
    """``ask(event)``; on ``pow_required``, solve and ask again with the proof
    (``on_pow(difficulty)`` first, e.g. to say that it may take a while)."""
    for _ in range(ATTEMPTS - 1):
        try:
            return await ask(event)
        except ServerError as exc:
            if not needs_proof(event, exc):
                raise
            if on_pow is not None:
                on_pow(difficulty_of(exc))
            proof = await solve(exc)
        event = cast(E, dataclasses.replace(cast(Any, event), pow=proof))
    return await ask(event)

