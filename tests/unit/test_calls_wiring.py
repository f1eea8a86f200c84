"""How a 1:1 call rides the client's 1:1 path (docs/calls.md, "Signalling"): the payload
formats, the grouping of signals into sends, the TURN reply, the server's options and
request, and the lines the CLI prints."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from sottovoce.calls.effects import (
    CallState,
    EndReason,
    RecordMissedCall,
    Role,
    SendSignal,
    StateChanged,
)
from sottovoce.calls.signals import Decline, Invite
from sottovoce.cli import render
from sottovoce.cli.main import main
from sottovoce.client.call_payloads import (
    MISSED_CALL_CONTENT_TYPE,
    MissedCall,
    decode_signals,
    encode_signals,
    missed_call_line,
)
from sottovoce.client.calls.media import CallStats
from sottovoce.client.calls.wiring import (
    missed_call_recorder,
    signal_sender,
    turn_fetcher,
    turn_servers_from_wire,
)
from sottovoce.client.errors import ServerError
from sottovoce.errors import DecodeError, RemoteError, UsageError
from sottovoce.protocol.events import TurnCredentialsRequest
from sottovoce.protocol.fields import ProtocolError
from sottovoce.server.config import load_config

CALL_ID = bytes(range(16))


def _signal(kind: type[Invite] | type[Decline], to: str, sender: str = "a1") -> Invite | Decline:
    if kind is Invite:
        return Invite(call_id=CALL_ID, from_device=sender, to_device=to, video=True)
    return Decline(call_id=CALL_ID, from_device=sender, to_device=to)


def test_signal_bodies_round_trip_and_refuse_leftovers() -> None:
    signals = [b"one", b"", b"x" * 300]
    assert decode_signals(encode_signals(signals)) == signals
    assert decode_signals(b"") == []
    with pytest.raises(DecodeError):
        decode_signals(encode_signals([b"abc"])[:-1])


def test_missed_call_entry_round_trips_and_reads_per_side() -> None:
    entry = MissedCall(call_id=CALL_ID, video=False)
    assert MissedCall.decode(entry.encode()) == entry
    assert missed_call_line(entry.encode(), outgoing=True) == "call: no answer"
    assert missed_call_line(entry.encode(), outgoing=False) == "missed call"
    for bad in ("", "[]", '{"v":1,"callId":"00","video":true}', '{"v":2,"callId":"x","video":1}'):
        with pytest.raises(DecodeError):
            MissedCall.decode(bad)
    assert "cannot read" in missed_call_line("nope", outgoing=False)


async def test_signals_go_one_send_per_user_and_our_devices_ride_with_the_peer() -> None:
    sent: list[tuple[str, dict[tuple[str, str], list[bytes]]]] = []

    async def send_call(user: str, bodies: Mapping[tuple[str, str], bytes]) -> None:
        sent.append((user, {k: decode_signals(v) for k, v in bodies.items()}))

    send = signal_sender(me="alice", send_call=send_call, current_peer=lambda: "bob")
    invites = [SendSignal(user="bob", device=d, signal=_signal(Invite, d)) for d in ("b1", "b2")]
    own = SendSignal(user="alice", device="a2", signal=_signal(Decline, "a2"))
    await send([*invites, own])
    assert [user for user, _ in sent] == ["bob"]
    bodies = sent[0][1]
    assert set(bodies) == {("bob", "b1"), ("bob", "b2"), ("alice", "a2")}
    assert bodies[("bob", "b1")] == [invites[0].payload]
    sent.clear()
    await send([own])  # only our own devices: routed with a send to the call's peer
    assert sent == [("bob", {("alice", "a2"): [own.payload]})]
    sent.clear()
    lonely = signal_sender(me="alice", send_call=send_call, current_peer=lambda: None)
    await lonely([own])
    assert sent == []


async def test_a_missed_call_is_a_durable_record_to_the_peer() -> None:
    records: list[tuple[str, str, str]] = []

    async def send_record(peer: str, content_type: str, text: str) -> str:
        records.append((peer, content_type, text))
        return "m1"

    await missed_call_recorder(send_record)(
        RecordMissedCall(call_id=CALL_ID, peer="bob", at_ms=1, video=True)
    )
    ((peer, kind, text),) = records
    assert (peer, kind) == ("bob", MISSED_CALL_CONTENT_TYPE)
    assert MissedCall.decode(text) == MissedCall(call_id=CALL_ID, video=True)


def test_turn_reply_is_validated() -> None:
    url = "turn:127.0.0.1:3478"
    good = {"urls": [url], "username": "1:x", "credential": "cA==", "expiresAt": 1}
    (server,) = turn_servers_from_wire(good)
    assert server.url == "turn:127.0.0.1:3478" and server.credential.expose() == b"cA=="
    for patch in (
        {"urls": []},
        {"urls": ["http://x"]},
        {"urls": "turn:127.0.0.1:3478"},
        {"username": ""},
        {"credential": 5},
        {"credential": "é"},
        {"urls": ["turn:127.0.0.1:3478"] * 9},
    ):
        with pytest.raises(RemoteError):
            turn_servers_from_wire({**good, **patch})


async def test_a_server_without_turn_means_no_relay_not_a_failure() -> None:
    async def none() -> dict[str, object]:
        raise ServerError("turn_unavailable", "no TURN")

    async def down() -> dict[str, object]:
        raise ServerError("rate_limited", "slow down", retryable=True)

    assert await turn_fetcher(none)() == ()
    with pytest.raises(ServerError):
        await turn_fetcher(down)()
    await asyncio.sleep(0)


def test_turn_request_has_no_fields() -> None:
    assert TurnCredentialsRequest.from_data({}) == TurnCredentialsRequest()
    with pytest.raises(ProtocolError):
        TurnCredentialsRequest.from_data({"username": "alice"})


def test_server_turn_options(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123\n")
    config = load_config(
        {"turn_url": "turn:127.0.0.1:3478,turn:127.0.0.1:3478?transport=tcp",
         "turn_secret_file": str(secret)},
        environ={},
    )
    assert config.turn_url == ("turn:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=tcp")
    with pytest.raises(UsageError, match="together"):
        load_config({"turn_url": "turn:127.0.0.1:3478"}, environ={})
    with pytest.raises(UsageError, match="TURN URL"):
        load_config({"turn_url": "stun:127.0.0.1", "turn_secret_file": str(secret)}, environ={})


def _change(state: CallState, reason: EndReason | None = None) -> StateChanged:
    return StateChanged(
        call_id=CALL_ID, peer="bob\x1b[2J", role=Role.CALLER, state=state, reason=reason,
        video=True,
    )


def test_call_lines_are_plain_and_terminal_safe() -> None:
    assert render.call_state(_change(CallState.OUTGOING_RINGING)).startswith("calling bob\\x1b")
    for reason in EndReason:
        line = render.call_state(_change(CallState.ENDED, reason))
        assert line and "\x1b" not in line
    assert render.call_state(_change(CallState.ENDED, EndReason.NO_ANSWER)) == "no answer"
    stats = CallStats(
        audio_codec="opus", video_codec="VP8", send_kbps=0.0, recv_kbps=312.5, rtt_ms=None,
        loss_pct=0.0, relayed=True, frames_received={},
    )
    line = render.call_stats("bob", stats)
    assert line == "bob · VP8/opus · ↑ – ↓ 312.5 kbit/s · RTT – · loss 0 % · relayed · E2EE on"


def test_the_cli_starts_without_the_media_stack() -> None:
    """Every command's parser is built at start; only a call imports aiortc and PyAV."""
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys, sottovoce.cli.main as m; m.build_parser(); "
         "print(sorted({'aiortc', 'aioice', 'av'} & set(sys.modules)))"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("call", ["--audio-only", "--screen", "--media", "--relay-only", "--loopback",
                  "--record-to", "--allow-recording", "--seconds", "--ring-timeout"]),
        ("answer", ["--audio-only", "--screen", "--media", "--relay-only", "--loopback",
                    "--record-to", "--allow-recording", "--seconds", "--wait"]),
        ("decline", ["--wait"]),
    ],
)
def test_every_call_command_has_help_with_its_flags_and_an_example(
    command: str, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "exit codes:" in text
    for flag in flags:
        assert flag in text, flag
    example = text.split("example:\n", 1)[1]
    assert f"sottovoce {command}" in example
