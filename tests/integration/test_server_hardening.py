"""Attacks on a default server on 127.0.0.1, each reproduced, then refused (DESIGN §7
abuse controls; docs/threat-model.md): data file modes, lock-out before login, resume
amplification, inbox flooding, prekey and KeyPackage exhaustion.
"""

from __future__ import annotations

import stat
from pathlib import Path

from tests.conformance.conftest import online_pair
from tests.integration.serverproc import ServerProcess


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- data directory permissions ---------------------------------------------------------


async def test_data_dir_is_0700_and_database_wal_shm_are_0600(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"  # does not exist: the server creates it
    # (the last --data-dir wins: the harness keeps its logs in its own directory)
    with ServerProcess(tmp_path / "srv", extra_args=["--data-dir", str(data)]) as srv:
        a, b = await online_pair(srv.ws_url)
        bob = b.device.username  # type: ignore[union-attr]
        assert (await a.send_message(bob, [(bob, "d1", b"x")]))["event"] == "ksmpv3.send.ack"
        db = data / "sottovoce.sqlite3"
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        assert all(f.exists() for f in files)
        assert _mode(data) == 0o700
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert "warning" not in srv.output()


async def test_a_wider_existing_data_dir_is_reported_at_start(tmp_path: Path) -> None:
    data = tmp_path / "server"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with ServerProcess(data) as srv:
        pass
    assert f"{data} has mode 0755" in srv.output()  # standard error
    warned = [line for line in srv.log_lines() if line["event"] == "storage.permissions"]
    assert warned and warned[0]["level"] == "warning" and warned[0]["path"] == str(data)
    assert _mode(data) == 0o755, "reported, not changed behind the operator's back"
