"""The check behind every "--help says what it does" test: a command's help, with its
line breaks folded, contains each promise the docs make about it."""

from __future__ import annotations

import pytest

from sottovoce.cli.main import main as cli_main


def assert_help_says(
    argv: list[str], promises: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``argv`` (ending in --help) exits 0 and its help holds every one of ``promises``."""
    with pytest.raises(SystemExit) as done:
        cli_main(argv)
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for promise in promises:
        assert promise in text, promise
