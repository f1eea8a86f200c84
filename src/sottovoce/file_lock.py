"""One process per directory: an exclusive lock on a file in it.

The client's store (one process per account) and ``sottovoce server`` (one
server per SQLite data directory) both hold one for their lifetime.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO


def exclusive_lock(path: Path) -> IO[bytes] | None:
    """Open ``path`` and lock it, exclusive and non-blocking; None if another process holds it.

    The lock lasts as long as the handle: the kernel drops it when the process ends,
    however it ends, so a crash never leaves a stale lock behind. Where there is no
    ``fcntl`` (not POSIX) the handle is returned unlocked.
    """
    handle = open(path, "a+b")  # noqa: SIM115 - the caller holds it
    try:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - non-POSIX
        pass
    except OSError:
        handle.close()
        return None
    return handle
