"""Inputs the fuzz harnesses (tests/fuzz) found to break a decoder, each kept here as a
regression test: the decoder must end in its typed error, never anything else."""

from __future__ import annotations

import pytest

from sottovoce.client import control
from sottovoce.client.file_body import FileInfo
from sottovoce.client.payload import read_json_body
from sottovoce.errors import DecodeError

#: Nested deeper than the JSON parser's recursion limit (found by the control_body harness
#: as ``{"v":[[[[...``): json.loads raised RecursionError out of every JSON body decoder.
DEEP = b'{"v":' + b"[" * 100_000 + b"}"


@pytest.mark.parametrize("body", [DEEP, b"[" * 100_000, b'{"to":' + b'{"a":' * 50_000])
def test_deeply_nested_json_body_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="is not JSON"):
        read_json_body(body, ("to",), "a delete")


@pytest.mark.parametrize(
    "decode",
    [control.Delete.decode, control.Reaction.decode, control.Receipt.decode,
     lambda b: control.Quote.decode(b, "a quote"), lambda b: FileInfo.decode(b.decode())],
)
def test_every_json_body_decoder_refuses_deep_nesting(decode: object) -> None:
    with pytest.raises(DecodeError):
        decode(DEEP)  # type: ignore[operator]
