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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: Where the tests write screenshots of the main views (git-ignored).
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
_URL = re.compile(r"open \(once; it is spent on first use\): (http://127\.0\.0\.1:(\d+)/\S+)")


def need_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/services installs it)")


@dataclass
class AppProcess:
    """`sottovoce app --no-browser` for one account directory, on a free port."""

    data_dir: Path
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    port: int = 0
    lines: list[str] = field(default_factory=list)

    def start(self, timeout: float = 20.0) -> AppProcess:
        return self.spawn().wait_url(timeout)

    def spawn(self) -> AppProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sottovoce", "app", "--no-browser",
             "--data-dir", str(self.data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            stdin=subprocess.DEVNULL,
        )
        return self

    def wait_url(self, timeout: float = 20.0) -> AppProcess:
        """The URL the app prints (its first lines are read until it comes)."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        watchdog = threading.Timer(timeout, self.proc.kill)  # a hung start ends the read
        watchdog.start()
        try:
            for line in self.proc.stdout:
                self.lines.append(line)
                found = _URL.search(line)
                if found:
                    self.url, self.port = found.group(1), int(found.group(2))
                    return self
        finally:
            watchdog.cancel()
        self.stop()
        raise RuntimeError(f"the app printed no URL: {''.join(self.lines)}")

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
