"""Helpers for call tests: a real coturn on 127.0.0.1, and devices wired in memory.

    turn = Coturn(tmp_path).start()       # turnserver -c <tmp config>, loopback only
    turn.server(ttl_s=600)                # a TurnServer with fresh REST credentials
    net = Net(); alice = net.device("alice", "a1", options)   # CallControllers
    net.tamper = lambda sent: ...         # rewrite or drop signals in flight
    await write_clip(path, seconds=2)     # a WebM of numbered frames and a tone

Signalling here is in memory and not encrypted: the engine is the boundary
under test. Every signal is recorded so a test can check that no SDP ever named
an address other than 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest

from sottovoce.calls import sdp as sdp_text
from sottovoce.calls.effects import CallState, RecordMissedCall, SendSignal
from sottovoce.calls.errors import CallError
from sottovoce.calls.signals import (
    Answer,
    CallSignal,
    IceRestartAnswer,
    IceRestartOffer,
    Offer,
)
from sottovoce.client.calls import CallController, CallOptions, TurnServer
from sottovoce.client.calls.sources import PatternTrack, ToneTrack
from sottovoce.errors import DecodeError
from sottovoce.secret import Secret
from sottovoce.server.turn import TurnConfig, turn_credentials
from tests.integration.serverproc import worker_index


def _ephemeral_low() -> int:
    """The first port of the kernel's range for ``bind(port 0)`` (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_range(count: int, *, tcp: bool = False) -> int:
    """The first of ``count`` consecutive UDP ports (``tcp``: and TCP ports) free now.

    Picked below the kernel's ephemeral range, so that no socket bound to port 0 (an
    ICE candidate, a server of another test) lands in it before its owner (Janus's
    RTP ports, coturn's relays) binds it; and in a slice of that span of this
    pytest-xdist worker's own, so that two workers never pick overlapping ranges.
    """
    low, high = 15_000, _ephemeral_low()
    if high - low < 4 * count:  # a kernel range reaching down low: anywhere, at random
        low, high = 20_000, 50_000
    kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM) if tcp else (socket.SOCK_DGRAM,)
    index, workers = worker_index()
    width = (high - low) // workers
    low += index * width
    for _ in range(200):
        start = low + secrets.randbelow(max(width - count, 1))
        try:
            socks = []
            for port in range(start, start + count):
                for kind in kinds:
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return start
    raise RuntimeError("no free port range")


def _stun_binding_answered(port: int) -> bool:
    """RFC 8489 §5: a Binding request (magic cookie 0x2112A442) gets any answer."""
    request = bytes.fromhex("000100002112a442") + secrets.token_bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(request, ("127.0.0.1", port))
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    return data[4:8] == request[4:8]


#: coturn's relay ports (one per allocation).
RELAY_PORTS = 64


class Coturn:
    """A coturn of our own, listening and relaying on 127.0.0.1 only."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The relay ports and, right after them, the listening port (UDP and TCP: coturn
        # listens on both), all below the kernel's ephemeral range: a port picked by
        # bind(port 0) could be any test's client connection's local port by the time
        # coturn binds it, which then fails (EADDRINUSE) and never answers.
        self._low = free_port_range(RELAY_PORTS + 1, tcp=True)
        self.port = self._low + RELAY_PORTS
        self.secret = Secret(secrets.token_hex(16).encode())
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "turn.log"

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def start(self) -> Coturn:
        binary = shutil.which("turnserver")
        if binary is None:
            pytest.skip("coturn is not installed (apt-get install coturn; .ci/services does)")
        config = self.workdir / "turnserver.conf"
        config.write_text("\n".join([*self.config_lines(self._low), ""]))
        self.proc = subprocess.Popen(
            [binary, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
            env={"PATH": os.environ.get("PATH", "")},
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"turnserver exited ({self.proc.returncode}); see {self.log_path}"
                )
            if _stun_binding_answered(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"turnserver did not answer on 127.0.0.1:{self.port}")

    def config_lines(self, low: int) -> list[str]:
        """coturn's configuration: relaying on ports ``low`` to ``low + RELAY_PORTS - 1``."""
        return [
            "listening-ip=127.0.0.1",
            "relay-ip=127.0.0.1",
            f"listening-port={self.port}",
            f"min-port={low}",
            f"max-port={low + RELAY_PORTS - 1}",
            "realm=sottovoce.test",
            "use-auth-secret",
            f"static-auth-secret={self.secret.expose().decode()}",
            "fingerprint",
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-tcp-relay",
            "no-multicast-peers",
            # Tests only: both peers and the relay share 127.0.0.1.
            "allow-loopback-peers",
            "no-software-attribute",
            f"log-file={self.log_path}",
            "simple-log",
            f"pidfile={self.workdir / 'turnserver.pid'}",
            f"userdb={self.workdir / 'turndb'}",
        ]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def server(self, *, now_s: int | None = None, secret: Secret | None = None) -> TurnServer:
        """Credentials as the sottovoce server issues them (``now_s`` in the past: expired)."""
        config = TurnConfig(urls=(self.url,), secret=secret or self.secret)
        creds = turn_credentials(
            config, now_s=int(time.time()) if now_s is None else now_s, rng=secrets.token_bytes
        )
        return TurnServer(url=self.url, username=creds.username, credential=creds.password)


