"""Room calls in the browser: the SDK runs the call, the page runs the media.

::

    SDK (this process)                                   page (call.js) + worker
    ───────────────────────────────────────────          ─────────────────────────────
    RoomCallController: the call's MLS group ─ keys ──►  sframe-worker.js seals/opens
       (EpochKeys of each epoch, re-sent on change)      every encoded frame (SFrame)
    BrowserSfuMedia: the Janus VideoRoom session ◄─SDP─► RTCPeerConnection: publisher
       (grant, join, publish, subscribe, start)          and one subscriber per feed
    controller events ── "call" notices ──────────────►  grid, E2EE epoch, REC, errors

The page never talks to Janus (its CSP allows only the app's own WebSocket) and
never holds the call's MLS state: only each epoch's per-sender, per-track SFrame
base keys with their KIDs (docs/protocol.md "SFrame media frames"), over the
page's WebSocket on 127.0.0.1. The grant's token stays here. Who is subscribed
as whom is the call group's word (``FeedAnnounced``), never the SFU's; the worker
drops any frame whose KID names another sender or track than its stream.

Every description from the page is checked like network input: it must be a
description of the right type, the RFC 6464 audio level is taken out, and with
``--loopback`` every candidate but 127.0.0.1 is dropped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from sottovoce.app.page_link import Notify, PageCallError, PageLink
from sottovoce.calls.errors import CallError
from sottovoce.calls.janus import SfuError
from sottovoce.calls.media_keys import Device, EpochKeys
from sottovoce.calls.room_effects import (
    JoinRefused,
    Left,
    ParticipantsChanged,
    PeerMediaState,
    RecordingRefused,
    RecordingRequested,
    RecordingState,
)
from sottovoce.calls.room_signals import CallMode
from sottovoce.client import Client
from sottovoce.client.calls.media import IceConfig, MediaProblem, clean_sdp
from sottovoce.client.calls.room_calls import RoomCalls
from sottovoce.client.calls.room_controller import RoomCallController, RoomCallOptions
from sottovoce.client.calls.room_media import TRACK_OF_MID, SfuMedia, e2ee_jsep, feed_mids
from sottovoce.client.calls.sources import MediaSpec
from sottovoce.errors import SottovoceError
from sottovoce.sframe import Track

if TYPE_CHECKING:
    from sottovoce.app.p2p_bridge import P2pBridge

log = logging.getLogger("sottovoce.app")

_TRACK_NAMES = {Track.AUDIO: "audio", Track.VIDEO: "video", Track.SCREEN: "screen"}


#: What the page says when a call cannot go through the SFU.
NO_SFU = ("no media server (Janus) can be reached for this call, and calls in the browser "
          "go through one: try again later, or call from the command line")


def device_name(device: Device) -> str:
    return f"{device[0]}/{device[1]}"


def keys_notice(keys: EpochKeys) -> dict[str, Any]:
    """An epoch's keys as the worker takes them: KID -> base key, and the roster."""
    return {
        "kind": "keys", "epoch": keys.epoch, "ownLeaf": keys.own_leaf,
        "roster": {str(leaf): device_name(d) for leaf, d in keys.roster.items()},
        "keys": {str(kid): base64.b64encode(base.expose()).decode()
                 for kid, base in keys.base_keys.items()},
    }


