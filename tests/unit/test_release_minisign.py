"""minisign signatures made and checked with cryptography's Ed25519, against files
the real minisign 0.11 made (tests/unit/fixtures/minisign, a throwaway key) and,
where it is installed, against the minisign binary itself."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from sottovoce.release import minisign

FIXTURES = Path(__file__).parent / "fixtures" / "minisign"
RANDOM = bytes(range(40))


def _fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_signatures_made_by_minisign_verify_prehashed_and_legacy() -> None:
    pub = minisign.load_public_key(_fixture("throwaway.pub"))
    message = (FIXTURES / "message.txt").read_bytes()
    legacy = (FIXTURES / "legacy.txt").read_bytes()
    assert _fixture("message.txt.minisig").splitlines()[1].startswith("RUR")  # "ED": prehashed
    assert _fixture("legacy.txt.minisig").splitlines()[1].startswith("RWR")  # "Ed": legacy
    assert minisign.verify(pub, message, _fixture("message.txt.minisig")) == (
        "prehashed by minisign 0.11")
    assert minisign.verify(pub, legacy, _fixture("legacy.txt.minisig")) == (
        "legacy by minisign 0.11")
    with pytest.raises(minisign.MinisignError, match="changed"):
        minisign.verify(pub, message + b"x", _fixture("message.txt.minisig"))


def test_a_key_minisign_made_signs_what_minisign_verifies() -> None:
    key = minisign.load_secret_key(_fixture("throwaway.key"))
    assert key.public == minisign.load_public_key(_fixture("throwaway.pub"))
    sig = minisign.sign(key, b"data", "comment")
    assert minisign.verify(key.public, b"data", sig) == "comment"
    assert "<hidden>" in repr(key)
    assert key.seed.hex() not in repr(key)


def test_a_changed_trusted_comment_or_another_key_is_refused() -> None:
    key = minisign.generate(RANDOM)
    sig = minisign.sign(key, b"manifest", "sottovoce 0.1.0")
    lines = sig.splitlines()
    forged = "\n".join([*lines[:2], "trusted comment: sottovoce 9.9.9", lines[3]]) + "\n"
    with pytest.raises(minisign.MinisignError, match="trusted comment"):
        minisign.verify(key.public, b"manifest", forged)
    other = minisign.generate(bytes(range(1, 41)))
    with pytest.raises(minisign.MinisignError, match="another key"):
        minisign.verify(other.public, b"manifest", sig)
    same_id = minisign.PublicKey(key.key_id, other.public.key)
    with pytest.raises(minisign.MinisignError, match="changed"):
        minisign.verify(same_id, b"manifest", sig)
    for bad in ("", "untrusted comment: x\nnot base64!\n", lines[0] + "\n" + lines[1] + "\n"):
        with pytest.raises(minisign.MinisignError):
            minisign.verify(key.public, b"manifest", bad)


def test_key_files_round_trip_and_damage_is_caught() -> None:
    key = minisign.generate(RANDOM)
    again = minisign.load_secret_key(key.to_text())
    assert again.seed == key.seed and again.key_id == key.key_id
    assert minisign.load_public_key(key.public.to_text()) == key.public
    assert minisign.load_public_key(key.public.base64) == key.public
    raw = bytearray(base64.b64decode(key.to_text().splitlines()[1]))
    raw[70] ^= 1
    with pytest.raises(minisign.MinisignError, match="damaged"):
        minisign.load_secret_key(base64.b64encode(bytes(raw)).decode())
    raw = bytearray(base64.b64decode(key.to_text().splitlines()[1]))
    raw[2:4] = b"Sc"
    with pytest.raises(minisign.MinisignError, match="passphrase"):
        minisign.load_secret_key(base64.b64encode(bytes(raw)).decode())
    with pytest.raises(minisign.MinisignError):
        minisign.load_public_key(base64.b64encode(b"Ed" + bytes(8)).decode())


MINISIGN = shutil.which("minisign")
needs_minisign = pytest.mark.skipif(
    MINISIGN is None, reason="the minisign binary is not installed (.ci/services installs it)")


@needs_minisign
def test_the_minisign_binary_checks_our_signature_and_we_check_its(tmp_path: Path) -> None:
    key = minisign.generate(RANDOM)
    (tmp_path / "k.pub").write_text(key.public.to_text())
    (tmp_path / "k.key").write_text(key.to_text())
    data = tmp_path / "MANIFEST.sha256"
    data.write_bytes(b"0" * 64 + b"  README.md\n")
    (tmp_path / "MANIFEST.sha256.minisig").write_text(minisign.sign(key, data.read_bytes(), "ours"))
    ok = subprocess.run([str(MINISIGN), "-Vm", str(data), "-P", key.public.base64],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "Trusted comment: ours" in ok.stdout, ok.stderr
    data.write_bytes(b"1" + data.read_bytes()[1:])
    bad = subprocess.run([str(MINISIGN), "-Vm", str(data), "-p", str(tmp_path / "k.pub")],
                         capture_output=True, text=True, check=False)
    assert bad.returncode != 0
    # minisign signs with the key file we wrote; we verify what it made.
    subprocess.run([str(MINISIGN), "-S", "-s", str(tmp_path / "k.key"), "-m", str(data),
                    "-t", "theirs"], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    sig = (tmp_path / "MANIFEST.sha256.minisig").read_text()
    assert minisign.verify(key.public, data.read_bytes(), sig) == "theirs"
