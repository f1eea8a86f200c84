"""How to run this same ``sottovoce`` again, as text a person can paste.

After README command 1 the ``sottovoce`` script sits in ``.venv/bin`` and is not
on PATH, so a hint that says a bare ``sottovoce chat bob`` fails when pasted. Every
"next:" hint and the server's start banner name the program with this.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import sys


def command_name(argv0: str | None = None) -> str:
    """The program as it can be pasted: ``sottovoce`` only when PATH finds this one."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if argv0.endswith(("__main__.py", "-c")) or not argv0:
        return f"{shlex.quote(sys.executable)} -m sottovoce"  # started as python -m sottovoce
    on_path = shutil.which("sottovoce")
    with contextlib.suppress(OSError):
        if on_path and os.path.samefile(on_path, argv0):
            return "sottovoce"
    return shlex.quote(os.path.abspath(argv0))


def dir_flag(args: argparse.Namespace) -> str:
    """``--data-dir DIR`` as the user gave it, for commands we suggest (else nothing)."""
    given = getattr(args, "data_dir", None)
    return f" --data-dir {shlex.quote(given)}" if given else ""
