"""Several server processes on one PostgreSQL and one NATS (docs/deploy.md).

Each cluster gets a throw-away PostgreSQL schema and its own NATS subject
namespace, so runs never hear each other; the tests of the module share one
cluster per size. Clients speak raw KSMP v3, but for the file test (the nodes share
one blob directory: docs/operations.md).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from sottovoce.client import Client, MessageReceived
from sottovoce.client.store import TEST_KDF
from sottovoce.identity import RevocationStatement
from tests.conformance.rawclient import Device, RawClient, b64, logged_in, now_ms, registered
from tests.integration.pgschema import create_schema, drop_schema, unreachable
from tests.integration.serverproc import ServerProcess, shared_kt_args

NATS_URL = "nats://127.0.0.1:4222"


def nats_unreachable() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=0.5):
            return None
    except OSError as exc:
        return f"NATS unreachable at {NATS_URL} ({exc})"


def skip_without_services() -> None:
    for reason in (unreachable(), nats_unreachable()):
        if reason is not None:
            pytest.skip(reason)


class Cluster:
    """``n`` nodes sharing one schema and one NATS namespace."""

    def __init__(self, root: Path, dsn: str, namespace: str) -> None:
        self.root, self.dsn, self.namespace = root, dsn, namespace
        #: The nodes share one blob directory, as docs/operations.md says they must.
        self.blob_dir = root / "blobs"
        self.nodes: list[ServerProcess] = []

    def add(self, *extra: str) -> ServerProcess:
        """A new node, not started yet."""
        i = len(self.nodes)
        node = ServerProcess(self.root / f"node{i}", extra_args=[
            "--database", self.dsn, "--nats", NATS_URL, "--nats-namespace", self.namespace,
            "--node-id", f"node{i}", *shared_kt_args(self.root / "kt", self.root / f"node{i}"),
            "--blob-dir", str(self.blob_dir), *extra,
        ])
        self.nodes.append(node)
        return node

    def ws(self, i: int) -> str:
        return self.nodes[i].ws_url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="module")
def _clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, tuple[Cluster, str]]]:
    """The module's clusters (and schemas), one per size, started at first use: the tests
    make their own random users and stop no node, and starting nodes costs more than
    most tests."""
    made: dict[int, tuple[Cluster, str]] = {}
    yield made
    for c, schema in made.values():
        c.stop()
        drop_schema(schema)


@pytest.fixture
def cluster_factory(
    _clusters: dict[int, tuple[Cluster, str]], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[int], Awaitable[Cluster]]:
    """``await cluster_factory(n)``: the module's running cluster of ``n`` nodes."""
    skip_without_services()

    async def make(n: int) -> Cluster:
        if n in _clusters:
            c = _clusters[n][0]
            assert all(node.running for node in c.nodes), "a node of the shared cluster died"
            return c
        schema, dsn = await asyncio.to_thread(create_schema, "sv_mn")
        c = Cluster(tmp_path_factory.mktemp(f"cluster{n}"), dsn, f"t{secrets.token_hex(6)}")
        _clusters[n] = (c, schema)
        nodes = [c.add() for _ in range(n)]
        await asyncio.to_thread(nodes[0].start)  # the first applies the schema migrations
        await asyncio.gather(*(asyncio.to_thread(node.start) for node in nodes[1:]))
        return c

    return make


def cts(*devices: Device) -> list[tuple[str, str, bytes]]:
    return [(d.username, d.device_id, uuid.uuid4().bytes) for d in devices]


