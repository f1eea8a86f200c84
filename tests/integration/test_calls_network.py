"""Where a 1:1 call's packets go, and a call that loses its path (docs/calls.md).

Every UDP datagram the event loop sends during a test is recorded with its
destination: a P2P call on loopback, a relay-only call through a real coturn and
a device gathering with the default configuration send nothing to any address but
127.0.0.1 (no public STUN fallback). A network change -- the path a live call
uses stops carrying packets -- ends in an ICE restart, and the call goes on.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import selector_events
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import aioice.stun
import aioice.turn
import pytest

from sottovoce.calls.effects import CallState, EndReason, SendSignal
from sottovoce.calls.signals import Hangup, IceRestartOffer
from sottovoce.client.calls import CallController, CallOptions, IceConfig, MediaSpec, hooks
from sottovoce.client.calls.media import LOST_PATH_CHECKS, MediaSession
from sottovoce.limits import TURN_CREDENTIAL_MAX_TTL_S
from sottovoce.secret import Secret
from tests.integration.calls_helpers import RELAY_PORTS, Coturn, Net, wait_for, wait_state

LOOPBACK = CallOptions(ice=IceConfig(loopback=True))


@pytest.fixture
def sent_to(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """The destination of every UDP datagram the event loop sends (aioice's sockets,
    coturn's allocations, STUN probes)."""
    destinations: list[tuple[str, int]] = []
    original = selector_events._SelectorDatagramTransport.sendto

    def spy(self: Any, data: bytes, addr: Any = None) -> None:
        target = addr if addr is not None else self._address
        destinations.append((str(target[0]), int(target[1])))
        original(self, data, addr)

    monkeypatch.setattr(selector_events._SelectorDatagramTransport, "sendto", spy)
    yield destinations


async def connect(net: Net, caller: CallController, callee: CallController) -> None:
    caller.dial(callee.machine.user, net.devices_of(callee.machine.user))
    await wait_state(callee, CallState.INCOMING_RINGING)
    callee.accept(own_devices=net.devices_of(callee.machine.user))
    await wait_state(caller, CallState.ACTIVE)
    await wait_state(callee, CallState.ACTIVE)


def session(ctl: CallController) -> MediaSession:
    s = ctl.session()
    assert s is not None
    return s


async def test_a_p2p_call_sends_packets_to_127_0_0_1_only(
    net: Net, sent_to: list[tuple[str, int]]
) -> None:
    alice = net.device("alice", "a1", LOOPBACK)
    bob = net.device("bob", "b1", LOOPBACK)
    await connect(net, alice, bob)
    await wait_for(lambda: session(bob).sinks["camera"].frames > 10)
    assert len(sent_to) > 50  # the witness saw the call's media
    assert {host for host, _ in sent_to} == {"127.0.0.1"}


async def test_relay_only_calls_send_every_packet_to_the_turn_server(
    net: Net, coturn: Coturn, sent_to: list[tuple[str, int]]
) -> None:
    alice = net.device(
        "alice", "a1", CallOptions(ice=IceConfig(turn=(coturn.server(),), relay_only=True))
    )
    bob = net.device(
        "bob", "b1", CallOptions(ice=IceConfig(turn=(coturn.server(),), relay_only=True))
    )
    await connect(net, alice, bob)
    await wait_for(lambda: session(bob).sinks["camera"].frames > 10)
    pc = session(alice).current()
    assert pc is not None
    pair = hooks.selected_pair(pc)
    assert pair is not None and pair[0].type == pair[1].type == "relay"
    assert len(sent_to) > 50  # the witness saw the call's media
    # Not one datagram went from one device to the other directly, nor anywhere
    # else: only to coturn, which relays them.
    assert set(sent_to) == {("127.0.0.1", coturn.port)}


async def test_the_default_configuration_names_no_stun_server_and_sends_nothing(
    sent_to: list[tuple[str, int]],
) -> None:
    # No TURN, not loopback: what a device uses when the server has no TURN. aiortc
    # would otherwise ask a public STUN server (stun.l.google.com) for our address.
    assert IceConfig().rtc_configuration().iceServers == []
    media = MediaSession(spec=MediaSpec(), ice=IceConfig(), on_event=lambda e: None)
    try:
        await media.create_offer(0)
        (gen,) = media._generations.values()
        (transport,) = hooks.dtls_transports(gen.pc)
        connection = transport.transport._connection
        assert connection.stun_server is None and connection.turn_server is None
        assert connection.local_candidates  # it did gather (host candidates)
        await asyncio.sleep(0.5)
        assert sent_to == []  # gathering host candidates sends nothing anywhere
    finally:
        await media.close()


async def test_a_call_that_loses_its_path_restarts_ice_and_goes_on(net: Net) -> None:
    alice = net.device("alice", "a1", LOOPBACK)
    bob = net.device("bob", "b1", LOOPBACK)
    await connect(net, alice, bob)
    await wait_for(lambda: session(bob).sinks["camera"].frames > 5)
    old = session(bob).current()
    assert old is not None
    # The network changes under bob: the sockets of his current path neither send
    # nor receive any more (his old address is gone).
    for transport in hooks.dtls_transports(old):
        for protocol in transport.transport._connection._protocols:
            protocol.transport.sendto = lambda *args: None
            protocol.datagram_received = lambda *args: None
    lost = asyncio.get_running_loop().time()
    # Noticed in seconds (LOST_PATH_CHECKS), not after ICE consent's ~30 s.
    await wait_for(lambda: alice.call is not None and alice.call.generation >= 1, 15)
    assert asyncio.get_running_loop().time() - lost < 12
    await wait_state(alice, CallState.ACTIVE, 20)
    await wait_state(bob, CallState.ACTIVE, 20)
    assert bob.call is not None and alice.call is not None
    assert bob.call.call_id == alice.call.call_id  # the same call
    assert net.signals(IceRestartOffer)
    new = session(bob).current()
    assert new is not None and new is not old
    # Media flows on the new path: frames numbered after the change arrive.
    after = session(alice).camera_frames_sent() or 0
    await wait_for(lambda: any(n > after for n in session(bob).sinks["camera"].numbers), 10)
    await wait_for(lambda: any(n > after for n in session(alice).sinks["camera"].numbers), 10)
    net.assert_loopback_only()


async def test_a_quiet_call_is_not_a_lost_path(net: Net) -> None:
    # Muted, camera and screen off on both sides: RTCP still flows, so the call
    # keeps its first connection.
    alice = net.device("alice", "a1", LOOPBACK)
    bob = net.device("bob", "b1", LOOPBACK)
    await connect(net, alice, bob)
    first = session(bob).current()
    for ctl in (alice, bob):
        ctl.set_media(audio_muted=True, camera_on=False, screen_on=False)
    await asyncio.sleep(LOST_PATH_CHECKS + 3)
    assert alice.state is bob.state is CallState.ACTIVE
    assert alice.call is not None and alice.call.generation == 0
    assert session(bob).current() is first
    assert not net.signals(IceRestartOffer)


async def test_a_hangup_that_reaches_the_peer_after_the_media_is_not_a_lost_path(
    net: Net,
) -> None:
    # The hang-up's DTLS close_notify goes straight to bob; the signal takes the
    # server's way round, here 2 s. Bob waits for it rather than restarting ICE.
    alice = net.device("alice", "a1", LOOPBACK)
    bob = net.device("bob", "b1", LOOPBACK)
    await connect(net, alice, bob)
    loop = asyncio.get_running_loop()

    def slow_hangup(user: str, device: str, effect: SendSignal) -> bytes | None:
        if isinstance(effect.signal, Hangup):
            loop.call_later(2.0, net._deliver, user, device, effect, effect.payload)
            return None
        return effect.payload

    net.tamper = slow_hangup
    alice.hangup()
    await wait_state(bob, CallState.ENDED, 10)
    assert bob.call is not None and bob.call.reason is EndReason.PEER_HUNG_UP
    assert bob.call.generation == 0 and not net.signals(IceRestartOffer)


# --- the deployed coturn configuration, run for real ---------------------------------------

DEPLOYED = Path(__file__).resolve().parents[2] / "deploy" / "turnserver.conf"


class DeployedCoturn(Coturn):
    """coturn running deploy/turnserver.conf as shipped, but for where it listens and
    writes: 127.0.0.1, free ports, this test's secret and files."""

    def config_lines(self, low: int) -> list[str]:
        here = {
            "listening-port": str(self.port),
            "listening-ip": "127.0.0.1",
            "relay-ip": "127.0.0.1",
            "min-port": str(low),
            "max-port": str(low + RELAY_PORTS - 1),
            "static-auth-secret": self.secret.expose().decode(),
            "log-file": str(self.log_path),
            "userdb": str(self.workdir / "turndb"),
        }
        lines = [f"pidfile={self.workdir / 'turnserver.pid'}"]
        for line in DEPLOYED.read_text().splitlines():
            key = line.lstrip("#").split("=", 1)[0].strip()
            if key in here and "=" in line:
                lines.append(f"{key}={here.pop(key)}")
            elif line.strip() and not line.startswith("#"):
                lines.append(line)
        assert not here, f"deploy/turnserver.conf no longer sets {sorted(here)}"
        assert "allow-loopback-peers" not in lines
        return lines


class _Quiet(asyncio.DatagramProtocol):
    pass


async def test_the_deployed_coturn_takes_our_credentials_and_relays_to_no_internal_address(
    tmp_path: Path, sent_to: list[tuple[str, int]]
) -> None:
    turn = DeployedCoturn(tmp_path / "coturn").start()
    try:
        forged = turn.server(secret=Secret(b"not-the-secret-this-coturn-holds"))
        with pytest.raises(aioice.stun.TransactionFailed) as refused:
            await aioice.turn.create_turn_endpoint(
                _Quiet, server_addr=("127.0.0.1", turn.port),
                username=forged.username, password=forged.credential.expose().decode(),
            )  # fmt: skip
        assert refused.value.response.attributes["ERROR-CODE"][0] == 401
        good = turn.server()
        relayed, _ = await aioice.turn.create_turn_endpoint(
            _Quiet, server_addr=("127.0.0.1", turn.port),
            username=good.username, password=good.credential.expose().decode(),
        )  # fmt: skip
        try:
            client = relayed._TurnTransport__inner_protocol  # type: ignore[attr-defined]
            # A channel to a peer makes a permission (RFC 8656 §12) and sends the peer
            # nothing. An outside address is allowed; loopback, private and
            # link-local ones are not (403 Forbidden).
            await client.channel_bind(0x4000, ("192.0.2.10", 9))  # TEST-NET-1
            for number, peer in enumerate(
                [
                    "127.0.0.1",
                    "10.1.2.3",
                    "172.16.5.5",
                    "192.168.1.1",
                    "169.254.1.1",
                    "100.64.0.1",
                    "0.0.0.0",
                ],
                start=0x4001,
            ):
                with pytest.raises(aioice.stun.TransactionFailed) as denied:
                    await client.channel_bind(number, (peer, 9))
                assert denied.value.response.attributes["ERROR-CODE"][0] == 403, peer
        finally:
            relayed.close()
            await asyncio.sleep(0.1)
    finally:
        turn.stop()
    assert {host for host, _ in sent_to} == {"127.0.0.1"}


async def test_an_allocation_outlives_its_credentials_expiry_while_it_is_refreshed(
    coturn: Coturn,
) -> None:
    # coturn checks a credential's expiry when an allocation is made; a call that
    # keeps its allocation refreshed goes on past the credential's 10 minutes.
    # It expires in 5 s: time for the allocation even on a loaded machine.
    soon = coturn.server(now_s=int(time.time()) - TURN_CREDENTIAL_MAX_TTL_S + 5)
    expires = int(soon.username.split(":")[0])
    assert expires - time.time() <= 5
    relayed, _ = await aioice.turn.create_turn_endpoint(
        _Quiet, server_addr=("127.0.0.1", coturn.port),
        username=soon.username, password=soon.credential.expose().decode(),
    )  # fmt: skip
    try:
        client = relayed._TurnTransport__inner_protocol  # type: ignore[attr-defined]
        await asyncio.sleep(expires + 1 - time.time())  # the credential has expired now
        refresh = aioice.stun.Message(
            message_method=aioice.stun.Method.REFRESH, message_class=aioice.stun.Class.REQUEST
        )
        refresh.attributes["LIFETIME"] = 600
        response, _ = await client.request_with_retry(refresh)
        assert response.attributes["LIFETIME"] > 0
        await client.channel_bind(0x4000, ("127.0.0.1", 9))  # a new peer's permission too
    finally:
        relayed.close()
        await asyncio.sleep(0.1)
    # A new allocation with the expired credential is refused.
    with pytest.raises(aioice.stun.TransactionFailed) as refused:
        await aioice.turn.create_turn_endpoint(
            _Quiet, server_addr=("127.0.0.1", coturn.port),
            username=soon.username, password=soon.credential.expose().decode(),
        )  # fmt: skip
    assert refused.value.response.attributes["ERROR-CODE"][0] == 401
