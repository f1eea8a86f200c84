"""`sottovoce chat NAME`: a Textual chat screen that reads only the local store.

    ┌ status: me ⇄ peer · connected ───────────────┐
    │ call: a ring (F5 accept, F6 decline) or the   │  (only while a call
    │ in-call line: codec, bitrate, RTT, loss, E2EE │   rings or runs)
    │ history (scrolls; PageUp at the top loads     │
    │ older messages from the store)                │
    │ 12:01 you → bob: hello ✓                       │
    ├ input ────────────────────────────────────────┤
    └ footer: key bindings ─────────────────────────┘

Events from the client only say *when* to look; every line shown is read
back from the store, so the screen shows exactly what is stored (with what
control messages did to it: client/conversation.py). Showing a peer's message
sends a read receipt (unless they are off); typing sends a typing notice,
and others' show as a notification. A 1:1 chat shares presence while it is open
(client/presence.py): the status line shows the peer's (online, away, last seen),
any key or click counts as activity, and without input the peer sees us away.

`sottovoce chat '#ROOM'` opens a room the same way: history from the store
(conversation = room id), one MLS message per line typed, the members in the
status line. Every string on screen is made by :mod:`sottovoce.cli.render`
(peer text escaped) and shown as a rich ``Text``, never parsed as markup;
notifications are shown with ``markup=False`` for the same reason.

Files: a file message is a placeholder line ending in its id (``/play ID`` plays a
voice note); ``/open ID`` typed in
the input fetches and decrypts it into the viewing area and says where
(cli/chat_files.py).

Calls: F5 calls the peer (or accepts a ringing call), F6 declines or hangs up.
An incoming call from anyone shows a banner while it rings; during a call the
banner is the in-call line (:func:`sottovoce.cli.render.call_stats`), refreshed
every second. The media are the headless defaults (a tone and a test pattern)
unless a device source is configured. In a room, F5 joins the call last started
in the room (or starts one) and F6 leaves it; the banner then shows what the
call's own MLS group says: "E2EE on, epoch N", its participants, and REC while
someone records.

Ephemeral chats (cli/tui_ephemeral.py): an incoming request shows a banner, F7
accepts it (the chat opens in a panel above the history, and the input line goes to it
while it is open; nothing of it is stored), F8 declines it; F9 is the panic key, in
the footer at all times: every ephemeral chat ends, the other side is told, keys wiped.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Static

from sottovoce.calls.effects import CallState, PeerRinging, StateChanged
from sottovoce.cli import chat_files, render
from sottovoce.cli.idle_lock import IdleLock, LockScreen
from sottovoce.cli.tui_ephemeral import EphemeralPanel
from sottovoce.client import (
    Client,
    ConnectionChanged,
    DeliveryStateChanged,
    EphemeralReceived,
    ErrorEvent,
    MessageReceived,
    StoredMessage,
)
from sottovoce.client.calls import CallOptions, SignalFailed
from sottovoce.client.calls.media import MediaProblem
from sottovoce.client.calls.room_controller import RoomCallController, RoomCallOptions
from sottovoce.client.conversation import TYPING_SHOWN_S
from sottovoce.client.events import (
    MessagesExpired,
    MessageUpdated,
    PresenceChanged,
    RoomInvited,
    RoomMembershipChanged,
    RoomMessageReceived,
    TypingStarted,
)
from sottovoce.client.ids import now_ms
from sottovoce.errors import SottovoceError
from sottovoce.identity import SafetyNumber

PAGE = 50
#: How often the in-call line is refreshed (seconds).
CALL_STATS_EVERY_S = 1.0


class SafetyNumberScreen(ModalScreen[None]):
    """The safety number as digits and a QR code; Esc closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("ctrl+s", "close", "Close", show=False),
    ]
    DEFAULT_CSS = """
    SafetyNumberScreen { align: center middle; }
    #sn-box {
        width: 64; height: auto; max-height: 100%;
        border: thick $accent; padding: 0 2; background: $surface;
    }
    #sn-box > Static { width: 100%; height: auto; }
    #sn-digits { text-style: bold; padding: 1 0; }
    """

    def __init__(self, me: str, peer: str, number: SafetyNumber | None) -> None:
        super().__init__()
        self._me, self._peer, self._number = me, peer, number

    def compose(self) -> ComposeResult:
        with Vertical(id="sn-box"):
            yield Static(
                Text(f"Safety number: {render.safe(self._me)} and {render.safe(self._peer)}")
            )
            if self._number is None:
                yield Static(Text("Not known yet: connect once to look the peer up."))
            else:
                yield Static(Text(self._number.grouped()), id="sn-digits")
                yield Static(Text(render.qr_text(self._number)), id="sn-qr")
                yield Static(Text("Both of you must see the same digits. Esc to close."))
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)


