"""Files against the real server process (client/files.py, server/blobs.py).

* a file round-trips 1:1 and in a room, its SHA-256 checked, and the server's blob
  is deleted once every device it was for has fetched it;
* a 50 MiB file round-trips and the server's blob files and database hold none of its
  plaintext;
* a download cut off halfway (the task cancelled, then the connection dropped)
  resumes and completes;
* the local copy is the sealed chunks as the server kept them (nothing is opened and
  sealed again), and a cut-off download sealed under a local key starts over;
* a chunk tampered with on the server is refused and nothing of the file is kept;
* a file over the server's --max-file-size is refused before any of it is sent;
* an upload cut off by a crash (simulated, and a ``send --file`` process killed)
  carries on in the next run, and starts over under a new id if the file changed
  meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import pytest

from sottovoce.cli.main import main as cli_main
from sottovoce.client import Client, MessageReceived
from sottovoce.client.errors import ServerError
from sottovoce.client.events import RoomMessageReceived
from sottovoce.crypto.file_chunks import CHUNK_SIZE, SEALED_CHUNK_SIZE, ChunkTampered
from sottovoce.errors import UsageError
from sottovoce.protocol import blobs as pb
from sottovoce.secret import Secret
from tests.integration.client_helpers import PASSPHRASE, accounts, make_account
from tests.integration.serverproc import ServerProcess

CANARY = b"CANARY-plaintext-7f3a9c"


def make_file(path: Path, size: int) -> bytes:
    """``size`` random bytes with the canary every 64 KiB; their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = (CANARY + os.urandom(64 * 1024 - len(CANARY)))[:left]
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.digest()


