"""Waiting, in a test, for a condition that other tasks or processes make true."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(check: Callable[[], object], timeout: float = 10.0, *,
                what: str = "the condition") -> None:
    """Poll ``check`` every 20 ms until it is true; fail if it is not within ``timeout`` s
    (a deadline, not a wait: on a quiet machine it returns as soon as ``check`` holds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
