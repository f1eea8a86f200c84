"""The batch fold of queued directory changes (server/storage/kt.py ``fold``): many
changes folded at once give byte for byte the leaves (map roots, commitments) of the
same changes folded one by one, and a server killed between a change's commit and its
fold loses nothing: the next start folds it."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sottovoce.crypto.rng import Random
from sottovoce.kt.checkpoint import NoteKey
from sottovoce.kt.map import ChangeKind, LogLeaf
from sottovoce.kt.merkle import fold_range, root_nodes
from sottovoce.kt.prover import KTLog
from sottovoce.kt.verify import KTPolicy, LookupResponse, LookupResult, verify_lookup
from sottovoce.kt.witness import AuditingWitness
from sottovoce.server.kt_log import KTService
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage.kt import KTWriter
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.unit.test_server_kt_storage import LOG, NOW, VRF, WITNESS, Account, _lookup


def _counting_rng() -> Random:
    counter = itertools.count()

    def rng(n: int) -> bytes:
        return hashlib.sha256(next(counter).to_bytes(8, "big")).digest()[:n]

    return rng


async def _changes(
    st: SqliteStorage, accounts: list[Account], certs: dict[tuple[str, str], bytes], *,
    fold_each: bool,
) -> None:
    """The same directory changes on every store: registrations, devices added and
    revoked, a recovery installing new keys, a deletion; several of one account in a
    row (and so in one batch)."""
    async def step() -> None:
        if fold_each:
            assert len(await st.kt_fold()) == 1

    for a in accounts:
        await st.create_account(a.user, a.ak.public, "d1", certs[(a.user, "d1")], NOW)
        await step()
    for a in accounts[::3]:
        await st.add_device(a.user, "d2", certs[(a.user, "d2")], NOW)
        await step()
        await st.revoke_device(a.user, "d1", NOW)
        await step()
    await st.kt_record(accounts[1].user, ChangeKind.RECOVERY, NOW,
                       account_key=b"\x05" * 32, recovery_key=b"\x06" * 32)
    await step()
    await st.add_device(accounts[1].user, "d2", certs[(accounts[1].user, "d2")], NOW)
    await step()
    await st.delete_account(accounts[2].user, NOW)
    await step()


async def test_many_changes_folded_at_once_give_the_leaves_of_one_by_one(tmp_path: Path) -> None:
    log = JsonLogger(io.StringIO())
    accounts = [Account(f"user{i}") for i in range(12)]
    # The same certificates on both stores.
    certs = {(a.user, d): a.cert(d) for a in accounts for d in ("d1", "d2")}
    leaves: list[list[bytes]] = []
    roots = []
    for name, fold_each in (("one", True), ("batch", False)):
        st = SqliteStorage(tmp_path / f"{name}.sqlite3", logger=log)
        st.kt_writer = KTWriter(vrf=VRF, rng=_counting_rng())
        await st.open()
        try:
            await _changes(st, accounts, certs, fold_each=fold_each)
            if not fold_each:
                assert await st.kt_size() == 0
                # In batches of 7: a batch's end need not fall where one account's changes do.
                while await st.kt_fold(7):
                    pass
            assert await st.kt_pending() == 0
            size = await st.kt_size()
            leaves.append(await st.kt_leaves(0, size))
            nodes = await st.kt_log_nodes(set(root_nodes(size)))
            roots.append(fold_range([nodes[n] for n in root_nodes(size)]))
            recovered = await _lookup(st, accounts[1].user)
            assert recovered.state is not None and recovered.state.recovery_key == b"\x06" * 32
            assert len(recovered.state.devices) == 2  # the new keys, and its devices kept
            gone = await _lookup(st, accounts[2].user)
            assert gone.state is not None and gone.state.deleted
            moved = await _lookup(st, accounts[3].user)
            assert moved.version == 2 and moved.state is not None
            assert [d.device_id for d in moved.state.devices] == ["d2"]
            note = KTLog(await st.kt_snapshot("user0", size, 0, every_version=False),
                         vrf_key=VRF, log_signer=LOG).checkpoint()
            AuditingWitness(WITNESS, LOG.public).cosign_audited(note, leaves[-1], now_ms=NOW)
        finally:
            await st.close()
    assert len(leaves[0]) == 12 + 2 * 4 + 3
    assert leaves[0] == leaves[1] and roots[0] == roots[1]
    assert [LogLeaf.decode(x).epoch for x in leaves[1]] == list(range(len(leaves[1])))


async def _verified(kt: KTService, user: str) -> LookupResult:
    """``user``'s lookup as the server answers it, checked as a client checks it."""
    keys = kt.keys()
    policy = KTPolicy(log_key=NoteKey.from_vkey(keys["log_key"]), vrf_key=kt.vrf.public,
                      witnesses=tuple(NoteKey.from_vkey(w) for w in keys["witnesses"]))
    data = await kt._answer(user, 0, history=False)
    return verify_lookup(policy, None, user, LookupResponse.decode(data),
                         now_ms=time.time_ns() // 1_000_000)


_CHILD = """
import asyncio, io, os, secrets, signal, sys
from pathlib import Path
from sottovoce.server.kt_log import KTService
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage.kt import KTWriter
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.unit.test_server_kt_storage import NOW, VRF, Account

async def main():
    st = SqliteStorage(Path(sys.argv[1]), logger=JsonLogger(io.StringIO()))
    st.kt_writer = KTWriter(vrf=VRF, rng=secrets.token_bytes)
    await st.open()
    for i in range(int(sys.argv[2])):
        a = Account(f"user{i}")
        await st.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
    print("committed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # before any fold: no close, no checkpoint

asyncio.run(main())
"""


async def test_changes_committed_before_a_kill_are_folded_by_the_next_start(
    tmp_path: Path,
) -> None:
    from sottovoce.server import kt_log
    from sottovoce.server.config import ServerConfig

    db = tmp_path / "db.sqlite3"
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(db), "6", cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == -signal.SIGKILL and out == b"committed\n"

    log = JsonLogger(io.StringIO())
    st = SqliteStorage(db, logger=log)
    kt = kt_log.from_config(ServerConfig(data_dir=tmp_path / "data"), st, log)
    await st.open()
    try:
        assert await st.kt_pending() == 6 and await st.kt_size() == 0
        await kt.start()  # as the server starts, before it listens
        assert await st.kt_pending() == 0 and await st.kt_size() == 6
        served = await kt.sync()  # the first round, which run() makes at once
        assert served is not None and served.size == 6
        leaves = await st.kt_leaves(0, 10)
        assert [LogLeaf.decode(x).kind for x in leaves] == [ChangeKind.REGISTRATION] * 6
        for i in range(6):
            found = await _verified(kt, f"user{i}")
            assert found.version == 0
    finally:
        await kt.close()
        await st.close()


async def test_a_fold_that_fails_leaves_the_round_serving_what_was_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fold error is logged; the round still signs the log as it is, and the changes
    stay queued for the next round."""
    from sottovoce.server import kt_log
    from sottovoce.server.config import ServerConfig

    out = io.StringIO()
    log = JsonLogger(out)
    st = SqliteStorage(tmp_path / "db.sqlite3", logger=log)
    kt = kt_log.from_config(ServerConfig(data_dir=tmp_path / "data"), st, log)
    await st.open()
    try:
        a = Account("alice")
        await st.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        assert (await kt.sync()) is not None
        b = Account("bob")
        await st.create_account(b.user, b.ak.public, "d1", b.cert("d1"), NOW)

        async def broken(limit: int) -> list[LogLeaf]:
            raise OSError("disk gone")

        monkeypatch.setattr(st, "kt_fold", broken)
        served = await kt.sync()
        assert served is not None and served.size == 1
        assert '"event":"kt.fold_failed","error":"OSError"' in out.getvalue()
        assert await st.kt_pending() == 1
        monkeypatch.undo()
        served = await kt.sync()
        assert served is not None and served.size == 2 and await st.kt_pending() == 0
    finally:
        await kt.close()
        await st.close()
