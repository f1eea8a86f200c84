"""A consented call recording, written by the device that asked, sealed at rest.

What is written are the encoded frames this device decrypted (after SFrame, so
no extra decoding or encoding), each chunk of them sealed with the owner's
storage key (:func:`sottovoce.crypto.sealed.seal_record`)::

    file   = "SVREC1" ‖ recording_id (16) ‖ chunk*
    chunk  = uint32 length ‖ seal_record(key, "sottovoce call recording",
                                         recording_id ‖ uint64 index, plaintext)
    plaintext = uint8 last ‖ frame<V>*
    frame  = user<1..255> ‖ device<1..255> ‖ uint8 track ‖ uint8 codec
             ‖ uint32 rtp_timestamp ‖ uint64 at_ms ‖ data<V>

Binding the chunk index into each seal means chunks cannot be reordered, dropped
from the middle or swapped between recordings without :func:`export_recording`
noticing; the ``last`` flag of the final chunk shows a recording was not cut
short. :func:`export_recording` (the owner, with the key) writes one WebM file per
participant and track kind -- camera and audio together, screen alone -- by
remuxing the frames, never re-encoding them.
"""

from __future__ import annotations

import fractions
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av

from sottovoce.calls.frames import Codec, is_vp8_keyframe
from sottovoce.calls.media_keys import Device
from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sealed import open_record, seal_record
from sottovoce.errors import DecodeError, DecryptionError, UsageError
from sottovoce.limits import RECORDING_FRAMES_PER_CHUNK
from sottovoce.secret import Secret
from sottovoce.sframe import Track

MAGIC = b"SVREC1"
_KIND = b"sottovoce call recording"
_ID = 16
#: A chunk at rest (64 keyframes of 1080p VP8 are well under this).
_MAX_CHUNK = 64 * 1024 * 1024
_CODECS = {Codec.OPUS: 1, Codec.VP8: 2}
_CODEC_OF = {v: k for k, v in _CODECS.items()}


class RecordingDamaged(DecryptionError):
    """The recording file is not one of ours, was changed, reordered or cut short."""

    code = "recording_damaged"


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedFrame:
    sender: Device
    track: Track
    codec: Codec
    rtp_timestamp: int
    at_ms: int
    data: bytes


class SealedRecording:
    """Appends frames to a sealed recording file (open only after consent)."""

    def __init__(
        self, path: Path, *, storage_key: Secret, rng: Random, clock_ms: Callable[[], int]
    ) -> None:
        if not path.parent.is_dir():
            raise UsageError(f"cannot record to {path}: no such directory")
        self.path = path
        self.recording_id = rng(_ID)
        self._key = storage_key
        self._rng = rng
        self._clock = clock_ms
        self._index = 0
        self._frames: list[RecordedFrame] = []
        self._file = path.open("xb")
        self._file.write(MAGIC + self.recording_id)
        self.closed = False

    def write(
        self, sender: Device, track: Track, codec: Codec, rtp_timestamp: int, data: bytes
    ) -> None:
        if self.closed:
            return
        self._frames.append(
            RecordedFrame(
                sender=sender,
                track=track,
                codec=codec,
                rtp_timestamp=rtp_timestamp & 0xFFFFFFFF,
                at_ms=self._clock(),
                data=data,
            )
        )
        if len(self._frames) >= RECORDING_FRAMES_PER_CHUNK:
            self._flush(last=False)

    def _flush(self, *, last: bool) -> None:
        w = Writer()
        w.boolean(last)
        for f in self._frames:
            w.opaque8(f.sender[0].encode("ascii"))
            w.opaque8(f.sender[1].encode("ascii"))
            w.u8(int(f.track))
            w.u8(_CODECS[f.codec])
            w.u32(f.rtp_timestamp)
            w.u64(f.at_ms)
            w.opaque_v(f.data)
        sealed = seal_record(
            self._key,
            _KIND,
            self.recording_id + self._index.to_bytes(8, "big"),
            w.getvalue(),
            self._rng,
        )
        self._file.write(len(sealed).to_bytes(4, "big") + sealed)
        self._file.flush()
        self._index += 1
        self._frames = []

    def close(self) -> None:
        if self.closed:
            return
        self._flush(last=True)
        self._file.close()
        self.closed = True


