"""Key-transparency cores at N accounts (default 1,000,000), all in memory; and the
server's log in its real SQLite store.

    python bench/kt.py [--accounts N] [--lookups L]
    python bench/kt.py --sqlite N [--timed K] [--lookups L] [--quick-load] [--keep DIR]

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
  inclusion, VRF, map proof, version inclusion, commitment, state decoding), both
  the first at its checkpoint (signatures checked) and a later one (a client checks
  a checkpoint's signatures once and remembers them).

Figures are medians (and p99) over the L lookups, in CPU time
(``time.process_time``: the bench is one thread, and other jobs on the machine move
wall-clock times far more). Targets: a lookup's proofs
<= 2 KiB; verification <= 1 ms.

``--sqlite N``: the server's own store (server/storage/sqlite.py, WAL,
synchronous=FULL, group commit) and key-transparency service (server/kt_log.py,
co-located witness), at N accounts, each with a real device certificate. The first
N - K (``--timed K``, default 20,000) are bulk-loaded: their certificates and VRF
labels made in a process pool (``--workers P``, default one per core), their
accounts written by the same storage code as a registration
(``accounts.create_account``, which queues each change for the log) in
10,000-account transactions into two stores, one without a log and one with it,
their labels stored in bulk (``kt.store_labels``) and the queue folded into the log
by the real fold (``kt.fold``) 250,000 changes at a time; then both WALs are
checkpointed. ``--quick-load``: the bulk accounts share 256 account keys per pool
process, and only the names the bench looks up get real VRF labels (the others
random bytes in their place: the map has the same shape), which cuts the load's CPU
by about two thirds. Then the last K are registered through
``Storage.create_account``, 64 in flight as many clients would send them, in the same
run: all K into the store without a log; half into the store with it while no
checkpoint round runs (the request alone: the change and its queued row), then one
round that folds them and signs; the other half while rounds run back to back as a
server runs them (each folds what is queued, signs, the co-located witness cosigns).
Then lookups answered the way the server answers ``sottovoce.kt.lookup`` (read the
rows as of the served checkpoint, build the proofs, encode), asked by a load
generator in another process (this script with ``--generator``) over TCP
connections on 127.0.0.1, one per lookup in flight (a name a line, the answer's
bytes back). First the served checkpoint's cache is filled with the map's upper
depths (``KTService.warm``: the background read a server starts when it serves a
checkpoint; its wall and CPU time printed; the code before had none). Then
L names 8 at once right after the checkpoint (what lookups share --
upper map nodes, log proofs -- not read yet), then L others one at a time, L others
8 at once, L others 64 at once, each name for the first time at that checkpoint;
then the third L names again (a server that keeps its answers per checkpoint
answers those from memory). The generator then checks each answer with
``verify_lookup`` (its CPU time reported), and the first L again (a client that
checked a name's VRF proof before). Last, lookups right after a new checkpoint (3
changes folded), 8 at once, answered in the serving process: with the upper map nodes
carried over from the checkpoint before, then after another new checkpoint with the
cache emptied, twice each; the CPU spent before those lookups (the first one, the
carry and the background fill, waited for) is printed apart. CPU time is
``time.process_time`` of the serving process (all its threads, not the generator's).
``--keep DIR``: the stores are built in DIR and kept; a later run with the same DIR
measures the lookups only.
``KT_BENCH_DIR``: where the temporary databases go.

    python bench/kt.py --sqlite 1000000 --timed 20000 --lookups 1000 --quick-load --keep DIR

No WebSocket or session rate limits in these: the cost of the relay's framing is in the
relay figures, and in ``--through-server``:

    python bench/kt.py --through-server K [--pairs P] [--server-store DIR]

K registrations as a client makes them (``sottovoce.register`` over a new WebSocket
each, proof of work solved on refusal, 64 in flight from one client process) sent to
a real ``sottovoce server`` subprocess on SQLite: once to a server without the log
(the same command with the key-transparency service left out, so no change is queued,
folded or checkpointed) and once to a server with it, alternated P times (default 2).
Each server's CPU time (user + system, ``/proc/PID/stat``) is read before the K
registrations and, with the log, after the checkpoint covering all K is served (every
change folded, signed and cosigned); 64 registrations before are not counted. The
servers run on new empty stores, or with ``--server-store DIR`` on the stores a
``--keep DIR`` run built (plain.sqlite3 for the server without the log, kt.sqlite3 and
its keys for the one with it: the files are moved into the servers' data directories
and written, so DIR must be a copy). Proof of work at 4 bits (the server's check costs
the same at every difficulty; a client would spend seconds per registration solving
the default one).

    python bench/kt.py --fold-more K [--fold-batch B] --keep DIR

K more accounts registered through ``Storage.create_account`` into the store kept in
DIR (a copy: it is written), folded B per round as a server's rounds fold them (new
names' VRF labels included); CPU (``time.process_time``) per folded change, and per
registration request, beside the same registrations into DIR's store without the log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.kt import checkpoint as checkpoint_module
from sottovoce.kt import vrf as vrf_module
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


def _forget_checkpoints() -> None:
    """As a client that has not opened this checkpoint yet: its signatures unchecked."""
    checkpoint_module._VERIFIED.clear()
    checkpoint_module._OPENED.clear()


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--sqlite", type=int, metavar="N",
                    help="measure the server's log in SQLite at N accounts instead")
    ap.add_argument("--timed", type=int, default=20_000, metavar="K",
                    help="with --sqlite: the last K registrations are timed one request "
                         "each; the N - K before are bulk-loaded")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="P",
                    help="with --sqlite: processes making the bulk accounts' certificates "
                         "and VRF labels")
    ap.add_argument("--keep", metavar="DIR",
                    help="with --sqlite: build the stores in DIR and keep them; if DIR holds "
                         "them already, measure the lookups only")
    ap.add_argument("--quick-load", action="store_true",
                    help="with --sqlite: bulk accounts share account keys, and only the "
                         "names looked up get real VRF labels (random ones for the others)")
    ap.add_argument("--fold-more", type=int, metavar="K",
                    help="with --keep DIR (a copy: it is written): register K more accounts "
                         "into the kept store and fold them, --fold-batch per round")
    ap.add_argument("--fold-batch", type=int, default=256, metavar="B")
    ap.add_argument("--through-server", type=int, metavar="K",
                    help="K registrations through a real server subprocess, without and "
                         "with the log, alternated --pairs times")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--server-store", metavar="DIR",
                    help="with --through-server: run the servers on the stores of a --keep "
                         "DIR (a copy: they are moved and written)")
    ap.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--plain-server"]:
        sys.exit(_plain_server(sys.argv[2:]))
    args = ap.parse_args()
    if args.generator:
        _generator()
        return
    if args.fold_more:
        if not args.keep:
            ap.error("--fold-more needs --keep DIR")
        asyncio.run(fold_more(args.keep, args.fold_more, args.fold_batch))
        return
    if args.through_server:
        asyncio.run(through_server(args.through_server, args.pairs, args.server_store))
        return
    if args.sqlite:
        # The lookups are served in this process: on uvloop, as `sottovoce server` runs.
        import uvloop

        uvloop.run(sqlite_bench(args.sqlite, args.lookups, args.timed, args.workers,
                                args.keep, args.quick_load))
        return
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

    gen, verify, verify_cold, sizes, opens, vrfs = [], [], [], [], [], []
    verify_again: list[float] = []
    parts: dict[str, list[int]] = {k: [] for k in
                                   ("vrf", "log inclusion", "map", "version", "checkpoint")}
    for name in users:
        t = time.process_time()
        resp = kt.lookup(name, note)
        gen.append(time.process_time() - t)
        data = resp.encode()
        _forget_checkpoints()  # a client's first lookup at this checkpoint
        vrf_module._VERIFIED.clear()  # and of this name
        t = time.process_time()
        result = verify_lookup(policy, None, name, type(resp).decode(data), now_ms=now)
        verify_cold.append(time.process_time() - t)
        vrf_module._VERIFIED.clear()
        t = time.process_time()  # every later lookup at this checkpoint, of another name
        result = verify_lookup(policy, None, name, type(resp).decode(data), now_ms=now)
        verify.append(time.process_time() - t)
        t = time.process_time()  # the same name again (its VRF proof checked before)
        result = verify_lookup(policy, None, name, type(resp).decode(data), now_ms=now)
        verify_again.append(time.process_time() - t)
        assert result.state is not None
        _forget_checkpoints()
        t = time.process_time()
        policy.open(resp.entry.checkpoint, now)
        opens.append(time.process_time() - t)
        t = time.process_time()
        vrf_verify(vrf_key.public, name.encode(), resp.entry.vrf_proof)
        vrfs.append(time.process_time() - t)
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
          f"p99 {_percentile(verify, 0.99) * 1e3:.3f} ms (checkpoint's signatures checked "
          f"before); the first at a checkpoint: median "
          f"{statistics.median(verify_cold) * 1e3:.3f} ms, "
          f"p99 {_percentile(verify_cold, 0.99) * 1e3:.3f} ms; a name checked before "
          f"(a contact looked up again): median {statistics.median(verify_again) * 1e3:.3f} "
          f"ms, p99 {_percentile(verify_again, 0.99) * 1e3:.3f} ms")
    print(f"  of which the checkpoint (log signature + 1 cosignature): median "
          f"{statistics.median(opens) * 1e3:.3f} ms; the VRF proof: median "
          f"{statistics.median(vrfs) * 1e3:.3f} ms")
    print(f"lookup proofs (response without state and checkpoint): median "
          f"{statistics.median(sizes):.0f} B, max {max(sizes)} B")
    for k, v in parts.items():
        print(f"  {k}: median {statistics.median(v):.0f} B, max {max(v)} B")


def _certs(first: int, n: int, account_keys: list[Any] | None = None,
           ) -> list[tuple[str, bytes, bytes]]:
    """(username, account key, certificate) of accounts ``first`` .. ``first + n - 1``;
    each its own new account key, or one of ``account_keys`` in turn."""
    from sottovoce.identity import AccountKey, DeviceCertificate, DevicePublicKeys

    out = []
    for i in range(first, first + n):
        ak = (account_keys[i % len(account_keys)] if account_keys
              else AccountKey.generate(os.urandom))
        keys = DevicePublicKeys(signing_key=os.urandom(32), olm_identity_key=bytes(32),
                                olm_signing_key=bytes(32))
        name = f"user{i:07d}"
        cert = DeviceCertificate.issue(ak, username=name, device_id="d1", keys=keys,
                                       now_ms=int(time.time() * 1000))
        out.append((name, ak.public, cert.encode()))
    return out


def _bulk_op(certs: list[tuple[str, bytes, bytes]], now: int, kt: Any) -> Any:
    """Many registrations in one transaction, each exactly as one request makes it
    (storage/accounts.py ``create_account``: the account, its device, its statement and,
    with the log, its queued change)."""
    from sottovoce.server.storage import accounts

    for name, ak, cert in certs:
        yield from accounts.create_account(name, ak, "d1", cert, now, None, kt)


async def _register(st: Any, certs: list[tuple[str, bytes, bytes]], now: int) -> float:
    """Seconds to register ``certs``, 64 in flight, as many clients would."""
    sem = asyncio.Semaphore(64)

    async def one(name: str, ak: bytes, cert: bytes) -> None:
        async with sem:
            await st.create_account(name, ak, "d1", cert, now)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(*c) for c in certs))
    return time.perf_counter() - t0


async def sqlite_bench(n: int, lookups: int, timed: int, workers: int,
                       keep: str | None, quick: bool) -> None:
    import contextlib
    import io
    import tempfile
    from pathlib import Path

    from sottovoce.server import kt_log
    from sottovoce.server.config import ServerConfig
    from sottovoce.server.logs import JsonLogger
    from sottovoce.server.storage.sqlite import SqliteStorage

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with contextlib.ExitStack() as stack:
        if keep:
            tmp = keep
            Path(tmp).mkdir(parents=True, exist_ok=True)
        else:
            tmp = stack.enter_context(
                tempfile.TemporaryDirectory(dir=os.environ.get("KT_BENCH_DIR")))
        built = (Path(tmp) / "kt.sqlite3").exists()
        log = JsonLogger(io.StringIO())
        st = SqliteStorage(Path(tmp) / "kt.sqlite3", logger=log)
        kt = kt_log.from_config(ServerConfig(data_dir=Path(tmp) / "data"), st, log)
        await st.open()
        if built:  # --keep of a store built before: the lookups only
            served = await kt.sync()
            print(f"the store in {tmp}: {served.size if served else 0:,} log leaves")
        else:
            plain = SqliteStorage(Path(tmp) / "plain.sqlite3", logger=log)
            await plain.open()
            real = (frozenset(_picks(n, lookups)) if quick else None)
            await _load_and_register(plain, st, kt, Path(tmp), n, timed, workers, real)
        await _lookups(st, kt, n, lookups)
        await kt.close()
        await st.close()


async def _load_and_register(plain: Any, st: Any, kt: Any, tmp: Any, n: int, timed: int,
                             workers: int, real: frozenset[int] | None) -> None:
    """Bulk-load the first n - timed accounts, then time the last ``timed``
    registrations without and with the log (module docstring)."""
    now = int(time.time() * 1000)
    timed = min(timed, n)
    bulk = n - timed
    if bulk:
        await _bulk_load(plain, st, kt.vrf.private_bytes().expose(), bulk, now, workers, real)
        for path in (tmp / "plain.sqlite3", tmp / "kt.sqlite3"):
            _wal_checkpoint(path)
    certs = _certs(bulk, timed)
    c = time.process_time()
    base = await _register(plain, certs, now)
    base_cpu = time.process_time() - c
    await plain.close()
    half = timed // 2
    # With the log, the request alone: each change and its queued row; then the
    # checkpoint round that folds them all (in FOLD_BATCH transactions) and signs.
    c = time.process_time()
    queued = await _register(st, certs[:half], now)
    queued_cpu = time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    served = await kt.sync()
    folded, folded_cpu = time.perf_counter() - t, time.process_time() - c
    assert served is not None and served.size == bulk + half
    # With the log as a server runs it: checkpoint rounds (each folds what is
    # queued, signs, the co-located witness cosigns) run while the changes arrive,
    # as each change's request triggers one.
    done = asyncio.Event()
    rounds = 0

    async def server_rounds() -> None:
        nonlocal rounds
        while not done.is_set():
            await kt.sync()
            rounds += 1
            await asyncio.sleep(0)

    c = time.process_time()
    roundtask = asyncio.create_task(server_rounds())
    t0 = time.perf_counter()
    with_kt = await _register(st, certs[half:], now)
    done.set()
    await roundtask
    served = await kt.sync()  # the rest of the queue
    drained = time.perf_counter() - t0
    kt_cpu = time.process_time() - c
    assert served is not None and served.size == n and await st.kt_pending() == 0
    rest = timed - half
    per, per_cpu = base / timed, base_cpu / timed
    print(f"at {bulk:,} -> {n:,} accounts, registrations 64 in flight:")
    print(f"  without the log ({timed:,}): {timed / base:,.0f}/s ({per * 1e6:.0f} us each, "
          f"{per_cpu * 1e6:.0f} us CPU)")
    print(f"  with the log, the requests alone ({half:,}, change + queued row): "
          f"{half / queued:,.0f}/s ({queued / half * 1e6:.0f} us each, "
          f"x{queued / half / per:.2f}; {queued_cpu / half * 1e6:.0f} us CPU, "
          f"x{queued_cpu / half / per_cpu:.2f})")
    print(f"    then one round folding them: {folded / half * 1e6:.0f} us each "
          f"({folded_cpu / half * 1e6:.0f} us CPU, the VRF label included); request "
          f"and fold x{(queued + folded) / half / per:.2f} wall, "
          f"x{(queued_cpu + folded_cpu) / half / per_cpu:.2f} CPU")
    print(f"  with the log and rounds running meanwhile ({rest:,}, {rounds + 1} rounds): "
          f"{rest / with_kt:,.0f}/s ({with_kt / rest * 1e6:.0f} us each, "
          f"x{with_kt / rest / per:.2f}); until all folded and cosigned "
          f"{drained / rest * 1e6:.0f} us each (x{drained / rest / per:.2f}), "
          f"{kt_cpu / rest * 1e6:.0f} us CPU (x{kt_cpu / rest / per_cpu:.2f})")
    t = time.perf_counter()
    for _ in range(3):
        a = _certs(n + _, 1)[0]
        await st.create_account(a[0], a[1], "d1", a[2], now)
    served = await kt.sync()
    print(f"a checkpoint round folding 3 changes: {(time.perf_counter() - t) * 1e3:.1f} ms "
          f"at size {served.size if served else 0:,}")
    size = os.path.getsize(tmp / "kt.sqlite3") + os.path.getsize(tmp / "kt.sqlite3-wal")
    print(f"database with the log: {size / n:,.0f} B per account")


async def _lookups(st: Any, kt: Any, n: int, lookups: int) -> None:
    """Lookups answered as the server answers them, asked by a load generator in
    another process, each name the first time at the served checkpoint, and each
    answer verified there as a client verifies it (module docstring)."""
    # Four sets of names, each asked for the first time at this checkpoint (what
    # earlier lookups warmed -- upper map nodes, log proofs -- is shared, as on a
    # server answering many names); then the third set again.
    picks = [f"user{i:07d}" for i in _picks(n, lookups)]
    sets = [picks[i::4] for i in range(4)]
    plan = [(names, at_once) for names, at_once in zip(sets, (8, 1, 8, 64), strict=True)]
    plan.append((sets[2], 8))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: a name a line in, each answer's bytes out (length first)."""
        try:
            while line := await reader.readline():
                data = await kt._answer(line.decode().strip(), 0, history=False)
                writer.write(len(data).to_bytes(4, "big") + data)
        finally:
            writer.close()

    import json
    import sys

    warm = getattr(kt, "warm", None)  # the code before had none
    if warm is not None:
        t, c = time.perf_counter(), time.process_time()
        await warm()
        from sottovoce.server.storage.kt import CACHE_DEPTH

        print(f"the map's upper depths (0-{CACHE_DEPTH}) read into the served checkpoint's "
              f"cache in the background first: {len(kt._map_cache.nodes):,} "
              f"nodes, {time.perf_counter() - t:.2f} s wall, {time.process_time() - c:.2f} s CPU")
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    gen = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--generator", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, limit=1 << 26)
    assert gen.stdin is not None and gen.stdout is not None
    gen.stdin.write(json.dumps({"port": server.sockets[0].getsockname()[1], "plan": plan,
                                "keys": kt.keys(), "vrf_key": kt.vrf.public.hex()}).encode()
                    + b"\n")
    await gen.stdin.drain()
    figures = []
    for names, at_once in plan:
        assert json.loads(await gen.stdout.readline()) == "start"
        c = time.process_time()
        wall = json.loads(await gen.stdout.readline())
        cpu = time.process_time() - c
        figures.append(f"{len(names) / wall:,.0f}/s {at_once} at once "
                       f"({cpu / len(names) * 1e6:.0f} us CPU each)")
    found = json.loads(await gen.stdout.readline())
    await gen.wait()
    server.close()
    assert gen.returncode == 0 and found["again_same"]
    sizes, verify, again = found["sizes"], found["verify"], found["again"]
    print("lookups with proofs served (the load generator in another process, a TCP "
          "connection on 127.0.0.1 per lookup in flight), each name the first time at "
          f"this checkpoint: the first {len(sets[0]):,} names (nothing of the checkpoint "
          f"read yet) {figures[0]}; then {', '.join(figures[1:4])}; server CPU only")
    print(f"  response median {statistics.median(sizes):.0f} B, max {max(sizes)} B; all "
          f"{len(sizes):,} verify, client verification median "
          f"{statistics.median(verify) * 1e3:.3f} ms, p99 "
          f"{_percentile(verify, 0.99) * 1e3:.3f} ms (the checkpoint's signatures checked "
          f"once; each name's VRF proof the first time); the first {len(again):,} names "
          f"again (VRF proof checked before): median {statistics.median(again) * 1e3:.3f} "
          f"ms, p99 {_percentile(again, 0.99) * 1e3:.3f} ms")
    print(f"lookups of the same names again at this checkpoint: {figures[4]}")
    await _after_checkpoint(st, kt, sets)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


