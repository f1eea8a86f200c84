"""1:1 calls as a user makes them: `sottovoce call`, `answer`, `decline`, `listen`,
`history`, each its own process, against the real `sottovoce server` and a real
coturn on 127.0.0.1 (docs/calls.md).

Accounts are made through the SDK (cheap Argon2 parameters, tests only). Every call
uses the synthetic sources (a tone and numbered test-pattern frames), so what a
side received is counted by frame number. ``--loopback`` keeps every candidate on
127.0.0.1; relay-only calls go through the coturn the server hands credentials for.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from tests.integration.calls_helpers import Coturn
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess

LOOPBACK = ("--loopback",)


@dataclass
class Cli:
    """One running command, its output going to files a test can poll."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.stdout())
            if found:
                return found
            if self.proc.poll() is not None:
                found = re.search(pattern, self.stdout())
                if found:
                    return found
                raise AssertionError(
                    f"exited {self.proc.returncode} before {pattern!r}:\n"
                    f"{self.stdout()}\n{self.stderr()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in time:\n{self.stdout()}\n{self.stderr()}")

    def finish(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running:\n{self.stdout()}\n{self.stderr()}") from None


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(SOTTOVOCE_HOME=str(home), SOTTOVOCE_PASSPHRASE=PASSPHRASE)
    return env


def start(home: Path, *args: str) -> Cli:
    n = len(list(home.parent.glob(f"{home.name}-*.out")))
    out, err = home.parent / f"{home.name}-{n}.out", home.parent / f"{home.name}-{n}.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sottovoce", *args], env=_env(home), stdout=o, stderr=e
        )
    return Cli(proc, out, err)


def run(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sottovoce", *args],
        env=_env(home), capture_output=True, text=True, timeout=timeout, check=False,
    )


def _server_with_turn(root: Path, turn: Coturn, secret: bytes | None = None) -> ServerProcess:
    secret_file = root / "turn-secret"
    root.mkdir(parents=True, exist_ok=True)
    secret_file.write_bytes((secret or turn.secret.expose()) + b"\n")
    secret_file.chmod(0o600)
    return ServerProcess(
        root / "server",
        extra_args=["--turn-url", turn.url, "--turn-secret-file", str(secret_file)],
    ).start()


def _accounts(srv: ServerProcess, root: Path, *names: str) -> list[Path]:
    async def make() -> None:
        for name in names:
            await (await make_account(srv, name, root)).close()

    asyncio.run(make())
    return [root / name for name in names]


@pytest.fixture(scope="module")
def turn_server(
    coturn: Coturn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, list[Path]]]:
    """A server handing out credentials for the coturn, and alice, bob and carol on it."""
    root = tmp_path_factory.mktemp("calls-cli")
    srv = _server_with_turn(root, coturn)
    try:
        yield srv, _accounts(srv, root, "alice", "bob", "carol")
    finally:
        srv.stop()


def _answered_call(
    caller: Path, callee: Path, *extra: str, seconds: float = 5.0
) -> tuple[Cli, Cli]:
    """The callee answers and hangs up ``seconds`` after the call connects."""
    answer = start(callee, "answer", "--wait", "30", "--seconds", str(seconds), *extra)
    answer.wait_for("waiting up to")
    call = start(caller, "call", callee.name, *extra)
    assert call.finish() == 0, (call.stdout(), call.stderr())
    assert answer.finish() == 0, (answer.stdout(), answer.stderr())
    return call, answer


def _received(answer: Cli) -> tuple[int, int]:
    found = answer.wait_for(r"received (\d+) camera frames, numbered (\d+) to (\d+)")
    count, first, last = (int(g) for g in found.groups())
    assert first <= 2  # the first frames were decoded too
    return count, last + 1


# --- media ------------------------------------------------------------------------------