async def pipelined(client: RawClient, datas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send all at once, then collect one reply per send (in send order)."""
    rids = [await client.send("ksmpv3.send", d) for d in datas]
    want = set(rids)
    got: dict[str, dict[str, Any]] = {}
    while len(got) < len(rids):
        f = await client._read(20)
        rid = f.get("requestId")
        if rid in want:
            got[rid] = f
        else:
            client._backlog.append(f)  # inbox frames etc. stay for later reads
    return [got[r] for r in rids]


async def inbox(client: RawClient, n: int, timeout: float = 20) -> list[dict[str, Any]]:
    return [await client.wait_for("ksmpv3.inbox.frame", timeout) for _ in range(n)]


async def test_device_on_one_node_receives_from_a_sender_on_another(
    cluster_factory: Callable[[int], Awaitable[Cluster]],
) -> None:
    c = await cluster_factory(2)
    health = [n.health() for n in c.nodes]
    assert [h["node"] for h in health] == ["node0", "node1"]
    assert all(h["nats"] == "connected" and h["storage"] == "postgresql" for h in health)
    alice = await registered(c.ws(0), Device.new())
    bob_dev = Device.new()
    bob = await registered(c.ws(1), bob_dev)
    await alice.resume()
    await bob.resume()
    ack = await alice.send_message(bob_dev.username, cts(bob_dev))
    assert ack["event"] == "ksmpv3.send.ack", ack
    (f,) = await inbox(bob, 1)
    assert f["data"]["envelope"]["messageId"] == ack["data"]["messageId"]
    # Offline now: stored, then replayed by whichever node the device comes back to.
    await bob.close()
    ack2 = await alice.send_message(bob_dev.username, cts(bob_dev))
    bob = await logged_in(c.ws(0), bob_dev)
    replayed = await bob.resume(f["data"]["globalInboxSeq"])
    assert [r["data"]["envelope"]["messageId"] for r in replayed] == [ack2["data"]["messageId"]]


async def test_server_seq_strictly_increasing_under_concurrent_sends_through_nodes(
    cluster_factory: Callable[[int], Awaitable[Cluster]],
) -> None:
    c = await cluster_factory(3)
    alice = Device.new()
    alice2 = alice.sibling("d2")
    bob = Device.new()
    a1 = await registered(c.ws(0), alice)
    a2 = await RawClient.open(c.ws(1))
    assert (await a2.add_device(alice2))["event"] == "sottovoce.registered"
    b1 = await registered(c.ws(2), bob)
    for cl in (a1, a2, b1):
        await cl.resume()
    n = 150
    jobs = [
        (a1, [a1.send_data(bob.username, cts(bob, alice2)) for _ in range(n)]),
        (a2, [a2.send_data(bob.username, cts(bob, alice)) for _ in range(n)]),
        (b1, [b1.send_data(alice.username, cts(alice, alice2)) for _ in range(n)]),
    ]
    replies = await asyncio.gather(*(pipelined(cl, ds) for cl, ds in jobs))
    seqs: list[int] = []
    for rs in replies:
        assert all(r["event"] == "ksmpv3.send.ack" for r in rs), rs[0]
        mine = [r["data"]["serverSeq"] for r in rs]
        assert mine == sorted(mine)  # one connection's sends keep their order
        seqs += mine
    assert len(set(seqs)) == 3 * n  # one conversation: every serverSeq distinct
    # Every device sees the conversation in serverSeq order, inbox order = serverSeq order.
    for cl in (a1, a2, b1):
        frames = await inbox(cl, 2 * n)
        by_inbox = sorted(frames, key=lambda f: f["data"]["globalInboxSeq"])
        got = [f["data"]["envelope"]["serverSeq"] for f in by_inbox]
        assert got == sorted(got) and len(set(got)) == 2 * n
        assert frames == by_inbox  # and they arrived in that order, live across nodes


async def test_ephemeral_across_nodes(cluster_factory: Callable[[int], Awaitable[Cluster]]) -> None:
    c = await cluster_factory(2)
    bob_dev = Device.new()
    alice = await registered(c.ws(0), Device.new())
    bob = await registered(c.ws(1), bob_dev)
    await bob.resume()
    ack = await alice.send_message(bob_dev.username, cts(bob_dev), ephemeral=True)
    assert ack["event"] == "ksmpv3.send.ack", ack
    (f,) = await inbox(bob, 1)
    assert f["data"]["globalInboxSeq"] == 0 and f["data"]["envelope"]["ephemeral"] is True
    await bob.close()
    deadline = asyncio.get_running_loop().time() + 5
    while True:  # node1 unsubscribes once it has seen the close
        reply = await alice.send_message(bob_dev.username, cts(bob_dev), ephemeral=True)
        if reply["event"] == "ksmpv3.error":
            break
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert reply["data"]["code"] == "recipient_offline"
    # Nothing was stored for the device: a resume replays nothing ephemeral.
    bob = await logged_in(c.ws(0), bob_dev)
    assert await bob.resume() == []


async def test_revocation_closes_the_device_on_another_node(
    cluster_factory: Callable[[int], Awaitable[Cluster]],
) -> None:
    c = await cluster_factory(3)
    alice = Device.new()
    alice2 = alice.sibling("d2")
    a1 = await registered(c.ws(0), alice)
    a2 = await RawClient.open(c.ws(1))
    assert (await a2.add_device(alice2))["event"] == "sottovoce.registered"
    await a2.resume()
    carol = await registered(c.ws(2), Device.new())
    # Node 2 caches alice's two devices through a lookup, before the revocation.
    res = await carol.request("sottovoce.directory.lookup", {"username": alice.username})
    assert len(res["data"]["devices"]) == 2
    stmt = RevocationStatement.issue(alice.account_key, username=alice.username,
                                     device_id="d2", now_ms=now_ms())
    reply = await a1.request("sottovoce.device.revoke", {"revocation": b64(stmt.encode())})
    assert reply["event"] == "sottovoce.device.revoked"
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(a2.ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4001
    # Node 2's cache followed: the revoked device is gone there too.
    for _ in range(50):
        res = await carol.request("sottovoce.directory.lookup", {"username": alice.username})
        if len(res["data"]["devices"]) == 1:
            break
        await asyncio.sleep(0.02)
    assert res["data"]["revokedDeviceIds"] == ["d2"]
    # And the revoked device cannot come back through any node.
    for i in range(3):
        cl = await RawClient.open(c.ws(i))
        assert (await cl.auth(alice2))["data"]["code"] == "auth_failed"


async def test_a_newer_connection_on_another_node_replaces_the_older(
    cluster_factory: Callable[[int], Awaitable[Cluster]],
) -> None:
    c = await cluster_factory(2)
    dev = Device.new()
    first = await registered(c.ws(0), dev)
    await first.resume()
    second = await logged_in(c.ws(1), dev)
    await second.resume()
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(first.ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4000
    assert (await second.request("ping", {}))["event"] == "pong"


async def test_a_file_uploaded_through_one_node_is_downloaded_through_another(
    cluster_factory: Callable[[int], Awaitable[Cluster]], tmp_path: Path,
) -> None:
    c = await cluster_factory(2)
    tag = secrets.token_hex(4)
    alice = await Client.create_account(c.nodes[0].url, f"alice{tag}", tmp_path / "a", "pw",
                                        kdf=TEST_KDF)
    bob = await Client.create_account(c.nodes[1].url, f"bob{tag}", tmp_path / "b", "pw",
                                      kdf=TEST_KDF)
    try:
        src = tmp_path / "f.bin"
        data = secrets.token_bytes(5 * 128 * 1024 + 99)
        src.write_bytes(data)
        stream = bob.events()
        await alice.files.send_file(f"bob{tag}", src)
        while not isinstance(event := await stream.next(20), MessageReceived) \
                or event.message.content_type != "file":
            pass
        info = bob.files.info(event.message.message_id)
        assert (c.blob_dir / info.blob_id).exists()  # written by node 0, in the shared dir
        out = await bob.files.save(event.message.message_id, tmp_path / "out.bin")
        assert out.read_bytes() == data  # read by node 1
        assert not (c.blob_dir / info.blob_id).exists()  # and deleted there once fetched
        assert not any((node.data_dir / "blobs").exists() for node in c.nodes)
    finally:
        await alice.close()
        await bob.close()