async def _after_checkpoint(st: Any, kt: Any, sets: list[list[str]]) -> None:
    """Lookups right after a new checkpoint (3 changes folded), 8 at once, answered in
    this process: with the upper map nodes carried over from the checkpoint before
    (the server's way), then, after another new checkpoint, with an empty cache (as
    before); alternated twice, each round on names not asked at that checkpoint."""
    from sottovoce.server.storage.kt import AppendCache

    async def ask(names: list[str]) -> float:
        sem = asyncio.Semaphore(8)

        async def one(name: str) -> None:
            async with sem:
                await kt._answer(name, 0, history=False)

        c = time.process_time()
        await asyncio.gather(*(one(n) for n in names))
        return (time.process_time() - c) / len(names) * 1e6

    now = int(time.time() * 1000)
    out: dict[str, list[float]] = {"carried": [], "cold": []}
    prepared: dict[str, list[float]] = {"carried": [], "cold": []}
    warm = getattr(kt, "warm", None)  # the code before had none
    for round_ in range(4):
        size = (await kt.sync()).size
        for i in range(3):
            a = _certs(10_000_000 + size + i, 1)[0]
            await st.create_account(a[0], a[1], "d1", a[2], now)
        await kt.sync()
        how = "carried" if round_ % 2 == 0 else "cold"
        if how == "cold":
            kt._map_cache = AppendCache()
        names = sets[round_]
        c = time.process_time()
        await kt._answer(names[0], 0, history=False)  # the checkpoint's log part
        if warm is None:
            await asyncio.sleep(0.05)  # the carry task (one read) runs
        else:  # carried over, then the upper depths' other nodes read
            await warm()
        prepared[how].append(time.process_time() - c)
        out[how].append(await ask(names[1:]))
    print("lookups right after a new checkpoint (3 changes folded), 8 at once, server CPU "
          "per lookup: upper map nodes carried over "
          + ", ".join(f"{x:.0f}" for x in out["carried"]) + " us; read again (cache empty) "
          + ", ".join(f"{x:.0f}" for x in out["cold"]) + " us")
    print("  CPU before those lookups (the first lookup, the cache carried over and filled): "
          + ", ".join(f"{x * 1e3:.0f}" for x in prepared["carried"]) + " ms carried; "
          + ", ".join(f"{x * 1e3:.0f}" for x in prepared["cold"]) + " ms emptied")


