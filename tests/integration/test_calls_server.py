"""What the server does for 1:1 calls, and what it never sees (docs/calls.md).

Against the real `sottovoce server` on 127.0.0.1 (with a real coturn): TURN
credentials go to authenticated devices only, live at most 10 minutes, name
nobody, and are rate-limited per device; and a whole call set up through the
server -- SDK clients, aiortc media on 127.0.0.1 -- leaves none of its DTLS
fingerprints, ICE credentials or candidate addresses in the server's database,
WAL, logs or metrics (the blindness kit's scanner, every encoding).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from sottovoce.audit_kit.needles import Scanner, needles_for
from sottovoce.calls.effects import CallState, EndReason
from sottovoce.client import ServerError
from sottovoce.client.calls import CallController, CallOptions, IceConfig
from sottovoce.client.store import TEST_KDF
from sottovoce.limits import TURN_CREDENTIAL_MAX_TTL_S, TURN_REQUESTS_BURST
from sottovoce.server.turn import turn_password
from tests.integration.calls_helpers import Coturn, wait_for
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess


@pytest.fixture
def turn_server(coturn: Coturn, tmp_path: Path) -> Iterator[ServerProcess]:
    secret = tmp_path / "turn-secret"
    secret.write_bytes(coturn.secret.expose() + b"\n")
    args = ["--turn-url", coturn.url, "--turn-secret-file", str(secret)]
    srv = ServerProcess(tmp_path / "server", extra_args=args).start()
    try:
        yield srv
    finally:
        srv.stop()


async def test_an_unauthenticated_connection_gets_no_turn_credentials(
    turn_server: ServerProcess,
) -> None:
    async with connect(turn_server.ws_url) as ws:
        challenge = json.loads(await ws.recv())
        assert challenge["event"] == "sottovoce.challenge"
        await ws.send(json.dumps({"event": "sottovoce.turn.credentials", "requestId": "t1"}))
        reply = json.loads(await ws.recv())
    assert reply["event"] == "ksmpv3.error" and reply["requestId"] == "t1"
    assert reply["data"]["code"] == "unauthorized"
    assert "credential" not in json.dumps(reply)


async def test_credentials_are_short_lived_name_nobody_and_are_rate_limited(
    turn_server: ServerProcess, coturn: Coturn, tmp_path: Path
) -> None:
    alice = await make_account(turn_server, "alice", tmp_path)
    try:
        (first,) = await alice.turn_servers()
        assert first.url == coturn.url
        expiry, _ = first.username.split(":")
        assert 0 < int(expiry) - time.time() <= TURN_CREDENTIAL_MAX_TTL_S
        assert "alice" not in first.username and alice.device_id not in first.username
        # Exactly what coturn recomputes from the shared secret (else it answers 401).
        assert first.credential == turn_password(coturn.secret, first.username)
        names = {first.username}
        with pytest.raises(ServerError) as refused:
            for _ in range(TURN_REQUESTS_BURST + 5):
                names.add((await alice.turn_servers())[0].username)
        assert refused.value.code == "rate_limited" and refused.value.retryable
        assert len(names) >= TURN_REQUESTS_BURST - 1  # a fresh random id every time
    finally:
        await alice.close()


async def test_no_turn_on_the_server_is_a_structured_error(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    try:
        with pytest.raises(ServerError) as refused:
            await alice.turn_servers()
        assert refused.value.code == "turn_unavailable"
    finally:
        await alice.close()


async def test_a_device_that_takes_no_calls_never_rings_nor_declines(
    turn_server: ServerProcess, tmp_path: Path
) -> None:
    """A client that never started calls (a `send` command) ignores a ring: the caller
    hears no answer, not a decline that would end the call on the callee's other devices."""
    alice = await make_account(turn_server, "alice", tmp_path)
    bob = await make_account(turn_server, "bob", tmp_path)
    try:
        calls = alice.start_calls(CallOptions(ice=IceConfig(loopback=True), ring_timeout_ms=3000))
        await alice.place_call("bob")
        await asyncio.sleep(1.0)  # the ring reached bob's device; the command ends meanwhile
        await bob.close()
        await wait_for(lambda: calls.state is CallState.ENDED, 15)
        assert calls.call is not None and calls.call.reason is EndReason.NO_ANSWER
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.parametrize("answering", ["the first device", "a linked device"])
async def test_every_device_rings_one_answers_the_other_hears_it_from_its_sibling(
    turn_server: ServerProcess, tmp_path: Path, answering: str
) -> None:
    """Through the real server: alice rings both of bob's devices; the one that picks
    up tells the other "answered elsewhere" (an E2EE signal from bob's own device),
    so the other stops ringing at once, not when the ring times out."""
    alice = await make_account(turn_server, "alice", tmp_path)
    bob = await make_account(turn_server, "bob", tmp_path)
    tablet = await bob.add_device(tmp_path / "bob-tablet", PASSPHRASE, kdf=TEST_KDF)
    options = CallOptions(ice=IceConfig(loopback=True))
    try:
        caller, phone, pad = (c.start_calls(options) for c in (alice, bob, tablet))
        await alice.place_call("bob")
        await wait_for(lambda: phone.state is pad.state is CallState.INCOMING_RINGING, 15)
        winner, loser = (bob, pad) if answering == "the first device" else (tablet, phone)
        winner.answer_call()
        await wait_for(lambda: caller.state is CallState.ACTIVE, 30)
        await wait_for(lambda: loser.state is CallState.ENDED, 10)
        assert loser.call is not None and loser.call.reason is EndReason.ANSWERED_ELSEWHERE
        assert not loser.media  # the device that did not answer set up no media
        assert caller.call is not None and caller.call.selected == winner.device_id
    finally:
        for c in (alice, bob, tablet):
            await c.close()


