"""Voice notes against the real server process (client/media, client/files.py).

* a WAV sent 1:1 and an MP3 sent in a room arrive as Opus-in-Ogg voice notes: the
  receiver sees the kind, the type and a duration within 50 ms of the source's, and
  the decrypted file is a valid Ogg Opus stream (mono, 48 kHz);
* the sender's transcoded copy is gone once it is sent (the source is untouched);
* the receiver plays a note to an injected output, and with no audio output gets the
  plain message offering ``save``;
* the commands: ``send --voice`` of a WAV, ``history`` showing ``voice note 0:01``,
  ``play`` with no audio output, ``send --voice`` of a file that is not audio, and
  ``send --record`` with no microphone, each a plain message and exit code.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from sottovoce.cli.main import main as cli_main
from sottovoce.client.media import voice
from tests.audio_samples import opus_stream, tone
from tests.integration.client_helpers import PASSPHRASE, accounts, make_account
from tests.integration.serverproc import ServerProcess
from tests.integration.test_files_e2e import file_message

NOWHERE = voice.Device("oss", "/nonexistent/sottovoce-dsp")
NULL = voice.Device("null", os.devnull)


async def test_wav_and_mp3_arrive_as_ogg_opus_voice_notes_with_their_duration(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wav, mp3 = tmp_path / "hello.wav", tmp_path / "song.mp3"
    wav_ms, mp3_ms = tone(wav, 1.7), tone(mp3, 2.6)
    wav_bytes = wav.read_bytes()
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        room = await alice.rooms.create_room("team")
        await alice.rooms.invite("team", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)

        waiting = asyncio.ensure_future(file_message(bob))
        direct = await alice.voice.send("bob", wav)
        assert await waiting == direct
        waiting = asyncio.ensure_future(file_message(bob))
        in_room = await alice.voice.send("team", mp3, room=True)
        assert await waiting == in_room

        for message_id, name, source_ms in ((direct, "hello.ogg", wav_ms),
                                            (in_room, "song.ogg", mp3_ms)):
            info = bob.files.info(message_id)
            assert (info.kind, info.media_type, info.name) == ("voice", "audio/ogg", name)
            assert info.duration_ms is not None and abs(info.duration_ms - source_ms) <= 50
            note = await bob.files.view(message_id)
            assert note.parent.parent == tmp_path / "bob" / "view"
            fmt, codec, rate, channels, seconds = opus_stream(note)
            assert (fmt, codec, rate, channels) == ("ogg", "opus", 48_000, 1)
            assert abs(seconds * 1000 - source_ms) <= 50
        # The sender's transcoded copies went once sent; the sources are as they were.
        assert not any((tmp_path / "alice" / "view").glob(".voice-*"))
        assert wav.read_bytes() == wav_bytes

        played = await bob.voice.play(direct, speaker=NULL)
        assert abs(played - wav_ms) <= 50
        monkeypatch.setitem(voice._SPEAKERS, sys.platform, (NOWHERE,))
        with pytest.raises(voice.NoAudioOutput, match="sottovoce save"):
            await bob.voice.play(in_room)


def test_cli_send_voice_history_play_and_plain_refusals(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def setup() -> None:
        for name in ("alice", "bob"):
            await (await make_account(server, name, tmp_path)).close()

    asyncio.run(setup())
    alice_home, bob_home = tmp_path / "alice", tmp_path / "bob"
    monkeypatch.setenv("SOTTOVOCE_PASSPHRASE", PASSPHRASE)
    monkeypatch.setitem(voice._SPEAKERS, sys.platform, (NOWHERE,))
    monkeypatch.setitem(voice._MICROPHONES, sys.platform, (NOWHERE,))

    def cli(*args: str, home: Path) -> tuple[int, str, str]:
        code = cli_main([*args, "--data-dir", str(home)])
        out = capsys.readouterr()
        return code, out.out, out.err

    wav = tmp_path / "hi.wav"
    tone(wav, 1.4)
    code, out, err = cli("send", "bob", "--voice", str(wav), home=alice_home)
    assert code == 0, err
    assert "✓ sent voice note 0:01 to bob" in out
    message_id = re.search(r"\(message ([A-Za-z0-9_-]+)\)", out)
    assert message_id is not None

    code, out, err = cli("history", "alice", home=bob_home)
    assert code == 0, err
    assert re.search(r"alice: \[voice note 0:01\] hi\.ogg \(\d+\.\d KiB, audio/ogg\) id "
                     + re.escape(message_id.group(1)), out), out

    code, out, err = cli("play", "alice", message_id.group(1), home=bob_home)
    assert code == 1 and "no audio output was found" in err and "sottovoce save" in err
    assert "Traceback" not in err

    text = tmp_path / "notes.txt"
    text.write_text("hello " * 50)
    code, _, err = cli("send", "bob", "--voice", str(text), home=alice_home)
    assert code == 1 and "is not an audio file that can be read" in err
    assert "Traceback" not in err
    code, _, err = cli("send", "bob", "--record", "3", home=alice_home)
    assert code == 1 and "no microphone was found" in err and "--voice FILE" in err
    assert "Traceback" not in err
