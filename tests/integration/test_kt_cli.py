"""The key-transparency promises of the CLI, through the commands against the real server:
`account create` pins the log and prints its fingerprint (`--kt-key`, `--kt-witness`),
`kt status` shows the pins, the checkpoint and the alerts (exit 1 while one is not
acknowledged), every command prints unacknowledged alerts, `kt ack` acknowledges them,
`kt pin-witness` adds a witness key, `kt pin --kt-key` re-pins the log key after a
rotation, a server with no witness is a warning on every command unless the user opted
out (`--kt-min-cosignatures 0`, `kt require 0`); each mistake is a plain message, never
a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.kt.checkpoint import NoteKey, NoteSigner
from sottovoce.server.kt_log import local_witness_paths
from tests.integration.client_helpers import PASSPHRASE
from tests.integration.serverproc import ServerProcess


def _cli(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(SOTTOVOCE_HOME=str(home), SOTTOVOCE_PASSPHRASE=PASSPHRASE)
    return subprocess.run([sys.executable, "-m", "sottovoce", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stdout


def _plain_failure(done: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stderr


def _other_key(seed: int, *, witness: bool) -> str:
    key = SigningKey(SignatureScheme.ED25519, hashlib.sha256(bytes([seed])).digest())
    return NoteSigner("elsewhere.example/k", key, cosigner=witness).public.vkey()


def test_create_pins_status_shows_and_alerts_last_until_acknowledged(
    server: ServerProcess, tmp_path: Path
) -> None:
    keys = json.loads(server.http_get("/kt/keys"))
    log_key = NoteKey.from_vkey(keys["log_key"])
    alice, bob, carol = tmp_path / "alice", tmp_path / "bob", tmp_path / "carol"

    out = _ok(_cli("account", "create", "alice", "--server", server.url, home=alice))
    assert f"fingerprint {log_key.fingerprint()}" in out
    assert log_key.fingerprint() in server.output()  # what the operator's banner shows
    assert keys["witnesses"][0] in out
    _ok(_cli("account", "create", "bob", "--server", server.url,
             "--kt-key", keys["log_key"], "--kt-witness", keys["witnesses"][0], home=bob))
    _ok(_cli("send", "bob", "hello", home=alice))

    status = _ok(_cli("kt", "status", home=alice))
    assert f"fingerprint: {log_key.fingerprint()}" in status
    assert "1 pinned, 1 cosignature(s) required" in status
    assert "checkpoint:  size " in status and "cosigned by " in status
    assert "check now:   ok" in status and "alerts:      none" in status
    offline = _ok(_cli("kt", "status", "--offline", home=alice))
    assert "check now" not in offline and "checkpoint:  size " in offline

    # A log key given from elsewhere that the server does not use: refused, loudly.
    refused = _plain_failure(_cli("account", "create", "carol", "--server", server.url,
                                  "--kt-key", _other_key(1, witness=False), home=carol))
    assert "created account 'carol'" in refused and "--kt-key" in refused
    shown = _cli("kt", "status", home=carol)
    _plain_failure(shown)
    assert "not pinned" in shown.stdout
    assert "KEY-TRANSPARENCY ALERT: 1 not acknowledged" in shown.stdout
    # Every other command shows the alert too; lookups are refused with a plain message.
    sent = _plain_failure(_cli("send", "bob", "unverified", home=carol), code=1)
    assert "KEY-TRANSPARENCY ALERT" in sent and "transparency log" in sent
    history = _cli("history", "bob", "--offline", home=carol)
    assert "KEY-TRANSPARENCY ALERT" in history.stderr
    assert _ok(_cli("kt", "ack", home=carol)) == "acknowledged 1 alert(s)\n"
    assert _ok(_cli("kt", "ack", home=carol)) == "no alert to acknowledge\n"
    assert "ALERT" not in _cli("history", "bob", "--offline", home=carol).stderr


def test_pin_witness_and_key_mistakes_are_plain(server: ServerProcess, tmp_path: Path) -> None:
    alice = tmp_path / "alice"
    wrong_kind = _plain_failure(_cli("account", "create", "alice", "--server", server.url,
                                     "--kt-witness", _other_key(2, witness=False), home=alice),
                                code=1)
    assert "not a witness's cosignature key" in wrong_kind
    garbage = _plain_failure(_cli("account", "create", "alice", "--server", server.url,
                                  "--kt-key", "not-a-key", home=alice))
    assert "not a verifier key" in garbage
    _ok(_cli("account", "create", "alice", "--server", server.url, home=alice))
    extra = _other_key(3, witness=True)
    assert "pinned witness elsewhere.example/k (2 pinned)" in _ok(
        _cli("kt", "pin-witness", extra, home=alice))
    assert extra in _ok(_cli("kt", "status", "--offline", home=alice))
    assert "not a verifier key" in _plain_failure(
        _cli("kt", "pin-witness", "nonsense", home=alice))


def test_a_rotated_log_key_alerts_until_pinned_by_hand(tmp_path: Path) -> None:
    alice = tmp_path / "alice"
    with ServerProcess(tmp_path / "server").start() as server:
        _ok(_cli("account", "create", "alice", "--server", server.url, home=alice))
        old = json.loads(server.http_get("/kt/keys"))["log_key"]
        server.stop()
        # The operator rotates the log key; the co-located witness (same key) follows it.
        (server.data_dir / "kt-log.key").unlink()
        local_witness_paths(server.data_dir)[1].unlink()
        server.start()
        new = json.loads(server.http_get("/kt/keys"))["log_key"]
        assert new != old
        shown = _cli("kt", "status", home=alice)
        _plain_failure(shown)
        assert "log-key-changed" in shown.stdout and "FAILED" in shown.stdout
        wrong = _plain_failure(_cli("kt", "pin", "--kt-key", _other_key(4, witness=False),
                                    home=alice))
        assert "another log key" in wrong and "nothing was pinned" in wrong
        fingerprint = NoteKey.from_vkey(new).fingerprint()
        assert fingerprint in _ok(_cli("kt", "pin", "--kt-key", new, home=alice))
        status = _ok(_cli("kt", "status", home=alice))
        assert f"fingerprint: {fingerprint}" in status
        assert "check now:   ok" in status and "alerts:      none" in status


def test_a_server_without_witness_is_a_warning_unless_opted_out(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    with ServerProcess(tmp_path / "server", extra_args=["--no-local-witness"]).start() as server:
        created = _cli("account", "create", "alice", "--server", server.url, home=alice)
        _ok(created)
        assert "KEY-TRANSPARENCY WARNING: no pinned witness" in created.stderr
        opted = _cli("account", "create", "bob", "--server", server.url,
                     "--kt-min-cosignatures", "0", home=bob)
        _ok(opted)  # bob opted out knowingly: no warning
        assert "WARNING" not in opted.stderr
        # Every command says so, kt status exits 1, and lookups are refused plainly.
        shown = _cli("kt", "status", home=alice)
        _plain_failure(shown)
        assert "0 pinned, 1 cosignature(s) required: lookups are refused" in shown.stdout
        assert "KEY-TRANSPARENCY WARNING" in shown.stderr
        sent = _plain_failure(_cli("send", "bob", "unverifiable", home=alice))
        assert "no checkpoint of the log can be verified" in sent
        assert "KEY-TRANSPARENCY WARNING" in sent
        # Alice opts out by hand; a bad count is a plain mistake.
        assert "a number" in _plain_failure(_cli("kt", "require", "many", home=alice))
        assert "no witness cosignature required" in _ok(_cli("kt", "require", "0", home=alice))
        status = _cli("kt", "status", home=alice)
        assert "check now:   ok" in _ok(status) and "WARNING" not in status.stderr
        assert "none required (opted out" in status.stdout
        assert "max age:     not checked" in status.stdout


def test_help_lines_name_every_kt_option(tmp_path: Path) -> None:
    top = _ok(_cli("kt", "--help", home=tmp_path))
    for sub in ("status", "ack", "pin", "pin-witness", "require", "witness"):
        assert sub in top
    assert "--offline" in _ok(_cli("kt", "status", "--help", home=tmp_path))
    create = _ok(_cli("account", "create", "--help", home=tmp_path))
    assert "--kt-key VKEY" in create and "--kt-witness VKEY" in create
    assert "--kt-min-cosignatures N" in create
    assert "COSIGNATURES" in _ok(_cli("kt", "require", "--help", home=tmp_path))
    assert "VKEY" in _ok(_cli("kt", "pin-witness", "--help", home=tmp_path))
    assert "--kt-key VKEY" in _ok(_cli("kt", "pin", "--help", home=tmp_path))
