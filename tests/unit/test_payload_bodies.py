"""The small JSON bodies inside payloads: a missed call and a room invitation.

Both are written and read by one pair of functions, so each rule is checked on
both kinds: exact fields, the known version, UTF-8 only, and the values.
"""

from __future__ import annotations

import json

import pytest

from sottovoce.client.call_payloads import MissedCall
from sottovoce.client.payload import json_body, read_json_body
from sottovoce.client.room_notice import InviteNotice
from sottovoce.errors import DecodeError


def test_bodies_round_trip_compact_and_versioned() -> None:
    missed = MissedCall(call_id=bytes(range(16)), video=True)
    assert missed.encode() == '{"v":1,"callId":"000102030405060708090a0b0c0d0e0f","video":true}'
    assert MissedCall.decode(missed.encode()) == missed
    notice = InviteNotice(name="café ☕", invited="bob")
    assert notice.encode() == '{"v":1,"name":"café ☕","invited":"bob"}'.encode()
    assert InviteNotice.decode(notice.encode()) == notice


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ('{"v":2,"name":"team","invited":"bob"}', "version"),
        ('{"v":1,"name":"team"}', "wrong fields"),
        ('{"v":1,"name":"team","invited":"bob","by":"eve"}', "wrong fields"),
        ('["v",1]', "wrong fields"),
        ("{", "not JSON"),
        ('{"v":1,"name":"team","invited":"Bob Smith!"}', "bad username"),
        ('{"v":1,"name":"team","invited":7}', "bad username"),
    ],
)
def test_an_invitation_with_other_fields_or_version_is_refused(body: str, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        InviteNotice.decode(body.encode("utf-8"))


def test_bytes_are_utf8_only() -> None:
    utf16 = json.dumps({"v": 1, "name": "team", "invited": "bob"}).encode("utf-16")
    with pytest.raises(DecodeError, match="not JSON"):
        InviteNotice.decode(utf16)
    with pytest.raises(DecodeError, match="not JSON"):
        read_json_body(b"\xff{}", (), "body")


def test_a_missed_call_entry_checks_its_values_and_version() -> None:
    good = json.loads(MissedCall(call_id=bytes(16), video=False).encode())
    for bad in ({**good, "v": 0}, {**good, "video": "no"}, {**good, "callId": "00"}):
        with pytest.raises(DecodeError):
            MissedCall.decode(json.dumps(bad))
    assert json.loads(json_body(a=1)) == {"v": 1, "a": 1}
