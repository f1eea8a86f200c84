"""Blindness (DESIGN §1, §8): canary plaintexts never reach the server in any form.

Real clients send canaries through the real server, to a peer that is
offline (stored, then replayed, with a push tickle) and online (live). Then
every byte the server left behind is searched: its SQLite files including
``-wal`` and ``-shm`` (while it runs and after it stops), its JSON log, its
stdout/stderr, and every push payload it POSTed to a webhook captured on
127.0.0.1. Each canary is searched as raw bytes, hex, and base64 at all
three alignments (standard and URL-safe alphabets).

A positive control shows the search reads real data: the public usernames,
which the server is allowed to know, are found in the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sottovoce.client import Client
from tests.integration.client_helpers import PASSPHRASE, make_account, received
from tests.integration.serverproc import ServerProcess


class _Capture(BaseHTTPRequestHandler):
    bodies: list[bytes]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.bodies.append(self.rfile.read(length))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def push_capture() -> Iterator[tuple[str, list[bytes]]]:
    """A tiny UnifiedPush-style endpoint on 127.0.0.1 recording every POST body."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    httpd.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/push", httpd.bodies  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


def encodings(plaintext: bytes) -> Iterator[bytes]:
    """Raw, hex (both cases) and base64 of ``plaintext`` wherever it sits in a larger blob."""
    yield plaintext
    yield plaintext.hex().encode()
    yield plaintext.hex().upper().encode()
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            # Prefix ``shift`` bytes, then drop the characters those bytes and the
            # padding influence: what is left appears whatever surrounds the canary.
            encoded = encode(bytes(shift) + plaintext).rstrip(b"=")
            skip = (shift * 8 + 5) // 6 if shift else 0
            yield encoded[skip:-2]


def _server_bytes(srv: ServerProcess) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(srv.data_dir.iterdir()) if p.is_file()}


def _assert_blind(where: dict[str, bytes], canaries: list[bytes]) -> None:
    for name, blob in where.items():
        for canary in canaries:
            for needle in encodings(canary):
                assert needle not in blob, f"canary found in {name}"


async def test_canaries_never_reach_storage_logs_or_push(
    tmp_path: Path, push_capture: tuple[str, list[bytes]]
) -> None:
    endpoint, pushes = push_capture
    srv = ServerProcess(tmp_path / "server").start()
    tag = secrets.token_hex(6)
    canaries = [
        f"CANARY-{tag}-{i}: the quick brown fox meets the blind relay".encode() for i in range(6)
    ]
    alice = await make_account(srv, "alice", tmp_path)
    bob = await make_account(srv, "bob", tmp_path)
    try:
        await bob.register_push(endpoint + "/bob")
        await bob.close()  # offline: the first canaries are stored and tickled
        for canary in canaries[:3]:
            await alice.wait_sent(await alice.send_text("bob", canary.decode()))
        for _ in range(100):
            if pushes:
                break
            await asyncio.sleep(0.05)
        assert pushes, "the server should have tickled bob's push endpoint"

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

    # Positive control: the search sees what the server may know.
    assert any(b"alice" in blob for blob in running.values())
    for body in pushes:
        payload = json.loads(body)
        assert payload["type"] == "ksmpv3_tickle"
        assert set(payload) <= {"type", "conversationId", "serverSeq"}
    _assert_blind(running, canaries)
    _assert_blind(stopped, canaries)
    _assert_blind({f"push #{i}": body for i, body in enumerate(pushes)}, canaries)
    assert (srv.data_dir / "server.log").exists()


@pytest.mark.parametrize("prefix", [0, 1, 2, 3, 7])
def test_the_search_finds_a_canary_however_it_is_encoded(prefix: int) -> None:
    """The needles of :func:`encodings` catch the canary inside any larger blob."""
    canary = b"CANARY-self-check: the quick brown fox"
    blob = secrets.token_bytes(prefix) + canary + secrets.token_bytes(5)
    for encoded in (
        blob,
        blob.hex().encode(),
        base64.b64encode(blob),
        base64.urlsafe_b64encode(blob),
        json.dumps({"x": base64.b64encode(blob).decode()}).encode(),
    ):
        assert any(needle in encoded for needle in encodings(canary))
