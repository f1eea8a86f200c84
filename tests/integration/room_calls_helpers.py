"""Room calls end to end on 127.0.0.1: RoomCallControllers wired through an in-memory room.

    net = RoomNet(["alice/a1", "bob/b1"], sfu=SfuDriver(...))   # or sfu=None: mesh
    alice = net.start("alice/a1")
    bob = net.join("bob/b1", alice)
    await net.until(lambda: len(bob.participants) == 2)

The room's MLS layer is not what these tests are about: its stream is a list
that every controller reads in order (its own signals too), its members are
the devices' signature keys, its audit trail a list. Media is real: aiortc
participants, SFrame, and a real Janus (or a real P2P mesh) on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import av
from aiortc.mediastreams import MediaStreamTrack

from sottovoce.calls.media_keys import Device
from sottovoce.calls.room_call import CALL_MLS_SUITE
from sottovoce.calls.room_signals import CallMode
from sottovoce.client.calls.media import IceConfig
from sottovoce.client.calls.room_controller import RoomCallController, RoomCallOptions
from sottovoce.client.calls.room_media import SfuAccess, SfuMedia
from sottovoce.client.calls.sources import MediaSpec, read_frame_number
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.protocol.audit import AuditAction
from sottovoce.server.sfu import SfuDriver

K = TypeVar("K")

ROOM = "room-under-test"
LOOPBACK = RoomCallOptions(
    media=MediaSpec(width=320, height=240, fps=15), ice=IceConfig(loopback=True)
)


def events_of(ctl: RoomCallController) -> list[object]:
    """The controller's events so far (kept, so a test can look again later)."""
    kept: list[object] = getattr(ctl, "_test_events", [])
    while not ctl.events.empty():
        kept.append(ctl.events.get_nowait())
    ctl._test_events = kept  # type: ignore[attr-defined]
    return kept


def dev(name: str) -> Device:
    user, device = name.split("/")
    return (user, device)


@dataclass
class RoomNet:
    names: list[str]
    sfu: SfuDriver | None = None
    options: RoomCallOptions = LOOPBACK
    keys: dict[Device, SigningKey] = field(default_factory=dict)
    members: set[Device] = field(default_factory=set)
    controllers: dict[Device, RoomCallController] = field(default_factory=dict)
    audit: list[tuple[Device, AuditAction]] = field(default_factory=list)
    log: list[tuple[Device, bytes]] = field(default_factory=list)
    #: (sender, payload) -> deliver it? (a device cut off from the room's stream)
    drop: Callable[[Device, bytes], bool] | None = None

    def __post_init__(self) -> None:
        suite = cipher_suite(CALL_MLS_SUITE)
        for name in self.names:
            d = dev(name)
            self.keys[d] = suite.generate_signing_key(secrets.token_bytes)
            self.members.add(d)
        self._queue: asyncio.Queue[tuple[Device, bytes]] = asyncio.Queue()
        self._pump = asyncio.ensure_future(self._deliver())

    def view(self) -> dict[Device, bytes]:
        return {d: self.keys[d].verify_key.data for d in self.members}

    def _wiring(self, d: Device, options: RoomCallOptions | None) -> dict[str, Any]:
        async def send(payload: bytes) -> None:
            if d in self.members:  # the server takes nothing from a device not in the room
                await self._queue.put((d, payload))

        async def audit(action: AuditAction) -> None:
            self.audit.append((d, action))

        async def grant(call_id: bytes) -> SfuAccess:
            assert self.sfu is not None
            g = await self.sfu.admit(ROOM, call_id, d, set(self.members))
            return SfuAccess(
                url=g.url, room=g.room, feed_id=g.feed_id, token=g.token.expose().decode()
            )

        return {
            "send_signal": send,
            "room_view": self.view,
            "append_audit": audit,
            "sfu_grant": grant if self.sfu is not None else None,
            "options": options or self.options,
        }

    def start(self, name: str, options: RoomCallOptions | None = None) -> RoomCallController:
        d = dev(name)
        ctl = RoomCallController.start(
            room_id=ROOM,
            me=d,
            signing_key=self.keys[d],
            mode=CallMode.SFU if self.sfu is not None else CallMode.MESH,
            **self._wiring(d, options),
        )
        self.controllers[d] = ctl
        return ctl

    def join(
        self, name: str, starter: RoomCallController, options: RoomCallOptions | None = None
    ) -> RoomCallController:
        d = dev(name)
        ctl = RoomCallController.join(
            room_id=ROOM,
            call_id=starter.call.call_id,
            mode=starter.call.mode,
            me=d,
            signing_key=self.keys[d],
            **self._wiring(d, options),
        )
        self.controllers[d] = ctl
        return ctl

    async def _deliver(self) -> None:
        while True:
            sender, payload = await self._queue.get()
            if sender not in self.members or (self.drop is not None and self.drop(sender, payload)):
                continue
            self.log.append((sender, payload))
            for d, ctl in list(self.controllers.items()):
                if d in self.members:
                    ctl.receive(payload, sender)

    async def remove_from_room(self, name: str) -> None:
        """The room's group removes ``name`` (a commit of the room): every controller
        hears of it, and the server revokes its grants and kicks its feeds."""
        d = dev(name)
        self.members.discard(d)
        for ctl in self.controllers.values():
            ctl.room_changed()
        if self.sfu is not None:
            await self.sfu.remove_member(ROOM, d)

    async def until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for ctl in self.controllers.values():
            await ctl.close()
        self._pump.cancel()
        if self.sfu is not None:
            await self.sfu.close()


