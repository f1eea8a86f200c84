"""The page's requests are network input: the fields every handler reads, checked, and
the refusal the page shows as a plain message (bridge.py, bridge_views.py)."""

from __future__ import annotations

from typing import Any


class PageError(Exception):
    """A request the bridge refuses, with the plain message the page shows."""


def text_field(req: dict[str, Any], key: str, *, empty: bool = False,
               limit: int = 65536) -> str:
    value = req.get(key)
    if not isinstance(value, str) or (not empty and not value) or len(value) > limit:
        raise PageError(f"'{key}' is missing or not text")
    return value


def flag_field(req: dict[str, Any], key: str) -> bool:
    value = req.get(key, False)
    if not isinstance(value, bool):
        raise PageError(f"'{key}' is not true or false")
    return value