def test_a_cli_call_decodes_at_least_95_percent_of_the_video_frames_sent(
    turn_server: tuple[ServerProcess, list[Path]],
) -> None:
    _, (alice, bob, _) = turn_server
    call, answer = _answered_call(alice, bob, *LOOPBACK)
    for line in ("calling bob", "ringing", "answered", "connected", "ended (bob hung up)"):
        assert line in call.stdout(), call.stdout()
    assert "incoming video call from alice" in answer.stdout()
    assert "ended (you hung up)" in answer.stdout()
    decoded, numbered = _received(answer)
    sent = int(call.wait_for(r"sent (\d+) camera frames").group(1))
    assert numbered >= 60, answer.stdout()  # 15 fps for 5 s, less the set-up
    assert decoded >= 0.95 * numbered, answer.stdout()
    # What was still in flight when bob hung up is at most a second's worth.
    assert sent - numbered <= 15, (sent, numbered)
    assert re.search(r"received \d{3,} audio frames", answer.stdout())
    # The in-call line, printed as bob hangs up: codecs, a rate, RTT, loss, E2EE.
    assert re.search(r"alice · VP8/opus · ↑ [\d.]+ kbit/s ↓ [\d.]+ kbit/s · RTT", answer.stdout())
    assert "E2EE on" in answer.stdout()
    assert "host" in answer.stdout().split("the peer offered:")[1]


def test_a_relay_only_cli_call_goes_through_turn_and_hides_both_addresses(
    turn_server: tuple[ServerProcess, list[Path]],
) -> None:
    _, (alice, bob, _) = turn_server
    call, answer = _answered_call(alice, bob, "--relay-only", *LOOPBACK)
    decoded, numbered = _received(answer)
    assert numbered >= 45 and decoded >= 0.95 * numbered, answer.stdout()
    # The pair ICE chose is relay to relay, and neither side ever offered anything
    # but relay candidates: no host or server-reflexive address left the caller.
    assert "path: relay ↔ relay" in answer.stdout()
    assert "relayed" in answer.stdout()
    assert "the peer offered: relay\n" in answer.stdout()
    assert "the peer offered: relay\n" in call.stdout()


def test_record_to_writes_the_peers_media_only_with_consent(
    turn_server: tuple[ServerProcess, list[Path]], tmp_path: Path
) -> None:
    _, (alice, bob, _) = turn_server
    refused, granted = tmp_path / "refused.webm", tmp_path / "granted.webm"
    answer = start(bob, "answer", "--seconds", "3", "--record-to", str(refused), *LOOPBACK)
    answer.wait_for("waiting up to")
    assert run(alice, "call", "bob", "--audio-only", *LOOPBACK).returncode == 0
    assert answer.finish() == 0
    assert "recording: the peer does not consent" in answer.stdout()
    assert not refused.exists() or refused.stat().st_size == 0
    answer = start(bob, "answer", "--seconds", "5", "--record-to", str(granted), *LOOPBACK)
    answer.wait_for("waiting up to")
    assert run(alice, "call", "bob", "--allow-recording", *LOOPBACK).returncode == 0
    assert answer.finish() == 0
    assert "recording: the peer consents" in answer.stdout()
    with av.open(str(granted)) as container:
        assert sum(1 for _ in container.decode(video=0)) >= 5


# --- ringing outcomes -------------------------------------------------------------------


def test_decline(turn_server: tuple[ServerProcess, list[Path]]) -> None:
    _, (alice, bob, _) = turn_server
    decline = start(bob, "decline", "--wait", "30")
    decline.wait_for("waiting up to")
    call = run(alice, "call", "bob", "--audio-only", *LOOPBACK)
    assert call.returncode == 3, (call.stdout, call.stderr)
    assert "declined by bob" in call.stdout
    assert decline.finish() == 0
    assert "incoming call from alice" in decline.stdout()
    assert "declined" in decline.stdout()


def test_busy(turn_server: tuple[ServerProcess, list[Path]]) -> None:
    _, (alice, bob, carol) = turn_server
    answer = start(bob, "answer", "--wait", "30", "--seconds", "20", *LOOPBACK)
    answer.wait_for("waiting up to")
    call = start(alice, "call", "bob", "--audio-only", *LOOPBACK)
    call.wait_for("connected")
    busy = run(carol, "call", "bob", "--audio-only", *LOOPBACK)
    assert busy.returncode == 3, (busy.stdout, busy.stderr)
    assert "busy: bob is in another call" in busy.stdout
    call.proc.send_signal(signal.SIGINT)  # alice hangs up
    assert call.finish() == 0
    assert answer.finish() == 0
    assert "ended (alice hung up)" in answer.stdout()


