"""docs/calls.md states what the room-call code does: Janus configs, limits, layout."""

from __future__ import annotations

import re
from pathlib import Path

from sottovoce import limits
from sottovoce.calls import frames
from sottovoce.calls.room_call import CALL_ID_EXTENSION, LEAVE_LABEL

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "calls.md").read_text(encoding="utf-8")
ROOMS = DOC.split("\n# Room calls\n", 1)[1]
JANUS = ROOT / "deploy" / "janus"


def blocks(tag: str) -> list[str]:
    return re.findall(rf"^```{tag}\n(.*?)^```$", ROOMS, flags=re.M | re.S)


def test_the_janus_configs_in_the_docs_are_the_deployed_ones() -> None:
    deployed = [
        (JANUS / name).read_text(encoding="utf-8")
        for name in (
            "janus.jcfg",
            "janus.plugin.videoroom.jcfg",
            "janus.transport.http.jcfg",
            "janus.transport.websockets.jcfg",
        )
    ]
    assert blocks("jcfg") == deployed
    unit = (ROOT / "deploy" / "systemd" / "sottovoce-janus.service").read_text(encoding="utf-8")
    assert blocks("ini") == [unit]
    assert (
        "ExecStart=/usr/bin/janus -F /etc/sottovoce/janus -C /etc/sottovoce/janus/janus.jcfg"
        in unit
    )


def test_the_deployed_janus_exposes_nothing_it_should_not() -> None:
    core = (JANUS / "janus.jcfg").read_text()
    http = (JANUS / "janus.transport.http.jcfg").read_text()
    ws = (JANUS / "janus.transport.websockets.jcfg").read_text()
    room = (JANUS / "janus.plugin.videoroom.jcfg").read_text()
    assert 'ip = "127.0.0.1"' in http and "admin_http = false" in http and "https = false" in http
    assert "admin_ws = false" in ws and "admin_wss = false" in ws
    assert "ignore_mdns = true" in core and "broadcast = false" in core
    assert re.search(r"^\s*rtp_port_range = ", core, re.M)
    assert "string_ids = true" in room and re.search(r"^\s*admin_key = ", room, re.M)
    assert "room-" not in room  # no static rooms
    # Tests-only settings stay out of the deployed config.
    assert not re.search(r"^\s*ice_enforce_list", core, re.M)


def test_the_documented_room_call_limits_and_layout_are_the_codes() -> None:
    assert limits.MESH_MAX_PARTICIPANTS == 4 and "| mesh participants | 4 |" in ROOMS
    assert limits.ROOM_CALL_MAX_PARTICIPANTS == 32 and "through an SFU | 32 |" in ROOMS
    assert limits.CALL_EPOCH_GRACE_MS == 2_000 and "at most 2 s" in ROOMS
    assert limits.CALL_COMMIT_STAGGER_MS == 3_000 and "r × 3 s" in ROOMS
    assert limits.CALL_RECORDING_CONSENT_MS == 20_000 and "within 20 s" in ROOMS
    assert limits.SFU_GRANT_TTL_MS == 60_000 and "| SFU grant | 60 s |" in ROOMS
    assert limits.SFRAME_REPLAY_WINDOW == 128 and "128 counters" in ROOMS
    assert limits.MAX_ROOM_CALL_SIGNAL_BYTES == 256 * 1024 and "| 256 KiB |" in ROOMS
    assert frames.VP8_KEYFRAME_CLEAR == 10 and "| VP8 keyframe | 10:" in ROOMS
    assert frames.VP8_DELTA_CLEAR == 3 and "| VP8 delta frame | 3:" in ROOMS
    assert frames.OPUS_CLEAR == 1 and "| Opus | 1:" in ROOMS
    assert CALL_ID_EXTENSION == 0xF5A1 and "`0xF5A1`" in ROOMS
    assert LEAVE_LABEL.decode() in ROOMS
    assert "We do not sign frames" in ROOMS and "RFC 9605 §9.2" in ROOMS
    assert "needs neither the shim" in ROOMS