def read_recording(path: Path, storage_key: Secret) -> list[RecordedFrame]:
    """Every frame of a recording, checked (:class:`RecordingDamaged` otherwise)."""
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _ID:
        raise RecordingDamaged("not a sottovoce call recording")
    recording_id = data[len(MAGIC) : len(MAGIC) + _ID]
    pos = len(MAGIC) + _ID
    frames: list[RecordedFrame] = []
    index = 0
    last = False
    while pos < len(data):
        if last:
            raise RecordingDamaged("data after the last chunk")
        if pos + 4 > len(data):
            raise RecordingDamaged("the recording is cut short")
        size = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        if size > _MAX_CHUNK or pos + size > len(data):
            raise RecordingDamaged("the recording is cut short")
        try:
            plain = open_record(
                storage_key, _KIND, recording_id + index.to_bytes(8, "big"), data[pos : pos + size]
            )
        except DecryptionError:
            raise RecordingDamaged("a chunk of the recording does not open") from None
        pos += size
        index += 1
        try:
            last, chunk = decode(_read_chunk, plain)
        except DecodeError:
            raise RecordingDamaged("a chunk of the recording is malformed") from None
        frames += chunk
    if not last:
        raise RecordingDamaged("the recording is cut short (no last chunk)")
    return frames


def _read_chunk(r: Reader) -> tuple[bool, list[RecordedFrame]]:
    last = r.boolean()
    frames = []
    while r.remaining:
        user = r.opaque8().decode("ascii", "replace")
        device = r.opaque8().decode("ascii", "replace")
        track_id = r.u8()
        codec_id = r.u8()
        rtp_timestamp = r.u32()
        at_ms = r.u64()
        payload = r.opaque_v()
        if track_id not in (Track.AUDIO, Track.VIDEO, Track.SCREEN) or codec_id not in _CODEC_OF:
            raise DecodeError("unknown track or codec")
        frames.append(
            RecordedFrame(
                sender=(user, device),
                track=Track(track_id),
                codec=_CODEC_OF[codec_id],
                rtp_timestamp=rtp_timestamp,
                at_ms=at_ms,
                data=payload,
            )
        )
    return last, frames


def export_recording(path: Path, storage_key: Secret, out_dir: Path) -> list[Path]:
    """Write the recording as WebM files into ``out_dir``: ``USER_DEVICE.webm`` (camera
    and audio) and ``USER_DEVICE-screen.webm``; returns the files written."""
    frames = read_recording(path, storage_key)
    groups: dict[tuple[Device, bool], list[RecordedFrame]] = {}
    for f in frames:
        groups.setdefault((f.sender, f.track is Track.SCREEN), []).append(f)
    written = []
    for (sender, screen), items in groups.items():
        name = f"{_safe(sender[0])}_{_safe(sender[1])}{'-screen' if screen else ''}.webm"
        target = out_dir / name
        if _write_webm(target, items):
            written.append(target)
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:64]


def _write_webm(target: Path, frames: list[RecordedFrame]) -> bool:
    """Remux one participant's frames; video from its first keyframe on. Every stream
    is declared before the first packet (a container's header comes first)."""
    first_key = next(
        (i for i, f in enumerate(frames) if f.codec is Codec.VP8 and is_vp8_keyframe(f.data)),
        None,
    )
    has_audio = any(f.codec is Codec.OPUS for f in frames)
    if first_key is None and not has_audio:
        return False
    with av.open(str(target), "w", format="webm") as container:
        video = None
        if first_key is not None:
            width, height = _vp8_size(frames[first_key].data)
            video = container.add_stream("libvpx", rate=90_000)
            video.width, video.height = width, height
            video.pix_fmt = "yuv420p"
        audio = None
        if has_audio:
            audio = container.add_stream("libopus", rate=48_000)
            audio.layout = "stereo"
        start = frames[0].at_ms
        for i, f in enumerate(frames):
            stream: av.stream.Stream | None
            if f.codec is Codec.VP8:
                stream, clock = (
                    (video if first_key is not None and i >= first_key else None),
                    90_000,
                )
            else:
                stream, clock = audio, 48_000
            if stream is None:
                continue
            # Timestamps from the arrival clock, which every stream of the file shares.
            packet = av.Packet(f.data)
            packet.stream = stream
            packet.time_base = fractions.Fraction(1, clock)
            packet.pts = packet.dts = (f.at_ms - start) * clock // 1000
            if f.codec is Codec.VP8:
                packet.is_keyframe = is_vp8_keyframe(f.data)
            container.mux(packet)
    return True


def _vp8_size(frame: bytes) -> tuple[int, int]:
    """RFC 6386 §9.1: width and height (14 bits each) after a keyframe's start code."""
    return (
        int.from_bytes(frame[6:8], "little") & 0x3FFF,
        int.from_bytes(frame[8:10], "little") & 0x3FFF,
    )
