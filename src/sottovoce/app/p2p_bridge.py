"""1:1 calls in the browser: the SDK's call engine, the page's RTCPeerConnection.

::

    SDK (this process)                                    page (p2p.js)
    ─────────────────────────────────────────             ───────────────────────────
    CallController + CallMachine: ringing,   ─ "offer"/"answer" (TURN servers) ─►
      E2EE signals to the peer's devices,    ◄──────────── p2p_sdp (its SDP) ────
      the DTLS fingerprints bound to them    ─ "apply", "candidates" ───────────►
    BrowserMediaSession (one per call)       ◄─ p2p_media (connected / failed) ───
    controller events ── "state" notices ─────────────────────────────────────────►

The signalling is the SDK's own (docs/calls.md): the page's descriptions travel in
the E2EE call signals like the CLI's, so the other end may be the CLI, the TUI,
the SDK or another browser. Media are DTLS-SRTP between the two devices, bound to
the fingerprints the signals carry: every remote description is checked against
them here before the page sees it. TURN credentials come from the server for each
new connection; with ``--loopback`` every candidate but 127.0.0.1 is dropped both
ways; with ``--relay-only`` the page's connection has the ICE policy "relay" and a
description of the page's with any other candidate is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sottovoce.app.page_link import Notify, PageCallError, PageLink, page_sdp
from sottovoce.calls import sdp as sdp_text
from sottovoce.calls.effects import PeerMediaState, StateChanged
from sottovoce.calls.signals import Fingerprint
from sottovoce.client import Client
from sottovoce.client.calls.controller import CallController, CallOptions, SignalFailed
from sottovoce.client.calls.errors import CandidateLeak, MediaError, TurnError
from sottovoce.client.calls.media import (
    ROLES,
    IceConfig,
    MediaDown,
    MediaEvent,
    MediaProblem,
    MediaSession,
    MediaUp,
    Sink,
)
from sottovoce.client.calls.sources import MediaSpec
from sottovoce.errors import SottovoceError, UsageError

log = logging.getLogger("sottovoce.app")

_REASONS = {
    "hung_up": "you hung up", "peer_hung_up": "{peer} hung up",
    "cancelled": "you cancelled it", "declined": "you declined it",
    "peer_declined": "{peer} declined", "no_answer": "no answer",
}


class BrowserMediaSession(MediaSession):
    """A call's media in the page: the connection of each generation is the page's."""

    def __init__(
        self, *, link: PageLink, bridge: P2pBridge, spec: MediaSpec, ice: IceConfig,
        on_event: Callable[[MediaEvent], None], record_to: object = None,
    ) -> None:
        # No aiortc here: no sources, no certificate (the page's connection has its own).
        self.spec, self.ice, self._on_event = spec, ice, on_event
        self.link, self.bridge = link, bridge
        self._closed = False
        self.sinks = {role: Sink() for role in ROLES}
        self.camera_on, self.screen_on = spec.video, False
        self.turn_error = None
        self.peer_candidate_types: set[str] = set()
        self._live_generations: set[int] = set()
        bridge.session = self

    def _ice(self) -> dict[str, Any]:
        return {"iceServers": [{"urls": t.url, "username": t.username,
                                "credential": t.credential.expose().decode("ascii")}
                               for t in self.ice.turn],
                "relayOnly": self.ice.relay_only}

    def _need_relay(self) -> None:
        if self.ice.relay_only and not self.ice.turn:
            raise TurnError("relay-only calls need a TURN server, and the server hands "
                            "out none")

    def _relay_checked(self, sdp: str) -> str:
        """--relay-only: the page's description holds relay candidates only (the
        browser's "relay" policy gathers no other; this does not take its word)."""
        if self.ice.relay_only:
            found = sdp_text.candidates(sdp)
            if any(c.type != "relay" for c in found):
                raise CandidateLeak("a relay-only call gathered a host or reflexive candidate")
            if not found:
                raise TurnError("no relay candidate could be gathered from the TURN server")
        return sdp

    def _check(self, remote_sdp: str, expected: tuple[Fingerprint, ...]) -> str:
        sdp_text.check_fingerprints(remote_sdp, expected)  # the engine did; we do not trust it
        if self.ice.loopback:
            return page_sdp(remote_sdp, loopback=True)
        return remote_sdp

    async def create_offer(self, generation: int) -> str:
        if self._closed:
            raise MediaError("the call's media is closed")
        self._live_generations.add(generation)
        self._need_relay()
        return self._relay_checked(await self.link.ask(
            self.bridge.peer, "offer", generation=generation, video=self.camera_on,
            **self._ice()))

    async def create_answer(
        self, generation: int, remote_sdp: str, expected: tuple[Fingerprint, ...]
    ) -> str:
        if self._closed:
            raise MediaError("the call's media is closed")
        offer = self._check(remote_sdp, expected)
        self._live_generations.add(generation)
        self._need_relay()
        return self._relay_checked(await self.link.ask(
            self.bridge.peer, "answer", generation=generation, sdp=offer,
            video=self.camera_on, **self._ice()))

    async def apply_answer(
        self, generation: int, remote_sdp: str, expected: tuple[Fingerprint, ...]
    ) -> None:
        if generation in self._live_generations:
            await self.link.send(self.bridge.peer, "apply", generation=generation,
                                 sdp=self._check(remote_sdp, expected))

    async def add_candidates(
        self, generation: int, candidates: tuple[tuple[str, str], ...], complete: bool
    ) -> None:
        if generation not in self._live_generations:
            return
        kept = []
        for mid, line in candidates:
            found = sdp_text.candidates(f"a={line}\r\n")
            if self.ice.loopback and any(c.address != "127.0.0.1" for c in found):
                continue
            self.peer_candidate_types.update(c.type for c in found)
            kept.append([mid, line])
        await self.link.send(self.bridge.peer, "candidates", generation=generation,
                             candidates=kept, complete=complete)

    def set_local_media(self, *, audio_muted: bool, camera_on: bool, screen_on: bool) -> None:
        """The page mutes and turns its own tracks off (it asked for this)."""
        self.camera_on, self.screen_on = camera_on, screen_on

    def page_state(self, generation: int, state: str) -> None:
        if generation not in self._live_generations:
            return
        if state == "connected":
            self._on_event(MediaUp(generation=generation))
        elif state in ("failed", "closed"):
            error = MediaError("the connection failed") if state == "failed" else None
            self._live_generations.discard(generation)
            self._on_event(MediaDown(generation=generation, error=error))

    async def stats(self) -> None:  # type: ignore[override]
        return None  # the page has its own (getStats)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._live_generations.clear()
        with contextlib.suppress(Exception):
            await self.link.send(self.bridge.peer, "closed")


