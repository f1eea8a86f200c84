"""The server's key-transparency pieces without a socket: key files, the witnesses'
add-checkpoint exchange, configuration, and the read-only HTTP answers."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from sottovoce.errors import UsageError
from sottovoce.kt.checkpoint import Checkpoint, NoteKey, SignedNote
from sottovoce.kt.errors import MalformedProof
from sottovoce.kt.merkle import EMPTY_ROOT
from sottovoce.limits import KT_HISTORY_PAGE
from sottovoce.server import kt_keys, kt_log
from sottovoce.server.config import ServerConfig, load_config
from sottovoce.server.kt_witness import (
    SavedState,
    WitnessService,
    add_checkpoint_body,
    load_state,
    parse_add_checkpoint,
    parse_cosignature,
    parse_kt_witnesses,
)
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage.sqlite import SqliteStorage

NOW = 1_700_000_000_000


def test_key_files_are_made_once_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "d" / "log.key"
    signer = kt_keys.note_key(path, "kt.test/log", cosigner=False, what="log key file")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().startswith("PRIVATE+KEY+kt.test/log+")
    again = kt_keys.note_key(path, "other/name", cosigner=False, what="log key file")
    assert again.public == signer.public  # an existing key is never replaced
    vrf = kt_keys.vrf_key(tmp_path / "vrf.key")
    assert kt_keys.vrf_key(tmp_path / "vrf.key").public == vrf.public
    assert "PRIVATE" not in repr(signer) and "seed" not in repr(vrf)


@pytest.mark.parametrize(("text", "match"), [
    ("hello\n", "at least 40 bytes|not a note private key"),
    ("PRIVATE+KEY+kt.test/log+00000000+" + "A" * 44 + "\n", "where a log key is needed|"
     "not a note private key"),
])
def test_a_bad_key_file_is_a_plain_error_naming_the_file(
    tmp_path: Path, text: str, match: str
) -> None:
    path = tmp_path / "log.key"
    path.write_text(text)
    with pytest.raises(UsageError, match=match) as err:
        kt_keys.read_note_key(path, cosigner=False, what="log key file")
    assert str(path) in str(err.value) or "at least" in str(err.value)


def test_a_witness_key_is_not_a_log_key_and_a_tampered_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.key"
    kt_keys.note_key(path, "w.test/w1", cosigner=True, what="witness key file")
    with pytest.raises(UsageError, match="where a log key is needed"):
        kt_keys.read_note_key(path, cosigner=False, what="log key file")
    line = path.read_text()
    parts = line.split("+")
    parts[3] = "00000000" if parts[3] != "00000000" else "11111111"
    path.write_text("+".join(parts))
    with pytest.raises(UsageError, match="key ID does not match"):
        kt_keys.read_note_key(path, cosigner=True, what="witness key file")
    (tmp_path / "v.key").write_text("not base64 at all, but long enough to be read!!\n")
    with pytest.raises(UsageError, match="base64 of a 32-byte key"):
        kt_keys.vrf_key(tmp_path / "v.key")


def test_add_checkpoint_bodies_round_trip_and_malformed_ones_are_refused() -> None:
    body = add_checkpoint_body(3, [b"\x01" * 32, b"\x02" * 32], b"note\n\n\xe2\x80\x94 x y\n")
    assert parse_add_checkpoint(body) == (3, [b"\x01" * 32, b"\x02" * 32],
                                          b"note\n\n\xe2\x80\x94 x y\n")
    for bad in (b"old 3\nnot-base64!\n\nnote", b"old x\n\nnote", b"new 3\n\nnote",
                b"old 3", b"old 3\nAAAA\n\nnote", b"x" * 100_000):
        with pytest.raises(MalformedProof):
            parse_add_checkpoint(bad)


def _witness(tmp_path: Path, log: object) -> WitnessService:
    signer = kt_keys.note_key(tmp_path / "w.key", "w.test/w1", cosigner=True, what="w")
    return WitnessService(signer, tmp_path / "w.state", log_key=log.public,  # type: ignore[attr-defined]
                          clock_ms=lambda: NOW)


def test_a_witness_cosigns_answers_409_with_its_size_and_keeps_state(tmp_path: Path) -> None:
    log = kt_keys.note_key(tmp_path / "log.key", "kt.test/log", cosigner=False, what="l")
    w = _witness(tmp_path, log)
    note = Checkpoint(origin="kt.test/log", size=0, root=EMPTY_ROOT).sign(log).encode()
    status, line = w.handle(add_checkpoint_body(0, [], note))
    assert status == 200
    sig = parse_cosignature(line, w.signer.public, note, log.public)
    assert sig.name == "w.test/w1"
    assert w.handle(add_checkpoint_body(5, [], note)) == (409, b"0\n")
    other = kt_keys.note_key(tmp_path / "other.key", "kt.test/log", cosigner=False, what="l")
    forged = Checkpoint(origin="kt.test/log", size=0, root=EMPTY_ROOT).sign(other).encode()
    assert w.handle(add_checkpoint_body(0, [], forged))[0] == 403
    assert w.handle(b"garbage")[0] == 400
    saved = load_state(tmp_path / "w.state")
    assert saved == SavedState(log.public.vkey(), saved.head) and saved.head is not None
    with pytest.raises(UsageError, match="another log key"):
        _witness(tmp_path, other)
    with pytest.raises(MalformedProof):
        parse_cosignature(b"\xe2\x80\x94 someone AAAA\n", w.signer.public, note, log.public)


def test_witnesses_and_the_local_witness_switch_in_configuration(tmp_path: Path) -> None:
    w = NoteKey.from_vkey(
        kt_keys.note_key(tmp_path / "w.key", "w.test/w1", cosigner=True, what="w").public.vkey())
    flag = "http://127.0.0.1:9/=" + w.vkey()
    cfg = load_config({"kt_witness": f"{flag} https://w2.test/x/={w.vkey()}",
                       "no_local_witness": "true"}, environ={})
    assert [x.url for x in cfg.kt_witness] == ["http://127.0.0.1:9", "https://w2.test/x"]
    assert cfg.no_local_witness is True
    env = load_config({}, environ={"SOTTOVOCE_KT_WITNESS": flag,
                                   "SOTTOVOCE_NO_LOCAL_WITNESS": "1"})
    assert env.kt_witness[0].key == w and env.no_local_witness
    for bad in ("ftp://x=" + w.vkey(), "http://x", "http://x=notakey"):
        with pytest.raises(UsageError, match="kt_witness"):
            load_config({"kt_witness": bad}, environ={})
    log = kt_keys.note_key(tmp_path / "l.key", "kt.test/log", cosigner=False, what="l")
    with pytest.raises(ValueError, match="type 0x04"):
        parse_kt_witnesses("http://x=" + log.public.vkey())
    assert load_config({}, environ={}).kt_history_page == KT_HISTORY_PAGE
    assert load_config({"kt_history_page": "2"}, environ={}).kt_history_page == 2
    with pytest.raises(UsageError, match="kt-history-page must be positive"):
        load_config({"kt_history_page": "0"}, environ={})


def test_the_server_flags_parse_repeated_witnesses_and_the_switch(tmp_path: Path) -> None:
    from sottovoce.cli.main import build_parser

    w = kt_keys.note_key(tmp_path / "w.key", "w.test/w1", cosigner=True, what="w").public.vkey()
    args = build_parser().parse_args(["server", "--kt-witness", "http://a=" + w,
                                      "--kt-witness", "http://b=" + w, "--no-local-witness"])
    assert args.kt_witness == [f"http://a={w}", f"http://b={w}"]
    assert args.no_local_witness == "true"


async def test_http_answers_before_and_after_the_first_checkpoint(tmp_path: Path) -> None:
    cfg = ServerConfig(data_dir=tmp_path / "data")
    st = SqliteStorage(tmp_path / "db.sqlite3", logger=JsonLogger(io.StringIO()))
    kt = kt_log.from_config(cfg, st, JsonLogger(io.StringIO()))
    await st.open()
    try:
        status, body, _ = await kt.http_get("/kt/checkpoint", "")
        assert status == 503 and b"no checkpoint yet" in body
        keys = json.loads((await kt.http_get("/kt/keys", ""))[1])
        assert keys["colocated_witness"] in keys["witnesses"]
        assert keys["colocated_witness"].startswith(kt.signer.public.name + "/colocated-witness+")
        served = await kt.sync()
        assert served is not None and served.size == 0
        status, body, _ = await kt.http_get("/kt/checkpoint", "")
        assert status == 200 and Checkpoint.parse(SignedNote.decode(body).text).size == 0
        assert (await kt.http_get("/kt/nothing", ""))[0] == 404
        assert (await kt.http_get("/kt/leaves", "start=0&count=1"))[0] == 400  # empty log
        assert (await kt.http_get("/kt/consistency", "old=0&new=0"))[0] == 200
        assert (await kt.http_get("/kt/consistency", "old=-1&new=0"))[0] == 400
        assert (await kt.http_get("/kt/consistency", "old=1"))[0] == 400
        assert (await kt.http_get("/kt/leaves", "start=99999999999999999&count=1"))[0] == 400
        assert (tmp_path / "data" / "kt-colocated-witness.state").exists()
    finally:
        await kt.close()
        await st.close()


def test_an_auditing_witness_restarts_from_its_state_by_replaying_the_leaves(
    tmp_path: Path,
) -> None:
    """After a restart the auditor rebuilds its replica from leaf 0 and checks it makes
    the checkpoint it cosigned last; a log that rewrote those leaves is refused."""
    import hashlib

    from sottovoce.kt.errors import KTError
    from sottovoce.kt.map import ChangeKind
    from sottovoce.kt.prover import KTLog, KTStores
    from sottovoce.kt.vrf import VRFSecretKey

    log = kt_keys.note_key(tmp_path / "log.key", "kt.test/log", cosigner=False, what="l")
    stores = KTStores.memory()
    core = KTLog(stores, vrf_key=VRFSecretKey(hashlib.sha256(b"v").digest()), log_signer=log)
    signer = kt_keys.note_key(tmp_path / "a.key", "a.test/a1", cosigner=True, what="a")

    def auditor() -> WitnessService:
        return WitnessService(signer, tmp_path / "a.state", log_key=log.public,
                              leaves=lambda start, n: [stores.leaves[i] for i in
                                                       range(start, min(start + n, core.size))],
                              clock_ms=lambda: NOW)

    def grow(n: int) -> bytes:
        for i in range(n):
            core.change(f"user{core.size}", bytes([i]), kind=ChangeKind.REGISTRATION, now_ms=NOW,
                        rng=lambda k: bytes(k))
        return core.checkpoint().encode()

    first = auditor()
    assert first.handle(add_checkpoint_body(0, [], grow(3)))[0] == 200
    again = auditor()  # a restart
    assert again.handle(add_checkpoint_body(3, [], grow(2)))[0] == 200
    stores.leaves[1] = stores.leaves[2]  # the log rewrites its past
    with pytest.raises(KTError):
        auditor().add_checkpoint(5, [], grow(1))


async def test_a_failed_checkpoint_round_does_not_fail_the_change(tmp_path: Path) -> None:
    """The directory change is durable before its round starts: a round that fails is
    logged and the change answered; the next round covers it."""
    out = io.StringIO()
    st = SqliteStorage(tmp_path / "db.sqlite3", logger=JsonLogger(io.StringIO()))
    kt = kt_log.from_config(ServerConfig(data_dir=tmp_path / "data"), st, JsonLogger(out))
    await st.open()
    try:
        async def broken(wanted: object) -> dict[object, bytes]:
            raise OSError("disk gone")

        real = st.kt_log_nodes
        st.kt_log_nodes = broken  # type: ignore[method-assign]
        await kt.changed()  # returns, does not raise
        assert '"event":"kt.sync_late","error":"OSError"' in out.getvalue()
        st.kt_log_nodes = real  # type: ignore[method-assign]
        served = await kt.sync()
        assert served is not None and served.size == 0
    finally:
        await kt.close()
        await st.close()


async def test_lookups_answered_from_memory_follow_the_served_checkpoint(tmp_path: Path) -> None:
    """The same question at the same checkpoint is answered from memory; once another
    checkpoint (or a new cosignature of the same size) is served, answers are built on
    it, and they verify from the head a device kept."""
    from sottovoce.kt.verify import KTPolicy, LookupResponse, verify_lookup
    from tests.unit.test_server_kt_storage import Account

    st = SqliteStorage(tmp_path / "db.sqlite3", logger=JsonLogger(io.StringIO()))
    kt = kt_log.from_config(ServerConfig(data_dir=tmp_path / "data"), st,
                            JsonLogger(io.StringIO()))
    await st.open()
    keys = kt.keys()
    policy = KTPolicy(log_key=NoteKey.from_vkey(keys["log_key"]), vrf_key=kt.vrf.public,
                      witnesses=tuple(NoteKey.from_vkey(w) for w in keys["witnesses"]))
    now = kt.clock_ms()

    async def register(user: str) -> None:
        a = Account(user)
        await st.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await kt.changed()

    try:
        await register("alice")
        first = await kt._answer("alice", 0, history=False)
        assert await kt._answer("alice", 0, history=False) is first
        head = verify_lookup(policy, None, "alice", LookupResponse.decode(first),
                             now_ms=now).head
        await register("bob")
        later = LookupResponse.decode(await kt._answer("alice", 1, history=False))
        res = verify_lookup(policy, head, "alice", later, now_ms=now)
        assert res.head.size == 2 and res.version == 0
        served = await kt.sync(again=True)  # the same size cosigned again
        assert served is not None and served.size == 2
        again = await kt._answer("alice", 1, history=False)
        assert LookupResponse.decode(again).entry.checkpoint == served.note
    finally:
        await kt.close()
        await st.close()


async def _counted_service(tmp_path: Path) -> tuple[SqliteStorage, Any, Any, list[int]]:
    """A store and its KT service on SQLite, the policy that trusts them, and the sizes
    of the reader round trips for answers (one entry per ``kt_answers`` call)."""
    from sottovoce.kt.verify import KTPolicy

    st = SqliteStorage(tmp_path / "db.sqlite3", logger=JsonLogger(io.StringIO()))
    kt = kt_log.from_config(ServerConfig(data_dir=tmp_path / "data"), st,
                            JsonLogger(io.StringIO()))
    await st.open()
    keys = kt.keys()
    policy = KTPolicy(log_key=NoteKey.from_vkey(keys["log_key"]), vrf_key=kt.vrf.public,
                      witnesses=tuple(NoteKey.from_vkey(w) for w in keys["witnesses"]))
    reads: list[int] = []
    real = st.kt_answers

    async def counted(asks: list[tuple[str, bool, object]], size: int, cache: object) -> object:
        reads.append(len(asks))
        return await real(asks, size, cache)  # type: ignore[arg-type]

    st.kt_answers = counted  # type: ignore[assignment,method-assign]
    return st, kt, policy, reads


async def test_a_name_asked_from_another_size_is_answered_from_the_kept_answer(
    tmp_path: Path,
) -> None:
    """An answer is kept without the log's part it begins with: the same name asked by
    a client at another size (another consistency proof) reads no rows again, and gets
    the bytes a fresh read builds, which verify from that client's head; a history is
    kept apart from a lookup."""
    from sottovoce.kt.verify import LookupResponse, TrustedHead, verify_lookup
    from tests.unit.test_server_kt_storage import Account

    st, kt, policy, reads = await _counted_service(tmp_path)
    try:
        heads = []
        for i in range(6):
            a = Account(f"user{i}")
            await st.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
            heads.append(await kt.sync())
        now = kt.clock_ms()
        first = await kt._answer("user3", 0, history=False)
        old = verify_lookup(policy, None, "user3", LookupResponse.decode(first), now_ms=now)
        assert len(reads) == 1
        for head in heads[1:4]:
            assert head is not None
            got = await kt._answer("user3", head.size, history=False)
            assert len(reads) == 1 and got != first
            trusted = TrustedHead(size=head.size, root=Checkpoint.parse(
                SignedNote.decode(head.note).text).root, note=head.note)
            res = verify_lookup(policy, trusted, "user3", LookupResponse.decode(got), now_ms=now)
            assert res.version == old.version == 0 and res.state == old.state
            kt._answers.clear()
            kt._tails.clear()
            assert await kt._answer("user3", head.size, history=False) == got
            assert len(reads) == 2
            reads.clear()
            reads.append(1)
        history = await kt._answer("user3", 0, history=True)
        assert len(reads) == 2 and history != first
        # A lookup that waits for its log part while the next checkpoint is served
        # and answered is still built on its own checkpoint, whole.
        import asyncio

        served = kt._served
        assert served is not None
        real_part, hold = st.kt_log_part, asyncio.Event()

        async def held(size: int, since: int, cache: object) -> object:
            if since == 5:  # a size no lookup came from yet: its part is read
                await hold.wait()
            return await real_part(size, since, cache)  # type: ignore[arg-type]

        st.kt_log_part = held  # type: ignore[assignment,method-assign]
        waiting = asyncio.create_task(kt._answer("user3", 5, history=False))
        await asyncio.sleep(0.05)
        a = Account("user6")
        await st.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        newer = await kt.sync()
        assert newer is not None and newer.size > served.size
        assert await kt._answer("user3", 0, history=False) != first
        hold.set()
        got = LookupResponse.decode(await waiting)
        assert got.entry.checkpoint == served.note
        res = verify_lookup(policy, None, "user3", got, now_ms=kt.clock_ms())
        assert res.version == 0 and res.state == old.state
    finally:
        await kt.close()
        await st.close()


async def test_lookups_at_once_share_reader_round_trips_and_a_failed_one_fails_only_its_own(
    tmp_path: Path,
) -> None:
    """Lookups that arrive while rows are being read are read together in the next
    round trip; each answer is the one the lookup alone gets and verifies. A read that
    fails is made once more; one that fails again fails the lookups it carried, and the
    next ones are answered."""
    import asyncio

    from sottovoce.kt.verify import LookupResponse, verify_lookup
    from sottovoce.server.errors import StorageError
    from tests.unit.test_server_kt_storage import Account

    st, kt, policy, reads = await _counted_service(tmp_path)
    counted, real = st.kt_answers, SqliteStorage.kt_answers.__get__(st)
    try:
        for i in range(10):
            a = Account(f"user{i}")
            await st.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await kt.sync()
        names = [f"user{i}" for i in range(10)] + [f"nobody{i}" for i in range(10)]
        together = await asyncio.gather(*(kt._answer(n, 0, history=False) for n in names))
        assert sum(reads) == len(names) and len(reads) < len(names) / 2
        now = kt.clock_ms()
        for n, data in zip(names, together, strict=True):
            res = verify_lookup(policy, None, n, LookupResponse.decode(data), now_ms=now)
            assert (res.version == 0) == n.startswith("user")
            kt._answers.clear()
            kt._tails.clear()
            assert await kt._answer(n, 0, history=False) == data

        async def broken(asks: object, size: object, cache: object) -> object:
            raise StorageError()

        st.kt_answers = broken  # type: ignore[assignment,method-assign]
        kt._answers.clear()
        kt._tails.clear()
        failed = await asyncio.gather(*(kt._answer(n, 0, history=False) for n in names[:5]),
                                      return_exceptions=True)
        assert all(isinstance(f, StorageError) for f in failed)
        st.kt_answers = counted  # type: ignore[assignment,method-assign]
        assert await kt._answer("user1", 0, history=False) == together[1]
        failures = [StorageError()]

        async def once(asks: list[tuple[str, bool, object]], size: int, cache: object) -> object:
            if failures:  # a dropped connection: the read is made once more
                raise failures.pop()
            return await real(asks, size, cache)  # type: ignore[arg-type]

        st.kt_answers = once  # type: ignore[assignment,method-assign]
        kt._answers.clear()
        kt._tails.clear()
        assert await kt._answer("user2", 0, history=False) == together[2]
        assert not failures
    finally:
        await kt.close()
        await st.close()


async def test_changes_waiting_together_share_a_round_that_covers_each(tmp_path: Path) -> None:
    """Changes that wait for a checkpoint at once share the rounds that begin after they
    committed (not a fold and a round each), and each is answered only once one of those
    is over: the served checkpoint then covers it."""
    import asyncio

    from tests.unit.test_server_kt_storage import Account

    st = SqliteStorage(tmp_path / "db.sqlite3", logger=JsonLogger(io.StringIO()))
    kt = kt_log.from_config(ServerConfig(data_dir=tmp_path / "data"), st,
                            JsonLogger(io.StringIO()))
    await st.open()
    folds = 0
    real_fold = kt.fold

    async def counted() -> int:
        nonlocal folds
        folds += 1
        return await real_fold()

    kt.fold = counted  # type: ignore[method-assign]
    committed = 0

    async def register(user: str) -> int:
        nonlocal committed
        a = Account(user)
        await st.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        committed += 1
        before = committed  # this change and every one counted before it are durable
        await kt.changed()
        served = await kt.current()
        assert served.size >= before
        return served.size

    try:
        sizes = await asyncio.gather(*(register(f"user{i:02d}") for i in range(24)))
        assert max(sizes) == 24 and await st.kt_pending() == 0
        assert 1 <= folds < 12  # a fold per change would be 24
        # A lone change after them still gets a round of its own.
        assert await register("late") == 25
    finally:
        await kt.close()
        await st.close()


async def test_the_served_checkpoints_cache_is_filled_with_the_upper_map_and_kept_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once a checkpoint is served, its cache is filled in the background with every
    map node down to the cache's depth, as the tables hold them at its size; at the
    next checkpoint it is carried over and only the changed keys' paths are read
    again, and it is again what the tables hold; the lookup memos are made once it
    is filled; lookups then walk no path step by step above the cache's depth, and
    answer as a read without any cache."""
    from sottovoce.server.storage import kt as kt_tables
    from tests.unit.test_server_kt_storage import Account, _node_at

    monkeypatch.setattr(kt_tables, "CACHE_DEPTH", 3)
    monkeypatch.setattr(kt_tables, "TOP_DEPTH", 1)
    st = SqliteStorage(tmp_path / "db.sqlite3", logger=JsonLogger(io.StringIO()))
    kt = kt_log.from_config(ServerConfig(data_dir=tmp_path / "data"), st,
                            JsonLogger(io.StringIO()))
    await st.open()
    read: list[int] = []
    fill = st.kt_fill_upper

    async def counted(size: int, nodes: list[tuple[int, int]],
                      cache: kt_tables.AppendCache) -> list[tuple[int, int]]:
        read.append(len([n for n in nodes if n not in cache.nodes]))
        return await fill(size, nodes, cache)

    st.kt_fill_upper = counted  # type: ignore[method-assign]

    async def upper(size: int) -> dict[tuple[int, int], bytes | None]:
        found: dict[tuple[int, int], bytes | None] = {}
        level = [(0, 0)]
        while level:
            below = []
            for node in level:
                rec = found[node] = await st._read_op(_node_at, node, size)
                if node[0] < 3 and rec is not None and rec[:1] == b"\x11":
                    below += [(node[0] + 1, 2 * node[1]), (node[0] + 1, 2 * node[1] + 1)]
            level = below
        return found

    try:
        accounts = [Account(f"user{i}") for i in range(30)]
        for a in accounts[:24]:
            await st.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await kt.sync()
        await kt.warm()
        cache = kt._map_cache
        assert cache.nodes == await upper(cache.size) and kt._filled is cache
        assert sum(read) == len(cache.nodes)
        # The lookup memos of every node at TOP_DEPTH (and of the one above) are made.
        assert cache.tops.keys() == {(0, 0), (1, 0), (1, 1)}
        for a in accounts[24:27]:
            await st.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)
        await kt.sync()
        read.clear()
        await kt.warm()
        carried = kt._map_cache
        assert carried is not cache and kt._filled is carried
        assert carried.nodes == await upper(carried.size)
        changed = await st.kt_changed_keys(cache.size, carried.size)
        assert 0 < sum(read) <= len(kt_tables.path_nodes(changed)) < len(carried.nodes)
        walked: list[bytes] = []
        step_by_step = kt_tables._map_paths

        def spy(keys: list[bytes], size: int, cache: kt_tables.AppendCache | None,
                ) -> object:
            walked.extend(keys)
            return step_by_step(keys, size, cache)

        monkeypatch.setattr(kt_tables, "_map_paths", spy)
        part = await kt._log_proof(kt._answers_for, 0)  # type: ignore[arg-type]
        asks = [(a.user, False, part) for a in accounts[:27]]
        got = await st.kt_answers(asks, carried.size, carried)
        assert not walked
        assert got == await st.kt_answers(asks, carried.size, None)
    finally:
        await kt.close()
        await st.close()
