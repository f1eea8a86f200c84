"""SFrame throughput: sottovoce.sframe versus raw AESGCM, 1,200-byte frames.

    python bench/sframe.py [--frames N] [--rounds R] [--size BYTES]

or, from another bench (bench/rooms.py)::

    from bench import sframe
    result = sframe.measure(20_000, 1200)      # a dict of figures
    print(sframe.format_result(result))        # the same, with the methodology

One "frame" below is one encrypt plus one decrypt of a BYTES-long plaintext
(default 1,200: a video packet's worth), in one process, one thread:

* raw-gcm:    AESGCM(key).encrypt(nonce, pt, aad) then .decrypt(...) with a fixed
              5-byte AAD (an SFrame header's size here) and nonces precomputed
              outside the timed loop -- the floor for AES-128-GCM via `cryptography`;
* gcm:        SFrameContext.protect(kid, pt) -> peer SFrameContext.unprotect(frame)
              with AES_128_GCM_SHA256_128 (header encode/parse, nonce = salt XOR
              CTR, AAD = header, counter, replay window) -- the target figure;
* ctr-hmac:   the same with AES_128_CTR_HMAC_SHA256_80 (§4.5.1 AES-CTR + HMAC);
* room-gcm:   MediaKeyManager.protect(Track.VIDEO, pt) -> peer .unprotect(frame),
              i.e. the above plus the per-epoch KID/track bookkeeping.

Methodology: each round builds fresh keys and contexts (not timed), then runs
every variant once, in an order that rotates per round, so that CPU frequency
drift and noisy neighbours on a shared machine hit all variants alike; GC is
off while timing. Each run is timed by the wall clock (perf_counter) and by
the thread's CPU clock (thread_time: immune to being descheduled by other
processes). Rates are the median over rounds (default 5); ratios are the
median of the per-round ratio to the raw-gcm run of the same round.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sottovoce.crypto.kdf import Hash, hkdf
from sottovoce.sframe import MediaKeyManager, SFrameContext, Track

KID = 0x0312  # a 2-byte KID, as for a sender at leaf 3 (see sframe.mls_keys)
#: The target for protect+unprotect of 1,200-byte frames (AES-GCM suite).
TARGET_FPS = 200_000


def raw_gcm(n: int, pt: bytes) -> Callable[[], None]:
    aead = AESGCM(secrets.token_bytes(16))
    salt = int.from_bytes(secrets.token_bytes(12), "big")
    nonces = [(salt ^ i).to_bytes(12, "big") for i in range(n)]

    aad = bytes(5)

    def run() -> None:
        enc, dec = aead.encrypt, aead.decrypt
        for nonce in nonces:
            if dec(nonce, enc(nonce, pt, aad), aad) is None:
                raise SystemExit("raw: decrypt returned nothing")

    return run


def sframe_pair(suite: int, n: int, pt: bytes) -> Callable[[], None]:
    base = secrets.token_bytes(32)
    tx, rx = SFrameContext(suite), SFrameContext(suite)
    tx.add_send_key(KID, base)
    rx.add_recv_key(KID, base)

    def run() -> None:
        protect, unprotect = tx.protect, rx.unprotect
        for _ in range(n):
            if unprotect(protect(KID, pt)).plaintext is None:
                raise SystemExit("sframe: decrypt returned nothing")

    return run


def room_pair(n: int, pt: bytes) -> Callable[[], None]:
    secret = secrets.token_bytes(32)

    def exporter(label: bytes, context: bytes, length: int) -> bytes:
        return hkdf(Hash.SHA256, secret, b"", label + context, length)

    alice, bob = MediaKeyManager(0x0004, 0), MediaKeyManager(0x0004, 3)
    for m in (alice, bob):
        m.begin_epoch(1, exporter, [0, 3])

    def run() -> None:
        protect, unprotect = alice.protect, bob.unprotect
        for _ in range(n):
            if unprotect(protect(Track.VIDEO, pt)).plaintext is None:
                raise SystemExit("room: decrypt returned nothing")

    return run


VARIANTS: dict[str, Callable[[int, bytes], Callable[[], None]]] = {
    "raw-gcm": raw_gcm,
    "gcm": lambda n, pt: sframe_pair(0x0004, n, pt),
    "ctr-hmac": lambda n, pt: sframe_pair(0x0001, n, pt),
    "room-gcm": room_pair,
}


def _rounds(
    names: list[str], frames: int, size: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per-variant lists of per-round rates (frames/s): (wall clock, thread CPU clock)."""
    pt = secrets.token_bytes(size)
    for name in names:  # warm-up: first-call costs, allocator, CPU frequency ramp
        VARIANTS[name](min(frames, 2000), pt)()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        runs = {name: VARIANTS[name](frames, pt) for name in names}
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            gc.disable()
            try:
                c0, t0 = time.thread_time(), time.perf_counter()
                runs[name]()
                t1, c1 = time.perf_counter(), time.thread_time()
            finally:
                gc.enable()
            wall[name].append(frames / (t1 - t0))
            cpu[name].append(frames / max(c1 - c0, 1e-9))
    return wall, cpu