def _generator() -> None:
    """The load generator (its own process, ``--generator``): the server's port, the
    plan and the keys as one JSON line on stdin; figures as JSON lines on stdout."""
    import json
    import sys

    job = json.loads(sys.stdin.readline())

    def send(obj: Any) -> None:
        print(json.dumps(obj), flush=True)

    asyncio.run(_generate(job["port"], job["plan"], send, job["keys"],
                          bytes.fromhex(job["vrf_key"])))


async def _generate(port: int, plan: list[tuple[list[str], int]], send: Any,
                    keys: dict[str, Any], vrf_key: bytes) -> None:
    """Ask each set of names over ``at_once`` connections, telling the server side when
    each set starts and how long it took; then verify every answer as a client does."""
    from sottovoce.kt.checkpoint import NoteKey
    from sottovoce.kt.verify import LookupResponse

    got: list[list[bytes]] = []
    for names, at_once in plan:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(at_once)]
        todo = iter(enumerate(names))
        answers: list[bytes] = [b""] * len(names)

        async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      todo: Any = todo, answers: list[bytes] = answers) -> None:
            for i, name in todo:
                writer.write(name.encode() + b"\n")
                size = int.from_bytes(await reader.readexactly(4), "big")
                answers[i] = await reader.readexactly(size)

        send("start")
        t = time.perf_counter()
        await asyncio.gather(*(ask(r, w) for r, w in conns))
        send(time.perf_counter() - t)
        for _, w in conns:
            w.close()
        got.append(answers)
    policy = KTPolicy(log_key=NoteKey.from_vkey(keys["log_key"]), vrf_key=vrf_key,
                      witnesses=tuple(NoteKey.from_vkey(w) for w in keys["witnesses"]))
    verify, again, now = [], [], int(time.time() * 1000)
    for (names, _), answers in zip(plan[:4], got[:4], strict=True):
        for name, data in zip(names, answers, strict=True):
            t = time.process_time()
            result = verify_lookup(policy, None, name, LookupResponse.decode(data), now_ms=now)
            verify.append(time.process_time() - t)
            assert result.version == 0
            if len(again) < len(plan[0][0]):  # the same name again (a contact, later)
                t = time.process_time()
                verify_lookup(policy, None, name, LookupResponse.decode(data), now_ms=now)
                again.append(time.process_time() - t)
    send({"sizes": [len(a) for answers in got[:4] for a in answers], "verify": verify,
               "again": again, "again_same": got[4] == got[2]})


