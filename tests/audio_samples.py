"""Audio files made on the spot with PyAV, for the voice-note tests (nothing binary is
committed): a 440 Hz tone as WAV (PCM) or MP3 (LAME), of a chosen length."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import av


def _frame(values: list[int], rate: int, channels: int) -> av.AudioFrame:
    layout = "stereo" if channels == 2 else "mono"
    frame = av.AudioFrame(format="s16", layout=layout, samples=len(values))
    frame.planes[0].update(b"".join(struct.pack("<h", v) * channels for v in values))
    frame.sample_rate = rate
    return frame


def tone(path: Path, seconds: float, *, rate: int = 44_100) -> int:
    """Write a tone of ``seconds`` to ``path`` (``.wav``: mono PCM; ``.mp3``: stereo
    MP3); its length in milliseconds as written."""
    codec, fmt, channels = (("libmp3lame", "mp3", 2) if path.suffix == ".mp3"
                            else ("pcm_s16le", "wav", 1))
    total = int(seconds * rate)
    values = [int(math.sin(2 * math.pi * 440 * i / rate) * 8000) for i in range(total)]
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="stereo" if channels == 2 else "mono")
        for start in range(0, total, 1152):
            out.mux(stream.encode(_frame(values[start:start + 1152], rate, channels)))
        out.mux(stream.encode(None))
    return total * 1000 // rate


def opus_stream(path: Path) -> tuple[str, str, int, int, float]:
    """Container format, codec, rate, channels and decoded seconds of an audio file."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        seconds = sum(f.samples / f.sample_rate for f in container.decode(stream))
        return container.format.name, ctx.name, ctx.sample_rate, ctx.channels, seconds
