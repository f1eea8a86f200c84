"""A command imports only the modules that declare it: `sottovoce server` and
`sottovoce kt witness` start without the client stack (the client SDK, MLS groups, the
call engines), which is most of the import time of every other command. The list of
commands (`sottovoce --help`) imports no command module at all.

The server and the witness run in a fresh interpreter (``python -c``) that reports,
when it exits, which modules it imported; the other tests check that the parser of
one command is the same as the parser of every command, for each of them.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from sottovoce.cli.main import (
    COMMAND_HELP,
    COMMAND_MODULES,
    COMMAND_SOURCES,
    build_parser,
    modules_for,
)

#: What a server or a witness must not import. The server's own SFU and TURN settings
#: use two small sans-I/O parts of `sottovoce.calls` (the Janus request shapes, the TURN
#: URL); the call engines and everything else of it are for devices.
CLIENT_PREFIXES = ("sottovoce.client", "sottovoce.mls.group", "sottovoce.calls.")
SERVER_CALL_PARTS = {"sottovoce.calls.janus", "sottovoce.calls.turn"}

#: Runs main(argv) and, at exit, prints the imported sottovoce modules (and httpx) as a
#: JSON line.
RUN = """\
import atexit, json, sys
atexit.register(lambda: print("MODULES " + json.dumps(
    sorted(m for m in sys.modules if m.startswith("sottovoce") or m == "httpx")), flush=True))
sys.argv = ["sottovoce", *sys.argv[1:]]
from sottovoce.cli.main import main
sys.exit(main())
"""


def client_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m.startswith(CLIENT_PREFIXES) and m not in SERVER_CALL_PARTS]


def serve_then_stop(args: list[str]) -> list[str]:
    """Start ``sottovoce server ARGS``, wait until its /healthz answers, stop it (SIGTERM)
    and return the modules it imported."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, "server", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.strip().startswith("health:"):
                break
        health = seen[-1].split()[1]
        # It answers once the loop runs, and so once its stop signals are handled.
        with urllib.request.urlopen(health, timeout=30) as answer:
            assert json.loads(answer.read())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(seen) + out
    found = [line for line in text.splitlines() if line.startswith("MODULES ")]
    assert found, f"no module list; exit {proc.returncode}\n{text}\n{err}"
    assert proc.returncode == 0, f"{text}\n{err}"
    modules: list[str] = json.loads(found[-1].removeprefix("MODULES "))
    return modules


