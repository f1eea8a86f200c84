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
