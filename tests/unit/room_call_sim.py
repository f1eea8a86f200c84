"""Room calls in memory: a room of devices, its totally ordered message stream, and a
RoomCall engine per device.

    room = Room(["alice/a1", "bob/b1", "carol/c1"])
    a = room.start("alice/a1")             # RoomCall.start, signals queued
    room.join("bob/b1"); room.pump()       # every signal reaches every engine, in order
    room.participants("bob/b1")            # ("alice","a1"), ("bob","b1")

The room's MLS layer is not simulated: a signal's sender is the device that sent
it (what the room's MLS layer authenticates), and the room view is the devices'
signature keys. ``room.drop`` filters signals on their way (a quiet committer);
``room.now_ms`` is the clock every input gets.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from sottovoce.calls.errors import CallError
from sottovoce.calls.media_keys import CallKeys, Device
from sottovoce.calls.room_call import CALL_MLS_SUITE, RoomCall
from sottovoce.calls.room_effects import EpochChanged, RoomCallEffect, SendRoomSignal
from sottovoce.calls.room_signals import CallMode
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import DecodeError, RemoteError

NOW = 1_800_000_000_000


def dev(name: str) -> Device:
    user, device = name.split("/")
    return (user, device)


@dataclass
class Member:
    device: Device
    signing_key: SigningKey
    call: RoomCall | None = None
    effects: list[RoomCallEffect] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    keys: CallKeys = field(default_factory=CallKeys)


@dataclass
class Room:
    names: list[str]
    mode: CallMode = CallMode.SFU
    now_ms: int = NOW
    members: dict[Device, Member] = field(default_factory=dict)
    outsiders: dict[Device, Member] = field(default_factory=dict)
    queue: list[tuple[Device, bytes]] = field(default_factory=list)
    log: list[tuple[Device, bytes]] = field(default_factory=list)
    drop: Callable[[Device, bytes], bool] | None = None
    #: The room's MLS cipher suite, which its calls' groups run in.
    suite: int = CALL_MLS_SUITE

    def __post_init__(self) -> None:
        suite = cipher_suite(self.suite)
        for name in self.names:
            d = dev(name)
            self.members[d] = Member(d, suite.generate_signing_key(secrets.token_bytes))

    def view(self) -> dict[Device, bytes]:
        return {d: m.signing_key.verify_key.data for d, m in self.members.items()}

    def member(self, name: str) -> Member:
        d = dev(name)
        return self.members.get(d) or self.outsiders[d]

    def call(self, name: str) -> RoomCall:
        call = self.member(name).call
        assert call is not None
        return call

    def start(self, name: str) -> RoomCall:
        m = self.member(name)
        m.call = RoomCall.start(
            room_id="room1",
            mode=self.mode,
            me=m.device,
            signing_key=m.signing_key,
            rng=secrets.token_bytes,
            now_ms=self.now_ms,
            suite=self.suite,
        )
        self.collect(m)
        return m.call

    def join(self, name: str, call_id: bytes, **kw: object) -> RoomCall:
        m = self.member(name)
        m.call = RoomCall.join(
            room_id="room1",
            call_id=call_id,
            mode=self.mode,
            me=m.device,
            signing_key=m.signing_key,
            rng=secrets.token_bytes,
            now_ms=self.now_ms,
            **{"suite": self.suite, **kw},  # type: ignore[arg-type]
        )
        self.collect(m)
        return m.call

    def remove_from_room(self, name: str) -> None:
        d = dev(name)
        self.outsiders[d] = self.members.pop(d)
        for m in [*list(self.members.values()), self.outsiders[d]]:
            if m.call is not None:
                m.call.room_changed(self.view(), self.now_ms)
                self.collect(m)

    def collect(self, m: Member) -> None:
        assert m.call is not None
        for effect in m.call.effects():
            m.effects.append(effect)
            if isinstance(effect, SendRoomSignal):
                if self.drop is None or not self.drop(m.device, effect.payload):
                    self.queue.append((m.device, effect.payload))
            elif isinstance(effect, EpochChanged):
                m.keys.begin_epoch(effect.keys, self.now_ms)

    def pump(self, limit: int = 1000) -> None:
        """Deliver queued signals, in order, to every device with an engine (the
        room's stream reaches every member; a device removed from the room gets no more).
        Effects of direct calls on the engines (``leave()``, ...) are collected first."""
        for m in [*self.members.values(), *self.outsiders.values()]:
            if m.call is not None:
                self.collect(m)
        for _ in range(limit):
            if not self.queue:
                return
            sender, payload = self.queue.pop(0)
            if sender not in self.members:
                continue  # the server refuses sends from a device no longer in the room
            self.log.append((sender, payload))
            for m in self.members.values():
                if m.call is None:
                    continue
                try:
                    m.call.receive(payload, sender=sender, room=self.view(), now_ms=self.now_ms)
                except (CallError, DecodeError, RemoteError) as exc:
                    m.errors.append(exc)
                self.collect(m)
        raise AssertionError("signals kept coming")

    def tick(self, ms: int) -> None:
        self.now_ms += ms
        for m in self.members.values():
            if m.call is not None:
                m.call.tick(self.view(), self.now_ms)
                self.collect(m)

    def participants(self, name: str) -> tuple[Device, ...]:
        return self.call(name).participants()

    def effects_of(self, name: str, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.member(name).effects if isinstance(e, kind)]
