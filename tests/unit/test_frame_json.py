"""Frames are decoded by msgspec first and json.loads second (protocol/events.py
``_loads``): for every input the result must be json.loads' own, value for value and
type for type, and every refusal json.loads' own exception class."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sottovoce.protocol.events import _loads, parse_frame
from sottovoce.protocol.fields import ProtocolError


def _typed(value: Any) -> Any:
    """A comparable form that tells 1, 1.0, True, -0.0 and NaN apart."""
    if isinstance(value, dict):
        return ("dict", [(k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else repr(value))
    return (type(value).__name__, value)


def _outcome(fn: Any, text: str | bytes) -> tuple[str, Any]:
    try:
        return ("ok", _typed(fn(text)))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return ("error", type(exc))


def _same(text: str | bytes) -> None:
    assert _outcome(_loads, text) == _outcome(json.loads, text), text


CORNERS = [
    '{"a":1,"a":2}', '"\\ud800"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"', "1e400", "-1e400",
    "[1e-400]", "18446744073709551616", "18446744073709551615", "-9223372036854775809",
    "123456789012345678901234567890", "-0", "-0.0", "NaN", "-Infinity", "Infinity",
    "\ufeff{}", " {} ", "{}\n", '"\\u0000"', '"\x7f"', '"\x00"', '"\\/"', "1.7976931348623157e308",
    "0.1e1", "1E2", "01", "1.", ".5", "[1,]", '{"a":1,}', "", " ", "nul", "[" * 2000 + "]" * 2000,
    "[" * 900 + "]" * 900, '{"event":"ksmpv3.send","data":{"n":99999999999999999999999}}',
    "tru", "true false", '"\u2028\u2029"', '"\\x41"', "{'a':1}", '{"a" 1}',
]

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=20,
)


@pytest.mark.parametrize("text", CORNERS)
def test_corner_cases_decode_as_json_loads_does(text: str) -> None:
    _same(text)
    _same(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_serialized_values_decode_as_json_loads_does(value: Any, ascii_only: bool) -> None:
    _same(json.dumps(value, ensure_ascii=ascii_only))


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.integers(min_value=0, max_value=40), st.text(max_size=3))
def test_damaged_text_decodes_or_fails_as_json_loads_does(value: Any, cut: int, junk: str
                                                          ) -> None:
    text = json.dumps(value, ensure_ascii=False)
    _same(text[:cut] + junk + text[cut:])
    _same(text[:cut])


def test_a_frame_that_only_json_accepts_is_still_parsed() -> None:
    """NaN is json's extension, not RFC 8259: msgspec refuses it, json.loads takes it."""
    event, rid, data = parse_frame('{"event":"x","requestId":"r1","data":{"v":NaN}}')
    assert (event, rid) == ("x", "r1") and math.isnan(data["v"])
    with pytest.raises(ProtocolError) as err:
        parse_frame('{"event":"x",}')
    assert err.value.code == "bad_json"
