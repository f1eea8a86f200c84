"""Field kinds: what one value in a JSON object received from the network may be.

A kind turns one raw JSON value into a typed value or raises :class:`ProtocolError`
naming the field (never its value: it may be ciphertext), and turns the typed value
back into JSON. Every wire event and struct (:mod:`sottovoce.protocol.spec`) is a list
of fields of these kinds, so a rule such as "an id is 1-128 characters of
``[A-Za-z0-9_.:@/+=-]``" or "base64 is measured on the decoded bytes" is written once
here and holds for every field that uses it.

The shared kinds are named at the bottom (:data:`ID`, :data:`CONTENT_TYPE`,
:data:`ROOM_ID`, ...). The ``req_*`` readers are the same rules for code that reads
one field of a reply by hand.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Hashable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Generic, TypeVar

from sottovoce.errors import RemoteError
from sottovoce.limits import MAX_ID_LEN

T = TypeVar("T")
D = TypeVar("D")

#: How every layer names one device: (username, device id).
Device = tuple[str, str]

#: The id alphabet: every identifier chosen by a client (user, device, message, ...).
ID_RE = re.compile(r"[A-Za-z0-9_.:@/+=-]+")
MAX_INT = (1 << 63) - 1  # JSON numbers beyond a signed 64-bit integer are refused


class ProtocolError(RemoteError):
    """A frame broke the KSMP v3 contract; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def bad(field: str, why: str) -> ProtocolError:
    return ProtocolError("bad_request", f"field '{field}' {why}")


def too_large(field: str, why: str) -> ProtocolError:
    return ProtocolError("payload_too_large", f"field '{field}' {why}")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Kind(Generic[T]):
    """How one field's value is read from JSON and written back.

    ``absent`` are the values that, besides a missing key, mean "not given" for an
    optional field (a missing optional field takes its default).
    """

    __slots__ = ()
    absent: tuple[Any, ...] = (None,)

    def parse(self, v: Any, key: str) -> T:
        raise NotImplementedError

    def dump(self, value: T) -> Any:
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Str(Kind[str]):
    """A string of 1..``max_len`` characters, optionally matching ``pattern`` in full
    (else ``why``) and optionally one of ``choices``."""

    max_len: int = MAX_ID_LEN
    pattern: re.Pattern[str] | None = None
    why: str = ""
    choices: frozenset[str] = frozenset()
    absent: tuple[Any, ...] = (None,)

    def parse(self, v: Any, key: str) -> str:
        if not isinstance(v, str):
            raise bad(key, "must be a string")
        if not 0 < len(v) <= self.max_len:
            raise bad(key, f"must be 1-{self.max_len} characters")
        if self.pattern is not None and not self.pattern.fullmatch(v):
            raise bad(key, self.why)
        if self.choices and v not in self.choices:
            raise bad(key, f"must be one of {sorted(self.choices)}")
        return v


@dataclass(frozen=True, slots=True)
class Pattern(Kind[str]):
    """A string matching ``pattern`` in full; any other value is refused with ``why``."""

    pattern: re.Pattern[str]
    why: str

    def parse(self, v: Any, key: str) -> str:
        if not isinstance(v, str) or not self.pattern.fullmatch(v):
            raise bad(key, self.why)
        return v


@dataclass(frozen=True, slots=True)
class Const(Kind[str]):
    """Exactly ``value`` (the protocol name); a JSON null is a wrong value, not absent."""

    value: str
    absent: tuple[Any, ...] = ()

    def parse(self, v: Any, key: str) -> str:
        if v != self.value:
            raise bad(key, f"must be '{self.value}'")
        return self.value


@dataclass(frozen=True, slots=True, kw_only=True)
class Int(Kind[int]):
    """An integer in ``[minimum, maximum]``; JSON ``true`` is not 1."""

    minimum: int = 0
    maximum: int = MAX_INT

    def parse(self, v: Any, key: str) -> int:
        # bool is an int subclass in Python; JSON true must not pass as 1.
        if not isinstance(v, int) or isinstance(v, bool):
            raise bad(key, "must be an integer")
        if not self.minimum <= v <= self.maximum:
            raise bad(key, f"must be between {self.minimum} and {self.maximum}")
        return v


@dataclass(frozen=True, slots=True)
class Bool(Kind[bool]):
    """``true`` or ``false``; a JSON null is a wrong value, not absent."""

    absent: tuple[Any, ...] = ()

    def parse(self, v: Any, key: str) -> bool:
        if not isinstance(v, bool):
            raise bad(key, "must be true or false")
        return v


