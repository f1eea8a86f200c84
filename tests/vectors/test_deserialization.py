"""RFC 9420 §2.1.2 variable-length vector headers against mlswg deserialization.json."""

from __future__ import annotations

import pytest

from sottovoce.codec.tls import Reader, Writer, varint_bytes
from tests.vectors.loader import params


@pytest.mark.parametrize(
    "vector", params("mls/deserialization.json", lambda v: f"len{v['length']}")
)
def test_rfc9420_2_1_2_vlbytes_header(vector: dict[str, object]) -> None:
    header = bytes.fromhex(str(vector["vlbytes_header"]))
    length = vector["length"]
    r = Reader(header)
    assert r.varint() == length
    assert r.eof()
    # The minimal encoding of the length is exactly the header.
    assert isinstance(length, int)
    assert varint_bytes(length) == header
    # As the prefix of an opaque<V>, the header announces `length` bytes.
    if length <= 1 << 16:
        w = Writer()
        w.opaque_v(bytes(length))
        encoded = w.getvalue()
        assert encoded[: len(header)] == header
        assert Reader(encoded).opaque_v() == bytes(length)
