"""`sottovoce app`'s gate and bridge without a browser: the launch token is good once,
only the app's own Host and Origin pass, every header the docs promise is there, and
the page's requests are checked before they reach the SDK (docs/app.md §Security model)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from sottovoce.app.bridge import Bridge
from sottovoce.app.gate import COOKIE, Gate, common_headers, content_security_policy, read_cookie
from sottovoce.app.web import load_static
from sottovoce.client import WrongPassphrase


def test_the_launch_token_gives_one_session_once() -> None:
    gate = Gate(8900)
    assert gate.launch_url() == f"http://127.0.0.1:8900/launch?t={gate.launch_token}"
    assert len(gate.launch_token) >= 43
    assert gate.launch("wrong") is None
    session = gate.launch(gate.launch_token)
    assert session is not None and session != gate.launch_token
    assert gate.launch(gate.launch_token) is None  # spent
    assert gate.session_ok(session)
    assert not gate.session_ok(None) and not gate.session_ok("") and not gate.session_ok("x")
    assert gate.launch_token not in repr(gate) and session not in repr(gate)
    assert Gate(8900).launch_token != gate.launch_token


def test_only_the_apps_own_host_and_origin_pass() -> None:
    gate = Gate(8900)
    assert gate.host_ok("127.0.0.1:8900") and gate.host_ok("localhost:8900")
    for host in (None, "", "127.0.0.1", "127.0.0.1:8901", "evil.example:8900",
                 "LOCALHOST:8900", "[::1]:8900", "127.0.0.1:8900.evil.example"):
        assert not gate.host_ok(host), host
    assert gate.origin_ok("http://127.0.0.1:8900") and gate.origin_ok("http://localhost:8900")
    for origin in (None, "null", "http://127.0.0.1:8901", "https://127.0.0.1:8900",
                   "http://evil.example", "http://127.0.0.1:8900/"):
        assert not gate.origin_ok(origin), origin


def test_the_cookie_is_read_by_its_exact_name() -> None:
    assert read_cookie(f"a=1; {COOKIE}=abc; b=2") == "abc"
    assert read_cookie(f"x{COOKIE}=abc") is None
    assert read_cookie(None) is None and read_cookie("") is None


def test_every_response_carries_the_promised_headers() -> None:
    headers = dict(common_headers(8900))
    csp = headers["Content-Security-Policy"]
    assert csp == content_security_policy(8900)
    for part in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                 "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'",
                 "require-trusted-types-for 'script'", "trusted-types sottovoce",
                 "connect-src 'self' ws://127.0.0.1:8900 ws://localhost:8900"):
        assert part in csp
    assert "unsafe" not in csp and "*" not in csp and "data:" not in csp
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_the_page_has_no_inline_code_and_no_html_sinks() -> None:
    static = load_static()
    assert {"index.html", "app.js", "dom.js", "rpc.js", "style.css"} <= set(static)
    html = static["index.html"][0].decode()
    assert "<script>" not in html and "<style" not in html and " on" not in html.lower()
    assert "style=" not in html and "http://" not in html and "https://" not in html
    for name, (body, _) in static.items():
        # the code, not its comments (which name the sinks it never uses)
        text = "\n".join(line for line in body.decode().splitlines()
                         if not line.lstrip().startswith(("//", "/*")))
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "eval(", "new Function", "localStorage", "sessionStorage",
                     "indexedDB", "caches."):
            assert sink not in text, (name, sink)


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))


async def ask(bridge: Bridge, request: object) -> dict[str, Any]:
    frame = request if isinstance(request, str) else json.dumps(request)
    return await bridge._answer(frame, FakeSocket(), {})  # type: ignore[arg-type]


async def test_requests_are_checked_and_errors_are_plain(tmp_path: Path) -> None:
    tries: list[str] = []

    def opener(_: Path, passphrase: str) -> Any:
        tries.append(passphrase)
        raise WrongPassphrase("wrong passphrase")

    bridge = Bridge(tmp_path, opener=opener)
    assert (await ask(bridge, "not json"))["error"] == "not JSON"
    assert (await ask(bridge, [1]))["error"] == "not a request"
    assert (await ask(bridge, {"op": "list"}))["error"] == "a request needs a numeric id"
    assert (await ask(bridge, {"id": 1, "op": "nope"}))["error"] == "unknown request"
    locked = await ask(bridge, {"id": 2, "op": "list"})
    assert locked == {"id": 2, "ok": False, "error": "locked: unlock with the passphrase first"}
    assert (await ask(bridge, {"id": 3, "op": "unlock", "passphrase": 7}))["ok"] is False
    assert tries == []
    wrong = await ask(bridge, {"id": 4, "op": "unlock", "passphrase": "secret words 1"})
    assert wrong == {"id": 4, "ok": False, "error": "wrong passphrase"}
    assert tries == ["secret words 1"]
    assert (await ask(bridge, {"id": 5, "op": "status"}))["result"] == {"unlocked": False}


@pytest.fixture(autouse=True)
def _no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sottovoce.app.bridge._WRONG_PASSPHRASE_PAUSE_S", 0.0)


def test_the_app_imports_the_sdk_but_not_the_server_or_the_cli() -> None:
    root = Path(__file__).resolve().parents[2] / "src" / "sottovoce" / "app"
    imported = set()
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    assert any(m.startswith("sottovoce.client") for m in imported)
    wrong = sorted(m for m in imported if m.split(".")[:2] in (
        ["sottovoce", "server"], ["sottovoce", "cli"]))
    assert wrong == []


async def test_the_app_prints_its_url_and_opens_the_browser_on_a_private_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The browser is started on a file only this user can read (a command line is
    visible to every user), which goes once the token is spent or the app stops."""
    import asyncio
    import stat

    from sottovoce.app import run

    opened: list[str] = []
    lines: list[str] = []
    answer = [True]

    def browser(url: str) -> bool:
        opened.append(url)
        return answer[0]

    monkeypatch.setattr(run, "open_browser", browser)
    launcher = tmp_path / run.LAUNCHER

    async def started() -> tuple[asyncio.Task[None], str]:
        lines.clear()
        task = asyncio.create_task(run.run_app(tmp_path, say=lines.append))
        while not any("Ctrl-C" in line for line in lines):
            await asyncio.sleep(0.01)
        url = next(line.split(": ", 1)[1] for line in lines if line.startswith("open (once"))
        assert url.startswith("http://127.0.0.1:") and "/launch?t=" in url
        return task, url

    task, url = await started()
    assert opened == [launcher.as_uri()]
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o600
    assert f'content="0;url={url}"' in launcher.read_text()
    assert url not in " ".join(opened)
    port = int(url.split(":")[2].split("/")[0])
    path = url.split(str(port), 1)[1]
    launched = await asyncio.to_thread(run._get, port, path)
    assert launched.status == 200 and not launcher.exists()  # spent: the launcher goes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    answer[0] = False
    task, url = await started()
    assert "no browser to open here: open the URL above in one" in lines
    assert not launcher.exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    lines.clear()
    await run.run_app(tmp_path, check=True, browser=True, say=lines.append)
    assert lines == [
        "app check: ok (the launch gives a cookie, the page needs it, the page is served "
        "with its CSP, a second launch is refused)"]
    assert len(opened) == 2, "--check opens no browser"


def test_a_wrong_port_or_a_missing_account_is_a_plain_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    def app(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sottovoce", "app", "--check", *args],
                              capture_output=True, text=True, timeout=60, check=False)

    for port in ("65536",):
        done = app("--port", port, "--data-dir", str(tmp_path))
        assert done.returncode == 2 and "invalid port value" in done.stderr, done.stderr
    done = app("--data-dir", str(tmp_path / "nobody"))
    assert done.returncode == 1 and "no account in" in done.stderr
    assert "Traceback" not in done.stderr


def test_plaintext_a_crashed_run_left_of_a_file_being_sent_goes_at_start(
    tmp_path: Path,
) -> None:
    left = tmp_path / "app-upload" / "0011223344556677" / "photo.jpg"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"plaintext")
    Bridge(tmp_path)
    assert not (tmp_path / "app-upload").exists()


def test_app_help_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.help_promises import assert_help_says

    assert_help_says(["app", "--help"], [
        "on 127.0.0.1 (a free port unless --port)",
        "one-time launch token", "session cookie", "asks for the passphrase",
        "Runs until Ctrl-C", "--check", "--no-browser",
    ], capsys)
