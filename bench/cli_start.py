"""Start-up of the `sottovoce` command: CPU and wall time of short command lines, and of
`sottovoce server` until it says where its health check is, for one or two checkouts.

    python bench/cli_start.py [--rounds 10] [--before OTHER_CHECKOUT/src]

Each command line runs in a fresh interpreter (``python -m sottovoce ...`` with this
Python), ``--rounds`` times. With ``--before``, each round runs that checkout's code
(``PYTHONPATH=OTHER/src``) and then this one's, alternately first, so that a slow spell
of a noisy machine falls on both alike; the ratio is AFTER/BEFORE (below 1 is faster).

Figures per command line: the median CPU time (user + system of the child, from
``wait4``) and the median wall time over the rounds; for the server, the CPU time the
process used until its ``health:`` line (``/proc/PID/stat``) and the wall time to that
line, then it is stopped (SIGTERM). CPU time weighs other processes less than wall
time; both are printed, with the load average at the start and at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"
#: The short command lines measured, each with the exit code it ends with: the list of
#: commands, one command's help (client commands and the server), the version (the
#: cheapest), and a client command that loads the client and stops at once (no account
#: in an empty directory: exit 1), as every real client command loads the client.
LINES: list[tuple[list[str], int]] = [
    (["--help"], 0),
    (["send", "--help"], 0),
    (["room", "create", "--help"], 0),
    (["server", "--help"], 0),
    (["--version"], 0),
    (["send", "bob", "hi", "--data-dir", "EMPTY"], 1),
]
TICKS = os.sysconf("SC_CLK_TCK")


def env_for(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "80"}


def run_once(argv: list[str], code: int, src: Path) -> tuple[float, float]:
    """(CPU s, wall s) of one ``python -m sottovoce ARGV`` (``EMPTY``: an empty directory),
    which must exit with ``code``."""
    with tempfile.TemporaryDirectory() as empty:
        argv = [empty if a == "EMPTY" else a for a in argv]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "sottovoce", *argv], env=env_for(src),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != code:
        sys.exit(f"sottovoce {' '.join(argv)} exited {proc.returncode}, not {code} "
                 f"(PYTHONPATH={src})")
    return usage.ru_utime + usage.ru_stime, wall


def serve_once(src: Path) -> tuple[float, float]:
    """(CPU s, wall s) of ``sottovoce server`` until its ``health:`` line."""
    with tempfile.TemporaryDirectory() as data:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "sottovoce", "server", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", data],
            env=env_for(src), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if line.strip().startswith("health:"):
                    break
            else:
                sys.exit(f"the server ended before its health line (PYTHONPATH={src})")
            wall = time.perf_counter() - t0
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return cpu, wall


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--before", type=Path, help="another checkout's src/ to compare with")
    args = ap.parse_args()
    sides = {"after": HERE} if args.before is None else {"before": args.before.resolve(),
                                                          "after": HERE}
    cases: dict[str, Callable[[Path], tuple[float, float]]] = {
        "sottovoce " + " ".join(argv): (lambda src, argv=argv, code=code: run_once(argv, code, src))
        for argv, code in LINES
    }
    cases["sottovoce server (to its health line)"] = serve_once
    print(f"load average at start: {load()}; {args.rounds} rounds; python {sys.version.split()[0]}")
    for side, src in sides.items():
        print(f"{side}: {src}")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name, case in cases.items():
            for side in order:
                results.setdefault((name, side), []).append(case(sides[side]))
    print()
    print(f"{'command line':50} {'side':6} {'CPU ms':>8} {'wall ms':>8}")
    for name in cases:
        medians = {}
        for side in sides:
            runs = results[(name, side)]
            medians[side] = (statistics.median(c for c, _ in runs) * 1000,
                             statistics.median(w for _, w in runs) * 1000)
            print(f"{name:50} {side:6} {medians[side][0]:8.0f} {medians[side][1]:8.0f}")
        if len(sides) == 2:
            cpu = medians["after"][0] / medians["before"][0]
            wall = medians["after"][1] / medians["before"][1]
            print(f"{'':50} {'ratio':6} {cpu:8.2f} {wall:8.2f}")
    print(f"\nload average at end: {load()} (medians over the rounds; CPU = user + system "
          "time of the child process)")


if __name__ == "__main__":
    main()