@dataclass
class Net:
    """Call controllers of several devices, their signals carried in memory."""

    latency_s: float = 0.005
    devices: dict[tuple[str, str], CallController] = field(default_factory=dict)
    sent: list[tuple[str, str, SendSignal]] = field(default_factory=list)
    errors: list[tuple[str, Exception]] = field(default_factory=list)
    missed: list[RecordMissedCall] = field(default_factory=list)
    #: (sender user, sender device, effect) → the bytes to deliver, or None to drop.
    tamper: Callable[[str, str, SendSignal], bytes | None] | None = None

    def device(
        self,
        user: str,
        device: str,
        options: CallOptions,
        turn_servers: Callable[[], Awaitable[tuple[TurnServer, ...]]] | None = None,
    ) -> CallController:
        async def send(batch: list[SendSignal]) -> None:
            for effect in batch:
                self.sent.append((user, device, effect))
                data = effect.payload if self.tamper is None else self.tamper(user, device, effect)
                if data is not None:
                    asyncio.get_running_loop().call_later(
                        self.latency_s, self._deliver, user, device, effect, data
                    )

        async def record_missed(effect: RecordMissedCall) -> None:
            self.missed.append(effect)

        ctl = CallController(
            user=user,
            device=device,
            send_signals=send,
            record_missed=record_missed,
            options=options,
            turn_servers=turn_servers,
        )
        self.devices[(user, device)] = ctl
        return ctl

    def _deliver(self, user: str, device: str, effect: SendSignal, data: bytes) -> None:
        target = self.devices.get((effect.user, effect.device))
        if target is None:
            return
        try:
            target.receive(from_user=user, from_device=device, data=data)
        except (CallError, DecodeError) as exc:
            self.errors.append((effect.device, exc))

    def devices_of(self, user: str) -> list[str]:
        return [d for u, d in self.devices if u == user]

    def signals(self, kind: type[CallSignal]) -> list[CallSignal]:
        return [e.signal for _, _, e in self.sent if isinstance(e.signal, kind)]

    def sdps(self) -> list[str]:
        out = []
        for _, _, e in self.sent:
            if isinstance(e.signal, Offer | Answer | IceRestartOffer | IceRestartAnswer):
                out.append(e.signal.sdp)
        return out

    def assert_loopback_only(self) -> None:
        """No description any device handed out named an address but 127.0.0.1."""
        sdps = self.sdps()
        assert sdps, "no SDP was exchanged"
        for text in sdps:
            addresses = {c.address for c in sdp_text.candidates(text)}
            addresses |= {c.related_address for c in sdp_text.candidates(text) if c.related_address}
            addresses |= set(sdp_text.connection_addresses(text))
            assert addresses <= {"127.0.0.1", "0.0.0.0"}, addresses

    async def close(self) -> None:
        for ctl in self.devices.values():
            await ctl.close()


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.01
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


async def stops_growing(count: Callable[[], int], quiet: float, timeout: float = 30.0) -> None:
    """``count()`` stays the same for ``quiet`` seconds, within ``timeout``: what was in
    flight when something stopped has arrived, however late a loaded machine is."""
    deadline = asyncio.get_running_loop().time() + timeout
    before = count()
    while True:
        await asyncio.sleep(quiet)
        now = count()
        if now == before:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still growing after {timeout} s: {before} -> {now}")
        before = now


async def wait_state(ctl: CallController, state: CallState, timeout: float = 10.0) -> None:
    await wait_for(lambda: ctl.state is state, timeout)


async def write_clip(path: Path, *, seconds: int) -> None:
    """``seconds`` of pattern video (320x240, 15 fps, numbered from 0) and tone, as WebM
    (VP8 + Opus): a media file whose frames a receiver can tell apart by number."""
    video, audio = PatternTrack(fps=15), ToneTrack()
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libvpx", rate=15)
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        aus = out.add_stream("libopus", rate=48000)
        for _ in range(15 * seconds):
            for packet in vs.encode(await video.recv()):
                out.mux(packet)
        for _ in range(50 * seconds):
            for packet in aus.encode(await audio.recv()):
                out.mux(packet)
        for stream in (vs, aus):
            for packet in stream.encode(None):
                out.mux(packet)
