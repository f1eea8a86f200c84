"""Room calls through a real Janus on 127.0.0.1, with aiortc participants (docs/calls.md).

Each participant is a RoomCallController (the call's MLS group, SFrame, SfuMedia);
the room's stream is in memory (room_calls_helpers.RoomNet); the server's side is
the real SfuDriver against the real Janus. Video is 320x240 at 15 fps.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import vp8_depayload
from aiortc.rtp import RtpPacket

from sottovoce.calls.errors import StreamBindingError
from sottovoce.calls.frames import Codec
from sottovoce.calls.janus import SfuUnauthorized
from sottovoce.calls.media_keys import CallKeys, EpochKeys
from sottovoce.calls.room_effects import Left, RecordingRefused, RecordingState
from sottovoce.client.calls import hooks
from sottovoce.client.calls.e2ee import FrameCrypto
from sottovoce.client.calls.media import IceConfig
from sottovoce.client.calls.recording import export_recording
from sottovoce.client.calls.room_controller import RoomCallController, RoomCallOptions
from sottovoce.client.calls.room_media import SfuAccess, SfuMedia
from sottovoce.client.calls.sources import MediaSpec, PatternTrack
from sottovoce.janus_session import JanusSession
from sottovoce.protocol.audit import AuditAction
from sottovoce.secret import Secret
from sottovoce.server.sfu import (
    SfuConfig,
    SfuDriver,
    SfuEndpoint,
    SfuNotAMember,
    SfuRegionUnavailable,
    sfu_room_name,
    sfu_room_secret,
)
from sottovoce.sframe import Track
from tests.integration.janus_helpers import Janus
from tests.integration.room_calls_helpers import (
    LOOPBACK,
    ROOM,
    RoomNet,
    dev,
    events_of,
    sent_and_decoded,
    watch_published,
)

A, B, C, D = "alice/a1", "bob/b1", "carol/c1", "dave/d1"


def driver(janus: Janus) -> SfuDriver:
    return SfuDriver(SfuConfig(endpoints=(SfuEndpoint(url=janus.ws_url),), key=janus.admin_key))


@pytest.fixture
async def net(janus: Janus) -> AsyncIterator[RoomNet]:
    n = RoomNet([A, B, C, D], sfu=driver(janus))
    try:
        yield n
    finally:
        await n.close()


def camera(ctl: RoomCallController) -> PatternTrack:
    assert ctl.media is not None
    track = ctl.media._sources.camera
    assert isinstance(track, PatternTrack)
    return track


def numbers(ctl: RoomCallController, who: str) -> set[int]:
    if ctl.media is None:
        return set()
    return ctl.media.sink(dev(who), "camera").numbers


async def call_of_three(net: RoomNet) -> tuple[RoomCallController, ...]:
    alice = net.start(A)
    await net.until(lambda: alice.call.epoch == 0)
    bob, carol = net.join(B, alice), net.join(C, alice)
    everyone = (alice, bob, carol)
    await net.until(lambda: all(len(c.participants) == 3 for c in everyone))
    pairs = [(x, w) for x in everyone for w in (A, B, C) if dev(w) != x.call.me]
    await net.until(lambda: all(numbers(x, w) for x, w in pairs), 20)
    return everyone


async def outsider(net: RoomNet, grant_to: str, keys: CallKeys) -> SfuMedia:
    """A room member's media with a real grant from the server (it is a room member)
    but the given keys: none (not in the call), stale ones, or another call's."""
    assert net.sfu is not None
    alice = net.controllers[dev(A)]
    g = await net.sfu.admit(ROOM, alice.call.call_id, dev(grant_to), set(net.members))
    access = SfuAccess(url=g.url, room=g.room, feed_id=g.feed_id, token=g.token.expose().decode())
    spec = MediaSpec(audio=False, video=False)
    return SfuMedia(
        access=access, spec=spec, ice=IceConfig(loopback=True), crypto=FrameCrypto(keys)
    )


def test_janus_runs_from_the_projects_configs_and_loads_the_videoroom_and_nothing_else(
    janus: Janus,
) -> None:
    info = janus.info()
    assert set(info["plugins"]) == {"janus.plugin.videoroom"}
    assert set(info["transports"]) == {"janus.transport.http", "janus.transport.websockets"}
    assert info.get("events", {}) == {} and info.get("loggers", {}) == {}
    assert info["version_string"].startswith("1.")


