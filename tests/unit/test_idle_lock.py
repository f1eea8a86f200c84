"""The idle lock of `chat --lock-after` (cli/idle_lock.py): the rule and the screen.

The rule runs on a fake clock. The screen runs headless in a host app (Textual's
pilot): while it is up, the host's own screen is not the one shown; a wrong
passphrase keeps it up; the right one calls back and dismisses it.
(tests/integration/test_tui_lock.py drives the real chat in tmux.)
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import Input, Static

from sottovoce.cli.idle_lock import IdleLock, LockScreen


def test_idle_lock_locks_after_the_idle_time_and_only_the_passphrase_unlocks() -> None:
    now = [100.0]
    lock = IdleLock(60.0, clock=lambda: now[0])
    now[0] += 59.9
    assert not lock.due()
    lock.touch()  # a key: the idle time starts over
    now[0] += 59.9
    assert not lock.due()
    now[0] += 0.2
    assert lock.due()
    lock.lock()
    assert lock.locked and not lock.due()
    now[0] += 1000
    lock.touch()  # keys while locked do not count
    lock.unlock()
    assert not lock.locked and not lock.due()
    now[0] += 60
    assert lock.due()


class _Host(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.unlocked = 0

    def compose(self) -> ComposeResult:
        yield Static("secret chat line", id="chat")

    def on_mount(self) -> None:
        self.push_screen(LockScreen(lambda p: p == "right one", self._unlocked))

    def _unlocked(self) -> None:
        self.unlocked += 1


async def test_the_lock_screen_hides_the_chat_until_the_right_passphrase() -> None:
    app = _Host()
    async with app.run_test() as pilot:
        await pilot.pause()
        assert isinstance(app.screen, LockScreen)
        assert not app.screen.query("#chat")  # the chat is not on the screen shown
        app.screen.query_one("#lock-input", Input).value = "wrong one"
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert isinstance(app.screen, LockScreen) and app.unlocked == 0
        why = app.screen.query_one("#lock-why", Static)
        assert "wrong passphrase" in str(why.render())
        assert app.screen.query_one("#lock-input", Input).value == ""  # not left typed
        app.screen.query_one("#lock-input", Input).value = "right one"
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.unlocked == 1
        assert not isinstance(app.screen, LockScreen)
        assert app.screen.query("#chat")