class P2pBridge:
    """The page's 1:1 calls (see the module docstring)."""

    def __init__(self, notify: Notify, *, loopback: bool, relay_only: bool = False) -> None:
        self.link = PageLink(notify, loopback=loopback, event="p2p", scope="peer")
        self.loopback, self.relay_only = loopback, relay_only
        self.client: Client | None = None
        self.calls: CallController | None = None
        self.session: BrowserMediaSession | None = None
        self.peer = ""
        self._pump: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"P2pBridge(in_call={self.session is not None})"

    def attach(self, client: Client) -> None:
        options = CallOptions(ice=IceConfig(loopback=self.loopback, relay_only=self.relay_only),
                              media_session=self._session)
        self.client = client
        self.calls = client.start_calls(options)
        self._pump = asyncio.get_running_loop().create_task(self._events(self.calls))

    def _session(self, **kwargs: Any) -> MediaSession:
        return BrowserMediaSession(link=self.link, bridge=self, **kwargs)

    def ops(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        return {"p2p_call": self._op_call, "p2p_answer": self._op_answer,
                "p2p_decline": self._op_decline, "p2p_hangup": self._op_hangup,
                "p2p_sdp": self._op_sdp, "p2p_media": self._op_media,
                "p2p_set": self._op_set}

    def _calls(self) -> tuple[Client, CallController]:
        if self.client is None or self.calls is None:
            raise PageCallError("locked: unlock with the passphrase first")
        return self.client, self.calls

    async def _op_call(self, req: dict[str, Any]) -> Any:
        client, _ = self._calls()
        user, video = req.get("user"), req.get("video", True)
        if not isinstance(user, str) or not 0 < len(user) <= 100 or not isinstance(video, bool):
            raise PageCallError("call whom, with or without video?")
        self.peer = user
        await client.place_call(user, video=video)
        return None

    async def _op_answer(self, _: dict[str, Any]) -> Any:
        client, _calls = self._calls()
        client.answer_call()
        return None

    async def _op_decline(self, _: dict[str, Any]) -> Any:
        self._calls()[1].decline()
        return None

    async def _op_hangup(self, _: dict[str, Any]) -> Any:
        self._calls()[1].hangup()
        return None

    async def _op_sdp(self, req: dict[str, Any]) -> Any:
        self.link.answer(req.get("ref"), req.get("sdp"), req.get("error"))
        return None

    async def _op_media(self, req: dict[str, Any]) -> Any:
        generation, state = req.get("generation"), req.get("state")
        if not isinstance(generation, int) or not isinstance(state, str):
            raise PageCallError("a connection state needs its generation")
        if self.session is not None:
            self.session.page_state(generation, state)
        return None

    async def _op_set(self, req: dict[str, Any]) -> Any:
        flags = [req.get(k) for k in ("audioMuted", "cameraOn", "screenOn")]
        if not all(isinstance(f, bool) for f in flags):
            raise PageCallError("media state needs three true/false fields")
        audio, camera, screen = (bool(f) for f in flags)
        try:
            self._calls()[1].set_media(audio_muted=audio, camera_on=camera, screen_on=screen)
        except UsageError as exc:
            raise PageCallError(str(exc)) from None
        return None

    async def _events(self, calls: CallController) -> None:
        while True:
            event = await calls.events.get()
            notice: dict[str, Any] | None = None
            if isinstance(event, StateChanged):
                self.peer = event.peer
                reason = event.reason.value if event.reason is not None else None
                notice = {"kind": "state", "state": event.state.value, "role": event.role.value,
                          "video": event.video,
                          "reason": _REASONS.get(reason or "", reason or "").format(
                              peer=event.peer)}
                if event.state.value == "ended":
                    self.session = None
                    self.link.cancel_all()
            elif isinstance(event, PeerMediaState):
                notice = {"kind": "peer_media", "audioMuted": event.audio_muted,
                          "cameraOn": event.camera_on, "screenOn": event.screen_on}
            elif isinstance(event, MediaProblem):
                notice = {"kind": "problem", "error": event.error}
            elif isinstance(event, SignalFailed):
                notice = {"kind": "problem", "error": "the call could not reach "
                          + ("the server" if event.code == "not_connected" else "the other side")}
            if notice is not None and self.peer:
                with contextlib.suppress(SottovoceError):
                    await self.link.send(self.peer, **notice)

    def hang_up(self) -> None:
        """End the call there is (the page that ran its media went)."""
        if self.calls is not None and self.calls.state.value in (
                "outgoing_ringing", "connecting", "active"):
            with contextlib.suppress(SottovoceError):
                self.calls.hangup()

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
