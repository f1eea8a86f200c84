"""The checked-in vectors are exactly the upstream files PROVENANCE names.

Each vector file's sha256 must match its line in ``data/PROVENANCE``; every
listed file must be present; every file under ``data/`` must be listed; and the
listed files must be exactly those the tests read (no dead weight, none missing).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.vectors.loader import DEFAULT_DIR

TESTS = Path(__file__).resolve().parents[1]
PROVENANCE = DEFAULT_DIR / "PROVENANCE"
#: Files under data/ that are not vectors.
NOT_VECTORS = frozenset({"PROVENANCE", ".gitattributes"})
_HASH_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)$", re.M)
#: A vector file named in a test ("mls/welcome.json", "kt/c2sp/signed-note.md"), or a
#: directory ending in "/" whose every file a test reads (loader.files).
_VECTOR_NAME = re.compile(
    r"""["']((?:mls|hpke|sframe|kt|link|noise|xwing)/(?:[\w.@\[\]-]+/)*(?:[\w.@\[\]-]+\.[a-z]+|[\w-]+/))["']"""
)


def listed(text: str) -> dict[str, str]:
    """relpath -> sha256 from PROVENANCE's sha256sum-style lines."""
    out: dict[str, str] = {}
    for digest, rel in _HASH_LINE.findall(text):
        assert rel not in out, f"{rel} is listed twice in PROVENANCE"
        out[rel] = digest
    return out


def test_every_vector_file_matches_its_sha256_in_provenance() -> None:
    want = listed(PROVENANCE.read_text(encoding="utf-8"))
    assert len(want) >= 17, "PROVENANCE lists too few files: was it truncated?"
    for rel, digest in sorted(want.items()):
        file = DEFAULT_DIR / rel
        assert file.is_file(), f"{rel} is listed in PROVENANCE but {file} is missing"
        got = hashlib.sha256(file.read_bytes()).hexdigest()
        assert got == digest, f"{rel}: sha256 {got} differs from PROVENANCE ({digest})"


def test_every_file_under_data_is_listed() -> None:
    want = listed(PROVENANCE.read_text(encoding="utf-8"))
    present = {
        p.relative_to(DEFAULT_DIR).as_posix()
        for p in DEFAULT_DIR.rglob("*")
        if p.is_file() and p.name not in NOT_VECTORS
    }
    assert present - set(want) == set(), "files under tests/vectors/data missing from PROVENANCE"


def test_the_listed_files_are_exactly_those_the_tests_read() -> None:
    named = {
        m
        for path in TESTS.rglob("*.py")
        if path.name != Path(__file__).name
        for m in _VECTOR_NAME.findall(path.read_text(encoding="utf-8"))
    }
    want = set(listed(PROVENANCE.read_text(encoding="utf-8")))
    dirs = {m for m in named if m.endswith("/")}
    assert all(any(rel.startswith(d) for rel in want) for d in dirs), "a read directory is empty"
    used = {m for m in named if not m.endswith("/")} | {
        rel for rel in want if any(rel.startswith(d) for d in dirs)
    }
    assert used - want == set(), "tests read vector files that are not checked in"
    assert want - used == set(), "checked-in vector files that no test reads"


def test_the_checker_notices_a_changed_byte(tmp_path: Path) -> None:
    text = PROVENANCE.read_text(encoding="utf-8")
    rel, digest = next(iter(listed(text).items()))
    data = bytearray((DEFAULT_DIR / rel).read_bytes())
    data[len(data) // 2] ^= 1
    assert hashlib.sha256(bytes(data)).hexdigest() != digest
    assert listed(f"{digest}  {rel}\n") == {rel: digest}


def test_a_missing_vector_file_fails_the_run_and_never_skips(tmp_path: Path) -> None:
    """A checkout without a vector file must fail, naming the file: run pytest on two
    tests that read one (through ``params`` in tests/vectors, through ``load`` in
    tests/unit) with that file pointed at a path that does not exist."""
    absent = tmp_path / "absent"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env["SOTTOVOCE_VECTOR_FILES"] = (
        f"mls/tree-math.json={absent / 'tree-math.json'},"
        f"mls/tree-validation.json={absent / 'tree-validation.json'}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-n", "0",
         "tests/vectors/test_tree_math.py",
         "tests/unit/test_mls_tree.py::test_rfc9420_7_3_bad_leaf_signature_is_rejected"],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 1, done.stdout
    # The one in tests/vectors fails at setup (an error), the one in tests/unit in its body.
    assert re.fullmatch(r"1 failed, 1 error in [\d.]+s", summary), done.stdout
    assert "vector file mls/tree-math.json is missing" in done.stdout
    assert "vector file mls/tree-validation.json is missing" in done.stdout
