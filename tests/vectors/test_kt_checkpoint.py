"""Signed notes, checkpoints and cosignatures against the examples in the C2SP
specifications themselves (kept byte for byte under kt/c2sp/):

* signed-note.md §Verifier keys, Example: a vkey and a note it verifies;
* tlog-checkpoint.md: the example checkpoint parses and re-encodes exactly;
* tlog-cosignature.md: the example cosignature line decodes to the key ID and
  the timestamp its signed-message example shows ("time 1679315147"), and the
  message we would sign is that example byte for byte.
"""

from __future__ import annotations

import re

import pytest

from sottovoce.kt.checkpoint import (
    TYPE_COSIGNATURE_V1,
    TYPE_ED25519,
    Checkpoint,
    NoteKey,
    SignedNote,
    _cosigned_message,
    verify_note_signature,
)
from sottovoce.kt.errors import BadCheckpointSignature
from tests.vectors.loader import text

SIGNED_NOTE = "kt/c2sp/signed-note.md"
CHECKPOINT = "kt/c2sp/tlog-checkpoint.md"
COSIGNATURE = "kt/c2sp/tlog-cosignature.md"


def _blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a spec, and its indented one-line examples."""
    return re.findall(r"```\n(.*?)```", markdown, flags=re.S)


def test_signed_note_example_verifies_under_its_vkey() -> None:
    spec = text(SIGNED_NOTE)
    vkey = re.search(r"^    (example\.com/foo\+\S+)$", spec, flags=re.M)
    assert vkey is not None
    key = NoteKey.from_vkey(vkey.group(1))
    assert key.sig_type == TYPE_ED25519 and key.vkey() == vkey.group(1)
    example = next(b for b in _blocks(spec) if b.startswith("This is an example message."))
    note = SignedNote.decode(example.encode())
    assert note.encode() == example.encode()
    (sig,) = note.signatures
    assert key.matches(sig)
    assert verify_note_signature(key, note.text, sig) is None
    with pytest.raises(BadCheckpointSignature):
        verify_note_signature(key, note.text.replace("example", "exemple"), sig)


def test_checkpoint_example_parses_and_reencodes() -> None:
    example = _blocks(text(CHECKPOINT))[0]
    note = SignedNote.decode(example.encode())
    cp = Checkpoint.parse(note.text)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert cp.text() == note.text
    assert note.encode() == example.encode()


def test_cosignature_example_decodes_to_the_documented_timestamp() -> None:
    spec = text(COSIGNATURE)
    example = _blocks(spec)[0]
    note = SignedNote.decode(example.encode())
    log_sig, witness_sig = note.signatures
    assert witness_sig.name == "witness.example.com/w1"
    assert len(witness_sig.signature) == 8 + 64
    timestamp = int.from_bytes(witness_sig.signature[:8], "big")
    # The spec's signed-message example is for the same cosignature.
    message = re.search(r"\n    (cosignature/v1\n    time \d+\n(?:    .+\n){3})", spec)
    assert message is not None
    shown = "\n".join(line[4:] if line.startswith("    ") else line
                      for line in message.group(1).split("\n"))
    assert shown == _cosigned_message(timestamp, note.text).decode()
    assert timestamp == 1679315147
    # The log's own line is a plain Ed25519 note signature (4 + 64 bytes).
    assert len(log_sig.signature) == 64
    assert TYPE_COSIGNATURE_V1 == 0x04
