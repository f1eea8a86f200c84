"""What `sottovoce call` and `answer` promise about the media they send, and how they end:
``--screen``, ``--media FILE``, ``--audio-only``, ``--seconds``, ``--wait``, the exit
codes, and an expired TURN credential (docs/calls.md, each command's ``--help``).

Real processes against the real `sottovoce server` on 127.0.0.1; the synthetic
sources number their frames, so what a side received shows whose frames they were.
A media file here is made of numbered pattern frames too, counted from 0: a
receiver that sees only numbers below the file's length got the file, not the
synthetic pattern that would have been sent instead.
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
from pathlib import Path
from typing import Any

import pytest

from sottovoce.calls.effects import CallState, EndReason, StateChanged
from sottovoce.calls.machine import CallMachine
from sottovoce.cli.call_cmd import call_options
from sottovoce.cli.main import build_parser
from sottovoce.client.calls import CallOptions, IceConfig, TurnRefused
from sottovoce.limits import CALL_RING_TIMEOUT_MS
from tests.integration.calls_cli_helpers import (
    LOOPBACK,
    Cli,
    accounts_on_a_turn_server,
    env,
    plain,
    run,
    start,
)
from tests.integration.calls_helpers import Coturn, wait_for, write_clip
from tests.integration.client_helpers import make_account
from tests.integration.serverproc import ServerProcess

#: Frames a side's summary says it received of one of the peer's tracks.
_RECEIVED = r"received (\d+) {role} frames(?:, numbered (\d+) to (\d+))?"


@pytest.fixture(scope="module")
def homes(
    coturn: Coturn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, list[Path]]]:
    """A server with TURN, and alice and bob on it."""
    root = tmp_path_factory.mktemp("calls-cli-media")
    with accounts_on_a_turn_server(coturn, root, "alice", "bob") as found:
        yield found


def _received(side: Cli, role: str) -> tuple[int, int | None, int | None]:
    """(frames, lowest number, highest number) of ``role`` in the side's summary."""
    found = re.search(_RECEIVED.format(role=role), side.stdout())
    assert found, side.stdout()
    count, low, high = found.groups()
    return int(count), None if low is None else int(low), None if high is None else int(high)


def _answer(home: Path, *args: str) -> Cli:
    answer = start(home, "answer", "--wait", "30", *args, *LOOPBACK)
    answer.wait_for("waiting up to")
    return answer


# --- what is sent ---------------------------------------------------------------------


def test_screen_sends_a_screen_track_each_side_decodes(
    homes: tuple[ServerProcess, list[Path]],
) -> None:
    """`--screen` on both sides: each decodes the other's numbered screen frames, beside
    the camera (headless, the screen is a second test pattern)."""
    _, (alice, bob) = homes
    answer = _answer(bob, "--screen", "--seconds", "4")
    call = start(alice, "call", "bob", "--screen", *LOOPBACK)
    assert call.finish() == 0, (call.stdout(), call.stderr())
    assert answer.finish() == 0, (answer.stdout(), answer.stderr())
    for side in (call, answer):
        frames, low, high = _received(side, "screen")
        assert low is not None and high is not None, side.stdout()
        assert frames >= 20 and frames >= 0.8 * (high - low + 1), side.stdout()
        assert _received(side, "camera")[0] >= 20, side.stdout()


def test_without_screen_no_screen_frames_arrive(
    homes: tuple[ServerProcess, list[Path]],
) -> None:
    """The negative of the above, and `--audio-only` both ways: an audio call carries no
    camera video from the caller, and a callee answering `--audio-only` sends none (and
    Ctrl-C in `answer` hangs up)."""
    _, (alice, bob) = homes
    answer = _answer(bob, "--seconds", "3")
    call = start(alice, "call", "bob", "--audio-only", *LOOPBACK)
    assert call.finish() == 0 and answer.finish() == 0, (call.stderr(), answer.stderr())
    assert "incoming call from alice" in answer.stdout()  # not "video call"
    assert "in a call with alice" in answer.stdout(), answer.stdout()
    assert _received(answer, "camera")[0] == 0, answer.stdout()
    assert "screen frames" not in answer.stdout() + call.stdout()
    assert re.search(r"received \d{2,} audio frames", answer.stdout()), answer.stdout()
    # bob was asked to an audio call: his camera stays off too.
    assert _received(call, "camera")[0] == 0, call.stdout()

    # This time bob hangs up with Ctrl-C, 3 s into the call.
    answer = _answer(bob, "--audio-only")
    call = start(alice, "call", "bob", *LOOPBACK)
    answer.wait_for("connected")
    time.sleep(3)
    answer.proc.send_signal(signal.SIGINT)
    assert call.finish() == 0 and answer.finish() == 0, (call.stderr(), answer.stderr())
    assert "ended (you hung up)" in answer.stdout() and "ended (bob hung up)" in call.stdout()
    assert _received(call, "camera")[0] == 0, call.stdout()
    assert re.search(r"received \d{2,} audio frames", call.stdout()), call.stdout()
    assert _received(answer, "camera")[0] >= 20, answer.stdout()


