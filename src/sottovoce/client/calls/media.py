"""The media of one call: aiortc peer connections for P2P DTLS-SRTP.

    MediaSession ── generation 0: RTCPeerConnection ── DTLS-SRTP ──► peer
         │          generation 1: RTCPeerConnection (ICE restart: new transport,
         │                        same certificate, same fingerprint checks)
         └─ sources (tone/pattern, file, devices) ── MediaRelay ── one proxy per connection

Every connection carries three m-sections, in this order: audio (Opus,
constant bitrate), camera video (VP8) and screen-share video (VP8), so
turning the camera or the screen on or off never renegotiates.

What this layer enforces, beside aiortc's own checks:

* ICE servers are always given explicitly (aiortc falls back to a public
  STUN server when none are): no server, or only the call's TURN servers.
* Relay-only: the description we hand out holds relay candidates only (a
  host or server-reflexive one would reveal our address to the peer); when
  the TURN server gave none, it is asked why (refused credentials or no
  answer) and the call fails with that error.
* Loopback: only 127.0.0.1 is gathered (tests and one-machine demos).
* The RFC 6464 audio-level header extension is removed from every offer and
  answer, so no level travels in the clear; Opus is constant-bitrate so
  packet sizes say nothing about speech either; muting sends silence.
* DTLS: the peer's certificate must match the fingerprints it signalled end
  to end; checked on every connection (ICE restarts included) on top of
  aiortc's check against the SDP. A mismatch fails that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.codecs.opus import OpusEncoder
from aiortc.contrib.media import MediaRecorder, MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.sdp import candidate_from_sdp
from aiortc.stats import (
    RTCInboundRtpStreamStats,
    RTCRemoteInboundRtpStreamStats,
    RTCTransportStats,
)

# The module itself, not through the package: the package imports this module.
import sottovoce.client.calls.hooks as hooks
from sottovoce.calls import sdp as sdp_text
from sottovoce.calls.signals import Fingerprint
from sottovoce.calls.turn import parse_turn_url
from sottovoce.client.calls.errors import (
    CandidateLeak,
    FingerprintMismatch,
    MediaError,
    MediaSourceUnavailable,
    TurnError,
)
from sottovoce.client.calls.sources import (
    MediaSpec,
    PatternTrack,
    SilenceGate,
    Sources,
    open_sources,
    read_frame_number,
)
from sottovoce.errors import UsageError
from sottovoce.secret import Secret

log = logging.getLogger(__name__)

#: Opus at a constant 32 kbit/s: good speech, and every 20 ms packet the same size.
OPUS_CBR_BITRATE = 32_000
#: How long the TURN probe waits for an answer when no relay candidate was gathered.
TURN_PROBE_TIMEOUT_S = 3.0
ROLES = ("audio", "camera", "screen")  # the m-sections, in order
#: A live connection is looked at every second; one that received nothing for this
#: many looks in a row lost its path (a network change). Every sender of the peer
#: sends RTCP every 0.5-1.5 s, muted or not, so a quiet second is never a quiet call;
#: ICE consent freshness (RFC 7675) would take some 30 s to notice, and aiortc then
#: reports the connection "closed", as after the peer's hang-up.
LOST_PATH_CHECKS = 5


class CbrOpusEncoder(OpusEncoder):
    """aiortc's Opus encoder in constant-bitrate mode (libopus ``vbr=off``)."""

    def __init__(self) -> None:
        super().__init__()
        self.codec.bit_rate = OPUS_CBR_BITRATE
        self.codec.options = {"application": "voip", "vbr": "off"}


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnServer:
    """One TURN server and the short-lived credentials the sottovoce server issued for it."""

    url: str
    username: str
    credential: Secret

    def __post_init__(self) -> None:
        parse_turn_url(self.url)


