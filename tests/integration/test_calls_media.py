"""1:1 calls with real aiortc peers on 127.0.0.1 (docs/calls.md).

Each device is a CallController: the sans-IO engine plus aiortc media.
Signalling is carried in memory (see calls_helpers.Net); media is real
DTLS-SRTP over loopback UDP, or through a real coturn for relay-only calls.
No test gathers or uses an address other than 127.0.0.1 (every SDP is checked).
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from pathlib import Path

import av
import pytest
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport

from sottovoce.calls import sdp as sdp_text
from sottovoce.calls.effects import CallState, EndReason, PeerMediaState, SendSignal
from sottovoce.calls.signals import (
    AnsweredElsewhere,
    CallSignal,
    IceRestartOffer,
    Offer,
)
from sottovoce.client.calls import (
    CallController,
    CallOptions,
    FingerprintMismatch,
    IceConfig,
    MediaSourceUnavailable,
    MediaSpec,
    TurnRefused,
    TurnServer,
    hooks,
)
from sottovoce.client.calls.errors import CandidateLeak
from sottovoce.client.calls.media import OPUS_CBR_BITRATE, MediaSession
from sottovoce.client.calls.sources import PatternTrack
from sottovoce.secret import Secret
from tests.integration.calls_helpers import (
    Coturn,
    Net,
    stops_growing,
    wait_for,
    wait_state,
    write_clip,
)
from tests.integration.room_calls_helpers import sent_and_decoded, watch_sent

LOOPBACK = CallOptions(ice=IceConfig(loopback=True))


async def connect(
    net: Net, caller: CallController, callee: CallController, *, video: bool = True
) -> None:
    caller.dial(callee.machine.user, net.devices_of(callee.machine.user), video=video)
    await wait_state(callee, CallState.INCOMING_RINGING)
    callee.accept(own_devices=net.devices_of(callee.machine.user))
    await wait_state(caller, CallState.ACTIVE)
    await wait_state(callee, CallState.ACTIVE)


def session(ctl: CallController) -> MediaSession:
    s = ctl.session()
    assert s is not None
    return s


async def camera_window(
    sender: CallController, receiver: CallController
) -> tuple[set[int], set[int]]:
    """The first 75 camera frames (5 s at 15 fps) the sender sends over its current
    connection from now on, and those of them the receiver decoded."""
    assert sender.call is not None
    track = session(sender)._generations[sender.call.generation].tracks["camera"]
    assert track is not None
    sent = watch_sent(track)
    judged = await sent_and_decoded(
        {"camera": sent}, lambda _: session(receiver).sinks["camera"].numbers, frames=75)
    return judged["camera"]


def camera_source(ctl: CallController) -> PatternTrack:
    track = session(ctl)._sources.camera
    assert isinstance(track, PatternTrack)
    return track


# --- media P2P ----------------------------------------------------------------------


async def test_p2p_call_decodes_at_least_95_percent_of_video_frames_sent_in_5_s(net: Net) -> None:
    alice = net.device("alice", "a1", LOOPBACK)
    bob = net.device("bob", "b1", LOOPBACK)
    await connect(net, alice, bob)
    await wait_for(lambda: len(session(bob).sinks["camera"].numbers) > 0)
    window, decoded = await camera_window(alice, bob)
    assert len(decoded) >= 0.95 * len(window), sorted(window - decoded)
    assert session(bob).sinks["audio"].frames > 200  # the tone arrived too
    stats = await alice.stats()
    assert stats is not None and stats.audio_codec == "opus" and stats.video_codec == "VP8"
    assert stats.relayed is False
    net.assert_loopback_only()


def _rtp_audio_packets(packets: list[bytes], payload_type: int) -> list[tuple[int, set[int]]]:
    """(payload size, header-extension ids) of each RTP packet of ``payload_type``."""
    out = []
    for data in packets:
        if len(data) < 12 or data[1] & 0x7F != payload_type or 192 <= data[1] <= 223:
            continue
        offset = 12 + 4 * (data[0] & 0x0F)
        ids: set[int] = set()
        if data[0] & 0x10:  # RFC 8285 §4.2 one-byte header extensions
            profile, words = struct.unpack("!HH", data[offset : offset + 4])
            assert profile == 0xBEDE
            body = data[offset + 4 : offset + 4 + 4 * words]
            i = 0
            while i < len(body):
                if body[i] == 0:
                    i += 1
                    continue
                ids.add(body[i] >> 4)
                i += 1 + (body[i] & 0x0F) + 1
            offset += 4 + 4 * words
        out.append((len(data) - offset, ids))
    return out


async def test_audio_is_constant_bitrate_opus_without_audio_level_even_when_muted(
    net: Net,
) -> None:
    alice = net.device("alice", "a1", LOOPBACK)
    bob = net.device("bob", "b1", LOOPBACK)
    await connect(net, alice, bob, video=False)
    offer = net.signals(Offer)[0]
    assert isinstance(offer, Offer)
    assert sdp_text.AUDIO_LEVEL_URI not in sdp_text.header_extensions(offer.sdp)
    for text in net.sdps():
        assert "ssrc-audio-level" not in text
    # Watch what alice's DTLS transport protects and sends.
    pc = session(alice).current()
    assert pc is not None
    transport = hooks.dtls_transports(pc)[0]
    packets: list[bytes] = []
    original = transport._send_rtp

    async def spy(data: bytes) -> None:
        packets.append(data)
        await original(data)

    transport._send_rtp = spy  # type: ignore[method-assign]
    await asyncio.sleep(1.0)
    alice.set_media(audio_muted=True, camera_on=False, screen_on=False)
    await asyncio.sleep(1.0)
    opus_pt = int(offer.sdp.split("m=audio ")[1].split()[2])
    audio = _rtp_audio_packets(packets, opus_pt)
    assert len(audio) >= 80  # 50 packets/s over 2 s, speaking then muted
    sizes = {size for size, _ in audio}
    # 20 ms at 32 kbit/s is 80 bytes, in every packet: speech and silence alike.
    assert sizes == {OPUS_CBR_BITRATE // 8 // 50}, sizes
    # The only header extension sent is the MID (RFC 8843), never an audio level.
    mid_id = next(
        int(line.split(":")[1].split()[0])
        for line in offer.sdp.splitlines()
        if line.startswith("a=extmap:") and "sdes:mid" in line
    )
    assert set().union(*(ids for _, ids in audio)) <= {mid_id}
    muted = [e for e in _drain(bob) if isinstance(e, PeerMediaState) and e.audio_muted]
    assert muted


def _drain(ctl: CallController) -> list[object]:
    out = []
    while not ctl.events.empty():
        out.append(ctl.events.get_nowait())
    return out


async def test_camera_off_and_screen_share_mid_call(net: Net) -> None:
    alice = net.device(
        "alice",
        "a1",
        CallOptions(media=MediaSpec(screen="synthetic"), ice=IceConfig(loopback=True)),
    )
    bob = net.device("bob", "b1", LOOPBACK)
    await connect(net, alice, bob)
    sinks = session(bob).sinks
    await wait_for(lambda: sinks["camera"].frames > 3)
    assert sinks["screen"].frames == 0
    alice.set_media(audio_muted=False, camera_on=False, screen_on=True)
    await wait_for(lambda: sinks["screen"].frames > 5)
    await stops_growing(lambda: sinks["camera"].frames, 0.6)  # the camera stopped
    camera_now = sinks["camera"].frames
    await wait_for(lambda: sinks["screen"].frames > 8)  # the screen is its own track
    states = [e for e in _drain(bob) if isinstance(e, PeerMediaState)]
    assert states[-1].screen_on and not states[-1].camera_on
    alice.set_media(audio_muted=False, camera_on=True, screen_on=False)
    await wait_for(lambda: sinks["camera"].frames > camera_now + 5)
    with pytest.raises(MediaSourceUnavailable):
        session(bob).set_local_media(audio_muted=False, camera_on=True, screen_on=True)


async def test_ice_restart_moves_the_call_to_a_new_transport_with_the_same_certificate(
    net: Net,
) -> None:
    alice = net.device("alice", "a1", LOOPBACK)
    bob = net.device("bob", "b1", LOOPBACK)
    await connect(net, alice, bob)
    old_pc = session(bob).current()
    before = len(session(bob).sinks["camera"].numbers)
    bob.restart_ice()
    await wait_for(lambda: bob.call is not None and bob.call.generation == 1)
    await wait_state(bob, CallState.ACTIVE)
    await wait_state(alice, CallState.ACTIVE)
    new_pc = session(bob).current()
    assert new_pc is not None and new_pc is not old_pc
    assert old_pc is not None and old_pc.connectionState == "closed"
    await wait_for(lambda: len(session(bob).sinks["camera"].numbers) > before + 10)
    restart = net.signals(IceRestartOffer)[0]
    offer = net.signals(Offer)[0]
    assert isinstance(restart, IceRestartOffer) and isinstance(offer, Offer)
    assert sdp_text.fingerprints(restart.sdp) == set(restart.fingerprints)
    assert set(restart.fingerprints) == session(bob).fingerprints
    net.assert_loopback_only()


# --- DTLS fingerprint binding: a relay with another certificate ------------------------


class Mallory:
    """A third aiortc peer in the path: the test routes bob's transport to it (as a
    relay on the path could), while the fingerprints stay alice's (Mallory cannot
    change E2EE signalling). Mallory answers DTLS with her own certificate."""

    def __init__(self) -> None:
        self.session = MediaSession(
            spec=MediaSpec(), ice=IceConfig(loopback=True), on_event=lambda e: None
        )
        self.ready = asyncio.Event()

    async def forge(self, signal: Offer | IceRestartOffer) -> bytes:
        mine = await self.session.create_offer(0)
        theirs = [f"a=fingerprint:{f.sdp_value()}" for f in signal.fingerprints]
        lines = [ln for ln in mine.split("\r\n") if not ln.startswith("a=fingerprint:")]
        forged: list[str] = []
        for line in lines:
            forged.append(line)
            if line.startswith("a=ice-pwd:"):
                forged += theirs  # alice's fingerprints, Mallory's ICE
        return dataclasses.replace(signal, sdp="\r\n".join(forged)).encode()


def mitm(net: Net, mallory: Mallory, kind: type[CallSignal]) -> list[asyncio.Task[None]]:
    """Send ``kind`` offers from alice through Mallory; give bob's answer to Mallory."""
    tasks: list[asyncio.Task[None]] = []

    def tamper(user: str, device: str, effect: SendSignal) -> bytes | None:
        signal = effect.signal
        if isinstance(signal, kind) and isinstance(signal, Offer | IceRestartOffer):

            async def forward() -> None:
                data = await mallory.forge(signal)
                net._deliver(user, device, effect, data)

            tasks.append(asyncio.ensure_future(forward()))
            return None
        answer_sdp = getattr(signal, "sdp", None)
        if user == "bob" and answer_sdp is not None:

            async def to_mallory() -> None:
                await mallory.session.apply_answer(0, answer_sdp, tuple(signal.fingerprints))  # type: ignore[attr-defined]

            tasks.append(asyncio.ensure_future(to_mallory()))
            return None
        return effect.payload

    net.tamper = tamper
    return tasks


