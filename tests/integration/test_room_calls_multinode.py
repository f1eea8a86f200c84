"""Room calls through an SFU with several server nodes (PostgreSQL + NATS, docs/calls.md).

A call's VideoRoom is opened by the node its first grant went through, and only
that node knows the call. A removal committed through another node must still
revoke the removed device's grant and kick its feed: the removal travels to the
other nodes through the fan-out. The Janus participant here joins as a bare
publisher (no media): being kicked is what is under test, not the media.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from sottovoce.calls.janus import SfuUnauthorized
from sottovoce.client import Client
from sottovoce.janus_session import JanusSession
from sottovoce.server.sfu import sfu_feed_id
from tests.integration.client_helpers import make_account
from tests.integration.janus_helpers import Janus
from tests.integration.pgschema import create_schema, drop_schema
from tests.integration.test_multinode import Cluster, skip_without_services
from tests.integration.test_room_calls_server import feeds_in


@pytest.fixture
def two_nodes(janus: Janus, tmp_path: Path) -> Iterator[Cluster]:
    """Two nodes on one schema and one NATS namespace, both driving the same Janus."""
    skip_without_services()
    key = janus.key_file(tmp_path)
    schema, dsn = create_schema("sv_rcmn")
    cluster = Cluster(tmp_path / "cluster", dsn, f"t{secrets.token_hex(6)}")
    sfu = ("--sfu", janus.ws_url, "--sfu-key-file", str(key))
    try:
        cluster.add(*sfu).start()  # the first applies the schema migrations
        cluster.add(*sfu).start()
        yield cluster
    finally:
        cluster.stop()
        drop_schema(schema)


async def join_as_publisher(url: str, grant: dict[str, object]) -> JanusSession:
    """A publisher in the call's VideoRoom with ``grant`` (no media): what Janus kicks."""
    session = await JanusSession.connect(url, rng=secrets.token_bytes, timeout_s=10)
    try:
        handle = await session.attach()
        await session.message(handle, {
            "request": "join", "ptype": "publisher", "room": grant["room"],
            "id": grant["feedId"], "token": grant["token"],
        })
    except BaseException:
        await session.close()
        raise
    return session


async def test_a_removal_on_one_node_kicks_the_feed_granted_by_another(
    two_nodes: Cluster, janus: Janus, tmp_path: Path
) -> None:
    node0, node1 = two_nodes.nodes
    alice = await make_account(node0, "alice", tmp_path)
    carol = await make_account(node1, "carol", tmp_path)
    clients: list[Client] = [alice, carol]
    sessions: list[JanusSession] = []
    try:
        room = await alice.rooms.create_room("call-room")
        await alice.rooms.invite(room.room_id, "carol")
        await carol.rooms.wait_epoch(room.room_id, 1, timeout=20)
        call_id = secrets.token_bytes(16)
        # Carol is connected to node 1: node 1 opens the call's VideoRoom and grants her.
        grant = await carol._ask_sfu_grant(room.room_id, call_id)
        assert grant["url"] == janus.ws_url
        feed = sfu_feed_id(janus.admin_key, room.room_id, call_id, (carol.username,
                                                                    carol.device_id))
        assert grant["feedId"] == feed
        sessions.append(await join_as_publisher(janus.ws_url, grant))
        assert feed in await feeds_in(janus, room.room_id, call_id)

        # Alice, on node 0 (which never saw the call), removes carol from the room.
        await alice.rooms.remove(room.room_id, "carol")
        for _ in range(100):
            if feed not in await feeds_in(janus, room.room_id, call_id):
                break
            await asyncio.sleep(0.1)
        assert feed not in await feeds_in(janus, room.room_id, call_id)
        # Her token is out of the allowed list too: it lets nobody in any more.
        with pytest.raises(SfuUnauthorized):
            sessions.append(await join_as_publisher(janus.ws_url, grant))
    finally:
        for s in sessions:
            await s.close()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
