"""Key transparency against the real server (server/kt_log.py, storage/kt.py): every
directory change grows the log and lookups' proofs verify with kt/verify.py; heads stay
consistent; witness processes cosign; an auditing witness refuses a tampered map; bad
requests get typed errors."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sottovoce.client import Client, ServerError
from sottovoce.client.store import TEST_KDF
from sottovoce.identity.succession import recovery_key_from_code
from sottovoce.kt.checkpoint import NoteKey, open_checkpoint
from sottovoce.kt.merkle import verify_consistency
from sottovoce.kt.verify import (
    HistoryResponse,
    KTPolicy,
    LookupResponse,
    MonitorState,
    OwnKeys,
    TrustedHead,
    check_extension,
    monitor_own_account,
    verify_lookup,
)
from sottovoce.protocol.kt import (
    KT_HEAD_RESULT,
    KT_HISTORY_RESULT,
    KT_LOOKUP_RESULT,
    KTHead,
    KTHeadResult,
    KTHistory,
    KTLookup,
    KTResponse,
)
from sottovoce.server.storage import engine_sqlite
from sottovoce.server.storage.kt import NO_RECOVERY_KEY
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess, free_port
from tests.kt_helpers import hide_an_account


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "srv").start()
    try:
        yield srv
    finally:
        srv.stop()


def _keys(srv: ServerProcess) -> dict[str, Any]:
    return json.loads(srv.http_get("/kt/keys"))  # type: ignore[no-any-return]


def _policy(srv: ServerProcess, *, min_cosignatures: int = 1) -> KTPolicy:
    keys = _keys(srv)
    return KTPolicy(log_key=NoteKey.from_vkey(keys["log_key"]),
                    vrf_key=base64.b64decode(keys["vrf_key"]),
                    witnesses=tuple(NoteKey.from_vkey(w) for w in keys["witnesses"]),
                    min_cosignatures=min_cosignatures)


async def _head(client: Client, since: int = 0) -> KTHeadResult:
    _, data = await client._conn.request(KTHead(since=since), frozenset({KT_HEAD_RESULT}))
    return KTHeadResult.from_wire(data)


async def _lookup(client: Client, user: str, since: int = 0) -> LookupResponse:
    _, data = await client._conn.request(
        KTLookup(username=user, since=since), frozenset({KT_LOOKUP_RESULT}))
    return LookupResponse.decode(KTResponse.from_wire(data).response)


def _now() -> int:
    return time.time_ns() // 1_000_000


async def test_each_directory_change_grows_the_log_and_lookups_verify(
    server: ServerProcess, tmp_path: Path
) -> None:
    policy = _policy(server)
    keys = _keys(server)
    assert keys["colocated_witness"] in keys["witnesses"]
    banner = server.output()  # what the operator reads at start: the key clients pin
    assert f"kt log:  {keys['log_key']}" in banner
    assert f"fingerprint {policy.log_key.fingerprint()}" in banner
    assert "co-located, not independent" in banner
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    try:
        head = await _head(alice)
        verified = open_checkpoint(head.checkpoint.encode(), log_key=policy.log_key,
                                   witnesses=policy.witnesses, min_cosignatures=1)
        assert verified.checkpoint.size == 2 and head.consistency == ()
        last = TrustedHead(size=2, root=verified.checkpoint.root, note=head.checkpoint.encode())

        found = verify_lookup(policy, last, "bob", await _lookup(alice, "bob", 2), now_ms=_now())
        assert found.version == 0 and found.state is not None
        assert found.state.account_key == bob.identity.account_key.public
        # The recovery key committed at registration (account create printed its code).
        assert bob.recovery_code is not None
        bob_rk = recovery_key_from_code(bob.recovery_code.expose().decode(), username="bob")
        assert found.state.recovery_key == bob_rk.public != NO_RECOVERY_KEY
        assert [d.device_id for d in found.state.devices] == [bob.device_id]

        tablet = await alice.add_device(tmp_path / "alice-tablet", PASSPHRASE, kdf=TEST_KDF)
        found = verify_lookup(policy, last, "alice", await _lookup(bob, "alice", 2),
                              now_ms=_now())
        assert found.version == 1 and found.state is not None
        assert {d.device_id for d in found.state.devices} == {alice.device_id, tablet.device_id}
        last = found.head
        assert last.size == 3

        old_account_key = alice.identity.account_key.public
        await alice.revoke_device(tablet.device_id)  # a succession to a new account key
        found = verify_lookup(policy, last, "alice", await _lookup(bob, "alice", 3),
                              now_ms=_now())
        assert found.version == 2 and found.state is not None
        assert [d.device_id for d in found.state.devices] == [alice.device_id]
        assert found.state.account_key == alice.identity.account_key.public != old_account_key
        await tablet.close()

        # A head with a consistency proof from the last size verifies against it.
        head = await _head(bob, since=last.size)
        newer = open_checkpoint(head.checkpoint.encode(), log_key=policy.log_key)
        check_extension(last, newer, list(head.consistency))
        assert newer.checkpoint.size == 4

        # The owner's history: every version, none it did not make.
        _, data = await alice._conn.request(KTHistory(), frozenset({KT_HISTORY_RESULT}))
        history = HistoryResponse.decode(KTResponse.from_wire(data).response)
        own = OwnKeys(devices=frozenset({(alice.device_id, alice.identity.device_key.public),
                                         (tablet.device_id, tablet.identity.device_key.public)}),
                      account_keys=frozenset({old_account_key,
                                              alice.identity.account_key.public}),
                      recovery_keys=frozenset({recovery_key_from_code(
                          alice.recovery_code.expose().decode(), username="alice").public}))
        mon = monitor_own_account(policy, None, "alice", own, MonitorState(), history,
                                  now_ms=_now())
        assert len(mon.new_versions) == 3

        await bob.delete_account()
        found = verify_lookup(policy, None, "bob", await _lookup(alice, "bob"), now_ms=_now())
        assert found.state is not None and found.state.deleted and found.head.size == 5
        # A name nobody holds is refused as a strict account is: no proof of absence to
        # another account, so the two cannot be told apart (docs/protocol.md §Discovery).
        with pytest.raises(ServerError) as info:
            await _lookup(alice, "carol")
        assert info.value.code == "unknown_user"

        # The HTTP view agrees: consistency between two heads from /kt/consistency.
        proof = json.loads(server.http_get("/kt/consistency?old=2&new=5"))["proof"]
        verify_consistency(2, 5, verified.checkpoint.root, found.head.root,
                           [base64.b64decode(p) for p in proof])
        leaves = json.loads(server.http_get("/kt/leaves?start=0&count=1000"))["leaves"]
        assert len(leaves) == 5
        assert server.http_get("/kt/checkpoint").startswith(policy.log_key.name.encode())
    finally:
        await alice.close()
        await bob.close()


async def test_malformed_requests_get_typed_errors(server: ServerProcess, tmp_path: Path) -> None:
    alice = await make_account(server, "alice", tmp_path)
    try:
        conn = alice._conn
        with pytest.raises(ServerError) as err:
            await conn.request(KTLookup(username="NOT A NAME!"), frozenset({KT_LOOKUP_RESULT}))
        assert err.value.code in ("bad_request", "invalid_username")
        with pytest.raises(ServerError) as err:
            await conn.request(KTLookup(username="UPPER"), frozenset({KT_LOOKUP_RESULT}))
        assert err.value.code == "invalid_username"
        with pytest.raises(ServerError) as err:
            await conn.request(_Raw("sottovoce.kt.head", {"since": -1}),
                               frozenset({KT_HEAD_RESULT}))
        assert err.value.code == "bad_request"
        with pytest.raises(ServerError) as err:
            await conn.request(_Raw("sottovoce.kt.history", {"since": "x"}),
                               frozenset({KT_HISTORY_RESULT}))
        assert err.value.code == "bad_request"
        # A client ahead of the log gets the log's (smaller) checkpoint and no proof.
        head = await _head(alice, since=10**9)
        assert head.consistency == ()
    finally:
        await alice.close()
    with pytest.raises(urllib.error.HTTPError) as http:
        server.http_get("/kt/whatever")
    assert http.value.code == 404
    for path in ("/kt/leaves?start=0&count=1001", "/kt/leaves?start=x&count=1",
                 "/kt/consistency?old=2&new=1", "/kt/consistency?old=0&new=99",
                 "/kt/leaves?start=0&count=1&start=1"):
        with pytest.raises(urllib.error.HTTPError) as http:
            server.http_get(path)
        assert http.value.code == 400, path


class _Raw:
    """A frame with any data, for requests the event classes would refuse to build."""

    def __init__(self, name: str, data: dict[str, Any]) -> None:
        self.name, self.data = name, data

    def to_frame(self, request_id: str | None = None) -> str:
        return json.dumps({"event": self.name, "data": self.data, "requestId": request_id})


# --- witness processes ----------------------------------------------------------------------


class WitnessProcess:
    def __init__(self, tmp: Path, server: str, *extra: str) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.key = tmp / "witness.key"
        self.port = free_port()
        self.out = tmp / "witness.out"
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sottovoce", "kt", "witness", "--server", server,
                 "--key", str(self.key), "--name", "witness.test/w1",
                 "--listen", f"127.0.0.1:{self.port}", *extra],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while "listening on" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.output())
            time.sleep(0.05)
        self.vkey = self.output().split("witness ", 1)[1].split()[0]

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def flag(self) -> str:
        return f"http://127.0.0.1:{self.port}={self.vkey}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _cosigners(srv: ServerProcess, *keys: str) -> set[str]:
    note = srv.http_get("/kt/checkpoint")
    policy = _policy(srv, min_cosignatures=0)
    witnesses = tuple(NoteKey.from_vkey(k) for k in keys)
    return set(open_checkpoint(note, log_key=policy.log_key, witnesses=witnesses).cosignatures)


async def test_a_witness_process_cosigns_and_an_auditor_refuses_a_tampered_map(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    plain = WitnessProcess(tmp_path / "plain", url)
    auditor = WitnessProcess(tmp_path / "audit", url, "--audit", "--name", "witness.test/a1")
    srv = ServerProcess(tmp_path / "srv", port=port, extra_args=[
        "--kt-witness", plain.flag, "--kt-witness", auditor.flag, "--no-local-witness"])
    srv.start()
    try:
        assert _keys(srv)["colocated_witness"] is None
        alice = await make_account(srv, "alice", tmp_path)
        await alice.close()
        assert _cosigners(srv, plain.vkey, auditor.vkey) == {"witness.test/w1", "witness.test/a1"}
        # Someone with the database hides an account in the map (no leaf appends it).
        with sqlite3.connect(srv.db_path) as conn:
            engine_sqlite.run(hide_an_account(), conn)
        # A running node appends from the map nodes it keeps in memory; restarted (or
        # another node) it reads the tables, and its next append carries the hidden entry.
        srv.stop()
        srv.start()
        bob = await make_account(srv, "bob", tmp_path)
        await bob.close()
        # The plain witness only checks the log; the auditor replays the leaves and refuses.
        assert _cosigners(srv, plain.vkey, auditor.vkey) == {"witness.test/w1"}
        assert "commits to a map root no replay gives" in auditor.output()
        assert '"kt.witness_refused","reason":"witness.test/a1"' in srv.log_path.read_text()
        state = json.loads((tmp_path / "audit" / "witness.key.state").read_text())
        assert state["size"] == 1
    finally:
        srv.stop()
        plain.stop()
        auditor.stop()


def test_the_witness_command_checks_once_and_refuses_plainly(
    server: ServerProcess, tmp_path: Path
) -> None:
    def witness(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sottovoce", "kt", "witness", "--server", server.url,
             "--key", str(tmp_path / "w.key"), *extra],
            capture_output=True, text=True, timeout=60, check=False)

    once = witness("--audit")
    assert once.returncode == 0, once.stderr
    assert once.stdout.startswith("witness ") and "\u2014 " in once.stdout
    again = witness()  # same size: consistent, cosigned again
    assert again.returncode == 0, again.stderr
    other = witness("--log-key", _keys(server)["colocated_witness"])
    assert other.returncode == 1 and "Traceback" not in other.stderr
    bad = witness("--listen", "nowhere")
    assert bad.returncode == 1 and "--listen must be HOST:PORT" in bad.stderr


async def test_kt_requests_are_rate_limited_per_device(server: ServerProcess,
                                                       tmp_path: Path) -> None:
    alice = await make_account(server, "alice", tmp_path)
    try:
        # The client's own checks on connect (pin, head, history) take a few tokens:
        # once they are done, the bucket (2 per second) is full again in 2.5 s.
        while alice.kt.monitor_state.versions < 1:
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)
        # All at once: sent one after the other, 40 requests could take the 5 s in
        # which the bucket earns the 10 tokens past its burst on a loaded machine.
        replies = await asyncio.gather(*(_head(alice) for _ in range(40)),
                                       return_exceptions=True)
        codes = [r.code for r in replies if isinstance(r, ServerError)]
        assert [r for r in replies if isinstance(r, BaseException)
                and not isinstance(r, ServerError)] == []
        assert codes and set(codes) == {"rate_limited"}
        assert 40 - len(codes) >= 30  # the burst
    finally:
        await alice.close()


async def test_an_unchanged_log_is_cosigned_again(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "srv", extra_args=["--kt-cosign-interval-ms", "300"]).start()
    try:
        policy = _policy(srv)

        def newest() -> int:
            while True:  # the first round runs once the server listens
                try:
                    note = srv.http_get("/kt/checkpoint")
                    break
                except urllib.error.HTTPError:
                    time.sleep(0.05)
            return max(open_checkpoint(note, log_key=policy.log_key,
                                       witnesses=policy.witnesses).cosignatures.values())

        first = newest()
        deadline = time.monotonic() + 10
        while newest() == first:
            assert time.monotonic() < deadline, "no fresh cosignature"
            time.sleep(0.2)
    finally:
        srv.stop()


async def test_a_crash_mid_registrations_leaves_a_whole_log(tmp_path: Path) -> None:
    """kill -9 while registrations stream in: after the restart every account that
    exists has exactly its leaf, the log's proofs verify, and the co-located witness
    (which saw the heads before the crash) cosigns the new head."""
    import asyncio

    srv = ServerProcess(tmp_path / "srv").start()
    try:
        async def register(i: int) -> None:
            try:
                client = await make_account(srv, f"user{i}", tmp_path)
                await client.close()
            except Exception:
                pass

        tasks = [asyncio.create_task(register(i)) for i in range(12)]
        deadline = time.monotonic() + 60
        while _count(srv, "accounts") < 3:  # kill once some are in, others on their way
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        srv.kill()
        await asyncio.gather(*tasks)
        srv.start()
        accounts = _count(srv, "accounts")
        assert accounts == _count(srv, "kt_leaves") and accounts >= 3
        alice = await make_account(srv, "alice", tmp_path)
        try:
            policy = _policy(srv)
            found = verify_lookup(policy, None, "alice", await _lookup(alice, "alice"),
                                  now_ms=_now())
            assert found.version == 0 and found.head.size == accounts + 1
        finally:
            await alice.close()
    finally:
        srv.stop()


def _count(srv: ServerProcess, table: str) -> int:
    with contextlib.closing(sqlite3.connect(srv.db_path, timeout=10)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
