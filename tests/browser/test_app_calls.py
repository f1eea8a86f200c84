"""Room calls in the browser: `sottovoce app --loopback` in Chromium (its own WebRTC, fake
camera and microphone) and an aiortc participant (the SDK) in one call through a real
Janus on 127.0.0.1, every frame SFrame-sealed on both sides (docs/app.md, "Calls").

Counted both ways over the same window: frames the sender sealed against frames the
other side decoded (the browser: its worker's sealed video frames and getStats'
framesDecoded; Python: the test pattern's frame counter and its sink). An outsider
with a real grant but another call's keys subscribes to the browser's feed and
decodes nothing. A screenshot of the call view goes to tests/browser/artifacts/.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sottovoce.calls.effects import CallState
from sottovoce.calls.media_keys import CallKeys, EpochKeys
from sottovoce.calls.room_effects import PeerMediaState
from sottovoce.client import Client
from sottovoce.client.calls import hooks
from sottovoce.client.calls.controller import CallOptions
from sottovoce.client.calls.e2ee import FrameCrypto
from sottovoce.client.calls.media import IceConfig
from sottovoce.client.calls.room_calls import access_from_wire
from sottovoce.client.calls.room_controller import RoomCallController, RoomCallOptions
from sottovoce.client.calls.room_media import SfuMedia
from sottovoce.client.calls.sources import MediaSpec, PatternTrack
from sottovoce.client.store import TEST_KDF
from sottovoce.secret import Secret
from sottovoce.server.sfu import sfu_feed_id
from tests.browser.app_helpers import ARTIFACTS, CHROMIUM, AppProcess, need_chromium
from tests.browser.conftest import PASSPHRASE
from tests.integration.calls_helpers import Coturn
from tests.integration.janus_helpers import Janus
from tests.integration.serverproc import ServerProcess

WAIT_MS = 20_000
BOB_OPTIONS = dict(media=MediaSpec(width=320, height=240, fps=15), ice=IceConfig(loopback=True))
MEDIA_FLAGS = ["--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream",
               "--allow-loopback-in-peer-connection"]


@dataclass
class CallApp(AppProcess):
    """`sottovoce app --no-browser --loopback`: calls hand on 127.0.0.1 only
    (``relay_only``: with --relay-only too)."""

    relay_only: bool = False

    def options(self) -> list[str]:
        return ["--loopback", *(["--relay-only"] if self.relay_only else [])]


async def until(predicate: Callable[[], bool], timeout: float = 45.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def page_until(page: Any, js: str, timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await page.evaluate(js)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the page never met {js}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Chromium with fake media devices; ``grant=False`` leaves camera and microphone
    to a prompt that headless Chromium denies."""
    need_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        contexts: list[Any] = []

        async def launch(grant: bool = True) -> Any:
            flags = [*MEDIA_FLAGS, *(["--use-fake-ui-for-media-stream"] if grant
                                     else ["--deny-permission-prompts"])]
            ctx = await pw.chromium.launch_persistent_context(
                str(tmp_path / f"profile-{len(contexts)}"), executable_path=str(CHROMIUM),
                headless=True, args=flags, viewport={"width": 1100, "height": 900})
            contexts.append(ctx)
            return ctx

        try:
            yield launch
        finally:
            for ctx in contexts:
                await ctx.close()


async def room_with_alice(server: ServerProcess, root: Path, *others: str,
                          ) -> tuple[list[Client], str, Path]:
    """Alice's account (closed: her app opens it), bob's and the ``others``' (connected,
    in this process), and bob's room with all of them invited."""
    alice = await Client.create_account(server.url, "alice", root / "alice", PASSPHRASE,
                                        kdf=TEST_KDF)
    await alice.close()
    clients = [await Client.create_account(server.url, name, root / name, PASSPHRASE,
                                           kdf=TEST_KDF) for name in ("bob", *others)]
    room = await clients[0].rooms.create_room("call-room")
    for name in ("alice", *others):
        await clients[0].rooms.invite(room.room_id, name)
    return clients, room.room_id, root / "alice"


