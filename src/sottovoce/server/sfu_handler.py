"""``sottovoce.room.call.grant``: let a current member of a room into a call's SFU room.

    device ──sottovoce.room.call.grant {roomId, callId}──► authenticated? (the
            dispatcher) ──► SFU configured? (else "sfu_unavailable": rooms call as
            a mesh) ──► under this device's rate? (else "rate_limited")
            ──► a current member of the room's group? (the room storage's members;
            else "sfu_not_member") ──► the recorder device in a room whose recorder
            setting is off? ("recorder_off") ──► SfuDriver.admit: the call's VideoRoom on the
            room's SFU -- of the room's residency region when it has one, else
            "sfu_region_unavailable" -- a 60 s token ──► sottovoce.room.call.granted
    room commit removing D ──► members_removed(room, [D]) ──► D's tokens revoked, its
            feeds kicked (in the background: the commit is already answered); the
            fan-out tells the other nodes, whose own calls get the same

The grant names the VideoRoom by a keyed hash of (room, call), never the room id;
nothing of the call (its MLS group, its keys, its signals) passes through here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sottovoce.calls.janus import SfuError
from sottovoce.limits import TURN_REQUESTS_BURST, TURN_REQUESTS_PER_MINUTE
from sottovoce.protocol.fields import Device
from sottovoce.protocol.rooms import RECORDER_DEVICE_ID, ROOM_CALL_GRANTED, RoomCallGrant
from sottovoce.server.config import ServerConfig
from sottovoce.server.errors import RateLimited, WireFailure
from sottovoce.server.ratelimit import KeyedBuckets
from sottovoce.server.session import Session
from sottovoce.server.sfu import SfuConfig, SfuDriver, SfuNotAMember, read_sfu_key
from sottovoce.server.storage.roombase import RoomRefused, RoomStorage

log = logging.getLogger(__name__)


def sfu_driver(config: ServerConfig) -> SfuDriver | None:
    """The server's SFU driver, its key read now (``None``: no SFU, rooms call as a mesh).

    A missing, unreadable or too short key file raises a plain ``UsageError`` before
    the server listens.
    """
    if not config.sfu or config.sfu_key_file is None:
        return None
    return SfuDriver(SfuConfig(endpoints=config.sfu, key=read_sfu_key(config.sfu_key_file)))


class SfuHandler:
    """The grant request, the removal hook, and the sweep of expired grants."""

    def __init__(
        self,
        sfu: SfuDriver | None,
        rooms: RoomStorage | None,
        *,
        sweep_s: float = 10.0,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sfu = sfu
        self._rooms = rooms
        self._sweep_s = sweep_s
        self._clock = clock_s
        # As many grants as TURN credentials: a device asks once per call it joins.
        self._buckets = KeyedBuckets(TURN_REQUESTS_PER_MINUTE / 60, TURN_REQUESTS_BURST)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: ServerConfig, rooms: RoomStorage | None) -> SfuHandler:
        return cls(sfu_driver(config), rooms)

    def handlers(self) -> dict[type[Any], Callable[..., Any]]:
        return {RoomCallGrant: self.grant}

    async def grant(
        self, session: Session, ev: RoomCallGrant, data: dict[str, Any], rid: str | None
    ) -> None:
        device = session.key  # only authenticated sessions get here
        if self._sfu is None:
            raise WireFailure(
                "sfu_unavailable",
                "this server runs no SFU: room calls of up to 4 go as a mesh",
            )
        if self._rooms is None:
            raise WireFailure("unavailable", "this server's storage has no rooms")
        wait = self._buckets.take(device)
        if wait:
            raise RateLimited("too many SFU grant requests", wait)
        try:
            state = await self._rooms.room_state(ev.roomId, *device)
        except RoomRefused:
            # Not a member, never was, or no such room: one answer for all three.
            raise WireFailure(
                SfuNotAMember.code, "only a current member of the room may join its calls"
            ) from None
        if device[1] == RECORDER_DEVICE_ID and not state.recorder:
            raise WireFailure(
                "recorder_off", "this room's recorder setting is off: its recorder may not join"
            )
        try:
            granted = await self._sfu.admit(
                ev.roomId, ev.callId, device, set(state.members), residency=state.residency
            )
        except SfuNotAMember as exc:  # pragma: no cover - room_state answered for a member
            raise WireFailure(exc.code, str(exc)) from None
        except SfuError as exc:
            raise WireFailure(exc.code, str(exc), retryable=exc.retryable) from None
        self._ensure_sweeper()
        session.reply(ROOM_CALL_GRANTED, granted.to_wire(), rid)

    def members_removed(self, room_id: str, devices: Sequence[Device]) -> None:
        """A commit removed ``devices`` from the room: no more grants for them, their
        feeds kicked from the room's calls (called from the room-commit path)."""
        if self._sfu is None or not devices:
            return
        task = asyncio.ensure_future(self._remove(self._sfu, room_id, tuple(devices)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, sfu: SfuDriver, room_id: str, devices: tuple[Device, ...]) -> None:
        for device in devices:
            try:
                await sfu.remove_member(room_id, device)
            except SfuError as exc:
                log.warning("sfu: removing a member's feeds failed: %s", exc.code)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        sfu = self._sfu
        while sfu is not None:
            await asyncio.sleep(self._sweep_s)
            await sfu.sweep()

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._sweeper] if self._sweeper is not None else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._sfu is not None:
            await self._sfu.close()
