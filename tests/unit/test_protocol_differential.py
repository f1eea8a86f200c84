"""The declared events parse exactly as the hand-written parsers they replaced.

``sottovoce.protocol._legacy_events`` is the old parse code, kept only for this test.
Every frame below goes through the old parser and through the declared event (or
struct): both must accept it with the same values, or both refuse it with the same
error class and wire code. The frames are the ones the existing tests send (the
send validator's, the envelope tests', the room frame tests', the round-trip test's,
and the conformance suite's bad-input cases), and a fuzz corpus that mutates valid
frames (fields dropped, wrong types, oversize, unicode, nested junk).

When this test is retired, ``protocol/_legacy_events.py`` goes with it.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sottovoce.limits import (
    MAX_CIPHERTEXT_BYTES,
    MAX_KEY_PACKAGE_BYTES,
    MAX_ROOM_AUDIT_ENTRY_BYTES,
    MAX_ROOM_COMMIT_BYTES,
    MAX_ROOM_MEMBERS,
    MAX_SEND_DEVICES,
)
from sottovoce.protocol import _legacy_events as legacy
from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.fields import ProtocolError
from sottovoce.protocol.spec import Declared, WireStruct
from sottovoce.secret import Secret
from tests.integration.test_server_robustness import BAD_FRAMES
from tests.unit.test_client_rooms import _envelope as room_envelope
from tests.unit.test_protocol_events import _wire as envelope
from tests.unit.test_protocol_events import (
    test_a_sequence_under_the_wrong_name_is_refused as wrong_sequence_name,
)
from tests.unit.test_server_sendview import GOOD as GOOD_SEND

Data = dict[str, Any]
Parser = Callable[[Data], Any]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _send(**patch: Any) -> Data:
    return {**GOOD_SEND, **patch}


ROOM = "room:" + "0f" * 16
TOKEN = "t" * 43
MEMBER = {"userId": "bob", "deviceId": "d1"}

# --- what is parsed, by whom ------------------------------------------------------------

#: label -> (old parser, new parser); client events by their wire name.
#: Events added after the old parsers were frozen have no old twin and are not compared.
PARSERS: dict[str, tuple[Parser, Parser]] = {
    name: (old, pr.ALL_CLIENT_EVENTS[name].from_data) for name, old in legacy.CLIENT_PARSERS.items()
}
PARSERS.update({
    "envelope": (legacy.parse_envelope, ev.Envelope.from_wire),
    "room envelope": (legacy.parse_room_envelope, pr.RoomEnvelope.from_wire),
    "error": (legacy.parse_wire_error, ev.WireError.from_data),
    "inbox frame": (legacy.parse_inbox_frame, ev.parse_inbox_frame),
    "room frame": (legacy.parse_room_frame, pr.parse_room_frame),
})

# --- valid frames, one or more per parser -----------------------------------------------

VALID: dict[str, list[Data]] = {
    "sottovoce.register": [{"certificate": _b64(b"c" * 200), "signature": _b64(b"s" * 64)}],
    "sottovoce.device.add": [{"certificate": _b64(b"c" * 200), "signature": _b64(b"s" * 64)}],
    "sottovoce.auth": [{"username": "alice", "deviceId": "d1", "signature": _b64(b"s" * 64)}],
    "sottovoce.username.check": [{"username": "alice"}],
    "sottovoce.directory.lookup": [{"username": "alice"}],
    "sottovoce.prekeys.upload": [
        {"oneTimeKeys": [_b64(b"k1"), _b64(b"k2")], "fallbackKey": _b64(b"f")},
        {"oneTimeKeys": [], "fallbackKey": None},
    ],
    "sottovoce.prekeys.claim": [{"username": "alice"}],
    "ksmpv3.send": [GOOD_SEND, _send(senderUserId="alice", ephemeral=True)],
    "ksmpv3.ack.read": [{"upToGlobalInboxSeq": 7}],
    "ksmpv3.resume": [{"lastGlobalInboxSeq": 3}, {}],
    "ping": [{}],
    "sottovoce.push.register": [{"endpoint": "https://127.0.0.1/push/1"}],
    "sottovoce.device.revoke": [{"revocation": _b64(b"r" * 100)}],
    "sottovoce.account.delete": [{"statement": _b64(b"s" * 100)}],
    "sottovoce.keypackages.upload": [
        {"keyPackages": [_b64(b"kp1"), _b64(b"kp2")], "lastResort": _b64(b"lr")},
        {"keyPackages": [], "lastResort": _b64(b"lr")},
    ],
    "sottovoce.keypackages.claim": [{"username": "bob"}],
    "sottovoce.room.create": [{"roomId": ROOM, "groupInfo": _b64(b"gi")}, {"roomId": ROOM}],
    "sottovoce.room.commit": [
        {"roomId": ROOM, "epoch": 3, "messageId": "m", "idempotencyKey": "k",
         "commit": _b64(b"c"), "welcome": _b64(b"w"), "adds": [MEMBER], "removes": [],
         "groupInfo": _b64(b"g"), "audit": None, "token": TOKEN},
        {"roomId": ROOM, "epoch": 0, "messageId": "m", "idempotencyKey": "k",
         "commit": _b64(b"c"), "welcome": None, "adds": [],
         "removes": [{"userId": "carol", "deviceId": "c1"}], "groupInfo": None,
         "audit": _b64(b"a"), "token": None},
    ],
    "sottovoce.room.send": [
        {"roomId": ROOM, "epoch": 3, "messageId": "m", "idempotencyKey": "k",
         "contentType": "text", "clientCreatedAtMs": 5, "ciphertext": _b64(b"x")},
    ],
    "sottovoce.room.ack": [{"roomId": ROOM, "upToServerSeq": 9}],
    "sottovoce.room.sync": [{"roomId": ROOM, "afterServerSeq": 2}, {"roomId": ROOM}],
    "sottovoce.room.info": [{"roomId": ROOM}],
    "sottovoce.rooms.list": [{}],
    "sottovoce.room.token.set": [{"roomId": ROOM, "token": TOKEN, "audit": _b64(b"a")}],
    "sottovoce.room.token.revoke": [{"roomId": ROOM, "audit": None}],
    "sottovoce.room.groupinfo.get": [{"token": TOKEN}, {"roomId": ROOM}],
    "sottovoce.room.join.request": [{"token": TOKEN, "keyPackage": _b64(b"kp")}],
    "sottovoce.room.audit.append": [{"roomId": ROOM, "entry": _b64(b"e")}],
    "sottovoce.room.audit.get": [{"roomId": ROOM, "afterIndex": -1}, {"roomId": ROOM}],
    "envelope": [envelope(serverSeq=7, ephemeral=False), envelope(ephemeralSeq=3, ephemeral=True)],
    "room envelope": [
        room_envelope(),
        room_envelope(roomKind="notice", ciphertext="AA==",
                      removeRequest={"userId": "bob", "deviceId": "d2", "reason": "revoked"}),
        room_envelope(roomKind="notice", adds=None, joinRequest=MEMBER),
    ],
    "error": [
        {"code": "device_mismatch", "message": "no", "retryable": False, "retryAfterMs": 0,
         "messageId": "m1", "details": {"missing": [MEMBER], "stale": []}},
        {"code": "rate_limited", "retryable": True, "retryAfterMs": 1000},
    ],
    "inbox frame": [{"globalInboxSeq": 4, "envelope": envelope(serverSeq=7)}],
    "room frame": [{"envelope": room_envelope()}],
}
for _frames in VALID.values():  # adds=None above means "no adds key"
    for _f in _frames:
        if _f.get("adds", []) is None:
            del _f["adds"]


def _commit(**extra: Any) -> Data:
    return {**VALID["sottovoce.room.commit"][1], "removes": [], **extra}


def _room_send(**extra: Any) -> Data:
    return {**VALID["sottovoce.room.send"][0], **extra}



def _patches(*patches: Data) -> list[Data]:
    return list(patches)


def _parameters(test: Callable[..., None]) -> list[Data]:
    """The values a test is parametrized with (its one parameter)."""
    (mark,) = (m for m in test.pytestmark if m.name == "parametrize")  # type: ignore[attr-defined]
    return list(mark.args[1])


#: (parser label, frame) that the existing tests send and expect refused or accepted.
EXISTING: list[tuple[str, Data]] = [
    # the envelope tests: a sequence under the wrong name (their own parameters)
    *(("envelope", envelope(**f)) for f in _parameters(wrong_sequence_name)),
    # the client's room frame tests
    *(("room envelope", room_envelope(**f)) for f in _patches(
        {"roomKind": "gossip"},
        {"conversationId": "dm:alice:bob"},
        {"serverSeq": 0},
        {"adds": [{"userId": "carol"}]},
        {"roomEpoch": "3"},
    )),
    # the relay's robustness test: wrong types and values inside a valid send
    *(("ksmpv3.send", _send(**patch)) for patch in _patches(
        {"contentType": "pdf"},
        {"clientCreatedAtMs": "yesterday"},
        {"ephemeral": "yes"},
        {"ciphertexts": []},
        {"ciphertexts": "x"},
        {"ciphertexts": [{"userId": "bob", "deviceId": "d1", "ciphertext": "!!"}]},
        {"ciphertexts": [{"userId": "bob", "deviceId": "d1", "ciphertext": _b64(b"x")}] * 2},
    )),
    ("ksmpv3.ack.read", {"upToGlobalInboxSeq": "7"}),
    ("ksmpv3.ack.read", {"upToGlobalInboxSeq": True}),
    ("ksmpv3.resume", {"lastGlobalInboxSeq": -1}),
    ("sottovoce.account.delete", {}),
    ("sottovoce.account.delete", {"statement": "not base64!"}),
    # the conformance suite's bad room input
    ("sottovoce.room.create", {"roomId": "room:XYZ"}),
    ("sottovoce.room.create", {"roomId": 5}),
    ("sottovoce.room.send", _room_send(epoch="1")),
    ("sottovoce.room.send", _room_send(contentType="html")),
    ("sottovoce.room.send", _room_send(ciphertext="")),
    ("sottovoce.room.send", _room_send(ciphertext="!!")),
    ("sottovoce.room.commit", _commit(adds="all")),
    ("sottovoce.room.commit", _commit(adds=[MEMBER], removes=[MEMBER])),
    ("sottovoce.room.commit", _commit(adds=[MEMBER])),
    ("sottovoce.room.commit", _commit(commit=_b64(b"\0" * (MAX_ROOM_COMMIT_BYTES + 1)))),
    ("sottovoce.room.commit", _commit(welcome=_b64(b"w"))),
    ("sottovoce.room.token.set", {"roomId": ROOM, "token": "short"}),
    ("sottovoce.room.token.set", {"roomId": ROOM, "token": "x" * 40 + "\n"}),
    ("sottovoce.room.ack", {"roomId": ROOM, "upToServerSeq": 0}),
    ("sottovoce.room.audit.append", {"roomId": ROOM, "entry": _b64(b"junk")}),
    ("sottovoce.keypackages.upload", {"keyPackages": []}),
    ("sottovoce.keypackages.upload", {"keyPackages": [_b64(b"\0" * (MAX_KEY_PACKAGE_BYTES + 1))]}),
]

# --- comparing outcomes -----------------------------------------------------------------


def _plain(v: Any) -> Any:
    """Values as comparable data: structs and events as dicts, secrets by their bytes."""
    if isinstance(v, Declared):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}  # type: ignore[arg-type]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return tuple(_plain(x) for x in v)
    if isinstance(v, Secret):
        return ("secret", v.expose())
    return v


#: Optional fields added to events after the old parser was frozen (absent: their default).
ADDED_SINCE = {
    "recoveryKey", "statements", "proposals", "expiresAtMs", "pow", "cap", "suite",
}


def _only_old_keys(new: Any, old: Any) -> Any:
    """``new`` without the fields the old classes did not have (``protocol`` is now one)."""
    if isinstance(new, dict) and isinstance(old, dict):
        extra = set(new) - set(old)
        assert extra <= {"protocol", *ADDED_SINCE}, extra
        return {k: _only_old_keys(new[k], old[k]) for k in old if k in new}
    if isinstance(new, tuple) and isinstance(old, tuple) and len(new) == len(old):
        return tuple(_only_old_keys(n, o) for n, o in zip(new, old, strict=True))
    return new


def _outcome(parse: Parser, data: Data) -> tuple[Any, ...]:
    try:
        return ("ok", _plain(parse(data)))  # neither parser changes its input
    except ProtocolError as exc:
        return ("refused", type(exc), exc.code, str(exc))


def _agree(label: str, data: Data, *, same_message: bool = True) -> tuple[Any, ...]:
    old_parse, new_parse = PARSERS[label]
    old, new = _outcome(old_parse, data), _outcome(new_parse, data)
    assert old[0] == new[0], f"{label}: old {old[:3]}, new {new[:3]} for {data!r:.300}"
    if old[0] == "ok":
        assert _only_old_keys(new[1], old[1]) == old[1], label
        return new
    assert old[1:3] == new[1:3], f"{label}: old {old[1:]}, new {new[1:]} for {data!r:.300}"
    if same_message:
        assert old[3] == new[3], label
    return new


def _round_trip(label: str, data: Data) -> None:
    """What the new serializer writes, the old parser reads as the frame itself."""
    old_parse, new_parse = PARSERS[label]
    if label in ("inbox frame", "room frame"):
        return  # functions, not structs: their parts round-trip under their own labels
    parsed = new_parse(copy.deepcopy(data))
    written = parsed.to_wire() if isinstance(parsed, WireStruct) else parsed.to_data()
    json.dumps(written)  # JSON-ready
    assert _plain(old_parse(written)) == _plain(old_parse(copy.deepcopy(data))), label


# --- the corpus of existing frames ------------------------------------------------------


def test_every_parser_has_valid_frames_and_every_old_event_is_still_dispatched() -> None:
    assert set(VALID) == set(PARSERS)
    assert set(legacy.CLIENT_PARSERS) <= set(pr.ALL_CLIENT_EVENTS)


@pytest.mark.parametrize(("label", "data"), [(k, f) for k, fs in VALID.items() for f in fs],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_valid_frames_parse_alike_and_round_trip(label: str, data: Data) -> None:
    assert _agree(label, data)[0] == "ok"
    _round_trip(label, data)


@pytest.mark.parametrize(("label", "data"), EXISTING, ids=lambda x: x if isinstance(x, str) else "")
def test_frames_of_the_existing_tests_get_the_same_answer(label: str, data: Data) -> None:
    _agree(label, data)


@pytest.mark.parametrize(("text", "code"), [
    *BAD_FRAMES,
    (json.dumps({"event": "ping", "requestId": "", "data": {}}), None),
    (json.dumps({"event": "ping", "requestId": None, "data": {}}), None),
    (json.dumps({"event": "ping", "requestId": "r-1", "data": {}}), None),
    (json.dumps({"event": "ping", "requestId": 7, "data": {}}), "bad_request"),
])
def test_whole_frames_get_the_codes_the_robustness_test_expects(
    text: str | bytes, code: str | None
) -> None:
    """The frame layer is unchanged but for the request id, now read through a kind."""
    try:
        ev.parse_client_event(text)
    except ProtocolError as exc:
        assert exc.code == code
    else:
        assert code is None


# --- every field broken, alone and in pairs ---------------------------------------------

_DROP = object()  # the field is left out


#: The oversized strings, encoded once: encoding them again for every fault tried was
#: most of the pair test's time. Strings are immutable, so every frame may share them.
_OVERSIZE_STRINGS = (
    _b64(b"\0" * (MAX_CIPHERTEXT_BYTES + 1)), _b64(b"\0" * (MAX_ROOM_COMMIT_BYTES + 1)),
)


def _oversize(value: Any) -> list[Any]:
    """Values past a size limit, shaped like ``value`` (where the answer is
    ``payload_too_large``, unlike most faults)."""
    if isinstance(value, list) and value:
        limit = max(MAX_SEND_DEVICES, MAX_ROOM_MEMBERS) + 1
        return [[value[0]] * (MAX_SEND_DEVICES + 1), [value[0]] * limit]
    return list(_OVERSIZE_STRINGS)


def _faults(value: Any) -> list[Any]:
    """Wrong values for a field that holds ``value`` in a valid frame."""
    out: list[Any] = [_DROP, None, "", 0, -1, True, 2**63, 1.5, "!!", "é", "a b", [], {},
                      "x" * 129, "QQ=", *_oversize(value)]
    if isinstance(value, str):
        out += [value + "=", value * 2, value.upper(), value[:-1], value + "\n"]
    if isinstance(value, list) and value:
        out += [value * 2, [None], [""], ["!!"], [{}], [{**value[0], "userId": 5}]
                if isinstance(value[0], dict) else [5]]
    if isinstance(value, dict):
        out += [{k: v for k, v in value.items() if k != "reason"}, {**value, "userId": ""}]
    return out


#: The faults tried in pairs, with the oversizes: a pair's answers differ only if the
#: parsers check fields in another order, which shows where one fault is
#: ``payload_too_large`` and the other ``bad_request``.
_PAIR_FAULTS = [_DROP, None, 5]


def _with(data: Data, faults: dict[str, Any]) -> Data:
    out = dict(data)
    for key, value in faults.items():
        if value is _DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _keys(data: Data) -> list[str]:
    return sorted(set(data) | {"serverSeq", "ephemeralSeq", "senderUserId", "protocol"})


def test_every_field_broken_alone_gets_the_same_answer() -> None:
    for label, frames in VALID.items():
        for data in frames:
            for key in _keys(data):
                for fault in _faults(data.get(key)):
                    _agree(label, _with(data, {key: fault}))
            if isinstance(data.get("envelope"), dict):
                for key in _keys(data["envelope"]):
                    for fault in _faults(data["envelope"].get(key)):
                        _agree(label, {**data, "envelope": _with(data["envelope"], {key: fault})})


def test_every_pair_of_broken_fields_gets_the_same_error() -> None:
    """Two faults: both parsers report the same one first (the same code)."""
    for label, frames in VALID.items():
        for data in frames:
            keys = _keys(data)
            for i, a in enumerate(keys):
                for b in keys[i + 1:]:
                    for fa in [*_PAIR_FAULTS, *_oversize(data.get(a))]:
                        for fb in [*_PAIR_FAULTS, *_oversize(data.get(b))]:
                            _agree(label, _with(data, {a: fa, b: fb}), same_message=False)


# --- the fuzz corpus --------------------------------------------------------------------

BIG_B64 = [_b64(b"\0" * n) for n in (
    MAX_CIPHERTEXT_BYTES + 1, MAX_CIPHERTEXT_BYTES + 2, MAX_ROOM_AUDIT_ENTRY_BYTES + 1, 65, 63,
    MAX_KEY_PACKAGE_BYTES + 1,
)]
SPECIAL = [
    "", " ", "a b", "QQ=", "QQ==", "Q===", "=", "AA==", "x" * 128, "x" * 129, "x" * 2049,
    "é", "\u0000", "\ud7ff", "日本", "room:" + "0" * 32, "room:" + "A" * 32, ROOM, TOKEN,
    "t" * 21, "t" * 22, "t" * 129, "https://127.0.0.1/", "http:/x", "ksmpv3", "ksmpv2",
    "text", "pdf", "commit", "notice", "welcome", "bob", "d1", *BIG_B64,
]
SCALAR = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=12), st.sampled_from(SPECIAL),
)
JUNK = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["userId", "deviceId", "ciphertext", "reason", "x"]),
                        inner, max_size=3),
    ),
    max_leaves=6,
)
#: Keys that some parser treats specially, tried beside the frame's own.
EXTRA_KEYS = ["serverSeq", "ephemeralSeq", "ephemeral", "adds", "removes", "joinRequest",
              "removeRequest", "senderUserId", "fallbackKey", "lastResort", "token", "roomId",
              "welcome", "protocol", "details", "message", "afterIndex", "globalInboxSeq"]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, Data]:
    label = draw(st.sampled_from(sorted(VALID)))
    data = copy.deepcopy(draw(st.sampled_from(VALID[label])))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        target = data
        if "envelope" in data and draw(st.booleans()):
            target = data["envelope"]  # mutate inside the nested envelope
        if not isinstance(target, dict):
            break
        keys = sorted(target) + EXTRA_KEYS
        key = draw(st.sampled_from(keys))
        how = draw(st.sampled_from(["drop", "set", "set", "item", "repeat", "grow"]))
        value = target.get(key)
        if how == "drop":
            target.pop(key, None)
        elif how == "set":
            target[key] = draw(JUNK)
        elif how == "item" and isinstance(value, list) and value:
            i = draw(st.integers(min_value=0, max_value=len(value) - 1))
            item = value[i]
            if isinstance(item, dict) and draw(st.booleans()):
                item = dict(item)
                item[draw(st.sampled_from(["userId", "deviceId", "ciphertext"]))] = draw(JUNK)
                value[i] = item
            else:
                value[i] = draw(JUNK)
        elif how == "repeat" and isinstance(value, list) and value:
            target[key] = value + value[:1]
        elif how == "grow" and isinstance(value, list) and value:
            limit = max(MAX_SEND_DEVICES, MAX_ROOM_MEMBERS) + 1
            target[key] = [value[0]] * draw(st.sampled_from([2, MAX_SEND_DEVICES + 1, limit]))
        elif how == "grow" and isinstance(value, str):
            target[key] = value * draw(st.sampled_from([2, 64, 5000]))
    return label, data


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_mutated_frames_get_the_same_answer(case: tuple[str, Data]) -> None:
    label, data = case
    outcome = _agree(label, data, same_message=False)
    if outcome[0] == "ok":
        _round_trip(label, data)