@dataclass(frozen=True, slots=True, kw_only=True)
class B64(Kind[bytes]):
    """Base64 of at most ``max_bytes`` decoded bytes (``payload_too_large`` past it);
    ``size`` demands exactly that many, ``nonempty`` at least one."""

    max_bytes: int
    size: int | None = None
    nonempty: bool = False

    def parse(self, v: Any, key: str) -> bytes:
        if not isinstance(v, str):
            raise bad(key, "must be a base64 string")
        if len(v) > (self.max_bytes + 2) // 3 * 4:  # refuse before decoding an oversized one
            raise too_large(key, f"exceeds {self.max_bytes} bytes")
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise bad(key, "is not valid base64") from None
        # The length test above admits up to two bytes over the limit (base64 rounds up to 4).
        if len(raw) > self.max_bytes:
            raise too_large(key, f"exceeds {self.max_bytes} bytes")
        if self.size is not None and len(raw) != self.size:
            raise bad(key, f"must be {self.size} bytes")
        if self.nonempty and not raw:
            raise bad(key, "must not be empty")
        return raw

    def dump(self, value: bytes) -> str:
        return b64(value)


@dataclass(frozen=True, slots=True)
class ListOf(Kind[tuple[T, ...]]):
    """A list of at most ``max_items`` values of ``item`` (each error names the list).

    ``nonempty``: an empty list is refused; ``unique``: no two items share that key
    (else ``repeated``).
    """

    item: Kind[T]
    _: KW_ONLY
    max_items: int
    nonempty: bool = False
    unique: Callable[[T], Hashable] | None = None
    repeated: str = "names a device twice"

    def parse(self, v: Any, key: str) -> tuple[T, ...]:
        if not isinstance(v, list):
            raise bad(key, "must be a list")
        if len(v) > self.max_items:
            raise too_large(key, f"has more than {self.max_items} items")
        if self.nonempty and not v:
            raise bad(key, "must not be empty")
        items = tuple(self.item.parse(x, key) for x in v)
        if self.unique is not None and len({self.unique(x) for x in items}) != len(items):
            raise bad(key, self.repeated)
        return items

    def dump(self, value: tuple[T, ...]) -> list[Any]:
        return [self.item.dump(x) for x in value]


@dataclass(frozen=True, slots=True)
class Loose(Kind[T]):
    """A value taken as it comes, made safe by ``fn`` (never refused): for fields of
    server replies that a client only displays or passes on."""

    fn: Callable[[Any], T]
    absent: tuple[Any, ...] = ()

    def parse(self, v: Any, key: str) -> T:
        return self.fn(v)


#: An opaque identifier chosen by a client: bounded, printable ASCII subset.
ID = Str(pattern=ID_RE, why="contains characters outside [A-Za-z0-9_.:@/+=-]")
#: An optional id: a missing, null or empty one is None.
OPT_ID = Str(pattern=ID_RE, why=ID.why, absent=(None, ""))
#: What kind of plaintext a ciphertext holds (the server routes, never reads it).
CONTENT_TYPES = frozenset({"text", "image", "voice", "system"})
CONTENT_TYPE = Str(choices=CONTENT_TYPES)


def opt(d: dict[str, Any], name: str, kind: Kind[T], default: D) -> T | D:
    """Field ``name`` of ``d`` read as ``kind``; ``default`` if missing or absent."""
    v = d.get(name)
    if name not in d or v in kind.absent:
        return default
    return kind.parse(v, name)


def req_str(d: dict[str, Any], name: str, *, max_len: int = MAX_ID_LEN) -> str:
    return Str(max_len=max_len).parse(d.get(name), name)


def req_id(d: dict[str, Any], name: str) -> str:
    return ID.parse(d.get(name), name)


def req_int(d: dict[str, Any], name: str, *, minimum: int = 0, maximum: int = MAX_INT) -> int:
    return Int(minimum=minimum, maximum=maximum).parse(d.get(name), name)


def req_b64(d: dict[str, Any], name: str, *, max_bytes: int) -> bytes:
    return B64(max_bytes=max_bytes).parse(d.get(name), name)


def req_obj(d: dict[str, Any], name: str) -> dict[str, Any]:
    v = d.get(name)
    if not isinstance(v, dict):
        raise bad(name, "must be an object")
    return v
