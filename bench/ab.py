"""Before/after: the relay and MLS benchmarks of two checkouts, interleaved in one run.

    python bench/ab.py BEFORE_DIR AFTER_DIR [--rounds 3] [--relay-seconds 5] [--mls-sizes 10,100]
    python bench/ab.py BEFORE_DIR AFTER_DIR --no-mls --relay-only 1to1 latency

Each checkout runs with its own ``.venv/bin/python`` and its own ``bench/relay.py``
and ``bench/mls.py``. One round runs BEFORE then AFTER, the next AFTER then BEFORE,
and so on, so that a slow spell of a noisy machine falls on both sides alike. Per
figure the bench prints the median over the rounds of each side and the ratio
AFTER/BEFORE (for a rate, above 1 is faster; for a time, below 1 is faster).

Figures compared:

* relay (embedded SQLite only): 1:1 throughput (msgs/s), latency p50 and p99 at
  200 msgs/s (ms), 50-device fan-out (deliveries/s), the server's and the bench
  clients' CPU per 1:1 frame (µs; the clients' from the CPU percentage relay.py
  prints and its rate, so that a checkout without the per-frame figure compares too),
  the disk's fdatasync p99 (ms);
* MLS: every row of ``bench/mls.py``'s table (ms per operation) for the given sizes,
  ``full`` tree, median of its own ``--repeat 3``.

Under the table each figure's ratio per round is printed too (both sides of a round
ran back to back), so that a ratio within the rounds' spread can be seen as noise.

Nothing here is a pass/fail check; the figures and the load average at the start
are printed for the reader to judge.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

RELAY_PATTERNS = {
    "relay 1:1 msgs/s": (r"1:1 throughput: ([\d,]+) msgs/s", True),
    "relay latency p50 ms": (r"latency @200 msgs/s: send→delivered p50 ([\d.]+) ms", False),
    "relay latency p99 ms": (
        r"latency @200 msgs/s: send→delivered p50 [\d.]+ ms, p99 ([\d.]+)", False
    ),
    "relay fan-out deliveries/s": (r"fan-out to \d+ devices: ([\d,]+) deliveries/s", True),
    "relay 1:1 server CPU µs/frame": (
        r"1:1 throughput:[^\n]*\n[^\n]*= (\d+) µs of server CPU per frame", False
    ),
    "disk fdatasync p99 ms": (r"fdatasync of 16 KiB p50 [\d.]+ ms, p99 ([\d.]+) ms", False),
    "disk fdatasync p99 ms, interleaved": (r"interleaved: p50 [\d.]+ ms, p99 ([\d.]+) ms", False),
}
# The bench clients' CPU per 1:1 frame, from the percentage every relay.py prints (old
# checkouts print no per-frame figure for the clients): % of one core / msgs per second.
CLIENT_CPU = re.compile(r"1:1 throughput: ([\d,]+) msgs/s[^\n]*\n[^\n]*bench clients (\d+)%")
MLS_ROW = re.compile(r"^\s*(\d+)\s+(full|sparse)\s+(.+?)\s{2,}([\d.]+)(?:\s+\d+)?\s*$")


def run(checkout: Path, script: str, args: list[str]) -> str:
    python = checkout / ".venv" / "bin" / "python"
    done = subprocess.run(
        [str(python), str(checkout / "bench" / script), *args],
        cwd=checkout, capture_output=True, text=True, timeout=1800, check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{checkout}/bench/{script} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def relay_figures(out: str) -> dict[str, tuple[float, bool]]:
    figures: dict[str, tuple[float, bool]] = {}
    for name, (pattern, higher_better) in RELAY_PATTERNS.items():
        m = re.search(pattern, out)
        if m:
            figures[name] = (float(m.group(1).replace(",", "")), higher_better)
    m = CLIENT_CPU.search(out)
    if m and float(m.group(1).replace(",", "")):
        rate = float(m.group(1).replace(",", ""))
        figures["relay 1:1 client CPU µs/frame"] = (1e4 * float(m.group(2)) / rate, False)
    return figures


def mls_figures(out: str) -> dict[str, tuple[float, bool]]:
    figures: dict[str, tuple[float, bool]] = {}
    for line in out.splitlines():
        m = MLS_ROW.match(line)
        if m:
            figures[f"mls {m.group(1)} {m.group(3).strip()} ms"] = (float(m.group(4)), False)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--relay-seconds", default="5")
    ap.add_argument("--mls-sizes", default="10,100")
    ap.add_argument("--no-mls", action="store_true", help="the relay figures only")
    ap.add_argument("--relay-only", nargs="+", choices=["1to1", "latency", "fanout"],
                    default=["1to1", "latency", "fanout"], help="relay.py's --only")
    args = ap.parse_args()
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    relay_args = ["--backends", "sqlite", "--seconds", args.relay_seconds,
                  "--latency-seconds", args.relay_seconds, "--only", *args.relay_only]
    mls_args = ["--sizes", args.mls_sizes, "--shape", "full", "--repeat", "3"]
    samples: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    better: dict[str, bool] = {}
    load = os.getloadavg()[0]
    print(f"before: {sides['before']}\nafter:  {sides['after']}\n"
          f"{args.rounds} rounds, order alternating; load average at start {load:.2f}, "
          f"{os.cpu_count()} cpus", flush=True)
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for side in order:
            figures = relay_figures(run(sides[side], "relay.py", relay_args))
            if not args.no_mls:
                figures |= mls_figures(run(sides[side], "mls.py", mls_args))
            for name, (value, higher_better) in figures.items():
                samples[side].setdefault(name, []).append(value)
                better[name] = higher_better
            print(f"  round {r + 1} {side}: {len(figures)} figures", flush=True)
    print(f"\n{'figure':<52} {'before':>10} {'after':>10} {'after/before':>13}")
    for name in samples["before"]:
        if name not in samples["after"]:
            continue
        b = statistics.median(samples["before"][name])
        a = statistics.median(samples["after"][name])
        hint = "higher is better" if better[name] else "lower is better"
        print(f"{name:<52} {b:10.2f} {a:10.2f} {a / b:13.3f}  ({hint})")
    # Round by round: a ratio that flips around 1 from one round to the next is noise.
    print("\nper round (after/before, same round):")
    for name in samples["before"]:
        pairs = zip(samples["before"][name], samples["after"].get(name, []), strict=False)
        print(f"  {name:<50} " + "  ".join(f"{a / b:.3f}" for b, a in pairs if b))


if __name__ == "__main__":
    main()
