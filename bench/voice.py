"""Voice notes: transcoding a WAV and an MP3 to Opus in Ogg on the sender's device,
against decoding the same file alone (the floor: FFmpeg reading it), in the same run.

    python bench/voice.py [--seconds 120]

The sources are made here with PyAV (``tests/audio_samples.py``): a 440 Hz tone of
``--seconds`` at 44.1 kHz, as mono 16-bit WAV and as stereo MP3 (LAME). For each:

* decode alone: every frame of the file decoded with PyAV, nothing else;
* transcode: ``client/media/voice.py``'s ``transcode`` (decode, resample to mono
  48 kHz, libopus at ~28 kbit/s constrained VBR, Ogg), as ``send --voice`` runs it.

Printed per source: wall time of each (best of 3), transcode speed as a multiple of
real time, the transcode / decode ratio, the note's size and bit rate, and the
duration the note carries against the source's.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.audio_samples

import av
from tests.audio_samples import tone

from sottovoce.client.media import voice


def best_of(n: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def decode_only(path: Path) -> None:
    with av.open(str(path)) as container:
        for _ in container.decode(audio=0):
            pass


def measure(source: Path, note: Path, seconds: float, source_ms: int) -> str:
    decode_s = best_of(3, functools.partial(decode_only, source))
    transcode_s = best_of(3, functools.partial(voice.transcode, source, note))
    duration = voice.transcode(source, note)
    size = note.stat().st_size
    return (f"{source.suffix[1:]:>4} {seconds:.0f} s ({source.stat().st_size / 1e6:.1f} MB): "
            f"decode alone {decode_s * 1000:.0f} ms, transcode {transcode_s * 1000:.0f} ms "
            f"= {seconds / transcode_s:.0f}x real time, "
            f"{transcode_s / decode_s:.1f}x decode alone; note {size / 1024:.1f} KiB "
            f"= {size * 8 / seconds / 1000:.1f} kbit/s; duration "
            f"{duration} ms vs source {source_ms} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="length of each source file (default 120)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, PyAV {av.__version__}, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("method: best of 3 wall times per phase, one process, files in the page cache")
    with TemporaryDirectory() as tmp:
        for suffix in (".wav", ".mp3"):
            source = Path(tmp) / f"source{suffix}"
            source_ms = tone(source, args.seconds)
            print(measure(source, Path(tmp) / "note.ogg", args.seconds, source_ms))

if __name__ == "__main__":
    main()