def test_media_file_frames_are_what_the_callee_decodes(
    homes: tuple[ServerProcess, list[Path]], tmp_path: Path
) -> None:
    """`--media FILE` sends the file: a 2 s clip numbered 0 to 29 arrives as frames
    numbered 0 to 29 and its tone as audio, over a call that lasts longer than the clip
    (the synthetic pattern would have numbered 45 or more by then)."""
    _, (alice, bob) = homes
    clip = tmp_path / "clip.webm"
    asyncio.run(write_clip(clip, seconds=2))
    answer = _answer(bob, "--seconds", "3")
    call = start(alice, "call", "bob", "--media", str(clip), *LOOPBACK)
    assert call.finish() == 0, (call.stdout(), call.stderr())
    assert answer.finish() == 0, (answer.stdout(), answer.stderr())
    frames, low, high = _received(answer, "camera")
    assert low is not None and high is not None, answer.stdout()
    assert low <= 2 and high <= 29 and frames >= 15, answer.stdout()
    assert re.search(r"received \d{2,} audio frames", answer.stdout()), answer.stdout()
    assert "sent" not in call.stdout()  # the pattern's count: no pattern was sent


def test_a_media_file_that_cannot_be_played_is_refused_before_anything_rings(
    homes: tuple[ServerProcess, list[Path]], tmp_path: Path
) -> None:
    _, (alice, bob) = homes
    listen = start(bob, "listen")
    listen.wait_for("connected|listening as")
    text = tmp_path / "notes.webm"
    text.write_text("these are notes, not a video\n" * 20)
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    bad = {
        str(tmp_path / "missing.webm"): "no such file",
        str(tmp_path): "not a file",
        str(text): "no audio or video",
        str(empty): "no audio or video",
    }
    if os.geteuid() != 0:  # root reads a file whatever its mode
        locked = tmp_path / "locked.webm"
        asyncio.run(write_clip(locked, seconds=1))
        locked.chmod(0)
        bad[str(locked)] = "permission denied"
    for path, reason in bad.items():
        done = run(alice, "call", "bob", "--media", path, *LOOPBACK)
        assert reason in plain(done), (path, done.stderr)
        assert done.returncode == 1 and "calling" not in done.stdout, (path, done.stdout)
        done = run(bob, "answer", "--media", path, "--wait", "1", *LOOPBACK)
        assert reason in plain(done), (path, done.stderr)
    time.sleep(1.0)
    assert "incoming" not in listen.stdout(), listen.stdout()
    # The control: a call that does ring shows on the same listener.
    done = run(alice, "call", "bob", "--audio-only", "--ring-timeout", "1", *LOOPBACK)
    assert done.returncode == 3, (done.stdout, done.stderr)
    listen.wait_for("incoming call from alice")
    listen.proc.send_signal(signal.SIGINT)
    listen.finish()


# --- how long, and how it ends ------------------------------------------------------------


