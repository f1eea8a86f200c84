"""The key-transparency events as declared in protocol/kt.py: what they accept, what
they refuse, and that the server dispatches on them."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from sottovoce.limits import KT_MAX_LOG_SIZE, KT_MAX_VERSIONS
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.fields import ProtocolError
from sottovoce.protocol.kt import KTHead, KTHeadResult, KTHistory, KTLookup, KTResponse


def test_requests_parse_with_since_defaulting_to_zero() -> None:
    assert KTHead.from_data({}).since == 0
    assert KTHead.from_data({"since": 5}).since == 5
    assert KTLookup.from_data({"username": "alice"}) == KTLookup(username="alice", since=0)
    assert KTHistory.from_data({"since": KT_MAX_LOG_SIZE}).since == KT_MAX_LOG_SIZE
    for cls in (KTHead, KTLookup, KTHistory):
        assert pr.ALL_CLIENT_EVENTS[cls.name] is cls
    # A history page starts at a version; without start, the whole history.
    assert KTHistory.from_data({}).start is None and "start" not in KTHistory().to_data()
    assert KTHistory.from_data({"start": KT_MAX_VERSIONS}).start == KT_MAX_VERSIONS
    assert KTHistory(since=3, start=0).to_data() == {"since": 3, "start": 0}


@pytest.mark.parametrize(("cls", "data", "field"), [
    (KTHead, {"since": -1}, "since"),
    (KTHead, {"since": KT_MAX_LOG_SIZE + 1}, "since"),
    (KTHead, {"since": True}, "since"),
    (KTHead, {"since": "3"}, "since"),
    (KTLookup, {}, "username"),
    (KTLookup, {"username": "a b"}, "username"),
    (KTLookup, {"username": "x" * 129}, "username"),
    (KTHistory, {"since": 1.5}, "since"),
    (KTHistory, {"start": -1}, "start"),
    (KTHistory, {"start": KT_MAX_VERSIONS + 1}, "start"),
    (KTHistory, {"start": "0"}, "start"),
])
def test_malformed_requests_are_refused_naming_the_field(
    cls: Any, data: dict[str, Any], field: str
) -> None:
    with pytest.raises(ProtocolError) as err:
        cls.from_data(data)
    assert err.value.code == "bad_request"
    assert field in str(err.value)


def test_results_round_trip() -> None:
    h = bytes(range(32))
    head = KTHeadResult(checkpoint="o\n1\nAA==\n\n— o x\n", consistency=(h, h),
                        log_key="o+01020304+AQ==", vrf_key=h, witnesses=("w+01020304+BA==",))
    assert KTHeadResult.from_wire(head.to_wire()) == head
    assert head.to_wire()["consistency"] == [base64.b64encode(h).decode()] * 2
    resp = KTResponse(response=b"\x01\x02")
    assert KTResponse.from_wire(resp.to_wire()) == resp
    with pytest.raises(ProtocolError):
        KTHeadResult.from_wire({**head.to_wire(), "consistency": ["AAAA"]})
