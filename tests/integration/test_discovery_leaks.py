"""Strict discovery without leaks, against the real server on 127.0.0.1:

* room KeyPackage claims are gated like prekey claims: to a stranger a strict account
  is a name nobody holds (byte for byte), while a contact it let in still invites it
  to a room;
* a grant ends when the owner removes, blocks or declines the contact: from then on
  that account is a stranger to lookups and claims (and only the owner can end it);
* registration pays a proof of work whose difficulty rises under a flood of probes
  from one address; an honest registration still gets through;
* a TOTP request waits on the server for an offline owner, stamped with the time it
  came in, and is judged as of that stamp when the owner comes back.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sottovoce.client import Client
from sottovoce.client.control import TYPING, typing_body
from sottovoce.client.errors import ServerError
from sottovoce.client.store import TEST_KDF
from sottovoce.errors import UsageError
from sottovoce.protocol.discovery import DISCOVERY_WITHDRAWN, DiscoveryWithdraw
from tests.conformance.rawclient import Device, RawClient, b64, registered
from tests.integration import pgschema
from tests.integration.client_helpers import PASSPHRASE, accounts, received
from tests.integration.serverproc import ServerProcess
from tests.integration.test_discovery_strict import FREE, _paid
from tests.waiting import until


async def _let_in(owner: Client, *names: str) -> None:
    """``owner`` makes ``names`` contacts and goes strict: each gets a capability."""
    for name in names:
        await owner.contacts.add(name)
    await owner.discovery.mode("strict")



async def _hidden_from(client: Client, name: str) -> None:
    """``client`` sees ``name`` as a name nobody holds: lookup and KeyPackage claim."""
    client._directory.forget(name)
    with pytest.raises(ServerError) as info:
        await client._directory.lookup(name)
    assert info.value.code == "unknown_user"
    with pytest.raises(ServerError) as info:
        await client.rooms._key_packages.claim(name)
    assert info.value.code == "unknown_user"


def _grants(server: ServerProcess, user: str) -> int | None:
    """How many grants the server keeps for ``user`` (None: not a SQLite server)."""
    if not server.db_path.exists():
        return None
    db = sqlite3.connect(server.db_path)
    try:
        row = db.execute("SELECT count(*) FROM discovery_grants WHERE user_id=?", (user,))
        return int(row.fetchone()[0])
    finally:
        db.close()


# --- rooms ---------------------------------------------------------------------------


async def test_keypackage_claims_of_a_strict_name_answer_like_a_free_one(
    server: ServerProcess, tmp_path: Path,
) -> None:
    async with accounts(server, tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        await _let_in(alice, "bob")
        raw = await registered(server.ws_url)
        try:
            strict = await _paid(raw, "sottovoce.keypackages.claim", {"username": "alice"})
            free = await _paid(raw, "sottovoce.keypackages.claim", {"username": FREE})
            assert strict == free, (strict, free)
            assert json.loads(strict)["data"]["code"] == "unknown_user"
            # Without a proof of work a claim is not even answered about the name.
            first = await raw.request("sottovoce.keypackages.claim", {"username": "zed-new"})
            assert first["data"]["code"] == "unknown_user"
        finally:
            await raw.close()
        # bob holds a capability: he invites alice to a room and she joins it.
        await until(lambda: bob.discovery.cap_for("alice") is not None)
        room = await bob.rooms.create_room("friends")
        await bob.rooms.invite("friends", "alice")
        await alice.rooms.wait_epoch(room.room_id, 1)
        # carol holds none: her invitation fails as for a name nobody holds.
        other = await carol.rooms.create_room("strangers")
        for name in ("alice", FREE):
            with pytest.raises(ServerError) as info:
                await carol.rooms.invite(other.room_id, name)
            assert info.value.code == "unknown_user"


async def test_a_send_to_a_strict_name_does_not_list_its_devices(
    server: ServerProcess, tmp_path: Path,
) -> None:
    """A send whose devices do not match names the missing ones (device_mismatch): to a
    stranger, a strict account's send answers as a name nobody holds instead."""
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        await _let_in(alice, "bob")
        raw = await registered(server.ws_url)
        try:
            errors = []
            for name in ("alice", FREE):
                reply = await raw.send_message(name, [(name, "d1", b"x")], message_id="m1")
                errors.append(dict(reply["data"]))
            assert errors[0] == errors[1], errors
            assert errors[0]["code"] == "unknown_recipient" and "details" not in errors[0]
            # Not strict: the mismatch is answered as before (its devices are no secret).
            reply = await raw.send_message("bob", [("bob", "d1", b"x")])
            assert reply["data"]["code"] == "device_mismatch"
        finally:
            await raw.close()
        # bob, let in, still writes to alice.
        await until(lambda: bob.discovery.cap_for("alice") is not None)
        stream = alice.events()
        await bob.send_text("alice", "still reachable")
        [msg] = await received(stream, 1)
        assert msg.text == "still reachable"


