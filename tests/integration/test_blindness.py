"""Blindness (docs/threat-model.md): canary plaintexts never reach the server in any form.

Real clients send canaries through the real server, to a peer that is
offline (stored, then replayed, with a push tickle) and online (live). Then
every byte the server left behind is searched: its SQLite files including
``-wal`` and ``-shm`` (while it runs and after it stops), its JSON log, its
stdout/stderr, and every push payload it POSTed to a webhook captured on
127.0.0.1. Each canary is searched with the blindness kit's scanner
(``sottovoce.audit_kit``): raw bytes, hex, and base64 at all three alignments
(standard and URL-safe alphabets); the scanner's own tests are in
tests/unit/test_blindness_scan.py, and the kit as a command in
test_blindness_kit.py.

A positive control shows the search reads real data: the public usernames,
which the server is allowed to know, are found in the same bytes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from sottovoce.audit_kit.needles import Scanner, needles_for
from sottovoce.audit_kit.push_capture import PushCapture
from sottovoce.client import Client
from tests.integration.client_helpers import PASSPHRASE, make_account, received
from tests.integration.serverproc import ServerProcess


@pytest.fixture
def push_capture() -> Iterator[tuple[str, PushCapture]]:
    """The blindness kit's UnifiedPush-style endpoint on 127.0.0.1, recording every POST."""
    with PushCapture() as capture:
        yield capture.endpoint("bob"), capture


def _server_bytes(srv: ServerProcess) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(srv.data_dir.iterdir()) if p.is_file()}


def _assert_blind(where: dict[str, bytes], canaries: list[bytes]) -> None:
    """The blindness kit's own search (raw, hex, HEX, base64/base64url at every alignment)."""
    scanner = Scanner(
        n for i, c in enumerate(canaries) for n in needles_for(c, label=f"#{i}", kind="canary")
    )
    for name, blob in where.items():
        hits = scanner.scan(blob)
        if hits:
            needle = hits[0].needle
            raise AssertionError(f"canary {needle.label} found in {name} ({needle.encoding})")


async def test_canaries_never_reach_storage_logs_or_push(
    tmp_path: Path, push_capture: tuple[str, PushCapture]
) -> None:
    endpoint, capture = push_capture
    srv = ServerProcess(tmp_path / "server").start()
    tag = secrets.token_hex(6)
    canaries = [
        f"CANARY-{tag}-{i}: the quick brown fox meets the blind relay".encode() for i in range(6)
    ]
    alice = await make_account(srv, "alice", tmp_path)
    bob = await make_account(srv, "bob", tmp_path)
    try:
        await bob.register_push(endpoint)
        await bob.close()  # offline: the first canaries are stored and tickled
        for canary in canaries[:3]:
            await alice.wait_sent(await alice.send_text("bob", canary.decode()))
        tickled = await asyncio.to_thread(capture.wait, 5)
        assert tickled, "the server should have tickled bob's push endpoint"

        bob = await Client.open(tmp_path / "bob", PASSPHRASE)
        stream = bob.events()
        await bob.connect()
        for canary in canaries[3:]:  # online: relayed live
            await alice.wait_sent(await alice.send_text("bob", canary.decode()))
        await received(stream, 3)
        assert [m.text.encode() for m in bob.history("alice")] == canaries  # they did go through

        running = _server_bytes(srv)
        assert any(name.endswith("-wal") for name in running), "WAL should exist while running"
    finally:
        await alice.close()
        await bob.close()
        srv.stop()
    stopped = _server_bytes(srv)
    pushes = capture.payloads()

    # Positive control: the search sees what the server may know.
    assert any(b"alice" in blob for blob in running.values())
    for push in pushes:
        payload = json.loads(push.body)
        assert payload["type"] == "ksmpv3_tickle"
        assert set(payload) <= {"type", "conversationId", "serverSeq"}
    _assert_blind(running, canaries)
    _assert_blind(stopped, canaries)
    _assert_blind({f"push #{i}": push.raw for i, push in enumerate(pushes)}, canaries)
    assert (srv.data_dir / "server.log").exists()
