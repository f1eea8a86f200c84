"""The Janus Gateway API (its WebSocket transport), sans-IO: requests and what comes back.

Used by both ends that talk to Janus -- the server (it creates a VideoRoom per
call and manages its grants) and clients (they publish and subscribe) -- each
with its own thin asyncio loop around :class:`JanusProtocol`::

    proto = JanusProtocol(rng)
    text, txn = proto.request({"janus": "create"})        # send text
    for reply in proto.receive(incoming_text): ...        # JanusReply values
    proto.keepalive(session_id)                            # every < 60 s

Janus is not trusted with content (it only ever sees SFrame ciphertext) but it
is a network peer: every frame is size-bounded, parsed as a JSON object and
typed before anything reads it, and an error reply becomes a typed error
carrying Janus's numeric code (:func:`error_for`). The VideoRoom plugin's own
error codes (``janus_videoroom.c``) are in :class:`VideoRoomError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from sottovoce.crypto.rng import Random
from sottovoce.errors import RemoteError
from sottovoce.limits import MAX_SFU_MESSAGE_BYTES

PLUGIN = "janus.plugin.videoroom"
#: WebSocket subprotocol of the Janus API.
SUBPROTOCOL = "janus-protocol"


class VideoRoomError(IntEnum):
    """Error codes of the VideoRoom plugin (janus_videoroom.c, JANUS_VIDEOROOM_ERROR_*)."""

    UNKNOWN = 499
    NO_MESSAGE = 421
    INVALID_JSON = 422
    INVALID_REQUEST = 423
    JOIN_FIRST = 424
    ALREADY_JOINED = 425
    NO_SUCH_ROOM = 426
    ROOM_EXISTS = 427
    NO_SUCH_FEED = 428
    MISSING_ELEMENT = 429
    INVALID_ELEMENT = 430
    INVALID_SDP_TYPE = 431
    PUBLISHERS_FULL = 432
    UNAUTHORIZED = 433
    ALREADY_PUBLISHED = 434
    NOT_PUBLISHED = 435
    ID_EXISTS = 436
    INVALID_SDP = 437


#: Janus core errors (janus/apierror.h) this code tells apart.
JANUS_NO_SUCH_SESSION = 458
JANUS_UNAUTHORIZED = 403


class SfuError(RemoteError):
    """The SFU refused a request or answered nonsense. ``janus_code`` is Janus's own code."""

    code = "sfu_error"
    retryable = True

    def __init__(self, message: str, janus_code: int = 0) -> None:
        super().__init__(message)
        self.janus_code = janus_code


class SfuUnauthorized(SfuError):
    """No valid grant: the device may not publish or subscribe in this SFU room (a join
    without a current grant, a subscription without a publisher's private id, or a
    publisher without end-to-end encryption)."""

    code = "sfu_unauthorized"
    retryable = False


class SfuNoSuchRoom(SfuError):
    """The SFU room is gone (the call ended, or the SFU restarted)."""

    code = "sfu_no_such_room"
    retryable = False


class SfuNoSuchFeed(SfuError):
    """The publisher to subscribe to is not (or not yet) in the SFU room."""

    code = "sfu_no_such_feed"


class SfuUnavailable(SfuError):
    """No SFU answered (down, or unreachable in time)."""

    code = "sfu_unavailable"


def error_for(janus_code: int, reason: str) -> SfuError:
    """The typed error of a Janus (core or VideoRoom) error code. ``reason`` is Janus's
    text, cut short and stripped of control characters before it is shown anywhere."""
    text = "".join(c for c in reason[:120] if c.isprintable())
    message = f"the SFU refused the request ({janus_code}: {text})"
    if janus_code in (VideoRoomError.UNAUTHORIZED, JANUS_UNAUTHORIZED):
        return SfuUnauthorized(message, janus_code)
    if janus_code == VideoRoomError.NO_SUCH_ROOM:
        return SfuNoSuchRoom(message, janus_code)
    if janus_code == VideoRoomError.NO_SUCH_FEED:
        return SfuNoSuchFeed(message, janus_code)
    return SfuError(message, janus_code)