async def open_room(ctx: Any, app: AppProcess) -> Any:
    page = await ctx.new_page()
    await page.goto(app.url)
    await page.wait_for_url(app.origin + "/")
    await page.fill("#passphrase", PASSPHRASE)
    await page.press("#passphrase", "Enter")
    room = page.locator("#conversations button", has_text="call-room")
    await room.wait_for(timeout=WAIT_MS)
    await room.click()
    await page.locator("#call-button").wait_for(timeout=WAIT_MS)
    return page


async def sealing_stops(page: Any, stream: str, timeout: float = 30.0) -> None:
    """The page's worker seals no frame of ``stream`` for a whole second, within
    ``timeout`` (the page stops a track asynchronously, later on a loaded machine)."""
    deadline = asyncio.get_running_loop().time() + timeout
    before = (await stats(page))["worker"][stream]["frames"]
    while True:
        await asyncio.sleep(1.0)
        now = (await stats(page))["worker"][stream]["frames"]
        if now == before:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the page still seals {stream}: {before} -> {now} frames")
        before = now


async def stats(page: Any) -> dict[str, Any]:
    value: dict[str, Any] = await page.evaluate("window.sottovoceCall.stats()")
    return value


def sink_frames(ctl: RoomCallController, who: tuple[str, str]) -> int:
    return 0 if ctl.media is None else ctl.media.sink(who, "camera").frames


def pattern(ctl: RoomCallController) -> PatternTrack:
    assert ctl.media is not None
    track = ctl.media._sources.camera
    assert isinstance(track, PatternTrack)
    return track


