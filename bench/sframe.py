"""SFrame throughput: sottovoce.sframe versus raw AESGCM, 1,200-byte frames.

    python bench/sframe.py [--frames N] [--rounds R] [--size BYTES]

One "frame" below is one encrypt plus one decrypt of a BYTES-long plaintext
(default 1,200: a video packet's worth), in one process, one thread:

* raw-gcm:    AESGCM(key).encrypt(nonce, pt, aad) then .decrypt(...) with a fixed
              5-byte AAD (an SFrame header's size here) and nonces precomputed
              outside the timed loop -- the floor for AES-128-GCM via `cryptography`;
* gcm:        SFrameContext.protect(kid, pt) -> peer SFrameContext.unprotect(frame)
              with AES_128_GCM_SHA256_128 (header encode/parse, nonce = salt XOR
              CTR, AAD = header, counter, replay window);
* ctr-hmac:   the same with AES_128_CTR_HMAC_SHA256_80 (§4.5.1 AES-CTR + HMAC);
* room-gcm:   MediaKeyManager.protect(Track.VIDEO, pt) -> peer .unprotect(frame),
              i.e. the above plus the per-epoch KID/track bookkeeping.

Each round builds fresh keys and contexts (not timed), then runs every variant
once, in an order that rotates per round, so that CPU frequency drift and noisy
neighbours on a shared machine hit all variants alike; GC is off while timing.
The median round of each variant is reported, with its ratio to raw-gcm.
"""

from __future__ import annotations

import argparse
import gc
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sottovoce.crypto.kdf import Hash, hkdf
from sottovoce.sframe import MediaKeyManager, SFrameContext, Track

KID = 0x0312  # a 2-byte KID, as for a sender at leaf 3 (see sframe.mls_keys)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20_000, help="frames per variant per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--size", type=int, default=1200, help="plaintext bytes per frame")
    args = ap.parse_args()
    pt = secrets.token_bytes(args.size)
    names = list(VARIANTS)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        runs = {name: VARIANTS[name](args.frames, pt) for name in names}
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            gc.disable()
            t0 = time.perf_counter()
            runs[name]()
            elapsed = time.perf_counter() - t0
            gc.enable()
            rates[name].append(args.frames / elapsed)

    print(
        f"sottovoce.sframe bench: {args.frames} frames x {args.rounds} rounds, "
        f"{args.size}-byte plaintext, encrypt+decrypt per frame, median round"
    )
    print(
        f"python {platform.python_version()} ({sys.implementation.name}), "
        f"cryptography {metadata.version('cryptography')}, {platform.machine()}"
    )
    raw = statistics.median(rates["raw-gcm"])
    for name in names:
        med = statistics.median(rates[name])
        lo, hi = min(rates[name]), max(rates[name])
        print(
            f"  {name:9s} {med:>10,.0f} frames/s  ({1e6 / med:6.2f} us/frame, "
            f"range {lo:,.0f}-{hi:,.0f})  {med / raw:5.2f}x raw-gcm"
        )


if __name__ == "__main__":
    main()
