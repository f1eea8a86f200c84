"""Keeping an ephemeral chat's keys and messages out of files: best effort, by design.

* :func:`harden_process` turns core dumps off for this process (``RLIMIT_CORE`` 0),
  so a crash writes no memory image to disk.
* :func:`lock` asks the kernel not to swap a buffer out (``mlock``); refused without
  ``CAP_IPC_LOCK`` past ``RLIMIT_MEMLOCK`` (often 64 KiB or 8 MiB), then it is skipped.
* :func:`wipe` overwrites a ``bytearray`` with zeros.

What this cannot do, and docs/threat-model.md says so: CPython makes copies it does
not tell us about (``bytes`` made from a ``bytearray`` to call ``cryptography``, ``str``
objects of the text shown on screen, freed memory that is reused but not zeroed), and
OpenSSL keeps its own copy of an AEAD key inside ``cryptography``'s objects. Those are
freed, not zeroed; only the buffers we own are wiped and locked.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import resource

_libc: ctypes.CDLL | None = None
_hardened = False


def harden_process() -> bool:
    """No core dumps from this process from now on; ``True`` if the limit is set."""
    global _hardened
    if not _hardened:
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except (ValueError, OSError):
            return False
        _hardened = True
    return True


def _c() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def lock(buf: bytearray) -> bool:
    """``mlock`` the buffer's pages (best effort); ``True`` if the kernel agreed."""
    libc = _c()
    if libc is None or not buf:
        return False
    addr = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    try:
        return int(libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(len(buf)))) == 0
    except AttributeError:
        return False


def wipe(buf: bytearray) -> None:
    """Overwrite ``buf`` with zeros (its length stays: a locked buffer may not move)."""
    ctypes.memset((ctypes.c_char * len(buf)).from_buffer(buf), 0, len(buf)) if buf else None
