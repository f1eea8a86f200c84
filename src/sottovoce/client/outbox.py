"""The durable outbox on the wire (docs/architecture.md §Data path).

    local transaction: message (sending) + outbox row
        ──► pump: rows not yet written on this connection, oldest first, at most
            OUTBOX_WINDOW unacknowledged (a long outbox after a reconnect never
            trips the server's per-device rate limit)
        ──► ksmpv3.send.ack ──► message ✓, row deleted, the window opens
        ──► refused for good ──► fail: message ✗, row deleted, ErrorEvent

Every reconnect writes the whole outbox again from the oldest row, with the same
messageId and idempotencyKey, so the server stores each message once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sottovoce.client.errors import NotConnected, ServerError
from sottovoce.client.events import (
    ClientEvent,
    DeliveryStateChanged,
    ErrorEvent,
    MessageSent,
)
from sottovoce.client.ports import Emit, Link
from sottovoce.client.store import DeliveryStatus, Store
from sottovoce.errors import UsageError
from sottovoce.limits import OUTBOX_WINDOW


class Outbox:
    """Writes, acknowledges and fails queued sends (satisfies :class:`~.ports.SendQueue`)."""

    def __init__(self, store: Store, link: Link, emit: Emit) -> None:
        self._store, self._link, self._emit = store, link, emit
        self._cursor = 0  # highest outbox oid written on the current connection
        self._inflight: dict[str, int] = {}  # written, not acked: messageId -> oid
        self._ack_waiters: dict[str, asyncio.Future[int]] = {}
        #: device_mismatch answers per queued 1:1 message (bounded by its sender).
        self.mismatch_retries: dict[str, int] = {}
        self._closed = False

    def close(self) -> None:
        """The store is closing: a resend timer that fires later does nothing."""
        self._closed = True

    def pending(self) -> int:
        """Messages not acknowledged yet: in the outbox, or waiting to be encrypted."""
        return self._store.outbox_size() + self._store.unsent_size()

    def holds(self, message_id: str) -> bool:
        return self._store.get_outbox(message_id) is not None

    # --- writing ------------------------------------------------------------------------

    def reopen(self, write_opening: Callable[[str], None]) -> None:
        """A new connection: nothing is in flight on it yet. Queue the oldest rows (up to
        the window) with ``write_opening``, before the connection is marked up."""
        self._cursor = 0
        self._inflight.clear()

        def write(frame: str) -> bool:
            write_opening(frame)
            return True

        self._write(write)

    def pump(self) -> None:
        """Write outbox rows not yet written on this connection, oldest first."""
        if self._link.is_up:
            self._write(self._link.send_frame)

    def _write(self, write: Callable[[str], bool]) -> None:
        while len(self._inflight) < OUTBOX_WINDOW:
            room = OUTBOX_WINDOW - len(self._inflight)
            items = self._store.outbox(after_oid=self._cursor, limit=room)
            if not items:
                return
            for item in items:
                if not write(item.frame):
                    return
                self._inflight[item.message_id] = item.oid
                self._cursor = item.oid

    def resend(self, message_id: str) -> None:
        """Write one queued row again (a retryable refusal, after its delay)."""
        if self._closed:
            return
        item = self._store.get_outbox(message_id)
        if item is not None:
            self._link.send_frame(item.frame)

    # --- answers ------------------------------------------------------------------------

    def acked(self, data: dict[str, Any], events: list[ClientEvent]) -> None:
        """A ``ksmpv3.send.ack`` (inside the batch transaction; ``events`` go out after it)."""
        message_id = data.get("messageId")
        seq = data.get("serverSeq")
        if not isinstance(message_id, str) or not isinstance(seq, int):
            return
        stored = self._store.get_message(message_id)
        newly = self._store.mark_sent(message_id, seq)
        self._store.remove_outbox(message_id)
        self._inflight.pop(message_id, None)
        self.mismatch_retries.pop(message_id, None)
        if newly and stored is not None:
            idem = data.get("idempotencyKey")
            events.append(
                MessageSent(
                    message_id=message_id,
                    peer=stored.peer,
                    server_seq=seq,
                    idempotency_key=idem if isinstance(idem, str) else "",
                    duplicate=bool(data.get("duplicate")),
                )
            )
            events.append(
                DeliveryStateChanged(
                    message_id=message_id, peer=stored.peer, status=DeliveryStatus.SENT
                )
            )
        future = self._ack_waiters.pop(message_id, None)
        if future is not None and not future.done():
            future.set_result(seq)

    def fail(self, message_id: str, code: str, message: str) -> None:
        stored = self._store.get_message(message_id)
        if stored is not None and stored.status is DeliveryStatus.SENDING:
            with self._store.transaction():
                self._store.remove_outbox(message_id)
                self._store.remove_unsent(message_id)
                self._store.set_status(message_id, DeliveryStatus.FAILED)
            self._inflight.pop(message_id, None)
            self.pump()
            self._emit(
                DeliveryStateChanged(
                    message_id=message_id, peer=stored.peer, status=DeliveryStatus.FAILED
                )
            )
        self._emit(ErrorEvent(code=code, message=message, message_id=message_id))
        future = self._ack_waiters.pop(message_id, None)
        if future is not None and not future.done():
            future.set_exception(ServerError(code, message))

    async def wait_sent(self, message_id: str, *, timeout: float) -> int:
        """Wait for the server's ack of ``message_id``; returns its serverSeq."""
        stored = self._store.get_message(message_id)
        if stored is None:
            raise UsageError("unknown message id")
        if stored.status is DeliveryStatus.SENT and stored.server_seq is not None:
            return stored.server_seq
        if stored.status is DeliveryStatus.FAILED:
            raise ServerError("send_failed", "the server refused this message")
        future = self._ack_waiters.get(message_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._ack_waiters[message_id] = future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise NotConnected("no acknowledgement from the server in time") from None
