"""Operability: config precedence, --help, banner, /healthz, /metrics, content-free logs."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import httpx
import pytest

from sottovoce import __version__
from sottovoce.errors import UsageError
from sottovoce.server.config import OPTIONS, load_config
from sottovoce.server.logs import JsonLogger
from tests.conformance.conftest import online_pair
from tests.conformance.rawclient import unb64
from tests.integration.serverproc import ServerProcess


def test_config_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "sv.toml"
    cfg_file.write_text('port = 1111\nhost = "0.0.0.0"\nretention_ms = 5000\n[other]\n')
    assert load_config({}, environ={}).port == 8765
    cfg = load_config({}, config_file=cfg_file, environ={"SOTTOVOCE_PORT": "2222"})
    assert (cfg.port, cfg.host, cfg.retention_ms) == (2222, "0.0.0.0", 5000)
    cfg = load_config({"port": "3333"}, config_file=cfg_file, environ={"SOTTOVOCE_PORT": "2222"})
    assert cfg.port == 3333
    env_file = {"SOTTOVOCE_CONFIG": str(cfg_file)}
    assert load_config({}, environ=env_file).retention_ms == 5000


def test_config_refuses_unknown_and_ill_typed_options(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("prot = 1\n")
    with pytest.raises(UsageError, match="unknown option"):
        load_config({}, config_file=bad, environ={})
    with pytest.raises(UsageError, match="SOTTOVOCE_PORT"):
        load_config({}, environ={"SOTTOVOCE_PORT": "eighty"})
    with pytest.raises(UsageError, match="together"):
        load_config({"tls_cert": "c.pem"}, environ={})


def test_inbox_quota_options_reach_the_inbox_limits_each_to_its_own() -> None:
    flags = {"inbox_max_messages": "600", "inbox_max_bytes": "6000",
             "inbox_contact_messages": "500", "inbox_contact_bytes": "5000",
             "inbox_stranger_messages": "400", "inbox_stranger_bytes": "4000"}
    limits = load_config(flags, environ={}).inbox_limits
    assert (limits.device_messages, limits.device_bytes) == (600, 6000)
    assert (limits.contact_messages, limits.contact_bytes) == (500, 5000)
    assert (limits.stranger_messages, limits.stranger_bytes) == (400, 4000)
    with pytest.raises(UsageError, match="must grow"):
        load_config({**flags, "inbox_stranger_bytes": "5001"}, environ={})
    with pytest.raises(UsageError, match="inbox-contact-bytes must be positive"):
        load_config({**flags, "inbox_contact_bytes": "0"}, environ={})


def test_help_documents_every_option_with_an_example() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sottovoce", "server", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout
    for opt in OPTIONS:
        assert opt.flag in out, opt.flag
    assert "--retention-days" in out and "--config" in out
    assert "examples:" in out and "sottovoce server --port" in out


def test_startup_banner_prints_url_and_next_commands(server: ServerProcess) -> None:
    out = server.output()
    assert f"listening on {server.url}" in out
    assert f"sottovoce account create alice --server {server.url}" in out


def test_healthz_metrics_and_unknown_paths(server: ServerProcess) -> None:
    health = server.health()
    assert health["status"] == "ok" and health["version"] == __version__
    metrics = server.metrics()
    assert "# TYPE sottovoce_sends_total counter" in metrics
    assert "sottovoce_commit_seconds_bucket" in metrics
    with pytest.raises(urllib.error.HTTPError) as exc:
        server.http_get("/admin")
    assert exc.value.code == 404


def test_http_answers_say_the_connection_closes(server: ServerProcess) -> None:
    """The server closes the connection after each plain HTTP answer, and says so: a client
    that pools connections (httpx, as `kt witness` does) must not send its next request on
    a connection that is closing, where it would get a reset instead of an answer."""
    with httpx.Client(timeout=5) as http:
        for path in ("/healthz", "/kt/keys", "/admin", "/healthz"):
            resp = http.get(server.http_url + path)
            assert resp.status_code in (200, 404)
            assert resp.headers["connection"] == "close", path


async def test_logs_and_metrics_never_contain_ciphertext(server: ServerProcess) -> None:
    a, b = await online_pair(server.ws_url)
    bob = b.device.username
    canary = b"LOG-CANARY-" + bytes(range(32))
    await a.send_message(bob, [(bob, "d1", canary)])
    f = await b.expect("ksmpv3.inbox.frame")
    assert unb64(f["data"]["envelope"]["ciphertext"]) == canary
    await a.send_message(bob, [(bob, "bogus", canary)])  # an error path too
    text = server.metrics()
    server.stop()
    log = server.log_path.read_bytes() + server.output_path.read_bytes() + text.encode()
    for needle in (canary, base64.b64encode(canary), canary.hex().encode(),
                   base64.b64encode(canary)[:24]):
        assert needle not in log
    lines = [json.loads(x) for x in server.log_path.read_text().splitlines()]
    assert lines and all({"ts", "level", "event"} <= set(x) for x in lines)


def test_logger_only_accepts_whitelisted_fields_and_redacts_blobs() -> None:
    buf = io.StringIO()
    log = JsonLogger(buf)
    with pytest.raises(UsageError):
        log.info("send", ciphertext="AAAA")  # type: ignore[arg-type]
    log.info("send", userId="alice", code='{"json": "blob"}', size=12)
    line = json.loads(buf.getvalue())
    assert line["userId"] == "alice" and line["size"] == 12
    assert line["code"] == "<redacted>"