class ReplyKind(Enum):
    ACK = "ack"  # an asynchronous request was taken; its answer comes as an event
    SUCCESS = "success"  # a synchronous answer
    ERROR = "error"  # a core error (the plugin's own errors come inside events)
    EVENT = "event"  # a plugin event (answer to a request, or unsolicited)
    WEBRTCUP = "webrtcup"  # the handle's PeerConnection is up
    HANGUP = "hangup"  # ... and down
    MEDIA = "media"
    SLOWLINK = "slowlink"
    DETACHED = "detached"
    TIMEOUT = "timeout"  # the session timed out


@dataclass(frozen=True, slots=True, kw_only=True)
class JanusReply:
    """One frame from Janus, typed. ``data`` is the plugin's data (events, plugin
    answers) or the core's ``data`` (``{"id": ...}`` of a create/attach)."""

    kind: ReplyKind
    transaction: str | None
    session_id: int | None
    sender: int | None
    data: dict[str, Any]
    jsep: dict[str, Any] | None
    error: SfuError | None

    def __repr__(self) -> str:
        # SDPs name addresses: never in a repr or a log line.
        return (
            f"JanusReply({self.kind.value}, txn={self.transaction}, sender={self.sender}, "
            f"keys={sorted(self.data)}, jsep={'yes' if self.jsep else 'no'}, error={self.error!r})"
        )

    def plugin_error(self) -> SfuError | None:
        """The VideoRoom's error inside an event or success, or the core error."""
        if self.error is not None:
            return self.error
        code = self.data.get("error_code")
        if isinstance(code, int) and not isinstance(code, bool):
            reason = self.data.get("error")
            return error_for(code, reason if isinstance(reason, str) else "")
        return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class JanusProtocol:
    """Builds requests (each with a fresh transaction id) and types what Janus sends."""

    def __init__(self, rng: Random) -> None:
        self._rng = rng

    def request(self, body: dict[str, Any]) -> tuple[str, str]:
        """``(text to send, transaction id)`` of a Janus API request."""
        txn = self._rng(12).hex()
        return json.dumps({**body, "transaction": txn}, separators=(",", ":")), txn

    def keepalive(self, session_id: int) -> str:
        return self.request({"janus": "keepalive", "session_id": session_id})[0]

    def receive(self, text: str | bytes) -> JanusReply:
        """Type one frame from Janus; :class:`SfuError` if it is not a Janus API frame."""
        if len(text) > MAX_SFU_MESSAGE_BYTES:
            raise SfuError("an SFU message is too large")
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise SfuError("the SFU sent something that is not JSON") from None
        if not isinstance(obj, dict):
            raise SfuError("the SFU sent something that is not a JSON object")
        try:
            kind = ReplyKind(obj.get("janus"))
        except ValueError:
            raise SfuError("the SFU sent a frame of an unknown kind") from None
        txn = obj.get("transaction")
        data: Any = {}
        error = None
        if kind is ReplyKind.ERROR:
            err = obj.get("error")
            err = err if isinstance(err, dict) else {}
            code = _int(err.get("code")) or 0
            reason = err.get("reason")
            error = error_for(code, reason if isinstance(reason, str) else "")
        elif isinstance(obj.get("plugindata"), dict):
            data = obj["plugindata"].get("data", {})
        elif isinstance(obj.get("data"), dict):
            data = obj["data"]
        if not isinstance(data, dict):
            raise SfuError("the SFU sent plugin data that is not an object")
        jsep = obj.get("jsep")
        if jsep is not None and (
            not isinstance(jsep, dict)
            or jsep.get("type") not in ("offer", "answer")
            or not isinstance(jsep.get("sdp"), str)
        ):
            raise SfuError("the SFU sent a malformed session description")
        return JanusReply(
            kind=kind,
            transaction=txn if isinstance(txn, str) else None,
            session_id=_int(obj.get("session_id")),
            sender=_int(obj.get("sender")),
            data=data,
            jsep=jsep,
            error=error,
        )
