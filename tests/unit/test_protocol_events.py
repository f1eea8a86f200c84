"""The KSMP v3 envelope as clients parse it (protocol/events.py): a stored message has a
serverSeq, an ephemeral one an ephemeralSeq, never both, never the other."""

from __future__ import annotations

from typing import Any

import pytest

from sottovoce.protocol.events import Envelope
from sottovoce.protocol.fields import ProtocolError


def _wire(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "protocol": "ksmpv3", "conversationId": "dm:a:b", "messageId": "m1",
        "senderUserId": "a", "senderDeviceId": "d1", "recipientUserId": "b",
        "ciphertext": "eA==", "contentType": "text", "clientCreatedAtMs": 1,
        "serverReceivedAtMs": 2, "idempotencyKey": "k1",
    }
    base.update(extra)
    return base


def test_stored_envelope_has_a_server_seq_and_round_trips() -> None:
    env = Envelope.from_wire(_wire(serverSeq=7, ephemeral=False))
    assert (env.serverSeq, env.ephemeralSeq, env.ephemeral) == (7, 0, False)
    assert Envelope.from_wire(env.to_wire()) == env
    assert "ephemeralSeq" not in env.to_wire()


def test_ephemeral_envelope_has_an_ephemeral_seq_and_round_trips() -> None:
    env = Envelope.from_wire(_wire(ephemeralSeq=3, ephemeral=True))
    assert (env.serverSeq, env.ephemeralSeq, env.ephemeral) == (0, 3, True)
    assert Envelope.from_wire(env.to_wire()) == env
    assert "serverSeq" not in env.to_wire()


@pytest.mark.parametrize("fields", [
    {"ephemeral": True, "serverSeq": 3},  # the confusion this rule exists for
    {"ephemeral": True, "serverSeq": 3, "ephemeralSeq": 3},
    {"ephemeral": False, "ephemeralSeq": 3},
    {"ephemeral": False, "serverSeq": 3, "ephemeralSeq": 3},
    {"ephemeral": True},
    {"ephemeral": False},
])
def test_a_sequence_under_the_wrong_name_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        Envelope.from_wire(_wire(**fields))
