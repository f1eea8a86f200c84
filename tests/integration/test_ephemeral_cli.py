"""`sottovoce chat NAME --ephemeral` and `sottovoce panic` as a user types them: both
sides run the same command, type lines, and a panic from another shell ends the peer's
chat within a second; afterwards nothing is running to panic."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.integration.calls_cli_helpers import Cli, accounts, env, run, start
from tests.integration.serverproc import ServerProcess


def _chat(home: Path, *args: str) -> tuple[Cli, subprocess.Popen[bytes]]:
    out, err = home.parent / f"{home.name}-chat.out", home.parent / f"{home.name}-chat.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sottovoce", "chat", *args, "--ephemeral", "--wait", "30"],
            env=env(home), stdin=subprocess.PIPE, stdout=o, stderr=e,
        )
    return Cli(proc, out, err), proc


def _type(proc: subprocess.Popen[bytes], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    proc.stdin.flush()


def test_two_users_chat_ephemerally_and_a_panic_ends_both(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = accounts(server, tmp_path, "alice", "bob")
    a_cli, a_proc = _chat(alice, "bob", "--loopback")
    b_cli, b_proc = _chat(bob, "alice", "--loopback")
    try:
        a_cli.wait_for(r"ephemeral chat with bob open")
        b_cli.wait_for(r"ephemeral chat with alice open")
        a_cli.wait_for(r"data channel open \(peer to peer\): messages no longer pass")
        _type(a_proc, "hello bob, this is not kept")
        b_cli.wait_for(r"alice: hello bob, this is not kept")
        _type(b_proc, "nor this")
        a_cli.wait_for(r"bob: nor this")
        done = run(alice, "panic", "--data-dir", str(alice))
        t0 = time.monotonic()
        assert done.returncode == 0, done.stderr
        b_cli.wait_for(r"ephemeral chat ended: the other side left", timeout=1.0)
        assert time.monotonic() - t0 < 1.0
        assert a_cli.finish(10) == 3
        assert b_cli.finish(10) == 0
        assert "ephemeral chat ended: panic" in a_cli.stdout()
    finally:
        for p in (a_proc, b_proc):
            if p.poll() is None:
                p.kill()
                p.wait()
    again = run(alice, "panic", "--data-dir", str(alice))
    assert again.returncode == 1
    assert "no ephemeral chat is running" in again.stderr
    assert not (alice / "ephemeral.pid").exists()


def test_not_answering_is_a_plain_error_and_listen_shows_the_request(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = accounts(server, tmp_path, "alice", "bob")
    listen = start(bob, "listen")
    try:
        listen.wait_for("listening as bob")
        done = run(alice, "chat", "bob", "--ephemeral", "--wait", "2", "--server-relay")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "bob did not answer the ephemeral chat request" in done.stderr
        listen.wait_for(r"alice asks for an ephemeral chat: .*sottovoce chat alice "
                        r"--ephemeral.* answers")
    finally:
        listen.proc.terminate()
        listen.finish(10)
    room = run(alice, "chat", "#team", "--ephemeral")  # a room: its ephemeral group chat
    assert room.returncode == 1 and "no room 'team' on this device" in room.stderr
