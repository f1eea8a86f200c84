"""Voice notes made and played with PyAV (client/media/voice.py), no server involved.

* a WAV and an MP3 become Ogg Opus (mono, 48 kHz), their duration counted from the
  decoded samples within 50 ms of the source's;
* a file that is not audio, and one without sound, are refused plainly;
* recording from an injected microphone (FFmpeg's ``lavfi`` sine source) makes a note
  of the asked length; where no microphone exists the error says how to send a file;
* a note plays to an injected output (FFmpeg's ``null`` muxer), and where no output
  exists the error offers ``save``; what is not Opus in Ogg is never decoded;
* the render shows a voice note as ``voice note M:SS``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import av
import pytest

from sottovoce.cli import render
from sottovoce.client.media import voice
from sottovoce.errors import UsageError
from tests.audio_samples import opus_stream, tone

NOWHERE = voice.Device("oss", "/nonexistent/sottovoce-dsp")


@pytest.mark.parametrize("suffix", [".wav", ".mp3"])
def test_audio_file_becomes_an_ogg_opus_note_of_the_same_length(
    tmp_path: Path, suffix: str
) -> None:
    source = tmp_path / f"note{suffix}"
    source_ms = tone(source, 2.3)
    seen: list[tuple[int, int]] = []
    dest = tmp_path / "note.ogg"
    duration = voice.transcode(source, dest, lambda done, total: seen.append((done, total)))
    assert abs(duration - source_ms) <= 50
    fmt, codec, rate, channels, seconds = opus_stream(dest)
    assert (fmt, codec, rate, channels) == ("ogg", "opus", 48_000, 1)
    assert abs(seconds * 1000 - source_ms) <= 50
    # Progress climbs to the end against the container's length.
    assert seen and seen[-1][0] == duration and abs(seen[-1][1] - source_ms) <= 50
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # ~28 kbit/s even for a steady tone (constrained VBR), not the 705 kbit/s of the PCM.
    assert dest.stat().st_size * 8 / 2.3 < 34_000


def test_a_file_that_is_not_audio_is_refused_plainly(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a sound " * 100)
    with pytest.raises(UsageError, match="is not an audio file that can be read"):
        voice.transcode(text, tmp_path / "out.ogg")
    empty = tmp_path / "empty.wav"
    tone(empty, 0)
    with pytest.raises(UsageError, match=r"not an audio file|holds no audio"):
        voice.transcode(empty, tmp_path / "out2.ogg")


def test_recording_from_an_injected_microphone(tmp_path: Path) -> None:
    sine = voice.Device("lavfi", "sine=frequency=440:sample_rate=44100")
    dest = tmp_path / "rec.ogg"
    duration = voice.record(1.5, dest, sine)
    assert 1500 <= duration <= 1550
    fmt, codec, rate, channels, seconds = opus_stream(dest)
    assert (fmt, codec, rate, channels) == ("ogg", "opus", 48_000, 1)
    assert abs(seconds * 1000 - duration) <= 50


def test_no_microphone_says_how_to_send_a_file_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(voice._MICROPHONES, sys.platform, (NOWHERE,))
    with pytest.raises(voice.NoMicrophone, match="no microphone was found") as caught:
        voice.record(2, tmp_path / "rec.ogg")
    assert "--voice FILE" in str(caught.value)
    for seconds in (0, 0.5, -3, float("nan"), 31 * 60):
        with pytest.raises(UsageError, match="from 1 s"):
            voice.record(seconds, tmp_path / "rec.ogg")


def test_a_note_plays_to_an_injected_output_and_no_output_offers_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "note.wav"
    tone(source, 1.2)
    note = tmp_path / "note.ogg"
    duration = voice.transcode(source, note)
    played = voice.play(note, voice.Device("null", os.devnull))
    assert abs(played - duration) <= 50
    monkeypatch.setitem(voice._SPEAKERS, sys.platform, (NOWHERE,))
    with pytest.raises(voice.NoAudioOutput, match="no audio output was found") as caught:
        voice.play(note)
    assert "sottovoce save" in str(caught.value)
    broken = tmp_path / "broken.ogg"
    broken.write_bytes(b"OggS" + b"\x00" * 200)
    with pytest.raises(UsageError, match="cannot be decoded"):
        voice.play(broken, voice.Device("null", os.devnull))
    # Only the Ogg demuxer and the Opus decoder ever see a peer's file.
    with pytest.raises(UsageError, match="cannot be decoded"):
        voice.play(source, voice.Device("null", os.devnull))
    flac_in_ogg = tmp_path / "other.ogg"
    with av.open(str(source)) as src, av.open(str(flac_in_ogg), "w", format="ogg") as out:
        stream = out.add_stream("flac", rate=44_100, layout="mono")
        for frame in src.decode(audio=0):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(UsageError, match="not Opus in Ogg"):
        voice.play(flac_in_ogg, voice.Device("null", os.devnull))


def test_a_voice_note_is_shown_with_its_length() -> None:
    assert render.duration_text(7_400) == "0:07"
    assert render.duration_text(750_000) == "12:30"
