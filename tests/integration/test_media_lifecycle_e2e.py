"""Files with disappearing messages and ``forget``, through the real server
(client/purge.py: one list of per-message tables for the sweep and for forget).

* a file sent in a chat with a timer expires like a text message: the server's blob
  lives no longer than the timer (plus the upload's grace), and the sweep deletes the
  file's row, its sealed local copy and its decrypted copy in the viewing area;
* ``forget`` deletes a conversation's file rows, sealed copies, expiries and timer.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sottovoce.client import Client
from sottovoce.client.files import UPLOAD_GRACE_MS
from sottovoce.crypto.file_chunks import CHUNK_SIZE
from sottovoce.protocol import events as ev
from tests.integration.client_helpers import accounts
from tests.integration.serverproc import ServerProcess
from tests.integration.test_files_e2e import file_message, make_file


def _rows(client: Client, table: str) -> int:
    row = client._store.connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0])


def _on_disk(client: Client, folder: str) -> list[Path]:
    root = client._store.data_dir / folder
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def _timer_file(alice: Client, bob: Client, src: Path) -> str:
    await alice.timers.set_chat_timer("bob", 3600)
    waiting = asyncio.ensure_future(file_message(bob))
    sent = await alice.files.send_file("bob", src)
    assert await waiting == sent
    return sent


async def test_a_file_in_a_timed_chat_disappears_with_its_copies(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        src = tmp_path / "photo.bin"
        make_file(src, CHUNK_SIZE + 10)
        before = int(time.time() * 1000)
        mid = await _timer_file(alice, bob, src)
        info = bob.files.info(mid)
        # The server keeps the blob for the timer (not its 7-day default).
        assert info.expires_at_ms <= int(time.time() * 1000) + 3_600_000 + UPLOAD_GRACE_MS
        assert info.expires_at_ms >= before + 3_600_000
        expires = bob.timers.expires_at(mid)
        assert expires and expires == alice.timers.expires_at(mid)
        viewed = await bob.files.view(mid)
        assert viewed.exists() and _rows(bob, "files") == 1
        assert len(_on_disk(bob, "files")) == 1 and len(_on_disk(bob, "view")) == 1
        later = expires + 1
        for c in (alice, bob):
            c.timers.expiries.clock = lambda: later
            assert mid in c.timers.sweep()
            assert c.message(mid) is None
        assert _rows(bob, "files") == 0 and _rows(bob, "message_expiry") == 0
        assert _on_disk(bob, "files") == [] and _on_disk(bob, "view") == []


async def test_forget_deletes_files_expiries_and_the_timer(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        src = tmp_path / "notes.txt"
        make_file(src, 1000)
        mid = await _timer_file(alice, bob, src)
        await bob.files.view(mid)
        assert bob.timers.chat_timer("alice") is not None
        assert _rows(bob, "message_expiry") == 1 and _rows(bob, "files") == 1
        assert bob.conversations.forget("alice") == 2  # the timer notice and the file
        assert bob.message(mid) is None and bob.timers.chat_timer("alice") is None
        for table in ("files", "message_expiry", "chat_timers"):
            assert _rows(bob, table) == 0, table
        assert _on_disk(bob, "files") == [] and _on_disk(bob, "view") == []
        # The other side is untouched.
        chat = ev.dm_conversation_id("alice", "bob")
        assert alice.timers.expiries.seconds(chat) == 3600 and alice.message(mid) is not None
