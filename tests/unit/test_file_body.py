"""The body of a "file" message (client/file_body.py): what a peer sends is checked
field by field, and the command line shows it as one safe line (cli/render.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from sottovoce.cli import render
from sottovoce.cli.files_cmd import duration_bar, progress_bar
from sottovoce.cli.main import main as cli_main
from sottovoce.client.file_body import FileInfo, valid_name
from sottovoce.errors import DecodeError
from sottovoce.secret import Secret
from tests.help_promises import assert_help_says

INFO = FileInfo(
    blob_id="0" * 32, key=Secret(b"k" * 32), sha256=b"\x01" * 32, size=3210,
    name="cat.jpg", media_type="image/jpeg", kind="image", thumbnail=b"\xff\xd8jpeg",
    duration_ms=None, expires_at_ms=123,
)


def _with(**fields: object) -> str:
    body = json.loads(INFO.encode())
    body.update(fields)
    return json.dumps(body)


def test_round_trip_and_no_key_in_repr() -> None:
    again = FileInfo.decode(INFO.encode())
    assert again == INFO
    assert "kkkk" not in repr(again)


@pytest.mark.parametrize("fields", [
    {"blob": "../../etc"}, {"blob": "A" * 32}, {"key": "a2V5"}, {"sha256": "00"},
    {"size": -1}, {"size": True}, {"size": "12"}, {"name": "../x"}, {"name": "a/b"},
    {"name": ""}, {"name": "x" * 256}, {"name": "evil\x1b[2J"}, {"name": ".."},
    {"type": "text/html; charset=x"}, {"kind": "exe"}, {"thumb": "!!"},
    {"thumb": "A" * 20000}, {"durationMs": -5}, {"expires": None}, {"v": 2},
    {"extra": 1},
])
def test_every_field_from_a_peer_is_checked(fields: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        FileInfo.decode(_with(**fields))


def test_names_are_one_plain_file_name() -> None:
    assert valid_name("report 2026.pdf") == "report 2026.pdf"
    for bad in ("a\\b", "nul\x00", "\u0085x"):
        with pytest.raises(DecodeError):
            valid_name(bad)


def test_history_line_of_a_file_message() -> None:
    assert render.file_line(INFO.encode(), "MID") == "[image] cat.jpg (3.1 KiB, image/jpeg) id MID"
    voice = _with(kind="voice", type="audio/wav", durationMs=65_000, thumb=None, size=100)
    assert render.file_line(voice, "V") == "[voice note 1:05] cat.jpg (100 B, audio/wav) id V"
    assert render.file_line("{not json", "X") == "[file that cannot be read]"
    assert render.size_text(100 * 1024 * 1024) == "100.0 MiB"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only() -> None:
    assert progress_bar("sending", io.StringIO()) is None
    out = _Tty()
    bar = progress_bar("sending", out)
    assert bar is not None
    bar(0, 2048)
    bar(2048, 2048)
    text = out.getvalue()
    assert "\rsending [" + "." * 30 + "] 0 B / 2.0 KiB" in text
    assert "\rsending [" + "#" * 30 + "] 2.0 KiB / 2.0 KiB" in text and text.endswith("\n")


def test_encoding_bar_shows_minutes_of_audio_on_a_terminal_only() -> None:
    assert duration_bar(io.StringIO()) is None
    out = _Tty()
    bar = duration_bar(out)
    assert bar is not None
    bar(3_000, 600_000)
    bar(600_000, 600_000)  # the end is always drawn, however soon after
    text = out.getvalue()
    assert "\rencoding [" + "." * 30 + "] 0:03 / 10:00" in text
    assert text.endswith("\rencoding [" + "#" * 30 + "] 10:00 / 10:00\x1b[K")


_ONE_OF = "give one of TEXT, --file PATH, --voice FILE or --record SECONDS"


@pytest.mark.parametrize(("argv", "said"), [
    (["send", "bob", "hi", "--file", "x.txt"], _ONE_OF),
    (["send", "bob"], "give the message TEXT, or --file PATH to send a file"),
    (["room", "send", "team", "hi", "--file", "x.txt"], _ONE_OF),
    (["send", "bob", "--voice", "a.wav", "--file", "x.txt"], _ONE_OF),
    (["room", "send", "team", "--voice", "a.wav", "--record", "3"], _ONE_OF),
    (["send", "bob", "--voice", "a.wav", "--view-once"], "give --file PATH"),
])
def test_send_takes_text_or_a_file(
    argv: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main([*argv, "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip().endswith(said) and "Traceback" not in err


@pytest.mark.parametrize(("argv", "promises"), [
    (["send", "--help"], ["--file PATH", "encrypted on this device in chunks",
                          "sottovoce save", "refused past the server's size limit"]),
    (["room", "send", "--help"], ["--file PATH", "every other member device",
                                  "sottovoce save #ROOM MESSAGE_ID DEST"]),
    (["save", "--help"], ["SHA-256", "a directory: under the sender's file name",
                          "never left half-written", "not replaced"]),
    (["server", "--help"], ["--max-file-size", "--file-quota", "--file-ttl-ms"]),
    (["send", "--help"], ["--voice FILE", "wav, mp3, ogg, m4a", "Opus (mono, 48 kHz",
                          "--record SECONDS", "no microphone"]),
    (["room", "send", "--help"], ["--voice FILE", "--record SECONDS"]),
    (["play", "--help"], ["decode it in memory", "default audio output", "`save`",
                          "[voice note 0:07]"]),
])
def test_the_file_commands_help(
    argv: list[str], promises: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_help_says(argv, promises, capsys)
