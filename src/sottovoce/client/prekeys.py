"""This device's prekeys on the server: the one-time keys and the fallback key peers
claim to open an Olm session with it (docs/architecture.md §1:1 messages).

    first connection ──► a batch of one-time keys + a fallback key (private halves
                         sealed in the store first), once per device
    sottovoce.prekeys.low ──► another batch, unless an upload that succeeded since
                              already answered it
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from sottovoce.client.events import ErrorEvent
from sottovoce.client.ports import Emit, Link
from sottovoce.client.sessions import SessionManager
from sottovoce.client.store import Store
from sottovoce.errors import SottovoceError
from sottovoce.identity import DeviceSigningKey
from sottovoce.limits import ONE_TIME_KEYS_BATCH
from sottovoce.protocol import events as ev

#: Store flag: the first batch (with the fallback key) is on the server.
UPLOADED_FLAG = "prekeys_uploaded"


class Prekeys:
    """Uploads this device's prekeys; see the module docstring."""

    def __init__(
        self, store: Store, link: Link, sessions: SessionManager,
        device_key: DeviceSigningKey, emit: Emit,
    ) -> None:
        self._store, self._link, self._sessions = store, link, sessions
        self._device_key, self._emit = device_key, emit
        self._lock = asyncio.Lock()
        #: prekeys.low notices received, and how many had come before an upload was sent
        #: that then succeeded (those spoke of the stock before it).
        self._notices = 0
        self._notices_answered = 0

    async def ensure(self) -> None:
        """Upload the first batch of one-time keys and a fallback key, once per device."""
        async with self._lock:
            if not self._store.flag(UPLOADED_FLAG):
                await self._upload(ONE_TIME_KEYS_BATCH, fallback=True)
                self._store.set_flag(UPLOADED_FLAG)

    def low(self) -> Coroutine[Any, Any, None]:
        """A ``sottovoce.prekeys.low`` notice came: the work that answers it (counted now,
        in the order notices arrive)."""
        self._notices += 1
        return self._replenish(self._notices)

    async def _replenish(self, notice: int) -> None:
        """Top the stock up at once, unless the ``notice``-th notice came before an upload
        that has succeeded since (it spoke of the stock before that upload, as the one
        sent at every login does before the first one)."""
        try:
            async with self._lock:
                if self._notices_answered >= notice:
                    return
                if not self._store.flag(UPLOADED_FLAG):
                    await self._upload(ONE_TIME_KEYS_BATCH, fallback=True)
                    self._store.set_flag(UPLOADED_FLAG)
                else:
                    await self._upload(ONE_TIME_KEYS_BATCH, fallback=False)
        except SottovoceError as exc:
            self._emit(ErrorEvent(code=exc.code, message=str(exc)))

    async def _upload(self, count: int, *, fallback: bool) -> None:
        olm = self._sessions.olm
        keys = olm.new_one_time_keys(self._device_key, count)
        # The fallback key rotates only with the first batch: vodozemac remembers one
        # previous fallback key, and a peer may still hold a bundle with it.
        fallback_key = olm.new_fallback_key(self._device_key) if fallback else None
        # The private halves are durable before anyone can claim the public ones.
        with self._store.transaction():
            self._sessions.mark_olm_dirty()
            self._sessions.flush()
        notices = self._notices
        await self._link.request(
            ev.PrekeysUpload(
                oneTimeKeys=tuple(k.encode() for k in keys),
                fallbackKey=None if fallback_key is None else fallback_key.encode(),
            ),
            frozenset({ev.PREKEYS_STORED}),
        )
        self._notices_answered = max(self._notices_answered, notices)
