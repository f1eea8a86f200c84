"""`chat --lock-after MINUTES`: the chat screen locks itself after that long without input.

:class:`IdleLock` is the rule (pure, with an injectable clock): any key or
mouse press restarts the idle time; past ``after_s`` the chat locks. While
locked, :class:`LockScreen` replaces the chat screen whole (it is a screen, not
a modal drawn over the chat), so no message, name or call banner stays on
the terminal; it goes on top of whatever screen is open (the safety number's,
the command palette), and none opens over it; the chat holds back its
notifications and does not mark what arrives as read. The passphrase unlocks
it: it is checked against the store (one Argon2id, in a thread so the screen
stays responsive). Ctrl-Q still quits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Input, Static


@dataclass(slots=True)
class IdleLock:
    """Locks after ``after_s`` seconds without input; :meth:`unlock` starts over."""

    after_s: float
    clock: Callable[[], float] = time.monotonic
    locked: bool = False
    _last: float = field(init=False)

    def __post_init__(self) -> None:
        self._last = self.clock()

    def touch(self) -> None:
        """Input arrived (ignored while locked: only the passphrase unlocks)."""
        if not self.locked:
            self._last = self.clock()

    def due(self) -> bool:
        """Time to lock now (it was not locked, and nothing was typed for ``after_s``)."""
        return not self.locked and self.clock() - self._last >= self.after_s

    def lock(self) -> None:
        self.locked = True

    def unlock(self) -> None:
        self.locked = False
        self._last = self.clock()


LOCKED_TEXT = "sottovoce is locked: type the passphrase and Enter (Ctrl-Q quits)"


class LockScreen(Screen[None]):
    """The whole terminal while locked: a prompt and a password field, nothing else."""

    DEFAULT_CSS = """
    LockScreen { align: center middle; }
    #lock-box { width: 72; height: auto; }
    #lock-why { height: auto; }
    """

    def __init__(self, check: Callable[[str], bool], on_unlock: Callable[[], None]) -> None:
        super().__init__()
        self._check = check
        self._on_unlock = on_unlock

    def compose(self) -> ComposeResult:
        with Vertical(id="lock-box"):
            yield Static(Text(LOCKED_TEXT), id="lock-why")
            yield Input(password=True, placeholder="passphrase", id="lock-input")

    def on_mount(self) -> None:
        self.query_one("#lock-input", Input).focus()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        passphrase, event.input.value = event.value, ""
        if not passphrase:
            return
        why = self.query_one("#lock-why", Static)
        why.update(Text("checking…"))
        if await asyncio.to_thread(self._check, passphrase):
            self._on_unlock()
            self.dismiss()
            return
        why.update(Text(f"wrong passphrase. {LOCKED_TEXT}"))