# --- blindness: a call's secrets never reach the server ------------------------------------


def _call_secrets(sdp: str) -> list[tuple[str, bytes]]:
    """What a call's SDP holds that the server must never see: the DTLS fingerprint, the
    ICE credentials, and each candidate's address and port as the SDP writes them."""
    out: list[tuple[str, bytes]] = []
    for line in sdp.splitlines():
        if line.startswith("a=fingerprint:"):
            value = line.split(" ", 1)[1]
            out.append(("fingerprint", bytes.fromhex(value.replace(":", ""))))
            out.append(("fingerprint text", value.encode()))
        elif line.startswith(("a=ice-ufrag:", "a=ice-pwd:")):
            value = line.split(":", 1)[1].encode()
            if len(value) >= 12:
                out.append((line.split(":", 1)[0], value))
        elif line.startswith("a=candidate:"):
            parts = line.split()
            out.append(("candidate", f"{parts[4]} {parts[5]} typ {parts[7]}".encode()))
            out.append(("candidate address", f"{parts[4]}:{parts[5]}".encode()))
    return out


def _scan(where: dict[str, bytes], secrets: list[tuple[str, bytes]]) -> None:
    scanner = Scanner(
        n
        for i, (label, value) in enumerate(secrets)
        for n in needles_for(value, label=f"{label} #{i}", kind="canary")
    )
    for name, blob in where.items():
        hits = scanner.scan(blob)
        assert not hits, f"{hits[0].needle.label} found in {name} ({hits[0].needle.encoding})"


async def test_a_calls_sdp_fingerprints_and_candidates_never_reach_the_server(
    turn_server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(turn_server, "alice", tmp_path)
    bob = await make_account(turn_server, "bob", tmp_path)
    options = CallOptions(ice=IceConfig(loopback=True))
    sdps: list[str] = []
    try:
        calls: list[CallController] = [c.start_calls(options) for c in (alice, bob)]
        await alice.place_call("bob")
        await wait_for(lambda: calls[1].state is CallState.INCOMING_RINGING, 15)
        bob.answer_call()
        await wait_for(lambda: all(c.state is CallState.ACTIVE for c in calls), 30)
        for ctl in calls:
            session = ctl.session()
            assert session is not None
            await wait_for(lambda s=session: s.sinks["camera"].frames > 5, 15)  # type: ignore[misc]
            pc = session.current()
            assert pc is not None
            sdps.append(pc.localDescription.sdp)
            sdps.append(pc.remoteDescription.sdp)
        calls[0].hangup()
        await wait_for(lambda: calls[1].state is CallState.ENDED, 15)
        metrics = turn_server.metrics()
        running = {p.name: p.read_bytes() for p in turn_server.data_dir.iterdir() if p.is_file()}
    finally:
        await alice.close()
        await bob.close()
        turn_server.stop()
    stopped = {p.name: p.read_bytes() for p in turn_server.data_dir.iterdir() if p.is_file()}
    secrets = [s for sdp in sdps for s in _call_secrets(sdp)]
    assert sum(1 for label, _ in secrets if label == "fingerprint") >= 4
    assert any(label == "candidate" for label, _ in secrets)
    assert any(name.endswith("-wal") for name in running)
    # Positive controls: the server's files hold what it may know (the two names), and
    # the scan finds the call's secrets where they are (in an SDP).
    assert any(b"alice" in blob for blob in running.values())
    for kind in ("fingerprint", "candidate"):
        with pytest.raises(AssertionError, match=f"{kind}.* found in an SDP"):
            _scan({"an SDP": sdps[0].encode()}, [x for x in secrets if x[0].startswith(kind)])
    _scan(running, secrets)
    _scan(stopped, secrets)
    _scan({"metrics": metrics.encode()}, secrets)