# --- the call --------------------------------------------------------------------------


async def test_a_call_of_three_through_janus_decodes_95_percent_and_the_sfu_sees_only_ciphertext(
    net: RoomNet, janus: Janus
) -> None:
    everyone = await call_of_three(net)
    alice, _bob, _carol = everyone
    # The participants each shows come from the call's MLS group.
    assert all(c.participants == (dev(A), dev(B), dev(C)) for c in everyone)
    assert net.audit == [(dev(A), AuditAction.CALL_STARTED)]
    sent = {s.call.me: watch_published(s) for s in everyone}
    streams = {(r, s): sent[s.call.me] for r in everyone for s in everyone if s is not r}
    judged = await sent_and_decoded(
        streams, lambda k: numbers(k[0], f"{k[1].call.me[0]}/{k[1].call.me[1]}"), frames=45)
    for (receiver, sender), (window, got) in judged.items():
        assert len(got) >= 0.95 * len(window), (receiver.call.me, sender.call.me,
                                                 sorted(window - got))
    for receiver in everyone:
        assert receiver.media is not None and receiver.media.failed() == 0
        assert receiver.errors == []
    # Only SFrame ciphertext reached Janus: the plugin marked every publisher e2ee.
    assert net.sfu is not None
    feeds = await net.sfu.participants(ROOM, alice.call.call_id)
    assert len(feeds) == 3


async def test_outsiders_decode_nothing_a_wrong_key_nothing_and_a_swapped_stream_is_refused(
    net: RoomNet,
) -> None:
    alice, bob, carol = await call_of_three(net)
    assert net.sfu is not None
    # Dave: a room member, not in the call, granted by the server (he is a member),
    # subscribed to alice's feed -- but he holds no key of the call.
    dave = await outsider(net, D, CallKeys())
    # Eve's keys: the same people, the same leaves, another call's secrets.
    wrong = CallKeys()
    wrong.begin_epoch(
        EpochKeys.derive(
            epoch=alice.call.epoch or 0,
            exporter=lambda label, ctx, n: Secret(hashlib.shake_256(label + ctx).digest(n)),
            roster={0: dev(A), 1: dev(B), 2: dev(C), 3: dev(D)},
            own_leaf=3,
        ),
        0,
    )
    net.members.add(("eve", "e1"))
    net.keys[("eve", "e1")] = net.keys[dev(D)]
    eve = await outsider(net, "eve/e1", wrong)
    feed_a = alice.media.access.feed_id  # type: ignore[union-attr]
    feed_b = bob.media.access.feed_id  # type: ignore[union-attr]
    try:
        for other in (dave, eve):
            await other.publish()
            await other.subscribe(feed_a, dev(A))
        # The SFU swaps streams: carol is given bob's feed as if it were alice's.
        assert isinstance(carol.media, SfuMedia)
        swapped = carol.media
        await swapped.subscribe(feed_b, dev(A))
        before = len(numbers(carol, A))
        await net.until(lambda: all(o.dropped(dev(A)) > 20 for o in (dave, eve, swapped)), 30)
        for other in (dave, eve):  # frames came (above), and none opened
            assert other.sink(dev(A), "camera").frames == 0
            assert other.sink(dev(A), "audio").frames == 0
        assert any(isinstance(e, StreamBindingError) for e in swapped.misbound)
        assert len(numbers(carol, A)) <= before + 2  # nothing of bob's shown as alice's
        assert swapped.dropped(dev(A)) > 20
    finally:
        await dave.close()
        await eve.close()


