"""`sottovoce audit blindness` against the real server (docs/threat-model.md).

The command runs as a subprocess, as an operator would run it: it registers
canary accounts on a running server, sends canaries, then scans the data
directory (or PostgreSQL database), the log, push payloads and /metrics.

* on SQLite it must PASS;
* negative controls: a canary planted (base64, hex) in a log copy, a private
  key of a canary device planted in a file, a canary planted in a PostgreSQL
  table: each must FAIL and name where;
* pointed at a database that is not the server's, it must not pass;
* on PostgreSQL (``--database``) it must PASS too (skipped when unavailable),
  and the PostgreSQL reader names the table, column and row of a planted canary.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sottovoce.audit_kit.canaries import canary_maker, run_canaries
from sottovoce.audit_kit.kit import build_needles
from sottovoce.audit_kit.needles import Scanner, needles_for
from sottovoce.audit_kit.sources import Results, scan_file, scan_postgres
from tests.integration import pgschema
from tests.integration.serverproc import ServerProcess


def audit(*args: str, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    """Run the command; returns its exit code and its --json report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "sottovoce", "audit", "blindness", "--json", "--quiet", *args],
        capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON report (exit {proc.returncode}): {proc.stderr!r}") from None
    return proc.returncode, report


def kinds(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in report["scanned"]:
        out.setdefault(item["kind"], []).append(item)
    return out


def test_kit_passes_against_the_real_server_on_sqlite(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "server") as srv:
        code, report = audit(
            "--server", srv.url, "--data", str(srv.data_dir), "--logs", str(srv.log_path),
            "--push-capture",
        )
    assert (code, report["verdict"]) == (0, "PASS"), report
    assert report["findings"] == [] and report["problems"] == []
    labels = report["canaries"]
    assert {"1:1 live", "ephemeral", "1:1 to both devices of one user"} <= set(labels)
    # A room's shared name, a rename and its topic: in the profile the server reads,
    # sealed.
    assert {"room name (sealed)", "room rename (sealed)", "room topic (sealed)"} <= set(labels)
    assert sum("offline" in label for label in labels) == 2
    assert report["privateKeys"] > 100  # account, device, Olm identity/one-time/ratchet keys…
    scanned = kinds(report)
    names = {Path(item["name"]).name for item in scanned["file"]}
    assert {"sottovoce.sqlite3", "sottovoce.sqlite3-wal"} <= names
    tables = scanned["sqlite"][0]["tables"]
    assert tables["devices"] >= 3 and tables["prekeys"] > 0
    assert [Path(item["name"]).name for item in scanned["log"]] == ["server.log"]
    assert scanned["push"] and all(item["bytes"] > 0 for item in scanned["push"])
    assert {item["name"].rsplit("/", 1)[1] for item in scanned["http"]} == {"metrics", "healthz"}
    # The positive control: the scan did read this server's data.
    assert sum(report["control"].values()) > 0


def test_kit_fails_on_canaries_planted_in_log_copies(tmp_path: Path) -> None:
    seed = secrets.token_bytes(16)
    canary = canary_maker(seed)
    live, ephemeral = canary("1:1 live").text.encode(), canary("ephemeral").text.encode()
    with ServerProcess(tmp_path / "server") as srv:
        copy = tmp_path / "server-copy.log"
        leak = base64.b64encode(b'{"frame": 1, "x": "' + live + b'"}').decode()
        planted = json.dumps({"event": "debug", "raw": leak})
        copy.write_text(srv.log_path.read_text() + planted + "\n")
        lines = len(copy.read_text().splitlines())
        other = tmp_path / "debug.log"
        other.write_bytes(b"dump: " + (b"\x00" + ephemeral).hex().upper().encode() + b"\n")
        code, report = audit(
            "--server", srv.url, "--data", str(srv.data_dir), "--logs", str(copy), str(other),
            "--canary-seed", seed.hex(),
        )
    assert (code, report["verdict"]) == (1, "FAIL"), report
    found = {(f["secret"], f["source"], f["encoding"]) for f in report["findings"]}
    assert ("1:1 live", str(copy), "base64+1") in found
    assert ("ephemeral", str(other), "HEX") in found
    assert {f["source"] for f in report["findings"]} == {str(copy), str(other)}  # nothing else
    where = next(f["where"] for f in report["findings"] if f["source"] == str(copy))
    assert where.startswith(f"line {lines},")
    assert all(live.decode() not in json.dumps(f) for f in report["findings"])  # prefix only


async def test_kit_finds_private_keys_of_the_canary_devices(tmp_path: Path) -> None:
    """Real key material of the canary clients, planted in a file, is found and named."""
    with ServerProcess(tmp_path / "server") as srv:
        run = await run_canaries(srv.url)
    assert run.blockers == []
    by_label = {k.label: k.value.expose() for k in run.keys}

    def pick(suffix: str) -> tuple[str, bytes]:
        return next((label, v) for label, v in by_label.items() if label.endswith(suffix))

    (identity_label, identity) = pick("curve25519 identity key")
    (device_label, device) = pick("device signing key")
    (ratchet_label, ratchet) = pick("root_key.key")  # a session's root key
    planted = {
        "a": base64.urlsafe_b64encode(b"z" + identity).decode(),
        "b": device.hex(),
        "c": base64.b64encode(ratchet).decode(),
    }
    expected = {identity_label, device_label, ratchet_label}
    # The canaries include a room: its epoch secrets are among the keys looked for.
    (mls_label, mls_secret) = pick("encryption_secret")
    planted["d"] = mls_secret.hex().upper()
    expected.add(mls_label)
    leak = tmp_path / "leak.json"
    leak.write_text(json.dumps(planted))
    results = Results()
    scan_file(leak, Scanner(build_needles(run)), results)
    found = {f.label for f in results.findings}
    # Both ends of a session (members of a room) hold its root key (epoch secrets):
    # the other end's label shows up too.
    assert expected <= found, found
    assert all(f.kind == "key" for f in results.findings)


def test_kit_does_not_pass_on_a_database_that_is_not_the_servers(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    other = ServerProcess(elsewhere)
    elsewhere.mkdir()
    with ServerProcess(tmp_path / "server") as srv:
        other_db = other.db_path
        other_db.write_bytes(srv.db_path.read_bytes()[:4096])  # any SQLite-looking file
        code, report = audit("--server", srv.url, "--data", str(elsewhere))
    assert (code, report["verdict"]) == (1, "INCOMPLETE"), report
    assert any("not even the canary usernames" in p for p in report["problems"])


def _pg_skip_reason() -> str | None:
    help_text = subprocess.run(
        [sys.executable, "-m", "sottovoce", "server", "--help"], capture_output=True, text=True
    ).stdout
    if "--database" not in help_text:
        return "this build's server has no --database option (PostgreSQL storage)"
    return pgschema.unreachable()


def test_kit_on_postgresql(tmp_path: Path) -> None:
    reason = _pg_skip_reason()
    if reason:
        pytest.skip(reason)
    import asyncio

    import asyncpg

    seed = secrets.token_bytes(16)
    live = canary_maker(seed)("1:1 live").text
    with pgschema.fresh_schema("sv_blind") as dsn:
        schema = dsn.rsplit("search_path=", 1)[1]
        with ServerProcess(tmp_path / "server", extra_args=["--database", dsn]) as srv:
            code, report = audit("--server", srv.url, "--data", dsn, "--logs", str(srv.log_path))
            gap = [p for p in report["problems"] if "storage has no rooms" in p]
            if gap:  # H4's PostgreSQL RoomStorage not there yet: accounts cannot register
                pytest.skip(f"the server on PostgreSQL cannot run the canaries yet: {gap[0]}")
            assert (code, report["verdict"]) == (0, "PASS"), report
            (pg,) = kinds(report)["postgres"]
            assert sum(pg["tables"].values()) > 0 and pg["bytes"] > 0
            assert all(t.startswith(f"{schema}.") for t in pg["tables"])
            assert report["control"].get(pg["name"], 0) > 0

            async def plant() -> None:
                conn = await asyncpg.connect(dsn)
                try:
                    await conn.execute("CREATE TABLE planted (id int, note text)")
                    await conn.execute(
                        "INSERT INTO planted VALUES (1, $1)", "x" + live.encode().hex()
                    )
                finally:
                    await conn.close()

            asyncio.run(plant())
            code, report = audit(
                "--server", srv.url, "--data", dsn, "--canary-seed", seed.hex()
            )
    assert (code, report["verdict"]) == (1, "FAIL"), report
    (finding,) = report["findings"]
    assert finding["secret"] == "1:1 live" and finding["encoding"] == "hex"
    assert finding["where"].startswith(f"table {schema}.planted, column note, ctid")


def test_postgres_scan_names_table_column_and_row_of_a_planted_canary() -> None:
    """The PostgreSQL reader alone: bytea read raw, text read as text, rows located."""
    reason = pgschema.unreachable()
    if reason:
        pytest.skip(reason)
    import asyncio

    import asyncpg

    secret = b"sottovoce-canary pg " + secrets.token_hex(16).encode()
    scanner = Scanner(needles_for(secret, label="pg canary", kind="canary"))
    results = Results()

    async def plant_and_scan(dsn: str) -> dict[int, str]:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE inbox (seq bigint, body bytea, meta jsonb)")
            rows = [(i, secrets.token_bytes(64), '{"k": 1}') for i in range(200)]
            rows[150] = (150, b"\x01" + secret, '{"k": 1}')
            rows[170] = (170, b"", json.dumps({"preview": base64.b64encode(secret).decode()}))
            await conn.executemany("INSERT INTO inbox VALUES ($1, $2, $3::jsonb)", rows)
            found = await conn.fetch("SELECT seq, ctid::text FROM inbox WHERE seq IN (150, 170)")
        finally:
            await conn.close()
        await scan_postgres(dsn, scanner, results)
        return {r["seq"]: r["ctid"] for r in found}

    with pgschema.fresh_schema("sv_blind") as dsn:
        schema = dsn.rsplit("search_path=", 1)[1]
        ctids = asyncio.run(plant_and_scan(dsn))
    assert results.problems == []
    assert results.scanned[0].tables == {f"{schema}.inbox": 200}
    assert sorted((f.where.split(", byte")[0], f.encoding) for f in results.findings) == [
        (f"table {schema}.inbox, column body, ctid {ctids[150]}", "raw"),
        (f"table {schema}.inbox, column meta, ctid {ctids[170]}", "base64+0"),
    ]
