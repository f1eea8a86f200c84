"""Presence between contacts against the real server (client/presence.py).

* two contacts who wrote to each other see each other online, then away after the idle
  time, online again on input, offline with a last seen after a clean close; the last
  seen survives on the device;
* a stranger who wrote (a pending request on my side) gets nothing from me: not one
  frame from my account reaches their connection, and what they send me is not shown;
* the setting off stops it both ways;
* `contacts` asks the contacts online and lists "(online)", or "(last seen HH:MM)";
* the server keeps no row of it (every table's row count is the same before and after).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sottovoce.cli.main import main as cli_main
from sottovoce.client import Client
from sottovoce.client.presence import AWAY, OFFLINE, ONLINE, UNKNOWN, PeerPresence
from sottovoce.protocol import events as ev
from tests.integration.client_helpers import PASSPHRASE, accounts, received
from tests.integration.serverproc import ServerProcess
from tests.waiting import until

FAST_TICK_S = 0.1



def _share(client: Client) -> None:
    """Start sharing, with a quick tick and no rate limit wait (tests only)."""
    client.presence.tick_s = FAST_TICK_S
    client.presence.min_interval_s = 0.0
    client.presence.start()


def _row_counts(server: ServerProcess) -> dict[str, int]:
    db = sqlite3.connect(server.db_path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: int(db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables}
    finally:
        db.close()


def _frames_from(client: Client, sender: str) -> list[dict[str, Any]]:
    """Every inbox frame from ``sender`` that reaches ``client``'s connection from now on."""
    seen: list[dict[str, Any]] = []
    handler = client._handlers[ev.INBOX_FRAME]

    def spy(name: str, data: dict[str, Any]) -> Any:
        envelope = data.get("envelope")
        if isinstance(envelope, dict) and envelope.get("senderUserId") == sender:
            seen.append(data)
        return handler(name, data)

    client._handlers[ev.INBOX_FRAME] = spy
    return seen


async def _acquaint(a: Client, b: Client) -> None:
    """``a`` writes to ``b`` and ``b`` accepts: contacts both ways, a pair the server saw."""
    events = b.events()
    try:
        await a.wait_sent(await a.send_text(b.username, "hello"))
        await received(events, 1)
    finally:
        events.close()
    await b.contacts.accept(a.username)
    assert await b.controls.settle(5)  # its delivered receipt is out: the spies start after


async def test_presence_flows_between_contacts_and_never_to_a_stranger(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        await _acquaint(bob, alice)
        await carol.wait_sent(await carol.send_text("alice", "buy cheap watches"))
        await until(lambda: alice.contacts.requests() == ["carol"], what="carol's request")
        assert await alice.controls.settle(5)  # (receipts are not what this test is about)
        to_carol = _frames_from(carol, "alice")
        before = _row_counts(server)

        bob.presence.away_after_s = 3600.0
        _share(bob)
        _share(carol)  # carol wrote to alice: alice is carol's contact, not the reverse
        alice.presence.away_after_s = 3600.0
        _share(alice)
        await until(lambda: bob.contacts.presence("alice").state == ONLINE, what="alice online")
        await until(lambda: alice.contacts.presence("bob").state == ONLINE, what="bob online")
        alice.presence.away_after_s = 1.0  # idle since it started sharing

        await until(lambda: bob.contacts.presence("alice").state == AWAY, what="alice away")
        alice.presence.activity()
        await until(lambda: bob.contacts.presence("alice").state == ONLINE, what="alice back")

        # carol's notices reach alice's devices, but a request is shown nothing of them.
        await asyncio.sleep(0.5)
        assert alice.contacts.presence("carol") == PeerPresence(UNKNOWN, None)
        assert carol.contacts.presence("alice").state == UNKNOWN
        assert to_carol == []  # not one frame from alice reached the stranger

        await alice.close()
        await until(lambda: bob.contacts.presence("alice").state == OFFLINE, what="alice offline")
        seen = bob.contacts.presence("alice").last_seen_ms
        assert seen is not None and seen > 0
        assert to_carol == []
        assert _row_counts(server) == before  # presence left nothing on the server
    # The last seen is kept on bob's device (sealed in its store), across a restart.
    again = await Client.open(tmp_path / "bob", PASSPHRASE)
    try:
        assert again.contacts.presence("alice") == PeerPresence(OFFLINE, seen)
    finally:
        await again.close()


async def test_presence_off_stops_it_both_ways(server: ServerProcess, tmp_path: Path) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        await _acquaint(bob, alice)
        assert alice.presence.set_enabled(False) is False
        from_alice = _frames_from(bob, "alice")
        _share(bob)
        _share(alice)
        # bob's announcement reached alice's device; alice neither shows it nor answers.
        await asyncio.sleep(1.0)
        assert alice.contacts.presence("bob").state == UNKNOWN
        assert bob.contacts.presence("alice").state == UNKNOWN
        assert from_alice == []
        # On again (and the next announcement): both see each other.
        alice.presence.set_enabled(True)
        await until(lambda: bob.contacts.presence("alice").state == ONLINE, what="alice online")
        await until(lambda: alice.contacts.presence("bob").state == ONLINE, what="bob online")
        assert len(from_alice) >= 1


async def test_cli_contacts_shows_presence_and_last_seen(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        await _acquaint(bob, alice)
        await alice.close()  # `contacts` opens alice's store itself
        _share(bob)
        monkeypatch.setenv("SOTTOVOCE_HOME", str(tmp_path / "alice"))
        monkeypatch.setenv("SOTTOVOCE_PASSPHRASE", PASSPHRASE)

        def contacts() -> str:
            assert cli_main(["contacts"]) == 0
            out, err = capsys.readouterr()
            assert "Traceback" not in err
            return out

        # bob is online and shares: alice's `contacts` asks and waits for his answer.
        assert await asyncio.to_thread(contacts) == "bob  (online)\n"
        # bob saw alice come (the command shared hers) and go (its clean close).
        await until(lambda: bob.contacts.presence("alice").state == OFFLINE, what="alice gone")
        await bob.close()
        shown = await asyncio.to_thread(contacts)
        assert re.fullmatch(r"bob  \(last seen (\d{4}-\d\d-\d\d )?\d\d:\d\d\)\n", shown), shown
