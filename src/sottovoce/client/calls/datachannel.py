"""The WebRTC data channel of an ephemeral chat (client/ephemeral.py): P2P where ICE
finds a path, through TURN when it must (``relay_only``: through TURN always).

    opened chat ─► initiator: offer ──SIGNAL (inside the chat's Noise keys)──► responder
                  ◄── answer ──SIGNAL──
                  ICE + DTLS (the fingerprints came inside the chat: authenticated)
                  channel open ─► chat.pipe: frames go here, not through the server

Frames on the channel are the same Noise-encrypted frames as on the relay: the
channel adds a path, not trust. Until it opens (or if it never does) the frames
keep going through the server's ephemeral path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from sottovoce.client.calls.media import IceConfig, check_description, set_local
from sottovoce.client.ephemeral import Chat, EphemeralChats, PipeMaker
from sottovoce.errors import RemoteError

#: How long the offer/answer and ICE may take before the chat stays on the relay.
SETUP_TIMEOUT_S = 15.0
_OFFER, _ANSWER = b"O", b"A"
_LABEL = "sottovoce-ephemeral"


class DataPipe:
    """One chat's peer connection and its single, ordered data channel."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.channel: RTCDataChannel | None = None
        self.ready = asyncio.Event()
        self.gone = asyncio.Event()

    def __repr__(self) -> str:
        return f"DataPipe(open={self.is_open})"

    @property
    def is_open(self) -> bool:
        return self.channel is not None and self.channel.readyState == "open"

    def send(self, data: bytes) -> bool:
        if not self.is_open or self.channel is None:
            return False
        self.channel.send(data)
        return True

    def path(self) -> str:
        """``host``, ``srflx`` or ``relay``: the kind of our candidate in use."""
        sctp = self.pc.sctp
        if sctp is None:
            return ""
        connection = sctp.transport.transport._connection  # aioice, as hooks.py reads it
        pair = getattr(connection, "_nominated", {}).get(1)
        return "" if pair is None else str(pair.local_candidate.type)

    async def close(self) -> None:
        self.gone.set()
        await self.pc.close()

    def attach(self, channel: RTCDataChannel, on_frame: Callable[[bytes], None]) -> None:
        self.channel = channel

        @channel.on("open")
        def _open() -> None:
            self.ready.set()

        @channel.on("message")
        def _message(data: bytes | str) -> None:
            if isinstance(data, bytes):
                on_frame(data)

        @channel.on("close")
        def _close() -> None:
            self.gone.set()

        if channel.readyState == "open":
            self.ready.set()


def pipe_maker(
    chats: EphemeralChats, ice: Callable[[], Awaitable[IceConfig]]
) -> PipeMaker:
    """What ``chats.pipe_maker`` runs for every opened chat; ``ice`` gives the
    configuration (fresh TURN credentials, relay-only, loopback)."""

    async def make(chat: Chat, signal: Callable[[bytes], Awaitable[None]]) -> None:
        config = await ice()
        pc = RTCPeerConnection(configuration=config.rtc_configuration())
        pipe = DataPipe(pc)
        on_frame = lambda data: chats.on_pipe_frame(chat, data)  # noqa: E731
        try:
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                if chat.session.initiator:
                    pipe.attach(pc.createDataChannel(_LABEL, ordered=True), on_frame)
                    offer = await pc.createOffer()
                    sdp = await set_local(pc, offer.sdp, "offer", loopback=config.loopback)
                    check_description(sdp, loopback=config.loopback)
                    await signal(_OFFER + sdp.encode("utf-8"))
                    theirs = await _remote(chat, _ANSWER, config)
                    await pc.setRemoteDescription(RTCSessionDescription(theirs, "answer"))
                else:
                    @pc.on("datachannel")
                    def _channel(channel: RTCDataChannel) -> None:
                        pipe.attach(channel, on_frame)

                    offer_sdp = await _remote(chat, _OFFER, config)
                    await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
                    answer = await pc.createAnswer()
                    sdp = await set_local(pc, answer.sdp, "answer", loopback=config.loopback)
                    check_description(sdp, loopback=config.loopback)
                    await signal(_ANSWER + sdp.encode("utf-8"))
                await pipe.ready.wait()
        except BaseException:
            await pc.close()
            raise
        if chat.ended.is_set():
            await pc.close()
            return
        chat.pipe = pipe

    return make


async def _remote(chat: Chat, kind: bytes, config: IceConfig) -> str:
    """The peer's offer or answer, checked like every description we accept."""
    content = await chat.signals.get()
    if not content.startswith(kind):
        raise RemoteError("unexpected data-channel signal")
    try:
        sdp = content[1:].decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteError("data-channel description is not UTF-8") from None
    check_description(sdp, loopback=config.loopback)
    return sdp
