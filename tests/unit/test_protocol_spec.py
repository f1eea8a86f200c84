"""Events declared once (protocol/spec.py): the declaration is the parser and the writer.

The event below is the one protocol/events.py's docstring shows how to add; it must
work as written, with nothing else written for it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.fields import B64, ID, Bool, Int, ProtocolError
from sottovoce.protocol.spec import ClientEvent, event, registry, struct, wire
from tests.unit.test_protocol_differential import VALID

MAX_SDP_BYTES = 64


@event("sottovoce.call.ring")
class CallRing(ClientEvent):
    """Ring the other devices of a 1:1 conversation."""

    conversationId: str = wire(ID)
    callId: str = wire(ID)
    offer: bytes = wire(B64(max_bytes=MAX_SDP_BYTES, nonempty=True))
    video: bool = wire(Bool(), default=False)


GOOD = {"conversationId": "dm:a:b", "callId": "c1", "offer": "b2ZmZXI="}


def _refused(data: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ProtocolError) as err:
        CallRing.from_data(data)
    return err.value.code, str(err.value)


def test_a_new_event_parses_writes_and_frames_from_its_declaration_alone() -> None:
    ring = CallRing.from_data(GOOD)
    assert ring == CallRing(conversationId="dm:a:b", callId="c1", offer=b"offer")
    assert ring.video is False, "an optional field takes its default when missing"
    assert ring.to_data() == {**GOOD, "video": False}
    frame = json.loads(ring.to_frame("r1"))
    assert frame == {"event": "sottovoce.call.ring", "requestId": "r1", "data": ring.to_data()}
    assert CallRing.from_data(frame["data"]) == ring
    assert registry(CallRing)["sottovoce.call.ring"] is CallRing


def test_a_new_event_refuses_with_the_shared_rules_and_codes() -> None:
    assert _refused({**GOOD, "callId": "a b"}) == (
        "bad_request", "field 'callId' contains characters outside [A-Za-z0-9_.:@/+=-]")
    assert _refused({**GOOD, "offer": ""}) == ("bad_request", "field 'offer' must not be empty")
    assert _refused({**GOOD, "offer": "A" * 200})[0] == "payload_too_large"
    assert _refused({**GOOD, "video": None}) == (
        "bad_request", "field 'video' must be true or false")
    assert _refused({"callId": "c1"}) == ("bad_request", "field 'conversationId' must be a string")


def test_faults_are_reported_in_declaration_order() -> None:
    both = {**GOOD, "conversationId": 5, "offer": "A" * 200}
    assert _refused(both)[0] == "bad_request", "conversationId is declared before offer"


def test_a_field_not_declared_with_wire_or_a_name_given_twice_fails_at_import() -> None:
    with pytest.raises(TypeError, match="not declared with wire"):

        @struct
        class Half:
            ok: int = wire(Int())
            plain: int = 0

    with pytest.raises(TypeError, match="two events"):
        registry(ev.Ping, CallRing, ev.Ping)


def test_every_declared_event_is_in_the_registry_the_server_dispatches_on() -> None:
    def named(classes: Any) -> set[str]:
        return {f"{c.__module__}.{c.__qualname__}" for c in classes
                if c.__module__.startswith("sottovoce.") and "name" in vars(c)}

    assert named(_subclasses(ClientEvent)) == named(pr.ALL_CLIENT_EVENTS.values())


def _subclasses(cls: type) -> set[type]:
    out: set[type] = set()
    subs: list[type] = cls.__subclasses__()
    for sub in subs:
        out |= {sub, *_subclasses(sub)}
    return out


@pytest.mark.parametrize("label", sorted(VALID))
def test_a_refusal_names_the_field_never_its_value(label: str) -> None:
    """Error messages reach logs and the peer: they must not carry what was sent
    (it may be ciphertext or a token)."""
    from tests.unit.test_protocol_differential import PARSERS

    marker = "Zm9vYmFy" * 3  # valid base64, a valid id, never a valid room id or URL
    _, parse = PARSERS[label]
    for data in VALID[label]:
        for key in data:
            for value in (marker + "!", [marker + "!"], {"userId": marker + " "}):
                try:
                    parse({**data, key: value})
                except ProtocolError as exc:
                    assert marker not in str(exc), (label, key)
