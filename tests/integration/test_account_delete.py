"""Account deletion through the real server process and real clients (docs/protocol.md §Accounts).

* a user with two devices in two rooms deletes the account: every member's MLS
  group ends without any leaf of it (the members commit the Removes on the
  server's removeRequest, seeing the directory answer ``unknown_user``), and the
  members agree on the epoch;
* the other device of the account is told and its store is marked deleted;
  reopening either store says the account is gone;
* ``sottovoce account delete --yes`` does the same from the command line;
* two nodes on NATS: the account's connection on the other node closes with 4002.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from sottovoce.cli.main import main as cli_main
from sottovoce.client import Client
from sottovoce.client.errors import StoreError
from sottovoce.client.events import ErrorEvent
from sottovoce.client.store import TEST_KDF
from sottovoce.identity import AccountDeletion
from sottovoce.server.app import ServerApp
from sottovoce.server.config import ServerConfig
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.conformance.rawclient import Device, RawClient, b64, now_ms, registered
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess
from tests.unit.test_fanout import NATS_URL, needs_nats, shared, wait_closed, ws


async def close_all(clients: Iterable[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def users_in(client: Client, room_id: str) -> set[str]:
    """The user names of the leaves of ``client``'s MLS group for the room."""
    return {user for user, _ in client.rooms.get(room_id).members()}


async def test_deleted_account_leaves_every_room_of_every_member(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, carol = await asyncio.gather(
        *(make_account(server, n, tmp_path) for n in ("alice", "bob", "carol"))
    )
    tablet = await bob.add_device(tmp_path / "bob-tablet", PASSPHRASE, kdf=TEST_KDF)
    tablet_events = tablet.events()
    try:
        big = await alice.rooms.create_room("big")
        small = await carol.rooms.create_room("small")
        await alice.rooms.invite(big.room_id, "bob")  # both of bob's devices
        await alice.rooms.invite(big.room_id, "carol")
        await carol.rooms.invite(small.room_id, "bob")
        for client, room_id, epoch in ((tablet, big.room_id, 2), (bob, small.room_id, 1),
                                       (carol, big.room_id, 2)):
            await client.rooms.wait_epoch(room_id, epoch)
        assert "bob" in users_in(alice, big.room_id) and "bob" in users_in(carol, small.room_id)

        await bob.delete_account()
        assert bob.closed and bob.account_deleted

        expected = {big.room_id: [alice, carol], small.room_id: [carol]}
        for room_id, room_members in expected.items():
            for member in room_members:
                ok = await member.rooms.wait_until(
                    lambda m=member, rid=room_id: "bob" not in users_in(m, rid), 15
                )
                assert ok, f"{member} still has a leaf of bob in {room_id}"
        assert users_in(alice, big.room_id) == {"alice", "carol"}
        assert users_in(carol, small.room_id) == {"carol"}
        ok = await alice.rooms.wait_until(
            lambda: alice.rooms.epoch_authenticator(big.room_id)
            == carol.rooms.epoch_authenticator(big.room_id), 10,
        )
        assert ok, "alice and carol disagree on the epoch of the big room"
        # The rooms go on without bob.
        await alice.rooms.send(big.room_id, "after bob left")

        # bob's other device was told, and its store is marked too.
        got: list[str] = []
        while "account_deleted" not in got:
            event = await tablet_events.next(10)
            if isinstance(event, ErrorEvent):
                got.append(event.code)
        assert tablet.account_deleted
    finally:
        tablet_events.close()
        await close_all([alice, bob, carol, tablet])
    for path in (tmp_path / "bob", tmp_path / "bob-tablet"):
        with pytest.raises(StoreError, match="deleted"):
            await Client.open(path, PASSPHRASE)


def test_cli_account_delete(server: ServerProcess, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE)
    home = tmp_path / "dave"

    async def create() -> None:
        client = await Client.create_account(server.url, "dave", home, PASSPHRASE, kdf=TEST_KDF)
        await client.close()

    asyncio.run(create())
    common = ["--data-dir", str(home), "--passphrase-file", str(pw)]
    # Without --yes and without a terminal it refuses, and nothing is deleted.
    assert cli_main(["account", "delete", *common]) == 1
    assert "--yes" in capsys.readouterr().err
    assert cli_main(["account", "delete", "--yes", *common]) == 0
    assert "deleted account 'dave'" in capsys.readouterr().out
    # Every later command says the account is gone.
    assert cli_main(["send", "erin", "hi", *common]) == 1
    assert "was deleted" in capsys.readouterr().err

    async def name_taken() -> None:
        c = await RawClient.open(server.ws_url)
        reply = await c.register(Device.new("dave"))
        assert reply["data"]["code"] == "username_taken"
        await c.close()

    asyncio.run(name_taken())


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[ServerApp]]:
    """Two server apps (nodes) on one SQLite storage, talking over the real NATS."""
    log = JsonLogger(open(tmp_path / "log", "a"), level="debug")  # noqa: SIM115
    storage = shared(SqliteStorage(tmp_path / "db.sqlite3", logger=log))
    namespace = f"t{uuid.uuid4().hex[:12]}"
    apps = []
    for name in ("a", "b"):
        cfg = ServerConfig(port=0, data_dir=tmp_path / name, nats=NATS_URL, node_id=f"n{name}",
                           nats_namespace=namespace, expiry_interval_ms=3_600_000)
        app = ServerApp(cfg, storage=storage, logger=log)
        await app.start()
        apps.append(app)
    try:
        yield apps
    finally:
        for app in apps:
            await app.stop()


@needs_nats
async def test_deletion_closes_the_accounts_socket_on_the_other_node(
    nodes: list[ServerApp],
) -> None:
    a, b = nodes
    alice = Device.new()
    a1 = await registered(ws(a), alice)
    a2 = await RawClient.open(ws(b))
    assert (await a2.add_device(alice.sibling("d2")))["event"] == "sottovoce.registered"
    await a2.resume()
    stmt = AccountDeletion.issue(alice.account_key, username=alice.username, now_ms=now_ms())
    reply = await a1.request("sottovoce.account.delete", {"statement": b64(stmt.encode())})
    assert reply["event"] == "sottovoce.account.deleted"
    code, frames = await wait_closed(a2)
    assert code == 4002
    assert any('"sottovoce.account.deleted"' in f for f in frames)
    # Node b's directory cache followed: the name is unknown there too.
    other = await registered(ws(b))
    res = await other.request("sottovoce.directory.lookup", {"username": alice.username})
    assert res["data"]["code"] == "unknown_user"
