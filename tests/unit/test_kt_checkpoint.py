"""Signed notes and checkpoints (kt/checkpoint.py): strict parsing, the policy a client
applies (pinned log key, K of N witnesses, freshness), and the witness's state."""

from __future__ import annotations

import base64
import hashlib

import pytest

from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.errors import UsageError
from sottovoce.kt.checkpoint import (
    Checkpoint,
    NoteKey,
    NoteSignature,
    NoteSigner,
    SignedNote,
    add_cosignature,
    known,
    open_checkpoint,
)
from sottovoce.kt.errors import (
    BadCheckpointSignature,
    LogForked,
    LogShrank,
    MalformedProof,
    NotEnoughCosignatures,
    StaleCheckpoint,
)
from sottovoce.kt.merkle import LogWriter, MemoryNodes, consistency_proof, leaf_hash
from sottovoce.kt.witness import Witness

NOW = 1_800_000_000_000
ROOT = hashlib.sha256(b"root").digest()


def _signer(seed: int, name: str, *, cosigner: bool = False) -> NoteSigner:
    key = SigningKey(SignatureScheme.ED25519, hashlib.sha256(bytes([seed])).digest())
    return NoteSigner(name, key, cosigner=cosigner)


LOG = _signer(1, "kt.example/log")
W1 = _signer(2, "w1.example/w", cosigner=True)
W2 = _signer(3, "w2.example/w", cosigner=True)


def _note(size: int = 5, root: bytes = ROOT, *witnesses: NoteSigner, ts: int = NOW // 1000
          ) -> SignedNote:
    note = Checkpoint(origin=LOG.public.name, size=size, root=root).sign(LOG)
    for w in witnesses:
        note = add_cosignature(note, w.cosign(note.text, timestamp_s=ts))
    return note


