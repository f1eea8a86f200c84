"""The side-by-side benchmark's own logic (bench/peers): parsing, ratios, summary, configs.

The heavy run itself (Prosody, ejabberd, sottovoce servers) is not part of the suite;
this keeps the parts that turn its output into figures from rotting silently."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.peers import configs, stats
from bench.peers.xmpp_load import chat, check_loopback, count_bodies, result

RELAY_OUT = """machine: x86_64 2 cores
[sqlite]
1:1 throughput: 16,660 msgs/s delivered (durable; 4 pairs, window 256, 8s)
    CPU: server 95%, bench clients 80%, PostgreSQL 0%, other processes 20% = 57 µs of server CPU per frame delivered (user+system µs: loop 30.0+2.0, threads 20.0+5.0); bench clients 6.5 µs of CPU per frame
    storage: 120 commits, 30.0 jobs/commit, 1.20 ms/commit (writer thread)
[sqlite]
latency @200 msgs/s: send→delivered p50 1.93 ms, p99 8.25 ms, max 20.10 ms; send→ack p50 1.50 ms, p99 7.00 ms (2000/2000 msgs)
"""  # noqa: E501

ROOMS_OUT = """room fan-out to 50 member devices: 103,065 deliveries/s (2,061 msgs/s; 200,000 frames in 1.94s; room set up in 2.0s)
    CPU: server 90%, bench clients 100%, other processes 10% (% of one core; 2 cores = 200%) (8.7 µs of server CPU per delivery)
