"""Proof of work and discovery modes against the real server on 127.0.0.1.

* a lookup or prekey claim about another account without a proof is refused with
  ``pow_required`` carrying a challenge and its difficulty; a wrong proof likewise;
  the SDK solves and gets through (a first message arrives);
* the difficulty rises under a bounded flood from one account and falls back when quiet
  (in the same test, on the same server);
* ``find`` lists public accounts only, on SQLite and on PostgreSQL; default mode is not
  findable; the mode is kept by the server and can change any time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from sottovoce.client.errors import ServerError
from sottovoce.protocol import pow as pw
from sottovoce.protocol.discovery import FIND_RESULT, Find
from tests.conformance.rawclient import RawClient, b64, registered
from tests.integration import pgschema
from tests.integration.client_helpers import accounts, received
from tests.integration.serverproc import ServerProcess


async def _refused(raw: RawClient, event: str, data: dict[str, object]) -> dict[str, object]:
    """The error data of one request sent without the SDK's retry."""
    reply = await raw._request_once(event, data)
    assert reply["event"] == "ksmpv3.error", reply
    return reply["data"]  # type: ignore[no-any-return]


async def test_pow_is_required_checked_and_an_honest_client_gets_through(
    server_factory: Callable[..., ServerProcess], tmp_path: Path,
) -> None:
    server = server_factory("--pow-bits", "10", "--pow-half-life-ms", "300")
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        raw = await registered(server.ws_url)
        try:
            for event in ("sottovoce.directory.lookup", "sottovoce.prekeys.claim"):
                err = await _refused(raw, event, {"username": "alice"})
                assert err["code"] == "pow_required"
                assert err["retryable"] is True
                details = err["details"]
                assert isinstance(details, dict) and details["difficulty"] == 10
                token = base64.b64decode(details["challenge"])
                assert pw.read_token(token).difficulty == 10
                # A wrong counter, then a proof for another name: refused, a new challenge.
                wrong = await _refused(raw, event, {"username": "alice",
                                                    "pow": b64(token + bytes(8))})
                if pw.leading_zero_bits(hashlib.sha256(token + bytes(8)).digest()) < 10:
                    assert wrong["code"] == "pow_required"
                other = await _refused(raw, event, {"username": "bob",
                                                    "pow": b64(pw.solve(token))})
                assert other["code"] == "pow_required"
                assert "another challenge" in str(other["message"])
            # Solved for alice: accepted, and the same proof a second time is refused.
            err = await _refused(raw, "sottovoce.prekeys.claim", {"username": "carol"})
            proof = pw.solve(base64.b64decode(err["details"]["challenge"]))  # type: ignore[index]
            ok = await raw._request_once("sottovoce.prekeys.claim",
                                         {"username": "carol", "pow": b64(proof)})
            assert ok["event"] == "ksmpv3.error" and ok["data"]["code"] == "unknown_user"
        finally:
            await raw.close()
        # The SDK answers pow_required by itself: bob's first message reaches alice.
        stream = alice.events()
        await bob.send_text("alice", "hello after some work")
        [msg] = await received(stream, 1)
        assert msg.text == "hello after some work"
    await asyncio.sleep(3.0)  # ten half-lives: what the accounts asked is forgotten
    await _difficulty_rises_under_a_flood_and_falls_back(server, base=10)


async def _difficulty_rises_under_a_flood_and_falls_back(server: ServerProcess, base: int,
                                                         ) -> None:
    raw = await registered(server.ws_url)
    try:
        levels = []
        for i in range(120):  # bounded: 120 requests, each answered with a challenge
            err = await _refused(raw, "sottovoce.directory.lookup", {"username": f"n{i:03}"})
            levels.append(err["details"]["difficulty"])  # type: ignore[index]
        assert levels[0] == base
        assert levels == sorted(levels)
        assert levels[-1] >= base + 2  # 120 within a few half-lives: doublings past 16
        await asyncio.sleep(3.0)  # ten half-lives
        err = await _refused(raw, "sottovoce.directory.lookup", {"username": "quiet"})
        assert err["details"]["difficulty"] == base  # type: ignore[index]
    finally:
        await raw.close()


async def _find_public_only(server: ServerProcess, root: Path) -> None:
    async with accounts(server, root, "alice1", "alibi", "carol") as clients:
        alice1, alibi, carol = clients
        assert await alice1.discovery.mode() == "default"
        assert await carol.discovery.find("ali") == []  # default: not listed
        assert await alice1.discovery.mode("public") == "public"
        assert await alibi.discovery.mode("strict") == "strict"
        assert await carol.discovery.find("ali") == ["alice1"]
        assert await carol.discovery.find("alice") == ["alice1"]
        assert await alibi.discovery.mode("public") == "public"
        assert await carol.discovery.find("ali") == ["alibi", "alice1"]
        assert await alice1.discovery.mode("default") == "default"
        assert await carol.discovery.find("ali") == ["alibi"]
        assert await alibi.discovery.mode() == "public"  # kept by the server
        with pytest.raises(ServerError) as info:
            await carol._conn.request(  # the SDK refuses short prefixes before asking
                Find(prefix="al"), frozenset({FIND_RESULT}))
        assert info.value.code == "bad_request"


async def test_find_lists_public_accounts_only(server: ServerProcess, tmp_path: Path) -> None:
    await _find_public_only(server, tmp_path)


async def test_find_on_postgresql(
    server_factory: Callable[..., ServerProcess], tmp_path: Path,
) -> None:
    why = pgschema.unreachable()
    assert why is None, why
    with pgschema.fresh_schema("sv_disc") as dsn:
        server = server_factory("--database", dsn)
        await _find_public_only(server, tmp_path)


async def test_each_search_pays_its_own_proof(server: ServerProcess, tmp_path: Path) -> None:
    raw = await registered(server.ws_url)
    try:
        err = await _refused(raw, "sottovoce.find", {"prefix": "abc"})
        proof = pw.solve(base64.b64decode(err["details"]["challenge"]))  # type: ignore[index]
        ok = await raw._request_once("sottovoce.find", {"prefix": "abc", "pow": b64(proof)})
        assert ok["event"] == "sottovoce.find.result"
        assert ok["data"] == {"prefix": "abc", "usernames": []}
        again = await _refused(raw, "sottovoce.find", {"prefix": "abc"})  # no pass
        assert again["code"] == "pow_required"
        replay = await _refused(raw, "sottovoce.find", {"prefix": "abc", "pow": b64(proof)})
        assert "already used" in str(replay["message"])
    finally:
        await raw.close()