async def test_a_leaver_and_a_late_joiner_decode_nothing_outside_their_time_in_the_call(
    net: RoomNet, janus: Janus
) -> None:
    alice = net.start(A)
    await net.until(lambda: alice.call.epoch == 0)
    bob = net.join(B, alice)
    await net.until(lambda: len(bob.participants) == 2 and bool(numbers(bob, A)))
    # Janus records what it relays (its .mjr files): before carol joins.
    assert net.sfu is not None
    key, call_id = janus.admin_key, alice.call.call_id
    admin = await JanusSession.connect(janus.ws_url)
    try:
        h = await admin.attach()
        room = sfu_room_name(key, ROOM, call_id)
        secret = sfu_room_secret(key, ROOM, call_id).expose().decode()
        await admin.message(
            h,
            {"request": "edit", "room": room, "secret": secret, "new_rec_dir": str(janus.rec_dir)},
        )
        await admin.message(
            h, {"request": "enable_recording", "room": room, "secret": secret, "record": True}
        )
        plaintexts = _tap_plaintext(alice)
        await asyncio.sleep(1.5)
        await admin.message(
            h, {"request": "enable_recording", "room": room, "secret": secret, "record": False}
        )
    finally:
        await admin.close()
    recorded = _mjr_video_frames(janus.rec_dir)
    assert len(recorded) > 10
    # 1. No plaintext of alice's encoded test pattern in what the SFU saw, and a plain
    #    VP8 decoder makes nothing of it.
    blob = b"".join(recorded)
    for frame in plaintexts[:10]:
        for i in range(16, len(frame) - 16, 64):
            assert frame[i : i + 16] not in blob
    assert _plain_vp8_decodes(recorded) == 0
    # 2. Carol joins: none of the frames recorded before opens with her keys.
    carol = net.join(C, alice)
    await net.until(lambda: len(carol.participants) == 3 and bool(numbers(carol, A)))
    opened = 0
    for data in recorded:
        try:
            carol.crypto.open(Codec.VP8, data, sender=dev(A), track=Track.VIDEO)
            opened += 1
        except Exception:
            continue
    assert opened == 0
    # 3. Bob leaves; a copy of his last keys, on a fresh grant (he is still a room
    #    member), subscribed to alice's feed, decodes nothing sent after he left.
    group = bob.call.group
    assert group is not None
    roster = {
        m.index: (
            m.credential.identity.decode().split("/")[0],
            m.credential.identity.decode().split("/")[1],
        )
        for m in group.members()
    }
    bob_keys = CallKeys()
    bob_keys.begin_epoch(
        EpochKeys.derive(
            epoch=group.epoch,
            exporter=group.export_secret,
            roster=roster,
            own_leaf=group.own_leaf_index,
        ),
        0,
    )
    bob.leave()
    await net.until(lambda: alice.participants == (dev(A), dev(C)) and bob.media is None)
    left_at = camera(alice).sent
    spy = await outsider(net, B, bob_keys)
    try:
        await spy.publish()
        await spy.subscribe(alice.media.access.feed_id, dev(A))  # type: ignore[union-attr]
        await net.until(lambda: spy.dropped(dev(A)) > 5, 30)  # alice's frames came ...
        assert not {n for n in spy.sink(dev(A), "camera").numbers if n >= left_at}  # unopened
    finally:
        await spy.close()
    assert any(isinstance(e, Left) for e in events_of(bob))


async def test_a_rogue_publisher_sending_plain_vp8_gets_no_frame_shown(net: RoomNet) -> None:
    alice = net.start(A)
    await net.until(lambda: alice.media is not None and alice.call.epoch == 0)
    await net.until(
        lambda: isinstance(alice.media, SfuMedia) and alice.media._private_id is not None
    )
    assert net.sfu is not None
    # Mallory, a room member with a grant, publishes plain VP8 (no SFrame), with the
    # e2ee flag Janus asks for.
    g = await net.sfu.admit(ROOM, alice.call.call_id, dev(D), set(net.members))
    rogue = await JanusSession.connect(g.url)
    pc = RTCPeerConnection()
    try:
        h = await rogue.attach()
        await rogue.message(
            h,
            {
                "request": "join",
                "ptype": "publisher",
                "room": g.room,
                "id": g.feed_id,
                "token": g.token.expose().decode(),
            },
        )
        pc.addTrack(PatternTrack())
        with hooks.loopback_only():
            await pc.setLocalDescription(await pc.createOffer())
        reply = await rogue.message(
            h,
            {"request": "publish"},
            jsep={"type": "offer", "sdp": pc.localDescription.sdp, "e2ee": True},
        )
        assert reply.jsep is not None
        await pc.setRemoteDescription(RTCSessionDescription(reply.jsep["sdp"], "answer"))
        assert isinstance(alice.media, SfuMedia)
        await asyncio.sleep(0.5)
        await alice.media.subscribe(g.feed_id, dev(D))
        await net.until(lambda: alice.media is not None and alice.media.dropped(dev(D)) > 10, 30)
        assert alice.media.sink(dev(D), "camera").frames == 0  # frames came, none shown
    finally:
        await pc.close()
        await rogue.close()


