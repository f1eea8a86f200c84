"""1:1 calls as a user makes them: `sottovoce call`, `answer`, `decline`, `listen`,
`history`, each its own process, against the real `sottovoce server` and a real
coturn on 127.0.0.1 (docs/calls.md).

Accounts are made through the SDK (cheap Argon2 parameters, tests only). Every call
uses the synthetic sources (a tone and numbered test-pattern frames), so what a
side received is counted by frame number. ``--loopback`` keeps every candidate on
127.0.0.1; relay-only calls go through the coturn the server hands credentials for.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from tests.integration.calls_cli_helpers import (
    LOOPBACK,
    accounts,
    accounts_on_a_turn_server,
    answered_call,
    plain,
    received,
    run,
    server_with_turn,
    start,
)
from tests.integration.calls_helpers import Coturn
from tests.integration.serverproc import ServerProcess


@pytest.fixture(scope="module")
def turn_server(
    coturn: Coturn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, list[Path]]]:
    """A server handing out credentials for the coturn, and alice, bob and carol on it."""
    root = tmp_path_factory.mktemp("calls-cli")
    with accounts_on_a_turn_server(coturn, root, "alice", "bob", "carol") as found:
        yield found


# --- media ------------------------------------------------------------------------------


def test_a_cli_call_decodes_at_least_95_percent_of_the_video_frames_sent(
    turn_server: tuple[ServerProcess, list[Path]],
) -> None:
    _, (alice, bob, _) = turn_server
    call, answer = answered_call(alice, bob, *LOOPBACK)
    for line in ("calling bob", "ringing", "answered", "connected", "ended (bob hung up)"):
        assert line in call.stdout(), call.stdout()
    assert "incoming video call from alice" in answer.stdout()
    assert "ended (you hung up)" in answer.stdout()
    decoded, numbered = received(answer)
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
    call, answer = answered_call(alice, bob, "--relay-only", *LOOPBACK)
    decoded, numbered = received(answer)
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
    answer = start(bob, "answer", "--seconds", "8", "--record-to", str(granted), *LOOPBACK)
    answer.wait_for("waiting up to")
    assert run(alice, "call", "bob", "--allow-recording", *LOOPBACK).returncode == 0
    assert answer.finish() == 0
    assert "recording: the peer consents" in answer.stdout()
    # A WebM file PyAV plays: the peer's camera and audio, frame by frame.
    with av.open(str(granted)) as container:
        assert b"webm" in granted.read_bytes()[:64]  # the EBML DocType, not Matroska
        assert {s.type for s in container.streams} == {"audio", "video"}
        assert sum(1 for _ in container.decode(video=0)) >= 5
    with av.open(str(granted)) as container:
        assert sum(1 for _ in container.decode(audio=0)) >= 50


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


def test_mistakes_areplain(turn_server: tuple[ServerProcess, list[Path]], tmp_path: Path) -> None:
    _, (alice, _, _) = turn_server
    assert "no user 'nobody'" in plain(run(alice, "call", "nobody", *LOOPBACK))
    assert "media file" in plain(run(alice, "call", "bob", "--media", str(tmp_path / "no.webm")))
    assert "that is you" in plain(run(alice, "call", "alice"))
    # bob is not online: said at once, not after 45 s of ringing.
    offline = run(alice, "call", "bob", "--audio-only", *LOOPBACK)
    assert "no device of bob is online" in plain(offline)


def test_turn_refusing_the_servers_credentials_is_reported(
    coturn: Coturn, tmp_path: Path
) -> None:
    """A server whose secret is not coturn's hands out credentials coturn refuses (401):
    the relay-only call fails at once with a plain reason, never silently."""
    srv = server_with_turn(tmp_path, coturn, secret=b"not-the-secret-coturn-holds")
    try:
        alice, bob = accounts(srv, tmp_path, "alice", "bob")
        answer = start(bob, "answer", "--wait", "20", "--loopback")
        answer.wait_for("waiting up to")
        call = run(alice, "call", "bob", "--relay-only", *LOOPBACK)
        assert call.returncode == 1, (call.stdout, call.stderr)
        assert "refused the credentials" in plain(call)
        answer.proc.send_signal(signal.SIGINT)
        answer.finish()
    finally:
        srv.stop()


def test_relay_only_without_turn_on_the_server_is_a_plain_error(
    server: ServerProcess, tmp_path: Path
) -> None:
    (alice, _) = accounts(server, tmp_path, "alice", "bob")
    err = plain(run(alice, "call", "bob", "--relay-only"))
    assert "has no TURN server" in err and "--relay-only" in err
    server.stop()
    err = plain(run(alice, "call", "bob", "--timeout", "2"))
    assert "cannot reach the server" in err
