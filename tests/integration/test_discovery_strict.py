"""Strict discovery and friend verification codes against the real server on 127.0.0.1.

* to a stranger, a strict account is byte for byte a name nobody holds: username check,
  directory lookup, prekey claim, key-transparency lookup and contact request give the
  same reply frames, and 1,000 lookups of each take the same time (medians);
* its own devices still find it; a contact it let in (a capability) finds it too;
* TOTP codes: accepted in the window, refused outside it, refused when used again;
* static codes: the server keeps only salted scrypt hashes, a code lets one person in
  and is gone after.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import statistics
import time
from pathlib import Path

import pytest

from sottovoce.client.errors import ServerError
from sottovoce.errors import UsageError
from sottovoce.protocol import fvc
from sottovoce.protocol import pow as pw
from tests.conformance.rawclient import RawClient, b64, registered
from tests.integration.client_helpers import accounts, received
from tests.integration.serverproc import ServerProcess

FREE = "nobody-here"


async def _raw_reply(raw: RawClient, event: str, data: dict[str, object]) -> str:
    """The exact text of the reply to one frame (request id fixed, so they compare)."""
    await raw.ws.send(json.dumps({"event": event, "requestId": "q", "data": data}))
    while True:
        text = await raw.ws.recv()
        assert isinstance(text, str)
        if json.loads(text).get("requestId") == "q":
            return text


async def _paid(raw: RawClient, event: str, data: dict[str, object]) -> str:
    """The reply once a proof of work is attached (solved here, as a client would)."""
    text = await _raw_reply(raw, event, data)
    first = json.loads(text)
    if first["event"] != "ksmpv3.error" or first["data"]["code"] != "pow_required":
        return text  # a pass (e.g. the registration from this address paid for the name)
    token = base64.b64decode(first["data"]["details"]["challenge"])
    return await _raw_reply(raw, event, {**data, "pow": b64(pw.solve(token))})


async def test_a_strict_name_answers_like_a_free_one(server: ServerProcess, tmp_path: Path,
                                                     ) -> None:
    async with accounts(server, tmp_path, "alice") as (alice,):
        assert await alice.discovery.mode("strict") == "strict"
        raw = await registered(server.ws_url)
        try:
            for event in ("sottovoce.directory.lookup", "sottovoce.prekeys.claim",
                          "sottovoce.kt.lookup"):
                strict = await _paid(raw, event, {"username": "alice"})
                free = await _paid(raw, event, {"username": FREE})
                assert strict == free, event
                assert json.loads(strict)["data"]["code"] == "unknown_user"
            # A contact request: PoW each time, then the same "accepted" for any name.
            strict = await _paid(raw, "sottovoce.contact.request",
                                 {"username": "alice", "proof": b64(bytes(32))})
            free = await _paid(raw, "sottovoce.contact.request",
                               {"username": FREE, "proof": b64(bytes(32))})
            assert strict == free == (
                '{"event":"sottovoce.contact.request.accepted","data":{},"requestId":"q"}')
        finally:
            await raw.close()
        pre = await RawClient.open(server.ws_url)  # username.check: before any login
        try:
            strict = await _paid(pre, "sottovoce.username.check", {"username": "alice"})
            free = await _paid(pre, "sottovoce.username.check", {"username": FREE})
            assert json.loads(strict)["data"] == {"username": "alice", "available": True}
            assert strict.replace("alice", FREE) == free
        finally:
            await pre.close()
        # Its own devices still see it (a fresh lookup of itself goes through).
        await alice._directory.lookup("alice")


async def test_lookups_of_a_strict_name_and_a_free_one_take_the_same_time(
    server: ServerProcess, tmp_path: Path,
) -> None:
    async with accounts(server, tmp_path, "alice") as (alice,):
        await alice.discovery.mode("strict")
        raw = await registered(server.ws_url)
        try:
            for name in ("alice", FREE):  # pay once each: the pass covers the rest
                await _paid(raw, "sottovoce.directory.lookup", {"username": name})
            times: dict[str, list[float]] = {"alice": [], FREE: []}
            for i in range(1000):
                name = ("alice", FREE)[i % 2]  # interleaved: drift hits both alike
                start = time.perf_counter()
                await _raw_reply(raw, "sottovoce.directory.lookup", {"username": name})
                times[name].append(time.perf_counter() - start)
        finally:
            await raw.close()
    strict, free = (statistics.median(times[n]) for n in ("alice", FREE))
    # Medians (robust to scheduler spikes) within 25% of each other, or 0.2 ms.
    assert abs(strict - free) <= max(0.25 * max(strict, free), 0.0002), (strict, free)


def _code_at(client: object, at_s: float) -> str:
    codes = client.fvc  # type: ignore[attr-defined]
    state = codes._state()
    return str(codes._totp(state).at(int(at_s)))


async def test_totp_codes_let_in_once_within_the_window_only(
    server: ServerProcess, tmp_path: Path,
) -> None:
    async with accounts(server, tmp_path, "alice", "bob", "carol", "dave") as clients:
        alice, bob, carol, dave = clients
        await alice.discovery.mode("strict")
        code, left = await alice.fvc.current()
        assert len(code) == 8 and code.isdigit() and 0 < left <= 60
        stale = _code_at(alice, time.time() - 3 * fvc.TOTP_STEP_S)  # outside ±1 step
        with pytest.raises(UsageError, match="did not let you in"):
            await dave.discovery.reach("alice", stale, timeout=1.5)
        stream = alice.events()
        await bob.discovery.reach("alice", code)
        await bob.send_text("alice", "let in by a code")
        [msg] = await received(stream, 1)
        assert msg.text == "let in by a code"
        assert "bob" in alice.contacts.contacts()
        with pytest.raises(UsageError, match="did not let you in"):
            await carol.discovery.reach("alice", code, timeout=1.5)  # used: refused again
        with pytest.raises(UsageError, match="8 digits"):
            await carol.discovery.reach("alice", "12ab")


async def test_static_codes_are_hashed_burnt_on_use_and_revocable(
    server: ServerProcess, tmp_path: Path,
) -> None:
    async with accounts(server, tmp_path, "alice", "erin", "frank") as clients:
        alice, erin, frank = clients
        await alice.discovery.mode("strict")
        codes = await alice.fvc.new_static(2)
        assert all(fvc.static_slot(c) is not None for c in codes)
        db = sqlite3.connect(server.db_path)
        try:
            rows = db.execute("SELECT slot, salt, hash FROM fvc_static WHERE user_id='alice'"
                              ).fetchall()
            assert len(rows) == 2 and len({r[1] for r in rows}) == 2  # a salt per code
            dump = "\n".join(db.iterdump())
            assert not any(c in dump or c.split("-")[1] in dump for c in codes)
            await erin.discovery.reach("alice", codes[0])
            await erin.send_text("alice", "static")
            left = db.execute("SELECT slot FROM fvc_static WHERE user_id='alice'").fetchall()
            assert left == [(1,)]
        finally:
            db.close()
        with pytest.raises(UsageError, match="did not let you in"):
            await frank.discovery.reach("alice", codes[0], timeout=1.5)  # burnt
        await alice.fvc.revoke()
        with pytest.raises(UsageError, match="did not let you in"):
            await frank.discovery.reach("alice", codes[1], timeout=1.5)  # revoked


async def test_contacts_from_before_strict_keep_reaching_the_account(
    server: ServerProcess, tmp_path: Path,
) -> None:
    async with accounts(server, tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        await alice.contacts.add("bob")
        await alice.discovery.mode("strict")  # bob gets a capability, carol nothing
        for _ in range(100):
            if bob.discovery.cap_for("alice") is not None:
                break
            await asyncio.sleep(0.05)
        assert bob.discovery.cap_for("alice") is not None
        assert carol.discovery.cap_for("alice") is None
        stream = alice.events()
        bob._directory.forget("alice")  # the next send looks alice up again, with the cap
        await bob.send_text("alice", "still here")
        [msg] = await received(stream, 1)
        assert msg.text == "still here"
        with pytest.raises(ServerError) as info:
            await carol._directory.lookup("alice")
        assert info.value.code == "unknown_user"
