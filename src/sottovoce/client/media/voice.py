"""Voice notes as Opus in Ogg (mono, 48 kHz, ~28 kbit/s), made and played with PyAV.

    transcode(FILE) ──► any audio FFmpeg decodes (wav, mp3, ogg, m4a...) ──► resampled
        to mono 48 kHz ──► libopus ──► Ogg; the duration is counted from the decoded
        samples (a container's own figure can be missing or wrong)
    record(SECONDS) ──► the platform's microphone input (pulse or alsa, avfoundation,
        dshow) or an injected one (tests: FFmpeg's ``lavfi`` sine source) ──► the same
        encoder
    play(NOTE) ──► only Ogg and Opus accepted ──► decoded frame by frame in memory ──►
        the platform's audio output (or an injected one, e.g. FFmpeg's ``null`` muxer)

Everything here blocks (CPU or a device): callers run it in a thread. A device that is
not there is a plain :class:`~sottovoce.errors.UsageError` naming what to do instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.error

from sottovoce.errors import UsageError

RATE = 48_000
#: Constrained VBR tuned for speech: about 28 kbit/s whatever the input (plain VBR lets
#: a steady tone or music run to half as much again).
BIT_RATE = 28_000
_OPUS_OPTIONS = {"vbr": "constrained", "application": "voip"}
#: ``progress(done_ms, total_ms)`` while a note is encoded (``total_ms`` 0 if unknown).
Progress = Callable[[int, int], None]
#: The longest note made here: a voice note is a message, not a recording session.
MAX_NOTE_MS = 30 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Device:
    """An FFmpeg device (or filter source, or muxer) to open: format and name."""

    format: str
    name: str
    options: dict[str, str] = field(default_factory=dict)


_MICROPHONES: dict[str, tuple[Device, ...]] = {
    "linux": (Device("pulse", "default"), Device("alsa", "default")),
    "darwin": (Device("avfoundation", ":0"),),
    "win32": (Device("dshow", "audio=default"),),
}
_SPEAKERS: dict[str, tuple[Device, ...]] = {
    "linux": (Device("pulse", "default"), Device("alsa", "default")),
    "darwin": (Device("audiotoolbox", "0"),),
}


class NoMicrophone(UsageError):
    """No microphone input could be opened on this device."""


class NoAudioOutput(UsageError):
    """No audio output could be opened on this device."""


def transcode(source: Path, dest: Path, progress: Progress | None = None) -> int:
    """Write ``source`` (any audio FFmpeg reads) to ``dest`` as an Opus-in-Ogg voice
    note; its duration in milliseconds, counted from the decoded samples."""
    unreadable = UsageError(f"{source} is not an audio file that can be read "
                            "(try wav, mp3, ogg or m4a)")
    try:
        container = av.open(str(source))
    except (av.error.FFmpegError, OSError, ValueError):
        raise unreadable from None
    with container:
        if not container.streams.audio:  # FFmpeg reads text, images... as video
            raise unreadable
        stream = container.streams.audio[0]
        total = 0 if container.duration is None else container.duration // 1000
        try:
            duration = _encode(container.decode(stream), dest, progress, total)
        except (av.error.FFmpegError, ValueError):
            raise UsageError(f"the audio of {source} cannot be decoded") from None
    if duration == 0:
        raise UsageError(f"{source} holds no audio")
    return duration


def record(seconds: float, dest: Path, microphone: Device | None = None,
           progress: Progress | None = None) -> int:
    """Record ``seconds`` from the microphone (by default the platform's) into ``dest``
    as a voice note; its duration in milliseconds."""
    if not 1000 <= seconds * 1000 <= MAX_NOTE_MS:
        raise UsageError(f"a recording lasts from 1 s to {MAX_NOTE_MS // 60000} minutes")
    devices = (microphone,) if microphone else _MICROPHONES.get(sys.platform, ())
    for device in devices:
        try:
            container = av.open(device.name, format=device.format, options=device.options)
        except (av.error.FFmpegError, OSError, ValueError):
            continue
        with container:
            if not container.streams.audio:
                continue
            frames = container.decode(container.streams.audio[0])
            try:
                return _encode(_first(frames, int(seconds * 1000)), dest, progress,
                               int(seconds * 1000))
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                raise UsageError(f"recording from the microphone stopped: {exc}") from None
    raise NoMicrophone("no microphone was found on this device; record the note with "
                       "another program and send the file: sottovoce send NAME --voice FILE")


def play(note: Path, speaker: Device | None = None) -> int:
    """Play a voice note (Opus in Ogg: the one demuxer and decoder a peer's file
    reaches) to the audio output (by default the platform's); the milliseconds played.
    Decoded a frame at a time in memory, never written out, and no longer than
    :data:`MAX_NOTE_MS` whatever the note claims."""
    try:
        container = av.open(str(note), format="ogg")
    except (av.error.FFmpegError, OSError, ValueError):
        raise UsageError("the voice note cannot be decoded") from None
    with container:
        audio = container.streams.audio
        if not audio or audio[0].codec_context.name != "opus":
            raise UsageError("the voice note is not Opus in Ogg; save it to play elsewhere")
        out = _open_output((speaker,) if speaker else _SPEAKERS.get(sys.platform, ()))
        with out:
            try:
                return _play_to(out, container.decode(audio[0]))
            except (av.error.FFmpegError, OSError, ValueError):
                raise UsageError("the voice note cannot be decoded or played") from None


def _open_output(devices: Iterable[Device]) -> av.container.OutputContainer:
    """The first audio output that opens, ready for 16-bit mono 48 kHz PCM."""
    for device in devices:
        try:
            out = av.open(device.name, "w", format=device.format, options=device.options)
        except (av.error.FFmpegError, OSError, ValueError):
            continue
        try:
            out.add_stream("pcm_s16le", rate=RATE, layout="mono")
            out.start_encoding()  # a device that is not there fails here
        except (av.error.FFmpegError, OSError, ValueError):
            out.close()
            continue
        return out
    raise NoAudioOutput("no audio output was found on this device; save the note and "
                        "play it elsewhere: sottovoce save NAME ID DEST")


def _play_to(out: av.container.OutputContainer, frames: Iterable[av.AudioFrame]) -> int:
    stream = out.streams.audio[0]
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    samples = 0
    for frame in frames:
        for piece in resampler.resample(frame):
            samples += piece.samples
            if samples * 1000 > MAX_NOTE_MS * RATE:
                raise UsageError("the voice note is longer than any made here; not played")
            piece.pts = None
            out.mux(stream.encode(piece))
    for piece in resampler.resample(None):
        samples += piece.samples
        piece.pts = None
        out.mux(stream.encode(piece))
    out.mux(stream.encode(None))
    return samples * 1000 // RATE


def _first(frames: Iterable[av.AudioFrame], ms: int) -> Iterator[av.AudioFrame]:
    """The frames of the first ``ms`` milliseconds (a live input never ends)."""
    done = 0
    for frame in frames:
        if done * 1000 >= ms * frame.sample_rate:
            return
        done += frame.samples
        yield frame


def _encode(frames: Iterable[av.AudioFrame], dest: Path, progress: Progress | None,
            total_ms: int) -> int:
    """Encode ``frames`` (any layout, rate and sample format) into the Ogg Opus file
    ``dest``; the milliseconds of audio they held."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    counted = 0.0
    with av.open(str(dest), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=RATE, layout="mono", options=_OPUS_OPTIONS)
        stream.codec_context.bit_rate = BIT_RATE
        for frame in frames:
            counted += frame.samples / frame.sample_rate
            if counted * 1000 > MAX_NOTE_MS:
                raise UsageError(f"a voice note lasts at most {MAX_NOTE_MS // 60000} minutes")
            for piece in resampler.resample(frame):
                out.mux(stream.encode(piece))
            if progress is not None:
                progress(round(counted * 1000), total_ms)
        for piece in resampler.resample(None):
            out.mux(stream.encode(piece))
        out.mux(stream.encode(None))
    return round(counted * 1000)
