"""The room-call wiring's own rules (docs/calls.md, "Room calls"): what a client takes
from the server as an SFU grant, how the server reads --sfu and --sfu-key-file, and
how the room-call hub routes the signals the room's message path hands it."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from sottovoce.calls.room_call import CALL_MLS_SUITE
from sottovoce.calls.room_signals import CallMode, Start
from sottovoce.client.calls.room_calls import RoomCalls, access_from_wire
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import RemoteError, UsageError
from sottovoce.protocol.audit import AuditAction
from sottovoce.server.config import load_config

GRANT = {"url": "ws://127.0.0.1:8188/", "room": "ab" * 16, "feedId": "cd" * 16,
         "token": "ef" * 16, "expiresAt": 1}


def test_a_grant_from_the_server_becomes_the_sfu_access_it_names() -> None:
    access = access_from_wire(GRANT)
    assert (access.url, access.room, access.feed_id, access.token) == (
        GRANT["url"], GRANT["room"], GRANT["feedId"], GRANT["token"]
    )


@pytest.mark.parametrize("change", [
    {"url": "http://127.0.0.1:8188/"},  # not a WebSocket URL
    {"room": ""},
    {"feedId": 7},
    {"token": "x" * 600},
    {"url": None},
])
def test_a_malformed_grant_is_a_remote_error(change: dict[str, Any]) -> None:
    with pytest.raises(RemoteError):
        access_from_wire({**GRANT, **change})


def test_sfu_and_its_key_file_go_together_and_a_bad_url_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "sfu-key"
    key.write_text("k" * 32 + "\n")
    config = load_config({"sfu": "eu=ws://127.0.0.1:8188/", "sfu_key_file": str(key)},
                         environ={})
    assert [(e.region, e.url) for e in config.sfu] == [("eu", "ws://127.0.0.1:8188/")]
    with pytest.raises(UsageError, match="together"):
        load_config({"sfu": "ws://127.0.0.1:8188/"}, environ={})
    with pytest.raises(UsageError, match="together"):
        load_config({"sfu_key_file": str(key)}, environ={})
    with pytest.raises(UsageError, match="not an SFU WebSocket URL"):
        load_config({"sfu": "ftp://127.0.0.1/", "sfu_key_file": str(key)}, environ={})


def _hub(sent: list[tuple[str, bytes]]) -> RoomCalls:
    async def send(room_id: str, signal: bytes) -> None:
        sent.append((room_id, signal))

    async def audit(room_id: str, action: AuditAction) -> None:
        return None

    async def grant(room_id: str, call_id: bytes) -> dict[str, Any]:
        raise AssertionError("not asked in these tests")

    key = cipher_suite(CALL_MLS_SUITE).generate_signing_key(secrets.token_bytes)
    return RoomCalls(me=("bob", "b1"), signing_key=key, send_signal=send,
                     leaf_keys=lambda room_id: {}, append_audit=audit, ask_grant=grant)


def test_a_start_is_remembered_per_room_only_from_its_own_sender_and_joined() -> None:
    hub = _hub([])
    start = Start(call_id=b"c" * 16, from_user="alice", from_device="a1", mode=CallMode.SFU)
    # A member relaying someone else's start is not taken for it.
    hub.receive("room-1", ("mallory", "m1"), start.encode())
    assert hub.seen == {}
    hub.receive("room-1", ("alice", "a1"), b"\x00not a signal")  # skipped, no error
    hub.receive("room-1", ("alice", "a1"), start.encode())
    seen = hub.seen["room-1"]
    assert (seen.call_id, seen.mode, seen.starter) == (b"c" * 16, CallMode.SFU, ("alice", "a1"))
    with pytest.raises(UsageError, match="no call"):
        hub.join("room-2")
