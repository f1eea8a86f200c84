"""Key-transparency cores at N accounts (default 1,000,000), all in memory.

    python bench/kt.py [--accounts N] [--lookups L]

Method:

* N accounts are registered through the server core (kt/prover.py) with dicts as
  stores: each registration appends one version to the map and one leaf to the
  log, incrementally (no rebuild). Bulk accounts use random map keys (their VRF
  labels would be computed once per username and cached; the VRF is timed
  apart); L more accounts are registered by username, through the VRF, and are
  the ones looked up. Timed: registrations per second, and one VRF evaluation.
* A checkpoint is signed by the log key and cosigned by one witness.
* For each of the L users: proof generation (``KTLog.lookup``), the encoded
  response's size split into its parts, and the client's full verification
  (``verify_lookup``: checkpoint signature and cosignature, freshness, log
  inclusion, VRF, map proof, version inclusion, commitment, state decoding).

Figures are medians (and p99) over the L lookups. Targets: a lookup's proofs
<= 2 KiB; verification <= 1 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.kt.checkpoint import NoteSigner, add_cosignature
from sottovoce.kt.map import AccountState, ChangeKind, DeviceEntry
from sottovoce.kt.prover import KTLog, KTStores
from sottovoce.kt.verify import KTPolicy, verify_lookup
from sottovoce.kt.vrf import VRFSecretKey
from sottovoce.kt.vrf import verify as vrf_verify
from sottovoce.kt.witness import Witness


def _state(i: int) -> bytes:
    key = i.to_bytes(4, "big") * 8
    return AccountState(
        account_key=key, recovery_key=key[::-1],
        devices=(DeviceEntry(device_id="d1", signing_key=key),),
    ).encode()


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=1000)
    args = ap.parse_args()
    now = int(time.time() * 1000)

    log_signer = NoteSigner(
        "kt.bench/log", SigningKey.generate(SignatureScheme.ED25519, os.urandom)
    )
    witness_signer = NoteSigner(
        "witness.bench/w1", SigningKey.generate(SignatureScheme.ED25519, os.urandom), cosigner=True
    )
    vrf_key = VRFSecretKey.generate(os.urandom)
    kt = KTLog(KTStores.memory(), vrf_key=vrf_key, log_signer=log_signer)

    t0 = time.perf_counter()
    for i in range(args.accounts):
        kt.change_key(os.urandom(32), _state(i), kind=ChangeKind.REGISTRATION, now_ms=now,
                      rng=os.urandom)
    bulk = time.perf_counter() - t0
    users = [f"user{i:07d}" for i in range(args.lookups)]
    vrf_times = []
    for i, name in enumerate(users):
        t = time.perf_counter()
        kt.label(name)
        vrf_times.append(time.perf_counter() - t)
        kt.change(name, _state(i), kind=ChangeKind.REGISTRATION, now_ms=now, rng=os.urandom)
    total = args.accounts + args.lookups
    print(f"accounts: {total:,} (log leaves {kt.size:,}, map versions {total:,})")
    print(f"registration (map + version tree + log append, no VRF): "
          f"{args.accounts / bulk:,.0f}/s ({bulk / args.accounts * 1e6:.0f} us each)")
    print(f"VRF evaluation (once per username): {statistics.median(vrf_times) * 1e3:.3f} ms")

    note = kt.checkpoint()
    witness = Witness(witness_signer, log_signer.public)
    note = add_cosignature(note, witness.cosign(note, [], now_ms=now))
    policy = KTPolicy(log_key=log_signer.public, vrf_key=vrf_key.public,
                      witnesses=(witness_signer.public,))

    gen, verify, sizes, opens, vrfs = [], [], [], [], []
    parts: dict[str, list[int]] = {k: [] for k in
                                   ("vrf", "log inclusion", "map", "version", "checkpoint")}
    for name in users:
        t = time.perf_counter()
        resp = kt.lookup(name, note)
        gen.append(time.perf_counter() - t)
        data = resp.encode()
        t = time.perf_counter()
        result = verify_lookup(policy, None, name, type(resp).decode(data), now_ms=now)
        verify.append(time.perf_counter() - t)
        assert result.state is not None
        t = time.perf_counter()
        policy.open(resp.entry.checkpoint, now)
        opens.append(time.perf_counter() - t)
        t = time.perf_counter()
        vrf_verify(vrf_key.public, name.encode(), resp.entry.vrf_proof)
        vrfs.append(time.perf_counter() - t)
        e = resp.entry
        parts["vrf"].append(len(e.vrf_proof))
        parts["log inclusion"].append(32 * len(e.leaf_proof) + len(e.leaf))
        parts["map"].append(len(e.map_proof.encode()) + 4 + len(e.version_root))
        parts["version"].append(32 * len(resp.version_proof) + len(resp.opening))
        parts["checkpoint"].append(len(e.checkpoint))
        sizes.append(len(data) - len(resp.state) - len(e.checkpoint))

    print(f"lookup proof generation: median {statistics.median(gen) * 1e3:.3f} ms, "
          f"p99 {_percentile(gen, 0.99) * 1e3:.3f} ms")
    print(f"client verification of a lookup: median {statistics.median(verify) * 1e3:.3f} ms, "
          f"p99 {_percentile(verify, 0.99) * 1e3:.3f} ms")
    print(f"  of which the checkpoint (log signature + 1 cosignature): median "
          f"{statistics.median(opens) * 1e3:.3f} ms; the VRF proof: median "
          f"{statistics.median(vrfs) * 1e3:.3f} ms")
    print(f"lookup proofs (response without state and checkpoint): median "
          f"{statistics.median(sizes):.0f} B, max {max(sizes)} B")
    for k, v in parts.items():
        print(f"  {k}: median {statistics.median(v):.0f} B, max {max(v)} B")


if __name__ == "__main__":
    main()
