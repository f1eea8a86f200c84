"""RFC 8446 §3 presentation language and RFC 9420 §2.1 varints in `sottovoce.codec.tls`."""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass
from enum import IntEnum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sottovoce.codec.tls import (
    OPAQUE_V,
    U8,
    U16,
    U32,
    U64,
    Reader,
    TlsStruct,
    Writer,
    decode,
    encode,
    optional_of,
    struct_of,
    tls,
    tls_struct,
    varint_bytes,
    vector_of,
)
from sottovoce.errors import DecodeError, UsageError
from sottovoce.limits import MAX_DECODE_BYTES, MAX_DECODE_ITEMS, VARINT_MAX

FAST = settings(max_examples=60, deadline=None)

U = {
    8: st.integers(0, 2**8 - 1),
    16: st.integers(0, 2**16 - 1),
    32: st.integers(0, 2**32 - 1),
    64: st.integers(0, 2**64 - 1),
}
varints = st.integers(0, VARINT_MAX)
opaques = st.binary(max_size=300)


# --- a composite structure used by several tests ------------------------------------


class Color(IntEnum):
    RED = 1
    GREEN = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Inner:
    tag: int  # uint16
    blobs: tuple[bytes, ...]  # opaque blobs<V><V>


@dataclass(frozen=True, slots=True, kw_only=True)
class Outer:
    version: int  # uint8
    color: Color  # enum as uint8
    epoch: int  # uint64
    count: int  # varint
    name: bytes  # opaque<V>
    note: bytes | None  # optional<opaque<V>>
    inners: tuple[Inner, ...]  # Inner inners<V>


def write_inner(w: Writer, v: Inner) -> None:
    w.u16(v.tag)
    w.vector_v(v.blobs, Writer.opaque_v)


def read_inner(r: Reader) -> Inner:
    return Inner(tag=r.u16(), blobs=tuple(r.vector_v(Reader.opaque_v)))


def write_outer(w: Writer, v: Outer) -> None:
    w.u8(v.version)
    w.u8(v.color)
    w.u64(v.epoch)
    w.varint(v.count)
    w.opaque_v(v.name)
    w.optional(v.note, Writer.opaque_v)
    w.vector_v(v.inners, write_inner)


def read_outer(r: Reader) -> Outer:
    return Outer(
        version=r.u8(),
        color=Color(r.u8()),  # a ValueError here must surface as DecodeError
        epoch=r.u64(),
        count=r.varint(),
        name=r.opaque_v(),
        note=r.optional(Reader.opaque_v),
        inners=tuple(r.vector_v(read_inner)),
    )


inners = st.builds(Inner, tag=U[16], blobs=st.lists(st.binary(max_size=20), max_size=4).map(tuple))
outers = st.builds(
    Outer,
    version=U[8],
    color=st.sampled_from(Color),
    epoch=U[64],
    count=varints,
    name=st.binary(max_size=40),
    note=st.none() | st.binary(max_size=40),
    inners=st.lists(inners, max_size=4).map(tuple),
)


# --- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
def test_rfc8446_3_3_uint_round_trip_big_endian(bits: int) -> None:
    @FAST
    @given(U[bits])
    def check(v: int) -> None:
        data = encode(getattr(Writer, f"u{bits}"), v)
        assert data == v.to_bytes(bits // 8, "big")
        assert decode(getattr(Reader, f"u{bits}"), data) == v

    check()


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
def test_rfc8446_3_3_uint_out_of_range_is_usage_error(bits: int) -> None:
    with pytest.raises(UsageError):
        encode(getattr(Writer, f"u{bits}"), 2**bits)
    with pytest.raises(UsageError):
        encode(getattr(Writer, f"u{bits}"), -1)


@FAST
@given(varints)
def test_rfc9420_2_1_2_varint_round_trip(v: int) -> None:
    data = encode(Writer.varint, v)
    assert data == varint_bytes(v)
    assert len(data) == (1 if v < 64 else 2 if v < 16384 else 4)
    assert decode(Reader.varint, data) == v


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (63, "3f"),
        (64, "4040"),
        (16383, "7fff"),
        (16384, "80004000"),
        (VARINT_MAX, "bfffffff"),
        # RFC 9000 §A.1 sample values that fit the 30-bit MLS varint.
        (15293, "7bbd"),
        (494878333, "9d7f3e7d"),
    ],
)
def test_rfc9420_2_1_2_varint_boundaries(value: int, encoded: str) -> None:
    assert varint_bytes(value).hex() == encoded
    assert decode(Reader.varint, bytes.fromhex(encoded)) == value


