"""`Secret`: bytes that must not leak through reprs, logs, comparisons or pickles."""

from __future__ import annotations

import hmac
from typing import NoReturn


class Secret:
    """Immutable secret bytes.

    * ``repr``/``str`` are redacted (only the length shows);
    * ``==`` is constant-time and only defined between two ``Secret`` objects;
    * pickling and copying to a hashable key are refused;
    * :meth:`expose` is the one explicit way to get the bytes back.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError("Secret wraps bytes")
        self._value = bytes(value)

    def expose(self) -> bytes:
        """Return the secret bytes. Call only where the bytes are consumed."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"Secret(<{len(self._value)} bytes redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret objects cannot be pickled")

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("Secret objects cannot be pickled")

    def __bool__(self) -> bool:
        return bool(self._value)