async def window_settled(later_seen: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until every frame sent in a counting window has had its chance to arrive:
    ``later_seen`` is true once each receiver has decoded a frame sent *after* the
    window (frames are numbered in order, so an earlier one still missing then is
    lost, not late). Returns at ``timeout`` either way; the caller's count judges."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not later_seen() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)


def watch_sent(track: MediaStreamTrack) -> set[int]:
    """The numbers of the pattern frames a sender's ``track`` hands its encoder from now
    on (the set grows as they go): the frames that were sent. A sender's source may
    number more, as a sender behind real time (a loaded machine) skips the stale frames
    its relay held, and a receiver can decode only what was sent."""
    sent: set[int] = set()
    recv = track.recv

    async def recv_and_note() -> Any:
        frame = await recv()
        number = read_frame_number(frame) if isinstance(frame, av.VideoFrame) else None
        if number is not None:
            sent.add(number)
        return frame

    track.recv = recv_and_note  # type: ignore[method-assign]
    return sent


def watch_published(ctl: RoomCallController) -> set[int]:
    """:func:`watch_sent` of the camera ``ctl`` publishes to the SFU."""
    assert isinstance(ctl.media, SfuMedia) and ctl.media._publisher is not None
    return watch_sent(ctl.media._publisher.tracks[1])  # the tracks in the order of ROLES


async def sent_and_decoded(
    sent: dict[K, set[int]],
    decoded: Callable[[K], set[int]],
    *,
    frames: int = 60,
    timeout: float = 60.0,
) -> dict[K, tuple[set[int], set[int]]]:
    """For each stream ``k`` (its sent frames watched by :func:`watch_sent`, ``decoded(k)``
    what its receiver decoded): (the window, those of it decoded). The window is the
    first ``frames`` frames sent since watching began, however long a loaded machine
    takes to send them (up to ``timeout``); it is judged once each receiver has decoded
    a frame sent after it (:func:`window_settled`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(len(numbers) >= frames for numbers in sent.values()):
        if loop.time() > deadline:
            raise AssertionError(f"fewer than {frames} frames sent in {timeout} s: "
                                 f"{[len(numbers) for numbers in sent.values()]}")
        await asyncio.sleep(0.05)
    window = {k: set(sorted(numbers)[:frames]) for k, numbers in sent.items()}
    await window_settled(lambda: all(max(decoded(k), default=-1) >= max(w) + 2
                                     for k, w in window.items()), timeout)
    return {k: (w, decoded(k) & w) for k, w in window.items()}