def test_seconds_hangs_up_that_long_after_connecting(
    homes: tuple[ServerProcess, list[Path]],
) -> None:
    """`call --seconds 3`: the caller hangs up 3 s after "connected" (not before, and not
    much later), both exit 0, and the callee is told who hung up."""
    _, (alice, bob) = homes
    answer = _answer(bob)
    call = start(alice, "call", "bob", "--seconds", "3", *LOOPBACK)
    _, not_connected, connected = call.wait_between("connected")
    _, not_ended, ended = call.wait_between(r"ended \(you hung up\)")
    # The call lasted more than not_ended - connected and less than ended - not_connected
    # (the two far apart when a loaded machine starved the test): not shorter, not much longer.
    assert ended - not_connected >= 2.9 and not_ended - connected <= 8.0, (
        not_connected, connected, not_ended, ended)
    assert call.finish() == 0, call.stderr()
    assert answer.finish() == 0, answer.stderr()
    assert "ended (alice hung up)" in answer.stdout()
    # The hanging-up side prints the in-call line last, then the summary.
    assert re.search(r"bob · VP8/opus · ↑", call.stdout()), call.stdout()
    frames, _, high = _received(answer, "camera")
    assert high is not None and 30 <= frames <= high + 1 <= 15 * 8, answer.stdout()


def test_exit_codes_as_documented(homes: tuple[ServerProcess, list[Path]], tmp_path: Path) -> None:
    """0 answered, 3 not answered or no call came, 1 an error (one or two plain lines;
    `--debug` adds the traceback), 2 wrong usage."""
    _, (alice, bob) = homes
    for command in ("answer", "decline"):
        done = run(bob, command, "--wait", "1", *([] if command == "decline" else LOOPBACK))
        assert done.returncode == 3, (command, done.stdout, done.stderr)
        assert "no call came within 1 s" in done.stderr
        assert "Traceback" not in done.stderr
    missing_dir = str(tmp_path / "no-such-dir" / "call.webm")
    for command in (("call", "bob"), ("answer",)):
        done = run(alice, *command, "--record-to", missing_dir, *LOOPBACK)
        assert "no such directory" in plain(done)
    assert "no user 'nobody'" in plain(run(alice, "call", "nobody", *LOOPBACK))
    debug = run(alice, "call", "nobody", "--debug", *LOOPBACK)
    assert debug.returncode == 1 and "Traceback" in debug.stderr, debug.stderr
    for usage in (
        ("call",),
        ("call", "bob", "--seconds", "0"),
        ("call", "bob", "--ring-timeout", "-1"),
        ("answer", "--wait", "0"),
        ("decline", "--media", "x.webm"),  # decline sends nothing
    ):
        done = run(alice, *usage)
        assert done.returncode == 2, (usage, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("given", "rings_ms"), [((), CALL_RING_TIMEOUT_MS), (("2",), 2000), (("100",), 45_000)]
)
def test_ring_timeout_is_45_seconds_by_default_and_at_most(
    given: tuple[str, ...], rings_ms: int
) -> None:
    """`--ring-timeout S` as the command parses it, into the engine that rings: the
    default is 45 s, and a longer wish still gives up after 45 s (the clock is the
    engine's input: nothing waits)."""
    argv = ["call", "bob", *(("--ring-timeout", *given) if given else ())]
    options = call_options(build_parser().parse_args(argv))
    machine = CallMachine(
        user="alice", device="a1", rng=os.urandom, ring_timeout_ms=options.ring_timeout_ms
    )
    machine.dial(1_000, peer="bob", peer_devices=["b1"])
    assert machine.next_deadline() == 1_000 + rings_ms


def test_ctrl_c_stops_waiting_for_a_call(homes: tuple[ServerProcess, list[Path]]) -> None:
    _, (_, bob) = homes
    for command in ("answer", "decline"):
        waiting = start(bob, command)
        waiting.wait_for("waiting up to 60 s")  # the default --wait
        began = time.monotonic()
        waiting.proc.send_signal(signal.SIGINT)
        code = waiting.finish(timeout=15)
        assert time.monotonic() - began < 10
        assert code == 130, (command, code)  # interrupted: neither a call nor "no call came"
        assert "interrupted" in waiting.stderr()
        assert "Traceback" not in waiting.stderr(), waiting.stderr()


# --- TURN ---------------------------------------------------------------------------------


