"""Pairwise (1:1 Olm) throughput: sottovoce.pairwise versus raw vodozemac.

    python bench/pairwise.py [--messages N] [--rounds R] [--profile]

Both sides run the same chat-like pattern in one process: the two devices take
turns sending bursts (sizes cycle through BURSTS), each message is encrypted by
the sender and at once decrypted by the peer. One "message" below is one
encrypt plus one decrypt of a 100-byte plaintext.

* ours: PairwiseSession.encrypt -> bytes -> peer PairwiseSession.decrypt
  (padding to the 128-byte bucket, OlmEnvelope encode/decode, duplicate check);
* raw:  vodozemac Session.encrypt -> AnyOlmMessage -> peer Session.decrypt
  (no padding, no wire encoding).

Each round opens fresh session pairs for both (set-up is not timed) and runs
the whole pattern through both, interleaved in slices of ~500 messages (who
goes first alternates), so that CPU frequency drift and noisy neighbours on a
shared machine hit both alike; the median round of each side is reported.
``--profile`` adds a cProfile of our path.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import secrets
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import vodozemac

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.pairwise_peers

from tests.pairwise_peers import establish, make_device

from sottovoce.pairwise import PairwiseSession

#: Burst sizes of a chat: short replies, the odd long monologue.
BURSTS = (1, 3, 2, 8, 1, 5, 2, 12, 4, 1, 6, 2)
PLAINTEXT = bytes(range(100))


def _pattern(n: int) -> list[tuple[int, int]]:
    """(direction, burst size) pairs adding up to exactly ``n`` messages."""
    out: list[tuple[int, int]] = []
    left, turn = n, 0
    while left > 0:
        size = min(BURSTS[turn % len(BURSTS)], left)
        out.append((turn % 2, size))
        left -= size
        turn += 1
    return out


def ours_pair() -> tuple[PairwiseSession, PairwiseSession]:
    alice = make_device("alice", "phone", secrets.token_bytes)
    bob = make_device("bob", "laptop", secrets.token_bytes)
    return establish(alice, bob)


def raw_pair() -> tuple[vodozemac.Session, vodozemac.Session]:
    alice, bob = vodozemac.Account(), vodozemac.Account()
    bob.generate_one_time_keys(1)
    otk = next(iter(bob.one_time_keys.values()))
    bob.mark_keys_as_published()
    out = alice.create_outbound_session(bob.curve25519_key, otk)
    first = out.encrypt(b"hello").to_pre_key()
    if first is None:
        raise SystemExit("raw: first message is not a prekey message")
    inb, _ = bob.create_inbound_session(alice.curve25519_key, first)
    out.decrypt(inb.encrypt(b"hello back"))
    return out, inb


Sides = tuple[tuple[Any, Any], tuple[Any, Any]]


def _drive(sides: Sides, pattern: list[tuple[int, int]]) -> float:
    """Run ``pattern`` over ``sides`` (either implementation); returns seconds."""
    start = time.perf_counter()
    for direction, size in pattern:
        sender, receiver = sides[direction]
        encrypt, decrypt = sender.encrypt, receiver.decrypt
        for _ in range(size):
            if decrypt(encrypt(PLAINTEXT)) != PLAINTEXT:
                raise SystemExit("round trip mismatch")
    return time.perf_counter() - start


def _slices(pattern: list[tuple[int, int]], size: int) -> list[list[tuple[int, int]]]:
    """Cut the pattern at burst boundaries into slices of about ``size`` messages."""
    out: list[list[tuple[int, int]]] = [[]]
    count = 0
    for burst in pattern:
        if count >= size:
            out.append([])
            count = 0
        out[-1].append(burst)
        count += burst[1]
    return out


def run_round(pattern: list[tuple[int, int]], slice_size: int) -> tuple[float, float]:
    """One round: fresh pairs, then raw and ours alternate slice by slice.

    Fine-grained interleaving (and swapping who goes first each slice) makes
    background load on a shared machine hit both sides alike.
    """
    raw_a, raw_b = raw_pair()
    our_a, our_b = ours_pair()
    raw: Sides = ((raw_a, raw_b), (raw_b, raw_a))
    ours: Sides = ((our_a, our_b), (our_b, our_a))
    gc.collect()
    t_raw = t_ours = 0.0
    for i, part in enumerate(_slices(pattern, slice_size)):
        if i % 2 == 0:
            t_raw += _drive(raw, part)
            t_ours += _drive(ours, part)
        else:
            t_ours += _drive(ours, part)
            t_raw += _drive(raw, part)
    return t_raw, t_ours


def run_ours(pattern: list[tuple[int, int]]) -> float:
    a, b = ours_pair()
    return _drive(((a, b), (b, a)), pattern)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def profile_ours(pattern: list[tuple[int, int]], top: int = 18) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    run_ours(pattern)
    profiler.disable()
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median is reported)")
    parser.add_argument(
        "--slice", type=int, default=500, help="messages per raw/ours slice within a round"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile our path afterwards")
    args = parser.parse_args(argv)
    pattern = _pattern(args.messages)

    run_round(_pattern(2000), args.slice)  # warm-up: imports, allocator, CPU frequency
    raw_times, ours_times = [], []
    for _ in range(args.rounds):
        t_raw, t_ours = run_round(pattern, args.slice)
        raw_times.append(t_raw)
        ours_times.append(t_ours)
    raw_rate = args.messages / statistics.median(raw_times)
    ours_rate = args.messages / statistics.median(ours_times)
    overhead = (raw_rate / ours_rate - 1) * 100  # extra time per message, in %

    print("sottovoce pairwise benchmark")
    print(
        f"  python {platform.python_version()} ({platform.python_implementation()}), "
        f"vodozemac {_version('vodozemac')}, cryptography {_version('cryptography')}, "
        f"sottovoce {_version('sottovoce')}"
    )
    print(
        f"  machine: {platform.platform()}, {platform.machine()}, os.cpu_count()={os.cpu_count()}"
    )
    print(
        f"  method: {args.rounds} rounds of {args.messages} messages of {len(PLAINTEXT)} bytes "
        f"each way of measuring, on fresh session pairs per round (set-up not timed); a "
        f"message = sender encrypt + peer decrypt; directions alternate in bursts {BURSTS}; "
        f"raw and ours interleaved in slices of ~{args.slice} messages; median round per side"
    )
    print(f"  raw vodozemac       : {raw_rate:10,.0f} msg/s  ({1e6 / raw_rate:6.1f} µs/msg)")
    print(f"  sottovoce.pairwise  : {ours_rate:10,.0f} msg/s  ({1e6 / ours_rate:6.1f} µs/msg)")
    print(f"  ratio ours/raw      : {ours_rate / raw_rate:10.3f}")
    print(f"  overhead            : {overhead:+9.1f} %  (target <= 20 %)")
    print(
        "  rounds (s) raw: "
        + ", ".join(f"{t:.3f}" for t in raw_times)
        + " | ours: "
        + ", ".join(f"{t:.3f}" for t in ours_times)
    )
    if args.profile:
        print()
        print(profile_ours(pattern))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
