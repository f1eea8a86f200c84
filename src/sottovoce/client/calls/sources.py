"""Where a call's media comes from: synthetic sources, a file, or the machine's devices.

Synthetic sources let calls run on headless machines and in tests:

* :class:`ToneTrack` -- a sine tone (Opus input, 48 kHz, 20 ms frames);
* :class:`PatternTrack` -- video frames that carry their own 16-bit number as two
  rows of large black/white cells (the second row the complement of the first),
  so a receiver can count decoded frames after lossy VP8 with
  :func:`read_frame_number`; below them, vertical bars move a little each frame
  so the encoder has real work to do.

Every track reports an exception raised while producing a frame to
``on_error`` before it ends: aiortc would otherwise just stop sending.
"""

from __future__ import annotations

import array
import asyncio
import fractions
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import av
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from sottovoce.client.calls.errors import MediaSourceUnavailable

AUDIO_RATE = 48_000
AUDIO_FRAME_SAMPLES = 960  # 20 ms: one Opus frame per RTP packet
VIDEO_CLOCK = 90_000  # RFC 7741 §4.1: VP8 uses a 90 kHz RTP clock
#: Bits of frame number a pattern frame carries (wraps after 65,536 frames: 36 min at 30 fps).
PATTERN_BITS = 16
_WHITE, _BLACK, _GREY = 235, 16, 128  # ITU-R BT.601 studio-range luma

F = TypeVar("F", av.AudioFrame, av.VideoFrame)


class _PacedTrack(MediaStreamTrack, Generic[F]):
    """Frames at a fixed rate on the event loop's clock; reports its own failures."""

    def __init__(
        self, *, period_s: float, on_error: Callable[[BaseException], None] | None
    ) -> None:
        super().__init__()
        self._period = period_s
        self._start: float | None = None
        self._index = 0
        self._on_error = on_error

    async def _wait_turn(self) -> int:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        index = self._index
        self._index += 1
        delay = self._start + index * self._period - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        return index

    async def recv(self) -> F:
        if self.readyState != "live":
            raise MediaStreamError("track ended")
        index = await self._wait_turn()
        try:
            return self._frame(index)
        except Exception as exc:  # reported, then the track ends (see module docstring)
            if self._on_error is not None:
                self._on_error(exc)
            self.stop()
            raise MediaStreamError(f"{type(self).__name__} failed") from exc

    def _frame(self, index: int) -> F:
        """Frame number ``index`` (from 0), due now."""
        raise NotImplementedError


class ToneTrack(_PacedTrack[av.AudioFrame]):
    """A sine tone, mono s16 at 48 kHz in 20 ms frames."""

    kind = "audio"

    def __init__(
        self,
        *,
        frequency_hz: float = 440.0,
        level: float = 0.3,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(period_s=AUDIO_FRAME_SAMPLES / AUDIO_RATE, on_error=on_error)
        # One second of samples, sliced per frame; a whole number of cycles per
        # second keeps the wrap seamless.
        cycles = max(1, round(frequency_hz))
        amplitude = int(32767 * level)
        self._second = array.array(
            "h",
            (
                int(amplitude * math.sin(2 * math.pi * cycles * i / AUDIO_RATE))
                for i in range(AUDIO_RATE)
            ),
        ).tobytes()

    def _frame(self, index: int) -> av.AudioFrame:
        start = (index * AUDIO_FRAME_SAMPLES) % AUDIO_RATE * 2
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_FRAME_SAMPLES)
        frame.planes[0].update(self._second[start : start + AUDIO_FRAME_SAMPLES * 2])
        frame.sample_rate = AUDIO_RATE
        frame.pts = index * AUDIO_FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


class SilenceGate(MediaStreamTrack):
    """Passes audio through, or the same frames zeroed while muted.

    Muting keeps packets flowing at the same size and rate (Opus CBR), so the
    network cannot tell a muted participant from a speaking one.
    """

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source
        self.muted = False

    async def recv(self) -> av.AudioFrame:
        frame = await self._source.recv()
        if not isinstance(frame, av.AudioFrame):
            raise MediaStreamError("an audio source produced a non-audio frame")
        if self.muted:
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.stop()


