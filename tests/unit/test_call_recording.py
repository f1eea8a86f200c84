"""A consented recording at rest: sealed chunks bound to their place, exported by its
owner as WebM without re-encoding (client/calls/recording.py)."""

from __future__ import annotations

import secrets
from pathlib import Path

import av
import pytest
from aiortc.codecs.opus import OpusEncoder

from sottovoce.calls.frames import Codec
from sottovoce.client.calls import hooks
from sottovoce.client.calls.recording import (
    RecordingDamaged,
    SealedRecording,
    export_recording,
    read_recording,
)
from sottovoce.client.calls.sources import PatternTrack, ToneTrack
from sottovoce.errors import UsageError
from sottovoce.secret import Secret
from sottovoce.sframe import Track

KEY = Secret(secrets.token_bytes(32))
BOB = ("bob", "b1")


async def record(path: Path, frames: int = 150) -> SealedRecording:
    """Bob's camera (VP8) and audio (Opus) for ``frames`` video frames, sealed."""
    now = [0]
    rec = SealedRecording(path, storage_key=KEY, rng=secrets.token_bytes, clock_ms=lambda: now[0])
    video: list[bytes] = []
    encoder = hooks.FrameSealingVp8Encoder(lambda f: video.append(f) or f)  # type: ignore[func-returns-value]
    opus = OpusEncoder()
    pattern, tone = PatternTrack(), ToneTrack()
    pattern._period = tone._period = 0  # as fast as the encoder goes, not in real time
    for i in range(frames):
        encoder.encode(await pattern.recv())
        now[0] = i * 66
        rec.write(BOB, Track.VIDEO, Codec.VP8, i * 6000, video[-1])
        if i < 20:
            rec.write(BOB, Track.SCREEN, Codec.VP8, i * 6000, video[-1])
        for _ in range(3):
            for packet in opus.encode(await tone.recv())[0]:
                rec.write(BOB, Track.AUDIO, Codec.OPUS, 0, packet)
    rec.close()
    return rec


async def test_a_recording_reads_back_and_exports_to_webm_without_reencoding(
    tmp_path: Path,
) -> None:
    path = tmp_path / "call.rec"
    await record(path)
    frames = read_recording(path, KEY)
    assert sum(1 for f in frames if f.track is Track.VIDEO) == 150
    assert all(f.sender == BOB for f in frames)
    # Nothing of the frames is readable at rest.
    raw = path.read_bytes()
    assert frames[0].data[10:42] not in raw
    files = export_recording(path, KEY, tmp_path)
    assert sorted(f.name for f in files) == ["bob_b1-screen.webm", "bob_b1.webm"]
    with av.open(str(tmp_path / "bob_b1.webm")) as container:
        kinds = sorted(s.type for s in container.streams)
        video = sum(1 for _ in container.decode(video=0))
    assert kinds == ["audio", "video"] and video == 150
    with av.open(str(tmp_path / "bob_b1-screen.webm")) as container:
        assert [s.type for s in container.streams] == ["video"]
        assert sum(1 for _ in container.decode(video=0)) == 20


@pytest.mark.parametrize("damage", ["swap", "truncate", "flip", "drop_last", "other_key", "magic"])
async def test_a_changed_reordered_or_cut_recording_is_refused(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "call.rec"
    await record(path, frames=60)  # several chunks
    raw = bytearray(path.read_bytes())
    header = 6 + 16
    chunks, pos = [], header
    while pos < len(raw):
        size = int.from_bytes(raw[pos : pos + 4], "big")
        chunks.append(bytes(raw[pos : pos + 4 + size]))
        pos += 4 + size
    assert len(chunks) >= 3
    key = KEY
    if damage == "swap":
        chunks[0], chunks[1] = chunks[1], chunks[0]
    elif damage == "drop_last":
        chunks.pop()
    elif damage == "flip":
        chunks[1] = chunks[1][:50] + bytes([chunks[1][50] ^ 1]) + chunks[1][51:]
    body = b"".join(chunks)
    data = bytes(raw[:header]) + body
    if damage == "truncate":
        data = data[:-7]
    elif damage == "other_key":
        key = Secret(secrets.token_bytes(32))
    elif damage == "magic":
        data = b"XXXXXX" + data[6:]
    path.write_bytes(data)
    with pytest.raises(RecordingDamaged):
        read_recording(path, key)


def test_a_recording_never_overwrites_and_needs_its_directory(tmp_path: Path) -> None:
    (tmp_path / "exists").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        SealedRecording(tmp_path / "exists", storage_key=KEY, rng=secrets.token_bytes, clock_ms=int)
    with pytest.raises(UsageError):
        SealedRecording(
            tmp_path / "no" / "dir", storage_key=KEY, rng=secrets.token_bytes, clock_ms=int
        )
    assert (tmp_path / "exists").read_bytes() == b"mine"
