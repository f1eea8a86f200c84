"""`sottovoce app` refuses whoever is not the page it launched (docs/app.md §Security model):
a request without the cookie, a second use of the launch token, a wrong Host, and a
WebSocket from another Origin; and every answer carries the security headers."""

from __future__ import annotations

from pathlib import Path

from tests.browser.app_helpers import AppProcess, get, websocket_headers
from tests.browser.conftest import make_accounts
from tests.integration.serverproc import ServerProcess

HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def assert_guarded(headers: dict[str, str]) -> None:
    csp = headers.get("content-security-policy", "")
    for part in ("default-src 'self'", "frame-ancestors 'none'",
                 "require-trusted-types-for 'script'", "trusted-types sottovoce"):
        assert part in csp, (part, csp)
    assert "unsafe" not in csp
    for name, value in HEADERS.items():
        assert headers.get(name) == value, (name, headers)


async def test_strangers_are_refused(server: ServerProcess, tmp_path: Path) -> None:
    dirs = await make_accounts(server, tmp_path, "rita")
    app = AppProcess(dirs["rita"]).start()
    try:
        port, launch = app.port, app.url.removeprefix(app.origin)
        # Nothing without the cookie, and a launch with a wrong token gives none.
        for path in ("/", "/static/app.js", "/ws", "/file/AAAAAAAAAAAA"):
            status, headers = get(port, path)
            assert status == 401, path
            assert_guarded(headers)
        status, headers = get(port, "/launch?t=not-the-token")
        assert (status, "set-cookie" in headers) == (403, False)

        # The token, once: a cookie (HttpOnly, SameSite=Strict) and on to the clean URL.
        status, headers = get(port, launch)
        assert status == 200 and "location" not in headers
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        session = {"Cookie": cookie.split(";")[0]}
        assert_guarded(headers)
        status, headers = get(port, launch)
        assert (status, "set-cookie" in headers) == (403, False)

        # With the cookie: the page; with a wrong Host (DNS rebinding), nothing.
        status, headers = get(port, "/", session)
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert_guarded(headers)
        assert get(port, "/", {**session, "Host": f"localhost:{port}"})[0] == 200
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", ""):
            status, headers = get(port, "/", {**session, "Host": host})
            assert status == 403, host
            assert_guarded(headers)
        assert get(port, "/static/../gate.py", session)[0] == 404

        # The WebSocket: the app's own Origin only, and the cookie too.
        assert get(port, "/ws", {**session, **websocket_headers(port)})[0] == 101
        for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", "null"):
            status, headers = get(port, "/ws", {**session, **websocket_headers(
                port, Origin=origin)})
            assert status == 403, origin
            assert_guarded(headers)
        no_origin = websocket_headers(port)
        del no_origin["Origin"]
        assert get(port, "/ws", {**session, **no_origin})[0] == 403
        assert get(port, "/ws", websocket_headers(port))[0] == 401
        # A received file needs an unlocked account; a locked one says so, plainly.
        assert get(port, "/file/AAAAAAAAAAAA", session)[0] == 404
    finally:
        app.stop()