def sha256_of(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.digest()


async def file_message(client: Client, timeout: float = 20.0) -> str:
    """The messageId of the next file message ``client`` stores (1:1 or room)."""
    stream = client.events()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        event = await stream.next(max(0.01, deadline - loop.time()))
        message = getattr(event, "message", None)
        if isinstance(event, MessageReceived | RoomMessageReceived) and message is not None \
                and message.content_type == "file":
            return str(message.message_id)


async def send_to_bob(alice: Client, bob: Client, src: Path, timeout: float = 20.0) -> str:
    """Alice sends the file ``src`` to bob; the messageId bob stores it under."""
    waiting = asyncio.ensure_future(file_message(bob, timeout=timeout))
    await alice.files.send_file("bob", src)
    return await waiting


def blob_rows(server: ServerProcess) -> int:
    with sqlite3.connect(server.db_path) as db:
        return int(db.execute("SELECT count(*) FROM blobs").fetchone()[0])


def blob_files(server: ServerProcess) -> list[Path]:
    return sorted((server.data_dir / "blobs").iterdir())


async def test_file_round_trips_one_to_one_and_goes_once_fetched(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        src = tmp_path / "notes.txt"
        digest = make_file(src, 3 * CHUNK_SIZE + 1234)
        waiting = asyncio.ensure_future(file_message(bob))
        seen: list[tuple[int, int]] = []
        sent = await alice.files.send_file("bob", src, progress=lambda d, t: seen.append((d, t)))
        assert seen[-1] == (src.stat().st_size, src.stat().st_size) and len(seen) == 4
        message_id = await waiting
        assert message_id == sent
        info = bob.files.info(message_id)
        assert (info.name, info.media_type, info.kind, info.size) == (
            "notes.txt", "text/plain", "file", src.stat().st_size)
        assert blob_rows(server) == 1 and len(blob_files(server)) == 1
        (tmp_path / "dl").mkdir()
        out = await bob.files.save(message_id, tmp_path / "dl")
        assert out == tmp_path / "dl" / "notes.txt" and sha256_of(out) == digest
        # The only device it was for has it: the server holds nothing of it any more.
        assert blob_rows(server) == 0 and blob_files(server) == []
        # Bob's copy is sealed: the plaintext is in no file of his data directory.
        for path in (tmp_path / "bob" / "files").iterdir():
            assert CANARY not in path.read_bytes()
        with pytest.raises(UsageError, match="exists"):
            await bob.files.save(message_id, out)
        again = await bob.files.save(message_id, tmp_path / "again.txt")  # from the local copy
        assert sha256_of(again) == digest


async def test_large_file_leaves_no_plaintext_on_the_server(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        src = tmp_path / "big.bin"
        digest = make_file(src, 50 * 1024 * 1024)
        message_id = await send_to_bob(alice, bob, src, timeout=60)
        for path in [*blob_files(server), *server.data_dir.glob("sottovoce.sqlite3*")]:
            with open(path, "rb") as f:
                while block := f.read(8 << 20):
                    assert CANARY not in block, path
        out = await bob.files.save(message_id, tmp_path / "big.out")
        assert sha256_of(out) == digest


async def test_cut_off_download_resumes_and_completes(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        src = tmp_path / "resume.bin"
        digest = make_file(src, 80 * CHUNK_SIZE)
        message_id = await send_to_bob(alice, bob, src)

        class Stopped(Exception):
            """The program stops a quarter of the way (as Ctrl-C would stop it)."""

        def stop_early(done: int, total: int) -> None:
            if done >= total // 4:
                raise Stopped

        with pytest.raises(Stopped):
            await bob.files.download(message_id, progress=stop_early)
        parts = list((tmp_path / "bob" / "files").glob("*.part"))
        assert len(parts) == 1 and parts[0].stat().st_size >= 20 * SEALED_CHUNK_SIZE
        assert not bob.files.is_downloaded(message_id)

        first: list[int] = []
        drops: list[asyncio.Future[None]] = []

        def progress(done: int, total: int) -> None:
            first.append(done)
            if len(first) == 3:  # and the connection drops in the middle of the rest
                drops.append(asyncio.ensure_future(bob.drop_connection()))

        await bob.files.download(message_id, progress=progress)
        assert first[0] > 20 * CHUNK_SIZE  # it carried on from the verified chunks
        assert bob.files.resumed  # and again after the dropped connection
        assert sha256_of(await bob.files.save(message_id, tmp_path / "out.bin")) == digest


async def test_save_of_a_cut_off_download_writes_the_checked_part_and_the_rest_in_one_pass(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        src = tmp_path / "half.bin"
        digest = make_file(src, 40 * CHUNK_SIZE + 5)
        message_id = await send_to_bob(alice, bob, src)

        class Stopped(Exception):
            """The program stops half way."""

        def stop_early(done: int, total: int) -> None:
            if done >= total // 2:
                raise Stopped

        dest = tmp_path / "half.out"
        with pytest.raises(Stopped):
            await bob.files.save(message_id, dest, progress=stop_early)
        assert not dest.exists() and list(tmp_path.glob(".half.out*")) == []
        [part] = list((tmp_path / "bob" / "files").glob("*.part"))
        assert part.stat().st_size >= 20 * SEALED_CHUNK_SIZE
        # The save carries on from the verified chunks of the local copy: their plaintext
        # and the rest's go to the destination in the same pass as the download.
        seen: list[int] = []
        out = await bob.files.save(message_id, dest, progress=lambda d, t: seen.append(d))
        assert seen[0] > 20 * CHUNK_SIZE and sha256_of(out) == digest
        assert bob.files.is_downloaded(message_id)
        again = await bob.files.save(message_id, tmp_path / "again.out")  # the local copy
        assert sha256_of(again) == digest


async def test_local_copy_is_the_chunks_as_they_came_and_an_old_style_part_starts_over(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    try:
        src = tmp_path / "kept.bin"
        digest = make_file(src, 6 * CHUNK_SIZE + 7)
        waiting = asyncio.ensure_future(file_message(bob))
        await alice.files.send_file("bob", src)
        message_id = await waiting
        [blob] = blob_files(server)
        on_server = blob.read_bytes()
        # A download cut off by an earlier version: chunks sealed again under a local key
        # and id of their own. It cannot carry on under the file's key: it starts over.
        table = bob.files._table
        old = table.new(message_id, Secret(os.urandom(32)), os.urandom(16))
        table.dir.mkdir(mode=0o700, exist_ok=True)
        table.path(old, part=True).write_bytes(os.urandom(2 * SEALED_CHUNK_SIZE))
        await bob.files.download(message_id)
        assert not table.path(old, part=True).exists()
        record = table.get(message_id)
        assert record is not None and record.complete
        # The local copy is the sealed chunks byte for byte as the server kept them.
        assert table.path(record).read_bytes() == on_server
        assert sha256_of(await bob.files.save(message_id, tmp_path / "out.bin")) == digest
    finally:
        await alice.close()
        await bob.close()


async def test_tampered_chunk_is_refused_and_nothing_kept(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        src = tmp_path / "t.bin"
        make_file(src, 5 * CHUNK_SIZE)
        message_id = await send_to_bob(alice, bob, src)
        [blob] = blob_files(server)
        with open(blob, "r+b") as f:
            f.seek(2 * SEALED_CHUNK_SIZE + 100)
            byte = f.read(1)
            f.seek(2 * SEALED_CHUNK_SIZE + 100)
            f.write(bytes([byte[0] ^ 1]))
        dest = tmp_path / "t.out"
        with pytest.raises(ChunkTampered):
            await bob.files.save(message_id, dest)
        assert not dest.exists() and list(tmp_path.glob(".t.out*")) == []
        assert list((tmp_path / "bob" / "files").iterdir()) == []
        assert not bob.files.is_downloaded(message_id)


async def test_file_over_the_size_limit_or_quota_is_refused_before_upload(
    server_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    server = server_factory("--max-file-size", "300000", "--file-quota", "400000")
    async with accounts(server, tmp_path, "alice", "bob") as (alice, _bob):
        src = tmp_path / "huge.bin"
        make_file(src, 300001)
        with pytest.raises(UsageError, match=r"too large: the server takes files of at most "
                                             r"300000 bytes"):
            await alice.files.send_file("bob", src)
        assert blob_rows(server) == 0 and blob_files(server) == []
        assert alice.history("bob") == []
        make_file(src, 250_000)
        await alice.files.send_file("bob", src)  # waits on the server until bob fetches it
        with pytest.raises(UsageError, match="would pass your quota"):
            await alice.files.send_file("bob", src)
        assert blob_rows(server) == 1


async def test_file_round_trips_in_a_room_and_goes_once_all_fetched(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        room = await alice.rooms.create_room("team")
        await alice.rooms.invite("team", "bob")
        await alice.rooms.invite("team", "carol")
        await bob.rooms.wait_epoch(room.room_id, 2)
        await carol.rooms.wait_epoch(room.room_id, 2)
        src = tmp_path / "plan.pdf"
        digest = make_file(src, CHUNK_SIZE + 7)
        waits = [asyncio.ensure_future(file_message(c)) for c in (bob, carol)]
        sent = await alice.files.room_send_file("team", src)
        assert [await w for w in waits] == [sent, sent]
        assert bob.files.info(sent).media_type == "application/pdf"
        assert sha256_of(await bob.files.save(sent, tmp_path / "b.pdf")) == digest
        assert blob_rows(server) == 1  # carol has not fetched it yet
        assert sha256_of(await carol.files.save(sent, tmp_path / "c.pdf")) == digest
        assert blob_rows(server) == 0 and blob_files(server) == []


def _cli(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(SOTTOVOCE_HOME=str(home), SOTTOVOCE_PASSPHRASE=PASSPHRASE)
    return subprocess.run([sys.executable, "-m", "sottovoce", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_cli_send_file_history_and_save(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One command as a user runs it (a subprocess), the rest through the same entry
    point in this process (each a fresh event loop and client, as a command is)."""

    async def setup() -> str:
        # Accounts and a room made here (cheap key derivation), used by the commands.
        alice = await make_account(server, "alice", tmp_path)
        bob = await make_account(server, "bob", tmp_path)
        room = await alice.rooms.create_room("team")
        await alice.rooms.invite("team", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        await alice.close()
        await bob.close()
        return room.room_id

    room_id = asyncio.run(setup())
    alice_home, bob_home = tmp_path / "alice", tmp_path / "bob"
    monkeypatch.setenv("SOTTOVOCE_PASSPHRASE", PASSPHRASE)

    def cli(*args: str, home: Path) -> tuple[int, str, str]:
        # Before a "--" (which ends the options: a message id may begin with "-").
        end = args.index("--") if "--" in args else len(args)
        code = cli_main([*args[:end], "--data-dir", str(home), *args[end:]])
        out = capsys.readouterr()
        return code, out.out, out.err

    src = tmp_path / "report.txt"
    digest = make_file(src, CHUNK_SIZE + 99)

    sent = _cli("send", "bob", "--file", str(src), home=alice_home)
    assert sent.returncode == 0, sent.stderr
    assert "✓ sent" in sent.stdout and "report.txt" in sent.stdout
    assert sent.stderr == ""  # not a terminal: no progress bar
    message_id = re.search(r"\(message ([A-Za-z0-9_-]+)\)", sent.stdout)
    assert message_id is not None

    code, _, err = cli("send", "bob", "--file", str(tmp_path / "nope.txt"), home=alice_home)
    assert code == 1 and "cannot read" in err and "Traceback" not in err

    code, out, err = cli("history", "alice", home=bob_home)
    assert code == 0, err
    assert re.search(r"alice: \[file\] report\.txt \(128\.1 KiB, text/plain\) id "
                     + re.escape(message_id.group(1)), out), out

    dest = tmp_path / "saved.txt"
    # "--": a message id may begin with "-" (base64url), which alone would read as an option.
    code, out, err = cli("save", "alice", "--", message_id.group(1), str(dest), home=bob_home)
    assert code == 0, err
    assert f"saved report.txt to {dest}" in out
    assert sha256_of(dest) == digest
    code, _, err = cli("save", "alice", "--", message_id.group(1), str(dest), home=bob_home)
    assert code == 1 and "exists" in err

    code, out, err = cli("room", "send", "team", "--file", str(src), home=alice_home)
    assert code == 0, err
    assert "✓ sent" in out and "#team" in out
    in_room = re.search(r"\(message ([A-Za-z0-9_-]+)\)", out)
    assert in_room is not None
    (tmp_path / "room-dl").mkdir()
    code, out, err = cli("save", f"#{room_id}", "--", in_room.group(1), str(tmp_path / "room-dl"),
                         home=bob_home)
    assert code == 0, err
    assert sha256_of(tmp_path / "room-dl" / "report.txt") == digest
    code, _, err = cli("save", "bob", "--", in_room.group(1), str(tmp_path / "x"), home=alice_home)
    assert code == 1 and "is not in the conversation with bob" in err


def test_send_file_killed_mid_upload_carries_on_with_the_next_send(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A real ``sottovoce send --file`` process killed (SIGKILL) in the middle of its
    upload; the next ``send --file`` of the same path finishes the same blob."""

    async def setup() -> None:
        for name in ("alice", "bob"):
            await (await make_account(server, name, tmp_path)).close()

    asyncio.run(setup())
    src = tmp_path / "big.bin"
    digest = make_file(src, 160 * CHUNK_SIZE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(SOTTOVOCE_HOME=str(tmp_path / "alice"), SOTTOVOCE_PASSPHRASE=PASSPHRASE)
    proc = subprocess.Popen([sys.executable, "-m", "sottovoce", "send", "bob", "--file",
                             str(src)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    part = None
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        parts = list((server.data_dir / "blobs").glob("*.part"))
        if parts and parts[0].stat().st_size >= 24 * SEALED_CHUNK_SIZE:
            part = parts[0]
            proc.kill()
            break
        time.sleep(0.005)
    proc.wait()
    assert part is not None and proc.returncode == -signal.SIGKILL

    sent = _cli("send", "bob", "--file", str(src), home=tmp_path / "alice")
    assert sent.returncode == 0, sent.stderr
    # Carried on: the killed run's blob is the one completed, and no other was begun.
    assert [p.name for p in blob_files(server)] == [part.name.removesuffix(".part")]
    message_id = re.search(r"\(message ([A-Za-z0-9_-]+)\)", sent.stdout)
    assert message_id is not None
    saved = _cli("save", "alice", "--", message_id.group(1), str(tmp_path / "big.out"),
                 home=tmp_path / "bob")
    assert saved.returncode == 0, saved.stderr
    assert sha256_of(tmp_path / "big.out") == digest
    assert list((tmp_path / "alice" / "uploads").iterdir()) == []  # nothing left pending


async def test_image_thumbnail_and_voice_duration_travel_in_the_message(
    server: ServerProcess, tmp_path: Path
) -> None:
    from PIL import Image

    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        picture = tmp_path / "cat.png"
        Image.new("RGB", (640, 480), (200, 120, 40)).save(picture)
        voice = tmp_path / "note.wav"
        with wave.open(str(voice), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(b"\x00\x01" * 12000)  # 1.5 s
        waiting = asyncio.ensure_future(file_message(bob))
        first = await alice.files.send_file("bob", picture)
        assert await waiting == first
        waiting = asyncio.ensure_future(file_message(bob))
        second = await alice.files.send_file("bob", voice)
        assert await waiting == second
        image = bob.files.info(first)
        assert (image.kind, image.media_type) == ("image", "image/png")
        assert image.thumbnail is not None
        with Image.open(io.BytesIO(image.thumbnail)) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) == 160
        note = bob.files.info(second)
        assert (note.kind, note.duration_ms, note.thumbnail) == ("voice", 1500, None)
        shown = await bob.files.view(second)  # decrypted for playing, in the viewing area
        assert shown.parent.parent == tmp_path / "bob" / "view"
        assert shown.read_bytes() == voice.read_bytes()
    assert not (tmp_path / "bob" / "view").exists()  # wiped when the client closed
    # A run that could not close leaves its viewing area behind: the next start wipes it.
    (tmp_path / "bob" / "view" / "left").mkdir(parents=True)
    (tmp_path / "bob" / "view" / "left" / "note.wav").write_bytes(b"plaintext")
    again = Client.load(tmp_path / "bob", PASSPHRASE)
    try:
        assert not (tmp_path / "bob" / "view").exists()
    finally:
        await again.close()


async def test_unfetched_blob_expires_and_is_swept(
    server_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    server = server_factory("--file-ttl-ms", "1500", "--expiry-interval-ms", "200")
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        src = tmp_path / "late.bin"
        make_file(src, 1000)
        message_id = await send_to_bob(alice, bob, src)
        assert bob.files.info(message_id).expires_at_ms > 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while blob_files(server) or blob_rows(server):
            assert loop.time() < deadline, "the sweep did not delete the expired blob"
            await asyncio.sleep(0.1)
        with pytest.raises(ServerError) as gone:
            await bob.files.download(message_id)
        assert gone.value.code == "unknown_blob"
        assert list((tmp_path / "bob" / "files").glob("*")) == []


async def test_upload_resumes_after_a_lost_connection(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        src = tmp_path / "up.bin"
        digest = make_file(src, 80 * CHUNK_SIZE)
        drops: list[int] = []
        link = alice.files._link
        request_built = link.request_built

        async def put_then_drop(build: Any, *args: Any, **kwargs: Any) -> Any:
            # The connection breaks (no closing handshake that would let the chunks in
            # flight finish) as chunk 40 is sent: at least 24 of the 40 before it are
            # stored by then (16 chunks are in flight at most), and not all of them.
            message = build(kwargs.get("request_id") or "r0")
            if (not drops and isinstance(message, bytes | bytearray)
                    and pb.unpack_chunk(message).index == 40):
                drops.append(40)
                link._transport._ws.transport.abort()
            return await request_built(build, *args, **kwargs)

        link.request_built = put_then_drop  # type: ignore[method-assign]
        waiting = asyncio.ensure_future(file_message(bob))
        await alice.files.send_file("bob", src)
        assert alice.files.resumed and alice.files.resumed[0] >= 20  # carried on, not over
        message_id = await waiting
        assert sha256_of(await bob.files.save(message_id, tmp_path / "up.out")) == digest


class Crash(Exception):
    """The client stops dead in the middle of an upload."""


def crash_after(chunks: int) -> Any:
    def progress(done: int, total: int) -> None:
        if done >= chunks * CHUNK_SIZE:
            raise Crash
    return progress


async def test_an_upload_cut_off_by_a_crash_starts_over_if_the_file_changed(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The next run resumes an unchanged file (the killed ``send --file`` test below); a
    file that changed since, even with its size and time kept, starts over under a new
    key and id: its chunks must never be sealed again under the old ones' nonces."""
    bob = await make_account(server, "bob", tmp_path)
    alice = await make_account(server, "alice", tmp_path)
    try:
        src = tmp_path / "up.bin"
        make_file(src, 60 * CHUNK_SIZE + 7)
        with pytest.raises(Crash):  # 30 chunks stored, up to 16 more sealed and sent
            await alice.files.send_file("bob", src, progress=crash_after(30))
        await alice.close()
        [abandoned] = [p.name for p in blob_files(server)]
        before = src.stat()
        with open(src, "r+b") as f:
            f.seek(5 * CHUNK_SIZE)
            f.write(b"changed")
        os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))
        alice = await Client.open(tmp_path / "alice", PASSPHRASE)  # the next run
        await alice.connect()
        waiting = asyncio.ensure_future(file_message(bob))
        await alice.files.send_file("bob", src)
        assert alice.files.resumed == []  # begun again, not carried on
        message_id = await waiting
        assert bob.files.info(message_id).blob_id + ".part" != abandoned
        assert sha256_of(await bob.files.save(message_id, tmp_path / "up.out")) == \
            sha256_of(src)
        assert [p.name for p in blob_files(server)] == [abandoned]  # left to expire
        assert list((tmp_path / "alice" / "uploads").iterdir()) == []

        # The same file sent twice at once: two uploads, neither takes the other's over.
        ids = await asyncio.gather(alice.files.send_file("bob", src, progress=lambda d, t: None),
                                   alice.files.send_file("bob", src))
        blobs = {alice.files.info(i).blob_id for i in ids}
        assert len(blobs) == 2 and abandoned.removesuffix(".part") not in blobs
        for i, message_id in enumerate(ids):
            for _ in range(200):  # bob stores both messages
                if bob._store.get_message(message_id) is not None:
                    break
                await asyncio.sleep(0.05)
            out = await bob.files.save(message_id, tmp_path / f"twice{i}.out")
            assert sha256_of(out) == sha256_of(src)
    finally:
        await alice.close()
        await bob.close()


async def test_the_server_checks_every_blob_request(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        blob = "ab" * 16
        bob_device = pb.Recipient(userId="bob", deviceId=bob.device_id)

        async def refused(client: Client, event: object) -> str:
            build = event.to_frame if hasattr(event, "to_frame") else event
            with pytest.raises(ServerError) as exc:
                await client._conn.request_built(build, frozenset({"x"}))
            return str(exc.value.code)

        def create(size: int, chunks: int) -> pb.BlobCreate:
            return pb.BlobCreate(blobId=blob, size=size, chunks=chunks, ttlMs=60_000,
                                 recipients=(bob_device,))

        def put(index: int, data: bytes) -> object:
            return functools.partial(pb.pack_chunk, pb.OP_PUT, blob, index, data=data)

        assert await refused(alice, create(SEALED_CHUNK_SIZE + 1, 1)) == "bad_request"
        assert await refused(alice, create(10, 1)) == "bad_request"  # shorter than a chunk
        layout = create(SEALED_CHUNK_SIZE + 100, 2)
        _, created = await alice._conn.request(layout, frozenset({pb.BLOB_CREATED}))
        assert created["received"] == 0
        assert await refused(bob, layout) == "blob_conflict"  # the id is alice's
        assert await refused(alice, put(1, b"x" * 100)) == "bad_chunk"  # not the next one
        assert await refused(alice, put(0, b"x" * 100)) == "bad_chunk"  # not a full chunk
        assert await refused(bob, put(0, b"x" * SEALED_CHUNK_SIZE)) == "forbidden"
        await alice._conn.request_built(put(0, b"x" * SEALED_CHUNK_SIZE),
                                        frozenset({pb.BLOB_STORED}))
        get = pb.BlobGet(blobId=blob, index=0)
        assert await refused(bob, get) == "blob_incomplete"
        _, again = await alice._conn.request(layout, frozenset({pb.BLOB_CREATED}))
        assert again["received"] == 1  # an upload resumes where the server's file ends
        await alice._conn.request_built(put(1, b"y" * 100), frozenset({pb.BLOB_STORED}))
        assert await refused(carol, get) == "unknown_blob"  # not a recipient: no such blob
        assert await refused(bob, pb.BlobGet(blobId=blob, index=2)) == "bad_request"
        _, chunk = await bob._conn.request(get, frozenset({pb.BLOB_CHUNK}))
        assert chunk["data"] == b"x" * SEALED_CHUNK_SIZE
        assert await refused(carol, pb.BlobFetched(blobId=blob)) == "unknown_blob"
        assert blob_rows(server) == 1
