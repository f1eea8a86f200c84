"""The disappearing-messages API of the SDK (``client.timers``): set and read a chat's
timer, and the task that deletes messages when they expire (docs/architecture.md
§Disappearing messages).

Expired messages are deleted three ways: when this object is built (the client was
closed while they expired: they go before anything is shown), by a task that sleeps
until the next expiry while the client runs (:meth:`Timers.start`), and on demand
(:meth:`Timers.sweep`). The expiry of each message is the one inside its ciphertext,
recorded when it was sent or received (:mod:`sottovoce.client.expiry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3

from sottovoce.client.direct import DirectMessages
from sottovoce.client.errors import StoreError
from sottovoce.client.events import MessagesExpired
from sottovoce.client.expiry import TIMER_CONTENT_TYPE, Expiries, timer_body
from sottovoce.client.ports import Emit, Spawn
from sottovoce.client.rooms.manager import RoomManager
from sottovoce.client.store import Store
from sottovoce.client.store_timers import ChatTimer
from sottovoce.errors import UsageError
from sottovoce.identity import validate_username
from sottovoce.protocol import events as ev

_log = logging.getLogger(__name__)

#: The longest the sweep task sleeps without looking again (a clock that jumps).
_MAX_SLEEP_S = 60.0


class Timers:
    """Disappearing messages of one device; owned by :class:`~sottovoce.client.Client`."""

    def __init__(
        self, store: Store, direct: DirectMessages, rooms: RoomManager, emit: Emit,
        spawn: Spawn,
    ) -> None:
        self._store, self._direct, self._rooms, self._emit = store, direct, rooms, emit
        self._spawn = spawn
        self.expiries: Expiries = direct.expiries
        rooms.use_expiries(self.expiries)
        self.expiries.on_record = self._recorded
        self._wake = asyncio.Event()
        self._running = False
        self._swept: asyncio.Event | None = None
        #: messageIds deleted by the sweeps of this process (for tests and the TUI).
        self.deleted = 0
        self.sweep()  # what expired while the client was closed goes before anything shows

    # =========================================================================
    # Timers
    # =========================================================================

    def chat_timer(self, username: str) -> ChatTimer | None:
        """The timer of the 1:1 chat with ``username`` (``None``: never set)."""
        validate_username(username)
        return self.expiries.table.timer(self._dm(username))

    def room_timer(self, ref: str) -> ChatTimer | None:
        return self.expiries.table.timer(self._rooms.get(ref).room_id)

    async def set_chat_timer(self, username: str, seconds: int) -> str:
        """Tell every device of both sides that messages now disappear after ``seconds``
        (0: off); returns the timer message's id. Applied here at once."""
        validate_username(username)
        if username == self._direct.username:
            raise UsageError("set a timer on a chat with another user")
        message_id = await self._direct.send_record(
            username, TIMER_CONTENT_TYPE, timer_body(seconds)
        )
        self._apply_own(self._dm(username), message_id)
        return message_id

    async def set_room_timer(self, ref: str, seconds: int) -> str:
        """The same for a room: every member's devices apply it."""
        room = self._rooms.get(ref)
        message_id = await self._rooms.send_timer(room.room_id, timer_body(seconds))
        self._apply_own(room.room_id, message_id)
        return message_id

    def _apply_own(self, chat: str, message_id: str) -> None:
        stored = self._store.get_message(message_id)
        if stored is None:
            return
        with self._store.transaction():
            self.expiries.apply(
                chat, stored.sender, message_id, stored.client_created_ms,
                stored.text.encode("utf-8"),
            )

    def expires_at(self, message_id: str) -> int:
        """When a stored message disappears (Unix ms); 0 if it does not."""
        return self.expiries.of(message_id)

    def _dm(self, username: str) -> str:
        return ev.dm_conversation_id(self._direct.username, username)

    # =========================================================================
    # Deleting what expired
    # =========================================================================

    def sweep(self) -> list[str]:
        """Delete every message expired by now (the store, its outbox, its queues)."""
        gone = self.expiries.sweep()
        self.deleted += len(gone)
        if gone:
            self._emit(MessagesExpired(message_ids=tuple(gone)))
        if self._swept is not None:
            self._swept.set()
            self._swept = None
        return gone

    async def wait_deleted(self, message_id: str, timeout: float) -> None:
        """Wait (without polling) until a sweep deleted ``message_id``; ``TimeoutError``
        if it is still stored after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._store.get_message(message_id) is not None:
            if self._swept is None:
                self._swept = asyncio.Event()
            swept = self._swept
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"message {message_id} was not deleted")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(swept.wait(), left)

    def start(self) -> None:
        """Run the sweep task (once; it is the client's task, which ``close`` cancels)."""
        if not self._running:
            self._running = True
            self._spawn(self._run())

    def _recorded(self, expires_at_ms: int) -> None:
        self._wake.set()

    def wake(self) -> None:
        """Expiries were written behind our back (a linked history): plan again."""
        self._wake.set()

    async def _run(self) -> None:
        try:
            await self._sweep_forever()
        finally:
            self._running = False

    async def _sweep_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                self.sweep()
            except (StoreError, sqlite3.Error) as exc:  # e.g. a full disk: again on next wake
                _log.warning("expired messages not deleted yet: %s", exc)
            due = self.expiries.table.next_expiry()
            delay = _MAX_SLEEP_S
            if due is not None:
                delay = min(_MAX_SLEEP_S, max(0.0, (due - self.expiries.clock()) / 1000) + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
