"""An in-memory world for the call engine: devices, a (lossy) network, fake media.

Each device is a :class:`CallMachine` plus a fake media layer that answers the
machine's media effects with small SDPs carrying that device's (fake) DTLS
fingerprint. A transport generation is "up" between two devices when each has
applied the other's description and each presented the certificate the other
expected -- the property the real media layer checks on every DTLS handshake.
When one side stops its media, the other side's transport goes down after
``media_timeout_ms`` (ICE consent freshness, RFC 7675, in the real world).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from sottovoce.calls.effects import (
    ApplyAnswer,
    CallState,
    CreateDescription,
    Effect,
    MediaRole,
    RecordMissedCall,
    SendSignal,
    StopMedia,
)
from sottovoce.calls.errors import CallError
from sottovoce.calls.machine import CallMachine
from sottovoce.calls.signals import Fingerprint, HashAlgorithm
from sottovoce.errors import DecodeError
from tests.conftest import deterministic_rng


def fake_sdp(fingerprint: Fingerprint, token: str) -> str:
    """A minimal SDP: one audio section, one host candidate, the given fingerprint."""
    return (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\n"
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        "a=rtpmap:96 opus/48000/2\r\n"
        f"a=ice-ufrag:{token}\r\n"
        "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
        f"a=fingerprint:{fingerprint.sdp_value()}\r\n"
    )


def token_of(sdp: str) -> str:
    return sdp.split("a=ice-ufrag:")[1].split("\r\n")[0]


@dataclass
class Transport:
    """One generation of one call as seen by one device's fake media layer."""

    local: str | None = None
    remote: str | None = None
    expected: tuple[Fingerprint, ...] = ()
    up: bool = False
    stopped: bool = False


@dataclass
class Device:
    user: str
    device: str
    machine: CallMachine
    fingerprint: Fingerprint
    transports: dict[tuple[bytes, int], Transport] = field(default_factory=dict)
    errors: list[Exception] = field(default_factory=list)
    missed: list[RecordMissedCall] = field(default_factory=list)
    log: list[Effect] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.device)


