"""The page's account views: safety numbers, devices (list, rename, revoke, link), key
transparency, a room's audit trail and the settings, each through the SDK calls the CLI
commands make (`verify`, `device list|rename|revoke|link`, `kt status`, `room audit`,
`account settings`, `account discovery`).

Every field the page sends is checked here as network input, like bridge.py's. QR codes
are made here with segno (the CLI's encoder) and sent as rows of modules: the page draws
them as SVG itself, so nothing comes from another origin and no markup is parsed.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from sottovoce.app.page_input import PageError, flag_field, text_field
from sottovoce.client import Client
from sottovoce.client.device_notices import DeviceNotices
from sottovoce.client.kt import WitnessPolicy, witness_policy_of
from sottovoce.client.linking import (
    DeviceNames,
    LinkedDevice,
    LinkInvite,
    PeerHello,
    all_messages,
    link_existing,
)
from sottovoce.errors import SottovoceError
from sottovoce.identity.certificates import validate_username
from sottovoce.kt.checkpoint import NoteKey
from sottovoce.protocol.audit import AuditAction, AuditChainError

#: The CLI's warning, shown above a linking code (`device link`).
LINK_WARNING = "Only link a device you are holding in your hand: it gets your account's keys."
#: How long the page has to confirm a new device's words before the linking ends.
LINK_CONFIRM_S = 300.0
THEMES = ("system", "light", "dark")
DISCOVERY_MODES = ("public", "default", "strict")
_APP_SETTINGS = "app-settings.json"
#: The most messages one ``older`` request answers with.
OLDER_PAGE = 500

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def qr_rows(payload: str | bytes) -> list[str]:
    """A QR code of ``payload`` (segno, error level M, border 2) as rows of "0"/"1"."""
    import segno

    code = segno.make(payload, error="m", micro=False)
    return ["".join("1" if m else "0" for m in row) for row in code.matrix_iter(border=2)]


def fingerprint(key: bytes) -> str:
    """A device key's fingerprint as `device list` prints it."""
    digest = hashlib.sha256(key).hexdigest()[:16]
    return " ".join(digest[i:i + 4] for i in range(0, 16, 4))


def _age_ms(now_ms: int, at_ms: int) -> int:
    return max(0, now_ms - at_ms)


class Bridge(Protocol):
    """What the account views need of the app's bridge (app/bridge.py)."""

    data_dir: Path

    def _client(self) -> Client: ...

    def _chat(self, req: dict[str, Any]) -> tuple[Client, str, bool]: ...

    async def _broadcast(self, notice: dict[str, Any]) -> None: ...


