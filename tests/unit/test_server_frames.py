"""The hot-path frame builders (server/frames.py) against the JSON they stand for.

``stored_ack_text`` builds the durable send's ack in one f-string of its own; it must
say exactly what ``ack_text`` says for the same send, and both must be the JSON of
``ksmpv3.send.ack``.
"""

from __future__ import annotations

import json

import pytest

from sottovoce.server.frames import ack_text, inbox_frame_text, stored_ack_text
from sottovoce.server.storage.base import SendOutcome


@pytest.mark.parametrize("request_id", [None, "r-7"])
@pytest.mark.parametrize("duplicate", [False, True])
def test_stored_ack_is_the_ack_of_the_same_send(request_id: str | None, duplicate: bool) -> None:
    out = SendOutcome("dm:a:b", "m-1", "k-1", 42, 1_700_000_000_123, duplicate, ())
    text = stored_ack_text(request_id, "dm:a:b", out)
    assert text == ack_text(
        request_id, message_id="m-1", idempotency_key="k-1", conversation_id="dm:a:b",
        server_seq=42, received_at_ms=1_700_000_000_123, duplicate=duplicate,
    )
    want: dict[str, object] = {
        "event": "ksmpv3.send.ack",
        "data": {
            "messageId": "m-1", "idempotencyKey": "k-1", "conversationId": "dm:a:b",
            "serverSeq": 42, "serverReceivedAtMs": 1_700_000_000_123, "duplicate": duplicate,
        },
    }
    if request_id is not None:
        want["requestId"] = request_id
    assert json.loads(text) == want


def test_ephemeral_ack_names_its_own_sequence() -> None:
    text = ack_text(None, message_id="m", idempotency_key="k", conversation_id="c",
                    server_seq=3, received_at_ms=5, duplicate=False, ephemeral=True)
    data = json.loads(text)["data"]
    assert data["ephemeralSeq"] == 3 and "serverSeq" not in data


def test_inbox_frame_wraps_the_envelope_as_it_is() -> None:
    envelope = '{"messageId":"m-1","serverSeq":2}'
    frame = json.loads(inbox_frame_text(9, envelope))
    assert frame == {
        "event": "ksmpv3.inbox.frame",
        "data": {"globalInboxSeq": 9, "envelope": {"messageId": "m-1", "serverSeq": 2}},
    }