async def test_no_grant_no_media_and_a_removed_member_is_kicked(net: RoomNet, janus: Janus) -> None:
    alice = net.start(A)
    await net.until(lambda: alice.call.epoch == 0)
    bob = net.join(B, alice)
    await net.until(lambda: bool(numbers(alice, B)) and bool(numbers(bob, A)))
    assert net.sfu is not None
    call_id = alice.call.call_id
    # The server grants only current room members.
    with pytest.raises(SfuNotAMember):
        await net.sfu.admit(ROOM, call_id, ("mallory", "m1"), set(net.members))
    # Janus refuses a publisher without a valid token, and a subscriber without a
    # publisher's private id.
    room = sfu_room_name(janus.admin_key, ROOM, call_id)
    for access in (
        SfuAccess(url=janus.ws_url, room=room, feed_id="f" * 32, token="forged"),
        SfuAccess(url=janus.ws_url, room=room, feed_id="f" * 32, token=""),
    ):
        intruder = SfuMedia(
            access=access,
            spec=MediaSpec(audio=False, video=False),
            ice=IceConfig(loopback=True),
            crypto=FrameCrypto(),
        )
        with pytest.raises(SfuUnauthorized):
            await intruder.publish()
        await intruder.close()
    # A device that cannot do SFrame (no "e2ee" in its JSEP) is refused even with a grant.
    g = await net.sfu.admit(ROOM, call_id, dev(D), set(net.members))
    plain = await JanusSession.connect(janus.ws_url)
    pc = RTCPeerConnection()
    try:
        h = await plain.attach()
        await plain.message(
            h,
            {
                "request": "join",
                "ptype": "publisher",
                "room": room,
                "id": g.feed_id,
                "token": g.token.expose().decode(),
            },
        )
        pc.addTrack(PatternTrack())
        with hooks.loopback_only():
            await pc.setLocalDescription(await pc.createOffer())
        with pytest.raises(SfuUnauthorized):
            await plain.message(
                h, {"request": "publish"}, jsep={"type": "offer", "sdp": pc.localDescription.sdp}
            )
    finally:
        await pc.close()
        await plain.close()
    session = await JanusSession.connect(janus.ws_url)
    try:
        h = await session.attach()
        feed = alice.media.access.feed_id  # type: ignore[union-attr]
        with pytest.raises(SfuUnauthorized):
            await session.message(
                h,
                {
                    "request": "join",
                    "ptype": "subscriber",
                    "room": room,
                    "streams": [{"feed": feed}],
                    "private_id": 12345,
                },
            )
    finally:
        await session.close()
    # Bob is removed from the room: his grant goes, his feed is kicked.
    before = set(await net.sfu.participants(ROOM, call_id))
    bob_feed = bob.media.access.feed_id  # type: ignore[union-attr]
    assert bob_feed in before
    await net.remove_from_room(B)
    await net.until(lambda: alice.participants == (dev(A),))
    assert bob_feed not in await net.sfu.participants(ROOM, call_id)
    frozen = len(numbers(alice, B))
    await asyncio.sleep(1.0)
    assert len(numbers(alice, B)) <= frozen + 2  # nothing more from bob (a frame in flight)


