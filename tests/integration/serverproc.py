"""Start the real ``sottovoce server`` as a subprocess on 127.0.0.1 (tests and bench).

    srv = ServerProcess(tmp_path / "srv").start()
    srv.ws_url        # ws://127.0.0.1:PORT/v3/ws  (srv.url is the base the CLI takes)
    srv.kill()        # SIGKILL, like a crash;  srv.stop() is a clean SIGTERM
    srv.restart()     # same port, same data directory
    srv.log_path      # JSON-lines server log;  srv.output_path: its stdout/stderr

The environment's ``SOTTOVOCE_*`` variables are not passed on, so a developer's
configuration cannot change what a test sees; pass options in ``extra_args``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any


def shared_kt_args(root: Path, data_dir: Path) -> list[str]:
    """What a node among several on one database needs to keep one key-transparency log
    (docs/deploy.md, "Several nodes"): the same log and VRF key files as the others, and
    here, for the tests, the same co-located witness key in its data directory (clients
    require a cosignature; a deployment uses an independent witness instead)."""
    import shutil

    from sottovoce.server import kt_keys
    from sottovoce.server.kt_log import local_witness_paths

    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_key, vrf_key = root / "kt-log.key", root / "kt-vrf.key"
    signer = kt_keys.note_key(log_key, "nodes.test/sottovoce-kt", cosigner=False,
                              what="log key file")
    kt_keys.vrf_key(vrf_key)
    witness = root / "kt-colocated-witness.key"
    kt_keys.note_key(witness, f"{signer.public.name}/colocated-witness", cosigner=True,
                     what="witness key file")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target, _ = local_witness_paths(data_dir)
    if not target.exists():
        shutil.copy2(witness, target)
    return ["--kt-log-key-file", str(log_key), "--kt-vrf-key-file", str(vrf_key)]


def worker_index() -> tuple[int, int]:
    """(this pytest-xdist worker's index, the number of workers); (0, 1) in one process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    try:
        return int(worker.removeprefix("gw")), max(int(count), 1)
    except ValueError:
        return 0, 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _PortTaken(Exception):
    """The server exited because another process listens on its port."""


class ServerProcess:
    def __init__(
        self, data_dir: Path, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        self.data_dir = Path(data_dir)
        #: A port picked here may be taken by another process before the server binds it
        #: (tests run side by side): then the first start tries another one.
        self._may_move = port is None
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.tls = "--tls-cert" in self.extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "server.log"
        self.output_path = self.data_dir / "server.out"

    # --- addresses ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return self.url + "/v3/ws"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "sottovoce.sqlite3"

    # --- life cycle -----------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "sottovoce", "server",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--data-dir", str(self.data_dir),
            "--log-file", str(self.log_path),
            "--push-allow-private", "true",
            # Proof of work at a token level unless a test asks for its own: the flow runs
            # in every test (refusal, solution, retry) without 0.2 s per new pair.
            *([] if "--pow-bits" in self.extra_args else ["--pow-bits", "4"]),
            # Past a device's burst of 4 replays, the next one waits resume_interval_ms
            # (5 s by default): each CLI command is a connection and a replay, so a test
            # running a dozen of them waited a minute. The wait stays, 50 ms long;
            # test_server_hardening checks the default limit on a server of its own.
            *([] if "--resume-interval-ms" in self.extra_args
              else ["--resume-interval-ms", "50"]),
            *self.extra_args,
        ]

    def start(self, timeout: float = 20.0) -> ServerProcess:
        if self.running:
            return self
        for _ in range(5):
            try:
                self._start(timeout)
            except _PortTaken:
                if not self._may_move:
                    raise RuntimeError(
                        f"port {self.port} is taken:\n{self.output()[-3000:]}"
                    ) from None
                self.port = free_port()
                continue
            self._may_move = False  # a restart keeps the address clients know
            return self
        raise RuntimeError("five free ports were taken before the server could bind one")

    def _start(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # as the server makes it
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
        # Healthy means *this* process logged that it listens, then answers: a health
        # check alone may be answered by another server that holds the port.
        own_log = not {"--log-file", "--log-level"} & set(self.extra_args)
        started_before = self._started_count()
        output_before = len(self.output())
        with self.output_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, env=env,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "the port is already in use" in self.output()[output_before:]:
                    raise _PortTaken
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
                )
            if not own_log or self._started_count() > started_before:
                with contextlib.suppress(OSError, ValueError):
                    if self.health().get("status") == "ok":
                        return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not become healthy:\n{self.output()[-3000:]}")

    def _started_count(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count('"event":"server.started"')
        except OSError:
            return 0

    def health(self) -> dict[str, Any]:
        return json.loads(self.http_get("/healthz"))  # type: ignore[no-any-return]

    def metrics(self) -> str:
        return self.http_get("/metrics").decode()

    def http_get(self, path: str) -> bytes:
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(self.http_url + path, timeout=2, context=ctx) as resp:
            return bytes(resp.read())

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, like a crash or power loss of the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    terminate = stop

    def restart(self, timeout: float = 20.0) -> ServerProcess:
        self.stop()
        return self.start(timeout)

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        try:
            text = self.log_path.read_text()
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
