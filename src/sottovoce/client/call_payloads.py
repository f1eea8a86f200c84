"""What a 1:1 call puts inside the Olm payload (the server sees neither kind).

Two payload content types, both under the outer ``contentType: "text"`` of any
message, so the relay cannot tell a call from a chat:

``call``
    the call signals of one send for one device, sent only ephemerally (never
    stored)::

        struct { opaque signal<V>; } CallSignals[];   // empty: nothing for this device

``call-missed``
    a durable entry in both histories, sent by the caller's device when nobody
    answered (UTF-8 JSON)::

        {"v": 1, "callId": "<32 hex digits>", "video": true|false}

    The caller's copy reads "no answer", the callee's "missed call".
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.client.payload import json_body, read_json_body
from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError

CALL_CONTENT_TYPE = "call"
MISSED_CALL_CONTENT_TYPE = "call-missed"
_CALL_ID_BYTES = 16


def encode_signals(signals: list[bytes]) -> bytes:
    """The body of a ``call`` payload for one device."""
    w = Writer()
    for signal in signals:
        w.opaque_v(signal)
    return w.getvalue()


def decode_signals(body: bytes) -> list[bytes]:
    """The signals of a ``call`` body; ``DecodeError`` if it is not one."""

    def read(r: Reader) -> list[bytes]:
        out = []
        while not r.eof():
            out.append(r.opaque_v())
        return out

    return decode(read, body)


@dataclass(frozen=True, slots=True, kw_only=True)
class MissedCall:
    call_id: bytes
    video: bool

    def encode(self) -> str:
        return json_body(callId=self.call_id.hex(), video=self.video)

    @classmethod
    def decode(cls, text: str) -> MissedCall:
        value = read_json_body(text, ("callId", "video"), "missed-call entry")
        if (
            not isinstance(value["video"], bool)
            or not isinstance(value["callId"], str)
            or len(value["callId"]) != 2 * _CALL_ID_BYTES
        ):
            raise DecodeError("missed-call entry has the wrong fields")
        try:
            call_id = bytes.fromhex(value["callId"])
        except ValueError:
            raise DecodeError("missed-call entry has a bad call id") from None
        return cls(call_id=call_id, video=value["video"])


def missed_call_line(text: str, *, outgoing: bool) -> str:
    """How a history shows the entry: the caller's "no answer", the callee's "missed call"."""
    try:
        entry = MissedCall.decode(text)
    except DecodeError:
        return "(a call entry this version cannot read)"
    kind = "video call" if entry.video else "call"
    return f"{kind}: no answer" if outgoing else f"missed {kind}"
