"""The tag log of an upload under way (client/store_files.py): what a later run checks
every chunk it seals again against, so that no nonce is used on other bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sottovoce.client.store_files import FileChanged, TagLog
from sottovoce.errors import UsageError


def test_tags_are_kept_across_runs_and_a_torn_append_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "x.tags"
    log = TagLog(path)
    log.sealed(0, b"a" * 16)
    log.sealed(1, b"b" * 16)
    log.close()
    with open(path, "ab") as f:
        f.write(b"c" * 7)  # the run died in the middle of the third append
    again = TagLog(path)
    assert len(again) == 2 and path.stat().st_size == 32
    again.sealed(0, b"a" * 16)  # the same chunk sealed again: fine
    with pytest.raises(FileChanged):
        again.sealed(1, b"B" * 16)  # other bytes under the same nonce: refused
    with pytest.raises(UsageError):
        again.sealed(3, b"d" * 16)  # chunk 2 was never sealed
    again.sealed(2, b"c" * 16)
    again.close()
    assert path.read_bytes() == b"a" * 16 + b"b" * 16 + b"c" * 16
