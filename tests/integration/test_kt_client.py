"""Key transparency from the client's side against the real server (127.0.0.1, SQLite,
its co-located witness): pinning at account create, lookups verified against the
log, the own-account monitor, and two lying servers made by editing the server's
data behind its back: a device added to the directory without a log entry, and a
whole data directory rolled back (log, map and witness state together).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from sottovoce.client import Client
from sottovoce.client.errors import KeyNotInLog, KTAlertRaised
from sottovoce.client.kt import LOG_INCONSISTENT
from sottovoce.identity import DeviceCertificate, DevicePublicKeys
from sottovoce.kt.checkpoint import NoteKey
from tests.integration.client_helpers import PASSPHRASE, make_account, received
from tests.integration.serverproc import ServerProcess


def _keys(server: ServerProcess) -> dict[str, object]:
    data = json.loads(server.http_get("/kt/keys"))
    assert isinstance(data, dict)
    return data


async def test_accounts_pin_the_servers_log_and_messages_flow_verified(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "server").start() as server:
        alice = await make_account(server, "alice", tmp_path)
        bob = await make_account(server, "bob", tmp_path)
        keys = _keys(server)
        pins = alice.kt.pins
        assert pins is not None and pins.log_key == NoteKey.from_vkey(str(keys["log_key"])).vkey()
        assert list(pins.witnesses) == keys["witnesses"] and pins.witnesses
        b_events = bob.events()
        await alice.wait_sent(await alice.send_text("bob", "verified"), timeout=10)
        assert [m.text for m in await received(b_events, 1)] == ["verified"]
        # A second device of bob's: in the log by the time alice's lookup is answered.
        bob2 = await bob.add_device(tmp_path / "bob2", PASSPHRASE)
        await bob.check_log()
        await bob2.check_log()
        alice_head = alice.kt.head
        await alice.wait_sent(await alice.send_text("bob", "both devices"), timeout=10)
        head = alice.kt.head
        assert head is not None and alice_head is not None and head.size > alice_head.size
        for c in (alice, bob, bob2):
            assert c.kt.alerts() == []
            await c.close()


async def test_a_device_in_the_directory_but_not_in_the_log_is_refused(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server").start()
    try:
        alice = await make_account(server, "alice", tmp_path)
        bob = await make_account(server, "bob", tmp_path)
        for c in (alice, bob):
            await c.close()
        # The server adds a device to bob's directory entry without logging it. Even
        # with a certificate bob's account key really signed (so only the log can
        # tell), alice does not use it.
        keys = bob.identity.certificate.keys
        forged = DeviceCertificate.issue(
            bob.identity.account_key, username="bob", device_id="planted0device00",
            keys=DevicePublicKeys(signing_key=bytes(range(32)),
                                  olm_identity_key=keys.olm_identity_key,
                                  olm_signing_key=keys.olm_signing_key,
                                  mls_signature_key=keys.mls_signature_key),
            now_ms=bob.identity.certificate.created_at_ms,
        )
        server.stop()  # behind the server's back (it caches accounts)
        db = sqlite3.connect(server.db_path)
        db.execute(
            "INSERT INTO devices(user_id, device_id, certificate, created_at) VALUES (?,?,?,?)",
            ("bob", forged.device_id, forged.encode(), forged.created_at_ms),
        )
        db.commit()
        db.close()
        server.start()
        alice = await Client.open(tmp_path / "alice", PASSPHRASE)
        await alice.connect()
        with pytest.raises(KeyNotInLog, match="planted0device00"):
            await alice.send_text("bob", "to a planted device?")
        assert alice.history("bob") == []
        await alice.close()
    finally:
        server.stop()


async def test_a_rolled_back_server_is_caught_at_the_next_check(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server").start()
    try:
        alice = await make_account(server, "alice", tmp_path)
        await alice.close()
        server.stop()
        shutil.copytree(server.data_dir, tmp_path / "snapshot")
        server.start()
        await (await make_account(server, "bob", tmp_path)).close()
        alice = await Client.open(tmp_path / "alice", PASSPHRASE)
        await alice.connect()
        await alice.check_log()
        head = alice.kt.head
        assert head is not None and head.size >= 2
        await alice.close()
        server.stop()
        # Everything goes back, the co-located witness's memory too.
        shutil.rmtree(server.data_dir)
        shutil.copytree(tmp_path / "snapshot", server.data_dir)
        server.start()
        alice = await Client.open(tmp_path / "alice", PASSPHRASE)
        await alice.connect()
        with pytest.raises(KTAlertRaised, match="shrank"):
            await alice.check_log()
        assert alice.kt.head == head
        assert [a.kind for a in alice.kt.alerts()] == [LOG_INCONSISTENT]
        await alice.close()
    finally:
        server.stop()


class _Heads:
    """Every peer head a client is handed to compare (sender, size, root), awaitable."""

    def __init__(self, client: Client) -> None:
        self.seen: list[tuple[str, int, bytes]] = []
        self._changed = asyncio.Event()
        compare = client.kt.compare

        async def recording(peer: str, size: int, root: bytes) -> None:
            self.seen.append((peer, size, root))
            self._changed.set()
            await compare(peer, size, root)

        client.kt.compare = recording  # type: ignore[method-assign]

    async def wait(self, peer: str, head: tuple[int, bytes] | None, timeout: float = 10) -> None:
        assert head is not None
        async with asyncio.timeout(timeout):
            while (peer, *head) not in self.seen:
                self._changed.clear()
                await self._changed.wait()


async def test_room_messages_and_commits_carry_the_senders_head(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "server").start() as server:
        alice = await make_account(server, "alice", tmp_path)
        bob = await make_account(server, "bob", tmp_path)
        carol = await make_account(server, "carol", tmp_path)
        heads = _Heads(bob)
        room = await alice.rooms.create_room("friends")
        await alice.rooms.invite("friends", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        await alice.check_log()
        await alice.rooms.send("friends", "hello")
        await heads.wait("alice", alice.kt.checkpoint_ref())
        # A commit carries it in its authenticated data.
        heads.seen.clear()
        await alice.rooms.invite("friends", "carol")
        await bob.rooms.wait_epoch(room.room_id, 2)
        await heads.wait("alice", alice.kt.checkpoint_ref())
        assert bob.kt.alerts() == []
        for c in (alice, bob, carol):
            await c.close()


async def test_an_external_join_and_a_rejoin_carry_the_joiners_head(tmp_path: Path) -> None:
    """Joining by token and rejoining (recovery) are external commits: like a member's
    commit they carry the committer's log head, and the members compare it."""
    with ServerProcess(tmp_path / "server").start() as server:
        alice = await make_account(server, "alice", tmp_path)
        carol = await make_account(server, "carol", tmp_path)
        heads = _Heads(alice)
        room = await alice.rooms.create_room("open")
        token = await alice.rooms.create_token("open")
        await carol.check_log()
        await carol.rooms.join_with_token(token)
        await alice.rooms.wait_epoch(room.room_id, 1)
        await heads.wait("carol", carol.kt.checkpoint_ref())
        # A rejoin (what a member that cannot follow the room does) carries it too.
        heads.seen.clear()
        await carol.rooms._recovery.recover(carol.rooms.get(room.room_id), "test")
        await alice.rooms.wait_epoch(room.room_id, 2)
        await heads.wait("carol", carol.kt.checkpoint_ref())
        assert alice.kt.alerts() == [] and carol.kt.alerts() == []
        for c in (alice, carol):
            await c.close()


