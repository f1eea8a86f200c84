"""This device's room calls: at most one RoomCallController per room, fed by the room path.

::

    room message path ── receive(room, sender, signal) ──► the room's controller
                         (a "start" of another device is remembered: join it)
    after each batch  ── rooms_changed() ──► room_changed() of each controller
                         whose room's members changed
    start(room)       ── sottovoce.room.call.grant for a fresh call id ──► SFU mode
                         with that grant; "sfu_unavailable" ──► a mesh (at most 4)
    join(room)        ── the call last started in the room, in its mode

Everything it needs from the client is a narrow callable: send a signal as an MLS
application message of the room, the room's members with their leaf signature keys,
append to the room's audit trail, and ask the server for an SFU grant. The server
sees signals only as room ciphertext; grants name the call, never the room's content.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sottovoce.calls.room_call import CALL_MLS_SUITE
from sottovoce.calls.room_signals import CallMode, RoomCallSignal, Start
from sottovoce.client.calls.recording import export_recording
from sottovoce.client.calls.room_controller import RoomCallController, RoomCallOptions
from sottovoce.client.calls.room_media import SfuAccess
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.errors import DecodeError, RemoteError, SottovoceError, UsageError
from sottovoce.limits import CALL_ID_BYTES
from sottovoce.protocol.audit import AuditAction
from sottovoce.protocol.fields import Device
from sottovoce.secret import Secret

log = logging.getLogger(__name__)

#: (room id, signal) -> sent as an MLS application message of the room.
SendRoomSignal = Callable[[str, bytes], Awaitable[object]]
#: room id -> its member devices now, each with its leaf's signature key.
LeafKeys = Callable[[str], Mapping[Device, bytes]]
#: (room id, action) -> an entry of the room's audit trail.
AppendAudit = Callable[[str, AuditAction], Awaitable[object]]
#: (room id, call id) -> the ``sottovoce.room.call.granted`` reply's data.
AskGrant = Callable[[str, bytes], Awaitable[dict[str, Any]]]

#: Longest URL, room or feed id, token accepted in a grant from the server.
_GRANT_FIELD_MAX = 512


@dataclass(frozen=True, slots=True)
class CallSeen:
    """A call some device started in the room (from its "start" signal)."""

    call_id: bytes
    mode: CallMode
    starter: Device


def access_from_wire(data: Mapping[str, Any]) -> SfuAccess:
    """The grant reply as an SfuAccess; ``RemoteError`` if it is malformed."""
    fields = [data.get(k) for k in ("url", "room", "feedId", "token")]
    if not all(isinstance(f, str) and 0 < len(f) <= _GRANT_FIELD_MAX for f in fields):
        raise RemoteError("the server sent a malformed SFU grant")
    url, room, feed, token = (str(f) for f in fields)
    if not url.startswith(("ws://", "wss://")):
        raise RemoteError("the server sent an SFU grant with a bad URL")
    return SfuAccess(url=url, room=room, feed_id=feed, token=token)


class RoomCalls:
    """See the module docstring. Built by ``Client.start_room_calls``."""

    def __init__(
        self,
        *,
        me: Device,
        signing_key: SigningKey,
        send_signal: SendRoomSignal,
        leaf_keys: LeafKeys,
        append_audit: AppendAudit,
        ask_grant: AskGrant,
        options: RoomCallOptions | None = None,
        storage_key: Secret | None = None,
        rng: Random = secrets.token_bytes,
        room_suite: Callable[[str], int | None] | None = None,
    ) -> None:
        self.me = me
        #: A room's MLS cipher suite (its calls' groups run in it; None: suite 1).
        self._room_suite = room_suite
        options = options or RoomCallOptions()
        if options.record_to is not None and options.storage_key is None:
            # This device's recordings are sealed at rest with its store's key.
            options = dataclasses.replace(options, storage_key=storage_key)
        self.options = options
        self._key = signing_key
        self._send = send_signal
        self._leaf_keys = leaf_keys
        self._audit = append_audit
        self._ask_grant = ask_grant
        self._rng = rng
        #: The live controller of each room (at most one call per room on a device).
        self.active: dict[str, RoomCallController] = {}
        #: The call last started in each room, as its start signal said.
        self.seen: dict[str, CallSeen] = {}
        self._views: dict[str, frozenset[tuple[Device, bytes]]] = {}

    # --- inputs from the client ----------------------------------------------------------

    def receive(self, room_id: str, sender: Device, signal: bytes) -> None:
        """A decrypted room-call signal of the room, in the room's order (ours too)."""
        try:
            decoded = RoomCallSignal.decode(signal)
        except DecodeError:
            log.debug("room calls: a malformed signal was skipped")
            return
        if isinstance(decoded, Start) and decoded.sender == sender:
            self.seen[room_id] = CallSeen(decoded.call_id, decoded.mode, sender)
        ctl = self.active.get(room_id)
        if ctl is not None and ctl.call.call_id == decoded.call_id:
            ctl.receive(signal, sender)

    def rooms_changed(self) -> None:
        """After a batch of room frames: tell each call whose room's members changed."""
        for room_id, ctl in list(self.active.items()):
            view = self._view(room_id)
            if self._views.get(room_id) != view:
                self._views[room_id] = view
                ctl.room_changed()

    def _view(self, room_id: str) -> frozenset[tuple[Device, bytes]]:
        try:
            return frozenset(self._leaf_keys(room_id).items())
        except SottovoceError:
            return frozenset()  # the room is gone from this device

    # --- the application's side --------------------------------------------------------

    async def start(self, room_id: str) -> RoomCallController:
        """Start a call in the room: through the server's SFU when it runs one, else a
        mesh (at most 4 participants)."""
        self._free(room_id)
        call_id = self._rng(CALL_ID_BYTES)
        first: SfuAccess | None = None
        try:
            first = access_from_wire(await self._ask_grant(room_id, call_id))
            mode = CallMode.SFU
        except SottovoceError as exc:
            if getattr(exc, "code", None) != "sfu_unavailable":
                raise
            mode = CallMode.MESH
        ctl = RoomCallController.start(
            room_id=room_id, me=self.me, signing_key=self._key, mode=mode, rng=self._rng,
            call_id=call_id, suite=self._suite_of(room_id),
            **self._wiring(room_id, first if mode is CallMode.SFU else None, mode),
        )
        self._keep(room_id, ctl)
        return ctl

    def join(
        self, room_id: str, call_id: bytes | None = None, mode: CallMode | None = None
    ) -> RoomCallController:
        """Join a call of the room (by default the one last started there)."""
        self._free(room_id)
        if call_id is None or mode is None:
            seen = self.seen.get(room_id)
            if seen is None:
                raise UsageError("no call has been started in this room")
            call_id, mode = seen.call_id, seen.mode
        ctl = RoomCallController.join(
            room_id=room_id, call_id=call_id, mode=mode, me=self.me, signing_key=self._key,
            rng=self._rng, suite=self._suite_of(room_id), **self._wiring(room_id, None, mode),
        )
        self._keep(room_id, ctl)
        return ctl

    def _suite_of(self, room_id: str) -> int:
        """The suite the room's call group runs in: the room's own."""
        suite = None if self._room_suite is None else self._room_suite(room_id)
        return CALL_MLS_SUITE if suite is None else suite

    def _free(self, room_id: str) -> None:
        if room_id in self.active:
            raise UsageError("this device is already in a call of this room")

    def _keep(self, room_id: str, ctl: RoomCallController) -> None:
        self.active[room_id] = ctl
        self._views[room_id] = self._view(room_id)

    def _wiring(
        self, room_id: str, first: SfuAccess | None, mode: CallMode
    ) -> dict[str, Any]:
        pending = [first] if first is not None else []

        async def send(signal: bytes) -> None:
            await self._send(room_id, signal)

        async def audit(action: AuditAction) -> None:
            await self._audit(room_id, action)

        async def grant(call_id: bytes) -> SfuAccess:
            if pending:
                return pending.pop()  # the grant that chose SFU mode, seconds old
            return access_from_wire(await self._ask_grant(room_id, call_id))

        return {
            "send_signal": send,
            "room_view": lambda: self._leaf_keys(room_id),
            "append_audit": audit,
            "sfu_grant": grant if mode is CallMode.SFU else None,
            "options": self.options,
        }

    async def end(self, room_id: str) -> None:
        """Leave the room's call (telling the others) and stop its media."""
        ctl = self.active.pop(room_id, None)
        self._views.pop(room_id, None)
        if ctl is None:
            return
        with contextlib.suppress(SottovoceError):
            ctl.leave()
        await ctl.close()

    def export_recording(self, path: Path, out_dir: Path) -> list[Path]:
        """This device's sealed recording at ``path`` as WebM files in ``out_dir``."""
        key = self.options.storage_key
        if key is None:
            raise UsageError("no storage key to open recordings with")
        return export_recording(path, key, out_dir)

    async def close(self) -> None:
        for room_id in list(self.active):
            await self.end(room_id)