async def test_recording_is_refused_on_one_no_and_written_sealed_when_all_agree(
    net: RoomNet, tmp_path: Path
) -> None:
    key = Secret(secrets.token_bytes(32))
    owner = RoomCallOptions(
        media=LOOPBACK.media, ice=LOOPBACK.ice, record_to=tmp_path / "rec1", storage_key=key
    )
    alice = net.start(A, owner)
    await net.until(lambda: alice.call.epoch == 0)
    bob = net.join(
        B, alice, RoomCallOptions(media=LOOPBACK.media, ice=LOOPBACK.ice, recording_consent="grant")
    )
    carol = net.join(
        C,
        alice,
        RoomCallOptions(media=LOOPBACK.media, ice=LOOPBACK.ice, recording_consent="refuse"),
    )
    await net.until(lambda: all(len(c.participants) == 3 for c in (alice, bob, carol)))
    await net.until(lambda: bool(numbers(alice, B)) and bool(numbers(alice, C)))
    alice.request_recording()
    await net.until(lambda: any(isinstance(e, RecordingRefused) for e in events_of(alice)))
    assert not (tmp_path / "rec1").exists()
    assert alice.recording is None
    assert (dev(A), AuditAction.RECORDING_ON) not in net.audit
    # Carol leaves; the two left agree: REC on everywhere, a sealed file, audit on/off.
    carol.leave()
    await net.until(lambda: alice.participants == (dev(A), dev(B)))
    alice.request_recording()
    await net.until(lambda: any(isinstance(e, RecordingState) and e.on for e in events_of(bob)))
    recorded_from = max(numbers(alice, B))
    await net.until(lambda: max(numbers(alice, B)) >= recorded_from + 20, 30)  # to record
    alice.stop_recording()
    await net.until(lambda: (dev(A), AuditAction.RECORDING_OFF) in net.audit)
    assert (dev(A), AuditAction.RECORDING_ON) in net.audit
    raw = (tmp_path / "rec1").read_bytes()
    assert raw.startswith(b"SVREC1")
    files = export_recording(tmp_path / "rec1", key, tmp_path)
    assert [f.name for f in files] == ["bob_b1.webm"]
    with av.open(str(files[0])) as container:
        video = sum(1 for _ in container.decode(video=0))
    assert video > 10
    with pytest.raises(Exception, match="does not open"):
        export_recording(tmp_path / "rec1", Secret(secrets.token_bytes(32)), tmp_path)


async def test_a_room_pinned_to_a_region_never_uses_another_regions_sfu(janus: Janus) -> None:
    # eu: the real Janus; ch: an SFU that is down (nothing listens there).
    down = "ws://127.0.0.1:9/"
    sfu = SfuDriver(
        SfuConfig(
            endpoints=(
                SfuEndpoint(url=janus.ws_url, region="eu"),
                SfuEndpoint(url=down, region="ch"),
            ),
            key=janus.admin_key,
        )
    )
    try:
        assert await sfu.open_call("room-eu", bytes(16), residency="eu") == janus.ws_url
        with pytest.raises(SfuRegionUnavailable):
            await sfu.open_call("room-ch", bytes(16), residency="ch")
        assert down in sfu.down()
    finally:
        await sfu.end_call("room-eu", bytes(16))
        await sfu.close()


# --- helpers ------------------------------------------------------------------------------


def _tap_plaintext(ctl: RoomCallController) -> list[bytes]:
    """Keep a copy of every VP8 frame ``ctl`` seals from now on (before sealing)."""
    seen: list[bytes] = []
    crypto = ctl.crypto
    original = crypto.seal

    def seal(track, codec, frame):  # type: ignore[no-untyped-def]
        if codec.value == "vp8":
            seen.append(frame)
        return original(track, codec, frame)

    crypto.seal = seal  # type: ignore[method-assign]
    return seen


def _mjr_video_frames(folder: Path) -> list[bytes]:
    """Janus's .mjr recordings of video (RTP packets as relayed), depacketized into frames."""
    frames: list[bytes] = []
    for path in sorted(folder.glob("*.mjr")):
        data = path.read_bytes()
        assert data[:8] == b"MJR00002"
        if len(data) == 8:
            continue  # a section that never carried media (the screen share)
        size = int.from_bytes(data[8:10], "big")
        info = json.loads(data[10 : 10 + size])
        pos = 10 + size
        packets = []
        while pos + 10 <= len(data):
            assert data[pos : pos + 4] == b"MEET"
            length = int.from_bytes(data[pos + 8 : pos + 10], "big")
            packets.append(RtpPacket.parse(data[pos + 10 : pos + 10 + length]))
            pos += 10 + length
        if info.get("t") != "v":
            continue
        assert info.get("e") is True  # Janus itself marks the media end-to-end encrypted
        by_ts: dict[int, list[RtpPacket]] = {}
        for p in packets:
            by_ts.setdefault(p.timestamp, []).append(p)
        for ts in sorted(by_ts):
            parts = sorted(by_ts[ts], key=lambda p: p.sequence_number)
            frames.append(b"".join(vp8_depayload(p.payload) for p in parts))
    return frames


def _plain_vp8_decodes(frames: list[bytes]) -> int:
    codec = av.CodecContext.create("libvpx", "r")
    decoded = 0
    for f in frames:
        try:
            decoded += len(codec.decode(av.Packet(f)))
        except av.FFmpegError:
            continue
    return decoded