async def test_a_relay_presenting_another_dtls_certificate_fails_the_call(net: Net) -> None:
    alice = net.device("alice", "a1", LOOPBACK)
    bob = net.device("bob", "b1", LOOPBACK)
    mallory = Mallory()
    mitm(net, mallory, Offer)
    try:
        alice.dial("bob", ["b1"])
        await wait_state(bob, CallState.INCOMING_RINGING)
        bob.accept()
        await wait_state(bob, CallState.ENDED)
        assert bob.call is not None and bob.call.reason is EndReason.FAILED
        assert isinstance(bob.last_error, FingerprintMismatch)
        assert sum(s.frames for s in session_sinks(mallory)) >= 0
        await wait_state(alice, CallState.ENDED)  # bob hung up: the call is over for both
    finally:
        await mallory.session.close()


def session_sinks(mallory: Mallory) -> list[object]:
    return list(mallory.session.sinks.values())


async def test_a_relay_presenting_another_certificate_after_an_ice_restart_fails_the_call(
    net: Net,
) -> None:
    alice = net.device("alice", "a1", LOOPBACK)
    bob = net.device("bob", "b1", LOOPBACK)
    await connect(net, alice, bob)
    mallory = Mallory()
    mitm(net, mallory, IceRestartOffer)
    try:
        alice.restart_ice()
        await wait_state(bob, CallState.ENDED)
        assert bob.call is not None and bob.call.reason is EndReason.FAILED
        assert isinstance(bob.last_error, FingerprintMismatch)
        await wait_for(lambda: not bob.media)  # every connection of the call is closed
    finally:
        await mallory.session.close()