def test_round_trip_and_policy() -> None:
    note = _note(5, ROOT, W1, W2)
    data = note.encode()
    assert SignedNote.decode(data) == note
    v = open_checkpoint(data, log_key=LOG.public, witnesses=(W1.public, W2.public),
                        min_cosignatures=2, now_ms=NOW, max_age_ms=60_000)
    assert (v.checkpoint.size, v.checkpoint.root) == (5, ROOT)
    assert v.cosignatures == {"w1.example/w": NOW // 1000, "w2.example/w": NOW // 1000}
    assert NoteKey.from_vkey(W1.public.vkey()) == W1.public
    with pytest.raises(NotEnoughCosignatures):
        open_checkpoint(_note(5, ROOT, W1), log_key=LOG.public,
                        witnesses=(W1.public, W2.public), min_cosignatures=2)
    with pytest.raises(StaleCheckpoint):
        open_checkpoint(data, log_key=LOG.public, witnesses=(W1.public,), now_ms=NOW + 61_000,
                        max_age_ms=60_000)
    with pytest.raises(BadCheckpointSignature, match="future"):
        open_checkpoint(_note(5, ROOT, W1, ts=NOW // 1000 + 3600), log_key=LOG.public,
                        witnesses=(W1.public,), now_ms=NOW)


def test_unknown_signatures_are_ignored_but_a_bad_known_one_rejects() -> None:
    stranger = _signer(9, "stranger.example/w", cosigner=True)
    note = _note(5, ROOT, W1, stranger)
    v = open_checkpoint(note, log_key=LOG.public, witnesses=(W1.public,), min_cosignatures=1)
    assert set(v.cosignatures) == {"w1.example/w"}
    # Same name as W1 but another key: a different key ID, so ignored, not counted.
    impostor = _signer(10, "w1.example/w", cosigner=True)
    with pytest.raises(NotEnoughCosignatures):
        open_checkpoint(_note(5, ROOT, impostor), log_key=LOG.public, witnesses=(W1.public,),
                        min_cosignatures=1)
    good = _note(5, ROOT, W1)
    broken = NoteSignature(name=good.signatures[1].name, key_id=good.signatures[1].key_id,
                           signature=good.signatures[1].signature[:8] + bytes(64))
    with pytest.raises(BadCheckpointSignature):
        open_checkpoint(SignedNote(text=good.text, signatures=(good.signatures[0], broken)),
                        log_key=LOG.public, witnesses=(W1.public,))
    with pytest.raises(BadCheckpointSignature, match="pinned log key"):
        open_checkpoint(SignedNote(text=good.text, signatures=(good.signatures[1],)),
                        log_key=LOG.public, witnesses=(W1.public,))
    other_log = _signer(11, "other.example/log")
    with pytest.raises(BadCheckpointSignature, match="another log"):
        open_checkpoint(Checkpoint(origin="other.example/log", size=1, root=ROOT).sign(other_log),
                        log_key=LOG.public)


@pytest.mark.parametrize("bad", [
    b"kt.example/log\n5\n" + base64.b64encode(ROOT) + b"\n",  # no signature block
    b"kt.example/log\n5\n" + base64.b64encode(ROOT) + b"\n\n",  # no signature line
    b"kt.example/log\n5\x01\n" + base64.b64encode(ROOT) + b"\n\n\xe2\x80\x94 a AAAAAAA=\n",
    b"\xff\n\n\xe2\x80\x94 a AAAAAAA=\n",  # not UTF-8
    b"x\n\n- a AAAAAAA=\n",  # a hyphen is not the em dash
    b"x\n\n\xe2\x80\x94 a+b AAAAAAA=\n",  # "+" in a key name
    b"x\n\n\xe2\x80\x94 a AAAAAAB=\n",  # non-canonical base64 (unused bits set)
    b"x\n\n\xe2\x80\x94 a AAAA\n",  # 3 bytes: shorter than a key ID and a signature
    b"x\n\n" + b"\xe2\x80\x94 a AAAAAAA=\n" * 40,  # too many signatures
    b"x" * 20000 + b"\n\n\xe2\x80\x94 a AAAAAAA=\n",  # too large
])
def test_malformed_notes_are_refused(bad: bytes) -> None:
    with pytest.raises(MalformedProof):
        SignedNote.decode(bad)


@pytest.mark.parametrize("text", [
    "kt.example/log\n05\nROOT\n",  # leading zero
    "kt.example/log\n5\n",  # two lines
    "kt.example/log\n5\nROOT\n\n",  # empty extension line
    "kt.example/log\n-5\nROOT\n",
    "kt.example/log\n5\n" + base64.b64encode(b"short").decode() + "\n",
    "\n5\nROOT\n",
])
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(MalformedProof):
        Checkpoint.parse(text.replace("ROOT", base64.b64encode(ROOT).decode()))
    with pytest.raises(MalformedProof):
        NoteKey.from_vkey(W1.public.vkey().replace("+", "+0", 1))


def test_witness_cosigns_growth_and_keeps_its_state_on_refusal() -> None:
    nodes, writer = MemoryNodes(), LogWriter()
    roots = []
    for i in range(6):
        nodes.store(writer.append(leaf_hash(bytes([i]))))
        roots.append(writer.root())
    witness = Witness(W1, LOG.public)
    witness.cosign(_note(3, roots[2]), [], now_ms=NOW)
    sig = witness.cosign(_note(6, roots[5]), consistency_proof(3, 6, nodes), now_ms=NOW)
    assert sig.name == "w1.example/w"
    state = witness.state
    with pytest.raises(LogShrank):
        witness.cosign(_note(4, roots[3]), [], now_ms=NOW)
    with pytest.raises(LogForked):
        witness.cosign(_note(6, ROOT), [], now_ms=NOW)
    assert witness.state == state


def test_misuse_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        LOG.cosign("x\n", timestamp_s=1)
    with pytest.raises(UsageError):
        W1.sign("x\n")
    with pytest.raises(UsageError):
        known([W1.public, NoteKey(name=W1.public.name, public_key=W2.public.public_key,
                                  sig_type=W1.public.sig_type)])
    with pytest.raises(UsageError):
        Checkpoint(origin="a\nb", size=1, root=ROOT)


def test_a_verifier_key_whose_base64_holds_a_plus_parses() -> None:
    # c2sp.org/signed-note: name+keyid+base64(type||key); only the name excludes "+".
    for seed in range(64):
        key = NoteSigner("kt.example/log", SigningKey(SignatureScheme.ED25519,
                                                      bytes([seed]) * 32)).public
        if "+" in key.vkey().split("+", 2)[2]:
            assert NoteKey.from_vkey(key.vkey()) == key
            return
    raise AssertionError("no seed gave a base64 key with '+'")


def test_a_checkpoint_checked_before_is_not_checked_again_but_a_changed_one_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sottovoce.kt import checkpoint as module

    calls = []
    real = module.VerifyKey.verify

    def counted(self: module.VerifyKey, message: bytes, signature: bytes) -> None:
        calls.append(message)
        real(self, message, signature)

    def check(note: SignedNote) -> None:
        open_checkpoint(note.encode(), log_key=LOG.public, witnesses=(W1.public,),
                        min_cosignatures=1)

    monkeypatch.setattr(module.VerifyKey, "verify", counted)
    note = _note(7, ROOT, W1)
    check(note)
    assert len(calls) == 2  # the log's signature and the cosignature
    check(note)
    assert len(calls) == 2  # both remembered
    log_sig, cosig = note.signatures
    forged = NoteSignature(name=log_sig.name, key_id=log_sig.key_id,
                           signature=bytes(63) + b"\x01")
    with pytest.raises(BadCheckpointSignature):
        check(SignedNote(text=note.text, signatures=(forged, cosig)))
    other = SignedNote(text=note.text.replace("7", "8", 1), signatures=note.signatures)
    with pytest.raises(BadCheckpointSignature):
        check(other)
    with pytest.raises(BadCheckpointSignature):  # a failure is not remembered either
        check(other)
    assert len(calls) == 5


def test_a_note_opened_before_is_not_parsed_again_but_each_call_checks_count_clock_and_age(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sottovoce.kt import checkpoint as module

    parsed = []
    real = module.SignedNote.decode.__func__  # type: ignore[attr-defined]

    def counted(cls: type[SignedNote], data: bytes) -> SignedNote:
        parsed.append(data)
        return real(cls, data)  # type: ignore[no-any-return]

    monkeypatch.setattr(module.SignedNote, "decode", classmethod(counted))
    monkeypatch.setattr(module, "_OPENED", {})
    data = _note(9, ROOT, W1, ts=NOW // 1000).encode()
    keys = {"log_key": LOG.public, "witnesses": (W1.public, W2.public)}
    v = open_checkpoint(data, min_cosignatures=1, now_ms=NOW, max_age_ms=60_000, **keys)
    again = open_checkpoint(data, min_cosignatures=1, now_ms=NOW, max_age_ms=60_000, **keys)
    assert again == v and again.cosignatures is not v.cosignatures
    assert len(parsed) == 1
    with pytest.raises(NotEnoughCosignatures):
        open_checkpoint(data, min_cosignatures=2, now_ms=NOW, **keys)
    with pytest.raises(StaleCheckpoint):
        open_checkpoint(data, min_cosignatures=1, now_ms=NOW + 61_000, max_age_ms=60_000,
                        **keys)
    with pytest.raises(BadCheckpointSignature):  # dated after this clock
        open_checkpoint(data, now_ms=NOW - 3_600_000, **keys)
    assert len(parsed) == 1
    # Other keys are another entry: checked from the start.
    with pytest.raises(BadCheckpointSignature):
        open_checkpoint(data, log_key=_signer(9, LOG.public.name).public,
                        witnesses=(W1.public,))
    assert len(parsed) == 2
    # A failure is not kept: the same bad note is parsed (and refused) each time.
    bad = data.replace(b"kt.example/log\n9", b"kt.example/log\n8")
    for _ in range(2):
        with pytest.raises(BadCheckpointSignature):
            open_checkpoint(bad, **keys)
    assert len(parsed) == 4
