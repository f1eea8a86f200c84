"""The app's HTTP side on 127.0.0.1: the page, its WebSocket and downloads.

It runs on the websockets library the client already uses: its opening handshake
is an HTTP/1.1 GET, and ``process_request`` answers plain GETs itself (one request
per connection). Only GET is spoken; anything else is refused by the parser before
it reaches this code. What the page changes travels over the WebSocket, which
checks the cookie, the Host and the Origin (app/gate.py).
"""

from __future__ import annotations

import http
import importlib.resources
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from sottovoce.app.bridge import MAX_REQUEST, UPLOAD_PIECE, Bridge
from sottovoce.app.gate import ATTACHMENT_CSP, Gate, common_headers, cookie_header, read_cookie
from sottovoce.app.page_input import PageError
from sottovoce.errors import SottovoceError

#: The files of the page (the package's static/), each with its media type.
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: What the launch answers: on to the page, without the token in the address bar.
LAUNCHED_PAGE = (
    b'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=/">'
    b'<title>sottovoce</title><p><a href="/">Open sottovoce</a></p>\n'
)
_STATIC_NAME = re.compile(r"[a-z][a-z0-9_-]*\.(?:js|css|svg)")
_FILE_PATH = re.compile(r"/file/([A-Za-z0-9_-]{8,128})")


def load_static() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, media type) of every file under static/, read once at start."""
    out: dict[str, tuple[bytes, str]] = {}
    for entry in importlib.resources.files("sottovoce.app").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return out


def _response(status: http.HTTPStatus, body: bytes = b"", media: str = "text/plain; charset=utf-8",
              extra: tuple[tuple[str, str], ...] = ()) -> Response:
    headers = Headers([("Content-Type", media), ("Content-Length", str(len(body))), *extra])
    return Response(status.value, status.phrase, headers, body)


def _refused(status: http.HTTPStatus) -> Response:
    return _response(status, f"{status.value} {status.phrase}\n".encode())


@dataclass
class WebApp:
    """The page, its socket and its downloads for one :class:`Bridge`."""

    bridge: Bridge
    gate: Gate
    static: dict[str, tuple[bytes, str]] = field(default_factory=load_static)
    #: Called once the launch token is spent (run.py removes the launcher file).
    after_launch: Callable[[], None] = lambda: None

    def __repr__(self) -> str:
        return f"WebApp({self.gate!r})"

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Answer a plain GET, refuse a stranger, or let a checked WebSocket through."""
        if not self.gate.host_ok(request.headers.get("Host")):
            return _refused(http.HTTPStatus.FORBIDDEN)
        url = urlsplit(request.path)
        if url.path == "/launch":
            return self._launch(url.query)
        if not self.gate.session_ok(read_cookie(request.headers.get("Cookie"))):
            return _refused(http.HTTPStatus.UNAUTHORIZED)
        if url.path == "/ws":
            if not self.gate.origin_ok(request.headers.get("Origin")):
                return _refused(http.HTTPStatus.FORBIDDEN)
            return None  # the handshake goes on; the socket is served by ``socket``
        if url.path == "/":
            return self._static("index.html")
        if url.path.startswith("/static/"):
            return self._static(url.path.removeprefix("/static/"))
        match = _FILE_PATH.fullmatch(url.path)
        if match is not None:
            return await self._attachment(match.group(1))
        return _refused(http.HTTPStatus.NOT_FOUND)

    def process_response(
        self, conn: ServerConnection, request: Request, response: Response
    ) -> Response:
        """The security headers on every answer, the WebSocket's included."""
        for name, value in common_headers(self.gate.port):
            if name == "Connection" and response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS:
                continue
            if name not in response.headers:
                response.headers[name] = value
        return response

    def _launch(self, query: str) -> Response:
        token = parse_qs(query).get("t", [""])[0]
        session = self.gate.launch(token)
        if session is None:
            return _refused(http.HTTPStatus.FORBIDDEN)
        self.after_launch()
        # Not a redirect: a navigation that started on another site (the launcher file,
        # another program) would carry on without the SameSite=Strict cookie; a refresh
        # from this page is same-site, so the cookie goes with it.
        return _response(http.HTTPStatus.OK, LAUNCHED_PAGE, STATIC_TYPES[".html"], extra=(
            ("Set-Cookie", cookie_header(session)),))

    def _static(self, name: str) -> Response:
        if name != "index.html" and _STATIC_NAME.fullmatch(name) is None:
            return _refused(http.HTTPStatus.NOT_FOUND)
        found = self.static.get(name)
        if found is None:
            return _refused(http.HTTPStatus.NOT_FOUND)
        return _response(http.HTTPStatus.OK, found[0], found[1])

    async def _attachment(self, message_id: str) -> Response:
        """A file as a download only: never shown inline, sandboxed if it were."""
        try:
            name, _, data = await self.bridge.attachment(message_id)
        except (PageError, SottovoceError) as exc:
            return _response(http.HTTPStatus.NOT_FOUND, f"{exc}\n".encode())
        ascii_name = re.sub(r'[^A-Za-z0-9._ -]', "_", name) or "file"
        return _response(http.HTTPStatus.OK, data, "application/octet-stream", extra=(
            ("Content-Disposition",
             f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"),
            ("Content-Security-Policy", ATTACHMENT_CSP),
        ))

    async def socket(self, ws: ServerConnection) -> None:
        await self.bridge.serve(ws)

    async def start(self, port: int = 0) -> Server:
        """Listen on 127.0.0.1 (``port`` 0: a free one, then written into the gate)."""
        server = await serve(
            self.socket, "127.0.0.1", port, process_request=self.process_request,
            process_response=self.process_response, server_header=None,
            max_size=max(UPLOAD_PIECE, MAX_REQUEST) + 1024,
            logger=_quiet_logger(),
        )
        self.gate.port = server.sockets[0].getsockname()[1]
        return server


def _quiet_logger() -> logging.Logger:
    """The library's logger for the app's socket: its handshake lines hold request paths
    (a launch token), so only warnings and worse, and no path."""
    logger = logging.getLogger("sottovoce.app.http")
    logger.setLevel(logging.ERROR)
    return logger
