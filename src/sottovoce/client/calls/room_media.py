"""The media of a room call: through Janus (:class:`SfuMedia`) or a P2P mesh (:class:`MeshMedia`).

::

    SfuMedia      publisher PC ── audio, camera, screen (SFrame) ──► Janus VideoRoom
                  one subscriber PC per participant's feed ◄── Janus ── (SFrame) ──
    MeshMedia     one PC per other participant, both directions (SFrame inside DTLS-SRTP)

Both carry exactly three sections per direction, in this order and with these
mids on the sending side: audio "0" (Opus, constant bitrate), camera "1" (VP8)
and screen "2" (VP8); switching the camera or the screen never renegotiates.
Every encoded frame is sealed before packetization and every received frame is
checked before the decoder (:mod:`sottovoce.client.calls.e2ee`) against the
participant it was subscribed as: the SFU's word on whose feed is whose is never
taken, the call group's is (``FeedAnnounced``). The JSEP carries ``e2ee: true``
for Janus (a VideoRoom created with ``require_e2ee`` refuses publishers
without it). Descriptions never carry the RFC 6464 audio level; with
``IceConfig(loopback=True)`` nothing but 127.0.0.1 is gathered or used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from sottovoce.calls.errors import StreamBindingError
from sottovoce.calls.frames import Codec
from sottovoce.calls.janus import JanusReply, SfuError
from sottovoce.calls.media_keys import Device
from sottovoce.client.calls import hooks
from sottovoce.client.calls.e2ee import (
    FrameTransform,
    SealingOpusEncoder,
    StreamCounters,
    StreamGuard,
    sealing_vp8_encoder,
)
from sottovoce.client.calls.errors import MediaError
from sottovoce.client.calls.media import (
    ROLES,
    IceConfig,
    MediaProblem,
    Sink,
    SwitchTrack,
    add_sections,
    check_description,
    check_loopback,
    clean_sdp,
    consume,
    report_failure,
    set_local,
)
from sottovoce.client.calls.sources import MediaSpec, SilenceGate, open_sources
from sottovoce.janus_session import JanusSession
from sottovoce.sframe import Track

log = logging.getLogger(__name__)

#: The sending side's mid of each section (the order of :data:`ROLES`).
TRACK_OF_MID = {"0": Track.AUDIO, "1": Track.VIDEO, "2": Track.SCREEN}
ROLE_OF_TRACK = {Track.AUDIO: "audio", Track.VIDEO: "camera", Track.SCREEN: "screen"}
TRACK_OF_ROLE = {role: track for track, role in ROLE_OF_TRACK.items()}
#: How long a PeerConnection may take to come up (ICE + DTLS on the path to the SFU).
CONNECT_TIMEOUT_S = 10.0

#: Called with each frame that opened (sender, track, codec, RTP timestamp, frame):
#: what a recording of the call is written from.
FrameTap = Callable[[Device, Track, Codec, int, bytes], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class SfuAccess:
    """What the server's grant says: where, which VideoRoom, under which publisher id,
    with which token (see ``sottovoce.server.sfu.SfuGrant``)."""

    url: str
    room: str
    feed_id: str
    token: str

    def __repr__(self) -> str:
        return f"SfuAccess(url={self.url!r}, room={self.room[:8]}, token=<redacted>)"


@dataclass(slots=True)
class _Peer:
    """One PeerConnection: to the SFU (publisher or one feed) or to a mesh peer."""

    pc: RTCPeerConnection
    device: Device | None
    guards: list[StreamGuard] = field(default_factory=list)
    tracks: list[MediaStreamTrack] = field(default_factory=list)
    consumers: list[asyncio.Task[None]] = field(default_factory=list)
    handle: int | None = None


@dataclass(eq=False, repr=False, kw_only=True)
class RoomMedia:
    """What SFU and mesh calls share: sources, sealing encoders, guarded receivers, sinks."""

    spec: MediaSpec
    ice: IceConfig
    crypto: FrameTransform
    on_problem: Callable[[MediaProblem], None] | None = None
    tap: FrameTap | None = None

    def __post_init__(self) -> None:
        self._sources = open_sources(
            self.spec, on_error=partial(report_failure, self.on_problem, "source")
        )
        self._relay = MediaRelay()
        self.camera_on = self.spec.video and self._sources.camera is not None
        self.screen_on = self._sources.screen is not None
        self.sinks: dict[tuple[Device, str], Sink] = {}
        self.misbound: list[StreamBindingError] = []
        self._closed = False

    # --- sending ----------------------------------------------------------------------

    def _add_send_sections(self, pc: RTCPeerConnection, direction: str) -> list[MediaStreamTrack]:
        """The three sections, each with its sealing encoder and its track."""
        tracks: list[MediaStreamTrack] = []
        for role, transceiver in zip(ROLES, add_sections(pc, direction), strict=True):
            self._arm_sender(transceiver.sender, role)
            tracks.append(self._track_for(role))
            transceiver.sender.replaceTrack(tracks[-1])
        return tracks

    def _arm_sender(self, sender: RTCRtpSender, role: str) -> None:
        track = TRACK_OF_ROLE[role]
        if role == "audio":
            hooks.use_encoder(sender, SealingOpusEncoder(self.crypto, track))
        else:
            hooks.use_encoder(sender, sealing_vp8_encoder(self.crypto, track))

    def _track_for(self, role: str) -> MediaStreamTrack:
        if role == "audio":
            audio = self._sources.audio
            return (
                self._relay.subscribe(audio, buffered=True)
                if audio
                else SwitchTrack(self._relay, None, on=False)
            )
        source = self._sources.camera if role == "camera" else self._sources.screen
        on = self.camera_on if role == "camera" else self.screen_on
        return SwitchTrack(self._relay, source, on=on)

    def set_local_media(self, *, audio_muted: bool, camera_on: bool, screen_on: bool) -> None:
        """Mute sends silence (same packet sizes); camera and screen stop or start."""
        if isinstance(self._sources.audio, SilenceGate):
            self._sources.audio.muted = audio_muted
        self.camera_on = camera_on and self._sources.camera is not None
        self.screen_on = screen_on and self._sources.screen is not None
        wanted = {"camera": self.camera_on, "screen": self.screen_on}
        for peer in self._peers():
            for role, track in zip(ROLES, peer.tracks, strict=False):
                if isinstance(track, SwitchTrack) and role in wanted:
                    track.set(wanted[role])

    # --- receiving --------------------------------------------------------------------

    def _guard(
        self, peer: _Peer, transceiver: RTCRtpTransceiver, device: Device, track: Track
    ) -> None:
        peer.guards.append(
            StreamGuard(
                self.crypto,
                sender=device,
                track=track,
                receiver=transceiver.receiver,
                on_frame=self.tap,
                on_misbound=self._misbound,
            )
        )

    def _misbound(self, exc: StreamBindingError) -> None:
        log.warning("call media: %s", exc.code)
        self.misbound.append(exc)
        if self.on_problem is not None:
            self.on_problem(MediaProblem(where="stream", error=exc.code))

    def _on_track(
        self, peer: _Peer, device: Device, role_of: Callable[[str | None], str | None]
    ) -> Callable[[MediaStreamTrack], None]:
        def on_track(track: MediaStreamTrack) -> None:
            transceiver = next(
                (t for t in peer.pc.getTransceivers() if t.receiver.track is track), None
            )
            role = role_of(transceiver.mid if transceiver else None)
            if role is not None:
                consumer = consume(track, self.sink(device, role), role, self.on_problem)
                peer.consumers.append(asyncio.ensure_future(consumer))

        return on_track

    def request_keyframes(self) -> None:
        """Ask every video sender for a keyframe now (a recording starts on one)."""
        for peer in self._peers():
            for guard in peer.guards:
                if guard.track is not Track.AUDIO:
                    guard.request_keyframe()

    def sink(self, device: Device, role: str) -> Sink:
        return self.sinks.setdefault((device, role), Sink())

    def _counters(self, device: Device | None) -> list[StreamCounters]:
        return [
            g.counters
            for p in self._peers()
            for g in p.guards
            if device is None or g.sender == device
        ]

    def dropped(self, device: Device | None = None) -> int:
        """Received frames kept from the decoder (all streams, or those of ``device``)."""
        return sum(c.dropped for c in self._counters(device))

    def failed(self, device: Device | None = None) -> int:
        """Received frames that did not open under a key this device holds."""
        return sum(c.failed for c in self._counters(device))

    def unkeyed(self, device: Device | None = None) -> int:
        """Received frames under a key this device never held or no longer holds."""
        return sum(c.unkeyed for c in self._counters(device))

    # --- descriptions -----------------------------------------------------------------

    async def _set_local(self, pc: RTCPeerConnection, description: RTCSessionDescription) -> str:
        local = await set_local(pc, description.sdp, description.type, loopback=self.ice.loopback)
        check_description(local, loopback=self.ice.loopback)
        return local

    def _check_addresses(self, sdp: str) -> None:
        if self.ice.loopback:
            check_loopback(sdp)

    async def _connected(self, pc: RTCPeerConnection) -> None:
        async def up() -> None:
            while pc.connectionState != "connected":
                if pc.connectionState in ("failed", "closed"):
                    raise MediaError("the connection failed")
                await asyncio.sleep(0.01)

        try:
            await asyncio.wait_for(up(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise MediaError("the connection did not come up in time") from None

    # --- closing ----------------------------------------------------------------------

    def _peers(self) -> list[_Peer]:
        raise NotImplementedError

    async def _close_peer(self, peer: _Peer) -> None:
        for track in peer.tracks:
            track.stop()
        await peer.pc.close()
        for task in peer.consumers:
            task.cancel()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for peer in self._peers():
            await self._close_peer(peer)
        self._sources.stop()


class SfuMedia(RoomMedia):
    """A participant's media through a Janus VideoRoom."""

    def __init__(self, *, access: SfuAccess, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.access = access
        self._janus: JanusSession | None = None
        self._publisher: _Peer | None = None
        self._private_id: int | None = None
        self._subscriptions: dict[Device, _Peer] = {}

    def _peers(self) -> list[_Peer]:
        return [p for p in (self._publisher, *self._subscriptions.values()) if p is not None]

    async def publish(self) -> None:
        """Join the VideoRoom as a publisher with the grant and send the three sections.
        :class:`~sottovoce.calls.janus.SfuUnauthorized` without a valid grant."""
        janus, handle = await self._join_as_publisher()
        pc = RTCPeerConnection(self.ice.rtc_configuration())
        peer = _Peer(pc=pc, device=None, handle=handle)
        self._publisher = peer
        peer.tracks = self._add_send_sections(pc, "sendonly")
        offer = await self._set_local(pc, await pc.createOffer())
        answer = await self._publish_offer(janus, handle, offer)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await self._connected(pc)

    async def _join_as_publisher(self) -> tuple[JanusSession, int]:
        """A Janus session joined to the room as this grant's publisher: the session and
        the publisher's handle (its private id kept for subscriptions)."""
        janus = await JanusSession.connect(self.access.url)
        self._janus = janus
        handle, joined = await self._join(
            janus, "publisher", id=self.access.feed_id, token=self.access.token
        )
        private_id = joined.data.get("private_id")
        if not isinstance(private_id, int) or isinstance(private_id, bool):
            raise SfuError("the SFU did not give this publisher a private id")
        self._private_id = private_id
        return janus, handle

    async def _publish_offer(self, janus: JanusSession, handle: int, offer: str) -> str:
        """Publish ``offer`` (the E2EE sections marked); the SFU's answer, checked."""
        reply = await janus.message(handle, {"request": "publish"}, jsep=e2ee_jsep("offer", offer))
        if reply.jsep is None or reply.jsep.get("type") != "answer":
            raise SfuError("the SFU did not answer the publication")
        answer = clean_sdp(reply.jsep["sdp"])
        self._check_addresses(answer)
        return answer

    async def subscribe(self, feed_id: str, device: Device) -> None:
        """Receive ``device``'s feed: only frames sealed with ``device``'s keys open."""
        janus = self._janus
        if janus is None or self._private_id is None:
            raise MediaError("publish first: subscriptions need the publisher's private id")
        if device in self._subscriptions:
            await self.unsubscribe(device)
        handle, reply = await self._join(
            janus, "subscriber", streams=[{"feed": feed_id}], private_id=self._private_id
        )
        if reply.jsep is None or reply.jsep.get("type") != "offer":
            raise SfuError("the SFU did not offer the feed")
        mids = feed_mids(reply.data.get("streams"))
        offer = clean_sdp(reply.jsep["sdp"])
        self._check_addresses(offer)
        pc = RTCPeerConnection(self.ice.rtc_configuration())
        peer = _Peer(pc=pc, device=device, handle=handle)
        self._subscriptions[device] = peer

        def role_of(mid: str | None) -> str | None:
            track = TRACK_OF_MID.get(mids.get(mid or "", ""))
            return None if track is None else ROLE_OF_TRACK[track]

        pc.on("track", self._on_track(peer, device, role_of))
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        for transceiver in pc.getTransceivers():
            track = TRACK_OF_MID.get(mids.get(transceiver.mid or "", ""))
            if track is None:
                transceiver.direction = "inactive"
                continue
            self._guard(peer, transceiver, device, track)
        # DTLS role passive (RFC 5763 §5): Janus, the offerer, then opens the DTLS
        # handshake once its own ICE checks succeeded. As the active side we would send
        # the first flight as soon as *our* checks succeed, Janus sometimes drops it, and
        # the handshake then waits a full DTLS retransmission timer (1 s).
        local = await pc.createAnswer()
        passive = RTCSessionDescription(
            local.sdp.replace("a=setup:active", "a=setup:passive"), "answer"
        )
        answer = await self._set_local(pc, passive)
        await janus.message(handle, {"request": "start"}, jsep=e2ee_jsep("answer", answer))
        # Ask for a keyframe at once rather than wait for the publisher's next one:
        # the first packets that arrive carry the request back (PLI, RFC 4585 §6.3.1).
        for guard in peer.guards:
            if guard.track is not Track.AUDIO:
                guard.request_keyframe()

    async def _join(
        self, janus: JanusSession, ptype: str, **fields: object
    ) -> tuple[int, JanusReply]:
        """A new handle, joined to the call's VideoRoom as a publisher or a subscriber."""
        handle = await janus.attach()
        body = {"request": "join", "ptype": ptype, "room": self.access.room, **fields}
        return handle, await janus.message(handle, body)

    async def unsubscribe(self, device: Device) -> None:
        peer = self._subscriptions.pop(device, None)
        if peer is not None:
            await self._close_peer(peer)
            if self._janus is not None and peer.handle is not None:
                await self._janus.detach(peer.handle)

    def subscribed(self) -> tuple[Device, ...]:
        return tuple(self._subscriptions)

    async def close(self) -> None:
        await super().close()
        if self._janus is not None:
            await self._janus.close()
            self._janus = None


def e2ee_jsep(kind: str, sdp: str) -> dict[str, object]:
    """Every description we hand Janus says it is end-to-end encrypted (``require_e2ee``)."""
    return {"type": kind, "sdp": sdp, "e2ee": True}


def feed_mids(streams: object) -> dict[str, str]:
    """Our mid -> the publisher's mid, from a subscriber's "streams" (only well-formed
    entries; the SFU is not trusted with more than routing, see the module docstring)."""
    out: dict[str, str] = {}
    if isinstance(streams, list):
        for s in streams:
            if (
                isinstance(s, dict)
                and isinstance(s.get("mid"), str)
                and isinstance(s.get("feed_mid"), str)
            ):
                out[s["mid"]] = s["feed_mid"]
    return out


class MeshMedia(RoomMedia):
    """A participant's media as a full mesh: one PeerConnection per other participant.

    Of two participants the one whose (user, device) sorts first makes the offer;
    descriptions travel sealed in the call's MLS group (``RoomCall.mesh_offer``).
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._mesh: dict[Device, _Peer] = {}

    def _peers(self) -> list[_Peer]:
        return list(self._mesh.values())

    def peers(self) -> tuple[Device, ...]:
        return tuple(self._mesh)

    def _new_peer(self, device: Device) -> _Peer:
        pc = RTCPeerConnection(self.ice.rtc_configuration())
        peer = _Peer(pc=pc, device=device)
        self._mesh[device] = peer

        def role_of(mid: str | None) -> str | None:
            track = TRACK_OF_MID.get(mid or "")
            return None if track is None else ROLE_OF_TRACK[track]

        pc.on("track", self._on_track(peer, device, role_of))
        return peer

    async def offer(self, device: Device) -> str:
        await self.drop(device)
        peer = self._new_peer(device)
        peer.tracks = self._add_send_sections(peer.pc, "sendrecv")
        for role, transceiver in zip(ROLES, peer.pc.getTransceivers(), strict=True):
            self._guard(peer, transceiver, device, TRACK_OF_ROLE[role])
        return await self._set_local(peer.pc, await peer.pc.createOffer())

    async def answer(self, device: Device, offer: str) -> str:
        await self.drop(device)
        peer = self._new_peer(device)
        self._check_addresses(offer)
        await peer.pc.setRemoteDescription(RTCSessionDescription(clean_sdp(offer), "offer"))
        transceivers = peer.pc.getTransceivers()
        if [t.mid for t in transceivers] != list(TRACK_OF_MID):
            await self.drop(device)
            raise MediaError("the offer does not have the call's audio, camera and screen sections")
        for role, transceiver in zip(ROLES, transceivers, strict=True):
            transceiver.direction = "sendrecv"
            self._arm_sender(transceiver.sender, role)
            track = self._track_for(role)
            peer.tracks.append(track)
            transceiver.sender.replaceTrack(track)
            self._guard(peer, transceiver, device, TRACK_OF_ROLE[role])
        return await self._set_local(peer.pc, await peer.pc.createAnswer())

    async def accept(self, device: Device, answer: str) -> None:
        peer = self._mesh.get(device)
        if peer is None:
            return
        self._check_addresses(answer)
        await peer.pc.setRemoteDescription(RTCSessionDescription(clean_sdp(answer), "answer"))

    async def connected(self, device: Device) -> None:
        peer = self._mesh.get(device)
        if peer is None:
            raise MediaError("no connection to that participant")
        await self._connected(peer.pc)

    async def drop(self, device: Device) -> None:
        peer = self._mesh.pop(device, None)
        if peer is not None:
            await self._close_peer(peer)
