"""`account discovery`, `find` and `fvc` as a user types them (the CLI's ``main``, in this
process, against the real server): what they print, and a plain one-line error for
each mistake."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from sottovoce.cli.main import main as cli_main
from tests.help_promises import assert_help_says
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess


async def _made(server: ServerProcess, root: Path, *names: str) -> None:
    for name in names:
        await (await make_account(server, name, root)).close()


def test_cli_discovery_find_and_codes(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asyncio.run(_made(server, tmp_path, "alice", "bob"))

    def cli(who: str, *args: str) -> tuple[int, str, str]:
        monkeypatch.setenv("SOTTOVOCE_HOME", str(tmp_path / who))
        monkeypatch.setenv("SOTTOVOCE_PASSPHRASE", PASSPHRASE)
        code = cli_main(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    def ok(who: str, *args: str) -> str:
        code, out, err = cli(who, *args)
        assert code == 0, (out, err)
        return out

    def refused(who: str, *args: str) -> str:
        code, out, err = cli(who, *args)
        assert code != 0 and len(err.strip().splitlines()) == 1, (out, err)
        return err

    assert ok("alice", "account", "discovery") == "discovery: default\n"
    assert ok("bob", "find", "ali") == "no public account starts with ali\n"
    assert ok("alice", "account", "discovery", "public") == "discovery is now public\n"
    assert ok("bob", "find", "ali") == "alice\n"
    assert "at least 3 characters" in refused("bob", "find", "al")
    shown = ok("alice", "fvc", "show")
    assert re.fullmatch(r"\d{8}  \(current for \d+ s more; .*\)\n", shown), shown
    codes = ok("alice", "fvc", "new", "--static", "2").splitlines()
    assert [c[:3] for c in codes] == ["00-", "01-"] and all(len(c) == 11 for c in codes)
    assert "1-20 static codes" in refused("alice", "fvc", "new", "--static", "0")
    assert "revoked" in ok("alice", "fvc", "revoke")
    assert "8 digits" in refused("bob", "send", "alice", "hi", "--code", "12ab")
    # alice is not strict: the code is not needed, the message simply goes.
    assert ok("bob", "contacts", "add", "alice", "--code", "12345678") == "alice is a contact\n"
    with pytest.raises(SystemExit) as usage:
        cli_main(["account", "discovery", "hidden"])
    assert usage.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize(("argv", "promises"), [
    (["account", "discovery", "--help"],
     ["public: anyone may find the account by searching the start of its name",
      "strict: the server answers about it as about a name nobody holds"]),
    (["find", "--help"], ["at least 3 characters", "at most 20 names", "proof of work"]),
    (["fvc", "new", "--help"], ["the server keeps only slow hashes", "once used"]),
    (["contacts", "add", "--help"], ["friend verification code"]),
])
def test_help_says_what_the_commands_do(
    argv: list[str], promises: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    assert_help_says(argv, promises, capsys)