@pytest.mark.parametrize("api", ["script-transform", "insertable-streams"])
async def test_a_browser_and_an_aiortc_participant_decode_each_other_through_janus(
    sfu_server: ServerProcess, janus: Janus, tmp_path: Path, browser: Callable[..., Any],
    api: str,
) -> None:
    """``insertable-streams``: a browser without RTCRtpScriptTransform, where the page
    hands the worker each sender's and receiver's encoded streams instead."""
    (bob, carol), room_id, alice_dir = await room_with_alice(sfu_server, tmp_path, "carol")
    app = CallApp(alice_dir).start()
    outsider: SfuMedia | None = None
    try:
        hub = bob.start_room_calls(RoomCallOptions(
            **BOB_OPTIONS, record_to=tmp_path / "bob.svrec"))  # type: ignore[arg-type]
        ctx = await browser()
        if api == "insertable-streams":
            await ctx.add_init_script("delete window.RTCRtpScriptTransform;")
        page = await open_room(ctx, app)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.click("#call-button")  # nobody is in a call yet: the browser starts one
        await until(lambda: room_id in hub.seen)
        ctl = hub.join(room_id)
        await until(lambda: len(ctl.participants) == 2)
        alice = next(d for d in ctl.participants if d[0] == "alice")
        await page_until(page, "window.sottovoceCall.stats().then(s => Object.values(s.decoded)"
                               ".some(n => n > 5))")
        await until(lambda: sink_frames(ctl, alice) > 5)
        e2ee = await page.text_content("#call-e2ee")
        assert e2ee is not None and e2ee.startswith("E2EE on · epoch ")

        # Both directions over one window: sealed by one side, decoded by the other.
        bob_name = f"{bob.username}/{bob.device_id}"
        s0, bob_sent0, got0 = await stats(page), pattern(ctl).sent, sink_frames(ctl, alice)
        await asyncio.sleep(4.0)
        s1, bob_sent1 = await stats(page), pattern(ctl).sent
        await asyncio.sleep(1.5)  # what was in flight at the end arrives
        s2, got2 = await stats(page), sink_frames(ctl, alice)
        assert s0["api"] == api
        sealed = s1["worker"]["send video"]["frames"] - s0["worker"]["send video"]["frames"]
        assert sealed >= 30 and got2 - got0 >= 0.95 * sealed, (got2 - got0, sealed)
        sent = bob_sent1 - bob_sent0
        decoded = s2["decoded"][bob_name] - s0["decoded"][bob_name]
        assert sent >= 30 and decoded >= 0.95 * sent, (decoded, sent)
        opened = s2["worker"][f"recv {bob_name} video"]
        assert opened["misbound"] == opened["unkeyed"] == 0, opened
        # A frame that fails authentication is dropped: on a loaded machine a lost UDP
        # packet leaves an incomplete frame now and then; never more than 1 %.
        assert opened["failed"] <= 0.01 * opened["frames"], opened
        assert ctl.media is not None and ctl.media.failed() <= 0.01 * got2, ctl.media.failed()

        # Carol, a room member outside the call, gets a real grant from the server and
        # the browser's frames, but holds another call's keys: she decodes none of them.
        await carol.rooms.wait_epoch(room_id, 2, timeout=20)
        grant = access_from_wire(await carol._ask_sfu_grant(room_id, ctl.call.call_id))
        me_carol = (carol.username, carol.device_id)
        wrong = CallKeys()
        wrong.begin_epoch(EpochKeys.derive(
            epoch=ctl.call.epoch or 0,
            exporter=lambda label, ctx, n: Secret(hashlib.shake_256(label + ctx).digest(n)),
            roster={0: alice, 1: (bob.username, bob.device_id), 2: me_carol}, own_leaf=2), 0)
        outsider = SfuMedia(
            access=grant,
            spec=MediaSpec(audio=False, video=False), ice=IceConfig(loopback=True),
            crypto=FrameCrypto(wrong))
        await outsider.publish()
        await outsider.subscribe(sfu_feed_id(janus.admin_key, room_id, ctl.call.call_id, alice),
                                 alice)
        await until(lambda: outsider is not None and outsider.dropped(alice) > 20)  # frames came
        assert outsider.sink(alice, "camera").frames == 0  # ... and none opened
        assert outsider.sink(alice, "audio").frames == 0

        # Recording: bob asks, the page asks alice, she allows: the REC badge shows.
        ctl.request_recording()
        await page.locator("#call-asked button", has_text="Allow").click(timeout=WAIT_MS)
        await page.locator("#call-rec").wait_for(state="visible", timeout=WAIT_MS)

        # Camera off: the browser seals no more video; mute: bob hears of it.
        await page.click("#call-camera")
        await page.click("#call-mute")
        await sealing_stops(page, "send video")
        await page.locator("#call-grid figcaption", has_text="muted").first.wait_for(
            timeout=WAIT_MS)
        states: list[PeerMediaState] = []

        def told() -> bool:
            while not ctl.events.empty():
                event = ctl.events.get_nowait()
                if isinstance(event, PeerMediaState) and event.device == alice:
                    states.append(event)
            return any(s.audio_muted and not s.camera_on for s in states)

        await until(told)  # bob's call heard it from alice's device, sealed in the call

        # Screen share: a third sealed stream, opened on bob's side.
        await page.click("#call-screen")
        await page_until(page, "window.sottovoceCall.stats().then(s => "
                               "s.worker['send screen'].frames > 10)")
        await until(lambda: ctl.media is not None
                    and ctl.media.sink(alice, "screen").frames > 10)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "call.png"))
        await page.click("#call-screen")

        # Bob leaves: the page shows alice alone again; bob comes back.
        await hub.end(room_id)
        await page.locator("#call-note", has_text="Waiting for others").wait_for(timeout=WAIT_MS)
        ctl = hub.join(room_id)
        await until(lambda: len(ctl.participants) == 2)
        await page.locator("#call-e2ee", has_text="epoch").wait_for(timeout=WAIT_MS)
        assert errors == [] and await page.text_content("#call-error") == ""
        # Alice leaves, then joins the call that goes on.
        me = (bob.username, bob.device_id)
        await page.click("#call-leave")
        await page.locator("#call-note", has_text="You left the call").wait_for(timeout=WAIT_MS)
        await until(lambda: ctl.participants == (me,))
        await page.click("#call-button")
        await until(lambda: len(ctl.participants) == 2)
        await page_until(page, "window.sottovoceCall.stats().then(s => s && "
                               "Object.values(s.decoded).some(n => n > 5))")
        # The page goes (a reload): the app leaves the call for it.
        await page.reload()
        await until(lambda: ctl.participants == (me,))
        await hub.end(room_id)
    finally:
        if outsider is not None:
            await outsider.close()
        await bob.close()
        await carol.close()
        app.stop()