async def test_an_expired_turn_credential_is_reported_by_the_client(
    homes: tuple[ServerProcess, list[Path]], coturn: Coturn, tmp_path: Path
) -> None:
    """The SDK's own TURN fetch handed a credential whose time ran out (as a server with a
    wrong clock would hand it): the real coturn refuses it with 401, and the caller's
    client reports that -- the call ended `failed`, its last error `TurnRefused` and
    the 401 -- at once, and the callee stops ringing. Nothing waits for a real credential to age."""
    srv, _ = homes
    alice = await make_account(srv, "erin", tmp_path)
    bob = await make_account(srv, "frank", tmp_path)
    expired = coturn.server(now_s=int(time.time()) - 3600)  # expired 50 minutes ago
    asked: list[int] = []

    async def expired_reply() -> dict[str, Any]:
        asked.append(1)
        return {
            "urls": [expired.url],
            "username": expired.username,
            "credential": expired.credential.expose().decode(),
            "expiresAt": int(expired.username.split(":")[0]) * 1000,
        }

    try:
        alice._ask_turn = expired_reply  # type: ignore[method-assign]
        calls = alice.start_calls(CallOptions(ice=IceConfig(relay_only=True)))
        bob_calls = bob.start_calls(CallOptions(ice=IceConfig(loopback=True)))
        began = time.monotonic()
        await alice.place_call("frank")
        await wait_for(lambda: calls.state is CallState.ENDED, 20)
        assert time.monotonic() - began < 15
        assert asked, "the credential was not fetched through the client"
        assert isinstance(calls.last_error, TurnRefused), calls.last_error
        assert "401" in str(calls.last_error)
        assert calls.call is not None and calls.call.reason is EndReason.FAILED
        seen = []
        while not calls.events.empty():
            seen.append(calls.events.get_nowait())
        assert any(
            isinstance(e, StateChanged) and e.reason is EndReason.FAILED for e in seen
        ), seen
        # No secret of the credential in what the client reports.
        secret = expired.credential.expose().decode()
        assert all(secret not in repr(e) for e in seen) and secret not in str(calls.last_error)
        await wait_for(lambda: bob_calls.state is CallState.ENDED, 15)  # it rang, then stopped
    finally:
        await alice.close()
        await bob.close()


def test_bad_turn_options_stop_the_server_at_start_with_a_plain_error(tmp_path: Path) -> None:
    """`server --turn-url ... --turn-secret-file F`: a missing, short or unreadable
    secret, a URL that is not TURN, or one option without the other: one plain line and
    exit 1 before it listens; the environment variables are read the same way."""
    good, short = tmp_path / "good", tmp_path / "short"
    good.write_text("0123456789abcdef0123456789abcdef\n")
    short.write_text("short\n")
    url = "turn:127.0.0.1:3478"
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["--turn-url", url, "--turn-secret-file", str(tmp_path / "missing")], {}, "cannot read"),
        (["--turn-url", url, "--turn-secret-file", str(tmp_path)], {}, "cannot read"),
        (["--turn-url", url, "--turn-secret-file", str(short)], {}, "at least 16 bytes"),
        (["--turn-url", "stun:127.0.0.1:3478", "--turn-secret-file", str(good)], {}, "TURN URL"),
        (["--turn-url", url], {}, "together"),
        ([], {"SOTTOVOCE_TURN_URL": "stun:127.0.0.1", "SOTTOVOCE_TURN_SECRET_FILE": str(good)},
         "TURN URL"),
    ]
    for args, environ, reason in cases:
        done = subprocess.run(
            [sys.executable, "-m", "sottovoce", "server", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(tmp_path / "server"), *args],
            env={**env(tmp_path), **environ}, capture_output=True, text=True, timeout=60,
            check=False,
        )
        assert reason in plain(done), (args, environ, done.stderr)


def test_a_turn_server_that_does_not_answer_is_reported(tmp_path: Path) -> None:
    """The server hands out credentials for a TURN address where nothing listens: a
    relay-only call fails with a plain reason and exit 1, never silently."""
    nobody = Coturn(tmp_path / "silent")  # its port is free, and nothing is started on it
    with accounts_on_a_turn_server(nobody, tmp_path, "alice", "bob") as (_, (alice, bob)):
        answer = start(bob, "answer", "--wait", "60", *LOOPBACK)
        answer.wait_for("waiting up to")
        began = time.monotonic()
        call = run(alice, "call", "bob", "--relay-only", *LOOPBACK)
        assert "did not answer" in plain(call), call.stderr
        assert time.monotonic() - began < 45
        answer.proc.send_signal(signal.SIGINT)
        answer.finish()
