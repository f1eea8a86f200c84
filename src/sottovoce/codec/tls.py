"""The RFC 8446 §3 presentation language, with RFC 9420 §2.1.2 varint vectors.

    Writer ── u8/u16/u32/u64, raw, opaque{8,16,24,32}, opaque_v, vector_v ──► bytes
    bytes ──► Reader ── the same verbs ──► values; finish() rejects leftovers
    @tls_struct: a dataclass whose fields, each declared tls(codec), are its layout

Rules enforced in one place (after aioquic's ``pull_block``):

* a varint uses the minimal encoding for its value; the ``11`` prefix is invalid;
* a length-prefixed block is consumed exactly by what is read from it;
* reading past the end, or leaving bytes at the end, raises ``DecodeError``;
* nothing but ``DecodeError`` escapes :func:`decode`;
* :func:`decode` bounds the work a hostile input can cause: at most
  ``MAX_DECODE_BYTES`` of input and ``MAX_DECODE_ITEMS`` vector items in all
  (every item becomes a Python object of ~50+ bytes, so a vector of a million
  one-byte empty vectors would cost ~64 MB and a second without the item bound).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, NamedTuple, Self, TypeVar, cast, dataclass_transform

from sottovoce.errors import DecodeError, UsageError
from sottovoce.limits import MAX_DECODE_BYTES, MAX_DECODE_ITEMS, VARINT_MAX

T = TypeVar("T")
C = TypeVar("C", bound=type)


def varint_bytes(value: int) -> bytes:
    """RFC 9420 §2.1.2 minimal encoding of ``value``."""
    if value < 0:
        raise UsageError("varint must be non-negative")
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value <= VARINT_MAX:
        return (value | 0x80000000).to_bytes(4, "big")
    raise UsageError("varint too large")


class Writer:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def getvalue(self) -> bytes:
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def u8(self, v: int) -> None:
        self._buf += _uint(v, 1)

    def u16(self, v: int) -> None:
        self._buf += _uint(v, 2)

    def u32(self, v: int) -> None:
        self._buf += _uint(v, 4)

    def u64(self, v: int) -> None:
        self._buf += _uint(v, 8)

    def raw(self, data: bytes) -> None:
        self._buf += data

    def boolean(self, v: bool) -> None:
        self._buf.append(1 if v else 0)

    def varint(self, v: int) -> None:
        self._buf += varint_bytes(v)

    def opaque_v(self, data: bytes) -> None:
        """``opaque data<V>`` (RFC 9420 §2.1.2)."""
        self._buf += varint_bytes(len(data))
        self._buf += data

    def opaque8(self, data: bytes) -> None:
        self._buf += _uint(len(data), 1) + data

    def opaque16(self, data: bytes) -> None:
        self._buf += _uint(len(data), 2) + data

    def opaque24(self, data: bytes) -> None:
        self._buf += _uint(len(data), 3) + data

    def opaque32(self, data: bytes) -> None:
        self._buf += _uint(len(data), 4) + data

    def vector_v(self, items: Iterable[T], write: Callable[[Writer, T], None]) -> None:
        """``T items<V>``: a varint byte length, then the encoded items."""
        inner = Writer()
        for item in items:
            write(inner, item)
        self.opaque_v(bytes(inner._buf))

    def optional(self, value: T | None, write: Callable[[Writer, T], None]) -> None:
        """``optional<T>`` (RFC 9420 §2.1.1): a presence octet, then T."""
        if value is None:
            self._buf.append(0)
        else:
            self._buf.append(1)
            write(self, value)


def _uint(v: int, n: int) -> bytes:
    try:
        return v.to_bytes(n, "big")
    except OverflowError:
        raise UsageError(f"value does not fit in uint{8 * n}") from None


class Reader:
    """Reads ``data[pos:end]``. ``budget``, shared by every sub-reader of one decode,
    is how many vector items may still be read (``None``: no bound, for trusted data)."""

    __slots__ = ("_budget", "_data", "_end", "_pos")

    def __init__(
        self, data: bytes, pos: int = 0, end: int | None = None, *, budget: list[int] | None = None
    ) -> None:
        self._data = data
        self._pos = pos
        self._end = len(data) if end is None else end
        self._budget = budget

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def eof(self) -> bool:
        return self._pos >= self._end

    def finish(self) -> None:
        """Reject trailing bytes."""
        if self._pos != self._end:
            raise DecodeError(f"{self._end - self._pos} trailing byte(s)")

    def raw(self, n: int) -> bytes:
        start = self._pos
        stop = start + n
        if n < 0 or stop > self._end:
            raise DecodeError("truncated input")
        self._pos = stop
        return self._data[start:stop]

    def _uint(self, n: int) -> int:
        return int.from_bytes(self.raw(n), "big")

    def u8(self) -> int:
        if self._pos >= self._end:
            raise DecodeError("truncated input")
        v = self._data[self._pos]
        self._pos += 1
        return v

    def version(self, expected: int, what: str) -> None:
        """Read a record's version octet: anything but ``expected`` is an unknown ``what``."""
        if self.u8() != expected:
            raise DecodeError(f"unknown {what} version")

    def u16(self) -> int:
        return self._uint(2)

    def u32(self) -> int:
        return self._uint(4)

    def u64(self) -> int:
        return self._uint(8)

    def boolean(self) -> bool:
        v = self.u8()
        if v > 1:
            raise DecodeError("invalid boolean")
        return v == 1

    def varint(self) -> int:
        first = self.u8()
        prefix = first >> 6
        if prefix == 0:
            return first
        if prefix == 1:
            v = ((first & 0x3F) << 8) | self.u8()
            if v < 0x40:
                raise DecodeError("non-minimal varint")
            return v
        if prefix == 2:
            v = ((first & 0x3F) << 24) | self._uint(3)
            if v < 0x4000:
                raise DecodeError("non-minimal varint")
            return v
        raise DecodeError("invalid varint prefix")

    def opaque_v(self) -> bytes:
        return self.raw(self.varint())

    def opaque8(self) -> bytes:
        return self.raw(self.u8())

    def opaque16(self) -> bytes:
        return self.raw(self.u16())

    def opaque24(self) -> bytes:
        return self.raw(self._uint(3))

    def opaque32(self) -> bytes:
        return self.raw(self.u32())

    def block(self, n: int) -> Reader:
        """A sub-reader over the next ``n`` bytes; the caller must finish() it."""
        start = self._pos
        if n < 0 or start + n > self._end:
            raise DecodeError("truncated input")
        self._pos = start + n
        return Reader(self._data, start, start + n, budget=self._budget)

    def vector_v(self, read: Callable[[Reader], T]) -> list[T]:
        """``T items<V>``: items are read until the block is consumed exactly."""
        n = self.varint()
        if n == 0:  # the cheapest item a hostile input can repeat: no sub-reader for it
            return []
        sub = self.block(n)
        budget = self._budget
        out: list[T] = []
        while sub._pos < sub._end:
            if budget is not None:
                budget[0] -= 1
                if budget[0] < 0:
                    raise DecodeError("too many vector items")
            before = sub._pos
            out.append(read(sub))
            if sub._pos == before:  # an item that reads nothing would loop forever
                raise DecodeError("vector item consumed no bytes")
        return out

    def optional(self, read: Callable[[Reader], T]) -> T | None:
        flag = self.u8()
        if flag == 0:
            return None
        if flag != 1:
            raise DecodeError("invalid optional presence octet")
        return read(self)