async def test_our_own_handshake_check_holds_if_aiortcs_check_were_skipped(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defence in depth: with aiortc's SDP fingerprint check disabled, the media
    # layer's own check of the presented certificate still fails the call.
    monkeypatch.setattr(RTCDtlsTransport, "_validate_peer_identity", lambda self, params: None)
    alice = net.device("alice", "a1", LOOPBACK)
    bob = net.device("bob", "b1", LOOPBACK)
    mallory = Mallory()
    mitm(net, mallory, Offer)
    try:
        alice.dial("bob", ["b1"])
        await wait_state(bob, CallState.INCOMING_RINGING)
        bob.accept()
        await wait_state(bob, CallState.ENDED)
        assert isinstance(bob.last_error, FingerprintMismatch)
        assert bob.call is not None and bob.call.reason is EndReason.FAILED
    finally:
        await mallory.session.close()


# --- call states with media -------------------------------------------------------------


async def test_glare_with_media_ends_in_one_call(net: Net) -> None:
    alice = net.device("alice", "a1", LOOPBACK)
    bob = net.device("bob", "b1", LOOPBACK)
    ca = alice.dial("bob", ["b1"])
    cb = bob.dial("alice", ["a1"])
    await wait_state(alice, CallState.ACTIVE)
    await wait_state(bob, CallState.ACTIVE)
    assert alice.call is not None and bob.call is not None
    assert alice.call.call_id == bob.call.call_id == min(ca, cb)
    await wait_for(lambda: session(alice).sinks["camera"].frames > 3)
    await wait_for(lambda: session(bob).sinks["camera"].frames > 3)
    # the losing call's media is gone once its close has finished
    await wait_for(lambda: len(alice.media) == len(bob.media) == 1)


async def test_answered_elsewhere_with_media(net: Net) -> None:
    alice = net.device("alice", "a1", LOOPBACK)
    b1 = net.device("bob", "b1", LOOPBACK)
    b2 = net.device("bob", "b2", LOOPBACK)
    alice.dial("bob", ["b1", "b2"])
    await wait_state(b1, CallState.INCOMING_RINGING)
    await wait_state(b2, CallState.INCOMING_RINGING)
    b2.accept(own_devices=["b1", "b2"])
    await wait_state(b2, CallState.ACTIVE)
    await wait_state(b1, CallState.ENDED)
    assert b1.call is not None and b1.call.reason is EndReason.ANSWERED_ELSEWHERE
    assert not b1.media  # the losing device never set up media
    await wait_for(lambda: session(b2).sinks["camera"].frames > 3)
    (ae,) = net.signals(AnsweredElsewhere)
    assert (ae.from_device, ae.to_device) == ("b2", "b1")


async def test_recording_needs_consent_then_writes_the_peers_media(
    net: Net, tmp_path: Path
) -> None:
    refused = tmp_path / "refused.webm"
    granted = tmp_path / "granted.webm"
    alice = net.device("alice", "a1", CallOptions(ice=IceConfig(loopback=True), record_to=refused))
    bob = net.device(
        "bob", "b1", CallOptions(ice=IceConfig(loopback=True), recording_consent="refuse")
    )
    await connect(net, alice, bob)
    await wait_for(lambda: session(alice).sinks["camera"].frames > 10)
    alice.hangup()
    await wait_state(alice, CallState.ENDED)
    assert not refused.exists()  # nothing of bob's reached the disk

    carol = net.device("carol", "c1", CallOptions(ice=IceConfig(loopback=True), record_to=granted))
    dave = net.device(
        "dave", "d1", CallOptions(ice=IceConfig(loopback=True), recording_consent="grant")
    )
    await connect(net, carol, dave)
    # Consent arrives after the media: count what the recording took, not what arrived.
    await wait_for(lambda: session(carol).recorded_video_frames() > 30)
    carol.hangup()
    await wait_state(carol, CallState.ENDED)
    await wait_for(lambda: not carol.media)
    with av.open(str(granted)) as container:
        kinds = {s.type for s in container.streams}
        frames = sum(1 for _ in container.decode(video=0))
    assert kinds == {"audio", "video"}
    assert frames >= 5


async def test_a_media_file_is_a_call_source(net: Net, tmp_path: Path) -> None:
    clip = tmp_path / "clip.webm"
    await write_clip(clip, seconds=1)
    alice = net.device(
        "alice", "a1", CallOptions(media=MediaSpec(source=str(clip)), ice=IceConfig(loopback=True))
    )
    bob = net.device("bob", "b1", LOOPBACK)
    await connect(net, alice, bob)
    await wait_for(lambda: session(bob).sinks["camera"].frames > 5)
    await wait_for(lambda: session(bob).sinks["audio"].frames > 5)
    # The clip is made of pattern frames: their numbers survive the file and the call.
    assert session(bob).sinks["camera"].numbers


def test_devices_that_are_not_there_give_a_plain_error() -> None:
    if list(Path("/dev").glob("video*")):
        pytest.skip("this machine has a camera")
    with pytest.raises(MediaSourceUnavailable, match=r"camera|microphone"):
        MediaSession(
            spec=MediaSpec(source="device"), ice=IceConfig(loopback=True), on_event=lambda e: None
        )
    with pytest.raises(MediaSourceUnavailable, match="no such media file"):
        MediaSession(
            spec=MediaSpec(source="/nonexistent.webm"),
            ice=IceConfig(loopback=True),
            on_event=lambda e: None,
        )


# --- TURN (a real coturn on 127.0.0.1) --------------------------------------------------


async def test_relay_only_call_runs_through_coturn_and_never_reveals_a_host_candidate(
    net: Net, coturn: Coturn
) -> None:
    relay = CallOptions(ice=IceConfig(turn=(coturn.server(),), relay_only=True))
    alice = net.device("alice", "a1", relay)
    issued = []

    async def fresh_credentials() -> tuple[TurnServer, ...]:
        # As the sottovoce server would issue them, per new connection.
        issued.append(coturn.server())
        return (issued[-1],)

    bob = net.device(
        "bob", "b1", CallOptions(ice=IceConfig(relay_only=True)), turn_servers=fresh_credentials
    )
    await connect(net, alice, bob)
    assert len(issued) == 1
    # No host or server-reflexive candidate ever left alice (or bob).
    for text in net.sdps():
        found = sdp_text.candidates(text)
        assert found and {c.type for c in found} == {"relay"}
        assert {c.related_address for c in found} <= {"0.0.0.0"}
    pc = session(alice).current()
    assert pc is not None
    pair = hooks.selected_pair(pc)
    assert pair is not None and pair[0].type == "relay" and pair[1].type == "relay"
    assert pair[0].host == "127.0.0.1"
    await wait_for(lambda: len(session(bob).sinks["camera"].numbers) > 0)
    window, decoded = await camera_window(alice, bob)
    assert len(decoded) >= 0.95 * len(window), sorted(window - decoded)
    stats = await alice.stats()
    assert stats is not None and stats.relayed is True
    # An ICE restart allocates again, with credentials fetched for it.
    bob.restart_ice()
    await wait_for(lambda: bob.call is not None and bob.call.generation == 1)
    await wait_state(bob, CallState.ACTIVE)
    assert len(issued) == 2 and issued[0].username != issued[1].username
    net.assert_loopback_only()


@pytest.mark.parametrize("forged", ["expired", "wrong secret"])
async def test_refused_turn_credentials_are_reported(net: Net, coturn: Coturn, forged: str) -> None:
    if forged == "expired":
        server = coturn.server(now_s=1_600_000_000)  # expired years ago
    else:
        server = coturn.server(secret=Secret(b"not-the-coturn-secret-at-all"))
    alice = net.device("alice", "a1", CallOptions(ice=IceConfig(turn=(server,), relay_only=True)))
    bob = net.device("bob", "b1", LOOPBACK)
    alice.dial("bob", ["b1"])
    await wait_state(alice, CallState.ENDED)
    assert isinstance(alice.last_error, TurnRefused)
    assert "refused" in str(alice.last_error) and "401" in str(alice.last_error)
    assert alice.call is not None and alice.call.reason is EndReason.FAILED
    await wait_state(bob, CallState.ENDED)  # bob stopped ringing: the caller cancelled
    assert not net.signals(Offer)  # no description with any candidate left alice


# --- the media layer's own guards ------------------------------------------------------


async def test_a_description_that_breaks_the_calls_policy_is_never_handed_out() -> None:
    turn = TurnServer(url="turn:127.0.0.1:9", username="1:x", credential=Secret(b"p"))
    relay = MediaSession(
        spec=MediaSpec(), ice=IceConfig(turn=(turn,), relay_only=True), on_event=lambda e: None
    )
    loop = MediaSession(spec=MediaSpec(), ice=IceConfig(loopback=True), on_event=lambda e: None)
    try:
        own = relay.fingerprints
        lines = "".join(f"a=fingerprint:{f.sdp_value()}\r\n" for f in own)
        base = "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n" + lines
        relay_cand = "a=candidate:1 1 udp 1 127.0.0.1 5000 typ relay raddr 0.0.0.0 rport 9\r\n"
        await relay._check_local(base + relay_cand)  # the one shape relay-only allows
        for bad in (
            base + "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\n",
            base + "a=candidate:1 1 udp 1 127.0.0.1 5000 typ srflx raddr 10.0.0.2 rport 1\r\n",
            base + relay_cand.replace("raddr 0.0.0.0", "raddr 10.0.0.2"),
            base + relay_cand + "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n",
        ):
            with pytest.raises(CandidateLeak):
                await relay._check_local(bad)
        loop_lines = "".join(f"a=fingerprint:{f.sdp_value()}\r\n" for f in loop.fingerprints)
        loop_base = base.replace(lines, loop_lines)
        with pytest.raises(CandidateLeak):
            await loop._check_local(loop_base + "a=candidate:1 1 udp 1 192.0.2.2 5000 typ host\r\n")
        with pytest.raises(CandidateLeak):  # another certificate than the call's
            await loop._check_local(base + "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\n")
    finally:
        await relay.close()
        await loop.close()


async def test_a_failing_source_is_reported_not_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[BaseException] = []
    track = PatternTrack(on_error=errors.append)
    await track.recv()

    def broken(*args: object) -> None:
        raise RuntimeError("camera unplugged")

    monkeypatch.setattr(av, "VideoFrame", broken)
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert [type(e) for e in errors] == [RuntimeError]
    assert track.readyState == "ended"
