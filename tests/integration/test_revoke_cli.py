"""The commands for a lost or stolen device (docs/threat-model.md §A stolen or seized device),
through the real server: `account create` prints the recovery code once, `device revoke`,
`account recover` (this device, or a new one), and certificates that renew themselves
before they expire (an injected clock) or, once expired, with `device renew`, which the
error names.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sottovoce.cli.main import main as cli_main
from sottovoce.client import Client
from sottovoce.client import client as client_mod
from sottovoce.client.store import TEST_KDF
from sottovoce.errors import UsageError
from sottovoce.identity.succession import parse_recovery_code
from sottovoce.limits import CERT_RENEW_BEFORE_MS, DEVICE_CERT_MAX_LIFETIME_MS
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess

DAY_MS = 24 * 3600 * 1000


def _clock(offset_ms: int) -> Callable[[], int]:
    return lambda: int(time.time() * 1000) + offset_ms


def _is_typo(code: str) -> bool:
    try:
        parse_recovery_code(code)
    except UsageError:
        return True
    return False  # (one in 256 one-character changes keeps the checksum)


@pytest.fixture
def pw(tmp_path: Path) -> Path:
    path = tmp_path / "pw"
    path.write_text(PASSPHRASE)
    return path


def test_cli_create_revoke_and_recover(
    server: ServerProcess, tmp_path: Path, pw: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "alice"
    common = ["--data-dir", str(home), "--passphrase-file", str(pw)]
    assert cli_main(["account", "create", "alice", "--server", server.url, *common]) == 0
    out = capsys.readouterr().out
    assert "write this down, it is shown once" in out
    found = re.search(r"recovery code: (\S+)", out)
    assert found is not None
    code = found.group(1)
    parse_recovery_code(code)  # a real code, checksum and all

    async def add_laptop() -> str:
        phone = await Client.open(home, PASSPHRASE)
        try:
            await phone.connect()
            laptop = await phone.add_device(tmp_path / "laptop", PASSPHRASE, kdf=TEST_KDF)
            await laptop.close()
            return laptop.device_id
        finally:
            await phone.close()

    laptop_id = asyncio.run(add_laptop())
    assert cli_main(["device", "revoke", laptop_id, *common]) == 0
    out = capsys.readouterr().out
    assert f"revoked device {laptop_id}" in out and "account key was replaced" in out
    # A device that is not the account's is a plain error.
    assert cli_main(["device", "revoke", "nosuchdevice", *common]) == 1
    assert "no active device 'nosuchdevice'" in capsys.readouterr().err
    # A mistyped code is caught before anything is sent.
    bad = next(typo for c in "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
               if c != code[2] and _is_typo(typo := code[:2] + c + code[3:]))
    assert cli_main(["account", "recover", "--code", bad, *common]) == 1
    assert "typo" in capsys.readouterr().err
    assert cli_main(["account", "recover", *common]) == 1
    assert "--code" in capsys.readouterr().err
    # The code, on this device: a new code is printed, and it works on a new device.
    assert cli_main(["account", "recover", "--code", code, *common]) == 0
    out = capsys.readouterr().out
    assert "recovered account 'alice'" in out and "write this down" in out
    found = re.search(r"recovery code: (\S+)", out)
    assert found is not None and found.group(1) != code
    fresh = ["--data-dir", str(tmp_path / "fresh"), "--passphrase-file", str(pw)]
    assert cli_main(["account", "recover", "alice", "--server", server.url,
                     "--code", found.group(1), *fresh]) == 0
    assert "recovered account 'alice'" in capsys.readouterr().out
    # The phone was not certified under the key recovered on the new device.
    assert cli_main(["send", "alice", "hi", *common]) != 0
    capsys.readouterr()
    # Recovering into a directory that holds an account is refused plainly.
    assert cli_main(["account", "recover", "alice", "--server", server.url,
                     "--code", found.group(1), *fresh]) == 1
    assert "already an account" in capsys.readouterr().err


async def test_a_certificate_renews_itself_before_it_expires(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_account(server, "bob", tmp_path)
    first = client.identity.certificate
    await client.close()
    # Months later (the client's clock): less than CERT_RENEW_BEFORE_MS is left.
    later = first.expires_at_ms - first.created_at_ms - CERT_RENEW_BEFORE_MS + DAY_MS
    monkeypatch.setattr(client_mod, "now_ms", _clock(later))
    client = await Client.open(tmp_path / "bob", PASSPHRASE)
    try:
        await client.connect()
        for _ in range(100):
            if client.identity.certificate != first:
                break
            await asyncio.sleep(0.05)
        renewed = client.identity.certificate
        assert renewed.expires_at_ms > first.expires_at_ms
        assert renewed.keys == first.keys and renewed.account_key == first.account_key
    finally:
        await client.close()


def test_an_expired_certificate_names_the_fix(
    server: ServerProcess, tmp_path: Path, pw: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Made (by the client's clock) just under two years ago: it expires in two seconds.
    monkeypatch.setattr(client_mod, "now_ms", _clock(2000 - DEVICE_CERT_MAX_LIFETIME_MS))

    async def create() -> None:
        c = await Client.create_account(server.url, "carol", tmp_path / "carol", PASSPHRASE,
                                        kdf=TEST_KDF, connect=False)
        await c.close()

    asyncio.run(create())
    monkeypatch.undo()
    time.sleep(2.5)
    common = ["--data-dir", str(tmp_path / "carol"), "--passphrase-file", str(pw)]
    assert cli_main(["send", "carol", "hi", *common]) == 1
    err = capsys.readouterr().err
    assert "certificate has expired" in err and "sottovoce device renew" in err
    assert cli_main(["device", "renew", *common]) == 0
    assert "renewed this device's certificate" in capsys.readouterr().out

    async def connects() -> None:
        c = await Client.open(tmp_path / "carol", PASSPHRASE)
        try:
            await c.connect(timeout=10, fail_fast=True)
        finally:
            await c.close()

    asyncio.run(connects())