"""  # noqa: E501


def test_percentile_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert stats.percentile(xs, 50) == 51.0  # round(0.5 * 99) = 50 -> the 51st value
    assert stats.percentile(xs, 99) == 99.0
    assert stats.percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_parse_relay_and_rooms_output() -> None:
    assert stats.parse_relay(RELAY_OUT) == {"tput": 16660.0, "tput_cpu_us": 57.0,
                                            "tput_client_us": 6.5, "p50": 1.93, "p99": 8.25}
    # an older relay.py printed no client figure: the rest still parses
    old = RELAY_OUT.replace("; bench clients 6.5 µs of CPU per frame", "")
    assert stats.parse_relay(old) == {"tput": 16660.0, "tput_cpu_us": 57.0,
                                      "p50": 1.93, "p99": 8.25}
    assert stats.parse_rooms(ROOMS_OUT) == {"fan": 103065.0, "fan_cpu_us": 8.7}
    assert stats.parse_relay("nothing here") == {}
    assert stats.parse_rooms("") == {}


def test_xmpp_values_per_test_and_errors() -> None:
    tp = {"test": "throughput", "per_s": 15000.0, "delivered": 30000, "server_cpu_s": 1.5}
    assert stats.xmpp_values(tp) == {"tput": 15000.0, "tput_cpu_us": 50.0}
    tp["client_cpu_s"] = 0.3
    assert stats.xmpp_values(tp)["tput_client_us"] == pytest.approx(10.0)
    lat = {"test": "latency", "per_s": 200.0, "p50_ms": 1.5, "p99_ms": 3.7, "delivered": 2000}
    assert stats.xmpp_values(lat) == {"p50": 1.5, "p99": 3.7}
    fan = {"test": "fanout", "per_s": 30000.0, "delivered": 100000, "server_cpu_s": None}
    assert stats.xmpp_values(fan) == {"fan": 30000.0}
    fan["client_cpu_s"] = 0.5
    assert stats.xmpp_values(fan) == {"fan": 30000.0, "fan_client_us": 5.0}
    assert stats.xmpp_values({"test": "fanout", "error": "warm-up reached 3/50"}) == {}


def test_ratios_pair_rounds_only_and_skip_zero() -> None:
    sv = {1: 100.0, 2: 300.0, 3: 50.0}
    peer = {1: 50.0, 2: 100.0, 4: 10.0}
    assert stats.round_ratios(sv, peer) == {1: 2.0, 2: 3.0}
    assert stats.round_ratios(sv, {1: 0.0}) == {}
    assert stats.ratio_cell({1: 2.0, 2: 3.0}) == "2.5× (r1 2, r2 3)"
    assert stats.ratio_cell({}) == "—"


def test_merge_runs_takes_the_mean_of_a_round() -> None:
    t: stats.Table = {}
    stats.merge_runs(t, stats.SV, 1, [{"p99": 8.0}, {"p99": 10.0, "p50": 2.0}])
    assert t == {("p99", stats.SV): {1: 9.0}, ("p50", stats.SV): {1: 2.0}}


def test_median_range_formats() -> None:
    assert stats.median_range({1: 1000.0, 2: 3000.0, 3: 2000.0}) == "2,000 (1,000–3,000) n=3"
    assert stats.median_range({1: 1.234, 2: 5.0}) == "3.12 (1.23–5.00) n=2"
    assert stats.median_range({}) == "—"


def test_render_summary_has_medians_ratios_and_loads() -> None:
    t: stats.Table = {}
    for rnd, (sv, pr, cpu) in enumerate([(16000.0, 8000.0, 50.0), (18000.0, 6000.0, 40.0)], 1):
        stats.put(t, "tput", stats.SV_TPUT, rnd, sv)
        stats.put(t, "tput_cpu_us", stats.SV_TPUT, rnd, cpu)
        stats.put(t, "tput_client_us", "prosody-plain", rnd, cpu / 10)
        stats.put(t, "tput", "prosody-plain", rnd, pr)
    out = stats.render(t, ["13:00:00 round 1 prosody-plain 12.00 11.00 10.00"])
    assert ("| sottovoce 4x256 | 17,000 (16,000–18,000) n=2 | — | 45.00 (40.00–50.00) n=2 | — |"
            in out)
    assert ("| prosody-plain | 7,000 (6,000–8,000) n=2 | 2.5× (r1 2, r2 3) | — | "
            "4.50 (4.00–5.00) n=2 |" in out)
    assert "round 1 prosody-plain 12.00" in out
    assert "latency" not in out  # no sottovoce figure, no section


def test_prosody_config_variants() -> None:
    plain = configs.prosody_config(Path("/tmp/w"), "plain", 15222)
    mam = configs.prosody_config(Path("/tmp/w"), "mam", 15222)
    for cfg in (plain, mam):
        assert 'interfaces = { "127.0.0.1" }' in cfg
        assert "c2s_ports = { 15222 }" in cfg
        assert "s2s_ports = { }" in cfg and "http_ports = { }" in cfg
        assert '"limits"' in cfg.split("modules_disabled")[1].splitlines()[0]
        assert '"tls"' in cfg.split("modules_disabled")[1].splitlines()[0]
        assert "allow_registration = true" in cfg
    assert '"mam"' not in plain and "sql" not in plain
    assert '"mam";' in mam and '"/tmp/w/archive.sqlite"' in mam


def test_ejabberd_config_variants() -> None:
    plain = configs.ejabberd_config(Path("/tmp/w"), "plain", 15222)
    mam = configs.ejabberd_config(Path("/tmp/w"), "mam", 15222)
    for cfg in (plain, mam):
        assert "  - port: 15222\n    ip: \"127.0.0.1\"" in cfg
        assert "shaper: none" in cfg and "starttls: false" in cfg
        assert "ip_access: all" in cfg
        assert "\t" not in cfg
    assert "mod_mam" not in plain and "sql_type" not in plain
    assert "mod_mam:" in mam and 'sql_database: "/tmp/w/archive.db"' in mam
    ctl = configs.ejabberdctl_config("mam")
    assert "INET_DIST_INTERFACE=127.0.0.1" in ctl and "svpeers_mam@localhost" in ctl


def test_configs_refuse_bad_input() -> None:
    with pytest.raises(ValueError):
        configs.prosody_config(Path("/tmp/w"), "archive", 15222)
    with pytest.raises(ValueError):
        configs.ejabberd_config(Path("/tmp/w"), "plain", 80)
    with pytest.raises(ValueError):
        configs.prosody_config(Path('/tmp/a"b'), "plain", 15222)


def test_xmpp_client_stanzas_and_results() -> None:
    stanza = chat("u1@localhost", 7, 200)
    assert stanza.startswith("<message to='u1@localhost' type='chat' id='b7'><body>7:")
    body = stanza.split("<body>")[1].split("</body>")[0]
    assert len(body) == 200
    n, stamps = count_bodies((stanza + chat("room@conference.localhost", 8, 50, "groupchat"))
                             .encode())
    assert n == 2 and all(s > 0 for s in stamps)
    with pytest.raises(SystemExit):
        check_loopback("10.0.0.1")
    check_loopback("127.0.0.1")
    r = result("throughput", 100, 100, 2.0, [1_000_000, 3_000_000], (1.0, 1.5),
               client_cpu_s=0.25)
    assert r["per_s"] == 50.0 and r["server_cpu_s"] == 0.5
    assert stats.xmpp_values(r)["tput_client_us"] == 2500.0
    assert r["p50_ms"] == 1.0 and r["p99_ms"] == 3.0
    assert result("latency", 1, 0, 1.0, [], (None, None))["server_cpu_s"] is None
