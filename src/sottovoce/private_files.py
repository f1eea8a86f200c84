"""Data directories and databases that only their owner can read (docs/threat-model.md).

The server's database holds who talks to whom and ciphertext; a client's holds
its sealed keys and history. Both live in a directory of mode 0700 and files of
mode 0600. SQLite creates a database's ``-wal`` and ``-shm`` files with the
database file's own mode, so creating the database file 0600 before SQLite
opens it covers all three (the umask can only narrow these modes).

Existing directories and files are never changed behind the owner's back (a
deployment may share a group on purpose); a wider mode is reported so that the
caller can warn (a log line and standard error).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class TooOpen(NamedTuple):
    """An existing path whose mode lets other users in."""

    path: Path
    mode: int
    wanted: int

    def __str__(self) -> str:
        return (f"{self.path} has mode {self.mode:04o}, readable by other users "
                f"(chmod {self.wanted:o} {self.path})")


def _check(path: Path, wanted: int) -> list[TooOpen]:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return []
    return [TooOpen(path, mode, wanted)] if mode & ~wanted else []


def private_dir(path: Path) -> list[TooOpen]:
    """Create ``path`` (and missing parents) with mode 0700; report it if it existed wider."""
    if path.is_dir():
        return _check(path, PRIVATE_DIR_MODE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    return []


def private_file(path: Path, *companions: Path) -> list[TooOpen]:
    """Create ``path`` empty with mode 0600 unless it exists; report it (and the
    ``companions`` that exist, e.g. a database's WAL) if wider."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    found: list[TooOpen] = []
    for p in (path, *companions):
        found += _check(p, PRIVATE_FILE_MODE)
    return found


def sqlite_files(db: Path) -> tuple[Path, Path]:
    """The WAL and shared-memory files SQLite keeps beside a database in WAL mode."""
    return Path(f"{db}-wal"), Path(f"{db}-shm")
