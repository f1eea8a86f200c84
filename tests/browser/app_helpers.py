"""Helpers for the browser tests: `sottovoce app` as a subprocess, Debian's Chromium
through Playwright (never a browser of Playwright's own), raw HTTP for the refusals."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: Where the tests write screenshots of the main views (git-ignored).
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
#: Seconds the app has to print its URL: generous, as a loaded machine starts it slowly.
START_TIMEOUT = 60.0
#: Lines of the app's output kept for failure messages.
KEPT_LINES = 400
_URL = re.compile(r"open \(once; it is spent on first use\): (http://127\.0\.0\.1:(\d+)/\S+)")


def need_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/services installs it)")


@dataclass
class AppProcess:
    """`sottovoce app --no-browser` for one account directory, on a free port.

    A thread reads the app's output to its end, so that the app never blocks on a full
    pipe once the URL is found; the last lines are kept for failure messages."""

    data_dir: Path
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    port: int = 0
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=KEPT_LINES))
    _url_or_end: threading.Event = field(default_factory=threading.Event, repr=False)
    _reader: threading.Thread | None = field(default=None, repr=False)

    def start(self, timeout: float = START_TIMEOUT) -> AppProcess:
        return self.spawn().wait_url(timeout)

    def options(self) -> list[str]:
        """The command's options besides ``--no-browser`` and ``--data-dir``."""
        return []

    def spawn(self) -> AppProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sottovoce", "app", "--no-browser", *self.options(),
             "--data-dir", str(self.data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            stdin=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._drain, name="app-output", daemon=True)
        self._reader.start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.lines.append(line)
                found = None if self.url else _URL.search(line)
                if found:
                    self.port, self.url = int(found.group(2)), found.group(1)
                    self._url_or_end.set()
        finally:
            self._url_or_end.set()  # the output ended: nobody waits for a URL any more

    def wait_url(self, timeout: float = START_TIMEOUT) -> AppProcess:
        """The URL the app prints, once it has printed it (the app is killed if it has
        not within ``timeout`` seconds, or has ended without)."""
        if self._url_or_end.wait(timeout) and self.url:
            return self
        self.stop()
        raise RuntimeError(f"the app printed no URL within {timeout} s: {self.output()}")

    def output(self) -> str:
        """The app's last lines of output (all of them, once it has ended)."""
        return "".join(self.lines)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(10)  # the pipe's end: every last line is kept


def get(port: int, path: str, headers: dict[str, str] | None = None,
        ) -> tuple[int, dict[str, str]]:
    """A raw GET to the app (the Host header as given, else the right one)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    sent = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    for name, value in sent.items():
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}


def websocket_headers(port: int, **extra: str) -> dict[str, str]:
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": f"http://127.0.0.1:{port}",
            **extra}


@contextlib.asynccontextmanager
async def chromium(*profiles: Path) -> AsyncIterator[list[Any]]:
    """One persistent Chromium context per profile dir (scanned afterwards), started
    together under one Playwright driver."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        contexts = await asyncio.gather(*(pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True,
            accept_downloads=True, args=["--no-sandbox", "--disable-gpu"],
            viewport={"width": 1100, "height": 760},
        ) for profile in profiles))
        try:
            yield list(contexts)
        finally:
            for context in contexts:
                await context.close()


def files_holding(root: Path, needles: list[str]) -> list[str]:
    """Files under ``root`` whose bytes hold one of ``needles`` (UTF-8 or UTF-16)."""
    forms = [f for n in needles for f in (n.encode(), n.encode("utf-16-le"))]
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                if any(f in data for f in forms):
                    found.append(str(path.relative_to(root)))
    return found