# --- withdrawing grants ----------------------------------------------------------------


async def test_removing_or_blocking_a_contact_withdraws_its_grant(
    server: ServerProcess, tmp_path: Path,
) -> None:
    await _withdrawals(server, tmp_path)


async def _withdrawals(server: ServerProcess, tmp_path: Path) -> None:
    async with accounts(server, tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        await _let_in(alice, "bob", "carol")
        await until(lambda: None not in (bob.discovery.cap_for("alice"),
                                          carol.discovery.cap_for("alice")))
        assert _grants(server, "alice") in (2, None)
        bob._directory.forget("alice")
        await bob._directory.lookup("alice")  # let in: found
        # Only the owner ends a grant: carol naming bob's capability ends nothing.
        cap = bob.discovery.cap_for("alice")
        assert cap is not None
        _, data = await carol._conn.request(DiscoveryWithdraw(tokens=(cap,)),
                                            frozenset({DISCOVERY_WITHDRAWN}))
        assert data == {"count": 0} and _grants(server, "alice") in (2, None)
        await alice.contacts.remove("bob")
        assert _grants(server, "alice") in (1, None)
        await _hidden_from(bob, "alice")
        # Let in again (the same capability: it is derived), then blocked.
        await alice.contacts.add("bob")
        assert await alice.discovery.let_in("bob")
        bob._directory.forget("alice")
        await bob._directory.lookup("alice")
        await alice.contacts.block("carol")
        await alice.contacts.block("bob")
        assert _grants(server, "alice") in (0, None)
        await _hidden_from(bob, "alice")
        await _hidden_from(carol, "alice")


async def test_declining_someone_let_in_by_a_static_code_withdraws_it(
    server: ServerProcess, tmp_path: Path,
) -> None:
    async with accounts(server, tmp_path, "alice", "erin") as (alice, erin):
        await alice.discovery.mode("strict")
        [code] = await alice.fvc.new_static(1)
        stream = alice.events()
        await erin.discovery.reach("alice", code)  # the server let erin in
        await erin.send_text("alice", "hello, I have a code")
        await received(stream, 1)
        assert alice.contacts.requests() == ["erin"]
        assert _grants(server, "alice") == 1
        await alice.contacts.decline("erin")  # her capability ends with the request
        assert _grants(server, "alice") == 0
        await _hidden_from(erin, "alice")


# --- registration ---------------------------------------------------------------------


async def test_registration_probes_meet_rising_difficulty_and_an_honest_one_gets_through(
    server: ServerProcess, tmp_path: Path,
) -> None:
    async with accounts(server, tmp_path, "alice"):
        pass
    raw = await RawClient.open(server.ws_url)
    try:
        # A taken name: without a proof the server says nothing about it.
        taken = Device.new("alice")
        data = {"certificate": b64(taken.certificate.encode()),
                "signature": b64(taken.sign_challenge(raw.nonce))}
        reply = await raw._request_once("sottovoce.register", data)
        assert reply["data"]["code"] == "pow_required", reply
        base = reply["data"]["details"]["difficulty"]
        seen = [base]
        for _ in range(80):  # a flood of probes from one address, one name each
            probe = Device.new()
            reply = await raw._request_once("sottovoce.register", {
                "certificate": b64(probe.certificate.encode()),
                "signature": b64(probe.sign_challenge(raw.nonce))})
            assert reply["data"]["code"] == "pow_required", reply
            seen.append(reply["data"]["details"]["difficulty"])
        assert seen == sorted(seen) and seen[-1] >= base + 2, seen
        # Paid for, the probe of a taken name is answered: that cannot be hidden.
        paid = await raw.request("sottovoce.register", data)
        assert paid["data"]["code"] == "username_taken"
    finally:
        await raw.close()
    asked: list[int] = []
    honest = await Client.create_account(server.url, "newcomer", tmp_path / "newcomer",
                                         PASSPHRASE, kdf=TEST_KDF, on_pow=asked.append)
    try:
        assert asked and asked[0] > base, asked  # it paid the raised price, and got in
        assert honest.username == "newcomer"
    finally:
        await honest.close()


def test_the_cli_says_it_is_solving_a_slow_proof_of_work(
    server_factory: object, tmp_path: Path,
) -> None:
    import subprocess
    import sys

    srv = server_factory("--pow-bits", "18")  # type: ignore[operator]
    env = {"SOTTOVOCE_HOME": str(tmp_path / "cli"), "SOTTOVOCE_PASSPHRASE": PASSPHRASE,
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "sottovoce", "account", "create", "slowpoke",
                           "--server", srv.url], env=env, capture_output=True, text=True,
                          timeout=170, check=False)
    assert done.returncode == 0, done.stderr
    assert "solving the server's proof of work (18 bits" in done.stderr
    assert "Traceback" not in done.stderr


