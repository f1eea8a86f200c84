"""The project's shape: README's two commands and CI stay in step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text, flags=re.S)


def test_readme_opens_with_run_and_test_commands() -> None:
    run, test = _readme_commands()[:2]
    assert run.rstrip().endswith("sottovoce server")
    assert test.rstrip().endswith("pytest")
    assert "mypy src" in test and "ruff check" in test


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = _readme_commands()[1].strip()
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert test_command in ci_lines


def test_crypto_dependencies_are_pinned_to_a_minor_range() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"cryptography>=50,<51"' in pyproject
    assert '"vodozemac>=0.10,<0.11"' in pyproject
    constraints = (ROOT / "constraints.txt").read_text()
    for package in ("cryptography==", "pyhpke==", "vodozemac=="):
        assert package in constraints


# --- the repository stands on its own ----------------------------------------------------

#: What a clone must be able to read without anything beside it. Vector data is upstream's.
_OWN_TEXT = ("README.md", "BENCHMARKS.md", "SECURITY.md", "TEST_PLAN.md", "pyproject.toml",
             "docs", "deploy", "src", "tests", "bench", ".ci", "scripts", "release")
_SKIP_DIRS = frozenset({"__pycache__", "data", ".mypy_cache", ".ruff_cache", ".pytest_cache"})
#: References to material outside the repository: the design notes, house rules and
#: issue tracker its authors used, and the machine it was written on. The character
#: classes keep this file from matching itself.
_OUTSIDE_REFERENCES = (
    re.compile(r"\bD[E]SIGN\b"),
    re.compile(r"\.\./s[h]ared"),
    re.compile(r"\bST[Y]LE\b"),
    re.compile(r"\bDEV[E]LOPERS\b"),
    re.compile(r"\bEX[A]MPLES\b"),
    re.compile(r"(?i)\bissues?\s*#\s*\d"),
    re.compile(r"(?i)\bissues?\s+\d"),
    re.compile(r"(?i)\(\s*issue\b"),
    re.compile(r"/w[o]rk/"),
)
#: "docs/NAME.md" and, when given, "§Section" right after it.
_DOC_CITATION = re.compile(r"docs/([a-z0-9-]+\.md)(?: §([^)\],;.\n]+))?")


def _own_files() -> list[Path]:
    out: list[Path] = []
    for name in _OWN_TEXT:
        top = ROOT / name
        if top.is_file():
            out.append(top)
            continue
        for path in sorted(top.rglob("*")):
            rel = path.relative_to(ROOT).parts
            if path.is_file() and not _SKIP_DIRS.intersection(rel) and not any(
                part.endswith(".egg-info") for part in rel
            ):
                out.append(path)
    return out


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def outside_references(text: str) -> list[str]:
    """Each line of ``text`` that cites something outside the repository."""
    return [
        f"{n}: {line.strip()}"
        for n, line in enumerate(text.splitlines(), 1)
        if any(p.search(line) for p in _OUTSIDE_REFERENCES)
    ]


def test_no_file_cites_material_outside_the_repository() -> None:
    files = _own_files()
    assert len(files) > 100, "the walk found too few files"
    found = [
        f"{path.relative_to(ROOT)}:{hit}"
        for path in files
        if (text := _text(path)) is not None
        for hit in outside_references(text)
    ]
    assert found == [], "cite docs/ or an RFC instead:\n" + "\n".join(found)


def test_the_reference_check_catches_each_kind() -> None:
    planted = [
        "see D" "ESIGN §6", "../" "shared/vectors", "ST" "YLE rule 2", "DEVEL" "OPERS.md",
        "EXAM" "PLES.md", "(iss" "ue 5)", "iss" "ue #6", "Iss" "ue 3:", "/wo" "rk/briefs/x.md",
    ]
    for line in planted:
        assert outside_references(line), line
    assert outside_references("docs/protocol.md §Delivery; RFC 9420 §12.4; .issue(") == []


def _headings(doc: Path) -> list[str]:
    return [
        line.lstrip("#").strip()
        for line in doc.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    ]


def _cites(heading: str, cited: str) -> bool:
    return cited == heading or cited.startswith((heading + ":", heading + " "))


def test_every_docs_citation_names_a_file_and_a_section_that_exist() -> None:
    broken = []
    for path in _own_files():
        text = _text(path)
        if text is None:
            continue
        for doc, section in _DOC_CITATION.findall(text):
            target = ROOT / "docs" / doc
            if not target.is_file():
                broken.append(f"{path.relative_to(ROOT)}: docs/{doc} does not exist")
            elif section and not any(_cites(h, section.strip()) for h in _headings(target)):
                broken.append(f"{path.relative_to(ROOT)}: docs/{doc} has no section {section!r}")
    assert broken == [], "\n".join(sorted(set(broken)))


def test_the_literal_grep_for_outside_material_finds_nothing() -> None:
    """The check as a reader would type it: a plain ``grep -rn`` for the five needles
    below, byte for byte and without word boundaries, over README.md, docs, deploy, src,
    tests, bench and pyproject.toml (vector data included) prints nothing. (The needles
    are spelt in parts so that this file does not match.)"""
    needles = [part.encode() for part in (
        "DE" "SIGN", "../" "shared", "STY" "LE.md", "DEVEL" "OPERS", "iss" "ue #")]
    roots = [ROOT / name for name in
             ("README.md", "docs", "deploy", "src", "tests", "bench", "pyproject.toml")]
    caches = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    files = [p for r in roots for p in ([r] if r.is_file() else sorted(r.rglob("*")))
             if p.is_file() and not caches.intersection(p.parts) and ".egg-info" not in str(p)]
    assert len(files) > 100, "the walk found too few files"
    found = [f"{p.relative_to(ROOT)}: {n.decode()}"
             for p in files for n in needles if n in p.read_bytes()]
    assert found == [], found
