"""Two browsers and a CLI account chat through `sottovoce app` and the real server.

One run covers the page end to end: unlock (a wrong passphrase first), a message
request accepted, send, react, edit, delete, a reply, a file sent by the picker and
fetched as an attachment, a room created with a member invited, and a CLI account
writing both ways. Hostile text and file names stay text (no script runs, no dialog
opens), every response carries the CSP, and afterwards neither Chromium profile holds
any canary text. Screenshots of the main views go to tests/browser/artifacts/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from sottovoce.app.run import write_launcher
from tests.browser.app_helpers import ARTIFACTS, AppProcess, chromium, files_holding, need_chromium
from tests.browser.conftest import PASSPHRASE, make_accounts
from tests.integration.serverproc import ServerProcess

WAIT_MS = 10_000
HOSTILE = [
    '<img src=x onerror="window.__pwned=1">',
    '<svg onload="window.__pwned=2"></svg>',
    '<a href="javascript:window.__pwned=3">click</a> javascript:alert(1)',
    "<script>window.__pwned=4</script><style>body{display:none}</style>",
]
CANARIES = {
    "first": "canary-first-7d1c hello bob",
    "edited": "canary-edited-93b0 hello again",
    "reply": "canary-reply-5e2f",
    "room": "canary-room-c4a8 hi team",
    "cli": "canary-cli-0a6d from carol",
    "cli_back": "canary-cli-back-88e1 hi carol",
    "file": "canary-file-body-41f9",
}
FILE_NAME = '<svg onload=alert(1)>report.html'


class Watch:
    """What the page did that it must not: dialogs, scripts run, responses without CSP."""

    def __init__(self) -> None:
        self.dialogs: list[str] = []
        self.unguarded: list[str] = []
        self.responses = 0

    def attach(self, page: Any, origin: str) -> None:
        async def on_dialog(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            await dialog.dismiss()

        def on_response(response: Any) -> None:
            if response.url.startswith(origin):
                self.responses += 1
                if "frame-ancestors 'none'" not in response.headers.get(
                        "content-security-policy", ""):
                    self.unguarded.append(response.url)

        page.on("dialog", on_dialog)
        page.on("response", on_response)


async def open_app(context: Any, app: AppProcess, watch: Watch, launcher: Path | None = None,
                   ) -> Any:
    """The page, from the launch URL or (``launcher``) from the file the app starts a
    browser on; either way it ends on the clean URL."""
    page = await context.new_page()
    watch.attach(page, app.origin)
    await page.goto(app.url if launcher is None else write_launcher(launcher, app.url).as_uri())
    await page.wait_for_url(app.origin + "/")
    assert page.url == app.origin + "/", "the launch URL is replaced by a clean one"
    return page


async def unlock(page: Any, passphrase: str = PASSPHRASE) -> None:
    await page.fill("#passphrase", passphrase)
    await page.press("#passphrase", "Enter")


async def send(page: Any, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


def message(page: Any, text: str) -> Any:
    return page.locator("#messages li", has_text=text)


async def expect_text(locator: Any, text: str) -> None:
    from playwright.async_api import expect

    await expect(locator).to_contain_text(text, timeout=WAIT_MS)


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def cli_start(account: Path, *args: str) -> subprocess.Popen[str]:
    """A `sottovoce` command of the CLI account, running while the browsers go on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env["SOTTOVOCE_PASSPHRASE"] = PASSPHRASE
    return subprocess.Popen(
        [sys.executable, "-m", "sottovoce", *args, "--data-dir", str(account)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        stdin=subprocess.DEVNULL,
    )


def cli_done(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def cli(account: Path, *args: str) -> str:
    return cli_done(cli_start(account, *args))


async def test_two_browsers_and_a_cli_account_chat(server: ServerProcess, tmp_path: Path) -> None:
    need_chromium()
    from playwright.async_api import expect

    dirs = await make_accounts(server, tmp_path, "alice", "bob", "carol")
    apps = {n: AppProcess(dirs[n]).spawn() for n in ("alice", "bob")}  # both start at once
    for app in apps.values():
        app.wait_url()
    watch = Watch()
    profiles = {n: tmp_path / f"profile-{n}" for n in apps}
    try:
        async with chromium(profiles["alice"], profiles["bob"]) as (ctx_a, ctx_b):
            (tmp_path / "launcher").mkdir()
            alice = await open_app(ctx_a, apps["alice"], watch, tmp_path / "launcher")
            bob = await open_app(ctx_b, apps["bob"], watch)
            await shot(alice, "unlock")
            await unlock(alice, "not the passphrase")
            await expect(alice.locator("#unlock-error")).to_have_text(
                "wrong passphrase", timeout=WAIT_MS)
            await unlock(alice)
            await unlock(bob)
            await expect(alice.locator("#me")).to_have_text("alice", timeout=WAIT_MS)
            carol_sends = cli_start(dirs["carol"], "send", "alice", CANARIES["cli"])

            # alice writes first; bob sees a request, accepts it and reads.
            await alice.fill("#new-chat", "bob")
            await alice.press("#new-chat", "Enter")
            await send(alice, CANARIES["first"])
            for text in HOSTILE:
                await send(alice, text)
            await expect_text(bob.locator("#requests"), "alice wants to chat")
            await bob.get_by_role("button", name="Accept the request from alice").click()
            await bob.locator("#conversations button", has_text="alice").click()
            await expect_text(bob.locator("#messages"), CANARIES["first"])
            await expect_text(bob.locator("#messages"), HOSTILE[-1])
            await shot(bob, "chat")

            # bob reacts; alice sees it, edits her message; then deletes a hostile one.
            await message(bob, CANARIES["first"]).get_by_role("button", name="React 👍").click()
            await expect_text(message(alice, CANARIES["first"]), "👍 1")
            await message(alice, CANARIES["first"]).get_by_role(
                "button", name="Edit this message").click()
            await send(alice, CANARIES["edited"])
            await expect_text(message(bob, CANARIES["edited"]), "edited")
            await message(alice, "onerror").get_by_role(
                "button", name="Delete for everyone").click()
            await expect(message(bob, "onerror")).to_have_count(0, timeout=WAIT_MS)
            await expect_text(bob.locator("#messages"), "(deleted)")
            reply = message(bob, CANARIES["edited"]).get_by_role(
                "button", name="Reply to this message")
            await reply.click()
            await bob.press("#text", "Escape")  # by keyboard: the reply is dropped
            await expect(bob.locator("#composing")).to_be_hidden()
            await reply.click()
            await expect_text(bob.locator("#composing"), "Replying to")
            await send(bob, CANARIES["reply"])
            await expect_text(message(alice, CANARIES["reply"]), CANARIES["edited"])
            mine = alice.locator("#messages li.mine", has_text=CANARIES["edited"])
            await expect_text(mine, "read")  # bob's read receipt

            # A disappearing-messages timer set in one page shows in the other.
            await alice.select_option("#timer", "1h")
            await expect_text(bob.locator("#messages li.notice").last, "disappearing")
            await expect(bob.locator("#timer")).to_have_value("1h", timeout=WAIT_MS)

            # A file by the picker, with a hostile name; bob gets it as an attachment only.
            await alice.set_input_files("#file", files=[{
                "name": FILE_NAME, "mimeType": "text/html",
                "buffer": f"<script>alert(1)</script>{CANARIES['file']}".encode()}])
            link = bob.get_by_role("link", name="report.html")
            await expect(link).to_have_count(1, timeout=WAIT_MS)
            async with bob.expect_download() as info:
                await link.click()
            download = await info.value
            assert download.suggested_filename.endswith("report.html")
            assert CANARIES["file"] in Path(await download.path()).read_text()
            href = await link.get_attribute("href")
            fetched = await bob.request.get(apps["bob"].origin + href)
            assert fetched.headers["content-disposition"].startswith("attachment;")
            assert fetched.headers["content-security-policy"].startswith("sandbox")
            assert fetched.headers["content-type"] == "application/octet-stream"

            # Nothing hostile ran or was parsed: no dialog, no element, the text as text.
            for page in (alice, bob):
                assert await page.evaluate("window.__pwned") is None
                assert await page.locator(
                    "#messages img, #messages svg, #messages script, #messages style, "
                    "#messages a[href^='javascript']").count() == 0
            await expect_text(bob.locator("#messages"), "javascript:alert(1)")
            await expect_text(bob.locator("#messages"), FILE_NAME)

            # A room: alice creates it and invites bob, who sees it with its members.
            await alice.fill("#new-room", "team")
            await alice.press("#new-room", "Enter")
            await expect_text(alice.locator("#chat-title"), "# team")
            await alice.fill("#invite", "bob")
            await alice.press("#invite", "Enter")
            await expect_text(alice.locator("#members"), "bob — member")
            await expect_text(alice.locator("#members"), "alice (you) — admin")
            await send(alice, CANARIES["room"])
            team = bob.locator("#conversations button", has_text="# team")
            await expect(team.locator(".badge")).to_have_attribute(
                "aria-label", re.compile(r"^[1-9]\d* unread$"), timeout=WAIT_MS)
            await team.click()
            await expect_text(bob.locator("#messages"), CANARIES["room"])
            await expect_text(bob.locator("#members"), "alice — admin")
            await expect(team.locator(".badge")).to_have_count(0, timeout=WAIT_MS)
            await shot(bob, "room")
            await bob.get_by_role("button", name="Leave room").click()
            await expect(alice.locator("#members li")).to_have_count(1, timeout=WAIT_MS)
            await expect_text(alice.locator("#members"), "alice (you) — admin")
            await team.click()  # a room left keeps its history here, without members
            await expect_text(bob.locator("#messages"), CANARIES["room"])
            await expect(bob.locator("#members li")).to_have_count(0)
            await expect(bob.locator("#chat-error")).to_have_text("")
            await team.click()  # a room left keeps its history here, without members
            await expect_text(bob.locator("#messages"), CANARIES["room"])
            await expect(bob.locator("#members li")).to_have_count(0)
            await expect(bob.locator("#chat-error")).to_have_text("")

            # A CLI account writes to alice's browser, and reads her answer.
            cli_done(carol_sends)  # started when alice unlocked
            await alice.get_by_role("button", name="Accept the request from carol").click()
            await alice.locator("#conversations button", has_text="carol").click()
            await expect_text(alice.locator("#messages"), CANARIES["cli"])
            await send(alice, CANARIES["cli_back"])
            await expect_text(message(alice, CANARIES["cli_back"]), "✓")
            assert CANARIES["cli_back"] in cli(dirs["carol"], "history", "alice")

            # The server goes away: the page says so while the SDK retries, then recovers.
            server.stop()
            await expect_text(alice.locator("#status"), "Server unreachable")
            server.start()
            await expect(alice.locator("#status")).to_have_text("", timeout=20_000)

            await expect_text(alice.locator("#conversations"), "# team")
            await shot(alice, "conversations")
            await alice.fill("#search", "CANARY-cli-back")  # any case
            await alice.press("#search", "Enter")
            hit = alice.locator("#search-results button", has_text=CANARIES["cli_back"])
            await hit.click()
            await expect_text(alice.locator("#chat-title"), "carol")
            # Light by default, dark where the system prefers it.
            background = "getComputedStyle(document.body).backgroundColor"
            assert await alice.evaluate(background) == "rgb(255, 255, 255)"
            await alice.emulate_media(color_scheme="dark")
            assert await alice.evaluate(background) == "rgb(22, 23, 26)"
            await shot(alice, "chat-dark")
            await alice.emulate_media(color_scheme="light")
            # At a phone's width one pane at a time: the chat, back to the list, a chat.
            await alice.set_viewport_size({"width": 390, "height": 800})
            await expect(alice.locator("#list-pane")).to_be_hidden()
            await alice.locator("#back").click()
            await expect(alice.locator("#chat-pane")).to_be_hidden()
            await alice.locator("#conversations button", has_text="bob").click()
            await expect(alice.locator("#list-pane")).to_be_hidden()
            await expect_text(alice.locator("#messages"), CANARIES["reply"])
            await shot(alice, "phone-chat")
    finally:
        for app in apps.values():
            app.stop()

    assert watch.dialogs == []
    assert watch.responses >= 8 and watch.unguarded == []
    for name, profile in profiles.items():
        assert files_holding(profile, [*CANARIES.values(), PASSPHRASE]) == [], name
