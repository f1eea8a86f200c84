"""A tiny UnifiedPush-style webhook that records every POST body (for the audit only).

The kit registers ``http://HOST:PORT/push/<random>`` as a canary device's
push endpoint; whatever the server tickles it with is kept in memory and
scanned like any other source. It runs in a thread so it keeps answering
while the kit's event loop drives the clients.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

#: A tickle is tiny; anything bigger is read only this far (and still scanned).
MAX_CAPTURED_BODY = 64 * 1024
#: At most this many payloads are kept (a misbehaving server must not fill memory).
MAX_CAPTURED_PAYLOADS = 10_000


@dataclass(frozen=True, slots=True)
class CapturedPush:
    path: str
    headers: bytes  # as received, one "Name: value" a line
    body: bytes

    @property
    def raw(self) -> bytes:
        """Everything the server sent (headers and body), for the search."""
        return self.headers + b"\n" + self.body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    bodies: list[CapturedPush]
    arrived: threading.Event


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = self.rfile.read(max(0, min(length, MAX_CAPTURED_BODY)))
        if len(self.server.bodies) < MAX_CAPTURED_PAYLOADS:
            # Headers are part of what the server sent: keep them with the body.
            head = "".join(f"{k}: {v}\n" for k, v in self.headers.items())
            self.server.bodies.append(CapturedPush(self.path, head.encode("latin-1"), body))
        self.server.arrived.set()
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


class PushCapture:
    """``with PushCapture() as cap: cap.endpoint(); cap.payloads()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._httpd = _Server((host, port), _Handler)
        self._httpd.bodies = []
        self._httpd.arrived = threading.Event()
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._token = secrets.token_urlsafe(8)
        self.host = host

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def endpoint(self, name: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/push/{self._token}/{name}"

    def payloads(self) -> list[CapturedPush]:
        return list(self._httpd.bodies)

    def wait(self, timeout: float) -> bool:
        """Block until at least one payload has arrived (or ``timeout``)."""
        return self._httpd.arrived.wait(timeout)

    def start(self) -> PushCapture:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> PushCapture:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