class AccountViews:
    """The requests of the account views for one :class:`Bridge`."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self._link: asyncio.Task[LinkedDevice] | None = None
        self._answer: concurrent.futures.Future[bool] | None = None
        #: The linking under way as the page shows it (a page opened again gets it).
        self._shown: dict[str, Any] | None = None
        self._hello: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"AccountViews(linking={self._link is not None and not self._link.done()})"

    def ops(self) -> dict[str, Handler]:
        return {
            "safety": self.safety, "mark_verified": self.mark_verified,
            "devices": self.devices, "device_rename": self.device_rename,
            "device_revoke": self.device_revoke, "link_start": self.link_start,
            "link_confirm": self.link_confirm, "link_cancel": self.link_cancel,
            "link_state": self.link_state,
            "kt_status": self.kt_status, "kt_ack": self.kt_ack, "audit": self.audit,
            "settings": self.settings, "settings_set": self.settings_set,
            "settings_theme": self.settings_theme, "older": self.older,
        }

    async def close(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(False)
        if self._link is not None and not self._link.done():
            self._link.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._link

    def _client(self) -> Client:
        return self.bridge._client()

    # --- safety numbers ---------------------------------------------------------------

    def _peer(self, req: dict[str, Any], c: Client) -> str:

        peer = text_field(req, "peer", limit=100).removeprefix("@")
        try:
            validate_username(peer)
        except SottovoceError:
            raise PageError("not a username") from None
        if peer == c.username:
            raise PageError("that is you: a safety number is between you and someone else")
        return peer

    async def safety(self, req: dict[str, Any]) -> Any:
        """`verify NAME`: the 60 digits, the QR code's modules, and the verified mark."""
        c = self._client()
        peer = self._peer(req, c)
        sn = c.known_safety_number(peer)
        if sn is None:
            sn = await c.safety_number(peer)  # looked up (a plain error offline)
        return {"peer": peer, "me": c.username, "digits": sn.grouped(),
                "qr": qr_rows(sn.qr_payload()), "verified": c.is_verified(peer)}

    async def mark_verified(self, req: dict[str, Any]) -> Any:
        """`verify NAME --mark` (or ``--unmark`` with ``verified`` false)."""

        c = self._client()
        peer = self._peer(req, c)
        if not c.mark_verified(peer, flag_field(req, "verified")):
            raise PageError(f"{peer}'s key is not known here yet: show the safety number first")
        return {"peer": peer, "verified": c.is_verified(peer)}

    # --- devices ----------------------------------------------------------------------

    def _own(self, c: Client) -> dict[str, tuple[int, bytes]]:
        contact = c.own_contact()
        certs = dict(contact.certificates) if contact is not None else {}
        certs[c.device_id] = c.identity.certificate
        revoked = contact.revoked if contact is not None else set()
        return {d: (cert.created_at_ms, cert.keys.signing_key) for d, cert in certs.items()
                if d not in revoked}

    async def devices(self, _: dict[str, Any]) -> Any:
        """`device list`: every active device of the account, this one marked."""
        c = self._client()
        if c.connected:
            with contextlib.suppress(SottovoceError):
                await c.refresh_own_devices()
        names = DeviceNames(c.linking().store).all()
        seen: dict[str, int] = {}
        for m in all_messages(c.messages_after):
            if m.sender == c.username:
                seen[m.sender_device] = max(seen.get(m.sender_device, 0), m.local_at_ms)
        out = []
        for device, (created, key) in sorted(self._own(c).items()):
            me = device == c.device_id
            out.append({"id": device, "name": names.get(device, ""), "createdMs": created,
                        "lastActiveMs": int(time.time() * 1000) if me else seen.get(device, 0),
                        "fingerprint": fingerprint(key), "current": me})
        return out

    def _device(self, req: dict[str, Any], c: Client) -> str:

        device = text_field(req, "device", limit=100)
        if device not in self._own(c):
            raise PageError("no such device of this account")
        return device

    async def device_rename(self, req: dict[str, Any]) -> Any:

        c = self._client()
        device = self._device(req, c)
        name = text_field(req, "name", limit=64).strip()
        if not name:
            raise PageError("a device name cannot be empty")
        DeviceNames(c.linking().store).set(device, name)
        return await self.devices({})

    async def device_revoke(self, req: dict[str, Any]) -> Any:
        """`device revoke ID`: the page asked the user to confirm before sending this."""

        c = self._client()
        device = self._device(req, c)
        if device == c.device_id:
            raise PageError("this is the device you are using: revoke it from another one")
        if not flag_field(req, "confirmed"):
            raise PageError("confirm the revocation first")
        await c.revoke_device(device)
        DeviceNotices(c.linking().store, c.device_id).forget(device)
        return await self.devices({})

    # --- linking a new device ---------------------------------------------------------

    async def link_start(self, req: dict[str, Any]) -> Any:
        """`device link`: answered with the codes; the rest comes as ``link`` notices (the
        new device's words to confirm, then done or failed)."""

        c = self._client()
        if self._link is not None and not self._link.done():
            raise PageError("a linking is already under way")
        hint = req.get("nameHint", "")
        if not isinstance(hint, str) or len(hint) > 64:
            raise PageError("'nameHint' is not text")
        if not c.connected:
            raise PageError("not connected to the server: linking needs it")
        loop = asyncio.get_running_loop()
        shown: asyncio.Future[LinkInvite] = loop.create_future()

        def show(invite: LinkInvite) -> None:
            if not shown.done():
                shown.set_result(invite)

        def confirm(hello: PeerHello) -> bool:  # run in a thread by link_existing
            answer: concurrent.futures.Future[bool] = concurrent.futures.Future()
            self._answer = answer
            self._hello = {"event": "link", "stage": "confirm", "device": hello.device_id,
                           "name": hello.name, "words": list(hello.words)}
            asyncio.run_coroutine_threadsafe(self.bridge._broadcast(self._hello), loop)
            try:
                return answer.result(timeout=LINK_CONFIRM_S)
            except concurrent.futures.TimeoutError:
                return False

        self._shown = self._hello = None
        self._link = loop.create_task(link_existing(
            c, show=show, confirm=confirm, name_hint=hint.strip(),
            with_history=flag_field(req, "withHistory")))
        self._link.add_done_callback(lambda t: loop.create_task(self._linked(t)))
        link: asyncio.Future[Any] = self._link
        await asyncio.wait({shown, link}, return_when=asyncio.FIRST_COMPLETED)
        if not shown.done():
            shown.cancel()
            exc = self._link.exception()
            raise PageError(str(exc) if isinstance(exc, SottovoceError)
                            else "the linking could not start")
        invite = shown.result()
        payload = invite.qr.encode()
        self._shown = {"warning": LINK_WARNING, "qr": qr_rows(payload), "text": payload,
                       "code": str(invite.code), "expiresAtMs": invite.expires_at_ms,
                       "server": invite.qr.server_url}
        return self._shown

    async def link_state(self, _: dict[str, Any]) -> Any:
        """The linking under way, for a page opened (again) in the middle of it: its
        codes and, once the new device answered, the words to confirm; else null."""
        self._client()
        if self._link is None or self._link.done() or self._shown is None:
            return None
        waiting = self._answer is not None and not self._answer.done()
        return {"invite": self._shown, "hello": self._hello if waiting else None}

    async def _linked(self, task: asyncio.Task[LinkedDevice]) -> None:
        self._shown = self._hello = None
        notice: dict[str, Any]
        if task.cancelled():
            notice = {"event": "link", "stage": "failed", "error": "the linking was cancelled"}
        elif task.exception() is not None:
            exc = task.exception()
            notice = {"event": "link", "stage": "failed",
                      "error": str(exc) if isinstance(exc, SottovoceError)
                      else "the linking did not work"}
        else:
            linked = task.result()
            notice = {"event": "link", "stage": "done", "device": linked.device_id,
                      "name": linked.name, "roomsAdded": linked.rooms_added,
                      "roomsFailed": list(linked.rooms_failed)}
        await self.bridge._broadcast(notice)

    async def link_confirm(self, req: dict[str, Any]) -> Any:

        answer = self._answer
        if answer is None or answer.done():
            raise PageError("no new device is waiting for an answer")
        answer.set_result(flag_field(req, "accept"))
        return None

    async def link_cancel(self, _: dict[str, Any]) -> Any:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(False)
        if self._link is not None and not self._link.done():
            self._link.cancel()
        return None

    # --- key transparency -------------------------------------------------------------

    async def kt_status(self, _: dict[str, Any]) -> Any:
        """`kt status`: what is pinned, the last verified checkpoint, the alerts."""
        c = self._client()
        check = "not connected: showing what this device kept"
        if c.connected:
            try:
                await c.check_log()
                check = "ok"
            except SottovoceError as exc:
                check = f"FAILED: {exc}"
        kt = c.kt
        alerts = [{"kind": a.kind, "message": a.message, "atMs": a.at_ms} for a in kt.alerts()]
        out: dict[str, Any] = {"check": check, "alerts": alerts, "pinned": kt.pins is not None,
                               "ownVersions": kt.monitor_state.versions}
        pins = kt.pins
        if pins is None:
            out["why"] = ("keys were given at account create and the server's do not match "
                          "them: lookups are refused" if kt.required else
                          "the server offered no transparency log when this device was set "
                          "up; lookups are not verified")
            return out
        policy = witness_policy_of(pins)
        out.update(logKey=pins.log_key, fingerprint=NoteKey.from_vkey(pins.log_key).fingerprint(),
                   witnesses=list(pins.witnesses), required=pins.min_cosignatures,
                   policy=policy.name.lower() if policy else "", maxAgeMs=pins.max_age_ms,
                   witnessWarning=policy is WitnessPolicy.MISSING)
        head = kt.verified_head()
        now = int(time.time() * 1000)
        out["checkpoint"] = None if head is None else {
            "size": head.checkpoint.size,
            "root": base64.b64encode(head.checkpoint.root).decode()[:12],
            "cosignatures": [{"name": name, "agoMs": _age_ms(now, ts * 1000)}
                             for name, ts in sorted(head.cosignatures.items())]}
        return out

    async def kt_ack(self, _: dict[str, Any]) -> Any:
        """`kt ack`: the alerts are kept, marked seen."""
        self._client().kt.acknowledge()
        return await self.kt_status({})

    # --- a room's audit trail ---------------------------------------------------------

    async def audit(self, req: dict[str, Any]) -> Any:
        """`room audit ROOM`: every entry verified (links, signatures, epoch bindings), the
        ones that are not authentic reported and skipped, or the chain INVALID."""

        c = self._client()
        room = c.rooms.get(text_field(req, "peer", limit=200))
        try:
            trail = await c.rooms.audit(room.room_id)
        except AuditChainError as exc:
            return {"valid": False, "error": str(exc), "entries": [], "rejected": []}
        entries = []
        for e in trail:
            subjects = [[s.user_id, s.device_id] for s in e.subjects]
            entries.append({
                "index": e.index, "atMs": e.time_ms, "epoch": e.epoch,
                "actor": e.actor_user_id, "actorDevice": e.actor_device_id,
                "action": e.action.name.lower().replace("_", " "),
                "setting": e.action is AuditAction.ROOM_SETTING,
                "subjects": subjects, "verified": True})
        rejected = [{"index": bad.index, "reason": bad.reason, "verified": False}
                    for bad in trail.rejected]
        return {"valid": True, "entries": entries, "rejected": rejected}

    # --- a long chat, a page at a time -------------------------------------------------

    async def older(self, req: dict[str, Any]) -> Any:
        """The messages before ``before`` (a message id the page has), newest last: the
        page's virtual list asks for them as it is scrolled up."""
        from sottovoce.app import views

        c, peer, room = self.bridge._chat(req)
        count = req.get("count", OLDER_PAGE)
        if not isinstance(count, int) or not 0 < count <= OLDER_PAGE:
            count = OLDER_PAGE
        shown = c.controls.history(peer, room=room, limit=count,
                                   before=text_field(req, "before", limit=200))
        more = bool(shown) and bool(c.controls.history(
            peer, room=room, limit=1, before=shown[0].message.message_id))
        return {"messages": [views.message(c, v, room=room) for v in shown], "more": more}

    # --- settings ---------------------------------------------------------------------

    @property
    def _settings_path(self) -> Any:
        return self.bridge.data_dir / _APP_SETTINGS

    def theme(self) -> str:
        """The page's theme (not a secret: kept beside the store, mode 0600)."""
        try:
            value = json.loads(self._settings_path.read_text()).get("theme")
        except (OSError, ValueError, AttributeError):
            return "system"
        return value if value in THEMES else "system"

    def _write_theme(self, theme: str) -> None:
        tmp = self._settings_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"theme": theme}, out)
        os.replace(tmp, self._settings_path)

    async def settings(self, _: dict[str, Any]) -> Any:
        """`account settings` and `account discovery` (the mode is asked of the server;
        offline it is shown as unknown)."""
        c = self._client()
        now = c.controls.settings
        mode: str | None = None
        if c.connected:
            with contextlib.suppress(SottovoceError):
                mode = await c.discovery.mode()
        return {"readReceipts": now.read_receipts, "typing": now.typing,
                "presence": c.presence.enabled, "discovery": mode, "theme": self.theme()}

    async def settings_theme(self, _: dict[str, Any]) -> Any:
        return self.theme()

    async def settings_set(self, req: dict[str, Any]) -> Any:

        c = self._client()
        key = text_field(req, "key", limit=20)
        if key == "readReceipts":
            c.controls.set_settings(read_receipts=flag_field(req, "value"))
        elif key == "typing":
            c.controls.set_settings(typing=flag_field(req, "value"))
        elif key == "presence":
            c.presence.set_enabled(flag_field(req, "value"))
        elif key == "discovery":
            mode = text_field(req, "value", limit=10)
            if mode not in DISCOVERY_MODES:
                raise PageError("discovery is public, default or strict")
            await c.discovery.mode(mode)
        elif key == "theme":
            theme = text_field(req, "value", limit=10)
            if theme not in THEMES:
                raise PageError("the theme is system, light or dark")
            self._write_theme(theme)
        else:
            raise PageError("no such setting")
        return await self.settings({})
