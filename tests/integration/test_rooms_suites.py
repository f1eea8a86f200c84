"""Rooms in the hybrid post-quantum suite through the real server (docs/protocol.md,
"KeyPackages per suite"; docs/threat-model.md, "Post-quantum").

* Three clients hold a room in the X-Wing suite (0xF001): created in it, a member
  invited (a Welcome made with his X-Wing KeyPackage), one joining by request (an
  X-Wing KeyPackage of his own), messages every way, a member removed (the commit
  re-keys) who opens none of the later ciphertexts; a suite-1 room works beside it.
* A client that keeps KeyPackages of suite 1 only (one from before the hybrid suite)
  cannot be invited to an X-Wing room: the inviter gets NoKeyPackageForSuite naming
  the user and the suite, and the same client is invited to a suite-1 room at once.
* The server refuses an upload naming a suite its KeyPackages are not of.
* A call in an X-Wing room runs its own MLS group in X-Wing too (real clients).
* A client uploads a stock of each suite, and a low notice tops up the suite it
  names (suite 1 when it names none).
* `room create --suite` takes a suite by name or number and `room info` shows it;
  an unknown suite is a plain error.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from sottovoce.client import Client
from sottovoce.client.errors import ServerError
from sottovoce.client.rooms.keypackages import KeyPackageRecord, NoKeyPackageForSuite
from sottovoce.client.rooms.model import ROOM_REQUEST_TIMEOUT_S
from sottovoce.client.store import TEST_KDF
from sottovoce.crypto.mls_suites import XWING_SUITE_ID
from sottovoce.limits import CLIENT_KEY_PACKAGE_BATCH
from sottovoce.mls.framing import MLSMessage
from sottovoce.protocol import rooms as pr
from tests.integration.client_helpers import PASSPHRASE, make_account, opened_by
from tests.integration.serverproc import ServerProcess
from tests.integration.test_room_calls_server import QUIET, call_in, until
from tests.integration.test_rooms_cli import _ok, _room
from tests.integration.test_rooms_e2e import (
    _tap_room_ciphertexts,
    close_all,
    make_accounts,
    members,
    room_messages,
)


def _suite_of(client: Client, room_id: str) -> int:
    group = client.rooms.get(room_id).group
    assert group is not None
    return group.suite.id


async def test_three_clients_hold_an_xwing_room_beside_a_suite_1_room(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, carol = await make_accounts(server, ["alice", "bob", "carol"], tmp_path)
    try:
        room = await alice.rooms.create_room("pq", XWING_SUITE_ID)
        classic = await alice.rooms.create_room("classic")
        assert alice.rooms.suite("pq") == XWING_SUITE_ID and alice.rooms.suite("classic") == 1

        await alice.rooms.invite("pq", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        token = await alice.rooms.create_token("pq")
        assert await carol.rooms.request_join(token) == room.room_id
        await carol.rooms.wait_epoch(room.room_id, 2, 20)
        for c in (alice, bob):
            await c.rooms.wait_epoch(room.room_id, 2, 20)
        everyone = {(c.username, c.device_id) for c in (alice, bob, carol)}
        for c in (alice, bob, carol):
            assert _suite_of(c, room.room_id) == XWING_SUITE_ID
            assert members(c, room.room_id) == everyone
        assert len({c.rooms.epoch_authenticator(room.room_id) for c in (alice, bob, carol)}) == 1

        await alice.rooms.send("pq", "from alice")
        await bob.rooms.send(room.room_id, "from bob")
        await carol.rooms.send(room.room_id, "from carol")
        for c in (alice, bob, carol):
            assert sorted(await room_messages(c, room.room_id, 3, 20)) == [
                "from alice", "from bob", "from carol",
            ]

        # The suite-1 room beside it.
        await alice.rooms.invite("classic", "bob")
        await bob.rooms.wait_epoch(classic.room_id, 1)
        assert _suite_of(bob, classic.room_id) == 1
        await bob.rooms.send(classic.room_id, "classic works")
        assert await room_messages(alice, classic.room_id, 1) == ["classic works"]

        # Removing carol re-keys the room; she opens nothing sent after it.
        removal = await alice.rooms.remove("pq", "carol")
        assert removal is not None
        tapped = _tap_room_ciphertexts(bob)
        await carol.rooms.wait_until(lambda: carol.rooms.get(room.room_id).removed, 20)
        for i in range(3):
            await alice.rooms.send("pq", f"after removal {i}")
        await bob.rooms.send(room.room_id, "bob after removal")
        assert len(await room_messages(bob, room.room_id, 7, 20)) == 7
        await carol.sync()
        assert all("after removal" not in m.text for m in carol.rooms.history(room.room_id))
        carol_group = carol.rooms.get(room.room_id).group
        assert carol_group is not None and not carol_group.is_active
        later = [ct for seq, ct in tapped if seq > removal.server_seq]
        assert len(later) == 4
        assert opened_by(carol_group, later) == 0
        assert _suite_of(bob, room.room_id) == XWING_SUITE_ID
    finally:
        await close_all([alice, bob, carol])


async def _client_of_suite_1_only(server: ServerProcess, name: str, root: Path) -> Client:
    """A client as it was before the hybrid suite: it uploads suite-1 KeyPackages only."""
    client = await Client.create_account(
        server.url, name, root / name, PASSPHRASE, kdf=TEST_KDF, connect=False
    )
    client.rooms._key_packages.suites = (1,)
    await client.connect()
    await client.rooms._key_packages.ensure()
    return client


async def test_a_user_without_xwing_key_packages_gets_a_typed_error(
    server: ServerProcess, tmp_path: Path
) -> None:
    (alice,) = await make_accounts(server, ["alice"], tmp_path)
    dave = await _client_of_suite_1_only(server, "dave", tmp_path)
    try:
        pq = await alice.rooms.create_room("pq", XWING_SUITE_ID)
        with pytest.raises(NoKeyPackageForSuite) as caught:
            await alice.rooms.invite("pq", "dave")
        err = caught.value
        assert err.code == "no_key_package_for_suite"
        assert (err.username, err.suite) == ("dave", XWING_SUITE_ID)
        assert "'dave'" in str(err) and "xwing (0xf001" in str(err)
        assert members(alice, pq.room_id) == {("alice", alice.device_id)}  # nothing committed
        # The same client joins a suite-1 room at once.
        classic = await alice.rooms.create_room("classic")
        assert await alice.rooms.invite("classic", "dave") is not None
        await dave.rooms.wait_epoch(classic.room_id, 1, 20)
        assert _suite_of(dave, classic.room_id) == 1
    finally:
        await close_all([alice, dave])


async def test_the_server_refuses_key_packages_of_another_suite_than_named(
    server: ServerProcess, tmp_path: Path
) -> None:
    (alice,) = await make_accounts(server, ["alice"], tmp_path)
    try:
        kps = alice.rooms._key_packages
        await kps.ensure()
        classic = MLSMessage(body=kps.make_one(1)).encode()
        xwing = MLSMessage(body=kps.make_one(XWING_SUITE_ID)).encode()
        link = kps._link
        for wrong, named in ((classic, XWING_SUITE_ID), (xwing, 1)):
            with pytest.raises(ServerError) as caught:
                await link.request(
                    pr.KeyPackagesUpload(keyPackages=(wrong,), suite=named),
                    frozenset({pr.KEYPACKAGES_STORED}), timeout=ROOM_REQUEST_TIMEOUT_S,
                )
            assert caught.value.code == "invalid_key_package"
            assert f"{named:#06x}" in str(caught.value)
        with pytest.raises(ServerError) as caught:
            await link.request(
                pr.KeyPackagesUpload(keyPackages=(b"\x00\x01junk",), suite=1),
                frozenset({pr.KEYPACKAGES_STORED}), timeout=ROOM_REQUEST_TIMEOUT_S,
            )
        assert caught.value.code == "invalid_key_package"
        # Named rightly, it is stored in that suite's stock.
        _, data = await link.request(
            pr.KeyPackagesUpload(keyPackages=(xwing,), suite=XWING_SUITE_ID),
            frozenset({pr.KEYPACKAGES_STORED}), timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        assert data["count"] >= 1
    finally:
        await asyncio.gather(alice.close())


def test_room_create_suite_and_room_info_on_the_command_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    async def accounts() -> None:
        for name in ("alice", "bob"):
            await (await make_account(server, name, tmp_path)).close()

    asyncio.run(accounts())
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    xwing = "xwing (0xf001, MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519)"
    classic = "classic (0x0001, MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519)"

    assert xwing in _ok(_room("create", "vault", "--suite", "xwing", home=alice))
    assert "invited bob" in _ok(_room("invite", "vault", "bob", home=alice))
    assert f"suite: {xwing}" in _ok(_room("info", "vault", home=bob))
    assert classic in _ok(_room("create", "plain", home=alice))  # suite 1 by default
    assert f"suite: {classic}" in _ok(_room("info", "plain", home=alice))
    assert xwing in _ok(_room("create", "vault2", "--suite", "0xF001", home=alice))

    bad = _room("create", "other", "--suite", "kyber", home=alice)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "unknown MLS cipher suite 'kyber'" in bad.stderr and "xwing (0xf001" in bad.stderr
    assert _room("create", "other", "--suite", "2", home=alice).returncode != 0  # not a room's

    shown = _ok(_room("create", "--help", home=alice))
    assert "--suite" in shown and "xwing" in shown and "private-use" in shown


def _stock(server: ServerProcess) -> dict[int, int]:
    """One-time KeyPackages the server holds, by suite (its SQLite database)."""
    with sqlite3.connect(server.db_path) as db:
        rows = db.execute("SELECT suite, count(*) FROM key_packages GROUP BY suite").fetchall()
    return {int(suite): int(n) for suite, n in rows}


async def test_a_client_uploads_both_suites_and_tops_up_the_one_a_notice_names(
    server: ServerProcess, tmp_path: Path
) -> None:
    (alice,) = await make_accounts(server, ["alice"], tmp_path)
    try:
        await alice.rooms.ensure_key_packages()
        batch = CLIENT_KEY_PACKAGE_BATCH
        assert _stock(server) == {1: batch, XWING_SUITE_ID: batch}
        await alice.rooms.replenish({"remaining": 3, "suite": XWING_SUITE_ID})
        assert _stock(server) == {
            1: CLIENT_KEY_PACKAGE_BATCH, XWING_SUITE_ID: 2 * CLIENT_KEY_PACKAGE_BATCH,
        }
        await alice.rooms.replenish({"remaining": 3})  # a notice naming no suite: suite 1
        assert _stock(server) == {
            1: 2 * CLIENT_KEY_PACKAGE_BATCH, XWING_SUITE_ID: 2 * CLIENT_KEY_PACKAGE_BATCH,
        }
        # Each suite keeps its own last resort on the device too.
        records = [r for _, r, lr in alice._store.key_package_records() if lr]
        assert sorted(KeyPackageRecord.decode(r).key_package.cipher_suite for r in records) == [
            1, XWING_SUITE_ID]
    finally:
        await close_all([alice])


async def test_a_call_in_an_xwing_room_runs_its_group_in_the_room_suite(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    try:
        room = await alice.rooms.create_room("pq-call", XWING_SUITE_ID)
        await alice.rooms.invite(room.room_id, "bob")
        await bob.rooms.wait_epoch(room.room_id, 1, 20)
        ctls = await call_in([alice, bob], room.room_id, [QUIET, QUIET])
        await until(lambda: all(len(c.participants) == 2 for c in ctls), 40)
        for ctl in ctls:
            group = ctl.call.group
            assert group is not None and group.suite.id == XWING_SUITE_ID
        auths = [ctl.call.group.epoch_authenticator.expose() for ctl in ctls]  # type: ignore[union-attr]
        assert auths[0] == auths[1]  # both in the same epoch of the same call group
        for ctl in ctls:
            await ctl.close()
    finally:
        await close_all([alice, bob])