def test_a_server_starts_and_serves_without_client_code(tmp_path: Path) -> None:
    modules = serve_then_stop(
        ["--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path)]
    )
    assert "sottovoce.server.app" in modules  # it did start, past parsing
    assert client_modules(modules) == []
    # What only an SFU, a remote witness or a push needs is loaded by the first use.
    assert "sottovoce.janus_session" not in modules
    assert "httpx" not in modules


def test_a_witness_parses_and_fails_plainly_without_client_code(tmp_path: Path) -> None:
    """The witness's one-shot check against a port where nothing listens: a plain
    error (the connect-failure wording) and still no client module."""
    proc = subprocess.run(
        [sys.executable, "-c", RUN, "kt", "witness", "--server", "http://127.0.0.1:9",
         "--key", str(tmp_path / "witness.key"), "--state", str(tmp_path / "state.json")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("sottovoce: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    modules = json.loads(proc.stdout.split("MODULES ", 1)[1])
    assert "sottovoce.cli.kt_witness_cmd" in modules
    assert client_modules(modules) == []


def test_a_client_command_still_loads_the_client(tmp_path: Path) -> None:
    """The check above can fail: a command that opens an account shows the client stack
    (here it finds no account in an empty directory, a plain error)."""
    proc = subprocess.run(
        [sys.executable, "-c", RUN, "send", "bob", "hi", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("sottovoce: error: no account in"), proc.stderr
    modules = json.loads(proc.stdout.split("MODULES ", 1)[1])
    assert "sottovoce.client.client" in client_modules(modules)


#: Builds the parser of every command, formats the help at every level, and prints the
#: sottovoce modules then imported as a JSON line.
EVERY_HELP = """\
import argparse, json, sys
from sottovoce.cli.main import build_parser
def walk(parser):
    parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                walk(child)
walk(build_parser())
print(json.dumps(sorted(m for m in sys.modules if m.startswith("sottovoce"))))
"""


def test_no_commands_help_loads_the_client_stack() -> None:
    """Every command's module declares its parser without the client SDK, MLS groups or
    the call engines: they are imported by the functions that run a command, so
    ``sottovoce CMD --help`` stays quick."""
    proc = subprocess.run(
        [sys.executable, "-c", EVERY_HELP], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout)
    assert set(COMMAND_MODULES) <= set(modules)
    assert client_modules(modules) == []


def _helps(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], str]:
    """The help of ``parser`` and of every subcommand under it, by command path."""
    found = {path: parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.update(_helps(child, (*path, name)))
    return found


def test_every_command_has_its_modules_and_the_same_parser_alone() -> None:
    """Each command's parser, built from its modules alone, has the same help (and so the
    same options) at every level as in the parser of every command."""
    everything = _helps(build_parser())
    commands = {path[0] for path in everything if len(path) == 1}
    assert commands == set(COMMAND_SOURCES)
    for command, sources in COMMAND_SOURCES.items():
        assert [m for m in COMMAND_MODULES if m in sources] == list(sources)  # help order
        alone = _helps(build_parser([command]))
        mine = {path: text for path, text in everything.items() if path[:1] == (command,)}
        assert {path: alone[path] for path in mine} == mine, command


@pytest.mark.parametrize(
    ("argv", "modules"),
    [
        (["server", "--port", "0"], ("sottovoce.cli.server_cmd",)),
        (["--debug", "kt", "witness"], ("sottovoce.cli.kt_cmd",)),
        # The top-level help, the version and an unknown command's choices need none.
        ([], ()),
        (["--help", "server"], ()),
        (["-h"], ()),
        (["--version"], ()),
        (["serve"], ()),
        (["--", "server"], ()),
        (["--deb", "server"], ()),  # an abbreviated --debug: found by a parse (below)
    ],
)
def test_which_modules_a_command_line_needs(argv: list[str], modules: tuple[str, ...]) -> None:
    assert modules_for(argv) == modules


def test_top_level_help_and_an_unknown_command_still_list_every_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sottovoce.cli.main import main

    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["serve"])
    assert exited.value.code == 2
    refused = capsys.readouterr().err
    for command in COMMAND_SOURCES:
        assert command in shown
        assert f"'{command}'" in refused



def _subcommand_help(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help for choice in action._choices_actions}
    raise AssertionError("no subcommands")


def test_the_list_of_commands_is_the_modules_own() -> None:
    """COMMAND_HELP holds every command, in help order, with the one line its module gives
    it; so the top-level help and an unknown command's error are those of every module."""
    everything = build_parser()
    assert _subcommand_help(everything) == COMMAND_HELP
    assert list(_subcommand_help(everything)) == list(COMMAND_HELP)  # the order too
    listing = build_parser([])
    assert listing.format_help() == everything.format_help()
    assert listing.format_usage() == everything.format_usage()
    for parser in (listing, everything):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve"])


def test_an_unknown_command_is_refused_in_the_same_words(
    capsys: pytest.CaptureFixture[str],
) -> None:
    said = []
    for parser in (build_parser([]), build_parser()):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(["serve", "--port", "0"])
        assert exited.value.code == 2
        said.append(capsys.readouterr().err)
    assert "invalid choice: 'serve'" in said[0]
    assert said[0] == said[1]


def test_the_top_level_help_imports_no_command_module() -> None:
    for argv in (["--help"], ["--version"], []):
        proc = subprocess.run(
            [sys.executable, "-c", RUN, *argv], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == (2 if not argv else 0), proc.stderr
        modules = json.loads(proc.stdout.split("MODULES ", 1)[1])
        assert "sottovoce.cli.main" in modules
        loaded = [m for m in modules if m.startswith("sottovoce.cli.") and m.endswith("_cmd")]
        assert loaded == [], argv
        assert [m for m in modules if m.startswith(CLIENT_PREFIXES)] == [], argv


def test_a_command_after_an_abbreviated_option_is_still_found(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--deb`` is argparse's abbreviation of ``--debug``: the list of commands picks
    ``server``, and the parse is done again with the server's own parser."""
    from sottovoce.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["--deb", "server", "--help"])
    assert exited.value.code == 0
    (subcommands,) = (
        a for a in build_parser(["server"])._actions if isinstance(a, argparse._SubParsersAction)
    )
    assert capsys.readouterr().out == subcommands.choices["server"].format_help()


def test_the_servers_help_loads_neither_the_sfu_nor_the_witness_code() -> None:
    """The options table parses --sfu and --kt-witness with modules it loads only when
    one of them is given."""
    proc = subprocess.run(
        [sys.executable, "-c", RUN, "server", "--help"], capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout.split("MODULES ", 1)[1])
    assert "sottovoce.server.config" in modules
    assert "sottovoce.server.sfu" not in modules
    assert "sottovoce.server.kt_witness" not in modules