async def test_a_denied_camera_and_a_server_without_an_sfu_are_plain_messages(
    server: ServerProcess, tmp_path: Path, browser: Callable[..., Any]
) -> None:
    """No camera or microphone: the page says so and joins nothing. With them but a
    server that runs no SFU (as when Janus is down), the page says the media server
    cannot be reached and is in no call."""
    alice = await Client.create_account(server.url, "dora", tmp_path / "dora", PASSPHRASE,
                                        kdf=TEST_KDF)
    await alice.close()
    app = CallApp(tmp_path / "dora").start()
    try:
        ctx = await browser(grant=False)
        page = await ctx.new_page()
        await page.goto(app.url)
        await page.wait_for_url(app.origin + "/")
        await page.fill("#passphrase", PASSPHRASE)
        await page.press("#passphrase", "Enter")
        await page.fill("#new-room", "call-room")
        await page.press("#new-room", "Enter")
        await page.locator("#conversations button", has_text="call-room").click(timeout=WAIT_MS)
        await page.click("#call-button")
        error = page.locator("#call-error")
        await error.filter(has_text="access was denied").wait_for(timeout=WAIT_MS)
        assert await page.evaluate("window.sottovoceCall.stats()") is None  # in no call

        await ctx.grant_permissions(["camera", "microphone"], origin=app.origin)
        await page.click("#call-button")
        await error.filter(has_text="no media server (Janus) can be reached").wait_for(
            timeout=WAIT_MS)
        assert await page.evaluate("window.sottovoceCall.stats()") is None
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "call-no-sfu.png"))
    finally:
        app.stop()


@dataclass
class Path1to1:
    """What a 1:1 call took: the page's candidate types the peer saw, and the selected
    pair's (local, remote) candidate types on each side while media flowed."""

    seen: set[str]
    page: tuple[str, str]
    peer: tuple[str, str]


