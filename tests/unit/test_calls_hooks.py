"""The private aiortc/aioice hook points client/calls/hooks.py relies on.

aiortc and aioice are pinned exactly; this fails loudly, naming the hook, when
an upgrade moves one, before any call quietly loses a protection.
"""

from __future__ import annotations

import asyncio

import aioice
import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.rtcdtlstransport import RTCCertificate

from sottovoce.calls import sdp as sdp_text
from sottovoce.client.calls import hooks
from sottovoce.client.calls.media import CbrOpusEncoder


@pytest.mark.parametrize("name", sorted(hooks.hook_points()))
def test_hook_point_is_where_hooks_expects_it(name: str) -> None:
    assert hooks.hook_points()[name], f"aiortc/aioice moved {name}: update client/calls/hooks.py"


async def test_loopback_only_gathers_127_0_0_1_and_nothing_else() -> None:
    async def gather() -> list[str]:
        connection = aioice.Connection(ice_controlling=True)
        try:
            await connection.gather_candidates()
            return [c.host for c in connection.local_candidates]
        finally:
            await connection.close()

    with hooks.loopback_only():
        inside = await gather()
    assert inside == ["127.0.0.1"]
    # Outside the block aioice is itself again (it never offers 127.0.0.1).
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == [
        a
        for a in hooks._original_get_host_addresses(use_ipv4=True, use_ipv6=False)
        if a != "127.0.0.1"
    ]
    # Tasks started inside the block see it too (aiortc gathers in tasks).
    with hooks.loopback_only():
        task = asyncio.ensure_future(gather())
    assert await task == ["127.0.0.1"]


async def test_the_calls_certificate_is_the_one_in_every_description() -> None:
    certificate = RTCCertificate.generateCertificate()
    for _ in range(2):  # two peer connections (an ICE restart): one certificate
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        hooks.use_certificate(pc, certificate)
        pc.addTransceiver("audio")
        with hooks.loopback_only():
            await pc.setLocalDescription(await pc.createOffer())
        assert sdp_text.fingerprints(pc.localDescription.sdp) == hooks.local_fingerprints(
            certificate
        )
        await pc.close()
    late = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    late.addTransceiver("audio")
    with pytest.raises(RuntimeError):
        hooks.use_certificate(late, certificate)
    await late.close()


async def test_a_sender_keeps_the_encoder_it_was_given() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("audio")
    encoder = CbrOpusEncoder()
    hooks.use_encoder(transceiver.sender, encoder)
    assert transceiver.sender._RTCRtpSender__encoder is encoder  # type: ignore[attr-defined]
    assert isinstance(transceiver.sender, RTCRtpSender)
    assert encoder.codec.options["vbr"] == "off"
    await pc.close()
