"""Room calls without an SFU: a full mesh of P2P connections on 127.0.0.1, SFrame under
the call group's keys inside DTLS-SRTP; at most 4 participants (docs/calls.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from sottovoce.calls import sdp as sdp_text
from sottovoce.calls.errors import SfuRequired
from sottovoce.calls.room_effects import JoinRefused
from sottovoce.client.calls.room_controller import RoomCallController, RoomCallOptions
from sottovoce.client.calls.room_media import MeshMedia
from sottovoce.client.calls.sources import MediaSpec
from tests.integration.room_calls_helpers import (
    LOOPBACK,
    RoomNet,
    dev,
    events_of,
    sent_and_decoded,
    watch_sent,
)

A, B, C, D, E = "alice/a1", "bob/b1", "carol/c1", "dave/d1", "erin/e1"
QUIET = RoomCallOptions(media=MediaSpec(audio=False, video=False), ice=LOOPBACK.ice)


@pytest.fixture
async def net() -> AsyncIterator[RoomNet]:
    n = RoomNet([A, B, C, D, E])
    try:
        yield n
    finally:
        await n.close()


def numbers(ctl: RoomCallController, who: str) -> set[int]:
    return set() if ctl.media is None else ctl.media.sink(dev(who), "camera").numbers


def mesh_peer(sender: RoomCallController, receiver: RoomCallController) -> Any:
    """The sender's connection to the receiver (its tracks in the order of ROLES)."""
    assert isinstance(sender.media, MeshMedia)
    return sender.media._mesh[receiver.call.me]


async def test_a_mesh_of_three_decodes_95_percent_then_a_fifth_is_told_an_sfu_is_needed(
    net: RoomNet,
) -> None:
    alice = net.start(A)
    await net.until(lambda: alice.call.epoch == 0)
    bob, carol = net.join(B, alice), net.join(C, alice)
    everyone = (alice, bob, carol)
    by_name = {A: alice, B: bob, C: carol}
    await net.until(lambda: all(len(c.participants) == 3 for c in everyone))
    pairs = [(x, w) for x in everyone for w in (A, B, C) if dev(w) != x.call.me]
    await net.until(lambda: all(numbers(x, w) for x, w in pairs), 20)
    assert all(isinstance(c.media, MeshMedia) and len(c.media.peers()) == 2 for c in everyone)
    # Each sender's camera track toward each receiver: the frames it sent from now on.
    sent = {(x, w): watch_sent(mesh_peer(by_name[w], x).tracks[1]) for x, w in pairs}
    judged = await sent_and_decoded(sent, lambda pair: numbers(*pair), frames=90)
    for (x, w), (window, got) in judged.items():
        assert len(got) >= 0.95 * len(window), (x.call.me, w, sorted(window - got))
    assert all(c.media is not None and c.media.failed() == 0 for c in everyone)
    # The mesh's descriptions travelled sealed in the call group: the room's stream
    # holds no SDP, and the ones exchanged named 127.0.0.1 only.
    assert not any(b"v=0" in payload for _, payload in net.log)
    for ctl in everyone:
        for peer in ctl.media._mesh.values():  # type: ignore[union-attr]
            for sdp in (peer.pc.localDescription.sdp, peer.pc.remoteDescription.sdp):
                addresses = {c.address for c in sdp_text.candidates(sdp)}
                assert addresses == {"127.0.0.1"}, addresses
    # A fourth (sending nothing, to spare the machine) fills the mesh; a fifth is refused.
    dave = net.join(D, alice, QUIET)
    await net.until(lambda: len(alice.participants) == 4 and len(dave.participants) == 4)
    erin = net.join(E, alice, QUIET)
    await net.until(lambda: any(isinstance(e, JoinRefused) for e in events_of(erin)))
    refused = [e for e in events_of(erin) if isinstance(e, JoinRefused)]
    assert isinstance(refused[0].error, SfuRequired)
    assert "SFU" in str(refused[0].error) and "--sfu" in str(refused[0].error)
    assert erin.participants == () and len(alice.participants) == 4
