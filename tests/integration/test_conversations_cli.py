"""`list`, `search`, `export`, `forget` and `account passphrase` as a user types them.

Three accounts are made through the SDK against the real server; bob and carol
write to alice (1:1) and bob in a room with her, then every command runs through
the CLI's ``main`` on alice's data directory (in this process, to stay fast; the
store is closed and reopened by each command as in separate processes).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sottovoce.cli.main import main as cli_main
from sottovoce.client import MessageReceived
from sottovoce.client.events import RoomMessageReceived
from sottovoce.client.store import STORE_FILE
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess

NEW_PASSPHRASE = "tulip harbour granite seventeen"


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Done]:
    def run(*args: str, home: Path, passphrase: str = PASSPHRASE, **env: str) -> Done:
        for name in [k for k in os.environ if k.startswith("SOTTOVOCE_")]:
            monkeypatch.delenv(name)
        for name, value in {"SOTTOVOCE_HOME": str(home), "SOTTOVOCE_PASSPHRASE": passphrase,
                            **env}.items():
            monkeypatch.setenv(name, value)
        code = cli_main(list(args))
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return run


def _ok(done: Done) -> str:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def _plain_failure(done: Done) -> str:
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


async def _conversations(server: ServerProcess, root: Path) -> None:
    alice, bob, carol = [await make_account(server, n, root) for n in ("alice", "bob", "carol")]
    events = alice.events()
    room = await alice.rooms.create_room("team")
    await alice.rooms.invite("team", "bob")
    await bob.rooms.wait_epoch(room.room_id, 1)
    await bob.rooms.send(room.room_id, "team lunch on friday")
    await bob.send_text("alice", "lunch at noon?")
    await bob.send_text("alice", "are you there")
    await carol.send_text("alice", "carol's canary message")
    await alice.send_text("carol", "hello carol")
    await alice.contacts.add("bob")  # bob wrote first: a request until alice adds him
    seen = {"direct": 0, "room": 0}
    while seen != {"direct": 3, "room": 1}:
        event = await events.next(30)
        if isinstance(event, MessageReceived) and not event.message.outgoing:
            seen["direct"] += 1
        elif isinstance(event, RoomMessageReceived) and not event.message.outgoing:
            seen["room"] += 1
    events.close()
    for client in (alice, bob, carol):
        await client.close()


class _Terminal(io.StringIO):
    """Standard input as if typed at a terminal."""

    def isatty(self) -> bool:
        return True


def test_list_search_export_forget_and_a_new_passphrase(
    server: ServerProcess, tmp_path: Path, cli: Callable[..., Done],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asyncio.run(_conversations(server, tmp_path))
    home = tmp_path / "alice"

    listed = _ok(cli("list", "--offline", home=home)).splitlines()
    assert [line.split()[0] for line in listed] == ["carol", "bob", "#team"]
    assert [line.split()[1:3] for line in listed[1:]] == [["2", "unread"], ["1", "unread"]]
    assert "1 unread" in listed[0] and "last message 20" in listed[0]

    # Shown is read: history (1:1) and room history each clear their unread count.
    assert "lunch at noon?" in _ok(cli("history", "bob", "--offline", home=home))
    assert "team lunch" in _ok(cli("room", "history", "team", "--offline", home=home))
    listed = _ok(cli("list", "--offline", home=home)).splitlines()
    assert [line.split()[0] for line in listed if "unread" in line] == ["carol"]

    found = _ok(cli("search", "LUNCH", home=home)).splitlines()
    assert len(found) == 2
    assert found[0].endswith("  bob  bob: lunch at noon?")  # newest first
    assert found[1].endswith("  #team  bob: team lunch on friday")
    assert _ok(cli("search", "lunch", "noon", home=home)).count("\n") == 1
    assert _ok(cli("search", "lunch", "--limit", "1", home=home)) == found[0] + "\n"
    nothing = cli("search", "no-such-word", home=home)
    assert nothing.returncode == 1 and nothing.stdout == ""
    assert "no message on this device holds" in nothing.stderr

    out = tmp_path / "bob.json"
    said = _ok(cli("export", "bob", "--out", str(out), home=home))
    assert "exported 2 messages of bob" in said
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    exported = json.loads(out.read_text(encoding="utf-8"))
    assert exported["conversation"] == {"kind": "direct", "name": "bob"}
    assert [m["text"] for m in exported["messages"]] == ["lunch at noon?", "are you there"]
    assert "exists" in _plain_failure(cli("export", "bob", "--out", str(out), home=home))
    assert "no conversation with zed" in _plain_failure(
        cli("export", "zed", "--out", str(tmp_path / "z.json"), home=home)
    )

    # forget: asks first (no terminal here: refused), then overwrites carol's records.
    db = sqlite3.connect(home / STORE_FILE)
    sealed = [bytes(r[0])[-40:] for r in db.execute("SELECT sealed FROM messages")]
    db.close()
    assert "--yes" in _plain_failure(cli("forget", "carol", home=home))
    monkeypatch.setattr("sys.stdin", _Terminal("no\n"))  # at a terminal: asks, "no" keeps it
    kept = cli("forget", "carol", home=home)
    assert kept.returncode == 1 and "Type yes to delete" in kept.stdout
    assert "nothing deleted" in kept.stdout
    monkeypatch.setattr("sys.stdin", _Terminal("yes\n"))
    assert "deleted 2 messages of carol" in _ok(cli("forget", "carol", home=home))
    raw = b"".join(p.read_bytes() for p in home.glob(f"{STORE_FILE}*"))
    assert sum(s not in raw for s in sealed) == 2  # carol's two, and no other
    listed = _ok(cli("list", "--offline", home=home))
    assert "carol" not in listed and "bob" in listed

    # A new passphrase: refused if weak, then only the new one opens the account.
    weak = cli("account", "passphrase", home=home, SOTTOVOCE_NEW_PASSPHRASE="password1")
    assert "too easy to guess" in _plain_failure(weak)
    wrong = cli("account", "passphrase", home=home, passphrase="not the passphrase",
                 SOTTOVOCE_NEW_PASSPHRASE=NEW_PASSPHRASE)
    assert "wrong passphrase" in _plain_failure(wrong)
    changed = cli("account", "passphrase", home=home, SOTTOVOCE_NEW_PASSPHRASE=NEW_PASSPHRASE)
    assert "passphrase changed" in _ok(changed)
    assert "wrong passphrase" in _plain_failure(cli("list", "--offline", home=home))
    assert "bob" in _ok(cli("list", "--offline", home=home, passphrase=NEW_PASSPHRASE))
    # The same from files (--passphrase-file for the current one): back to the first.
    (tmp_path / "now").write_text(NEW_PASSPHRASE + "\n")
    (tmp_path / "next").write_text(PASSPHRASE + "\n")
    back = cli("account", "passphrase", "--passphrase-file", str(tmp_path / "now"),
               "--new-passphrase-file", str(tmp_path / "next"), home=home, passphrase="unused")
    assert "passphrase changed" in _ok(back)
    assert "bob" in _ok(cli("list", "--offline", home=home))
