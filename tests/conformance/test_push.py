"""Push: an offline device's webhook gets exactly {"type":"ksmpv3_tickle"}
(docs/protocol.md §Push)."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from tests.conformance.rawclient import Device, logged_in, registered


class _Capture(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.bodies.append(self.rfile.read(length))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[bytes]]]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    srv.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/push/abc", srv.bodies  # type: ignore[attr-defined]
    srv.shutdown()


async def test_push_tickle_to_offline_device_is_exactly_the_tickle(
    url: str, webhook: tuple[str, list[bytes]]
) -> None:
    endpoint, bodies = webhook
    bob = Device.new()
    b = await registered(url, bob)
    reply = await b.request("sottovoce.push.register", {"endpoint": endpoint})
    assert reply["event"] == "sottovoce.push.registered"
    await b.close()
    a = await registered(url)
    canary = b"PUSH-CANARY-CIPHERTEXT"
    ack = await a.send_message(bob.username, [(bob.username, "d1", canary)])
    assert ack["event"] == "ksmpv3.send.ack"
    for _ in range(100):
        if bodies:
            break
        await asyncio.sleep(0.05)
    assert bodies, "no tickle arrived"
    assert json.loads(bodies[0]) == {"type": "ksmpv3_tickle"}
    # Online devices are not tickled.
    b2 = await logged_in(url, bob)
    await b2.resume()
    count = len(bodies)
    await a.send_message(bob.username, [(bob.username, "d1", b"x")])
    await b2.expect("ksmpv3.inbox.frame")
    await asyncio.sleep(0.2)
    assert len(bodies) == count