class BrowserSfuMedia(SfuMedia):
    """SfuMedia whose PeerConnections are the page's: this side keeps the Janus session
    (and the grant's token) and passes descriptions between Janus and the page."""

    def __init__(self, *, link: PageLink, room_id: str, **kwargs: Any) -> None:
        kwargs["spec"] = MediaSpec(audio=False, video=False)  # the page has the devices
        super().__init__(**kwargs)
        self.link = link
        self.room_id = room_id
        self._handles: dict[Device, int] = {}
        self._pub_handle: int | None = None

    async def publish(self) -> None:
        janus, handle = await self._join_as_publisher()
        self._pub_handle = handle
        offer = await self.link.ask(self.room_id, "publish")
        answer = await self._publish_offer(janus, handle, offer)
        await self.link.send(self.room_id, "published", sdp=answer)

    async def subscribe(self, feed_id: str, device: Device) -> None:
        janus = self._janus
        if janus is None or self._private_id is None:
            raise SfuError("publish first: subscriptions need the publisher's private id")
        if device in self._handles:
            await self.unsubscribe(device)
        handle, reply = await self._join(
            janus, "subscriber", streams=[{"feed": feed_id}], private_id=self._private_id
        )
        self._handles[device] = handle
        if reply.jsep is None or reply.jsep.get("type") != "offer":
            raise SfuError("the SFU did not offer the feed")
        offer = clean_sdp(reply.jsep["sdp"])
        self._check_addresses(offer)
        tracks = {mid: _TRACK_NAMES[TRACK_OF_MID[feed]]
                  for mid, feed in feed_mids(reply.data.get("streams")).items()
                  if feed in TRACK_OF_MID}
        answer = await self.link.ask(self.room_id, "subscribe", device=device_name(device),
                                     sdp=offer, tracks=tracks)
        await janus.message(handle, {"request": "start"}, jsep=e2ee_jsep("answer", answer))

    async def unsubscribe(self, device: Device) -> None:
        handle = self._handles.pop(device, None)
        await self.link.send(self.room_id, "unsubscribe", device=device_name(device))
        if handle is not None and self._janus is not None:
            with contextlib.suppress(SottovoceError):
                await self._janus.detach(handle)

    def subscribed(self) -> tuple[Device, ...]:
        return tuple(self._handles)

    def set_local_media(self, *, audio_muted: bool, camera_on: bool, screen_on: bool) -> None:
        """The page mutes and turns its own tracks off; the call tells the others."""

    def request_keyframes(self) -> None:
        """The page's decoders ask for keyframes themselves (PLI)."""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(SottovoceError):
            await self.link.send(self.room_id, "media_closed")
        if self._janus is not None:
            await self._janus.close()
            self._janus = None


