"""The relay's fast ``ksmpv3.send`` validator accepts a subset of ``Send.from_data``.

For any input the fast path accepts, the contract's own validator must accept
it too and agree on every field; everything else falls back to the contract's
validator, so the relay can never be more lenient than the contract.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sottovoce.protocol.events import Send, parse_frame
from sottovoce.protocol.fields import ProtocolError
from sottovoce.server import sendview
from sottovoce.server.sendview import fast_send, parse_send, send_frame

GOOD: dict[str, Any] = {
    "protocol": "ksmpv3",
    "conversationId": "dm:alice:bob",
    "messageId": "m-1",
    "idempotencyKey": "k-1",
    "recipientUserId": "bob",
    "contentType": "text",
    "clientCreatedAtMs": 1_700_000_000_000,
    "ephemeral": False,
    "ciphertexts": [
        {"userId": "bob", "deviceId": "d1", "ciphertext": base64.b64encode(b"x" * 50).decode()},
        {"userId": "alice", "deviceId": "d2", "ciphertext": "QUJD"},
    ],
}

WEIRD = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-5, max_value=2**64),
    st.text(max_size=140), st.sampled_from(["", "a b", "QQ=", "QQ==", "Q===", "=", "x" * 129,
                                            "text", "pdf", "ksmpv3", "ksmpv2", "é"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers()),
)
FIELDS = [k for k in GOOD if k != "ciphertexts"]
ITEM_FIELDS = ["userId", "deviceId", "ciphertext"]


def _agree(data: dict[str, Any]) -> None:
    fast = fast_send(data)
    try:
        ev = Send.from_data(data)
    except ProtocolError:
        assert fast is None, f"fast path accepted what the contract refuses: {data}"
        return
    if fast is None:
        return  # the fallback handles it
    assert fast.conversationId == ev.conversationId and fast.messageId == ev.messageId
    assert fast.idempotencyKey == ev.idempotencyKey
    assert fast.recipientUserId == ev.recipientUserId and fast.contentType == ev.contentType
    assert fast.clientCreatedAtMs == ev.clientCreatedAtMs
    assert fast.expiresAtMs == ev.expiresAtMs
    assert fast.senderUserId == ev.senderUserId and fast.ephemeral == ev.ephemeral
    assert [(u, d, base64.b64decode(c)) for u, d, c in fast.targets] == [
        (c.userId, c.deviceId, c.ciphertext) for c in ev.ciphertexts
    ]


def test_fast_path_accepts_the_common_shape() -> None:
    view = fast_send(GOOD)
    assert view is not None and view.targets[1] == ("alice", "d2", "QUJD")
    _agree(GOOD)


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from([*FIELDS, "senderUserId", "expiresAtMs", "missing"]), value=WEIRD)
def test_fast_path_is_never_more_lenient_on_fields(field: str, value: Any) -> None:
    data = dict(GOOD)
    if field == "missing":
        del data["conversationId"]
    else:
        data[field] = value
    _agree(data)


def _mutated_items(index: int, field: str, value: Any, dup: bool) -> list[dict[str, Any]]:
    """GOOD's ciphertext items with item ``index``'s ``field`` set to ``value`` (or its
    ciphertext dropped), and the first item repeated when ``dup``."""
    items = [dict(i) for i in GOOD["ciphertexts"]]
    if field == "drop":
        del items[index]["ciphertext"]
    else:
        items[index][field] = value
    if dup:
        items.append(dict(items[0]))
    return items


@settings(max_examples=400, deadline=None)
@given(index=st.integers(0, 1), field=st.sampled_from([*ITEM_FIELDS, "drop"]), value=WEIRD,
       dup=st.booleans())
def test_fast_path_is_never_more_lenient_on_ciphertexts(
    index: int, field: str, value: Any, dup: bool
) -> None:
    items = _mutated_items(index, field, value, dup)
    _agree({**GOOD, "ciphertexts": items})


def test_parse_send_falls_back_to_the_contract_error() -> None:
    bad = {**GOOD, "contentType": "pdf"}
    try:
        parse_send(bad)
    except ProtocolError as exc:
        assert exc.code == "bad_request" and "contentType" in str(exc)
    else:
        raise AssertionError("invalid send accepted")
    no_protocol = {k: v for k, v in GOOD.items() if k != "protocol"}
    assert parse_send(no_protocol).messageId == "m-1"


def test_ciphertext_limit_is_exact_on_decoded_bytes() -> None:
    """One byte over the limit has the same base64 length as the limit itself (base64
    rounds up to groups of four), so only a check on the decoded bytes refuses it."""
    from sottovoce.limits import MAX_CIPHERTEXT_BYTES

    def send_with(n: int) -> dict[str, Any]:
        items = [dict(i) for i in GOOD["ciphertexts"]]
        items[0]["ciphertext"] = base64.b64encode(b"\x01" * n).decode()
        return {**GOOD, "ciphertexts": items}

    over = MAX_CIPHERTEXT_BYTES + 1
    assert len(base64.b64encode(b"\x01" * over)) == len(
        base64.b64encode(b"\x01" * MAX_CIPHERTEXT_BYTES)
    )
    assert parse_send(send_with(MAX_CIPHERTEXT_BYTES)) is not None
    try:
        parse_send(send_with(over))
    except ProtocolError as exc:
        assert exc.code == "payload_too_large"
    else:
        raise AssertionError("a ciphertext one byte over the limit was accepted")


def test_remembered_ids_never_admit_a_bad_one() -> None:
    """Ids that passed once are remembered; a bad id in the same places is still refused,
    and the memory stays bounded however many ids a client cycles through."""
    assert fast_send(GOOD) is not None  # the good ids are remembered now
    assert {"dm:alice:bob", "bob", "alice", "d1"} <= sendview._KNOWN_IDS
    for bad in ("a b", "", "é", "x" * 129):
        assert fast_send({**GOOD, "conversationId": bad}) is None
        assert fast_send({**GOOD, "recipientUserId": bad}) is None
        items = [{**GOOD["ciphertexts"][0], "deviceId": bad}, GOOD["ciphertexts"][1]]
        assert fast_send({**GOOD, "ciphertexts": items}) is None
        items = [{**GOOD["ciphertexts"][0], "userId": bad}, GOOD["ciphertexts"][1]]
        assert fast_send({**GOOD, "ciphertexts": items}) is None
    assert not any(" " in i or not i for i in sendview._KNOWN_IDS)
    for n in range(sendview._KNOWN_IDS_MAX + 10):
        assert fast_send({**GOOD, "recipientUserId": f"u{n}"}) is not None
    assert len(sendview._KNOWN_IDS) <= sendview._KNOWN_IDS_MAX


B64_LIKE = st.text(alphabet=st.sampled_from(
    "ABCxyz019+/=-_ .\n\x00é\u00e9\U0001f600"), max_size=12)


@settings(max_examples=2000, deadline=None)
@given(ct=st.one_of(B64_LIKE, st.text(max_size=12)))
def test_base64_check_is_the_alphabet_then_at_most_two_pads(ct: str) -> None:
    import re

    want = re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", ct) is not None
    assert sendview._b64(ct) is want


def test_base64_check_on_padding_and_foreign_characters() -> None:
    for ok in ("", "QUJD", "QQ==", "QUI=", "a+/Z", "Q==="[:3]):
        assert sendview._b64(ok), ok
    for bad in ("Q===", "QQ=Q", "=QQQ", "QU JD", "QUJD\n", "QUJ\u00e9", "QU-_", "QUJ\x00"):
        assert not sendview._b64(bad), bad


def _frame_agrees(obj: dict[str, Any]) -> None:
    """The relay's one-pass decode of a whole frame gives what parse_frame then parse_send
    give, or None (then those two run and answer, as for any frame)."""
    text = json.dumps(obj)
    got = send_frame(text)
    assert got == send_frame(text.encode())
    try:
        event, rid, data = parse_frame(text)
        want = parse_send(data) if event == "ksmpv3.send" else None
    except ProtocolError:
        assert got is None, f"one-pass decode accepted a refused frame: {text}"
        return
    if got is not None:
        assert want is not None, f"one-pass decode took another event: {text}"
        assert got == (rid, want)


def test_send_frame_takes_the_common_shape_only() -> None:
    assert send_frame(json.dumps({"event": "ksmpv3.send", "data": GOOD})) == (None, fast_send(GOOD))
    ok = send_frame(json.dumps({"event": "ksmpv3.send", "requestId": "r-1", "data": GOOD}))
    assert ok is not None and ok[0] == "r-1"
    assert send_frame(json.dumps({"event": "ksmpv3.send", "requestId": "", "data": GOOD})) == (
        None, fast_send(GOOD))
    for obj in (
        {"event": "ksmpv3.ack.read", "data": GOOD},
        {"event": "ksmpv3.send", "requestId": "a b", "data": GOOD},
        {"event": "ksmpv3.send", "requestId": 5, "data": GOOD},
        {"event": "ksmpv3.send", "data": {**GOOD, "clientCreatedAtMs": None}},
        {"event": "ksmpv3.send", "data": {**GOOD, "ciphertexts": "QUJD"}},
        {"event": "ksmpv3.send"},
    ):
        assert send_frame(json.dumps(obj)) is None, obj
        _frame_agrees(obj)
    # Duplicate keys: the last one counts, as for json.loads.
    good = json.dumps(GOOD)
    assert send_frame('{"event":"ksmpv3.send","event":"ksmpv3.ping","data":' + good + "}") is None
    twice = send_frame('{"event":"ksmpv3.ping","event":"ksmpv3.send","data":' + good + "}")
    assert twice is None or twice == (None, fast_send(GOOD))
    first = json.dumps({**GOOD, "messageId": "m-0"})
    last = send_frame('{"event":"ksmpv3.send","data":' + first + ',"data":' + good + "}")
    assert last == (None, fast_send(GOOD))
    # Too large for a frame: parse_frame refuses it with its own code.
    from sottovoce.limits import MAX_FRAME_BYTES

    big = json.dumps({"event": "ksmpv3.send", "pad": "x" * MAX_FRAME_BYTES, "data": GOOD})
    assert send_frame(big) is None


RIDS = st.one_of(
    st.text(max_size=140),
    st.text(st.characters(codec="ascii"), min_size=120, max_size=135),
    st.from_regex(r"r[0-9]{1,20}", fullmatch=True),
    st.text(alphabet="aZ09é٣Ⅻ_-. ", max_size=130),
    st.sampled_from(["r1", "R" + "7" * 127, "r" + "7" * 128, "r-1", "é", "٣", "Ⅻ", "a\n", "\x00"]),
)


@settings(max_examples=600, deadline=None)
@given(rid=RIDS)
def test_send_frame_takes_the_request_ids_the_id_pattern_takes(rid: str) -> None:
    """The requestId check (an alphanumeric shortcut, then the pattern) accepts exactly
    what the protocol's id pattern does; the empty id reads as none."""
    taken = send_frame(json.dumps({"event": "ksmpv3.send", "requestId": rid, "data": GOOD}))
    if rid == "":
        assert taken == (None, fast_send(GOOD))
    elif sendview._ID(rid) is not None:
        assert taken is not None and taken[0] == rid
    else:
        assert taken is None


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from([*FIELDS, "senderUserId", "expiresAtMs", "missing"]), value=WEIRD,
       rid=st.one_of(st.none(), st.just("r-1"), WEIRD))
def test_send_frame_agrees_on_fields(field: str, value: Any, rid: Any) -> None:
    data = dict(GOOD)
    if field == "missing":
        del data["conversationId"]
    else:
        data[field] = value
    _frame_agrees({"event": "ksmpv3.send", "requestId": rid, "data": data})


@settings(max_examples=400, deadline=None)
@given(index=st.integers(0, 1), field=st.sampled_from([*ITEM_FIELDS, "drop"]), value=WEIRD,
       dup=st.booleans())
def test_send_frame_agrees_on_ciphertexts(index: int, field: str, value: Any, dup: bool) -> None:
    items = _mutated_items(index, field, value, dup)
    _frame_agrees({"event": "ksmpv3.send", "data": {**GOOD, "ciphertexts": items}})