def _picks(n: int, lookups: int) -> list[int]:
    """The accounts the lookups ask for: 4 sets of ``lookups``, spread over all ``n``."""
    return [(i * 7919) % n for i in range(min(n, 4 * lookups))]


def _wal_checkpoint(path: Any) -> None:
    """Copy a store's WAL into its file and empty it, so a bulk load's last large
    transactions do not slow the timed requests after it (a server would have done
    it over the minutes such a load takes)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


#: Accounts per transaction of the bulk load, and per task of its process pool.
BULK_BATCH = 10_000
#: Queued changes per fold of the bulk load (one transaction: map nodes several
#: changes rewrote are written once per fold, so large folds write far fewer rows).
BULK_FOLD = 250_000
#: Pool tasks queued ahead of the writes, at most.
_AHEAD = 6

_POOL_VRF: VRFSecretKey | None = None
_POOL_REAL: frozenset[int] | None = None
_POOL_KEYS: list[Any] = []


def _pool_init(seed: bytes, real: frozenset[int] | None) -> None:
    global _POOL_VRF, _POOL_REAL
    from sottovoce.identity import AccountKey

    _POOL_VRF, _POOL_REAL = VRFSecretKey(seed), real
    if real is not None:
        _POOL_KEYS[:] = [AccountKey.generate(os.urandom) for _ in range(256)]


def _pool_make(first: int, n: int) -> tuple[list[tuple[str, bytes, bytes]],
                                            list[tuple[str, bytes, bytes]]]:
    """In a pool process: the certificates of accounts ``first`` .. ``first + n - 1`` and
    their names' VRF labels (what a fold would compute; the costliest part of a load).
    With ``--quick-load``: the accounts share 256 account keys per process, and only the
    names the bench looks up get their VRF label, the others 64 + 80 random bytes in
    its place (a VRF output is uniform: the map has the same shape)."""
    assert _POOL_VRF is not None
    certs = _certs(first, n, _POOL_KEYS or None)
    vrf = _POOL_VRF
    return certs, [
        (name, *(vrf.evaluate(name.encode()) if _POOL_REAL is None or first + i in _POOL_REAL
                 else (os.urandom(64), os.urandom(80))))
        for i, (name, _, _) in enumerate(certs)
    ]


async def _bulk_load(plain: Any, st: Any, seed: bytes, bulk: int, now: int,
                     workers: int, real: frozenset[int] | None) -> None:
    """The first ``bulk`` accounts, written by the same storage code as registrations
    (``accounts.create_account``: account, device, statement and, with the log, the
    queued change) in BULK_BATCH-account transactions into both stores; their
    certificates and VRF labels made in a process pool meanwhile, the labels stored
    (``kt.store_labels``), and the queue folded into the log (``kt.fold``, the real
    append) every BULK_FOLD changes. The result is the store a server that had
    registered them would have, checkpoints apart."""
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    from sottovoce.server.storage import kt as kt_tables

    t0, c0, k0 = time.perf_counter(), time.process_time(), os.times()
    waited = fold_s = write_s = 0.0
    queued = done = 0
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(workers, initializer=_pool_init, initargs=(seed, real)) as pool:
        starts = deque(range(0, bulk, BULK_BATCH))
        ahead: deque[Any] = deque()
        while starts or ahead:
            while starts and len(ahead) < _AHEAD:
                first = starts.popleft()
                ahead.append(loop.run_in_executor(
                    pool, _pool_make, first, min(BULK_BATCH, bulk - first)))
            t = time.perf_counter()
            certs, labels = await ahead.popleft()
            waited += time.perf_counter() - t
            t = time.perf_counter()
            await plain._write_op(_bulk_op, certs, now, None)
            await st._write_op(_bulk_op, certs, now, st.kt_writer)
            await st._write_op(kt_tables.store_labels, labels)
            write_s += time.perf_counter() - t
            queued += len(certs)
            done += len(certs)
            if queued >= BULK_FOLD or not (starts or ahead):
                t = time.perf_counter()
                while await st.kt_fold(BULK_FOLD):
                    pass
                fold_s += time.perf_counter() - t
                queued = 0
                print(f"  bulk {done:,} accounts, {time.perf_counter() - t0:.0f} s",
                      flush=True)
    k1 = os.times()
    pool_cpu = k1.children_user + k1.children_system - k0.children_user - k0.children_system
    print(f"bulk load of {bulk:,} accounts: {time.perf_counter() - t0:.0f} s wall "
          f"({waited:.0f} s waiting for the pool of {workers}, {write_s:.0f} s writing both "
          f"stores, {fold_s:.0f} s folding: {fold_s / bulk * 1e6:.0f} us per change); CPU "
          f"{time.process_time() - c0:.0f} s here + {pool_cpu:.0f} s in the pool "
          f"(certificates and VRF labels)")


# --- appending to a kept store; registrations through a real server ----------------------


async def fold_more(keep: str, k: int, batch: int) -> None:
    """``--fold-more K --keep DIR``: K more accounts registered (with the log) into the
    store kept in DIR, then folded as a server's rounds fold them, ``batch`` changes per
    round; CPU per folded change (VRF labels included), and the registrations' own CPU;
    the same accounts registered into DIR's store without the log in turn (the plain
    ``Storage.create_account`` of the same run). It writes into DIR: run it on a copy."""
    import io
    from pathlib import Path

    from sottovoce.server import kt_log
    from sottovoce.server.config import ServerConfig
    from sottovoce.server.logs import JsonLogger
    from sottovoce.server.storage.sqlite import SqliteStorage

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    log = JsonLogger(io.StringIO())
    st = SqliteStorage(Path(keep) / "kt.sqlite3", logger=log)
    kt = kt_log.from_config(ServerConfig(data_dir=Path(keep) / "data"), st, log)
    plain = SqliteStorage(Path(keep) / "plain.sqlite3", logger=log)
    await st.open()
    await plain.open()
    try:
        size = await st.kt_size()
        await kt.fold()
        first = 20_000_000 + size  # names no earlier run registered
        now = int(time.time() * 1000)
        reg_cpu = fold_cpu = fold_wall = plain_cpu = 0.0
        for start in range(0, k, batch):
            certs = _certs(first + start, min(batch, k - start))
            c = time.process_time()
            await _register(plain, certs, now)
            plain_cpu += time.process_time() - c
            c = time.process_time()
            await _register(st, certs, now)
            reg_cpu += time.process_time() - c
            t, c = time.perf_counter(), time.process_time()
            folded = await kt.fold()
            fold_cpu += time.process_time() - c
            fold_wall += time.perf_counter() - t
            assert folded == len(certs)
        print(f"{k:,} changes at {size:,} -> {size + k:,} log leaves, folded {batch} per "
              f"round: {fold_cpu / k * 1e6:.0f} us CPU per change ({fold_wall / k * 1e6:.0f} "
              f"us wall, the VRF label included); the requests {reg_cpu / k * 1e6:.0f} us "
              f"CPU each; without the log {plain_cpu / k * 1e6:.0f} us CPU each: request "
              f"x{reg_cpu / plain_cpu:.2f}, request and fold "
              f"x{(reg_cpu + fold_cpu) / plain_cpu:.2f}")
    finally:
        await kt.close()
        await st.close()
        await plain.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _server_cpu(pid: int) -> float:
    """A process's user + system CPU seconds (``/proc/PID/stat``)."""
    from pathlib import Path

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _plain_server(argv: list[str]) -> int:
    """``--plain-server ARGS``: ``sottovoce ARGS`` with no key-transparency log (the
    server as it was before it kept one: no queued change, no fold, no checkpoint)."""
    from sottovoce.cli.main import main as cli
    from sottovoce.server import app

    app.kt_log.from_config = lambda *_: None  # type: ignore[assignment,return-value]
    sys.argv = ["sottovoce", *argv]
    return int(cli() or 0)


