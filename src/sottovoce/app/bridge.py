"""The page's requests as SDK calls, and the SDK's events as notices to the page.

The page speaks JSON over its WebSocket: ``{"id": N, "op": NAME, ...}`` is answered
by ``{"id": N, "ok": true, "result": ...}`` or ``{"id": N, "ok": false, "error":
TEXT}``, where TEXT is the SDK's plain message (never a traceback). Notices carry
``"event"`` instead of ``"id"``. A file is sent as ``upload`` (name, size), then its
bytes as binary frames, then ``upload_end``; progress comes back as notices.

Every field the page sends is checked here before it reaches the SDK, as for any
network input: the page is the user's, but a bug or an injected script must not
get further than a plain error.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sottovoce.app import views
from sottovoce.app.calls_bridge import CallsBridge
from sottovoce.app.page_input import PageError, flag_field, text_field
from sottovoce.app.page_link import PageCallError
from sottovoce.client import Client, ConnectionChanged, WrongPassphrase
from sottovoce.client.expiry import parse_timer
from sottovoce.client.file_body import valid_name
from sottovoce.errors import DecodeError, SottovoceError, UsageError
from sottovoce.limits import MAX_FILE_SIZE
from sottovoce.private_files import private_dir

log = logging.getLogger("sottovoce.app")

#: One binary frame of an upload (the page sends files in pieces of this size).
UPLOAD_PIECE = 256 * 1024
#: The largest JSON request the page sends (a message text is far smaller).
MAX_REQUEST = 256 * 1024
_HISTORY = 200
_WRONG_PASSPHRASE_PAUSE_S = 1.0
#: What the page's first request (the account views) and the unlock (the calls' wiring,
#: attached before connecting) import on first use: imported when the app starts
#: (:meth:`Bridge.prewarm`), not while the page waits for its list.
PREWARM = ("sottovoce.app.bridge_views", "sottovoce.app.p2p_bridge",
           "sottovoce.client.calls.wiring")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass
class _Upload:
    path: Path
    size: int
    peer: str
    room: bool
    written: int = 0
    handle: Any = None


@dataclass
class Bridge:
    """One account, locked until the page unlocks it; shared by the page's sockets."""

    data_dir: Path
    opener: Callable[[Path, str], Client] = Client.load
    client: Client | None = None
    _unlock_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _sockets: set[ServerConnection] = field(default_factory=set)
    _pump: asyncio.Task[None] | None = None
    _views: Any = None  # bridge_views.AccountViews, made on the first request
    calls_loopback: bool = False
    calls_relay_only: bool = False
    calls: CallsBridge | None = None

    def __post_init__(self) -> None:
        # What a run that did not close left of files being sent (plaintext) goes first.
        shutil.rmtree(self._upload_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"Bridge(unlocked={self.client is not None})"

    def prewarm(self) -> None:
        """Import :data:`PREWARM` and make the account views now (at the app's start)."""
        for name in PREWARM:
            importlib.import_module(name)
        self._ops()

    # --- the account ----------------------------------------------------------------

    async def unlock(self, passphrase: str) -> None:
        async with self._unlock_lock:
            if self.client is not None:
                return
            try:
                client = await asyncio.to_thread(self.opener, self.data_dir, passphrase)
            except WrongPassphrase:
                await asyncio.sleep(_WRONG_PASSPHRASE_PAUSE_S)  # slows guessing down
                raise PageError("wrong passphrase") from None
            self.client = client
            self.calls = CallsBridge(self._broadcast, loopback=self.calls_loopback,
                                     relay_only=self.calls_relay_only)
            self.calls.attach(client)  # before connecting: no call started meanwhile is missed
            await client.connect(wait=False)  # it keeps retrying by itself
            self._pump = asyncio.get_running_loop().create_task(self._events(client))

    async def close(self) -> None:
        if self._views is not None:
            await self._views.close()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self.calls is not None:
            await self.calls.close()
        if self.client is not None:
            await self.client.close()
        shutil.rmtree(self._upload_dir, ignore_errors=True)

    @property
    def _upload_dir(self) -> Path:
        return self.data_dir / "app-upload"

    def _client(self) -> Client:
        if self.client is None:
            raise PageError("locked: unlock with the passphrase first")
        return self.client

    def status(self) -> dict[str, Any]:
        c = self.client
        if c is None:
            return {"unlocked": False}
        return {"unlocked": True, "username": c.username, "connected": c.connected,
                "problem": None if c.connected else c.connection_problem}

    # --- notices --------------------------------------------------------------------

    async def _events(self, client: Client) -> None:
        """Every SDK event only says *when* to look: the page asks again for what it shows."""
        stream = client.events()
        try:
            async for event in stream:
                if isinstance(event, ConnectionChanged):
                    await self._broadcast({"event": "status", **self.status()})
                else:
                    await self._broadcast({"event": "changed",
                                           "conversation": _conversation_of(event)})
        finally:
            stream.close()

    async def _broadcast(self, notice: dict[str, Any]) -> None:
        text = json.dumps(notice)
        for ws in list(self._sockets):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(text)

    # --- one socket -----------------------------------------------------------------

    async def serve(self, ws: ServerConnection) -> None:
        """Answer one page's requests until it goes."""
        self._sockets.add(ws)
        upload: dict[str, _Upload] = {}
        try:
            await ws.send(json.dumps({"event": "status", **self.status()}))
            async for frame in ws:
                if isinstance(frame, bytes):
                    await self._piece(ws, upload, frame)
                    continue
                await ws.send(json.dumps(await self._answer(frame, ws, upload)))
        except ConnectionClosed:
            pass
        finally:
            self._sockets.discard(ws)
            if not self._sockets and self.calls is not None:
                await self.calls.page_gone()  # the page in the call went, and its worker
            for up in upload.values():
                _drop(up)

    async def _answer(
        self, frame: str, ws: ServerConnection, upload: dict[str, _Upload]
    ) -> dict[str, Any]:
        try:
            req = json.loads(frame)
        except ValueError:
            return {"id": None, "ok": False, "error": "not JSON"}
        if not isinstance(req, dict):
            return {"id": None, "ok": False, "error": "not a request"}
        rid = req.get("id")
        if not isinstance(rid, int):
            return {"id": None, "ok": False, "error": "a request needs a numeric id"}
        op = req.get("op")
        handler = self._ops().get(op) if isinstance(op, str) else None
        try:
            if op in ("upload", "upload_end"):
                result = await (self._upload_begin(req, upload) if op == "upload"
                                else self._upload_end(ws, upload))
            elif handler is None:
                raise PageError("unknown request")
            else:
                result = await handler(req)
        except (PageError, PageCallError, SottovoceError) as exc:
            return {"id": rid, "ok": False, "error": str(exc)}
        except Exception as exc:  # a plain line for the page; the kind only for the log
            log.warning("request %s failed: %s", op, type(exc).__name__)
            return {"id": rid, "ok": False, "error": "that did not work (an internal error)"}
        return {"id": rid, "ok": True, "result": result}

    def _ops(self) -> dict[str, Handler]:
        if self._views is None:
            from sottovoce.app.bridge_views import AccountViews
            self._views = AccountViews(self)
        return {**self._views.ops(),
            "status": self._op_status, "unlock": self._op_unlock, "list": self._op_list,
            "search": self._op_search, "request": self._op_request, "open": self._op_open,
            "send": self._op_send,
            "edit": self._op_edit, "delete": self._op_delete, "react": self._op_react,
            "timer": self._op_timer, "typing": self._op_typing,
            "room_create": self._op_room_create, "room_invite": self._op_room_invite,
            "room_leave": self._op_room_leave,
            **(self.calls.ops() if self.calls is not None else {}),
        }

    # --- requests -------------------------------------------------------------------

    async def _op_status(self, _: dict[str, Any]) -> Any:
        return self.status()

    async def _op_unlock(self, req: dict[str, Any]) -> Any:
        """Unlocked: the status and the list at once (read before the connection's own
        work gets the event loop), so the page draws the list without asking again."""
        await self.unlock(text_field(req, "passphrase", limit=1024))
        return {**self.status(), "list": await self._op_list(req)}

    async def _op_list(self, _: dict[str, Any]) -> Any:
        c = self._client()
        return {"conversations": [views.conversation(x) for x in c.conversations.all()],
                "requests": c.contacts.requests()}

    async def _op_request(self, req: dict[str, Any]) -> Any:
        """A message request (a first message from someone not a contact) answered."""
        c = self._client()
        user, answer = text_field(req, "user", limit=100), text_field(req, "answer", limit=10)
        if user not in c.contacts.requests():
            raise PageError(f"no message request from {user}")
        if answer == "accept":
            await c.contacts.accept(user)
        elif answer == "decline":
            await c.contacts.decline(user)
        elif answer == "block":
            await c.contacts.block(user)
        else:
            raise PageError("answer a request with accept, decline or block")
        return None

    async def _op_search(self, req: dict[str, Any]) -> Any:
        c = self._client()
        hits = c.conversations.search(text_field(req, "q", limit=1000).split(), limit=50)
        return [{"peer": h.message.peer, "label": h.conversation, "room": h.room,
                 "id": h.message.message_id, "text": views.message(
                     c, c.controls.view(h.message), room=h.room)["text"]} for h in hits]

    def _chat(self, req: dict[str, Any]) -> tuple[Client, str, bool]:
        c = self._client()
        peer, room = text_field(req, "peer", limit=200), flag_field(req, "room")
        if room:
            c.rooms.get(peer)  # a plain error for a room this device is not in
        elif peer == c.username or "#" in peer:
            raise PageError("not a conversation")
        return c, peer, room

    async def _op_open(self, req: dict[str, Any]) -> Any:
        """The chat as shown; showing it marks it read (and sends a read receipt)."""
        c, peer, room = self._chat(req)
        shown = c.controls.history(peer, room=room, limit=_HISTORY)
        if shown:
            c.conversations.mark_read(peer, [v.message for v in shown])
            if c.connected:
                with contextlib.suppress(SottovoceError):
                    await c.controls.mark_read(peer, room=room)
        timer = c.timers.room_timer(peer) if room else c.timers.chat_timer(peer)
        out: dict[str, Any] = {
            "messages": [views.message(c, v, room=room) for v in shown],
            "typing": c.controls.typing_now(peer, room=room),
            "timer": timer.seconds if timer is not None else 0,
        }
        if room:
            r = c.rooms.get(peer)  # a room this device left keeps its history, no members
            out["label"] = r.label
            out["members"] = [] if r.removed else sorted(c.rooms.roles(peer).items())
        return out

    async def _op_send(self, req: dict[str, Any]) -> Any:
        c, peer, room = self._chat(req)
        text = text_field(req, "text")
        reply_to = req.get("replyTo")
        if reply_to is not None:
            quoted = text_field(req, "replyTo", limit=200)
            return await c.controls.reply(peer, quoted, text, room=room)
        return await (c.rooms.send(peer, text) if room else c.send_text(peer, text))

    async def _op_edit(self, req: dict[str, Any]) -> Any:
        c, peer, room = self._chat(req)
        return await c.controls.edit(peer, text_field(req, "msg", limit=200),
                                     text_field(req, "text"), room=room)

    async def _op_delete(self, req: dict[str, Any]) -> Any:
        c, peer, room = self._chat(req)
        return await c.controls.delete(peer, text_field(req, "msg", limit=200),
                                       for_everyone=flag_field(req, "everyone"), room=room)

    async def _op_react(self, req: dict[str, Any]) -> Any:
        c, peer, room = self._chat(req)
        return await c.controls.react(peer, text_field(req, "msg", limit=200),
                                      text_field(req, "emoji", limit=64),
                                      remove=flag_field(req, "remove"), room=room)

    async def _op_timer(self, req: dict[str, Any]) -> Any:
        c, peer, room = self._chat(req)
        seconds = parse_timer(text_field(req, "setting", limit=10))
        if room:
            return await c.timers.set_room_timer(peer, seconds)
        return await c.timers.set_chat_timer(peer, seconds)

    async def _op_typing(self, req: dict[str, Any]) -> Any:
        c, peer, room = self._chat(req)
        if c.connected:
            await c.controls.typing(peer, room=room)
        return None

    async def _op_room_create(self, req: dict[str, Any]) -> Any:
        room = await self._client().rooms.create_room(text_field(req, "name", limit=100))
        return {"peer": room.room_id, "label": room.label}

    async def _op_room_invite(self, req: dict[str, Any]) -> Any:
        c, peer, _ = self._chat({**req, "room": True})
        user = text_field(req, "user", limit=100).removeprefix("@")
        await c.rooms.invite(peer, user)
        await c.rooms.announce_invite(peer, user)
        return sorted(c.rooms.roles(peer).items())

    async def _op_room_leave(self, req: dict[str, Any]) -> Any:
        c, peer, _ = self._chat({**req, "room": True})
        return await c.rooms.leave(peer)

    # --- files ----------------------------------------------------------------------

    async def _upload_begin(self, req: dict[str, Any], upload: dict[str, _Upload]) -> Any:
        _, peer, room = self._chat(req)
        try:
            name = valid_name(req.get("name"))
        except DecodeError:
            raise PageError("that file name cannot be sent") from None
        size = req.get("size")
        if not isinstance(size, int) or not 0 < size <= MAX_FILE_SIZE:
            raise PageError(f"a file is 1 byte to {MAX_FILE_SIZE // 2**20} MiB")
        for old in upload.values():
            _drop(old)
        upload.clear()
        private_dir(self._upload_dir)
        folder = self._upload_dir / secrets.token_hex(8)
        folder.mkdir(mode=0o700)
        path = folder / name
        upload["current"] = _Upload(path, size, peer, room, handle=path.open("wb"))
        return {"piece": UPLOAD_PIECE}

    async def _piece(self, ws: ServerConnection, upload: dict[str, _Upload], data: bytes) -> None:
        up = upload.get("current")
        if up is None or up.written + len(data) > up.size:
            upload.pop("current", None)
            if up is not None:
                _drop(up)
            await ws.send(json.dumps({"event": "upload", "error": "unexpected file data"}))
            return
        await asyncio.to_thread(up.handle.write, data)
        up.written += len(data)
        await ws.send(json.dumps({"event": "upload", "phase": "read",
                                  "done": up.written, "total": up.size}))

    async def _upload_end(self, ws: ServerConnection, upload: dict[str, _Upload]) -> Any:
        up = upload.pop("current", None)
        if up is None:
            raise PageError("no file is being sent")
        try:
            up.handle.close()
            if up.written != up.size:
                raise PageError("the file arrived incomplete")
            c = self._client()
            loop, sends = asyncio.get_running_loop(), set()

            def progress(done: int, total: int) -> None:
                notice = json.dumps({"event": "upload", "phase": "sent",
                                     "done": done, "total": total})
                task = loop.create_task(_send_quietly(ws, notice))
                sends.add(task)
                task.add_done_callback(sends.discard)

            if up.room:
                return await c.files.room_send_file(up.peer, up.path, progress=progress)
            return await c.files.send_file(up.peer, up.path, progress=progress)
        finally:
            _drop(up)

    async def attachment(self, message_id: str) -> tuple[str, str, bytes]:
        """A received (or sent) file's name, media type and bytes, to serve as a download;
        its plaintext leaves the viewing area as soon as it is read."""
        c = self._client()
        if not 8 <= len(message_id) <= 128:
            raise UsageError("no such file")
        info = c.files.info(message_id)
        path = await c.files.view(message_id)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
        return info.name, info.media_type, data


def _drop(up: _Upload) -> None:
    with contextlib.suppress(OSError):
        if up.handle is not None:
            up.handle.close()
    shutil.rmtree(up.path.parent, ignore_errors=True)


async def _send_quietly(ws: ServerConnection, text: str) -> None:
    with contextlib.suppress(ConnectionClosed):
        await ws.send(text)


def _conversation_of(event: object) -> str | None:
    """The conversation an SDK event is about, when it says (the page refreshes it)."""
    for name in ("conversation", "room_id", "peer"):
        value = getattr(event, name, None)
        if isinstance(value, str):
            return value
    message = getattr(event, "message", None)
    peer = getattr(message, "peer", None)
    return peer if isinstance(peer, str) else None