def _ratio(rates: dict[str, list[float]], name: str) -> float:
    """Median over rounds of (variant rate / raw-gcm rate of the same round)."""
    return statistics.median(v / raw for v, raw in zip(rates[name], rates["raw-gcm"], strict=True))


def measure(
    frames: int = 20_000,
    size: int = 1200,
    *,
    rounds: int = 5,
    variants: tuple[str, ...] = ("raw-gcm", "gcm", "room-gcm"),
) -> dict[str, Any]:
    """Run the bench and return its figures (see the module docstring for how).

    Keys: ``sframe_fps`` (gcm protect+unprotect, frames/s, wall clock, median of
    ``rounds``), ``raw_gcm_fps``, ``ratio`` (median per-round sframe/raw),
    ``cpu_*`` (the same by thread CPU time), ``room_fps``/``room_ratio`` and
    ``ctr_hmac_fps`` when those variants run, ``target_fps``/``meets_target``,
    the environment, and ``methodology`` (one line).
    """
    names = ["raw-gcm", *[v for v in variants if v != "raw-gcm"]]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants: {sorted(unknown)}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    wall, cpu = _rounds(names, frames, size, rounds)
    out: dict[str, Any] = {
        "frame_bytes": size,
        "frames_per_round": frames,
        "rounds": rounds,
        "raw_gcm_fps": statistics.median(wall["raw-gcm"]),
        "cpu_raw_gcm_fps": statistics.median(cpu["raw-gcm"]),
    }
    for name, key in (("gcm", "sframe"), ("room-gcm", "room"), ("ctr-hmac", "ctr_hmac")):
        if name in wall:
            out[f"{key}_fps"] = statistics.median(wall[name])
            out[f"{key}_ratio"] = _ratio(wall, name)
            out[f"cpu_{key}_fps"] = statistics.median(cpu[name])
            out[f"cpu_{key}_ratio"] = _ratio(cpu, name)
            out[f"{key}_range_fps"] = (min(wall[name]), max(wall[name]))
    if "sframe_fps" in out:
        out["ratio"] = out["sframe_ratio"]
        out["target_fps"] = TARGET_FPS
        out["meets_target"] = out["sframe_fps"] >= TARGET_FPS
    out.update(
        python=f"{platform.python_version()} ({sys.implementation.name})",
        cryptography=metadata.version("cryptography"),
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
        load_average_before=round(load, 2),
        methodology=(
            f"{frames} frames x {rounds} rounds of {size}-byte plaintexts, one encrypt + one "
            "decrypt per frame, one thread; variants interleaved in a rotating order each "
            "round with fresh keys, GC off while timing; median round, wall clock "
            "(cpu_*: thread CPU time); ratios = median of per-round variant/raw-gcm"
        ),
    )
    return out


def format_result(r: dict[str, Any]) -> str:
    """The figures of :func:`measure` as a few human-readable lines."""
    lines = [
        f"sframe ({r['frame_bytes']}-byte frames, protect+unprotect, median of {r['rounds']} "
        f"rounds x {r['frames_per_round']} frames; python {r['python']}, cryptography "
        f"{r['cryptography']}, {r['machine']}, load {r['load_average_before']})",
        f"  raw AES-GCM    {r['raw_gcm_fps']:>10,.0f} frames/s   "
        f"(cpu clock {r['cpu_raw_gcm_fps']:,.0f})",
    ]
    for key, label in (("sframe", "sframe gcm"), ("room", "room gcm"), ("ctr_hmac", "ctr-hmac")):
        if f"{key}_fps" in r:
            lo, hi = r[f"{key}_range_fps"]
            lines.append(
                f"  {label:14s} {r[f'{key}_fps']:>10,.0f} frames/s   {r[f'{key}_ratio']:.2f}x raw "
                f"(cpu clock {r[f'cpu_{key}_fps']:,.0f}, {r[f'cpu_{key}_ratio']:.2f}x; "
                f"range {lo:,.0f}-{hi:,.0f})"
            )
    if "target_fps" in r:
        verdict = "meets" if r["meets_target"] else "MISSES"
        lines.append(f"  target: sframe gcm >= {r['target_fps']:,} frames/s -> {verdict}")
    lines.append(f"  method: {r['methodology']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--frames", type=int, default=20_000, help="frames per variant per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=1200, help="plaintext bytes per frame")
    args = ap.parse_args()
    result = measure(args.frames, args.size, rounds=args.rounds, variants=tuple(VARIANTS))
    print(format_result(result))


if __name__ == "__main__":
    main()