async def through_server(k: int, pairs: int, store: str | None) -> None:
    """``--through-server K``: K registrations (``sottovoce.register`` over a new
    WebSocket each, 64 in flight, proof of work and signatures checked) sent to a real
    server subprocess on SQLite, without the log and with it, alternated ``pairs`` times;
    server CPU (``/proc/PID/stat``) per registration, with the log until every change is
    folded and the checkpoint covering it cosigned. ``--server-store DIR``: the servers
    run on the stores a ``--keep DIR`` run built (DIR/plain.sqlite3 and DIR/kt.sqlite3,
    moved into their data directories: run it on a copy); else on new empty stores."""
    import shutil
    import tempfile
    import urllib.request
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conformance.rawclient import Device, RawClient
    from tests.integration.serverproc import ServerProcess

    class PlainServer(ServerProcess):
        def command(self) -> list[str]:
            return [sys.executable, __file__, "--plain-server", *super().command()[3:]]

    async def register(url: str, device: Any, sem: asyncio.Semaphore) -> None:
        async with sem:
            client = await RawClient.open(url)
            try:
                reply = await client.register(device)
            finally:
                await client.close()
            if reply["event"] != "sottovoce.registered":
                raise RuntimeError(f"registration refused: {reply}")

    def checkpoint_size(srv: ServerProcess) -> int:
        with urllib.request.urlopen(srv.http_url + "/kt/checkpoint", timeout=5) as resp:
            return int(resp.read().decode().split("\n")[1])

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    root = Path(tempfile.mkdtemp(prefix="kt-through-", dir=os.environ.get("KT_BENCH_DIR")))
    dirs = {"plain": root / "plain", "log": root / "log"}
    if store is not None:  # the kept stores, each moved to where a server finds it
        for name, db, data in (("plain", "plain.sqlite3", root / "plain"),
                               ("log", "kt.sqlite3", Path(store) / "data")):
            data.mkdir(parents=True, exist_ok=True, mode=0o700)
            for suffix in ("", "-wal", "-shm"):
                if (Path(store) / (db + suffix)).exists():
                    os.replace(Path(store) / (db + suffix), data / ("sottovoce.sqlite3" + suffix))
            dirs[name] = data
    extra = ["--ip-rate", "1000000", "--ip-burst", "1000000", "--max-preauth-per-ip",
             "100000", "--log-level", "warning"]
    figures: dict[str, list[float]] = {"plain": [], "log": []}
    walls: dict[str, list[float]] = {"plain": [], "log": []}
    try:
        for pair in range(pairs):
            for how in ("plain", "log"):
                cls = PlainServer if how == "plain" else ServerProcess
                srv = cls(dirs[how], extra_args=extra).start(timeout=120)
                assert srv.proc is not None
                try:
                    devices = [Device.new(f"reg{pair}x{i:06d}{how[0]}") for i in range(k + 64)]
                    sem = asyncio.Semaphore(64)
                    # Warm up (first imports, caches, the first checkpoint), not counted.
                    await asyncio.gather(*(register(srv.ws_url, d, sem) for d in devices[:64]))
                    start = checkpoint_size(srv) if how == "log" else 0
                    c, t = _server_cpu(srv.proc.pid), time.perf_counter()
                    await asyncio.gather(*(register(srv.ws_url, d, sem) for d in devices[64:]))
                    if how == "log":  # until every change is folded and cosigned
                        while checkpoint_size(srv) < start + k:
                            await asyncio.sleep(0.02)
                    walls[how].append(time.perf_counter() - t)
                    figures[how].append(_server_cpu(srv.proc.pid) - c)
                finally:
                    srv.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{k:,} registrations through a real server (SQLite, 64 in flight, a WebSocket "
          f"each), {pairs} alternated pairs, server CPU per registration:")
    for how, label in (("plain", "without the log"),
                       ("log", "with the log, until all folded and cosigned")):
        print(f"  {label}: " + ", ".join(f"{x / k * 1e6:.0f}" for x in figures[how])
              + " us (wall " + ", ".join(f"{x / k * 1e6:.0f}" for x in walls[how]) + " us)")
    ratios = [b / a for a, b in zip(figures["plain"], figures["log"], strict=True)]
    print("  with / without: " + ", ".join(f"x{r:.2f}" for r in ratios)
          + "; what the log adds per change: "
          + ", ".join(f"{(b - a) / k * 1e6:.0f}" for a, b in
                      zip(figures["plain"], figures["log"], strict=True)) + " us")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