class World:
    """Devices, a clock and a network with optional loss, delay and duplication."""

    def __init__(
        self,
        *,
        seed: bytes = b"world",
        latency_ms: int = 20,
        media_delay_ms: int = 50,
        media_timeout_ms: int = 3000,
        drop: Callable[[SendSignal], bool] | None = None,
        delay: Callable[[SendSignal], int] | None = None,
        duplicate: Callable[[SendSignal], bool] | None = None,
        ordered_links: bool = False,
    ) -> None:
        """``ordered_links``: signals between the same two devices arrive in the order
        they were sent, however they are delayed -- as on the real relay, which carries
        a device's signals over its one WebSocket and relays them in order. Without it
        the network may also reorder them, which the engine must survive (typed errors,
        no state change) but cannot always turn into a call."""
        self.now = 1_000_000
        self._rng = deterministic_rng(seed)
        self.devices: dict[tuple[str, str], Device] = {}
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.latency_ms = latency_ms
        self.media_delay_ms = media_delay_ms
        self.media_timeout_ms = media_timeout_ms
        self._drop = drop
        self._delay = delay
        self._duplicate = duplicate
        self._ordered = ordered_links
        self._last_arrival: dict[tuple[tuple[str, str], tuple[str, str]], int] = {}
        self.sent: list[SendSignal] = []

    def add(self, user: str, device: str) -> Device:
        digest = hashlib.sha256(f"{user}/{device}".encode()).digest()
        d = Device(
            user=user,
            device=device,
            machine=CallMachine(user=user, device=device, rng=deterministic_rng(digest)),
            fingerprint=Fingerprint(algorithm=HashAlgorithm.SHA_256, digest=digest),
        )
        self.devices[d.key] = d
        return d

    def devices_of(self, user: str) -> list[str]:
        return [d for u, d in self.devices if u == user]

    # --- scheduling ---------------------------------------------------------------

    def at(self, when: int, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, action))

    def run(self, until_ms: int | None = None, *, max_steps: int = 100_000) -> None:
        """Process effects, deliveries and timers until nothing is left (or ``until_ms``)."""
        for _ in range(max_steps):
            self.pump()
            deadlines = [
                t for d in self.devices.values() if (t := d.machine.next_deadline()) is not None
            ]
            nxt = min([self._queue[0][0]] if self._queue else [], default=None)
            candidates = [t for t in ([nxt] if nxt is not None else []) + deadlines]
            if not candidates:
                return
            when = max(min(candidates), self.now)
            if until_ms is not None and when > until_ms:
                self.now = until_ms
                return
            self.now = when
            while self._queue and self._queue[0][0] <= self.now:
                _, _, action = heapq.heappop(self._queue)
                action()
                self.pump()
            for d in self.devices.values():
                d.machine.tick(self.now)
        raise AssertionError("the world did not settle")

    def advance(self, ms: int) -> None:
        self.run(until_ms=self.now + ms)

    # --- effects ------------------------------------------------------------------

    def pump(self) -> None:
        busy = True
        while busy:
            busy = False
            for d in list(self.devices.values()):
                for effect in d.machine.effects():
                    busy = True
                    d.log.append(effect)
                    self._effect(d, effect)

    def _effect(self, d: Device, effect: Effect) -> None:
        if isinstance(effect, SendSignal):
            self.sent.append(effect)
            if self._drop is not None and self._drop(effect):
                return
            copies = 2 if self._duplicate is not None and self._duplicate(effect) else 1
            for _ in range(copies):
                extra = self._delay(effect) if self._delay is not None else 0
                arrival = self.now + self.latency_ms + extra
                if self._ordered:
                    link = (d.key, (effect.user, effect.device))
                    arrival = max(arrival, self._last_arrival.get(link, arrival))
                    self._last_arrival[link] = arrival
                self.at(arrival, self._deliver(d, effect))
        elif isinstance(effect, CreateDescription):
            t = Transport(expected=effect.expected_fingerprints, remote=effect.remote_sdp)
            t.local = fake_sdp(d.fingerprint, f"{d.device}.{effect.generation}.{self._seq}")
            d.transports[(effect.call_id, effect.generation)] = t
            role = effect.role
            self.at(
                self.now + 1, lambda: self._local_ready(d, effect.call_id, effect.generation, role)
            )
        elif isinstance(effect, ApplyAnswer):
            t = d.transports.get((effect.call_id, effect.generation))
            if t is not None and not t.stopped:
                t.remote = effect.remote_sdp
                t.expected = effect.expected_fingerprints
                self.at(self.now + self.media_delay_ms, lambda: self._check_links(effect.call_id))
        elif isinstance(effect, StopMedia):
            for (call_id, _), t in d.transports.items():
                if call_id == effect.call_id and not t.stopped:
                    t.stopped = True
            self.at(self.now + self.media_timeout_ms, lambda: self._check_links(effect.call_id))
        elif isinstance(effect, RecordMissedCall):
            d.missed.append(effect)

    def _deliver(self, sender: Device, effect: SendSignal) -> Callable[[], None]:
        payload = effect.payload

        def deliver() -> None:
            target = self.devices.get((effect.user, effect.device))
            if target is None:
                return
            try:
                target.machine.receive(
                    self.now, from_user=sender.user, from_device=sender.device, data=payload
                )
            except (CallError, DecodeError) as exc:
                target.errors.append(exc)

        return deliver

    def _local_ready(self, d: Device, call_id: bytes, generation: int, role: MediaRole) -> None:
        t = d.transports.get((call_id, generation))
        if t is None or t.stopped or t.local is None:
            return
        d.machine.local_description(
            self.now, call_id=call_id, generation=generation, role=role, sdp=t.local
        )
        if role is MediaRole.ANSWER:
            self.at(self.now + self.media_delay_ms, lambda: self._check_links(call_id))

    def _check_links(self, call_id: bytes) -> None:
        """Bring transports up whose two ends match, and down those whose peer left."""
        ends = [
            (d, gen, t)
            for d in self.devices.values()
            for (cid, gen), t in d.transports.items()
            if cid == call_id
        ]
        for d, gen, t in ends:
            partner = None
            if t.local and t.remote and not t.stopped:
                for e, egen, u in ends:
                    if (
                        e is not d
                        and egen == gen
                        and not u.stopped
                        and u.local == t.remote
                        and u.remote == t.local
                        and e.fingerprint in t.expected
                        and d.fingerprint in u.expected
                    ):
                        partner = e
            if partner is not None and not t.up:
                t.up = True
                d.machine.media_up(self.now, call_id=call_id, generation=gen)
            elif partner is None and t.up:
                t.up = False
                if not t.stopped:
                    d.machine.media_down(self.now, call_id=call_id, generation=gen)
            self.pump()


def state(d: Device) -> CallState:
    return d.machine.state
