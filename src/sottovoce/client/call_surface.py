"""The client's call surface: building a device's call controllers and feeding them.

:class:`CallSurface` is a base of :class:`~sottovoce.client.client.Client`; it holds
what the SDK offers for calls (``client.start_calls``, ``client.calls``,
``client.place_call``, ``client.answer_call``, ``client.turn_servers``,
``client.start_room_calls``, ``client.room_calls``) and the two server requests
they need, so the composition root keeps only the arrows into it::

    DirectMessages.accept ──► _on_call_signals ──► CallController (1:1 calls)
    rooms.on_call_signal  ──────────────────────► RoomCalls (room calls)
    CallController ──► ephemeral 1:1 sends, durable missed-call records, TURN request
    RoomCalls      ──► MLS application messages of the room, SFU grant request

Both controllers are built on first use: they need the running event loop, and the
media stack (``client/calls/``) is heavy to import, so it is imported only there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sottovoce.errors import UsageError
from sottovoce.identity import validate_username
from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr

if TYPE_CHECKING:
    from sottovoce.client.calls import CallController, CallOptions, TurnServer
    from sottovoce.client.calls.room_calls import RoomCalls
    from sottovoce.client.calls.room_controller import RoomCallOptions
    from sottovoce.client.connection import Connection
    from sottovoce.client.direct import DirectMessages
    from sottovoce.client.directory import Directory
    from sottovoce.client.events import ClientEvent
    from sottovoce.client.identity import LocalIdentity
    from sottovoce.client.rooms import RoomManager
    from sottovoce.client.sessions import SessionManager
    from sottovoce.client.store import Store

#: Closing waits this long for a call's hang-up to leave and its media to stop.
CALL_CLOSE_TIMEOUT_S = 5.0


class CallSurface:
    """Calls of one client (docs/calls.md); the client sets the parts declared here."""

    username: str
    device_id: str
    identity: LocalIdentity
    rooms: RoomManager
    _store: Store
    _conn: Connection
    _direct: DirectMessages
    _directory: Directory
    _sessions: SessionManager
    _emit: Callable[[ClientEvent], None]
    _closed: bool
    # A CallController built from narrow callables (an ephemeral 1:1 send for its
    # signals, a durable 1:1 record for missed calls, a TURN credential request), fed
    # decrypted call payloads by DirectMessages.accept (docs/architecture.md, "Client").
    _calls: CallController | None = None
    # A RoomCalls hub fed decrypted room-call signals by the room message path
    # (rooms.on_call_signal) and told of room changes after each batch.
    _room_calls: RoomCalls | None = None

    # =========================================================================
    # Calls (1:1; docs/calls.md)
    # =========================================================================

    def start_calls(self, options: CallOptions | None = None) -> CallController:
        """Build this device's call controller with ``options`` (once, before any call).

        Start it before connecting so that no ring is missed; :attr:`calls` builds it
        with the default options otherwise.
        """
        from sottovoce.client.calls import CallController
        from sottovoce.client.calls.wiring import missed_call_recorder, signal_sender, turn_fetcher

        if self._calls is not None:
            raise UsageError("calls are already started on this client")
        if self._closed:
            raise UsageError("client is closed")

        def current_peer() -> str | None:
            call = self._calls.call if self._calls is not None else None
            return call.peer if call is not None else None

        self._calls = CallController(
            user=self.username,
            device=self.device_id,
            send_signals=signal_sender(
                me=self.username, send_call=self._direct.send_call, current_peer=current_peer
            ),
            record_missed=missed_call_recorder(self._direct.send_record),
            options=options,
            turn_servers=turn_fetcher(self._ask_turn),
        )
        return self._calls

    async def _ask_turn(self) -> dict[str, Any]:
        _, data = await self._conn.request(ev.TurnCredentialsRequest(), frozenset({ev.TURN_RESULT}))
        return data

    async def turn_servers(self) -> tuple[TurnServer, ...]:
        """Fresh TURN credentials from the server (``ServerError`` ``turn_unavailable``
        when it has none); calls fetch their own, this is for checking up front."""
        from sottovoce.client.calls.wiring import turn_servers_from_wire

        return turn_servers_from_wire(await self._ask_turn())

    @property
    def calls(self) -> CallController:
        """This device's calls: dial, accept, hang up, ``events`` (a queue), ``stats()``."""
        return self._calls if self._calls is not None else self.start_calls()

    async def place_call(self, username: str, *, video: bool | None = None) -> bytes:
        """Ring every device of ``username``; returns the call id (follow ``calls.events``)."""
        validate_username(username)
        if username == self.username:
            raise UsageError("call another user")
        targets = await self._directory.targets(username)
        return self.calls.dial(
            username,
            [d for u, d in targets if u == username],
            own_devices=[d for u, d in targets if u == self.username],
            video=video,
        )

    def answer_call(self) -> None:
        """Accept the call ringing here (the caller's other devices learn it was answered)."""
        self.calls.accept(own_devices=self._sessions.devices_of(self.username))

    # Room calls (docs/calls.md, "Room calls")

    def start_room_calls(self, options: RoomCallOptions | None = None) -> RoomCalls:
        """Build this device's room calls with ``options`` (once; before connecting, so
        that no call started while it syncs is missed). ``room_calls.start(room)`` or
        ``.join(room)`` then gives the room's RoomCallController."""
        from sottovoce.client.calls.room_calls import RoomCalls

        if self._room_calls is not None:
            raise UsageError("room calls are already started on this client")
        if self._closed:
            raise UsageError("client is closed")
        if self.identity.mls_key is None:
            raise UsageError("this device has no room key (it predates rooms)")
        hub = RoomCalls(
            me=(self.username, self.device_id),
            storage_key=self._store.storage_key,
            signing_key=self.identity.mls_key,
            send_signal=self.rooms.send_call_signal,
            leaf_keys=self.rooms.leaf_keys,
            append_audit=self.rooms.record_event,
            ask_grant=self._ask_sfu_grant,
            options=options,
            room_suite=self.rooms.suite,
        )
        self.rooms.on_call_signal(hub.receive)
        self._room_calls = hub
        return hub

    @property
    def room_calls(self) -> RoomCalls:
        """This device's room calls (built with default options on first use)."""
        return self._room_calls if self._room_calls is not None else self.start_room_calls()

    async def _ask_sfu_grant(self, room_id: str, call_id: bytes) -> dict[str, Any]:
        _, data = await self._conn.request(
            pr.RoomCallGrant(roomId=room_id, callId=call_id), frozenset({pr.ROOM_CALL_GRANTED})
        )
        return data

    def _on_call_signals(self, user: str, device: str, body: bytes) -> None:
        """Decrypted call signals (inside the batch transaction: no await, no store).

        A device rings only while an application that takes calls runs (it called
        :meth:`start_calls`): a short command such as ``send`` must neither ring nor,
        closing, decline a call the user could take on another device.
        """
        if self._calls is not None:
            from sottovoce.client.calls.wiring import deliver_signals

            deliver_signals(self._calls, user, device, body, self._emit)

    async def _close_calls(self) -> None:
        """Hang up first, while the hang-up can still reach the peer."""
        if self._calls is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._calls.close(), CALL_CLOSE_TIMEOUT_S)
        if self._room_calls is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room_calls.close(), CALL_CLOSE_TIMEOUT_S)
