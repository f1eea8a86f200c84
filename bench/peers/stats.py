"""Pure logic of the side-by-side benchmark: parsing the sottovoce benches' output,
medians, per-round ratios and the summary table. No I/O beyond what callers pass in."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

# (metric, system) -> {round: value}
Table = dict[tuple[str, str], dict[int, float]]

SV_TPUT = "sottovoce 4x256"
SV_TPUT_1 = "sottovoce 1x1000"
SV = "sottovoce"
SV_ROOM = "sottovoce room"
PEERS = ("prosody-plain", "ejabberd-plain", "prosody-mam", "ejabberd-mam")

_TPUT = re.compile(r"1:1 throughput: ([\d,]+) msgs/s.*?\n.*?= (\d+) µs")
_CLIENT = re.compile(r"1:1 throughput:[^\n]*\n[^\n]*bench clients ([\d.]+) µs of CPU per frame")
_LAT = re.compile(r"send→delivered p50 ([\d.]+) ms, p99 ([\d.]+) ms")
_ROOM = re.compile(
    r"room fan-out to \d+ member devices: ([\d,]+) deliveries/s.*?\n.*?\(([\d.]+) µs")


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    k = round(p / 100.0 * (len(sorted_values) - 1))
    return sorted_values[min(len(sorted_values) - 1, max(0, k))]


def _num(s: str) -> float:
    return float(s.replace(",", ""))


def parse_relay(text: str) -> dict[str, float]:
    """Figures printed by bench/relay.py (1:1 throughput, server and client µs/frame,
    latency p50/p99)."""
    out: dict[str, float] = {}
    m = _TPUT.search(text)
    if m:
        out["tput"], out["tput_cpu_us"] = _num(m.group(1)), _num(m.group(2))
    m = _CLIENT.search(text)
    if m:
        out["tput_client_us"] = float(m.group(1))
    m = _LAT.search(text)
    if m:
        out["p50"], out["p99"] = float(m.group(1)), float(m.group(2))
    return out


def parse_rooms(text: str) -> dict[str, float]:
    """Figures printed by bench/rooms.py for one room size (deliveries/s, server µs/delivery)."""
    m = _ROOM.search(text)
    return {"fan": _num(m.group(1)), "fan_cpu_us": float(m.group(2))} if m else {}


def xmpp_values(rec: Mapping[str, Any]) -> dict[str, float]:
    """Metric values from one JSON line of xmpp_load.py or ws_ceiling.py (errors give none)."""
    if rec.get("error") or not rec.get("per_s"):
        return {}
    cpu = rec.get("server_cpu_s")
    per_us = 1e6 * cpu / rec["delivered"] if cpu is not None and rec.get("delivered") else None
    own = rec.get("client_cpu_s")
    client_us = 1e6 * own / rec["delivered"] if own is not None and rec.get("delivered") else None
    test = rec.get("test")
    out: dict[str, float] = {}
    if test == "throughput":
        out["tput"] = float(rec["per_s"])
        if per_us is not None:
            out["tput_cpu_us"] = per_us
        if client_us is not None:
            out["tput_client_us"] = client_us
    elif test == "latency" and rec.get("p50_ms") is not None:
        out["p50"], out["p99"] = float(rec["p50_ms"]), float(rec["p99_ms"])
    elif test == "fanout":
        out["fan"] = float(rec["per_s"])
        if per_us is not None:
            out["fan_cpu_us"] = per_us
        if client_us is not None:
            out["fan_client_us"] = client_us
    return out


def put(table: Table, metric: str, system: str, rnd: int, value: float | None) -> None:
    if value is not None:
        table.setdefault((metric, system), {})[rnd] = value


def add_all(table: Table, system: str, rnd: int, values: Mapping[str, float]) -> None:
    for metric, v in values.items():
        put(table, metric, system, rnd, v)


def merge_runs(table: Table, system: str, rnd: int, runs: Iterable[Mapping[str, float]]) -> None:
    """Several runs of one system in one round (sottovoce runs twice) enter as their mean."""
    by_metric: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r.items():
            by_metric.setdefault(k, []).append(v)
    for k, vs in by_metric.items():
        put(table, k, system, rnd, statistics.mean(vs))


def _fmt(x: float, big: bool) -> str:
    return f"{x:,.0f}" if big else f"{x:,.2f}"


def median_range(values: Mapping[int, float]) -> str:
    xs = list(values.values())
    if not xs:
        return "—"
    big = max(xs) > 100
    return (f"{_fmt(statistics.median(xs), big)} ({_fmt(min(xs), big)}–{_fmt(max(xs), big)}) "
            f"n={len(xs)}")


def round_ratios(a: Mapping[int, float], b: Mapping[int, float]) -> dict[int, float]:
    """a/b for every round both have (and b is non-zero): ratios from the same round only."""
    return {r: a[r] / b[r] for r in sorted(a) if b.get(r)}


def ratio_cell(ratios: Mapping[int, float]) -> str:
    if not ratios:
        return "—"
    per = ", ".join(f"r{r} {v:.3g}" for r, v in sorted(ratios.items()))
    return f"{statistics.median(ratios.values()):.3g}× ({per})"


SECTIONS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("tput", "1:1 throughput, msgs/s (sottovoce: 4 pairs × 256 in flight, durable ack)",
     SV_TPUT, (SV_TPUT_1, *PEERS, "ws-echo 4x256", "ws-echo 1x1000")),
    ("tput", "1:1 throughput, msgs/s (sottovoce: 1 pair × 1000 in flight, the XMPP shape)",
     SV_TPUT_1, (*PEERS, "ws-echo 1x1000")),
    ("p50", "latency p50 at 200 msgs/s, ms (lower is better)", SV, PEERS),
    ("p99", "latency p99 at 200 msgs/s, ms (lower is better)", SV, PEERS),
    ("fan", "50-member room fan-out, deliveries/s", SV_ROOM,
     ("prosody-plain", "ejabberd-plain", "ws-relay 50")),
)

CPU_OF = {"tput": "tput_cpu_us", "fan": "fan_cpu_us"}
#: The load client's own CPU per delivery (it shares the cores with the server it drives).
CLIENT_OF = {"tput": "tput_client_us", "fan": "fan_client_us"}


def render(table: Table, loads: Iterable[str] = ()) -> str:
    """Markdown tables: each system's median (min–max), sottovoce/system per round, server CPU."""
    lines: list[str] = []
    for metric, title, sv, others in SECTIONS:
        if (metric, sv) not in table:
            continue
        cpu = CPU_OF.get(metric)
        lines += ["", f"### {title}", "",
                  "| system | median (min–max) | sottovoce/system, per round |"
                  + (" server CPU µs/delivery | client CPU µs/delivery |" if cpu else ""),
                  "|---|---|---|" + ("---|---|" if cpu else "")]
        for s in (sv, *others):
            if (metric, s) not in table:
                continue
            cell = "—" if s == sv else ratio_cell(round_ratios(table[(metric, sv)],
                                                               table[(metric, s)]))
            row = f"| {s} | {median_range(table[(metric, s)])} | {cell} |"
            if cpu:
                row += f" {median_range(table.get((cpu, s), {}))} |"
                row += f" {median_range(table.get((CLIENT_OF[metric], s), {}))} |"
            lines.append(row)
    lines += ["", "### per-round raw values", ""]
    for (metric, system), d in sorted(table.items()):
        lines.append(f"    {metric:12} {system:18} "
                     + ", ".join(f"r{r}={v:,.2f}" for r, v in sorted(d.items())))
    loads = list(loads)
    if loads:
        lines += ["", "### load average (1, 5, 15 min) at each step", ""]
        lines += [f"    {x}" for x in loads]
    return "\n".join(lines) + "\n"