def test_rfc9420_2_1_2_varint_above_30_bits_is_usage_error() -> None:
    with pytest.raises(UsageError):
        varint_bytes(VARINT_MAX + 1)
    with pytest.raises(UsageError):
        varint_bytes(-1)


@FAST
@given(opaques)
def test_rfc9420_2_1_2_opaque_v_round_trip(data: bytes) -> None:
    enc = encode(Writer.opaque_v, data)
    assert enc == varint_bytes(len(data)) + data
    assert decode(Reader.opaque_v, enc) == data


@pytest.mark.parametrize("width", [8, 16, 24, 32])
def test_rfc8446_3_4_fixed_length_prefix_opaque_round_trip(width: int) -> None:
    @FAST
    @given(st.binary(max_size=255))
    def check(data: bytes) -> None:
        enc = encode(getattr(Writer, f"opaque{width}"), data)
        assert enc == len(data).to_bytes(width // 8, "big") + data
        assert decode(getattr(Reader, f"opaque{width}"), enc) == data

    check()


def test_rfc8446_3_4_opaque8_too_long_is_usage_error() -> None:
    with pytest.raises(UsageError):
        encode(Writer.opaque8, bytes(256))


@FAST
@given(st.lists(st.binary(max_size=30), max_size=10))
def test_rfc9420_2_1_2_vector_of_opaques_round_trip(items: list[bytes]) -> None:
    enc = encode(lambda w, v: w.vector_v(v, Writer.opaque_v), items)
    body = b"".join(varint_bytes(len(i)) + i for i in items)
    # The length prefix counts bytes, not items.
    assert enc == varint_bytes(len(body)) + body
    assert decode(lambda r: r.vector_v(Reader.opaque_v), enc) == items


@FAST
@given(st.none() | st.binary(max_size=30))
def test_rfc9420_2_1_1_optional_round_trip(value: bytes | None) -> None:
    enc = encode(lambda w, v: w.optional(v, Writer.opaque_v), value)
    assert enc[0] == (0 if value is None else 1)
    assert decode(lambda r: r.optional(Reader.opaque_v), enc) == value


@FAST
@given(st.booleans())
def test_rfc8446_3_boolean_round_trip(value: bool) -> None:
    enc = encode(Writer.boolean, value)
    assert enc == bytes((int(value),))
    assert decode(Reader.boolean, enc) is value


def test_rfc8446_3_boolean_rejects_other_octets() -> None:
    with pytest.raises(DecodeError):
        decode(Reader.boolean, b"\x02")


@FAST
@given(outers)
def test_nested_structure_round_trip(value: Outer) -> None:
    enc = encode(write_outer, value)
    assert decode(read_outer, enc) == value


# --- rejections ---------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(outers)
def test_truncated_input_is_decode_error_at_every_cut_point(value: Outer) -> None:
    enc = encode(write_outer, value)
    for cut in range(len(enc)):
        with pytest.raises(DecodeError):
            decode(read_outer, enc[:cut])


@FAST
@given(outers, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_decode_error(value: Outer, extra: bytes) -> None:
    enc = encode(write_outer, value)
    with pytest.raises(DecodeError):
        decode(read_outer, enc + extra)


def test_reader_finish_rejects_leftovers_and_eof_reports_them() -> None:
    r = Reader(b"\x01\x02")
    assert r.u8() == 1
    assert not r.eof()
    assert r.remaining == 1
    with pytest.raises(DecodeError):
        r.finish()
    r.u8()
    assert r.eof()
    r.finish()


def test_reader_version_reads_the_expected_octet_and_names_what_is_unknown() -> None:
    r = Reader(b"\x01\x02")
    r.version(1, "chat timer record")
    assert r.remaining == 1
    with pytest.raises(DecodeError, match=r"^unknown chat timer record version$"):
        r.version(1, "chat timer record")
    with pytest.raises(DecodeError, match="truncated"):
        Reader(b"").version(1, "message record")


@pytest.mark.parametrize(
    "encoded",
    [
        "4005",  # 5 in two bytes
        "403f",  # 63 in two bytes (largest non-minimal 2-byte value)
        "4000",  # 0 in two bytes
        "8000003f",  # 63 in four bytes
        "80003fff",  # 16383 in four bytes
        "80000000",  # 0 in four bytes
    ],
)
def test_rfc9420_2_1_2_non_minimal_varint_is_decode_error(encoded: str) -> None:
    with pytest.raises(DecodeError):
        decode(Reader.varint, bytes.fromhex(encoded))


@pytest.mark.parametrize("encoded", ["c0", "c000000000000000", "ffffffff", "c1020304"])
def test_rfc9420_2_1_2_varint_prefix_0b11_is_decode_error(encoded: str) -> None:
    with pytest.raises(DecodeError):
        decode(Reader.varint, bytes.fromhex(encoded))


def test_rfc9420_2_1_2_non_minimal_vector_length_is_decode_error() -> None:
    # opaque<V> whose length 1 is spelt in two bytes.
    with pytest.raises(DecodeError):
        decode(Reader.opaque_v, b"\x40\x01\xaa")


@pytest.mark.parametrize("flag", [2, 3, 0x80, 0xFF])
def test_rfc9420_2_1_1_optional_presence_octet_other_than_0_or_1(flag: int) -> None:
    with pytest.raises(DecodeError):
        decode(lambda r: r.optional(Reader.opaque_v), bytes((flag, 0)))


def test_vector_whose_items_overrun_the_block_is_decode_error() -> None:
    # Block of 3 bytes; its second item claims 5 bytes. The 5 bytes do follow in the
    # buffer, so a reader not bounded by the block would "succeed" and consume all.
    data = b"\x03" + b"\x01\xaa" + b"\x05" + b"\xbb\xcc\xdd\xee\xff"
    with pytest.raises(DecodeError):
        decode(lambda r: r.vector_v(Reader.opaque_v), data)
    # A block with an item cut at the block's end.
    with pytest.raises(DecodeError):
        decode(lambda r: r.vector_v(Reader.u16), b"\x03\x00\x01\x02")


def test_vector_length_beyond_input_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode(lambda r: r.vector_v(Reader.u8), b"\x05\x01\x02")


def test_enum_out_of_range_in_composite_is_decode_error() -> None:
    value = Outer(version=1, color=Color.RED, epoch=0, count=0, name=b"", note=None, inners=())
    enc = bytearray(encode(write_outer, value))
    enc[1] = 9  # not a Color
    with pytest.raises(DecodeError):
        decode(read_outer, bytes(enc))


def test_decode_rejects_non_bytes_as_usage_error() -> None:
    with pytest.raises(UsageError):
        decode(Reader.u8, "x")  # type: ignore[arg-type]


def test_decode_accepts_bytearray_and_memoryview() -> None:
    assert decode(Reader.u16, bytearray(b"\x01\x02")) == 0x0102
    assert decode(Reader.u16, memoryview(b"\x01\x02")) == 0x0102


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decode_returns_or_raises_decode_error_only(data: bytes) -> None:
    """Hostile bytes: decode() either yields a value that re-encodes to them or DecodeError."""
    try:
        value = decode(read_outer, data)
    except DecodeError:
        return
    # Anything accepted is canonical: it re-encodes to the very same bytes.
    assert encode(write_outer, value) == data


@settings(max_examples=200, deadline=None)
@given(outers, st.data())
def test_fuzz_mutated_encodings_decode_or_raise_decode_error(
    value: Outer, data: st.DataObject
) -> None:
    enc = bytearray(encode(write_outer, value))
    pos = data.draw(st.integers(0, len(enc) - 1))
    enc[pos] = data.draw(st.integers(0, 255))
    try:
        decoded = decode(read_outer, bytes(enc))
    except DecodeError:
        return
    assert encode(write_outer, decoded) == bytes(enc)


# --- worst-case cost of hostile input (limits.MAX_DECODE_BYTES, MAX_DECODE_ITEMS) ------


def _empty_vectors(total: int) -> bytes:
    """A vector of one-byte empty vectors filling ``total`` bytes: each item costs the
    attacker one byte and the decoder one Python object, the cheapest amplification."""
    inner = b"\x00" * (total - 4)
    return varint_bytes(len(inner)) + inner


def _nested(r: Reader) -> list[list[int]]:
    return r.vector_v(lambda s: s.vector_v(Reader.u8))


@pytest.mark.parametrize("size", [1 << 20, MAX_DECODE_BYTES])
def test_nested_empty_vectors_near_the_limit_cost_bounded_time_and_memory(size: int) -> None:
    data = _empty_vectors(size)
    # CPU time of this process, not wall time: other work on the machine must not
    # fail the test, while a decoder that goes quadratic again still does.
    t0 = time.process_time()
    with pytest.raises(DecodeError, match="too many vector items"):
        decode(_nested, data)
    elapsed = time.process_time() - t0
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="too many vector items"):
            decode(_nested, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The item bound stops it after 64k items; unbounded, 1 MiB took seconds and a GiB.
    assert elapsed < 1.0, elapsed
    assert peak - len(data) < 16 * 1024 * 1024, peak


def test_a_vector_of_exactly_max_items_decodes() -> None:
    value = decode(_nested, _empty_vectors(MAX_DECODE_ITEMS + 4))
    assert len(value) == MAX_DECODE_ITEMS


def test_input_over_max_decode_bytes_is_refused_unread() -> None:
    with pytest.raises(DecodeError, match="too large"):
        decode(Reader.u8, bytes(MAX_DECODE_BYTES + 1))


def test_runaway_recursion_in_a_reader_is_decode_error() -> None:
    def recursive(r: Reader) -> object:
        return r.optional(recursive)

    with pytest.raises(DecodeError):
        decode(recursive, b"\x01" * 100_000)


# --- structs declared with tls_struct -----------------------------------------------


@tls_struct
class _Inner(TlsStruct):
    tag: int = tls(U8)


@tls_struct
class _Laid(TlsStruct):
    version: int = tls(U16, default=1)
    name: bytes = tls(OPAQUE_V)
    count: int = tls(U32)
    stamp: int = tls(U64)
    inner: _Inner = tls(struct_of(_Inner))
    items: tuple[_Inner, ...] = tls(vector_of(struct_of(_Inner)), default=())
    extra: _Inner | None = tls(optional_of(struct_of(_Inner)), default=None)


def test_tls_struct_writes_its_fields_in_declaration_order() -> None:
    value = _Laid(name=b"ab", count=3, stamp=4, inner=_Inner(tag=5), items=(_Inner(tag=6),),
                  extra=_Inner(tag=7))
    w = Writer()
    w.u16(1)
    w.opaque_v(b"ab")
    w.u32(3)
    w.u64(4)
    w.u8(5)
    w.opaque_v(b"\x06")
    w.raw(b"\x01\x07")
    assert value.encode() == w.getvalue()
    assert _Laid.decode(w.getvalue()) == value
    bare = _Laid(name=b"", count=0, stamp=0, inner=_Inner(tag=0))
    assert _Laid.decode(bare.encode()) == bare
    assert bare.encode().endswith(b"\x00\x00")  # no items, no extra


def test_tls_struct_decoding_refuses_truncated_and_trailing_bytes() -> None:
    data = _Laid(name=b"ab", count=3, stamp=4, inner=_Inner(tag=5)).encode()
    with pytest.raises(DecodeError):
        _Laid.decode(data[:-1])
    with pytest.raises(DecodeError):
        _Laid.decode(data + b"\x00")


def test_tls_struct_refuses_a_field_without_a_codec_and_a_class_without_the_base() -> None:
    class NoCodec(TlsStruct):
        a: int = tls(U8)
        b: int = 0

    with pytest.raises(TypeError, match=r"\['b'\] are not declared with tls"):
        tls_struct(NoCodec)

    class NotLaidOut:
        a: int = tls(U8)

    with pytest.raises(TypeError, match="must derive from TlsStruct"):
        tls_struct(NotLaidOut)
