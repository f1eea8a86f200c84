"""The three narrow callables a :class:`CallController` is built from, over the 1:1 path.

    SendSignal batch ──► group by recipient ──► one ephemeral Olm send per user
                         (signals for our own other devices ride along with the
                         send to the peer: every 1:1 send covers them anyway)
    RecordMissedCall ──► one durable "call-missed" entry (both histories)
    turn_servers()   ──► sottovoce.turn.credentials ──► TurnServer per URL

Nothing here touches a socket or the store itself: the client hands in what sends
and what asks the server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from sottovoce.calls.effects import RecordMissedCall, SendSignal
from sottovoce.client.call_payloads import (
    MISSED_CALL_CONTENT_TYPE,
    MissedCall,
    decode_signals,
    encode_signals,
)
from sottovoce.client.calls.media import TurnServer
from sottovoce.client.events import ErrorEvent
from sottovoce.errors import DecodeError, RemoteError, SottovoceError
from sottovoce.limits import TURN_MAX_URLS
from sottovoce.protocol.fields import Device
from sottovoce.secret import Secret

if TYPE_CHECKING:
    from sottovoce.client.calls.controller import CallController

log = logging.getLogger(__name__)

#: Encrypt per-device bodies for ``user``'s devices (and ours) and send them ephemerally.
SendCall = Callable[[str, Mapping[Device, bytes]], Awaitable[None]]
#: Store and send one durable entry: (peer, payload content type, text).
SendRecord = Callable[[str, str, str], Awaitable[object]]
#: Ask the server for TURN credentials; the reply's ``data``.
AskTurn = Callable[[], Awaitable[dict[str, Any]]]

#: Longest TURN username / credential accepted from a server (coturn's are ~40 bytes).
_TURN_FIELD_MAX = 256


def signal_sender(
    *, me: str, send_call: SendCall, current_peer: Callable[[], str | None]
) -> Callable[[list[SendSignal]], Awaitable[None]]:
    """``send_signals`` for the controller: one ephemeral send per recipient user.

    A batch only for our own devices ("answered elsewhere") goes with a send to the
    call's peer, since the server routes a 1:1 send to the sender's other devices too.
    """

    async def send(batch: list[SendSignal]) -> None:
        bodies: dict[Device, list[bytes]] = {}
        for effect in batch:
            bodies.setdefault((effect.user, effect.device), []).append(effect.payload)
        users = sorted({user for user, _ in bodies if user != me})
        if not users:
            peer = current_peer()
            if peer is None:
                return  # the call is gone: nobody to route our own devices' copy with
            users = [peer]
        for i, user in enumerate(users):
            await send_call(
                user,
                {
                    key: encode_signals(signals)
                    for key, signals in bodies.items()
                    if key[0] == user or (i == 0 and key[0] == me)
                },
            )

    return send


def missed_call_recorder(send_record: SendRecord) -> Callable[[RecordMissedCall], Awaitable[None]]:
    """``record_missed`` for the controller: a durable entry the peer receives too."""

    async def record(effect: RecordMissedCall) -> None:
        entry = MissedCall(call_id=effect.call_id, video=effect.video)
        await send_record(effect.peer, MISSED_CALL_CONTENT_TYPE, entry.encode())

    return record


def turn_fetcher(ask: AskTurn) -> Callable[[], Awaitable[tuple[TurnServer, ...]]]:
    """``turn_servers`` for the controller: fresh credentials for every new connection.

    A server without TURN answers ``turn_unavailable``: the call then goes without
    a relay (a relay-only call fails with a plain "needs a TURN server").
    """

    async def fetch() -> tuple[TurnServer, ...]:
        try:
            data = await ask()
        except SottovoceError as exc:
            if getattr(exc, "code", None) == "turn_unavailable":
                return ()
            raise
        return turn_servers_from_wire(data)

    return fetch


def turn_servers_from_wire(data: Mapping[str, Any]) -> tuple[TurnServer, ...]:
    """The ``sottovoce.turn.result`` reply as TurnServers; ``RemoteError`` if malformed."""
    urls, username, credential = data.get("urls"), data.get("username"), data.get("credential")
    if (
        not isinstance(urls, list)
        or not 0 < len(urls) <= TURN_MAX_URLS
        or not all(isinstance(u, str) for u in urls)
        or not isinstance(username, str)
        or not isinstance(credential, str)
        or not 0 < len(username) <= _TURN_FIELD_MAX
        or not 0 < len(credential) <= _TURN_FIELD_MAX
        or not credential.isascii()
    ):
        raise RemoteError("the server sent malformed TURN credentials")
    try:
        return tuple(
            TurnServer(url=url, username=username, credential=Secret(credential.encode("ascii")))
            for url in urls
        )
    except SottovoceError:
        raise RemoteError("the server sent a TURN URL this client cannot use") from None


def deliver_signals(
    calls: CallController, user: str, device: str, body: bytes,
    emit: Callable[[ErrorEvent], None],
) -> None:
    """Hand a decrypted call payload's signals to ``calls``; a malformed payload is an
    error event, a late or stale signal is refused quietly (the state is unchanged)."""
    try:
        signals = decode_signals(body)
    except DecodeError:
        emit(ErrorEvent(code="bad_frame", message="a malformed call payload was skipped"))
        return
    for data in signals:
        try:
            calls.receive(from_user=user, from_device=device, data=data)
        except SottovoceError as exc:
            # Late or stale signals are normal (a lost race to answer). Never log the
            # signal: it may hold an SDP.
            log.debug("calls: signal refused: %s", exc.code)
