"""One run of the app: listen, print the launch URL, open the browser, stop on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import webbrowser
from collections.abc import Callable
from pathlib import Path

from sottovoce.app.bridge import Bridge
from sottovoce.app.gate import COOKIE, Gate
from sottovoce.app.web import WebApp
from sottovoce.errors import UsageError


def open_browser(url: str) -> bool:
    """The default browser on ``url``, where there is one (False: none to open)."""
    try:
        return webbrowser.open(url, new=1)
    except webbrowser.Error:
        return False


async def run_app(
    data_dir: Path, *, port: int = 0, browser: bool = True, check: bool = False,
    say: Callable[[str], None] = print, loopback: bool = False, relay_only: bool = False,
) -> None:
    """Serve the app for the account in ``data_dir`` until SIGINT or SIGTERM.

    ``check``: start, go through the launch and fetch the page once over loopback
    (the URL printed is then spent), and stop; a failure raises ``UsageError``.
    """
    bridge = Bridge(data_dir, calls_loopback=loopback, calls_relay_only=relay_only)
    if not check:
        bridge.prewarm()  # before the URL is out: the page's first requests wait on nothing
    web = WebApp(bridge, Gate(port))
    try:
        server = await web.start(port)
    except OSError as exc:
        raise UsageError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    try:
        url = web.gate.launch_url()
        if check:
            say(await asyncio.to_thread(self_check, web.gate))
            return
        say(f"sottovoce app for {data_dir} on http://127.0.0.1:{web.gate.port}/")
        say(f"open (once; it is spent on first use): {url}")
        if browser:
            launcher = write_launcher(data_dir, url)
            web.after_launch = lambda: launcher.unlink(missing_ok=True)
            if not await asyncio.to_thread(open_browser, launcher.as_uri()):
                launcher.unlink(missing_ok=True)
                say("no browser to open here: open the URL above in one")
        say("stop with Ctrl-C")
        await _until_stopped()
    finally:
        server.close()
        await server.wait_closed()
        await bridge.close()
        (data_dir / LAUNCHER).unlink(missing_ok=True)


#: The page the browser is opened on, in the account directory (mode 0600).
LAUNCHER = "app-launch.html"


def write_launcher(data_dir: Path, url: str) -> Path:
    """A page only this user can read that sends the browser on to ``url``.

    The browser is started with this file's path, not with the URL: a command
    line is visible to every user of the machine (``ps``), and the first to use
    the launch token gets the session. The file goes once the token is spent.
    """
    path = data_dir / LAUNCHER
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(
            '<!doctype html><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="0;url={url}">'
            f'<title>sottovoce</title><p><a href="{url}">Open sottovoce</a></p>\n'
        )
    return path


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def _get(port: int, path: str, cookie: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Cookie": f"{COOKIE}={cookie}"} if cookie else {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def self_check(gate: Gate) -> str:
    """Launch, page, a spent token and a missing cookie, each answered as it must be."""
    path = gate.launch_url().removeprefix(f"http://127.0.0.1:{gate.port}")
    launched = _get(gate.port, path)
    cookie = (launched.getheader("Set-Cookie") or "").partition(";")[0].partition("=")[2]
    page = _get(gate.port, "/", cookie)
    checks = {
        "the launch gives a cookie": launched.status == 200 and bool(cookie),
        "the page needs it": _get(gate.port, "/").status == 401,
        "the page is served with its CSP": page.status == 200
        and "frame-ancestors 'none'" in (page.getheader("Content-Security-Policy") or ""),
        "a second launch is refused": _get(gate.port, path).status == 403,
    }
    failed = [what for what, ok in checks.items() if not ok]
    if failed:
        raise UsageError(f"app check failed: {'; '.join(failed)} did not hold")
    return f"app check: ok ({', '.join(checks)})"
