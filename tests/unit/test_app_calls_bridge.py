"""The app's call bridge: what it accepts of the page's descriptions and answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sottovoce.app.calls_bridge import keys_notice
from sottovoce.app.page_link import PageCallError, PageLink, page_sdp
from sottovoce.calls import sdp as sdp_text
from sottovoce.calls.media_keys import EpochKeys

SDP = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 192.0.2.2",
    f"a=extmap:1 {sdp_text.AUDIO_LEVEL_URI}",
    "a=candidate:1 1 udp 2122194687 127.0.0.1 34098 typ host generation 0",
    "a=candidate:2 1 udp 2122063615 192.0.2.2 39060 typ host generation 0",
    "a=candidate:3 1 udp 58597375 127.0.0.1 42485 typ relay raddr 127.0.0.1 rport 34098",
    "a=candidate:4 1 udp 58466303 127.0.0.1 42488 typ relay raddr 192.0.2.2 rport 39060",
    "a=candidate:5 1 udp 2122 ::1 60851 typ host generation 0",
    "a=rtpmap:111 opus/48000/2", "",
])


def test_a_loopback_description_keeps_only_127_0_0_1_and_loses_the_audio_level() -> None:
    out = page_sdp(SDP, loopback=True)
    assert [c.address for c in sdp_text.candidates(out)] == ["127.0.0.1", "127.0.0.1"]
    assert "raddr 192.0.2.2" not in out and "192.0.2.2" not in out
    assert sdp_text.AUDIO_LEVEL_URI not in out
    assert "c=IN IP4 127.0.0.1" in out


def test_without_loopback_every_candidate_stays_but_the_audio_level_goes() -> None:
    out = page_sdp(SDP, loopback=False)
    assert len(sdp_text.candidates(out)) == 5
    assert sdp_text.AUDIO_LEVEL_URI not in out


@pytest.mark.parametrize("bad", [None, 5, "", "hello", "v=0" + "x" * 70_000])
def test_what_is_not_a_description_is_refused(bad: Any) -> None:
    with pytest.raises(PageCallError):
        page_sdp(bad, loopback=True)


async def test_a_description_is_taken_only_under_a_ref_that_was_asked_for() -> None:
    sent: list[dict[str, Any]] = []

    async def notify(notice: dict[str, Any]) -> None:
        sent.append(notice)

    link = PageLink(notify, loopback=True)
    with pytest.raises(PageCallError):
        link.answer(1, SDP)  # nothing asked yet
    task = asyncio.ensure_future(link.ask("room", "publish"))
    await asyncio.sleep(0)
    assert sent == [{"event": "call", "room": "room", "kind": "publish", "ref": 1}]
    with pytest.raises(PageCallError):
        link.answer("1", SDP)  # a ref is a number
    link.answer(1, SDP)
    assert "192.0.2.2" not in await task
    with pytest.raises(PageCallError):
        link.answer(1, SDP)  # once only
    task = asyncio.ensure_future(link.ask("room", "publish"))
    await asyncio.sleep(0)
    link.answer(2, None, "camera denied")
    with pytest.raises(PageCallError, match="camera denied"):
        await task


def test_the_keys_notice_carries_every_kid_and_the_roster_and_no_exporter() -> None:
    keys = EpochKeys.derive(epoch=17, exporter=lambda label, ctx, n: bytes(n) + ctx[:0],
                            roster={0: ("alice", "a1"), 3: ("bob", "b1")}, own_leaf=3)
    notice = keys_notice(keys)
    assert notice["epoch"] == 17 and notice["ownLeaf"] == 3
    assert notice["roster"] == {"0": "alice/a1", "3": "bob/b1"}
    assert sorted(int(k) for k in notice["keys"]) == sorted(keys.base_keys)
    # KID = leaf ‖ track ‖ epoch mod 16: leaf 3, video (2), epoch 17 -> 0x321.
    assert str(0x321) in notice["keys"]


def _p2p_session(notify: Any, ice: Any) -> Any:
    from sottovoce.app.p2p_bridge import BrowserMediaSession, P2pBridge
    from sottovoce.client.calls.sources import MediaSpec

    bridge = P2pBridge(notify, loopback=True, relay_only=True)
    bridge.peer = "bob"
    return BrowserMediaSession(link=bridge.link, bridge=bridge, spec=MediaSpec(), ice=ice,
                               on_event=lambda event: None)


async def test_relay_only_takes_from_the_page_a_description_of_relay_candidates_only() -> None:
    """`sottovoce app --relay-only`: the page is told the "relay" policy, a description
    with a host candidate is refused (never signalled), as is one without any relay
    candidate, and without TURN credentials from the server nothing is asked."""
    from sottovoce.client.calls.errors import CandidateLeak, TurnError
    from sottovoce.client.calls.media import IceConfig, TurnServer
    from sottovoce.secret import Secret

    sent: list[dict[str, Any]] = []

    async def notify(notice: dict[str, Any]) -> None:
        sent.append(notice)

    turn = (TurnServer(url="turn:127.0.0.1:3478", username="1:u",
                       credential=Secret(b"pw")),)
    relay_only = "\r\n".join(line for line in SDP.split("\r\n") if "typ host" not in line)
    no_candidates = "\r\n".join(line for line in SDP.split("\r\n") if "candidate" not in line)
    for page, refused in [(SDP, CandidateLeak), (no_candidates, TurnError), (relay_only, None)]:
        session = _p2p_session(notify, IceConfig(loopback=True, relay_only=True, turn=turn))
        task = asyncio.ensure_future(session.create_offer(0))
        await asyncio.sleep(0)
        assert sent[-1]["relayOnly"] is True and sent[-1]["iceServers"][0]["urls"] == turn[0].url
        session.link.answer(sent[-1]["ref"], page)
        if refused is None:
            assert {c.type for c in sdp_text.candidates(await task)} == {"relay"}
        else:
            with pytest.raises(refused):
                await task
    before = len(sent)
    session = _p2p_session(notify, IceConfig(loopback=True, relay_only=True))
    with pytest.raises(TurnError, match="need a TURN server"):
        await session.create_offer(0)
    assert len(sent) == before  # the page was not asked


def test_the_candidates_of_each_m_section_are_read_with_its_mid() -> None:
    """What the SDK adds again after a remote description (a browser with max-bundle
    lists its candidates in the first m-section only)."""
    sdp = "\r\n".join([
        "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0",
        "a=candidate:3 1 udp 58597375 127.0.0.1 42485 typ relay raddr 0.0.0.0 rport 0",
        "a=end-of-candidates",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:1", "a=bundle-only", "",
    ])
    assert sdp_text.section_candidates(sdp) == [
        ("0", ("candidate:3 1 udp 58597375 127.0.0.1 42485 typ relay raddr 0.0.0.0 rport 0",),
         True),
        ("1", (), False),
    ]


async def test_leaving_sends_the_leave_even_if_the_calls_media_work_then_asks_the_page() -> None:
    """The page's leave request holds its socket until the leave is done, and the call's
    media work (here a publish whose Janus join returns only after the leave began)
    then asks the page for a description: the page's answer could only come after
    that request, so the ask is refused at once and the leave goes out."""
    import secrets

    from sottovoce.app.calls_bridge import BrowserSfuMedia, CallsBridge
    from sottovoce.calls.room_call import CALL_MLS_SUITE
    from sottovoce.calls.room_signals import Leave, RoomCallSignal
    from sottovoce.client.calls.room_calls import RoomCalls
    from sottovoce.client.calls.room_controller import RoomCallOptions
    from sottovoce.crypto.suite import cipher_suite
    from sottovoce.protocol.audit import AuditAction

    notices: list[dict[str, Any]] = []
    signals: list[bytes] = []
    janus_replied = asyncio.Event()

    async def notify(notice: dict[str, Any]) -> None:
        notices.append(notice)

    class SlowJanus(BrowserSfuMedia):
        async def _join_as_publisher(self) -> Any:
            await janus_replied.wait()
            return None, 1

    async def send(room_id: str, signal: bytes) -> None:
        signals.append(signal)

    async def audit(room_id: str, action: AuditAction) -> None:
        return None

    async def grant(room_id: str, call_id: bytes) -> dict[str, Any]:
        return {"url": "ws://127.0.0.1:8188/", "room": "ab" * 16, "feedId": "cd" * 16,
                "token": "ef" * 16}

    bridge = CallsBridge(notify, loopback=True)
    key = cipher_suite(CALL_MLS_SUITE).generate_signing_key(secrets.token_bytes)
    bridge.hub = RoomCalls(
        me=("alice", "a1"), signing_key=key, send_signal=send, leaf_keys=lambda room: {},
        append_audit=audit, ask_grant=grant,
        options=RoomCallOptions(sfu_media=lambda **kw: SlowJanus(
            link=bridge.link, room_id="room-1", **kw)))
    await bridge._op_join({"room": "room-1", "start": True})
    for _ in range(5):
        await asyncio.sleep(0)  # the controller's worker is in the Janus join now
    leaving = asyncio.ensure_future(bridge._op_leave({}))
    await asyncio.sleep(0)
    janus_replied.set()
    # Before, the leave waited the page's whole timeout (a minute) for that answer.
    await asyncio.wait_for(leaving, 10)
    assert any(isinstance(RoomCallSignal.decode(s), Leave) for s in signals)
    assert not any(n.get("kind") == "publish" for n in notices)  # never asked
    assert bridge.ctl is None and bridge.hub.active == {}
    # The next call asks the page again.
    janus_replied.clear()
    await bridge._op_join({"room": "room-1", "start": True})
    for _ in range(5):
        await asyncio.sleep(0)
    janus_replied.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert [n["kind"] for n in notices if n.get("kind") == "publish"] == ["publish"]
    await bridge.leave()
