"""Secrets the operator hands the server in a file (``--turn-secret-file``,
``--sfu-key-file``): one line, long enough, never echoed in an error."""

from __future__ import annotations

from pathlib import Path

from sottovoce.errors import UsageError
from sottovoce.secret import Secret


def read_secret_line(path: Path, what: str, min_bytes: int) -> Secret:
    """The file's one line, stripped; ``what`` names the file in the error ("TURN secret file")."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror}") from None
    value = raw.strip()
    if len(value) < min_bytes or b"\n" in value:
        raise UsageError(f"the {what} must hold one line of at least {min_bytes} bytes")
    return Secret(value)
