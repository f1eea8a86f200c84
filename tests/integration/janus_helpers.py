"""A real Janus on 127.0.0.1 for the room-call tests, run from the project's own configs.

    janus = Janus(tmp_path).start()      # deploy/janus/*.jcfg with test values
    janus.ws_url                          # ws://127.0.0.1:PORT/ (server and clients)
    janus.info()                          # Janus's "info": what it loaded
    janus.stop()

The configs are ``deploy/janus/`` with only these values changed: the configs
folder, the admin secret and the VideoRoom admin key (fresh per run), the HTTP
and WebSocket ports and the RTP port range (free ones), ``interface`` and
``ice_enforce_list`` (127.0.0.1 and ``lo``). Janus never offers a loopback
candidate (it skips interfaces flagged loopback), so it runs with
``janus_loopback.c`` preloaded (built here with gcc, cached by its hash), which
clears that flag on ``lo``. A real deployment has a real interface and needs
neither. The test skips, saying why, only where janus or gcc is not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sottovoce.secret import Secret
from tests.integration.calls_helpers import free_port_range
from tests.integration.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "deploy" / "janus"
SHIM_SOURCE = Path(__file__).with_name("janus_loopback.c")
#: RTP ports of the test Janus (each PeerConnection takes one with BUNDLE).
RTP_PORTS = 100


def _set(text: str, key: str, value: str) -> str:
    """Set ``key = value`` in a jcfg text, uncommenting the line if needed."""
    pattern = re.compile(rf"^(\s*)#?\s*{re.escape(key)} = .*$", re.M)
    if not pattern.search(text):
        raise AssertionError(f"{key} is not in the deployed Janus config")
    return pattern.sub(lambda m: f"{m.group(1)}{key} = {value}", text, count=1)


def loopback_shim() -> Path:
    """The shim, built once per source version into the user's cache."""
    source = SHIM_SOURCE.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sottovoce-tests"
    target = cache / f"janus_loopback-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.exists():
        return target
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build the loopback shim Janus needs here")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run(
        [
            gcc,
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Werror",
            "-o",
            str(tmp),
            str(SHIM_SOURCE),
            "-ldl",
        ],
        check=True,
        capture_output=True,
    )
    tmp.replace(target)
    return target


class Janus:
    """A Janus of our own on 127.0.0.1 (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_dir = workdir / "janus"
        # Below the kernel's ephemeral range (as the RTP ports): a port bind(port 0) gave
        # could be another test's client connection's local port by the time Janus binds.
        self.http_port = free_port_range(2, tcp=True)
        self.ws_port = self.http_port + 1
        self.admin_key = Secret(secrets.token_hex(16).encode())
        self.admin_secret = secrets.token_hex(16)
        self.rec_dir = workdir / "recordings"
        self.log_path = workdir / "janus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    def key_file(self, directory: Path) -> Path:
        """The VideoRoom admin key in a file, as a server's ``--sfu-key-file`` reads it."""
        path = directory / "sfu-key"
        path.write_bytes(self.admin_key.expose() + b"\n")
        return path

    def _configs(self, rtp_low: int) -> None:
        self.config_dir.mkdir(exist_ok=True)
        self.rec_dir.mkdir(exist_ok=True)
        core = (CONFIGS / "janus.jcfg").read_text()
        plugins = sorted(Path("/usr/lib").glob("*/janus/plugins"))
        base = plugins[0].parent if plugins else Path("/usr/lib/x86_64-linux-gnu/janus")
        for key, value in {
            "configs_folder": f'"{self.config_dir}"',
            "plugins_folder": f'"{base / "plugins"}"',
            "transports_folder": f'"{base / "transports"}"',
            "events_folder": f'"{base / "events"}"',
            "loggers_folder": f'"{base / "loggers"}"',
            "admin_secret": f'"{self.admin_secret}"',
            "interface": '"127.0.0.1"',
            "rtp_port_range": f'"{rtp_low}-{rtp_low + RTP_PORTS - 1}"',
            "ice_enforce_list": '"lo"',
        }.items():
            core = _set(core, key, value)
        (self.config_dir / "janus.jcfg").write_text(core)
        room = _set(
            (CONFIGS / "janus.plugin.videoroom.jcfg").read_text(),
            "admin_key",
            f'"{self.admin_key.expose().decode()}"',
        )
        (self.config_dir / "janus.plugin.videoroom.jcfg").write_text(room)
        http = _set(
            (CONFIGS / "janus.transport.http.jcfg").read_text(), "port", str(self.http_port)
        )
        (self.config_dir / "janus.transport.http.jcfg").write_text(http)
        ws = _set(
            (CONFIGS / "janus.transport.websockets.jcfg").read_text(), "ws_port", str(self.ws_port)
        )
        (self.config_dir / "janus.transport.websockets.jcfg").write_text(ws)

    def start(self) -> Janus:
        binary = shutil.which("janus")
        if binary is None:
            pytest.skip("janus is not installed (apt-get install janus; .ci/services does)")
        shim = loopback_shim()
        self._configs(free_port_range(RTP_PORTS))
        env = {"PATH": os.environ.get("PATH", ""), "LD_PRELOAD": str(shim)}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, "-F", str(self.config_dir), "-C", str(self.config_dir / "janus.jcfg")],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"janus exited ({self.proc.returncode}); see {self.log_path}")
            try:
                self.info()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"janus did not answer on 127.0.0.1:{self.http_port}")

    def info(self) -> dict[str, Any]:
        """Janus's ``info`` over the local HTTP transport (what it loaded, its version)."""
        body = json.dumps({"janus": "info", "transaction": secrets.token_hex(6)}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/janus", data=body, method="POST"
        )
        with urllib.request.urlopen(request, timeout=1) as reply:
            info: dict[str, Any] = json.loads(reply.read())
        return info

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def janus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Janus]:
    """A Janus of the module's own on 127.0.0.1 (skips where janus or gcc is missing)."""
    j = Janus(tmp_path_factory.mktemp("janus")).start()
    try:
        yield j
    finally:
        j.stop()


@pytest.fixture
def sfu_server(janus: Janus, tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh server whose SFU is the module's Janus (``--sfu``, ``--sfu-key-file``)."""
    args = ["--sfu", janus.ws_url, "--sfu-key-file", str(janus.key_file(tmp_path))]
    srv = ServerProcess(tmp_path / "server", extra_args=args).start()
    try:
        yield srv
    finally:
        srv.stop()
