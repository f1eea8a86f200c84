"""View-once files through the real server (client/files.py, client/file_body.py):
the recipient opens it once (save or view), then its key and sealed copy are gone
and a tombstone stays; the sender keeps only the tombstone from the start; in a room
as in a 1:1 chat; and the CLI's ``send --file --view-once`` and ``save``."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from sottovoce.cli.chat_files import open_file
from sottovoce.cli.main import main as cli_main
from sottovoce.client import Client
from sottovoce.client.errors import ServerError
from sottovoce.client.file_body import is_opened
from sottovoce.client.store import TEST_KDF
from sottovoce.crypto.file_chunks import CHUNK_SIZE
from sottovoce.errors import UsageError
from tests.integration.client_helpers import PASSPHRASE, accounts, make_account
from tests.integration.serverproc import ServerProcess
from tests.integration.test_files_e2e import file_message, make_file, sha256_of


def _files_left(client: Client) -> list[Path]:
    root = client._store.data_dir / "files"
    return sorted(root.iterdir()) if root.exists() else []


def _file_rows(client: Client) -> int:
    return int(client._store.connection.execute("SELECT count(*) FROM files").fetchone()[0])


def _opened(client: Client, message_id: str) -> bool:
    stored = client.message(message_id)
    return stored is not None and is_opened(stored.text)


async def test_a_view_once_file_opens_once_and_leaves_a_tombstone(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        src = tmp_path / "secret.txt"
        digest = make_file(src, CHUNK_SIZE + 5)
        waiting = asyncio.ensure_future(file_message(bob))
        mid = await alice.files.send_file("bob", src, view_once=True)
        assert await waiting == mid
        # The sender keeps no key from the start.
        assert _opened(alice, mid)
        with pytest.raises(UsageError, match="view-once file: sent"):
            alice.files.info(mid)
        assert bob.files.info(mid).view_once
        out = await bob.files.save(mid, tmp_path / "once.txt")
        assert sha256_of(out) == digest
        assert _opened(bob, mid) and _files_left(bob) == [] and _file_rows(bob) == 0
        with pytest.raises(UsageError, match="already opened"):
            await bob.files.save(mid, tmp_path / "twice.txt")
        with pytest.raises(UsageError, match="already opened"):
            await bob.files.view(mid)
        assert not (tmp_path / "twice.txt").exists()


async def test_a_view_once_file_in_a_room_is_viewed_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        room = await alice.rooms.create_room("team")
        await alice.rooms.invite("team", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        src = tmp_path / "pic.bin"
        digest = make_file(src, 2000)
        waiting = asyncio.ensure_future(file_message(bob))
        mid = await alice.files.room_send_file("team", src, view_once=True)
        assert await waiting == mid and _opened(alice, mid)
        viewed = await bob.files.view(mid)
        assert sha256_of(viewed) == digest  # the viewing area's copy, wiped on close
        assert _opened(bob, mid) and _files_left(bob) == []
        with pytest.raises(UsageError, match="already opened"):
            await bob.files.view(mid)


def test_cli_send_view_once_and_save_once(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def setup() -> None:
        for name in ("alice", "bob"):
            await (await make_account(server, name, tmp_path)).close()

    asyncio.run(setup())
    monkeypatch.setenv("SOTTOVOCE_PASSPHRASE", PASSPHRASE)

    def cli(*args: str, home: str) -> tuple[int, str, str]:
        # Before a "--" (which ends the options: a message id may begin with "-").
        end = args.index("--") if "--" in args else len(args)
        code = cli_main([*args[:end], "--data-dir", str(tmp_path / home), *args[end:]])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, _, err = cli("send", "bob", "hi", "--view-once", home="alice")
    assert code != 0 and "--view-once is for a file" in err and "Traceback" not in err
    src = tmp_path / "note.txt"
    make_file(src, 500)
    code, out, err = cli("send", "bob", "--file", str(src), "--view-once", home="alice")
    assert code == 0, err
    found = re.search(r"\(message ([A-Za-z0-9_-]+), view once\)", out)
    assert found is not None, out
    mid = found.group(1)
    code, out, err = cli("history", "alice", home="bob")
    assert code == 0, err
    assert re.search(r"alice: \[file, view once\] note\.txt .* id " + re.escape(mid), out), out
    code, out, err = cli("save", "alice", "--", mid, str(tmp_path / "got.txt"), home="bob")
    assert code == 0 and "saved note.txt" in out, err
    code, _, err = cli("save", "alice", "--", mid, str(tmp_path / "again.txt"), home="bob")
    assert code == 1 and "already opened" in err and "Traceback" not in err
    code, out, err = cli("history", "alice", home="bob")
    assert code == 0 and "[view-once file, opened: nothing of it kept]" in out, err
    code, out, err = cli("history", "bob", home="alice")
    assert code == 0 and "[view-once file, opened: nothing of it kept]" in out, err


async def test_the_senders_other_device_cannot_fetch_a_view_once_file(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        laptop = await alice.add_device(tmp_path / "alice-laptop", PASSPHRASE, kdf=TEST_KDF)
        try:
            src = tmp_path / "once.bin"
            make_file(src, 300)
            own_copy = asyncio.ensure_future(file_message(laptop))
            to_bob = asyncio.ensure_future(file_message(bob))
            mid = await alice.files.send_file("bob", src, view_once=True)
            assert await own_copy == mid and await to_bob == mid
            # The laptop got the message (with its key) but is no recipient of the blob.
            with pytest.raises(ServerError) as refused:
                await laptop.files.download(mid)
            assert refused.value.code == "unknown_blob"
            assert _files_left(laptop) == []
            await bob.files.download(mid)  # the recipient still can
        finally:
            await laptop.close()


async def test_the_chat_screens_open_command_views_a_file_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    """``/open ID`` on the chat screen (cli/chat_files.py) with real clients: the file
    is written, decrypted, into the viewing area; a view-once one only the first time."""
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        src = tmp_path / "plan.txt"
        digest = make_file(src, 700)
        for once in (False, True):
            waiting = asyncio.ensure_future(file_message(bob))
            mid = await alice.files.send_file("bob", src, view_once=once)
            assert await waiting == mid
            said, failed = await open_file(bob, "alice", f"/open {mid}")
            assert not failed and said.startswith("opened plan.txt: "), said
            shown = Path(said.removeprefix("opened plan.txt: "))
            assert shown.parent.parent == bob.files.view_dir and sha256_of(shown) == digest
            said, failed = await open_file(bob, "alice", f"/open {mid}")
            assert failed is once, said
            if once:
                assert "already opened" in said
        said, failed = await open_file(bob, "carol", f"/open {mid}")
        assert failed and "no message" in said  # another chat's message is not opened here