async def one_to_one(server: ServerProcess, tmp_path: Path, browser: Callable[..., Any],
                     names: tuple[str, str], *, turn: bool = False,
                     relay_only: bool = False) -> Path1to1:
    """The browser (the first name) dials the SDK peer (the second, aiortc), who answers;
    video and audio decoded on both sides; the peer hangs up and the page says so.
    ``relay_only``: both sides relay-only (the app's and the peer's --relay-only)."""
    mine, theirs = names
    alice = await Client.create_account(server.url, mine, tmp_path / mine, PASSPHRASE,
                                        kdf=TEST_KDF)
    await alice.close()
    bob = await Client.create_account(server.url, theirs, tmp_path / theirs, PASSPHRASE,
                                      kdf=TEST_KDF)
    calls = bob.start_calls(CallOptions(
        ice=IceConfig(loopback=True, turn=await bob.turn_servers() if turn else (),
                      relay_only=relay_only),
        media=MediaSpec(width=320, height=240, fps=15)))
    await bob.send_text(mine, "call me")
    app = CallApp(tmp_path / mine, relay_only=relay_only).start()
    try:
        page = await (await browser()).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(app.url)
        await page.wait_for_url(app.origin + "/")
        await page.fill("#passphrase", PASSPHRASE)
        await page.press("#passphrase", "Enter")
        await page.get_by_role("button", name=f"Accept the request from {theirs}").click(
            timeout=WAIT_MS)
        await page.locator("#conversations button", has_text=theirs).click(timeout=WAIT_MS)
        await page.click("#p2p-call-button")
        await until(lambda: calls.state is CallState.INCOMING_RINGING)
        bob.answer_call()
        await until(lambda: calls.state is CallState.ACTIVE)
        await page.locator("#p2p-state", has_text="Connected").wait_for(timeout=WAIT_MS)
        session = calls.session()
        assert session is not None
        await page_until(page, "window.sottovoceP2p.stats().then(s => s && s.decoded > 30"
                               " && s.audioIn > 30)")
        await until(lambda: session.sinks["camera"].frames > 30
                    and session.sinks["audio"].frames > 30)
        page_path = (await page.evaluate("window.sottovoceP2p.stats()"))["path"]
        pc = session.current()
        peer_pair = None if pc is None else hooks.selected_pair(pc)
        assert peer_pair is not None
        ARTIFACTS.mkdir(exist_ok=True)
        suffix = ("-relay-only" if relay_only else "-turn") if turn else ""
        await page.screenshot(path=str(ARTIFACTS / f"call-1to1{suffix}.png"))
        seen = set(session.peer_candidate_types)
        calls.hangup()
        await page.locator("#p2p-note", has_text=f"{theirs} hung up").wait_for(timeout=WAIT_MS)
        assert await page.evaluate("window.sottovoceP2p.stats()") is None
        assert errors == []
        return Path1to1(seen, tuple(page_path), (peer_pair[0].type, peer_pair[1].type))
    finally:
        await bob.close()
        app.stop()


async def test_a_browser_calls_a_python_peer_1to1_and_media_flow_both_ways(
    server: ServerProcess, tmp_path: Path, browser: Callable[..., Any]
) -> None:
    """DTLS-SRTP between the two devices, on 127.0.0.1 only (the page's candidates the
    peer saw are host candidates there)."""
    path = await one_to_one(server, tmp_path, browser, ("amy", "ben"))
    assert path.seen <= {"host"}
    assert path.page == ("host", "host")
    # The page's checks may reach the peer before its description: peer-reflexive.
    assert path.peer[0] == "host" and path.peer[1] in ("host", "prflx"), path


@contextlib.contextmanager
def turn_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A coturn on 127.0.0.1 and a server that hands out its credentials (``--turn-url``)."""
    turn = Coturn(tmp_path / "coturn").start()
    secret = tmp_path / "turn-secret"
    secret.write_bytes(turn.secret.expose() + b"\n")
    server = ServerProcess(tmp_path / "server", extra_args=[
        "--turn-url", turn.url, "--turn-secret-file", str(secret)]).start()
    try:
        yield server
    finally:
        server.stop()
        turn.stop()


async def test_a_1to1_call_from_the_browser_through_the_servers_turn(
    tmp_path: Path, browser: Callable[..., Any]
) -> None:
    """A server that hands out coturn credentials (``--turn-url``): the page gathers
    relay candidates (on 127.0.0.1) with the credentials the app got for it, and hands
    them to the peer in its description."""
    with turn_server(tmp_path) as server:
        path = await one_to_one(server, tmp_path, browser, ("cleo", "dan"), turn=True)
        assert "relay" in path.seen, path


async def test_a_relay_only_1to1_call_between_the_browser_and_a_python_peer(
    tmp_path: Path, browser: Callable[..., Any]
) -> None:
    """Both sides relay-only (`sottovoce app --relay-only`, the peer's IceConfig as
    `call --relay-only`): each gathers and hands out relay candidates only, and media
    flow both ways over a pair of relay candidates on both sides, through coturn."""
    with turn_server(tmp_path) as server:
        path = await one_to_one(server, tmp_path, browser, ("erin", "finn"), turn=True,
                                relay_only=True)
        assert path.seen == {"relay"}, path
        assert path.page == ("relay", "relay"), path
        assert path.peer == ("relay", "relay"), path
