"""One ephemeral chat as the application sees it (client/ephemeral.py runs them; its
keys stay inside the ``ChatSession``, pairwise/ephemeral.py)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from sottovoce.client.ephemeral_media import MEDIA_RING_SIZE, Assembler, Media
from sottovoce.limits import EPHEMERAL_RING_SIZE
from sottovoce.pairwise.ephemeral import ChatSession


class Pipe(Protocol):
    """A direct path to the peer (the WebRTC data channel) carrying frames as they are."""

    @property
    def is_open(self) -> bool: ...

    def send(self, data: bytes) -> bool: ...

    async def close(self) -> None: ...


@dataclass(eq=False)
class Chat:
    """One chat as the application sees it (its keys stay inside ``session``)."""

    session: ChatSession
    ring: deque[tuple[str, bytearray]] = field(
        default_factory=lambda: deque(maxlen=EPHEMERAL_RING_SIZE)
    )
    pipe: Pipe | None = None
    #: Inbound SIGNAL contents (SDP) for the data channel; the pipe maker reads them.
    signals: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    frames_via_pipe: int = 0
    #: Both sides asked at once and this request gave way: the chat that goes on.
    replaced_by: Chat | None = None
    #: The event loop's time when the peer was last heard from (any DATA frame).
    last_heard: float = 0.0
    frames_via_relay: int = 0
    #: Photos and clips received, whole (memory only), and the ones still arriving.
    media: deque[Media] = field(default_factory=lambda: deque(maxlen=MEDIA_RING_SIZE))
    assembler: Assembler = field(default_factory=Assembler)

    @property
    def chat_id(self) -> str:
        return self.session.chat_id.hex()

    @property
    def peer(self) -> str:
        return self.session.peer[0]

    def __repr__(self) -> str:
        return f"Chat({self.peer}, {self.session.state.value})"

    def messages(self) -> list[tuple[str, str]]:
        """(sender, text) of what is still in the ring, oldest first."""
        return [(s, bytes(t).decode("utf-8")) for s, t in self.ring]