def test_no_answer_leaves_a_missed_call_in_both_histories(
    turn_server: tuple[ServerProcess, list[Path]],
) -> None:
    _, (alice, _, carol) = turn_server
    listen = start(carol, "listen")
    listen.wait_for("connected|listening as")
    call = run(alice, "call", "carol", "--ring-timeout", "2", *LOOPBACK)
    assert call.returncode == 3, (call.stdout, call.stderr)
    assert "ringing" in call.stdout and "no answer" in call.stdout
    listen.wait_for("incoming video call from alice")
    listen.wait_for("missed call from alice")
    listen.wait_for("alice: ☎ missed video call")  # the durable entry, as it is stored
    listen.proc.send_signal(signal.SIGINT)
    assert listen.finish() == 0
    mine = run(alice, "history", "carol")
    assert re.search(r"you → carol: ☎ video call: no answer ✓", mine.stdout), mine.stdout
    theirs = run(carol, "history", "alice")
    assert "alice: ☎ missed video call" in theirs.stdout, theirs.stdout


def test_the_caller_cancels_while_it_rings(
    turn_server: tuple[ServerProcess, list[Path]],
) -> None:
    _, (alice, _, carol) = turn_server
    listen = start(carol, "listen")
    listen.wait_for("connected|listening as")
    call = start(alice, "call", "carol", "--audio-only", *LOOPBACK)
    call.wait_for("ringing")
    listen.wait_for("incoming call from alice")
    call.proc.send_signal(signal.SIGINT)
    assert call.finish() == 3, call.stdout()
    assert "cancelled" in call.stdout()
    listen.wait_for("missed call from alice")
    listen.proc.send_signal(signal.SIGINT)
    listen.finish()


# --- mistakes: one or two plain lines, a non-zero exit ------------------------------------


def _plain(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode not in (0, 3), (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, done.stderr
    return done.stderr


def test_mistakes_are_plain(turn_server: tuple[ServerProcess, list[Path]], tmp_path: Path) -> None:
    _, (alice, _, _) = turn_server
    assert "no user 'nobody'" in _plain(run(alice, "call", "nobody", *LOOPBACK))
    assert "media file" in _plain(run(alice, "call", "bob", "--media", str(tmp_path / "no.webm")))
    assert "that is you" in _plain(run(alice, "call", "alice"))
    # bob is not online: said at once, not after 45 s of ringing.
    offline = run(alice, "call", "bob", "--audio-only", *LOOPBACK)
    assert "no device of bob is online" in _plain(offline)


def test_turn_refusing_the_servers_credentials_is_reported(
    coturn: Coturn, tmp_path: Path
) -> None:
    """A server whose secret is not coturn's hands out credentials coturn refuses (401):
    the relay-only call fails at once with a plain reason, never silently."""
    srv = _server_with_turn(tmp_path, coturn, secret=b"not-the-secret-coturn-holds")
    try:
        alice, bob = _accounts(srv, tmp_path, "alice", "bob")
        answer = start(bob, "answer", "--wait", "20", "--loopback")
        answer.wait_for("waiting up to")
        call = run(alice, "call", "bob", "--relay-only", *LOOPBACK)
        assert call.returncode == 1, (call.stdout, call.stderr)
        assert "refused the credentials" in _plain(call)
        answer.proc.send_signal(signal.SIGINT)
        answer.finish()
    finally:
        srv.stop()


def test_relay_only_without_turn_on_the_server_is_a_plain_error(
    server: ServerProcess, tmp_path: Path
) -> None:
    (alice, _) = _accounts(server, tmp_path, "alice", "bob")
    err = _plain(run(alice, "call", "bob", "--relay-only"))
    assert "has no TURN server" in err and "--relay-only" in err
    server.stop()
    err = _plain(run(alice, "call", "bob", "--timeout", "2"))
    assert "cannot reach the server" in err
