"""Files end to end on loopback: encrypt + upload + download + decrypt of one file,
against ``cp`` of the same bytes and AES-256-GCM alone, in the same run.

    python bench/files.py [--size-mib 100] [--memory-sizes 10,100] [--database DSN]
                          [--separate]

One server subprocess (embedded SQLite unless ``--database``) on 127.0.0.1; two
clients (alice sends, bob receives) in this process, as a user's devices would be.
Phases, each on the same generated file (random bytes, in the page cache):

* ``cp``: ``cp SRC DST`` (a subprocess), the floor for moving the bytes at all;
* AES-GCM alone: the file read in 128 KiB chunks, each sealed and opened again with
  AES-256-GCM (``cryptography``), nothing else;
* upload: ``alice.files.send_file`` (read, seal, binary WebSocket messages, the server writes
  the chunks to disk, flushing them in the background, and fsyncs the file before it
  is complete; then the file message);
* download + save: ``bob.files.save`` of the file not fetched yet (fetch every chunk,
  open and check it, write it as it came, still sealed, flushed in the background, and
  its plaintext beside the destination; the whole file's SHA-256 checked, the local
  copy fsynced, the plaintext renamed into place);
* with ``--separate``: ``bob.files.download`` (as above without the plaintext), then
  ``bob.files.save`` (open the local copy, check it, write the plaintext), each timed.

End to end = upload + download + save. Client memory: the peak that ``tracemalloc``
sees during upload + download + save of each ``--memory-sizes`` file (both clients are
in this process), and this process's peak RSS growth over the whole run; a streaming
client's peak does not grow with the file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.integration helpers

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tests.integration.serverproc import ServerProcess

from sottovoce.client import Client, MessageReceived
from sottovoce.client.store import TEST_KDF
from sottovoce.crypto.file_chunks import CHUNK_SIZE

MIB = 1024 * 1024


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(MIB, left)
            f.write(os.urandom(n))
            left -= n


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:7.1f} MB/s ({seconds:.2f} s)"


def cp_seconds(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    seconds = time.perf_counter() - start
    dst.unlink()
    return seconds


def aes_seconds(src: Path) -> float:
    aead = AESGCM(os.urandom(32))
    start = time.perf_counter()
    with open(src, "rb") as f:
        index = 0
        while block := f.read(CHUNK_SIZE):
            nonce = index.to_bytes(12, "big")
            aead.decrypt(nonce, aead.encrypt(nonce, block, b"aad"), b"aad")
            index += 1
    return time.perf_counter() - start


async def next_file(bob: Client) -> str:
    stream = bob.events()
    while True:
        event = await stream.next(120)
        if isinstance(event, MessageReceived) and event.message.content_type == "file":
            return event.message.message_id


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Phases:
    """Wall time and CPU (this process, the server) of each phase."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.rows: list[tuple[str, float, float, float]] = []
        self._mark = self._now()

    def _now(self) -> tuple[float, float, float]:
        return time.perf_counter(), time.process_time(), cpu_seconds(self.pid)

    def restart(self) -> None:
        self._mark = self._now()

    def done(self, name: str) -> None:
        now = self._now()
        self.rows.append((name, *(b - a for a, b in zip(self._mark, now, strict=True))))
        self._mark = now


async def transfer(alice: Client, bob: Client, src: Path, dst: Path, phases: Phases,
                   separate: bool = False) -> None:
    waiting = asyncio.ensure_future(next_file(bob))
    phases.restart()
    await alice.files.send_file("bob", src)
    phases.done("upload")
    message_id = await waiting
    phases.restart()
    if separate:
        await bob.files.download(message_id)
        phases.done("download")
        await bob.files.save(message_id, dst)
        phases.done("save")
    else:
        await bob.files.save(message_id, dst)
        phases.done("download + save")
    dst.unlink()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--memory-sizes", default="10,100",
                        help="file sizes (MiB) whose client peak memory is measured")
    parser.add_argument("--database", default=None, help="a postgresql:// DSN (else SQLite)")
    parser.add_argument("--separate", action="store_true",
                        help="download, then save from the local copy (two phases)")
    args = parser.parse_args()
    size = args.size_mib * MIB
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f}")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        extra = ("--database", args.database) if args.database else ()
        server = ServerProcess(tmp / "server", extra_args=("--max-file-size", str(2 << 30),
                                                           "--file-quota", str(4 << 30),
                                                           *extra)).start()
        try:
            alice = await Client.create_account(server.url, "alice", tmp / "alice", "pass",
                                                kdf=TEST_KDF)
            bob = await Client.create_account(server.url, "bob", tmp / "bob", "pass",
                                              kdf=TEST_KDF)
            src, dst = tmp / "src.bin", tmp / "dst.bin"
            make_file(src, size)
            cp_seconds(src, dst)  # warm the page cache
            cp = cp_seconds(src, dst)
            aes = aes_seconds(src)
            assert server.proc is not None
            phases = Phases(server.proc.pid)
            await transfer(alice, bob, src, dst, phases, args.separate)
            total = sum(row[1] for row in phases.rows)
            print(f"file: {args.size_mib} MiB, {CHUNK_SIZE // 1024} KiB chunks, "
                  f"storage {'postgresql' if args.database else 'sqlite'}")
            print(f"cp:                   {rate(size, cp)}")
            print(f"AES-256-GCM alone:    {rate(size, aes)}  (seal + open)")
            for name, wall, client_cpu, server_cpu in phases.rows:
                print(f"{name + ':':22}{rate(size, wall)}  CPU: client {client_cpu:.2f} s, "
                      f"server {server_cpu:.2f} s")
            cpu = sum(r[2] + r[3] for r in phases.rows)
            print(f"end to end:           {rate(size, total)}  "
                  f"= {aes / total:.2f}x AES-GCM alone; {cpu:.2f} CPU-s in all "
                  f"({size / cpu / 1e6:.0f} MB per CPU-second)")
            for mib in (int(m) for m in args.memory_sizes.split(",") if m):
                src.unlink()
                make_file(src, mib * MIB)
                tracemalloc.start()
                await transfer(alice, bob, src, dst, Phases(server.proc.pid))
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                print(f"client peak (tracemalloc), {mib:4d} MiB file: {peak / MIB:.1f} MiB")
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
            print(f"client peak RSS growth over the whole run: {grown:.1f} MiB")
            await alice.close()
            await bob.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