class CallsBridge:
    """The page's room calls, one at a time (see the module docstring)."""

    def __init__(self, notify: Notify, *, loopback: bool = False,
                 relay_only: bool = False) -> None:
        self.link = PageLink(notify, loopback=loopback)
        self.loopback, self.relay_only = loopback, relay_only
        self.hub: RoomCalls | None = None
        self.room: str | None = None
        self.ctl: RoomCallController | None = None
        self.p2p: P2pBridge | None = None
        self._pump: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"CallsBridge(in_call={self.ctl is not None})"

    def attach(self, client: Client) -> None:
        """Before the client connects (so no call started while it syncs is missed)."""
        from sottovoce.app.p2p_bridge import P2pBridge

        options = RoomCallOptions(
            media=MediaSpec(audio=False, video=False),
            ice=IceConfig(loopback=self.loopback),
            sfu_media=self._media,
        )
        self.hub = client.start_room_calls(options)
        self.p2p = P2pBridge(self.link.notify, loopback=self.loopback,
                             relay_only=self.relay_only)
        self.p2p.attach(client)

    def _media(self, **kwargs: Any) -> SfuMedia:
        if self.room is None:
            raise SfuError("no call in the page")
        return BrowserSfuMedia(link=self.link, room_id=self.room, **kwargs)

    # --- requests from the page ------------------------------------------------------

    def ops(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        ops = {"call_join": self._op_join, "call_leave": self._op_leave,
               "call_sdp": self._op_sdp, "call_media": self._op_media,
               "call_recording": self._op_recording, "call_state": self._op_state}
        return {**ops, **(self.p2p.ops() if self.p2p is not None else {})}

    def _hub(self) -> RoomCalls:
        if self.hub is None:
            raise PageCallError("locked: unlock with the passphrase first")
        return self.hub

    async def _op_join(self, req: dict[str, Any]) -> Any:
        """Join the room's call (the one last started there), or start one."""
        hub = self._hub()
        room = req.get("room")
        if not isinstance(room, str) or not 0 < len(room) <= 200:
            raise PageCallError("'room' is missing or not text")
        if self.ctl is not None:
            raise PageCallError("this page is already in a call: leave it first")
        start = req.get("start")
        if not isinstance(start, bool):
            raise PageCallError("say whether to start a call or join the one running")
        if not start and room not in hub.seen:
            raise PageCallError("no call has been started in this room")
        if not start and hub.seen[room].mode is not CallMode.SFU:
            raise PageCallError(NO_SFU)
        self.room = room
        self.link.open()
        try:
            ctl = await hub.start(room) if start else hub.join(room)
        except (SottovoceError, CallError):
            self.room = None
            raise
        if ctl.call.mode is not CallMode.SFU:  # the server could not reach its SFU
            self.ctl = ctl
            await self.leave(tell=False)
            raise PageCallError(NO_SFU)
        self.ctl = ctl
        ctl.crypto.watch(partial(self._keys, room))
        self._pump = asyncio.get_running_loop().create_task(self._events(room, ctl))
        return {"mode": ctl.call.mode.name.lower(), "me": device_name(ctl.call.me)}

    async def _op_leave(self, _: dict[str, Any]) -> Any:
        await self.leave()
        return None

    async def _op_sdp(self, req: dict[str, Any]) -> Any:
        self.link.answer(req.get("ref"), req.get("sdp"), req.get("error"))
        return None

    async def _op_media(self, req: dict[str, Any]) -> Any:
        ctl = self._in_call()
        flags = [req.get(k) for k in ("audioMuted", "cameraOn", "screenOn")]
        if not all(isinstance(f, bool) for f in flags):
            raise PageCallError("media state needs three true/false fields")
        audio, camera, screen = (bool(f) for f in flags)
        ctl.set_media(audio_muted=audio, camera_on=camera, screen_on=screen)
        return None

    async def _op_recording(self, req: dict[str, Any]) -> Any:
        grant = req.get("grant")
        if not isinstance(grant, bool):
            raise PageCallError("answer a recording request with true or false")
        self._in_call().answer_recording(grant)
        return None

    async def _op_state(self, req: dict[str, Any]) -> Any:
        """Whether the page is in a call, and whether ``room`` has seen one started."""
        ctl, room = self.ctl, req.get("room")
        if ctl is None:
            return {"inCall": False, "seen": isinstance(room, str) and room in self._hub().seen}
        return {"inCall": True, "room": self.room, "epoch": ctl.call.epoch,
                "participants": [device_name(d) for d in ctl.participants]}

    def _in_call(self) -> RoomCallController:
        if self.ctl is None:
            raise PageCallError("not in a call")
        return self.ctl

    # --- the call's side -------------------------------------------------------------

    def _keys(self, room: str, change: EpochKeys | Device | None) -> None:
        if isinstance(change, EpochKeys):
            notice = keys_notice(change)
        elif change is None:
            notice = {"kind": "wipe"}
        else:
            notice = {"kind": "revoke", "device": device_name(change)}
        # Keys change synchronously with the call engine; the notices go out in order.
        self.link.post(room, **notice)

    async def _events(self, room: str, ctl: RoomCallController) -> None:
        while True:
            event = await ctl.events.get()
            notice = _event_notice(event)
            if notice is not None:
                with contextlib.suppress(Exception):
                    await self.link.send(room, **notice)
            if isinstance(event, (Left, JoinRefused)):
                await self._drop(ctl)
                return

    async def _drop(self, ctl: RoomCallController) -> None:
        if self.ctl is ctl and self.hub is not None and self.room is not None:
            room, self.ctl, self.room = self.room, None, None
            await self.hub.end(room)

    async def leave(self, *, tell: bool = True) -> None:
        """Leave the call (the page asked, or it went: its worker's counters went with
        it, so its keys must never seal again)."""
        ctl = self.ctl
        if ctl is None:
            return
        # Media work the call still runs (a Janus subscribe, say) must not wait on the
        # page: this request holds its socket, and the page's answer would queue behind
        # it, so the leave would wait out the page's whole timeout before it is sent.
        self.link.close()
        if self._pump is not None:
            self._pump.cancel()
        await self._drop(ctl)
        if tell:
            with contextlib.suppress(Exception):
                await self.link.send(ctl.call.room_id, "left", removed=False)

    async def page_gone(self) -> None:
        """The page's last socket closed: leave the room call, hang up a 1:1 call."""
        await self.leave()
        if self.p2p is not None:
            self.p2p.hang_up()

    async def close(self) -> None:
        await self.page_gone()
        if self.p2p is not None:
            await self.p2p.close()


def _event_notice(event: object) -> dict[str, Any] | None:
    """A controller event as the page shows it."""
    if isinstance(event, ParticipantsChanged):
        return {"kind": "participants", "epoch": event.epoch,
                "participants": [device_name(d) for d in event.participants]}
    if isinstance(event, PeerMediaState):
        return {"kind": "peer_media", "device": device_name(event.device),
                "audioMuted": event.audio_muted, "cameraOn": event.camera_on,
                "screenOn": event.screen_on}
    if isinstance(event, RecordingState):
        return {"kind": "recording", "on": event.on, "by": device_name(event.by)}
    if isinstance(event, RecordingRequested):
        return {"kind": "recording_asked", "by": device_name(event.by)}
    if isinstance(event, RecordingRefused):
        return {"kind": "recording_refused"}
    if isinstance(event, Left):
        return {"kind": "left", "removed": event.removed}
    if isinstance(event, JoinRefused):
        return {"kind": "refused", "error": str(event.error)}
    if isinstance(event, MediaProblem):
        return {"kind": "problem", "where": event.where, "error": _problem_text(event.error)}
    return None


def _problem_text(code: str) -> str:
    if code in ("sfu_unavailable", "SfuUnavailable"):
        return NO_SFU
    return f"the call's media failed ({code})"
