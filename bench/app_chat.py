"""A 10,000-message chat in the browser: the page's long tasks while it opens and scrolls.

    python bench/app_chat.py [--rounds R] [--messages N] [--cpu-slowdown X]

Set-up (not timed): a server on 127.0.0.1 and lena's account with N messages to
otto written straight into her store (as tests/browser/test_app_views.py does:
sending them would take minutes). Each round starts a fresh `sottovoce app
--no-browser` and a fresh headless Chromium profile (Debian's /usr/bin/chromium),
unlocks, and watches the page's tasks with a PerformanceObserver for "longtask"
entries (every task of the page's main thread over 50 ms, with its duration):

* open:   from the click on the chat until its newest message is shown, and
          300 ms more;
* scroll: five PageUp presses, then jumps to the top until the first message is
          shown (each fetches an older page of 200 over the WebSocket), then a jump
          to the bottom, and 300 ms more -- the path the test takes.

Per round: the number of long tasks and the longest, in each phase (0 when there
was none over 50 ms). The target is none over 50 ms. ``--cpu-slowdown X`` has
Chromium run the page X times slower (DevTools' CPU throttling,
``Emulation.setCPUThrottlingRate``, set after the unlock), so that tasks a quiet
machine runs in under 50 ms show, and two trees can be told apart without
waiting for a loaded machine. Long tasks are wall clock on
the page's main thread: a renderer descheduled by a busy machine makes a task
long, so the load average is printed before and after; compare trees in the same
run (``PYTHONPATH=/tmp/old/src`` runs the app of another source tree, the page
included, under this same script), alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.app_helpers import AppProcess, chromium  # noqa: E402
from tests.browser.conftest import PASSPHRASE, make_accounts  # noqa: E402
from tests.browser.test_app_chat import WAIT_MS, Watch, expect_text, open_app, unlock  # noqa: E402
from tests.integration.serverproc import ServerProcess  # noqa: E402

from sottovoce.client import Client  # noqa: E402
from sottovoce.client.store import DeliveryStatus  # noqa: E402

OBSERVE = """() => {
  window.__longtasks = [];
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__longtasks.push(Math.round(e.duration));
  }).observe({ type: "longtask" });
}"""
TAKE = "window.__longtasks.splice(0)"


def fill(data_dir: Path, total: int) -> None:
    client = Client.load(data_dir, PASSPHRASE)
    store = client._store
    with store.transaction():
        for i in range(total):
            store.add_message(
                message_id=f"long-{i:05d}-{'x' * 12}", peer="otto", sender="lena",
                sender_device=client.device_id, outgoing=True,
                status=DeliveryStatus.DELIVERED, text=f"long chat message {i:05d}"
                + (" with a second line\nof text" if i % 7 == 0 else ""),
                client_created_ms=1_700_000_000_000 + i * 1000,
                local_at_ms=1_700_000_000_000 + i * 1000)
    asyncio.run(client.close())


async def one_round(data_dir: Path, profile: Path, total: int,
                    slowdown: float) -> tuple[list[int], list[int]]:
    from playwright.async_api import expect

    app = AppProcess(data_dir).start()
    try:
        async with chromium(profile) as (ctx,):
            page = await open_app(ctx, app, Watch())
            await unlock(page)
            chat = page.locator("#conversations button", has_text="otto")
            await expect(chat).to_have_count(1, timeout=WAIT_MS)
            if slowdown > 1:
                cdp = await ctx.new_cdp_session(page)
                await cdp.send("Emulation.setCPUThrottlingRate", {"rate": slowdown})
            await page.evaluate(OBSERVE)
            await chat.click()
            messages = page.locator("#messages")
            await expect_text(messages, f"long chat message {total - 1:05d}")
            await page.wait_for_timeout(300)
            opened = await page.evaluate(TAKE)
            await messages.focus()
            for _ in range(5):
                await page.keyboard.press("PageUp")
            first = page.locator("#messages li.msg", has_text="long chat message 00000")
            for _ in range(400):
                if await first.count():
                    break
                await messages.evaluate("el => { el.scrollTop = 0; }")
                await page.wait_for_timeout(60)
            await expect(first).to_have_count(1)
            await messages.evaluate("el => { el.scrollTop = el.scrollHeight; }")
            await expect_text(messages, f"long chat message {total - 1:05d}")
            await page.wait_for_timeout(300)
            scrolled = await page.evaluate(TAKE)
    finally:
        app.stop()
    return opened, scrolled


async def main(rounds: int, total: int, slowdown: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-app-chat-") as tmp:
        root = Path(tmp)
        server = ServerProcess(root / "server").start()
        try:
            dirs = await make_accounts(server, root, "lena", "otto")
            await asyncio.to_thread(fill, dirs["lena"], total)
            rows = []
            for r in range(rounds):
                rows.append(await one_round(dirs["lena"], root / f"profile-{r}", total,
                                            slowdown))
        finally:
            server.stop()

    print(f"load average before/after: {LOAD0} / {os.getloadavg()}")
    print(f"{total:,} messages, CPU slowdown {slowdown:g}x; long tasks (> 50 ms) of the "
          "page, ms, per round")
    print("round  open: count  longest  tasks          scroll: count  longest  tasks")
    worst_open, worst_scroll = [], []
    for i, (opened, scrolled) in enumerate(rows):
        worst_open.append(max(opened, default=0))
        worst_scroll.append(max(scrolled, default=0))
        print(f"{i:5d}  {len(opened):11d}  {worst_open[-1]:7d}  {str(opened)[:13]:13s}  "
              f"{len(scrolled):13d}  {worst_scroll[-1]:7d}  {scrolled}")
    print(f"median longest: open {statistics.median(worst_open):.0f} ms, "
          f"scroll {statistics.median(worst_scroll):.0f} ms; "
          f"max: open {max(worst_open)} ms, scroll {max(worst_scroll)} ms")


LOAD0 = os.getloadavg()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--cpu-slowdown", type=float, default=1.0, metavar="X")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.messages, args.cpu_slowdown))
