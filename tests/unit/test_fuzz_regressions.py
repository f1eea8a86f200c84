"""Inputs the fuzz harnesses (tests/fuzz) found to break a decoder, each kept here as a
regression test: the decoder must end in its typed error, never anything else."""

from __future__ import annotations

import pytest

from sottovoce.client import control
from sottovoce.client.ephemeral_media import MediaKind, describe
from sottovoce.client.file_body import FileInfo
from sottovoce.client.payload import read_json_body
from sottovoce.errors import DecodeError
from sottovoce.kt.checkpoint import Checkpoint, NoteSignature, SignedNote
from sottovoce.kt.errors import MalformedProof

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


@pytest.mark.parametrize("digits", [21, 5_000])
def test_checkpoint_with_a_huge_tree_size_is_malformed(digits: int) -> None:
    """Found by the kt_note harness: a tree size of 5,121 digits made int() raise
    ValueError (Python's 4,300-digit limit) out of Checkpoint.parse."""
    text = "example.com/log\n" + "1" * digits + "\n" + "A" * 43 + "=\n"
    with pytest.raises(MalformedProof, match="canonical decimal"):
        Checkpoint.parse(text)


def test_the_fuzz_finding_note_is_refused_as_malformed() -> None:
    note = SignedNote(text="example.com/log\n" + "9" * 5_000 + "\n" + "A" * 43 + "=\n",
                      signatures=(NoteSignature(name="example.com/log", key_id=bytes(4),
                                                signature=bytes(64)),))
    with pytest.raises(MalformedProof):
        Checkpoint.parse(SignedNote.decode(note.encode()).text)


@pytest.mark.parametrize("head", [
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x02\x80",  # the finding: 20 bytes
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"GIF89a\x80\x02\xff",  # the finding: 9 bytes
    b"GIF87a",
])
def test_a_photo_with_a_truncated_header_is_described_without_a_size(head: bytes) -> None:
    """Found by the media_describe harness: a PNG or GIF photo shorter than its size
    field made struct.unpack raise struct.error out of describe(), which runs on every
    photo a peer sends in an ephemeral chat."""
    text = describe(MediaKind.PHOTO, "a.png", head)
    assert text.endswith(f"image, {len(head)} bytes") and "\u00d7" not in text


def test_a_whole_png_header_still_gives_the_size() -> None:
    head = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x02\x80\x00\x00\x01\xe0"
    assert "640\u00d7480" in describe(MediaKind.PHOTO, "a.png", head)
