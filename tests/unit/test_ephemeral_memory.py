"""The best-effort memory hygiene of ephemeral chats (client/ephemeral_memory.py)."""

from __future__ import annotations

import resource

from sottovoce.client.ephemeral_memory import harden_process, lock, wipe


def test_harden_process_turns_core_dumps_off() -> None:
    assert harden_process() is True
    assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)


def test_wipe_zeroes_in_place_and_lock_answers_without_failing() -> None:
    buf = bytearray(b"\x5a" * 64)
    view = memoryview(buf)  # the same memory, seen from elsewhere
    assert isinstance(lock(buf), bool)  # refused past RLIMIT_MEMLOCK: then False, no error
    wipe(buf)
    assert bytes(view) == bytes(64) and len(buf) == 64
    view.release()
    wipe(bytearray())  # nothing to do, no error
