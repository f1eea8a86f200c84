"""Background flushes of a file being written (write_behind.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sottovoce import write_behind
from sottovoce.write_behind import WriteBehind, fsync_path


def test_a_flush_starts_once_enough_is_written_and_syncs_a_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fdatasync

    def spy(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(write_behind.os, "fdatasync", spy)
    behind = WriteBehind(every=1000)
    with open(tmp_path / "f", "wb", buffering=0) as f:
        f.write(b"x" * 999)
        behind.wrote(f.fileno(), 999)
        behind.wait()
        assert synced == []  # not enough yet
        f.write(b"x")
        behind.wrote(f.fileno(), 1)
        behind.wait()
        assert len(synced) == 1 and synced[0] != f.fileno()  # its own descriptor
        with pytest.raises(OSError):
            os.fstat(synced[0])  # and closed again
        f.write(b"y" * 10)
        behind.wrote(f.fileno(), 10)  # the count started again
        behind.wait()
        assert len(synced) == 1


def test_a_failed_flush_is_reported_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(write_behind.os, "fdatasync", broken)
    behind = WriteBehind(every=1)
    with open(tmp_path / "f", "wb", buffering=0) as f:
        f.write(b"x")
        behind.wrote(f.fileno(), 1)
        with pytest.raises(OSError, match="Input/output"):
            asyncio.run(behind.drain())
        with pytest.raises(OSError, match="Input/output"):
            behind.wrote(f.fileno(), 1)  # the next write hears of it too


def test_fsync_path_syncs_a_file_by_name(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"data")
    fsync_path(path)
    with pytest.raises(FileNotFoundError):
        fsync_path(tmp_path / "missing")
