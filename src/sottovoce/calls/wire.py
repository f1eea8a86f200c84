"""The one codec behind every call struct: a version, a type, then a table of fields.

1:1 call signals, room-call signals and the payloads inside a call group all
have the layout ``struct { uint8 version; uint8 type; <fields> }``. Each class
lists its fields once, as ``(name, Field)`` pairs; the same table checks a value
on construction, writes it and reads it back, so the three can never disagree
about a field's order or its limits. Rules that tie fields together (say, "one
leave proof per leaf") stay in the class's ``_check_body``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar, Generic, TypeVar

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError, UsageError
from sottovoce.identity.certificates import validate_device_id, validate_username
from sottovoce.limits import CALL_ID_BYTES, CALL_NONCE_BYTES, MAX_CALL_SDP_BYTES

VERSION = 1

T = TypeVar("T")
E = TypeVar("E", bound=IntEnum)


@dataclass(frozen=True, slots=True)
class Field(Generic[T]):
    """How one field is checked (raising UsageError), written and read."""

    check: Callable[[object, str], None]
    write: Callable[[Writer, T], None]
    read: Callable[[Reader], T]


Fields = tuple[tuple[str, Field[Any]], ...]


def ascii_text(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("non-ASCII identifier") from None


def read_enum(kind: type[E], value: int) -> E:
    try:
        return kind(value)
    except ValueError:
        raise DecodeError(f"unknown {kind.__name__}") from None


def as_decode_error(read: Callable[[Reader], T]) -> Callable[[Reader], T]:
    """A reader whose nested value validates itself: its UsageError is bad input here."""

    def wrapped(r: Reader) -> T:
        try:
            return read(r)
        except UsageError as exc:
            raise DecodeError(str(exc)) from None

    return wrapped


def vector_of(
    check: Callable[[object, str], None],
    write_one: Callable[[Writer, T], None],
    read_one: Callable[[Reader], T],
    *,
    most: int | None = None,
) -> Field[tuple[T, ...]]:
    """A tuple as a TLS vector<V>; ``most`` bounds it before any item is constructed
    from it, and an item that fails its own checks is bad input."""

    def write(w: Writer, items: tuple[T, ...]) -> None:
        w.vector_v(items, write_one)

    @as_decode_error
    def read(r: Reader) -> tuple[T, ...]:
        items = r.vector_v(read_one)
        if most is not None and len(items) > most:
            raise DecodeError("too many items in a vector")
        return tuple(items)

    return Field(check, write, read)


def fixed_bytes(size: int) -> Field[bytes]:
    def check(value: object, name: str) -> None:
        if not isinstance(value, bytes) or len(value) != size:
            raise UsageError(f"{name} is {size} bytes")

    return Field(check, Writer.raw, lambda r: r.raw(size))


def enum_u8(kind: type[E]) -> Field[E]:
    def check(value: object, name: str) -> None:
        if not isinstance(value, kind):
            raise UsageError(f"{name} is a {kind.__name__}")

    return Field(check, Writer.u8, lambda r: read_enum(kind, r.u8()))


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise UsageError(f"{name} is a bool")


def _check_device(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise UsageError(f"{name} is a string")
    validate_device_id(value)


def _check_user(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise UsageError(f"{name} is a string")
    validate_username(value)


def ascii8(check: Callable[[object, str], None]) -> Field[str]:
    """An ASCII identifier in an opaque<V> of one length byte."""

    def write(w: Writer, value: str) -> None:
        w.opaque8(value.encode("ascii"))

    return Field(check, write, lambda r: ascii_text(r.opaque8()))


def _check_sdp(sdp: object, name: str) -> None:
    if not isinstance(sdp, str) or not sdp:
        raise UsageError("an SDP is a non-empty string")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_CALL_SDP_BYTES or "\x00" in sdp:
        raise UsageError("SDP too large or not text")


def _write_sdp(w: Writer, sdp: str) -> None:
    w.opaque_v(sdp.encode("utf-8"))


def _read_sdp(r: Reader) -> str:
    raw = r.opaque_v()
    if len(raw) > MAX_CALL_SDP_BYTES:
        raise DecodeError("SDP too large")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("SDP is not UTF-8") from None


BOOL: Field[bool] = Field(_check_bool, Writer.boolean, Reader.boolean)
CALL_ID = fixed_bytes(CALL_ID_BYTES)
NONCE = fixed_bytes(CALL_NONCE_BYTES)
DEVICE = ascii8(_check_device)
USER = ascii8(_check_user)
SDP: Field[str] = Field(_check_sdp, _write_sdp, _read_sdp)

W = TypeVar("W", bound="TaggedStruct")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class TaggedStruct:
    """``struct { uint8 version; uint8 type; HEADER; BODY }``, checked on construction.

    A family's root sets ``HEADER`` (what every member carries) and its
    ``KINDS`` table once all its classes exist; each class sets ``TYPE`` and
    ``BODY``. ``HIDDEN`` fields (SDPs, addresses, key material) never reach a repr.
    """

    TYPE: ClassVar[IntEnum]
    HEADER: ClassVar[Fields] = ()
    BODY: ClassVar[Fields] = ()
    HIDDEN: ClassVar[frozenset[str]] = frozenset()
    KINDS: ClassVar[Mapping[int, type[TaggedStruct]]] = {}
    WHAT: ClassVar[str] = "call struct"
    MAX_BYTES: ClassVar[int | None] = None

    def __post_init__(self) -> None:
        for name, field in self.HEADER + self.BODY:
            field.check(getattr(self, name), name)
        self._check_body()

    def _check_body(self) -> None:
        """Rules across fields, which no single field's check can see."""

    def encode(self) -> bytes:
        w = Writer()
        w.u8(VERSION)
        w.u8(self.TYPE)
        for name, field in self.HEADER + self.BODY:
            field.write(w, getattr(self, name))
        return w.getvalue()

    @classmethod
    def decode(cls: type[W], data: bytes) -> W:
        """Decode any member of the family (on its root) or one kind; only DecodeError escapes."""
        if cls.MAX_BYTES is not None and len(data) > cls.MAX_BYTES:
            raise DecodeError(f"{cls.WHAT} too large")

        def read(r: Reader) -> TaggedStruct:
            r.version(VERSION, cls.WHAT)
            kind = cls.KINDS.get(r.u8())
            if kind is None:
                raise DecodeError(f"unknown {cls.WHAT} type")
            values = {name: field.read(r) for name, field in kind.HEADER + kind.BODY}
            try:
                return kind(**values)
            except UsageError as exc:  # self-validation of a decoded value
                raise DecodeError(str(exc)) from None

        struct = decode(read, data)
        if not isinstance(struct, cls):
            raise DecodeError(f"expected a {cls.__name__} {cls.WHAT}")
        return struct

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.HIDDEN:
                if isinstance(value, bytes):
                    shown.append(f"{f.name}=<{len(value)} bytes>" if value else f"{f.name}=<none>")
                else:
                    shown.append(f"{f.name}=<redacted>")
            elif isinstance(value, bytes):
                shown.append(f"{f.name}={value.hex()[:16]}")
            else:
                shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"
