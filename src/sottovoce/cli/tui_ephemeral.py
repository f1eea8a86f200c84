"""The chat screen's ephemeral-chat panel (cli/tui.py; docs/protocol.md §Ephemeral chats).

    ⚡ bob asks for an ephemeral chat · F7 accept · F8 decline      (a request waits)
    ⚡ ephemeral chat with bob · nothing stored · F9 panic           (it is open: the
       bob: hi                                                      input line goes
       you: hello                                                   to it, not to
                                                                    the stored chat)

F9 (always in the footer) is the panic key: every ephemeral chat of this device ends at
once, the other sides are told, keys and messages are wiped. The panel's lines come
from the chat's RAM ring only, never from the store, and are gone when it ends.
A group chat's invitation is only told (it is joined with `room chat ROOM --ephemeral`).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.widgets import Static

from sottovoce.cli import render
from sottovoce.client import Client
from sottovoce.client.ephemeral import Chat
from sottovoce.client.events import (
    EphemeralChatEnded,
    EphemeralChatMessage,
    EphemeralChatOpened,
    EphemeralChatRequested,
    EphemeralGroupInvited,
    EphemeralMediaReceived,
)
from sottovoce.errors import SottovoceError
from sottovoce.pairwise.ephemeral import State

#: Lines of the open chat the panel shows (the newest).
SHOWN = 6
#: How long accepting waits for the handshake.
ACCEPT_TIMEOUT_S = 30.0


class EphemeralPanel:
    """The request banner and the open ephemeral chat of one chat screen."""

    def __init__(self, client: Client, widget: Callable[[], Static],
                 tell: Callable[[str, bool], None]) -> None:
        self._client, self._widget, self._tell = client, widget, tell
        #: The request shown (its chat id and who asks), if one waits.
        self.request: tuple[str, str] | None = None
        self.chat: Chat | None = None

    def __repr__(self) -> str:
        return f"EphemeralPanel(open={self.is_open})"

    @property
    def is_open(self) -> bool:
        return self.chat is not None and self.chat.session.state is State.OPEN

    # --- events ---------------------------------------------------------------------

    def on_event(self, event: object) -> bool:
        """Handles the ephemeral-chat events; ``True`` if ``event`` was one."""
        if isinstance(event, EphemeralChatRequested):
            if self.chat is None:
                self.request = (event.chat_id, event.peer)
                self._tell(f"{render.safe(event.peer)} asks for an ephemeral chat: "
                           "F7 accepts, F8 declines", False)
            self.show()
        elif isinstance(event, EphemeralGroupInvited):
            label = render.safe(self._room_label(event.room_id))
            self._tell(f"{render.safe(event.peer)} asks you into an ephemeral chat of "
                       f"#{label}: room chat {label} --ephemeral joins it", False)
        elif isinstance(event, EphemeralChatOpened | EphemeralChatMessage |
                        EphemeralMediaReceived):
            if isinstance(event, EphemeralMediaReceived) and self._mine(event.chat_id):
                self._tell(f"(ephemeral) {render.safe(event.sender)} sent "
                           f"{render.safe(event.about)}: held in memory only", False)
            self.show()
        elif isinstance(event, EphemeralChatEnded):
            if self.request is not None and self.request[0] == event.chat_id:
                self.request = None
            if self._mine(event.chat_id):
                self.chat = None
                self._tell(f"ephemeral chat ended: {render.safe(event.reason)}; nothing of "
                           "it is kept", False)
            self.show()
        else:
            return False
        return True

    def _mine(self, chat_id: str) -> bool:
        return self.chat is not None and self.chat.chat_id == chat_id

    def _room_label(self, room_id: str) -> str:
        try:
            return self._client.rooms.get(room_id).label
        except SottovoceError:
            return room_id

    # --- keys -------------------------------------------------------------------------

    async def accept(self) -> None:
        """F7: answer the waiting request; the chat opens in the panel."""
        if self.request is None:
            self._tell("no ephemeral chat request is waiting", False)
            return
        _, peer = self.request
        self.request = None
        self._widget().update(Text(f"⚡ joining the ephemeral chat with {render.safe(peer)}…"))
        try:
            self.chat = await self._client.ephemeral.open(peer, timeout=ACCEPT_TIMEOUT_S)
        except (TimeoutError, SottovoceError) as exc:
            self._tell(render.safe(str(exc)), True)
        self.show()

    def decline(self) -> None:
        """F8: drop the waiting request (the asker's request then goes unanswered)."""
        if self.request is None:
            self._tell("no ephemeral chat request is waiting", False)
            return
        chat_id, peer = self.request
        self.request = None
        for chat in self._client.ephemeral.requests():
            if chat.chat_id == chat_id:
                self._client.ephemeral.end(chat, "declined")
        self._tell(f"declined {render.safe(peer)}'s ephemeral chat", False)
        self.show()

    def panic(self) -> None:
        """F9: every ephemeral chat ends now, the others are told, everything wiped."""
        had = bool(self._client.ephemeral.chats())
        self._client.ephemeral.panic()
        self.chat, self.request = None, None
        self.show()
        self._tell("panic: every ephemeral chat ended and its keys wiped" if had
                   else "panic: no ephemeral chat was open", False)

    async def send(self, text: str) -> None:
        if self.chat is None:
            return
        try:
            await self._client.ephemeral.send(self.chat, text)
        except SottovoceError as exc:
            self._tell(f"not sent: {render.safe(str(exc))}", True)
        self.show()

    # --- drawing ----------------------------------------------------------------------

    def show(self) -> None:
        widget = self._widget()
        if self.is_open and self.chat is not None:
            lines = [f"⚡ ephemeral chat with {render.safe(self.chat.peer)} · nothing stored · "
                     "typing goes here · F9 panic"]
            me = self._client.username
            for sender, text in self.chat.messages()[-SHOWN:]:
                who = "you" if sender == me else render.safe(sender)
                lines.append(f"   {who}: {render.safe(text)}")
            widget.update(Text("\n".join(lines)))
            widget.display = True
        elif self.request is not None:
            widget.update(Text(f"⚡ {render.safe(self.request[1])} asks for an ephemeral chat "
                               "· F7 accept · F8 decline"))
            widget.display = True
        else:
            widget.update(Text(""))
            widget.display = False
