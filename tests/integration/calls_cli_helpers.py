"""Running `sottovoce` call commands as processes, for the 1:1 call tests.

    answer = start(bob_home, "answer", "--seconds", "3", "--loopback")
    answer.wait_for("waiting up to")          # polls its stdout
    done = run(alice_home, "call", "bob", "--loopback")   # to the end
    call, answer = answered_call(alice_home, bob_home, "--loopback")

Each account's directory is its SOTTOVOCE_HOME; the passphrase comes from the
environment, and no other SOTTOVOCE_ variable of the test's own leaks in.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.calls_helpers import Coturn
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess

LOOPBACK = ("--loopback",)


@dataclass
class Cli:
    """One running command, its output going to files a test can poll."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    #: When it was started (``time.monotonic()``): no line of its output is older.
    started: float = field(default_factory=time.monotonic)

    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        return self.wait_between(pattern, timeout)[0]

    def wait_between(
        self, pattern: str, timeout: float = 30.0
    ) -> tuple[re.Match[str], float, float]:
        """:meth:`wait_for`, and when the line came: after the first ``time.monotonic()``
        returned and no later than the second (far apart on a loaded machine)."""
        deadline = time.monotonic() + timeout
        not_yet = self.started
        while (before := time.monotonic()) < deadline:
            found = re.search(pattern, self.stdout())
            if found:
                return found, not_yet, time.monotonic()
            not_yet = before
            if self.proc.poll() is not None:
                found = re.search(pattern, self.stdout())
                if found:
                    return found, not_yet, time.monotonic()
                raise AssertionError(
                    f"exited {self.proc.returncode} before {pattern!r}:\n"
                    f"{self.stdout()}\n{self.stderr()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in time:\n{self.stdout()}\n{self.stderr()}")

    def finish(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running:\n{self.stdout()}\n{self.stderr()}") from None


def env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(SOTTOVOCE_HOME=str(home), SOTTOVOCE_PASSPHRASE=PASSPHRASE)
    return env


def start(home: Path, *args: str) -> Cli:
    n = len(list(home.parent.glob(f"{home.name}-*.out")))
    out, err = home.parent / f"{home.name}-{n}.out", home.parent / f"{home.name}-{n}.err"
    began = time.monotonic()
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sottovoce", *args], env=env(home), stdout=o, stderr=e
        )
    return Cli(proc, out, err, began)


def run(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sottovoce", *args],
        env=env(home), capture_output=True, text=True, timeout=timeout, check=False,
    )


def server_with_turn(root: Path, turn: Coturn, secret: bytes | None = None) -> ServerProcess:
    secret_file = root / "turn-secret"
    root.mkdir(parents=True, exist_ok=True)
    secret_file.write_bytes((secret or turn.secret.expose()) + b"\n")
    secret_file.chmod(0o600)
    return ServerProcess(
        root / "server",
        extra_args=["--turn-url", turn.url, "--turn-secret-file", str(secret_file)],
    ).start()


def accounts(srv: ServerProcess, root: Path, *names: str) -> list[Path]:
    async def make() -> None:
        for name in names:
            await (await make_account(srv, name, root)).close()

    asyncio.run(make())
    return [root / name for name in names]


@contextmanager
def accounts_on_a_turn_server(
    turn: Coturn, root: Path, *names: str
) -> Iterator[tuple[ServerProcess, list[Path]]]:
    """A server handing out credentials for ``turn``, with these accounts on it."""
    srv = server_with_turn(root, turn)
    try:
        yield srv, accounts(srv, root, *names)
    finally:
        srv.stop()


def answered_call(
    caller: Path, callee: Path, *extra: str, seconds: float = 5.0
) -> tuple[Cli, Cli]:
    """The callee answers and hangs up ``seconds`` after the call connects."""
    answer = start(callee, "answer", "--wait", "30", "--seconds", str(seconds), *extra)
    answer.wait_for("waiting up to")
    call = start(caller, "call", callee.name, *extra)
    assert call.finish() == 0, (call.stdout(), call.stderr())
    assert answer.finish() == 0, (answer.stdout(), answer.stderr())
    return call, answer


def received(answer: Cli) -> tuple[int, int]:
    found = answer.wait_for(r"received (\d+) camera frames, numbered (\d+) to (\d+)")
    count, first, last = (int(g) for g in found.groups())
    assert first <= 2  # the first frames were decoded too
    return count, last + 1


def plain(done: subprocess.CompletedProcess[str]) -> str:
    """A mistake as the commands promise it: exit code 1, one or two lines, no traceback."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, done.stderr
    return done.stderr