class ChatApp(App[int]):
    TITLE = "sottovoce"
    CSS = """
    #status { height: 1; background: $primary; color: $text; padding: 0 1; }
    #call { height: 1; background: $warning; color: $text; padding: 0 1; display: none; }
    #ephemeral { height: auto; background: $error; color: $text; padding: 0 1;
                 display: none; }
    #history { height: 1fr; padding: 0 1; }
    .line { height: auto; }
    #input { dock: bottom; margin-bottom: 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        # First: the panic key must always fit in the footer.
        Binding("f9", "panic", "Panic", priority=True),
        Binding("ctrl+s", "safety", "Safety number"),
        Binding("f5", "call_or_accept", "Call/Accept", priority=True),
        Binding("f6", "decline_or_hang_up", "Decline/Hang up", priority=True),
        Binding("f7", "ephemeral_accept", "Eph. accept", priority=True),
        Binding("f8", "ephemeral_decline", "Eph. decline", priority=True),
        Binding("pageup", "page_up", "Older", priority=True),
        Binding("pagedown", "page_down", "Newer", priority=True),
        Binding("ctrl+q", "leave", "Quit", priority=True),
        # Priority: the input line would otherwise take Ctrl-C as "copy" and swallow it.
        Binding("ctrl+c", "leave", "Quit", priority=True, show=False),
    ]

    def __init__(
        self,
        client: Client,
        peer: str,
        *,
        room_id: str | None = None,
        call_options: CallOptions | None = None,
        lock_after_s: float | None = None,
    ) -> None:
        super().__init__()
        #: ``--lock-after``: locks the screen after that long without input (idle_lock.py).
        self._idle = IdleLock(lock_after_s) if lock_after_s else None
        self._held: list[tuple[str, bool]] = []  # notifications held back while locked
        self.client = client
        self.peer = peer
        self._call_options = call_options
        #: A room chat: ``peer`` is then the room's local name.
        self.room_id = room_id
        self._lines: dict[str, Static] = {}
        self._oldest: int | None = None
        #: None: first attempt still under way; then the last state the client reported.
        self._connected: bool | None = None
        #: Set when the chat cannot go on (e.g. the account was deleted); printed on exit.
        self.problem: str | None = None
        #: The ephemeral chat's request banner and panel (F7, F8, F9).
        self.ephemeral = EphemeralPanel(
            client, lambda: self._chat_screen.query_one("#ephemeral", Static),
            lambda text, error: self._tell(text, error=error))

    # --- layout ---------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield Static(id="call")
        yield Static(id="ephemeral")
        yield VerticalScroll(id="history")
        yield Input(placeholder=f"Message {render.safe(self.peer)} (Enter sends)", id="input")
        yield Footer()

    @property
    def _conversation(self) -> str:
        """Where this screen's messages are stored: the peer's name or the room id."""
        return self.room_id or self.peer

    def _status(self) -> None:
        if self._connected is None:
            state = "connecting…"
        elif self._connected:
            state = "connected"
        else:
            why = self.client.connection_problem
            state = "offline, reconnecting…" + (f" ({render.safe(why)})" if why else "")
        me = f"{self.client.username}/{self.client.device_id}"
        peer = render.safe(self.peer)
        if self.room_id is not None:
            with contextlib.suppress(SottovoceError):
                room = self.client.rooms.get(self.room_id)
                users = sorted({render.safe(u) for u, _ in room.members()})
                where = "removed" if room.removed else f"{len(users)} members: {', '.join(users)}"
                text = f"{me} in #{peer} ({where}) · {state}"
                self._chat_screen.query_one("#status", Static).update(Text(text))
                return
        seen = self.client.contacts.presence(self.peer)
        shown = render.presence(seen.state, seen.last_seen_ms, now_ms())
        peer += f" ({shown})" if shown else ""
        self._chat_screen.query_one("#status", Static).update(Text(f"{me} ⇄ {peer} · {state}"))

    def _format(self, message: StoredMessage) -> str:
        """With replies' quotes, "(edited)", tombstones, reactions, ✓✓ and "read"."""
        return render.view_line(
            self.client.controls.view(message), self.client.username,
            room=self.room_id is not None,
        )

    def _mark_read(self) -> None:
        """What the screen shows was read: one read receipt (unless they are off)."""
        if self.client.connected:
            room = self.room_id is not None
            self.run_worker(self.client.controls.mark_read(self._conversation, room=room),
                            group="receipts")

    def _tell(self, text: str, *, error: bool = False) -> None:
        """A notification; its text may quote a peer, so it is never read as markup."""
        if self._locked:
            self._held.append((text, error))  # shown once unlocked, never over the lock
            return
        self.notify(text, severity="error" if error else "information", markup=False)

    # --- the idle lock -----------------------------------------------------------

    @property
    def _locked(self) -> bool:
        return self._idle is not None and self._idle.locked

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key | events.MouseDown):
            self.client.presence.activity()  # away after a while without input
            if self._idle is not None:
                self._idle.touch()
        await super().on_event(event)

    def _lock_if_idle(self) -> None:
        if self._idle is not None and self._idle.due():
            self._idle.lock()
            self.clear_notifications()
            store = self.client.linking().store  # the passphrase is checked against it
            self.push_screen(LockScreen(store.check_passphrase, self._unlocked))

    def action_command_palette(self) -> None:
        """Textual's command palette (Ctrl-P) is a screen of its own: none while locked
        (the lock screen is all there is; the safety number's is refused likewise)."""
        if not self._locked:
            super().action_command_palette()

    def _unlocked(self) -> None:
        if self._idle is not None:
            self._idle.unlock()
        self.client.conversations.mark_read(self._conversation, self.client.last_local_id())
        held, self._held = self._held, []
        for text, error in held:
            self._tell(text, error=error)

    def _line(self, message: StoredMessage) -> Static:
        widget = Static(Text(self._format(message)), classes="line")
        self._lines[message.message_id] = widget
        return widget

    @property
    def _chat_screen(self) -> Screen[object]:
        """The chat's own screen, also while the lock or the safety number covers it."""
        return self.screen_stack[0]

    async def on_mount(self) -> None:
        self._status()
        history = self.client.history(self._conversation, limit=PAGE)
        if history:
            self._oldest = history[0].local_id
            await self._chat_screen.query_one("#history", VerticalScroll).mount_all(
                [self._line(m) for m in history]
            )
            self.client.conversations.mark_read(self._conversation, history)
        if self._idle is not None:
            self.set_interval(min(5.0, self._idle.after_s / 4), self._lock_if_idle)
        self._chat_screen.query_one("#history", VerticalScroll).scroll_end(animate=False)
        self._chat_screen.query_one("#input", Input).focus()
        self.client.start_calls(self._call_options)  # before connecting: no ring is missed
        if self.room_id is None:
            self.client.presence.start()  # the peer's presence in the status line, ours theirs
        if self.room_id is not None:  # before connecting too: no call start is missed
            opts = self._call_options
            self.client.start_room_calls(
                RoomCallOptions(media=opts.media, ice=opts.ice) if opts is not None else None
            )
        self.run_worker(self._call_pump(), exclusive=True, group="calls")
        self.set_interval(CALL_STATS_EVERY_S, self._call_stats)
        self.run_worker(self._pump(), exclusive=True, group="events")

    async def _pump(self) -> None:
        events = self.client.events()
        try:
            await self.client.connect(wait=False)
            async for event in events:
                await self._on_client_event(event)
        finally:
            events.close()

    async def _on_client_event(self, event: object) -> None:
        mine = (isinstance(event, MessageReceived) and event.message.peer == self.peer) or (
            isinstance(event, RoomMessageReceived) and event.room_id == self.room_id
        )
        if mine and isinstance(event, MessageReceived | RoomMessageReceived):
            await self._append(event.message.message_id)
        elif isinstance(event, MessagesExpired):  # disappearing messages leave the screen too
            for message_id in event.message_ids:
                widget = self._lines.pop(message_id, None)
                if widget is not None:
                    await widget.remove()
        elif isinstance(event, RoomMembershipChanged) and event.room_id == self.room_id:
            self._status()
        elif isinstance(event, DeliveryStateChanged) and event.peer == self._conversation:
            self._refresh(event.message_id)
        elif isinstance(event, MessageUpdated) and event.conversation == self._conversation:
            self._refresh(event.message_id)  # an edit, a delete, a reaction, a receipt
        elif isinstance(event, TypingStarted) and event.conversation == self._conversation:
            self.notify(f"{render.safe(event.sender)} is typing…", markup=False,
                        timeout=TYPING_SHOWN_S)
        elif isinstance(event, PresenceChanged) and event.user == self.peer:
            self._status()
        elif isinstance(event, ConnectionChanged):
            self._connected = event.connected
            self._status()
            self._mark_read()
        elif isinstance(event, EphemeralReceived) and event.peer == self.peer:
            self._tell(f"(ephemeral) {render.safe(event.sender)}: {render.safe(event.text)}")
        elif self.ephemeral.on_event(event):
            pass  # a request, an ephemeral chat's line or its end: the panel shows it
        elif isinstance(event, RoomInvited):
            self._tell(render.invitation(event))
        elif isinstance(event, ErrorEvent):
            self._tell(render.error_event(event), error=True)
            if event.code == "account_deleted":
                self.problem = "this account was deleted (from another of its devices)"
                self.exit(1)

    # --- calls ----------------------------------------------------------------

    def _call_bar(self, text: str | None) -> None:
        bar = self._chat_screen.query_one("#call", Static)
        bar.display = text is not None
        bar.update(Text(text or ""))

    async def _call_pump(self) -> None:
        calls = self.client.calls
        while True:
            event = await calls.events.get()
            if isinstance(event, StateChanged):
                self._call_changed(event)
            elif isinstance(event, PeerRinging) and calls.state is CallState.OUTGOING_RINGING:
                self._call_bar(f"☎ ringing {render.safe(self._call_peer())}… · F6 hang up")
            elif isinstance(event, SignalFailed):
                if event.code == "recipient_offline" and calls.state is CallState.OUTGOING_RINGING:
                    self._tell(f"no device of {render.safe(self._call_peer())} is online")
                    calls.hangup()
            elif isinstance(event, MediaProblem):
                self._tell(f"call: {render.safe(event.error)}", error=True)

    def _call_peer(self) -> str:
        call = self.client.calls.call
        return call.peer if call is not None else self.peer

    def _call_changed(self, change: StateChanged) -> None:
        line = render.call_state(change)
        if change.state is CallState.INCOMING_RINGING:
            self._call_bar(f"☎ {line} · F5 accept · F6 decline")
        elif change.state is not CallState.ENDED:
            self._call_bar(f"☎ {line} · F6 hang up")
        else:
            self._call_bar(None)
            self._tell(f"call: {line}")

    async def _call_stats(self) -> None:
        calls = self.client.calls
        if calls.state is not CallState.ACTIVE:
            return
        stats = await calls.stats()
        if stats is None or calls.state is not CallState.ACTIVE:
            return
        self._call_bar(f"☎ {render.call_stats(self._call_peer(), stats)} · F6 hang up")

    async def action_call_or_accept(self) -> None:
        if self._locked:
            return
        calls = self.client.calls
        try:
            if calls.state is CallState.INCOMING_RINGING:
                self.client.answer_call()
            elif self.room_id is not None:
                await self._enter_room_call(self.room_id)
            elif calls.state in (CallState.IDLE, CallState.ENDED):
                await self.client.place_call(self.peer)
        except SottovoceError as exc:
            self._tell(render.safe(str(exc)), error=True)

    async def action_decline_or_hang_up(self) -> None:
        if self._locked:
            return
        if self.room_id is not None and self.room_id in self.client.room_calls.active:
            await self.client.room_calls.end(self.room_id)
            self._call_bar(None)
            self._tell("left the room's call")
            return
        calls = self.client.calls
        with contextlib.suppress(SottovoceError):
            if calls.state is CallState.INCOMING_RINGING:
                calls.decline()
            elif calls.state in (
                CallState.OUTGOING_RINGING, CallState.CONNECTING, CallState.ACTIVE
            ):
                calls.hangup()

    # --- room calls -------------------------------------------------------------

    async def _enter_room_call(self, room_id: str) -> None:
        hub = self.client.room_calls
        if room_id in hub.active:
            self._tell("already in this room's call (F6 leaves)")
            return
        ctl = hub.join(room_id) if room_id in hub.seen else await hub.start(room_id)
        self._call_bar("☎ room call: joining… · F6 leave")
        self.run_worker(self._room_call_pump(ctl), exclusive=True, group="room-call")

    async def _room_call_pump(self, ctl: RoomCallController) -> None:
        from sottovoce.calls.room_effects import JoinRefused, Left, RecordingState

        recording = ""
        while True:
            event = await ctl.events.get()
            if isinstance(event, JoinRefused):
                self._tell(f"room call: {render.safe(str(event.error))}", error=True)
                await self.client.room_calls.end(ctl.call.room_id)
                self._call_bar(None)
                return
            if isinstance(event, Left):
                self._call_bar(None)
                return
            if isinstance(event, RecordingState):
                by = render.safe(event.by[0])
                mark = "" if event.consented else ", not consented"
                recording = f" · REC ({by}{mark})" if event.on else ""
            elif isinstance(event, MediaProblem):
                self._tell(f"room call: {render.safe(event.error)}", error=True)
            people = ctl.participants  # the call's MLS group, never the SFU's list
            if ctl.call.epoch is not None and ctl.call.me in people:
                names = ", ".join(render.participant(d, with_device=False) for d in people)
                self._call_bar(
                    f"☎ room call · E2EE on, epoch {ctl.call.epoch} · {len(people)} in call: "
                    f"{names}{recording} · F6 leave"
                )

    async def _append(self, message_id: str) -> None:
        stored = self.client.message(message_id)  # the screen shows the store, nothing else
        if stored is None or message_id in self._lines:
            return
        log = self._chat_screen.query_one("#history", VerticalScroll)
        at_bottom = log.scroll_y >= log.max_scroll_y - 1
        await log.mount(self._line(stored))
        if not self._locked:  # shown: read (what arrives while locked is read on unlock)
            self.client.conversations.mark_read(self._conversation, stored.local_id)
        if self._oldest is None:
            self._oldest = stored.local_id
        if at_bottom or stored.outgoing:
            log.scroll_end(animate=False)
        if not stored.outgoing:
            self._mark_read()

    def _refresh(self, message_id: str) -> None:
        stored = self.client.message(message_id)
        widget = self._lines.get(message_id)
        if stored is not None and widget is not None:
            widget.update(Text(self._format(stored)))

    # --- actions --------------------------------------------------------------

    async def on_input_changed(self, event: Input.Changed) -> None:
        """Typing: a typing notice (at most one per 3 s; never stored by the server)."""
        if event.value and self.client.connected:
            room = self.room_id is not None
            self.run_worker(self.client.controls.typing(self._conversation, room=room),
                            group="typing")

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        event.input.value = ""
        if self.ephemeral.is_open:  # the ephemeral chat has the input while it is open
            await self.ephemeral.send(text)
            return
        if chat_files.is_open_command(text):  # /open ID: a file, into the viewing area
            said, failed = await chat_files.open_file(self.client, self._conversation, text)
            self._tell(said, error=failed)
            return
        if chat_files.is_play_command(text):  # /play ID: a voice note, without blocking
            self.run_worker(self._play(text), group="play")
            return
        try:
            if self.room_id is not None:
                message_id = await self.client.rooms.send(self.room_id, text)
            else:
                message_id = await self.client.send_text(self.peer, text)
        except SottovoceError as exc:
            self._tell(render.safe(str(exc)), error=True)
            return
        await self._append(message_id)

    async def _play(self, text: str) -> None:
        said, failed = await chat_files.play_voice(self.client, self._conversation, text)
        self._tell(said, error=failed)

    def _page(self, log: VerticalScroll) -> int:
        return max(1, log.scrollable_content_region.height - 1)

    async def action_page_up(self) -> None:
        if self._locked:
            return
        log = self._chat_screen.query_one("#history", VerticalScroll)
        top = log.scroll_target_y
        if top <= 0 and self._oldest is not None:
            older = self.client.history(self._conversation, limit=PAGE, before=self._oldest)
            if older:
                self._oldest = older[0].local_id
                widgets = [self._line(m) for m in older]
                children = list(log.children)
                if children:
                    await log.mount_all(widgets, before=children[0])
                else:
                    await log.mount_all(widgets)
                top = len(widgets)  # keep the line that was on top in place, then page
                log.refresh(layout=True)
                await asyncio.sleep(0)
        # From the scroll *target*, so key repeats add up instead of landing on one spot.
        log.scroll_to(y=max(0, top - self._page(log)), animate=False, immediate=True)

    def action_page_down(self) -> None:
        if self._locked:
            return
        log = self._chat_screen.query_one("#history", VerticalScroll)
        target = min(log.max_scroll_y, log.scroll_target_y + self._page(log))
        log.scroll_to(y=target, animate=False, immediate=True)

    async def action_safety(self) -> None:
        if self._locked:
            return
        if self.room_id is not None:
            self._tell("rooms have no single safety number: verify members one by one")
            return
        number = self.client.known_safety_number(self.peer)
        if number is None and self.client.connected:
            try:
                number = await self.client.safety_number(self.peer)
            except SottovoceError as exc:
                self._tell(render.safe(str(exc)), error=True)
        await self.push_screen(SafetyNumberScreen(self.client.username, self.peer, number))

    # --- ephemeral chats ------------------------------------------------------------

    async def action_ephemeral_accept(self) -> None:
        if not self._locked:
            self.run_worker(self.ephemeral.accept(), group="ephemeral")

    def action_ephemeral_decline(self) -> None:
        if not self._locked:
            self.ephemeral.decline()

    def action_panic(self) -> None:
        """Works while locked too: a panic key must never wait for a passphrase."""
        self.ephemeral.panic()

    def action_leave(self) -> None:
        self.exit(0)

    async def on_unmount(self) -> None:
        await self.client.close()  # stores what already arrived; releases the account lock


def run_chat(
    client: Client,
    peer: str,
    *,
    room_id: str | None = None,
    call_options: CallOptions | None = None,
    lock_after_s: float | None = None,
) -> tuple[int, str | None]:
    """Chat with the user ``peer``, or in the room ``room_id`` (then ``peer`` is its name).

    Returns the exit code, and a problem to report when the chat had to end.
    """
    app = ChatApp(client, peer, room_id=room_id, call_options=call_options,
                  lock_after_s=lock_after_s)
    code = app.run()
    return (code if isinstance(code, int) else 0), app.problem
