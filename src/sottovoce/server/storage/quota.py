"""Inbox quotas: how much may wait, unread, in one device's inbox (docs/threat-model.md).

Without them one account could fill another's inbox with as much ciphertext
as it can send, to be kept for the whole retention. A frame *waits* from the
commit that stores it to the ack (or expiry, or revocation) that deletes it.
Each storage adapter keeps, per recipient device, what waits from each sending
account (:class:`Usage`), updated in the transactions that store and delete
frames, and refuses a send that would pass a limit, before it writes anything::

    every frame for a device          ≤ device_messages / device_bytes
    frames from one other account:    ≤ contact_*   if the recipient's account has
                                                    written to the sender before
                                      ≤ stranger_*  otherwise (a first contact)

The refusal is :class:`InboxFull` (``inbox_full``, retryable: the recipient's
devices make room by reading). Frames from the sender's own account (copies for
its other devices) count towards the device limit only. Room Welcomes and
frames stored before quotas existed count nowhere (their sender is unknown).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sottovoce.limits import (
    INBOX_CONTACT_BYTES,
    INBOX_CONTACT_MESSAGES,
    INBOX_MAX_BYTES,
    INBOX_MAX_MESSAGES,
    INBOX_STRANGER_BYTES,
    INBOX_STRANGER_MESSAGES,
)
from sottovoce.server.errors import WireFailure

#: The sending account of frames whose sender is not known (stored before quotas).
UNKNOWN_SENDER = ""
#: What a refused sender is told to wait before trying again: the recipient has to read
#: (at once if it is online and only behind, later if it is offline); every resend that
#: is refused again costs one cheap check.
INBOX_FULL_RETRY_MS = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class InboxLimits:
    device_messages: int = INBOX_MAX_MESSAGES
    device_bytes: int = INBOX_MAX_BYTES
    contact_messages: int = INBOX_CONTACT_MESSAGES
    contact_bytes: int = INBOX_CONTACT_BYTES
    stranger_messages: int = INBOX_STRANGER_MESSAGES
    stranger_bytes: int = INBOX_STRANGER_BYTES


class InboxFull(WireFailure):
    """A send would pass an inbox quota of one of its target devices; nothing was stored.

    ``scope`` says which: ``device`` (everything waiting there), ``contact`` or
    ``stranger`` (what waits there from the sending account)."""

    def __init__(self, scope: str, user_id: str, device_id: str) -> None:
        super().__init__(
            "inbox_full",
            "the recipient device's inbox is full" if scope == "device"
            else "too much of yours waits unread in the recipient device's inbox",
            retryable=True,
            retry_after_ms=INBOX_FULL_RETRY_MS,
            details={"scope": scope, "userId": user_id, "deviceId": device_id},
        )
        self.scope = scope


@dataclass(slots=True)
class Usage:
    """What waits in one device's inbox: in all, and per sending account."""

    messages: int = 0
    bytes: int = 0
    by_sender: dict[str, list[int]] = field(default_factory=dict)  # [messages, bytes]
    #: Senders whose entry changed since the adapter last wrote it (if it keeps track).
    dirty: set[str] = field(default_factory=set)

    def add(self, sender: str, messages: int, size: int) -> None:
        self.messages += messages
        self.bytes += size
        entry = self.by_sender.get(sender)
        if entry is None:
            self.by_sender[sender] = [messages, size]
        else:
            entry[0] += messages
            entry[1] += size

    def take(self, limits: InboxLimits, sender: str, own: bool, size: int) -> bool:
        """Count one frame of ``size`` bytes from ``sender`` (``own``: for the sender's own
        other device) if it stays below the device's limits and, from another account,
        a stranger's: the common case, which needs no look-up. False, counting nothing,
        when :func:`refusal` must decide. A counted sender is marked dirty."""
        entry = self.by_sender.get(sender)
        if not (self.messages < limits.device_messages
                and self.bytes + size <= limits.device_bytes
                and (own or entry is None or (entry[0] < limits.stranger_messages
                                              and entry[1] + size <= limits.stranger_bytes))):
            return False
        self.messages += 1
        self.bytes += size
        if entry is None:
            self.by_sender[sender] = [1, size]
        else:
            entry[0] += 1
            entry[1] += size
        self.dirty.add(sender)
        return True

    def remove(self, sender: str, messages: int, size: int) -> None:
        """Frames deleted; never below zero (frames that counted nowhere, such as Welcomes,
        are deleted too)."""
        entry = self.by_sender.get(sender)
        if entry is None:
            return
        messages, size = min(messages, entry[0]), min(size, entry[1])
        entry[0] -= messages
        entry[1] -= size
        self.messages -= messages
        self.bytes -= size

    def sender(self, sender: str) -> tuple[int, int]:
        entry = self.by_sender.get(sender)
        return (0, 0) if entry is None else (entry[0], entry[1])


def refusal(
    limits: InboxLimits,
    usage: Usage,
    *,
    sender: str,
    own: bool,
    size: int,
    known: Callable[[], bool],
) -> str | None:
    """The scope whose limit one more frame of ``size`` bytes from ``sender`` would pass,
    or None. ``own``: the frame is for the sender's own other device. ``known()`` (asked
    only when it matters): has the recipient's account written to the sender's?"""
    if usage.messages + 1 > limits.device_messages or usage.bytes + size > limits.device_bytes:
        return "device"
    if own:
        return None
    messages, used = usage.sender(sender)
    if messages + 1 <= limits.stranger_messages and used + size <= limits.stranger_bytes:
        return None
    if known():
        if messages + 1 <= limits.contact_messages and used + size <= limits.contact_bytes:
            return None
        return "contact"
    return "stranger"
