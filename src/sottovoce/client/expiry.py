"""Disappearing messages: the timer message's body, the choices of timer, and the
hooks the 1:1 and room message paths call to stamp and record each message's expiry
(docs/protocol.md §Disappearing messages).

A chat's timer is set by a ``"timer"`` message (inner content type; the envelope
says ``"text"``), whose body is ``{"v":1,"seconds":N}`` with N one of
:data:`TIMER_SECONDS`. Every device of both sides (every member of a room) applies
the newest one it has seen (by the timer message's creation time). Each message
then sent carries its own expiry inside its ciphertext (``Payload.expires_at_ms``):
its creation time plus the chat's timer, counted from **send** time, not read time.
A later change of the timer never moves an expiry already given.
"""

from __future__ import annotations

from collections.abc import Callable

from sottovoce.client.ids import now_ms
from sottovoce.client.payload import json_body, read_json_body
from sottovoce.client.store import Store
from sottovoce.client.store_timers import ChatTimer, TimerStore
from sottovoce.errors import DecodeError, UsageError
from sottovoce.limits import TIMER_CHOICES

#: The inner content type of a timer message.
TIMER_CONTENT_TYPE = "timer"

TIMER_SECONDS = frozenset(TIMER_CHOICES.values())
#: The longest timer (a week), in milliseconds.
MAX_TIMER_MS = max(TIMER_SECONDS) * 1000

_SPOKEN = {0: "off", 5: "5 s", 60: "1 min", 3600: "1 h", 86_400: "1 day", 604_800: "1 week"}


def parse_timer(value: str) -> int:
    """A timer the user typed (``5s``, ``1m``, ``1h``, ``1d``, ``1w``, ``off``), in seconds."""
    seconds = TIMER_CHOICES.get(value.strip().lower())
    if seconds is None:
        raise UsageError(f"a timer is one of {', '.join(TIMER_CHOICES)} (not {value!r})")
    return seconds


def spoken(seconds: int) -> str:
    """``60`` -> ``"1 min"``; ``0`` -> ``"off"``."""
    return _SPOKEN.get(seconds, f"{seconds} s")


def timer_body(seconds: int) -> str:
    """The body of a timer message."""
    if seconds not in TIMER_SECONDS:
        raise UsageError("not a timer this client offers")
    return json_body(seconds=seconds)


def read_timer_body(data: str | bytes) -> int:
    """The seconds a peer's timer message sets; ``DecodeError`` for anything else."""
    value = read_json_body(data, ("seconds",), "timer message")
    seconds = value["seconds"]
    if type(seconds) is not int or seconds not in TIMER_SECONDS:
        raise DecodeError("a timer message names a timer that does not exist")
    return seconds


def timer_notice(sender: str, body: str) -> str:
    """What a chat shows for a timer message: ``alice set disappearing messages to 1 min``."""
    try:
        seconds = read_timer_body(body)
    except DecodeError:
        return f"{sender} sent a timer this client cannot read"
    if not seconds:
        return f"{sender} turned disappearing messages off"
    return f"{sender} set disappearing messages to {spoken(seconds)}"


def remaining(expires_at_ms: int, now: int) -> str:
    """``"4 s"``, ``"59 min"``, ``"23 h"``, ``"6 d"``: what is left until expiry."""
    left = max(0, expires_at_ms - now) // 1000
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if left >= size:
            return f"{left // size} {unit}"
    return f"{left} s"


def wire_expiry(expires_at_ms: int) -> int:
    """The expiry the server sees: rounded up to the whole second (0: none)."""
    return -(-expires_at_ms // 1000) * 1000 if expires_at_ms else 0


class Expiries:
    """The expiry side of every message path of one device (sync, store-backed).

    The message paths call it inside their transactions: :meth:`for_new` stamps an
    outgoing message, :meth:`record` keeps a message's expiry (ours or a peer's),
    :meth:`apply` takes a timer message. ``clock`` is injectable for tests;
    ``on_record`` hears of each new expiry (the client's sweep task wakes for it).
    """

    def __init__(self, store: Store, *, clock: Callable[[], int] | None = None) -> None:
        self.table = TimerStore(store)
        self.clock: Callable[[], int] = clock or (lambda: now_ms())
        self.on_record: Callable[[int], None] | None = None

    def seconds(self, chat: str) -> int:
        timer = self.table.timer(chat)
        return 0 if timer is None else timer.seconds

    def for_new(self, chat: str, created_ms: int) -> int:
        """The expiry of a message created now in ``chat``: its current timer, or 0."""
        seconds = self.seconds(chat)
        return created_ms + seconds * 1000 if seconds else 0

    def of(self, message_id: str) -> int:
        return self.table.expiry(message_id)

    def due(self, expires_at_ms: int) -> bool:
        """Whether a message with this expiry is already gone (it is never shown)."""
        return bool(expires_at_ms) and expires_at_ms <= self.clock()

    def record(self, message_id: str, expires_at_ms: int) -> None:
        if not expires_at_ms:
            return
        self.table.set_expiry(message_id, expires_at_ms)
        if self.on_record is not None:
            self.on_record(expires_at_ms)

    def apply(self, chat: str, sender: str, message_id: str, created_ms: int, body: bytes) -> bool:
        """A timer message (ours or a peer's, already authenticated): the chat takes it
        unless a newer one was applied; returns whether it did."""
        timer = ChatTimer(
            seconds=read_timer_body(body), setter=sender, set_at_ms=created_ms,
            message_id=message_id,
        )
        return self.table.set_timer(chat, timer)

    def sweep(self) -> list[str]:
        """Delete what expired by now, everywhere this device holds it."""
        return self.table.delete_expired(self.clock())
