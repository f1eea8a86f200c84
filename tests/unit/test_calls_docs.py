"""docs/calls.md states what the code does: its state table, limits and coturn config."""

from __future__ import annotations

import re
from pathlib import Path

from sottovoce import limits
from sottovoce.calls.machine import TRANSITIONS
from sottovoce.client.calls.media import LOST_PATH_CHECKS

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "calls.md").read_text(encoding="utf-8")
CONF = (ROOT / "deploy" / "turnserver.conf").read_text(encoding="utf-8")


def test_the_state_table_is_the_machines() -> None:
    table = DOC.split("| state | event | next state |\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    documented = re.findall(r"^\| (\w+) \| (\w+) \| (\w+) \|$", table, flags=re.M)
    actual = [(s.value, e.value, n.value) for (s, e), n in TRANSITIONS.items()]
    assert documented == actual


def test_the_documented_limits_are_the_code_limits() -> None:
    assert limits.CALL_RING_TIMEOUT_MS == 45_000 and "after 45 s" in DOC
    assert limits.CALL_RING_GRACE_MS == 5_000 and "5 s later" in DOC
    assert limits.CALL_SETUP_TIMEOUT_MS == 20_000 and "accept to media: 20 s" in DOC
    assert limits.CALL_RECONNECT_TIMEOUT_MS == 15_000 and "within 15 s" in DOC
    assert LOST_PATH_CHECKS == 5 and "| 5 s without a packet |" in DOC
    assert limits.MAX_CALL_SDP_BYTES == 32 * 1024 and "| 32 KiB |" in DOC
    assert limits.MAX_CALL_CANDIDATES == 32
    assert limits.MAX_CALL_DEVICES == 64 and "| devices rung | 64 |" in DOC
    assert limits.MAX_CALL_ICE_RESTARTS == 1000
    assert limits.TURN_CREDENTIAL_MAX_TTL_S == 600 and "≤ 10 min" in DOC


def test_the_coturn_config_in_the_docs_is_the_deployed_one() -> None:
    start = "```\n# /etc/sottovoce/turnserver.conf"
    block = DOC.split(start, 1)[1].split("```", 1)[0]
    block = start.removeprefix("```\n") + block
    assert block == CONF


def test_the_coturn_config_takes_only_our_credentials_and_relays_nowhere_internal() -> None:
    options = [line.strip() for line in CONF.splitlines() if line and not line.startswith("#")]
    assert "use-auth-secret" in options
    assert "no-cli" in options and "no-tcp-relay" in options
    assert not any(o.startswith("allow-loopback-peers") for o in options)
    denied = {o.split("=", 1)[1] for o in options if o.startswith("denied-peer-ip=")}
    for private in (
        "0.0.0.0-0.255.255.255",  # CVE-2020-26262: 0.0.0.0 reached loopback
        "10.0.0.0-10.255.255.255",
        "127.0.0.0-127.255.255.255",
        "169.254.0.0-169.254.255.255",
        "172.16.0.0-172.31.255.255",
        "192.168.0.0-192.168.255.255",
        "::1-::1",
        "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ):
        assert private in denied, private
    # coturn 4.6 matches every IPv4 peer against "::-::": no relay would work at all
    # (tests/integration/test_calls_network.py runs this config in a real coturn).
    assert "::-::" not in denied


def test_the_systemd_unit_runs_that_config() -> None:
    unit = (ROOT / "deploy" / "systemd" / "sottovoce-turn.service").read_text(encoding="utf-8")
    assert "ExecStart=/usr/bin/turnserver -c /etc/sottovoce/turnserver.conf" in unit
    assert "/etc/sottovoce/turnserver.conf" in CONF.splitlines()[0]
