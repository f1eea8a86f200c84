"""Key transparency with several server nodes on one PostgreSQL database: each node is a
KTService over its own connection pool, all with the same log, VRF and co-located
witness keys (docs/deploy.md, "Several nodes"). Whichever node answers, and however
their appends interleave, a device's view of the log only moves forward."""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sottovoce.kt.checkpoint import NoteKey, SignedNote
from sottovoce.kt.merkle import EMPTY_ROOT
from sottovoce.kt.verify import (
    KTPolicy,
    LookupResponse,
    TrustedHead,
    check_extension,
    verify_lookup,
)
from sottovoce.server import kt_log
from sottovoce.server.config import ServerConfig
from sottovoce.server.kt_log import KTService
from sottovoce.server.logs import JsonLogger
from tests.integration import pgschema
from tests.integration.serverproc import shared_kt_args
from tests.unit.test_server_kt_storage import NOW, Account

Node = tuple[object, KTService]


def _now() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[Node]]:
    """Three nodes on one fresh PostgreSQL schema, none of them checkpointed yet."""
    reason = pgschema.unreachable()
    if reason is not None:
        pytest.skip(reason)
    from sottovoce.server.storage.postgres import PostgresStorage

    with pgschema.fresh_schema() as dsn:
        out: list[Node] = []
        try:
            for i in range(3):
                data = tmp_path / f"node{i}"
                shared_kt_args(tmp_path / "kt", data)
                cfg = ServerConfig(data_dir=data, kt_log_key_file=tmp_path / "kt" / "kt-log.key",
                                   kt_vrf_key_file=tmp_path / "kt" / "kt-vrf.key")
                st = PostgresStorage(dsn, logger=JsonLogger(io.StringIO()), pool_size=3)
                kt = kt_log.from_config(cfg, st, JsonLogger(io.StringIO()))
                await st.open()
                out.append((st, kt))
                await kt.start()
            yield out
        finally:
            for st, kt in out:
                await kt.close()
                await st.close()  # type: ignore[attr-defined]


def _policy(kt: KTService) -> KTPolicy:
    keys = kt.keys()
    return KTPolicy(log_key=NoteKey.from_vkey(keys["log_key"]), vrf_key=kt.vrf.public,
                    witnesses=tuple(NoteKey.from_vkey(w) for w in keys["witnesses"]))


async def _register(node: Node, user: str) -> None:
    st, kt = node
    a = Account(user)
    await st.create_account(a.user, a.ak.public, "d1", a.cert("d1"), NOW)  # type: ignore[attr-defined]
    await kt.changed()


async def _lookup(kt: KTService, policy: KTPolicy, last: TrustedHead | None, user: str,
                  *, present: bool = True) -> TrustedHead:
    """The head of a verified lookup of ``user`` (``present``: its account must show; a
    node that has not taken the newest checkpoint yet may not show it)."""
    raw = await kt._answer(user, last.size if last else 0, history=False)
    result = verify_lookup(policy, last, user, LookupResponse.decode(raw), now_ms=_now())
    assert not present or (result.state is not None and not result.state.deleted)
    return result.head


async def test_a_device_that_pinned_the_log_empty_on_one_node_verifies_lookups_on_another(
    nodes: list[Node],
) -> None:
    """A device registers through one node and pins the log through another that has
    not seen the newest checkpoint yet, so it pins the empty tree. The next lookup comes
    with a bigger checkpoint and, from the empty tree, no consistency proof (RFC 9162
    has none): the device takes it, where it used to raise its fork alert."""
    (_, a), (_, b), _ = nodes
    policy = _policy(a)
    assert (await b.sync()) is not None  # b signs (and serves) the empty log
    status, body, _ = await b.http_get("/kt/checkpoint", "")
    cp = policy.open(body, _now()).checkpoint
    assert status == 200 and cp.size == 0 and cp.root == EMPTY_ROOT
    pinned = TrustedHead(size=0, root=cp.root, note=body)
    await _register(nodes[0], "alice")  # through a: a signs size 1
    head = await _lookup(a, policy, pinned, "alice")
    assert head.size == 1
    # Through b too, once it took a's checkpoint (asked with the device's size, it does).
    again = await _lookup(b, policy, pinned, "alice")
    assert (again.size, again.root) == (head.size, head.root)


async def test_interleaved_appends_on_three_nodes_keep_every_device_view_consistent(
    nodes: list[Node],
) -> None:
    """Registrations through all three nodes at once while devices, each starting from
    the empty tree, look accounts up through a node picked at random and check every
    answer against the head they hold; the heads they end with agree."""
    policy = _policy(nodes[0][1])
    for _, kt in nodes:
        await kt.sync()
    rng = random.Random(7)
    users: list[str] = []
    heads: list[TrustedHead] = []

    async def writer(w: int) -> None:
        for n in range(6):
            user = f"user{w}x{n}"
            await _register(nodes[(w + n) % 3], user)
            users.append(user)

    async def device(d: int) -> None:
        _, kt = nodes[d % 3]
        note = (await kt.http_get("/kt/checkpoint", ""))[1]
        cp = policy.open(note, _now()).checkpoint
        last = TrustedHead(size=cp.size, root=cp.root, note=note)
        while len(users) < 18:
            if users:
                _, kt = nodes[rng.randrange(3)]
                head = await _lookup(kt, policy, last, rng.choice(users), present=False)
                last = head if head.size >= last.size else last
            await asyncio.sleep(0)
        heads.append(last)

    await asyncio.gather(*(writer(w) for w in range(3)), *(device(d) for d in range(4)))
    # Every node now serves (possibly after a refresh) a head extending every device's.
    for _, kt in nodes:
        served = await kt.sync()
        assert served is not None and served.size == 18
        note = SignedNote.decode(served.note)
        for last in heads:
            proof = await kt._proof(last.size, served.size)
            check_extension(last, policy.open(note, _now()), proof)