class PatternTrack(_PacedTrack[av.VideoFrame]):
    """Numbered video frames (see the module docstring), yuv420p."""

    kind = "video"

    def __init__(
        self,
        *,
        width: int = 320,
        height: int = 240,
        fps: int = 15,
        shade: int = 0,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if width % 32 or height % 16 or not 1 <= fps <= 60:
            raise MediaSourceUnavailable(
                "pattern video: width a multiple of 32, height of 16, 1-60 fps"
            )
        super().__init__(period_s=1 / fps, on_error=on_error)
        self.width, self.height, self.fps = width, height, fps
        self.sent = 0
        cell = width // PATTERN_BITS
        self._cell_w, self._cell_h = cell, height // 8
        # Bars for the moving part; ``shade`` tells two pattern tracks apart.
        self._bars = bytes(
            (_GREY + (64 if (x // 16) % 2 else -64) + shade) & 0xFF for x in range(width)
        )
        self._chroma = bytes([128]) * ((width // 2) * (height // 2))

    def _luma(self, number: int) -> bytes:
        w, cw, ch = self.width, self._cell_w, self._cell_h
        top = bytearray()
        bottom = bytearray()
        for bit in range(PATTERN_BITS):
            on = (number >> (PATTERN_BITS - 1 - bit)) & 1
            top += bytes([_WHITE if on else _BLACK]) * cw
            bottom += bytes([_BLACK if on else _WHITE]) * cw
        top += bytes([_GREY]) * (w - len(top))
        bottom += bytes([_GREY]) * (w - len(bottom))
        shift = (number * 4) % w
        bars = self._bars[shift:] + self._bars[:shift]
        return bytes(top) * ch + bytes(bottom) * ch + bars * (self.height - 2 * ch)

    def _frame(self, index: int) -> av.VideoFrame:
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        _fill(frame.planes[0], self._luma(index % (1 << PATTERN_BITS)), self.width)
        _fill(frame.planes[1], self._chroma, self.width // 2)
        _fill(frame.planes[2], self._chroma, self.width // 2)
        frame.pts = index * (VIDEO_CLOCK // self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent = index + 1
        return frame


def _fill(plane: av.video.plane.VideoPlane, rows: bytes, width: int) -> None:
    stride = plane.line_size
    if stride == width:
        plane.update(rows)
        return
    padded = bytearray(plane.buffer_size)
    for y in range(len(rows) // width):
        padded[y * stride : y * stride + width] = rows[y * width : (y + 1) * width]
    plane.update(bytes(padded))


def read_frame_number(frame: av.VideoFrame) -> int | None:
    """The number a :class:`PatternTrack` frame carries, or None if it does not read as one.

    Samples the centre of each cell; a frame counts only if the second row is
    the exact complement of the first, so a garbled frame is not miscounted.
    """
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    stride = plane.line_size
    luma = bytes(plane)
    cw, ch = frame.width // PATTERN_BITS, frame.height // 8
    number = 0
    for bit in range(PATTERN_BITS):
        x = bit * cw + cw // 2
        top = luma[(ch // 2) * stride + x]
        bottom = luma[(ch + ch // 2) * stride + x]
        a, b = top > _GREY, bottom > _GREY
        if a == b:
            return None
        number = (number << 1) | int(a)
    return number


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaSpec:
    """What to send in a call.

    ``source``: "synthetic" (tone + pattern), "device" (microphone and camera of
    this machine), or a path to a media file (``--media FILE``). ``screen``:
    None, "synthetic" or "device" (the X11 display) for the screen-share track.
    """

    source: str = "synthetic"
    audio: bool = True
    video: bool = True
    screen: str | None = None
    width: int = 320
    height: int = 240
    fps: int = 15


@dataclass(slots=True)
class Sources:
    """The tracks of one call, kept across ICE restarts (each peer connection relays them)."""

    audio: MediaStreamTrack | None
    camera: MediaStreamTrack | None
    screen: MediaStreamTrack | None
    players: list[MediaPlayer]

    def stop(self) -> None:
        for track in (self.audio, self.camera, self.screen):
            if track is not None:
                track.stop()
        for player in self.players:
            for track in (player.audio, player.video):
                if track is not None:
                    track.stop()


def open_sources(spec: MediaSpec, *, on_error: Callable[[BaseException], None]) -> Sources:
    """Open the tracks ``spec`` asks for; :class:`MediaSourceUnavailable` if one is missing."""
    players: list[MediaPlayer] = []
    audio: MediaStreamTrack | None = None
    camera: MediaStreamTrack | None = None
    if spec.source == "synthetic":
        audio = ToneTrack(on_error=on_error) if spec.audio else None
        camera = (
            PatternTrack(width=spec.width, height=spec.height, fps=spec.fps, on_error=on_error)
            if spec.video
            else None
        )
    elif spec.source == "device":
        if spec.audio:
            player = _open_player("default", "pulse", {}) or _open_player("default", "alsa", {})
            if player is None or player.audio is None:
                raise MediaSourceUnavailable(
                    "no microphone found; use --media FILE or synthetic media"
                )
            players.append(player)
            audio = player.audio
        if spec.video:
            cameras = sorted(Path("/dev").glob("video*"))
            size = {"video_size": f"{spec.width}x{spec.height}", "framerate": str(spec.fps)}
            player = _open_player(str(cameras[0]), "v4l2", size) if cameras else None
            if player is None or player.video is None:
                raise MediaSourceUnavailable(
                    "no camera found; use --audio-only, --media FILE or synthetic media"
                )
            players.append(player)
            camera = player.video
    else:
        path = Path(spec.source)
        if not path.is_file():
            raise MediaSourceUnavailable(f"no such media file: {path}")
        player = _open_player(str(path), None, {})
        if player is None:
            raise MediaSourceUnavailable(f"cannot read media file: {path}")
        players.append(player)
        audio = player.audio if spec.audio else None
        camera = player.video if spec.video else None
        if audio is None and camera is None:
            raise MediaSourceUnavailable(f"the media file has no audio or video: {path}")
    screen: MediaStreamTrack | None = None
    if spec.screen == "synthetic":
        screen = PatternTrack(
            width=spec.width, height=spec.height, fps=spec.fps, shade=32, on_error=on_error
        )
    elif spec.screen == "device":
        display = os.environ.get("DISPLAY")
        player = _open_player(display, "x11grab", {"framerate": str(spec.fps)}) if display else None
        if player is None or player.video is None:
            raise MediaSourceUnavailable(
                "no X11 display to share; set DISPLAY or share a synthetic screen"
            )
        players.append(player)
        screen = player.video
    elif spec.screen is not None:
        raise MediaSourceUnavailable("screen share: 'synthetic' or 'device'")
    return Sources(
        audio=SilenceGate(audio) if audio is not None else None,
        camera=camera,
        screen=screen,
        players=players,
    )


def check_media_file(path: Path) -> None:
    """Open ``path`` as media once, so that a command can refuse a file that is not there
    or holds no audio or video before a call rings (:class:`MediaSourceUnavailable`)."""
    if not path.exists():
        raise MediaSourceUnavailable("no such file")
    if not path.is_file():
        raise MediaSourceUnavailable("not a file")
    try:
        with av.open(str(path)) as container:
            usable = any(s.type in ("audio", "video") for s in container.streams)
    except PermissionError:
        raise MediaSourceUnavailable("permission denied") from None
    except (av.FFmpegError, OSError, ValueError):
        usable = False
    if not usable:
        raise MediaSourceUnavailable("it holds no audio or video this client can play")


def _open_player(target: str, fmt: str | None, options: dict[str, str]) -> MediaPlayer | None:
    if fmt is not None and fmt not in av.formats_available:
        return None
    try:
        return MediaPlayer(target, format=fmt, options=options)
    except (av.FFmpegError, OSError, ValueError):
        return None