# --- TOTP requests for an offline owner ------------------------------------------------


async def test_a_totp_request_waits_for_the_owner_and_is_judged_at_its_stamp(
    server: ServerProcess, tmp_path: Path,
) -> None:
    await _offline_owner(server, tmp_path)


async def test_waiting_requests_and_withdrawals_on_postgresql(
    server_factory: Callable[..., ServerProcess], tmp_path: Path,
) -> None:
    why = pgschema.unreachable()
    assert why is None, why
    for check in (_offline_owner, _withdrawals):  # the same names: a schema each
        with pgschema.fresh_schema(f"sv_strict_{check.__name__[1:4]}") as dsn:
            server = server_factory("--database", dsn, name=check.__name__)
            await check(server, tmp_path / check.__name__)
            server.stop()


async def _offline_owner(server: ServerProcess, tmp_path: Path) -> None:
    sqlite = server.db_path.exists()
    async with accounts(server, tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        await alice.discovery.mode("strict")
        code, _ = await alice.fvc.current()
        await alice.close()  # the owner goes offline
        for who in (bob, carol):  # carol presents the same code after bob
            with pytest.raises(UsageError, match="did not let you in"):
                await who.discovery.reach("alice", code, timeout=0.5)
        if sqlite:
            db = sqlite3.connect(server.db_path)
            try:
                waiting = db.execute("SELECT requester FROM contact_requests "
                                     "WHERE user_id='alice' ORDER BY received_ms").fetchall()
            finally:
                db.close()
            assert waiting == [("bob",), ("carol",)]
        # Three minutes later by the owner's clock: the code has expired by then.
        back = Client.load(tmp_path / "alice", PASSPHRASE)
        back.fvc._clock = lambda: time.time() + 180
        await back.connect()
        try:
            await until(lambda: bob.discovery.cap_for("alice") is not None)
            await until(lambda: "bob" in back.contacts.contacts())
            bob._directory.forget("alice")
            await bob._directory.lookup("alice")
            await asyncio.sleep(1.0)  # carol's request was judged too: a used code
            assert carol.discovery.cap_for("alice") is None
            assert "carol" not in back.contacts.contacts()
        finally:
            await back.close()
    if sqlite:
        db = sqlite3.connect(server.db_path)
        try:
            assert db.execute("SELECT count(*) FROM contact_requests").fetchone()[0] == 0
        finally:
            db.close()


async def test_a_contact_let_in_keeps_writing_when_the_strict_account_adds_a_device(
    server: ServerProcess, tmp_path: Path,
) -> None:
    """bob's copy of alice's device list goes stale: the server does not name her new
    device to him (unknown_recipient, as to anyone without a look-up); bob looks her up
    again with his capability and the message reaches both her devices."""
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        await _let_in(alice, "bob")
        await until(lambda: bob.discovery.cap_for("alice") is not None)
        stream = alice.events()
        await bob.send_text("alice", "one device")
        await received(stream, 1)
        tablet = await alice.add_device(tmp_path / "alice-tablet", PASSPHRASE, kdf=TEST_KDF)
        try:
            on_tablet = tablet.events()
            await bob.send_text("alice", "two devices")
            [msg] = await received(on_tablet, 1, timeout=20)
            assert msg.text == "two devices"
            [msg] = await received(stream, 1, timeout=20)
            assert msg.text == "two devices"
            # A third device, and a live send (typing) meets the stale list: it too
            # looks alice up again with the capability, then goes.
            phone = await alice.add_device(tmp_path / "alice-phone", PASSPHRASE, kdf=TEST_KDF)
            await phone.close()
            assert await bob._direct.send_live("alice", typing_body(), TYPING)
        finally:
            await tablet.close()


async def test_a_contact_removed_offline_loses_its_grant_at_the_next_connect(
    server: ServerProcess, tmp_path: Path,
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        await _let_in(alice, "bob")
        await until(lambda: bob.discovery.cap_for("alice") is not None)
        await alice.close()
        offline = Client.load(tmp_path / "alice", PASSPHRASE)  # not connected
        try:
            await offline.contacts.remove("bob")  # kept for the next connect
            bob._directory.forget("alice")
            await bob._directory.lookup("alice")  # the server was not told yet
            await offline.connect()
            await until(lambda: _grants(server, "alice") == 0)
            await _hidden_from(bob, "alice")
        finally:
            await offline.close()
