"""`sottovoce room chat ROOM --ephemeral` and `/photo` as a user types them: three
members of a room chat over the server's ephemeral path, a photo crosses from memory,
`panic` from one ends it for the other two within a second, and afterwards neither
the text nor the photo is in any data directory, the server's files or the temp dir
(the test's own captures of the terminal aside)."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.help_promises import assert_help_says
from tests.integration.calls_cli_helpers import Cli, accounts, env, run
from tests.integration.serverproc import ServerProcess
from tests.integration.test_ephemeral_chat import _files, _found
from tests.integration.test_ephemeral_cli import _type
from tests.integration.test_ephemeral_group import _png


def _room_chat(home: Path, *args: str) -> tuple[Cli, subprocess.Popen[bytes]]:
    out, err = home.parent / f"{home.name}-room.out", home.parent / f"{home.name}-room.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sottovoce", "room", "chat", "team", "--ephemeral",
             "--wait", "30", *args],
            env=env(home), stdin=subprocess.PIPE, stdout=o, stderr=e,
        )
    return Cli(proc, out, err), proc


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_three_members_chat_send_a_photo_and_one_panics(
    server: ServerProcess, tmp_path: Path
) -> None:
    started = time.time() - 1
    alice, bob, carol = accounts(server, tmp_path, "alice", "bob", "carol")
    _ok(run(alice, "room", "create", "team"))
    _ok(run(alice, "room", "invite", "team", "bob"))
    _ok(run(alice, "room", "invite", "team", "carol"))
    for home in (bob, carol):  # the Welcome, and for bob carol's addition
        assert "alice, bob, carol" in _ok(run(home, "room", "list"))
    canary = "roomcanary" + secrets.token_hex(8)
    photo_canary = b"PICCANARY" + secrets.token_bytes(40)
    photo = tmp_path / "beach.png"
    photo.write_bytes(_png(64, 48, photo_canary))
    clis = []
    try:
        a_cli, a_proc = _room_chat(alice, "--server-relay")
        clis.append(a_proc)
        a_cli.wait_for(r"started an ephemeral chat of #team: nothing is stored")
        a_cli.wait_for(r"they run: room chat team --ephemeral")
        b_cli, b_proc = _room_chat(bob, "--server-relay")
        clis.append(b_proc)
        c_cli, c_proc = _room_chat(carol, "--server-relay")
        clis.append(c_proc)
        b_cli.wait_for(r"joined the ephemeral chat of #team")
        for cli, others in ((a_cli, ("bob", "carol")), (b_cli, ("alice", "carol")),
                            (c_cli, ("alice", "bob"))):
            for other in others:
                cli.wait_for(rf"{other} is in the chat")
        _type(a_proc, f"hello team {canary}")
        b_cli.wait_for(rf"alice: hello team {canary}")
        c_cli.wait_for(rf"alice: hello team {canary}")
        _type(c_proc, f"/photo {photo}")
        c_cli.wait_for(r"sent photo beach.png \(\d+ bytes\) to 2; nothing of it was written")
        photo.unlink()
        size = len(_png(64, 48, photo_canary))
        for cli in (a_cli, b_cli):
            cli.wait_for(rf"carol sent photo 'beach.png': PNG image, 64×48, {size} bytes "
                         r"\(#1, held in memory only; /save 1 PATH writes it to disk\)")
        _type(b_proc, "/media")
        b_cli.wait_for(r"#1 from carol: photo 'beach.png': PNG image, 64×48")
        _type(b_proc, "/save 2 somewhere.png")
        assert re.search(r"N as /media numbers them", _wait_err(b_cli, "not sent"))
        assert _ok(run(bob, "panic", "--data-dir", str(bob))).startswith("panic:")
        t0 = time.monotonic()
        for cli in (a_cli, c_cli):
            cli.wait_for(r"ephemeral room chat ended: bob panicked; nothing of it is kept",
                         timeout=1.0)
        assert time.monotonic() - t0 < 1.0
        assert b_cli.finish(10) == 3
        assert a_cli.finish(10) == 0 and c_cli.finish(10) == 0
        assert "ephemeral room chat ended: panic" in b_cli.stdout()
    finally:
        for p in clis:
            if p.poll() is None:
                p.kill()
                p.wait()
    server.stop()
    assert not (tmp_path / "bob" / "somewhere.png").exists()
    needles = [canary.encode(), photo_canary]
    assert _found(needles, _files(server.data_dir, alice, bob, carol)) == []
    captures = {p for p in tmp_path.iterdir() if p.suffix in (".out", ".err")}
    in_temp = [p for p in _files(Path(tempfile.gettempdir()), since=started)
               if p not in captures]
    assert _found(needles, iter(in_temp)) == []


def _wait_err(cli: Cli, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in cli.stderr():
        assert time.monotonic() < deadline, cli.stderr()
        time.sleep(0.05)
    return cli.stderr()


def test_room_chat_mistakes_are_plain_errors(server: ServerProcess, tmp_path: Path) -> None:
    (alice,) = accounts(server, tmp_path, "alice")
    done = run(alice, "room", "chat", "team")
    assert done.returncode == 1 and "add --ephemeral" in done.stderr
    assert "chat '#team'" in done.stderr
    missing = run(alice, "room", "chat", "nosuch", "--ephemeral")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "no room 'nosuch' on this device" in missing.stderr
    _ok(run(alice, "room", "create", "team"))
    alone = run(alice, "room", "chat", "team", "--ephemeral", "--wait", "2", "--server-relay")
    assert alone.returncode == 1 and "nobody joined the ephemeral room chat" in alone.stderr
    assert "Traceback" not in alone.stderr


def test_room_chat_help_says_what_the_tests_above_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert_help_says(["room", "chat", "--help"], [
        "With --ephemeral (required)", "nothing stored by anyone",
        "The first member to run it starts the chat and asks the others",
        "who runs it later joins",
        "peer to peer where it can, else the server's ephemeral path",
        "Only the room's members, as this device's copy of the room says, are asked or let in",
        "/quit leaves (the others go on and are told), /panic or Ctrl-\\ ends it for everyone",
        "a member who goes offline drops out",
        "/photo PATH and /clip PATH send a file from memory",
        "exit codes: 0 left or ended; 1 an error or nobody joined in time; 3 panic",
    ], capsys)
    assert_help_says(["chat", "--help"], [
        "/photo PATH and /clip PATH send a file from memory",
        "(in a room: for a first member to join)",
    ], capsys)
