"""Validated readers for JSON objects received from the network.

Each reader takes the decoded JSON object, a field name and its constraints,
and either returns a value of the right type or raises :class:`ProtocolError`
naming the field (never its value: it may be ciphertext).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from sottovoce.errors import RemoteError
from sottovoce.limits import MAX_ID_LEN

_ID_RE = re.compile(r"[A-Za-z0-9_.:@/+=-]+")
_MAX_INT = (1 << 63) - 1


class ProtocolError(RemoteError):
    """A frame broke the KSMP v3 contract; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def bad(field: str, why: str) -> ProtocolError:
    return ProtocolError("bad_request", f"field '{field}' {why}")


def req_str(d: dict[str, Any], name: str, *, max_len: int = MAX_ID_LEN) -> str:
    v = d.get(name)
    if not isinstance(v, str):
        raise bad(name, "must be a string")
    if not 0 < len(v) <= max_len:
        raise bad(name, f"must be 1-{max_len} characters")
    return v


def req_id(d: dict[str, Any], name: str) -> str:
    """An opaque identifier chosen by a client: bounded, printable ASCII subset."""
    v = req_str(d, name)
    if not _ID_RE.fullmatch(v):
        raise bad(name, "contains characters outside [A-Za-z0-9_.:@/+=-]")
    return v


def opt_id(d: dict[str, Any], name: str) -> str | None:
    if d.get(name) in (None, ""):
        return None
    return req_id(d, name)


def req_int(d: dict[str, Any], name: str, *, minimum: int = 0, maximum: int = _MAX_INT) -> int:
    v = d.get(name)
    # bool is an int subclass in Python; JSON true must not pass as 1.
    if not isinstance(v, int) or isinstance(v, bool):
        raise bad(name, "must be an integer")
    if not minimum <= v <= maximum:
        raise bad(name, f"must be between {minimum} and {maximum}")
    return v


def opt_int(d: dict[str, Any], name: str, default: int = 0, *, minimum: int = 0) -> int:
    if d.get(name) is None:
        return default
    return req_int(d, name, minimum=minimum)


def opt_bool(d: dict[str, Any], name: str, default: bool = False) -> bool:
    v = d.get(name, default)
    if not isinstance(v, bool):
        raise bad(name, "must be true or false")
    return v


def req_b64(d: dict[str, Any], name: str, *, max_bytes: int) -> bytes:
    v = d.get(name)
    if not isinstance(v, str):
        raise bad(name, "must be a base64 string")
    if len(v) > (max_bytes + 2) // 3 * 4:
        raise ProtocolError("payload_too_large", f"field '{name}' exceeds {max_bytes} bytes")
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise bad(name, "is not valid base64") from None
    # The length test above admits up to two bytes over the limit (base64 rounds up to 4).
    if len(raw) > max_bytes:
        raise ProtocolError("payload_too_large", f"field '{name}' exceeds {max_bytes} bytes")
    return raw


def req_list(d: dict[str, Any], name: str, *, max_items: int) -> list[Any]:
    v = d.get(name)
    if not isinstance(v, list):
        raise bad(name, "must be a list")
    if len(v) > max_items:
        raise ProtocolError("payload_too_large", f"field '{name}' has more than {max_items} items")
    return v


def req_obj(d: dict[str, Any], name: str) -> dict[str, Any]:
    v = d.get(name)
    if not isinstance(v, dict):
        raise bad(name, "must be an object")
    return v


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