@dataclass(frozen=True, slots=True, kw_only=True)
class IceConfig:
    """How a call finds its path. ``relay_only``: ICE transport policy "relay" (RFC 8829
    §4.1.1), so the peer never learns this device's address. ``loopback``: gather
    127.0.0.1 only."""

    turn: tuple[TurnServer, ...] = ()
    relay_only: bool = False
    loopback: bool = False

    def rtc_configuration(self) -> RTCConfiguration:
        if self.relay_only and not self.turn:
            raise UsageError("relay-only calls need a TURN server")
        # Always a list, even an empty one: with iceServers=None aiortc would use a
        # public STUN server and tell it our address.
        servers = [
            RTCIceServer(
                urls=t.url, username=t.username, credential=t.credential.expose().decode("ascii")
            )
            for t in self.turn
        ]
        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        # max-bundle: one transport for all three sections from the start. aiortc's
        # default ("balanced") leaves a second video section on a transport that
        # BUNDLE then discards, so screen share would never flow; one transport is
        # also one set of candidates to gather and one DTLS handshake to check.
        return RTCConfiguration(
            iceServers=servers, iceTransportPolicy=policy, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaUp:
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaDown:
    generation: int
    error: MediaError | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaProblem:
    """A track or sink failed (the call may go on without it)."""

    where: str
    error: str


MediaEvent = MediaUp | MediaDown | MediaProblem


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStats:
    """What the in-call line shows."""

    audio_codec: str | None
    video_codec: str | None
    send_kbps: float
    recv_kbps: float
    rtt_ms: float | None
    loss_pct: float | None
    relayed: bool | None
    frames_received: dict[str, int]


@dataclass(slots=True)
class Sink:
    """What arrived on one of the peer's tracks."""

    frames: int = 0
    numbers: set[int] = field(default_factory=set)
    first_frame_at: float | None = None

    def count(self, frame: object, now: float) -> None:
        """One decoded frame at loop time ``now`` (a test-pattern frame by its number too)."""
        if isinstance(frame, av.VideoFrame):
            number = read_frame_number(frame)
            if number is not None:
                self.numbers.add(number)
        self.frames += 1
        if self.first_frame_at is None:
            self.first_frame_at = now


def report_failure(
    on_problem: Callable[[MediaProblem], None] | None, where: str, exc: BaseException
) -> None:
    """A source, track or sink failed: logged and reported by the error's type only."""
    log.warning("call media: %s failed: %s", where, type(exc).__name__)
    if on_problem is not None:
        on_problem(MediaProblem(where=where, error=type(exc).__name__))


async def consume(
    track: MediaStreamTrack,
    sink: Sink,
    role: str,
    on_problem: Callable[[MediaProblem], None] | None,
    feed: Callable[[av.AudioFrame | av.VideoFrame], Awaitable[None]] | None = None,
) -> None:
    """Count every frame of a received ``track`` into ``sink`` (and hand each audio or
    video frame to ``feed``) until the track ends."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        try:
            sink.count(frame, loop.time())
            if feed is not None and isinstance(frame, av.AudioFrame | av.VideoFrame):
                await feed(frame)
        except Exception as exc:  # a broken sink must not silence the track unseen
            report_failure(on_problem, role, exc)
            return


def add_sections(pc: RTCPeerConnection, direction: str) -> list[RTCRtpTransceiver]:
    """The call's three m-sections, in the order of :data:`ROLES`, each preferring
    Opus or VP8 (and its retransmissions) over every other codec."""
    transceivers = []
    for role in ROLES:
        kind = "audio" if role == "audio" else "video"
        transceiver = pc.addTransceiver(kind, direction=direction)
        wanted = "audio/opus" if kind == "audio" else "video/vp8"
        caps = RTCRtpSender.getCapabilities(kind).codecs
        transceiver.setCodecPreferences(
            [c for c in caps if c.mimeType.lower() in (wanted, f"{kind}/rtx")]
        )
        transceivers.append(transceiver)
    return transceivers


async def set_local(pc: RTCPeerConnection, sdp: str, kind: str, *, loopback: bool) -> str:
    """Set our description, without the audio level, and return it as set (on a
    loopback call, with nothing but 127.0.0.1 gathered)."""
    guard = hooks.loopback_only() if loopback else contextlib.nullcontext()
    with guard:
        await pc.setLocalDescription(RTCSessionDescription(clean_sdp(sdp), kind))
    return pc.localDescription.sdp


def check_description(sdp: str, *, loopback: bool) -> None:
    """What every description this device hands out must hold: no RFC 6464 audio
    level, and on a loopback call no address but 127.0.0.1."""
    if sdp_text.AUDIO_LEVEL_URI in sdp_text.header_extensions(sdp):
        raise CandidateLeak("the audio-level header extension survived")
    if loopback:
        check_loopback(sdp)


def check_loopback(sdp: str) -> None:
    """A description on a loopback call (ours or the other end's) names no address but
    127.0.0.1."""
    candidates = sdp_text.candidates(sdp)
    addresses = {c.address for c in candidates} | set(sdp_text.connection_addresses(sdp))
    if addresses - {hooks.LOOPBACK, "0.0.0.0"}:  # noqa: S104 -- an SDP "no address"
        raise CandidateLeak("a loopback call saw another address")


@dataclass(slots=True)
class _Generation:
    number: int
    pc: RTCPeerConnection
    expected: frozenset[Fingerprint] = frozenset()
    up: bool = False
    done: bool = False
    tracks: dict[str, MediaStreamTrack | None] = field(default_factory=dict)
    consumers: list[asyncio.Task[None]] = field(default_factory=list)


class MediaSession:
    """The media of one call on this device (see the module docstring)."""

    def __init__(
        self,
        *,
        spec: MediaSpec,
        ice: IceConfig,
        on_event: Callable[[MediaEvent], None],
        record_to: Path | None = None,
    ) -> None:
        self.spec = spec
        self.ice = ice
        self._on_event = on_event
        self._certificate = RTCCertificate.generateCertificate()
        self.fingerprints = hooks.local_fingerprints(self._certificate)
        self._sources: Sources = open_sources(
            spec, on_error=partial(report_failure, on_event, "source")
        )
        self._relay = MediaRelay()
        self._generations: dict[int, _Generation] = {}
        self._closed = False
        self.sinks: dict[str, Sink] = {role: Sink() for role in ROLES}
        self.camera_on = spec.video and self._sources.camera is not None
        self.screen_on = False
        self._recorder: _Recorder | None = _Recorder(record_to) if record_to else None
        self._last_stats: tuple[float, int, int] | None = None
        self.turn_error: TurnError | None = None
        #: Types of the candidates the peer offered (relay only: it hid its addresses).
        self.peer_candidate_types: set[str] = set()
        self._tasks: set[asyncio.Future[None]] = set()

    # --- descriptions -----------------------------------------------------------------

    async def create_offer(self, generation: int) -> str:
        """A new connection for ``generation`` and its offer (ours is the first SDP)."""
        gen = await self._new_generation(generation)
        add_sections(gen.pc, "sendrecv")
        self._attach(gen)
        offer = await gen.pc.createOffer()
        return await self._set_local(gen, offer.sdp, "offer")

    async def create_answer(
        self, generation: int, remote_sdp: str, expected: tuple[Fingerprint, ...]
    ) -> str:
        """A new connection for ``generation`` that answers ``remote_sdp``."""
        gen = await self._new_generation(generation)
        gen.expected = self._check_remote(remote_sdp, expected)
        pc = gen.pc
        await pc.setRemoteDescription(RTCSessionDescription(clean_sdp(remote_sdp), "offer"))
        await self._add_section_candidates(pc, remote_sdp)
        transceivers = pc.getTransceivers()
        if [t.kind for t in transceivers] != ["audio", "video", "video"]:
            raise MediaError("the offer does not have the call's audio, camera and screen sections")
        for t in transceivers:
            t.direction = "sendrecv"
        self._attach(gen)
        answer = await pc.createAnswer()
        return await self._set_local(gen, answer.sdp, "answer")

    async def apply_answer(
        self, generation: int, remote_sdp: str, expected: tuple[Fingerprint, ...]
    ) -> None:
        gen = self._live(generation)
        if gen is None:
            return
        gen.expected = self._check_remote(remote_sdp, expected)
        await gen.pc.setRemoteDescription(RTCSessionDescription(clean_sdp(remote_sdp), "answer"))
        await self._add_section_candidates(gen.pc, remote_sdp)

    async def add_candidates(
        self, generation: int, candidates: tuple[tuple[str, str], ...], complete: bool
    ) -> None:
        """Trickled candidates (RFC 8838) from the peer; aiortc gathers ours all at once."""
        gen = self._live(generation)
        if gen is None:
            return
        mids = [t.mid for t in gen.pc.getTransceivers()]
        for mid, line in candidates:
            candidate = candidate_from_sdp(line.removeprefix("candidate:"))
            self.peer_candidate_types.add(candidate.type)
            candidate.sdpMid = mid
            if mid in mids:
                candidate.sdpMLineIndex = mids.index(mid)
            if self.ice.loopback and candidate.ip != hooks.LOOPBACK:
                continue  # a loopback call never sends a packet anywhere else
            await gen.pc.addIceCandidate(candidate)
        if complete:
            await gen.pc.addIceCandidate(None)

    async def _add_section_candidates(self, pc: RTCPeerConnection, remote_sdp: str) -> None:
        """The remote description's candidates, added to the transport once more.

        With BUNDLE, aiortc keeps the candidates of only the last m-section that
        shares the transport. A browser with max-bundle lists its candidates in
        the first m-section only (RFC 9143 §7.1.1: the others are bundle-only), so
        aiortc would pair nothing. A direct call still connects (the browser's
        checks reach us and are answered as peer-reflexive), but through TURN the
        relay drops them: no permission was made for a peer we never sent to, and
        the call fails. Added by mid here, duplicates are ignored (aioice)."""
        mids = {t.mid for t in pc.getTransceivers()}
        complete = False
        for mid, lines, end in sdp_text.section_candidates(remote_sdp):
            if mid not in mids:
                continue
            complete = complete or end
            for line in lines:
                candidate = candidate_from_sdp(line.removeprefix("candidate:"))
                if self.ice.loopback and candidate.ip != hooks.LOOPBACK:
                    continue
                candidate.sdpMid = mid
                await pc.addIceCandidate(candidate)
        if complete:
            await pc.addIceCandidate(None)

    def _live(self, generation: int) -> _Generation | None:
        """The connection of ``generation``, unless it is gone or closing (a late signal)."""
        gen = self._generations.get(generation)
        return None if gen is None or gen.done else gen

    def _check_remote(
        self, remote_sdp: str, expected: tuple[Fingerprint, ...]
    ) -> frozenset[Fingerprint]:
        # The engine checked this already; the media layer does not trust its caller.
        sdp_text.check_fingerprints(remote_sdp, expected)
        self.peer_candidate_types.update(c.type for c in sdp_text.candidates(remote_sdp))
        return frozenset(expected)

    async def _new_generation(self, number: int) -> _Generation:
        if self._closed:
            raise MediaError("the call's media is closed")
        old = self._generations.pop(number, None)
        if old is not None:
            await self._close_generation(old)
        pc = RTCPeerConnection(self.ice.rtc_configuration())
        hooks.use_certificate(pc, self._certificate)
        gen = _Generation(number=number, pc=pc)
        self._generations[number] = gen

        @pc.on("connectionstatechange")
        def _changed() -> None:
            self._spawn(self._on_state(gen))

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            self._on_track(gen, track)

        return gen

    async def _set_local(self, gen: _Generation, sdp: str, kind: str) -> str:
        local = await set_local(gen.pc, sdp, kind, loopback=self.ice.loopback)
        await self._check_local(local)
        codecs = sdp_text.codecs(local)
        if codecs.get("audio:0", "opus").lower() != "opus":
            raise MediaError("the peer does not offer Opus audio")
        return local

    async def _check_local(self, local: str) -> None:
        """Refuse to hand out a description that breaks this call's policy."""
        check_description(local, loopback=self.ice.loopback)
        if sdp_text.fingerprints(local) != self.fingerprints:
            raise CandidateLeak("the description does not carry the call's certificate")
        candidates = sdp_text.candidates(local)
        if self.ice.relay_only:
            if any(c.type != "relay" for c in candidates):
                raise CandidateLeak("a relay-only call gathered a host or reflexive candidate")
            if any(c.related_address not in (None, "0.0.0.0", "::") for c in candidates):  # noqa: S104
                raise CandidateLeak("a relay candidate names a local address")
            if not candidates:
                await self._explain_no_relay()
        elif self.ice.turn and not any(c.type == "relay" for c in candidates):
            # Not fatal (a direct path may do), but say why TURN did not help.
            try:
                await self._explain_no_relay()
            except TurnError as exc:
                self.turn_error = exc
                self._on_event(MediaProblem(where="turn", error=str(exc)))

    async def _explain_no_relay(self) -> None:
        server = self.ice.turn[0]
        _, host, port, transport = parse_turn_url(server.url)
        await hooks.probe_turn(
            host=host.strip("[]"),
            port=port,
            transport=transport,
            username=server.username,
            password=server.credential.expose().decode("ascii"),
            timeout_s=TURN_PROBE_TIMEOUT_S,
        )
        raise TurnError("the TURN server gave no relay candidate")

    # --- tracks -------------------------------------------------------------------------

    def _attach(self, gen: _Generation) -> None:
        """Give this connection's senders their tracks: the (mutable) audio, and a
        switch per video source that turns the camera or screen on and off."""
        senders = [t.sender for t in gen.pc.getTransceivers()]
        hooks.use_encoder(senders[0], CbrOpusEncoder())
        audio = self._sources.audio
        tracks: dict[str, MediaStreamTrack | None] = {
            "audio": self._relay.subscribe(audio, buffered=True) if audio else None,
            "camera": SwitchTrack(self._relay, self._sources.camera, on=self.camera_on),
            "screen": SwitchTrack(self._relay, self._sources.screen, on=self.screen_on),
        }
        gen.tracks = tracks
        for role, sender in zip(ROLES, senders, strict=True):
            sender.replaceTrack(tracks[role])

    def set_local_media(self, *, audio_muted: bool, camera_on: bool, screen_on: bool) -> None:
        """Mute sends silence (same packets, no speech); camera and screen stop or start."""
        if camera_on and self._sources.camera is None:
            raise MediaSourceUnavailable("this call has no camera source")
        if screen_on and self._sources.screen is None:
            raise MediaSourceUnavailable("this call has no screen-share source")
        if isinstance(self._sources.audio, SilenceGate):
            self._sources.audio.muted = audio_muted
        self.camera_on, self.screen_on = camera_on, screen_on
        for gen in self._generations.values():
            for role, on in (("camera", camera_on), ("screen", screen_on)):
                switch = gen.tracks.get(role)
                if isinstance(switch, SwitchTrack):
                    switch.set(on)

    def _on_track(self, gen: _Generation, track: MediaStreamTrack) -> None:
        transceivers = gen.pc.getTransceivers()
        role = next(
            (r for r, t in zip(ROLES, transceivers, strict=False) if t.receiver.track is track),
            None,
        )
        if role is None:
            return
        recorder = self._recorder if role != "screen" else None
        feed = None if recorder is None else partial(recorder.feed, role)
        gen.consumers.append(
            asyncio.ensure_future(consume(track, self.sinks[role], role, self._on_event, feed))
        )

    # --- connection state ---------------------------------------------------------------

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_state(self, gen: _Generation) -> None:
        if gen.done or self._generations.get(gen.number) is not gen:
            return
        state = gen.pc.connectionState
        if state == "connected" and not gen.up:
            mismatch = self._verify_peer(gen)
            if mismatch is not None:
                await self._fail(gen, mismatch)
                return
            gen.up = True
            gen.consumers.append(asyncio.ensure_future(self._watch(gen)))
            for number, other in list(self._generations.items()):
                if number < gen.number:
                    del self._generations[number]
                    await self._close_generation(other)
            self._on_event(MediaUp(generation=gen.number))
        elif state == "failed":
            # A path lost once up ends "closed", as does the peer's hang-up (its
            # DTLS close_notify, ahead of the signal): _watch tells a lost path.
            await self._fail(gen, self._verify_peer(gen, after_failure=True))

    async def _watch(self, gen: _Generation) -> None:
        """Report a live connection that stopped receiving anything as down (see
        ``LOST_PATH_CHECKS``): the call then restarts ICE on a new path."""
        last, quiet = -1, 0
        while not gen.done:
            await asyncio.sleep(1.0)
            try:
                report = await gen.pc.getStats()
                received = sum(
                    s.bytesReceived for s in report.values() if isinstance(s, RTCTransportStats)
                )
            except Exception:  # a connection aiortc closed: nothing more arrives
                received = last
            quiet = quiet + 1 if received == last else 0
            last = received
            if quiet >= LOST_PATH_CHECKS:
                log.warning("call media: generation %d receives nothing", gen.number)
                self._spawn(self._fail(gen, None))
                return

    def _verify_peer(self, gen: _Generation, *, after_failure: bool = False) -> MediaError | None:
        """The certificate each DTLS handshake presented must be the signalled one."""
        transports = hooks.dtls_transports(gen.pc)
        for transport in transports:
            presented = hooks.peer_certificate_fingerprints(transport)
            if presented is None:
                if after_failure:
                    continue
                return FingerprintMismatch("no peer certificate after the DTLS handshake")
            if not gen.expected or not gen.expected <= presented:
                return FingerprintMismatch(
                    "the peer's DTLS certificate is not the one it signalled end to end"
                )
        return None

    async def _fail(self, gen: _Generation, error: MediaError | None) -> None:
        if gen.done:
            return  # closed already (by us, or by the other report of its end)
        if error is not None:
            log.warning("call media: generation %d failed: %s", gen.number, error.code)
        self._generations.pop(gen.number, None)
        await self._close_generation(gen)
        self._on_event(MediaDown(generation=gen.number, error=error))

    async def _close_generation(self, gen: _Generation) -> None:
        gen.done = True
        for track in gen.tracks.values():
            if track is not None:
                track.stop()
        await gen.pc.close()
        for task in gen.consumers:
            task.cancel()

    # --- stats and recording --------------------------------------------------------------

    def path(self) -> tuple[str, str] | None:
        """The candidate types (local, remote) of the pair ICE selected, once connected."""
        pc = self.current()
        pair = hooks.selected_pair(pc) if pc is not None else None
        return None if pair is None else (pair[0].type, pair[1].type)

    def camera_frames_sent(self) -> int | None:
        """Numbered test-pattern frames sent so far (a synthetic camera only, else ``None``)."""
        track = self._sources.camera
        return track.sent if isinstance(track, PatternTrack) else None

    def recorded_video_frames(self) -> int:
        """Camera frames handed to the recording so far (0 without one, or consent)."""
        return 0 if self._recorder is None else self._recorder.video_frames

    def allow_recording(self, allowed: bool) -> None:
        """Write received media to ``record_to`` only while the peer consents."""
        if self._recorder is not None:
            self._recorder.allowed = allowed

    def current(self) -> RTCPeerConnection | None:
        live = [g for g in self._generations.values() if g.up and not g.done]
        return max(live, key=lambda g: g.number).pc if live else None

    async def stats(self) -> CallStats:
        pc = self.current()
        frames = {role: sink.frames for role, sink in self.sinks.items()}
        if pc is None:
            return CallStats(
                audio_codec=None, video_codec=None, send_kbps=0.0, recv_kbps=0.0,
                rtt_ms=None, loss_pct=None, relayed=None, frames_received=frames,
            )  # fmt: skip
        report = await pc.getStats()
        sent = received = lost = packets = 0
        rtts: list[float] = []
        for s in report.values():
            if isinstance(s, RTCTransportStats):
                sent += s.bytesSent
                received += s.bytesReceived
            elif isinstance(s, RTCInboundRtpStreamStats):
                lost += max(0, s.packetsLost)
                packets += s.packetsReceived
            elif isinstance(s, RTCRemoteInboundRtpStreamStats) and s.roundTripTime is not None:
                rtts.append(s.roundTripTime)
        now = asyncio.get_running_loop().time()
        send_kbps = recv_kbps = 0.0
        if self._last_stats is not None:
            t0, s0, r0 = self._last_stats
            if now > t0:
                send_kbps = (sent - s0) * 8 / 1000 / (now - t0)
                recv_kbps = (received - r0) * 8 / 1000 / (now - t0)
        self._last_stats = (now, sent, received)
        codecs = sdp_text.codecs(pc.localDescription.sdp) if pc.localDescription else {}
        pair = hooks.selected_pair(pc)
        return CallStats(
            audio_codec=codecs.get("audio:0"),
            video_codec=codecs.get("video:1"),
            send_kbps=round(send_kbps, 1),
            recv_kbps=round(recv_kbps, 1),
            rtt_ms=round(1000 * sum(rtts) / len(rtts), 1) if rtts else None,
            loss_pct=round(100 * lost / (lost + packets), 2) if packets + lost else None,
            relayed=None if pair is None else "relay" in (pair[0].type, pair[1].type),
            frames_received=frames,
        )

    async def close(self) -> None:
        """Close every connection, stop the sources and finish the recording."""
        if self._closed:
            return
        self._closed = True
        for gen in list(self._generations.values()):
            await self._close_generation(gen)
        self._generations.clear()
        self._sources.stop()
        if self._recorder is not None:
            await self._recorder.close()


def clean_sdp(sdp: str) -> str:
    """The description without the RFC 6464 audio level (it would travel in the clear)."""
    return sdp_text.drop_header_extension(sdp, sdp_text.AUDIO_LEVEL_URI)


class SwitchTrack(MediaStreamTrack):
    """A video sender's track that a user turns on and off without renegotiating.

    Off, it yields nothing (the sender sends nothing); its relay proxy is never
    stopped mid-call, because a sender waiting on a stopped proxy would wait
    forever.
    """

    kind = "video"

    def __init__(self, relay: MediaRelay, source: MediaStreamTrack | None, *, on: bool) -> None:
        super().__init__()
        self._proxy = relay.subscribe(source, buffered=False) if source is not None else None
        self._on = asyncio.Event()
        self.set(on and source is not None)

    def set(self, on: bool) -> None:
        if on and self._proxy is not None:
            self._on.set()
        else:
            self._on.clear()

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError("track ended")
            await self._on.wait()
            if self._proxy is None:
                continue
            frame = await self._proxy.recv()
            if self._on.is_set() and isinstance(frame, av.VideoFrame):
                return frame

    def stop(self) -> None:
        super().stop()
        if self._proxy is not None:
            self._proxy.stop()
        self._on.set()  # wake a waiting recv so it sees the track ended


class _Forward(MediaStreamTrack):
    """Frames of whichever connection is current, restamped so the file's clock only
    moves forward across ICE restarts."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue[av.AudioFrame | av.VideoFrame] = asyncio.Queue(maxsize=64)
        self._next_audio = 0
        self._start: float | None = None

    def put(self, frame: av.AudioFrame | av.VideoFrame) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # the writer fell behind: drop the oldest
        self._queue.put_nowait(frame)

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        frame = await self._queue.get()
        if isinstance(frame, av.AudioFrame):
            frame.pts = self._next_audio
            frame.time_base = fractions.Fraction(1, frame.sample_rate)
            self._next_audio += frame.samples
        else:
            now = asyncio.get_running_loop().time()
            if self._start is None:
                self._start = now
            frame.pts = int((now - self._start) * 90_000)
            frame.time_base = fractions.Fraction(1, 90_000)
        return frame


class _Recorder:
    """Received audio and camera video into one file (the container from its suffix).

    The file is created only when the first frame may be written: without the
    peer's consent, nothing of theirs ever reaches the disk.
    """

    def __init__(self, path: Path) -> None:
        if not path.parent.is_dir():
            raise MediaSourceUnavailable(f"cannot record to {path}: no such directory")
        self._path = path
        self._recorder: MediaRecorder | None = None
        self._tracks = {"audio": _Forward("audio"), "camera": _Forward("video")}
        self.allowed = False
        self.video_frames = 0

    async def feed(self, role: str, frame: av.AudioFrame | av.VideoFrame) -> None:
        if not self.allowed:
            return
        if self._recorder is None:
            try:
                self._recorder = MediaRecorder(str(self._path))
            except (av.FFmpegError, OSError, ValueError) as exc:
                self.allowed = False
                raise MediaSourceUnavailable(
                    f"cannot record to {self._path}: {type(exc).__name__}"
                ) from None
            for track in self._tracks.values():
                self._recorder.addTrack(track)
            await self._recorder.start()
        self._tracks[role].put(frame)
        if role == "camera":
            self.video_frames += 1

    async def close(self) -> None:
        if self._recorder is not None:
            await asyncio.sleep(0)  # let the writer take the last queued frames
            await self._recorder.stop()