async def test_the_own_account_is_monitored_in_pages_of_the_servers_size(
    tmp_path: Path,
) -> None:
    """A server whose history pages hold two versions (--kt-history-page 2): a device
    checks its account's three versions in two pages, and one page holds two."""
    from sottovoce.kt.verify import HistoryPage, HistoryResponse
    from sottovoce.protocol import kt as pk

    extra = ["--kt-history-page", "2"]
    with ServerProcess(tmp_path / "server", extra_args=extra).start() as server:
        bob = await make_account(server, "bob", tmp_path)
        others = [await bob.add_device(tmp_path / f"bob{i}", PASSPHRASE) for i in (2, 3)]
        assert await bob.check_log() >= 0
        assert bob.kt.monitor_state.versions == 3 and bob.kt.alerts() == []
        answers = frozenset({pk.KT_HISTORY_RESULT})
        _, data = await bob._conn.request(pk.KTHistory(since=0, start=0), answers)
        page = HistoryPage.decode(pk.KTResponse.from_wire(data).response)
        assert page.start == 0 and len(page.states) == 2
        _, data = await bob._conn.request(pk.KTHistory(since=0), answers)  # all at once
        assert len(HistoryResponse.decode(pk.KTResponse.from_wire(data).response).states) == 3
        for c in (bob, *others):
            await c.check_log()
            assert c.kt.alerts() == []
            await c.close()