#: The untyped errors a careless reader can raise on hostile or damaged input (an
#: out-of-range enum value, a missing table key, ...); whoever decodes turns them into
#: one typed error.
READER_ERRORS = (ValueError, KeyError, IndexError, TypeError, OverflowError)


def encode(write: Callable[[Writer, T], None], value: T) -> bytes:
    w = Writer()
    write(w, value)
    return w.getvalue()


def decode(read: Callable[[Reader], T], data: bytes, *, max_bytes: int = MAX_DECODE_BYTES) -> T:
    """Decode ``data`` completely with ``read``; only ``DecodeError`` escapes.

    :data:`READER_ERRORS` are turned into ``DecodeError`` here, once. ``max_bytes``
    is larger only where a caller needs it (``limits.MAX_GROUP_DECODE_BYTES``: a
    Welcome, GroupInfo or ratchet tree handed to a join); the item budget is the same.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UsageError("decode expects bytes")
    if len(data) > max_bytes:
        raise DecodeError("input too large")
    r = Reader(bytes(data), budget=[MAX_DECODE_ITEMS])
    try:
        value = read(r)
        r.finish()
    except DecodeError:
        raise
    except (*READER_ERRORS, RecursionError) as exc:
        # RecursionError: hostile nesting must not escape as an untyped error from a
        # reader that recurses.
        raise DecodeError(f"malformed input ({type(exc).__name__})") from None
    return value


class Encodable:
    """``encode`` once for every struct that can ``write`` itself."""

    __slots__ = ()

    def write(self, w: Writer) -> None:
        raise NotImplementedError

    def encode(self) -> bytes:
        w = Writer()
        self.write(w)
        return w.getvalue()


class WireStruct(Encodable):
    """``encode``/``decode`` once for every struct that can ``write`` itself and
    ``read`` one: decoding consumes exactly the input and raises only ``DecodeError``.
    (A struct whose layout depends on its context, say a content type, is only
    :class:`Encodable` and reads with that context given.)"""

    __slots__ = ()

    @classmethod
    def read(cls, r: Reader) -> Self:
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes, *, max_bytes: int = MAX_DECODE_BYTES) -> Self:
        """Decode exactly ``data``; raises only ``DecodeError``."""
        return decode(cls.read, data, max_bytes=max_bytes)


def write_struct(w: Writer, item: WireStruct) -> None:
    """``Writer.vector_v``/``optional`` callback for any :class:`WireStruct`."""
    item.write(w)


# --- structs whose fields say once how they go on the wire ---------------------------


class Codec(NamedTuple):
    """How one field goes on the wire: its writer and its reader."""

    write: Callable[[Writer, Any], None]
    read: Callable[[Reader], Any]


U8 = Codec(Writer.u8, Reader.u8)
U16 = Codec(Writer.u16, Reader.u16)
U32 = Codec(Writer.u32, Reader.u32)
U64 = Codec(Writer.u64, Reader.u64)
OPAQUE8 = Codec(Writer.opaque8, Reader.opaque8)
OPAQUE_V = Codec(Writer.opaque_v, Reader.opaque_v)


def struct_of(cls: type[WireStruct]) -> Codec:
    """A nested struct, written and read by itself."""
    return Codec(write_struct, cls.read)


def vector_of(item: Codec) -> Codec:
    """``T items<V>`` of ``item``, read as a tuple."""
    write, read = item
    return Codec(lambda w, v: w.vector_v(v, write), lambda r: tuple(r.vector_v(read)))


def optional_of(item: Codec) -> Codec:
    """``optional<T>`` of ``item`` (``None`` when absent)."""
    write, read = item
    return Codec(lambda w, v: w.optional(v, write), lambda r: r.optional(read))


_TLS = "sottovoce.tls"


def tls(codec: Codec, *, default: Any = dataclasses.MISSING) -> Any:
    """Declare a field of a :func:`tls_struct`: its ``codec`` and its default, if any."""
    return dataclasses.field(default=default, metadata={_TLS: codec})


class TlsStruct(WireStruct):
    """A :class:`WireStruct` made by :func:`tls_struct`: it writes and reads its fields in
    declaration order, each with the codec its :func:`tls` names, so the layout is
    written once and ``write`` and ``read`` cannot disagree."""

    __slots__ = ()
    #: Bound by :func:`tls_struct`: each field's name with its writer, and with its
    #: reader, in wire order.
    _tls_writers: ClassVar[tuple[tuple[str, Callable[[Writer, Any], None]], ...]] = ()
    _tls_readers: ClassVar[tuple[tuple[str, Callable[[Reader], Any]], ...]] = ()

    def write(self, w: Writer) -> None:
        for name, write in self._tls_writers:
            write(w, getattr(self, name))

    def _write_fields(self, w: Writer, count: int) -> None:
        """Write the first ``count`` fields only (what a struct's signature covers, say)."""
        for name, write in self._tls_writers[:count]:
            write(w, getattr(self, name))

    @classmethod
    def read(cls, r: Reader) -> Self:
        make: Callable[..., Self] = cls
        return make(**{name: read(r) for name, read in cls._tls_readers})  # in wire order


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(tls,))
def tls_struct(cls: C) -> C:
    """Make ``cls`` (a :class:`TlsStruct`) a frozen dataclass whose fields, each declared
    with :func:`tls`, are its wire layout in order."""
    if not issubclass(cls, TlsStruct):
        raise TypeError(f"{cls.__name__} must derive from TlsStruct")
    made: type[Any] = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)
    fields = dataclasses.fields(made)
    missing = [f.name for f in fields if _TLS not in f.metadata]
    if missing:
        raise TypeError(f"{made.__name__}: fields {missing} are not declared with tls()")
    made._tls_writers = tuple((f.name, f.metadata[_TLS].write) for f in fields)
    made._tls_readers = tuple((f.name, f.metadata[_TLS].read) for f in fields)
    return cast(C, made)
