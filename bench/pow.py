"""Proof of work: what one solution costs the client and one check costs the server.

    python bench/pow.py [--levels 12,14,16,17,18,19,20] [--samples 12]

Per difficulty level (leading zero bits of SHA-256, protocol/pow.py) the bench
solves ``--samples`` fresh challenges with :func:`pow.solve` on one core, as the
client does in its worker thread, and prints the median and mean wall time. The
number of hashes a solution takes is geometric (mean 2^bits), so single samples
scatter widely: the mean over many samples is the figure to read, and the ratio
to the level below (about 2) checks that. The baseline, measured in the same run,
is the raw hash rate of the machine (``hashlib.sha256`` on a copied state, the
solver's inner step), from which the expected time 2^bits / rate follows; the
check (:func:`pow.check`: one HMAC and one hash) is timed over 20,000 calls.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import time

from sottovoce.protocol import pow as pw

KEY = os.urandom(32)


def hash_rate(n: int = 200_000) -> float:
    base = hashlib.sha256(os.urandom(pw.TOKEN_BYTES))
    start = time.perf_counter()
    for c in range(n):
        h = base.copy()
        h.update(c.to_bytes(8, "big"))
        h.digest()
    return n / (time.perf_counter() - start)


def fresh(bits: int) -> bytes:
    return pw.issue(KEY, "alice", "bob", difficulty=bits, now_ms=0, ttl_ms=10**12,
                    nonce=os.urandom(pw.NONCE_BYTES))


def solve_times(bits: int, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        token = fresh(bits)
        start = time.perf_counter()
        pw.solve(token)
        times.append(time.perf_counter() - start)
    return times


def check_us(n: int = 20_000) -> float:
    proof = pw.solve(fresh(8))
    start = time.perf_counter()
    for _ in range(n):
        pw.check(KEY, "alice", "bob", proof, now_ms=1)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="12,14,16,17,18,19,20")
    parser.add_argument("--samples", type=int, default=12)
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} cores; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"method: {args.samples} fresh challenges per level, solved on one core; "
          "check timed over 20,000 calls")
    rate = hash_rate()
    print(f"baseline: {rate / 1e3:.0f} k hashes/s on one core; check: {check_us():.1f} µs")
    print(f"{'bits':>4}  {'expected s':>10}  {'median s':>9}  {'mean s':>7}  {'mean/prev':>9}")
    prev = None
    for bits in (int(b) for b in args.levels.split(",")):
        times = solve_times(bits, args.samples)
        mean = statistics.fmean(times)
        ratio = f"{mean / prev:9.2f}" if prev else f"{'':9}"
        print(f"{bits:>4}  {2**bits / rate:>10.3f}  {statistics.median(times):>9.3f}  "
              f"{mean:>7.3f}  {ratio}")
        prev = mean


if __name__ == "__main__":
    main()
