"""Every shell example in README.md and docs/*.md runs, or is listed here with the reason.

The fenced ``sh`` blocks are read from the documents themselves, so the docs drive
this test: a command changed in the README is the command that runs. A block is

* **run** when every command in it is a ``sottovoce`` command against
  ``ws://127.0.0.1:8765`` (the README's server): against a real server on
  127.0.0.1, in order, in a temporary home directory (so ``~/.sottovoce-alice``
  lands there), with the passphrase in ``SOTTOVOCE_PASSPHRASE`` and
  ``.venv/bin/sottovoce`` running this interpreter; each command must exit 0.
  Commands that never end by themselves (``LONG_RUNNING``) are only parsed;
* **run with substitutions** when listed in ``RUN_OTHER`` (production paths
  mapped into the temporary directory);
* **skipped** when listed in ``SKIP`` with the reason; every ``sottovoce``
  command in it must still parse, and every ``bench/`` script must answer
  ``--help`` and know the flags the block gives it.

A new block that fits none of these fails the test, as does a listed block that
no longer exists. The same documents must show a worked example of every CLI
command, and the files in ``deploy/`` must agree with the code.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sottovoce.cli.main import build_parser
from sottovoce.server.config import CONFIG_ENV, OPTIONS, load_config
from tests.integration.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
#: The server address the README's examples use; the test's server replaces it.
README_URL = "ws://127.0.0.1:8765"
PASSPHRASE = "docs examples passphrase"

#: Subcommands that run until they are stopped: parsed, never run.
LONG_RUNNING = {
    "server": "runs until stopped; this test starts its own server on 127.0.0.1",
    "chat": "a full-screen TUI until Ctrl-Q; tests/integration/test_tui.py drives it in tmux",
    "listen": "prints messages until Ctrl-C; tests/integration/test_client_e2e.py covers it",
    "call": "needs the callee waiting in another terminal; tests/integration/test_calls_cli.py "
            "runs both sides",
    "answer": "waits for a call from another terminal; tests/integration/test_calls_cli.py",
    "decline": "waits for a call from another terminal; tests/integration/test_calls_cli.py",
    "room call": "stays in the call until Ctrl-C, the others joining from other terminals; "
                 "tests/integration/test_room_calls_server.py runs three of them",
    "room chat": "an ephemeral group chat until /quit, the others joining from other "
                 "terminals; tests/integration/test_ephemeral_group_cli.py runs three",
    "kt witness": "serves add-checkpoint until stopped (or checks another machine's server "
                  "once); tests/integration/test_kt_server.py runs both kinds",
}

#: (document, first command of the block) -> why the block is not run. Reviewed.
SKIP: dict[tuple[str, str], str] = {
    ("docs/fuzzing.md", ".venv/bin/python -m tests.fuzz --list"):
        "fuzz runs take minutes of full load from the checkout; tests/fuzz/test_fuzz.py runs "
        "every harness over its corpus and seeded mutations",
    ("docs/fuzzing.md",
     "nice -n 19 .venv/bin/python -m tests.fuzz all --runs 1000000 --seconds 600"):
        "a long fuzz campaign (hours); tests/fuzz/test_fuzz.py runs the short one",
    ("docs/fuzzing.md", ".venv/bin/pip install -q -c constraints.txt -e '.[fuzz]'"):
        "installs the fuzz extra (atheris) and runs a coverage-guided campaign for minutes; "
        "tests/fuzz/test_fuzz.py runs the harnesses without it",
    ("docs/deploy.md",
     "sottovoce kt pin --kt-key 'chat.example.org+1a2b3c4d+AZ...' --data-dir ~/.sottovoce-alice"):
        "needs a server whose log key was rotated; tests/integration/test_kt_cli.py rotates one "
        "and runs kt pin, and runs kt require against a server without a witness",
    ("README.md",
     ".venv/bin/sottovoce history bob --ids --data-dir ~/.sottovoce-alice"):
        "the message ids are placeholders for ones history --ids prints; "
        "tests/integration/test_control_cli.py runs these commands with real ids",
    ("README.md",
     "python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . "
     "&& .venv/bin/sottovoce server"):
        "command 1: installs into .venv and starts a server that runs until stopped",
    ("README.md",
     "python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[dev]' "
     "&& .venv/bin/ruff check src tests bench && .venv/bin/mypy src && .venv/bin/pytest"):
        "command 2 is this test suite itself; CI runs it (.ci/run, tests/unit/test_project.py)",
    ("README.md",
     "python3 -m venv .venv && .venv/bin/pip install -q --require-hashes -r requirements.lock "
     "&& .venv/bin/pip install -q --no-deps -e . && .venv/bin/sottovoce server"):
        "command 1 with hashed dependencies: installs into .venv and starts a server that runs "
        "until stopped; tests/unit/test_release_manifest.py checks the lock's pins and hashes",
    ("README.md", ".venv/bin/sottovoce verify-build --manifest MANIFEST.sha256"):
        "needs a release's signed manifest; tests/integration/test_release.py makes a release "
        "and runs verify-build on a checkout, a wheel and the installed copy",
    ("README.md", ".venv/bin/sottovoce device link --with-history --data-dir ~/.sottovoce-alice"):
        "two terminals: the code device link shows goes to account link, and the words are "
        "confirmed by hand; tests/integration/test_link.py runs both commands, list and rename",
    ("README.md",
     ".venv/bin/sottovoce account create carol --server ws://127.0.0.1:8765 --data-dir "
     "~/.sottovoce-carol --kt-key 'example.com/sottovoce-kt+1a2b3c4d+AU...' --kt-witness "
     "'witness.example/w1+5e6f7a8b+BN...'"):
        "the keys are placeholders for ones obtained from an operator and a witness; "
        "tests/integration/test_kt_cli.py runs both commands with real keys",
    ("README.md", ".venv/bin/sottovoce send bob --file photo.jpg --data-dir ~/.sottovoce-alice"):
        "names files of the reader's and a message id that history prints; "
        "tests/integration/test_files_e2e.py::test_cli_send_file_history_and_save runs "
        "send --file, history, room send --file and save (1:1 and #ROOM)",
    ("README.md", ".venv/bin/sottovoce play alice ID --data-dir ~/.sottovoce-bob"):
        "needs a message id that history prints, an audio output and a microphone; "
        "tests/integration/test_voice_e2e.py runs play and send --record where there are "
        "none, and tests/unit/test_voice_notes.py plays to a null output and records from "
        "an injected source",
    ("README.md", ".venv/bin/sottovoce requests --data-dir ~/.sottovoce-bob"):
        "needs pending requests from carol, dave and mallory; "
        "tests/integration/test_contacts_e2e.py::test_cli_contacts_and_requests runs "
        "requests, accept, decline and block",
    ("README.md", ".venv/bin/sottovoce chat bob --ephemeral --data-dir ~/.sottovoce-alice"):
        "two terminals chatting and a third that panics while they do; "
        "tests/integration/test_ephemeral_cli.py runs chat --ephemeral on both sides and panic",
    ("README.md",
     ".venv/bin/sottovoce room chat friends --ephemeral --data-dir ~/.sottovoce-alice"):
        "two terminals in one room's ephemeral group chat; "
        "tests/integration/test_ephemeral_group_cli.py runs room chat --ephemeral for three "
        "members, /photo, /media, /save and panic",
    ("docs/app.md", "sottovoce app --data-dir ~/.sottovoce-alice"):
        "serves the page until stopped; the README runs app --check, and tests/browser/ "
        "drives app --no-browser in Chromium",
    ("README.md", ".venv/bin/python bench/pairwise.py"):
        "benchmarks take minutes of full load; BENCHMARKS.md has their figures",
    ("README.md",
     "SOTTOVOCE_CONFORMANCE_URL=ws://127.0.0.1:8765 .venv/bin/pytest tests/conformance"):
        "the conformance suite is part of the test suite already",
    ("docs/single-server.md",
     "useradd --system --home-dir /var/lib/sottovoce --shell /usr/sbin/nologin sottovoce"):
        "production: creates a system user and installs into /opt (root)",
    ("docs/single-server.md",
     "install -d -o root -g sottovoce -m 0750 /etc/sottovoce /etc/sottovoce/tls"):
        "production: a real certificate from Let's Encrypt for a public name",
    ("docs/single-server.md",
     "install -o root -g sottovoce -m 0640 deploy/sottovoce-single.toml "
     "/etc/sottovoce/sottovoce.toml"):
        "production: installs and starts a systemd unit; test_deploy_files_agree_with_the_code "
        "checks the TOML and the unit",
    ("docs/single-server.md", "sottovoce account create alice --server wss://chat.example.org"):
        "needs the public server of the guide; the README's account create runs",
    ("docs/single-server.md",
     "install -m 0755 deploy/sottovoce-backup.sh /usr/local/bin/sottovoce-backup"):
        "production: installs the backup timer (root); the backup itself runs below",
    ("docs/single-server.md", "systemctl stop sottovoce"):
        "production: stops the service to restore a backup",
    ("docs/single-server.md", "/usr/local/bin/sottovoce-backup /var/lib/sottovoce "
     "/var/backups/sottovoce"):
        "production: upgrades the installed service in place",
    ("docs/single-server.md",
     "install -m 0644 deploy/logrotate/sottovoce /etc/logrotate.d/sottovoce"):
        "production: installs into /etc (root); test_logrotate_copytruncate_keeps_the_server_"
        "logging rotates a live server's log with the same file",
    ("docs/deploy.md",
     "useradd --system --home-dir /var/lib/sottovoce --shell /usr/sbin/nologin sottovoce"):
        "production: a system user and a virtualenv in /opt on each node (root)",
    ("docs/deploy.md", "sudo -u postgres createuser --pwprompt sottovoce"):
        "production: a PostgreSQL role and database with a password",
    ("docs/deploy.md",
     "install -o root -g sottovoce -m 0640 deploy/sottovoce.toml /etc/sottovoce/sottovoce.toml"):
        "production: systemd units on three machines; test_deploy_files_agree_with_the_code "
        "checks the TOML and the unit",
    ("docs/deploy.md", "curl -sk https://node1.internal:8765/healthz"):
        "production host names; tests/integration/test_server_ops.py checks /healthz",
    ("docs/calls.md",
     "sottovoce server --sfu wss://sfu.example.org/ --sfu-key-file /etc/sottovoce/sfu-key"):
        "production SFU addresses and key; tests/integration/test_room_calls_server.py starts "
        "the server with --sfu against a real Janus",
    ("docs/calls.md",
     "sottovoce recorder --server wss://chat.example.org --data-dir /var/lib/sottovoce-rec"):
        "runs until Ctrl-C against a production server; "
        "tests/integration/test_room_calls_recorder.py runs the command and its room setting",
    ("README.md", ".venv/bin/sottovoce account passphrase --data-dir ~/.sottovoce-alice"):
        "asks for the passphrases at a terminal, and later examples open alice's directory "
        "with the old one; tests/integration/test_conversations_cli.py runs it with "
        "SOTTOVOCE_NEW_PASSPHRASE",
    ("README.md",
     ".venv/bin/sottovoce device revoke 3f9a0c1d --data-dir ~/.sottovoce-alice"):
        "needs a second device's id and the recovery code account create printed; "
        "tests/integration/test_revoke_cli.py runs each of these commands",
    ("docs/deploy.md", "docker compose -f deploy/compose.yaml up --build"):
        "needs a Docker daemon and images from the network; "
        "test_dockerignore_keeps_the_image_to_what_pip_needs checks the build context",
}

#: (document, first command) -> run with these substitutions of production paths.
RUN_OTHER: dict[tuple[str, str], str] = {
    ("README.md",
     ".venv/bin/python -c \"import wave; w = wave.open('hello.wav', 'wb'); w.setnchannels(1); "
     "w.setsampwidth(2); w.setframerate(48000); w.writeframes(bytes(2 * 48000 * 7)); "
     "w.close()\""):
        "writes the WAV that the voice-note examples send (7 s of silence)",
    ("docs/single-server.md",
     "sudo -u sottovoce deploy/sottovoce-backup.sh /var/lib/sottovoce /var/backups/sottovoce"):
        "the online backup, against the test server's data while it runs",
}


# --- reading the documents ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    document: str
    line: int
    lang: str
    text: str

    @property
    def commands(self) -> list[str]:
        """Logical command lines: comments dropped, backslash continuations joined."""
        out: list[str] = []
        pending = ""
        for raw in self.text.splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            out.append(_strip_comment(pending + line))
            pending = ""
        return out

    @property
    def key(self) -> tuple[str, str]:
        cmds = self.commands
        return (self.document, cmds[0] if cmds else "")

    def where(self) -> str:
        return f"{self.document}:{self.line}"


def _strip_comment(line: str) -> str:
    """The command without a trailing ``# comment`` (a ``#`` outside quotes, after a space)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.strip()


_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def read_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j])
            j += 1
        text = textwrap.dedent("\n".join(body)) if indent or body else ""
        blocks.append(Block(str(path.relative_to(ROOT)), i + 1, lang, text))
        i = j + 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for doc in DOCUMENTS for b in read_blocks(doc)]


def sh_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.lang == "sh"]


# --- looking at one command --------------------------------------------------------------


def simple_commands(command: str) -> list[list[str]]:
    """argv of each simple command in ``a && b; c | d``, env assignments and sudo dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[list[str]] = [[]]
    for tok in lexer:
        if tok in ("&&", "||", ";", "|", "&"):
            out.append([])
        else:
            out[-1].append(tok)
    argvs = []
    for argv in out:
        while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
            argv = argv[1:]
        if argv[:1] == ["sudo"] and argv[1:2] == ["-u"]:
            argv = argv[3:]
        if argv:
            argvs.append(argv)
    return argvs


def is_sottovoce(argv: list[str]) -> bool:
    return Path(argv[0]).name == "sottovoce"


def subcommand(argv: list[str]) -> str:
    return next((a for a in argv[1:] if not a.startswith("-")), "")


def long_running(argv: list[str]) -> bool:
    """The command (``call``) or command and subcommand (``room call``) never ends by itself."""
    words = [a for a in argv[1:3] if not a.startswith("-")]
    return subcommand(argv) in LONG_RUNNING or " ".join(words) in LONG_RUNNING


def check_parses(argv: list[str], where: str) -> None:
    """argparse accepts this ``sottovoce`` command line (nothing runs)."""
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exc:  # --version and --help exit 0 after printing
            if exc.code not in (0, None):
                pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse: {err.getvalue()}")


def check_bench(argv: list[str], where: str) -> None:
    """``python bench/X.py ...``: the script answers --help and knows every flag given."""
    script = ROOT / argv[1]
    assert script.is_file(), f"{where}: {argv[1]} does not exist"
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60,
        cwd=ROOT, check=False,
    )
    assert done.returncode == 0, f"{where}: {argv[1]} --help failed: {done.stderr[-1000:]}"
    for flag in (a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")):
        assert flag in done.stdout, f"{where}: {argv[1]} has no option {flag}"


def check_block_parses(block: Block) -> None:
    for command in block.commands:
        for argv in simple_commands(command):
            if is_sottovoce(argv):
                check_parses(argv, block.where())
            elif Path(argv[0]).name.startswith("python") and argv[1:2] and argv[1].startswith(
                "bench/"
            ):
                check_bench(argv, block.where())


def runs_by_itself(block: Block) -> bool:
    """Only sottovoce commands, and only against the README's local server."""
    urls = re.findall(r"\bwss?://\S+", block.text)
    return bool(block.commands) and all(u == README_URL for u in urls) and all(
        is_sottovoce(argv) for c in block.commands for argv in simple_commands(c)
    )


# --- static checks -----------------------------------------------------------------------


def test_shell_examples_are_fenced_as_sh() -> None:
    wrong = [
        f"{b.where()}: ```{b.lang}"
        for b in all_blocks()
        if b.lang in ("bash", "shell", "console", "zsh", "shell-session")
        or (b.lang == "" and re.search(r"^\s*(\.venv/bin/)?sottovoce ", b.text, re.M))
    ]
    assert wrong == [], "tag shell examples ```sh so that this test runs them: " + ", ".join(wrong)


def test_every_block_is_run_or_listed_with_its_reason() -> None:
    blocks = sh_blocks()
    assert len(blocks) >= 15, "too few sh blocks found: did the fence syntax change?"
    keys = {b.key for b in blocks}
    unlisted = [
        f"{b.where()}: {b.key[1]!r}"
        for b in blocks
        if b.key not in SKIP and b.key not in RUN_OTHER and not runs_by_itself(b)
    ]
    assert unlisted == [], (
        "these blocks neither run by themselves nor are listed in SKIP or RUN_OTHER:\n"
        + "\n".join(unlisted)
    )
    stale = [k for k in (*SKIP, *RUN_OTHER) if k not in keys]
    assert stale == [], f"listed blocks that no longer exist: {stale}"


def test_skipped_blocks_still_parse() -> None:
    for block in sh_blocks():
        if block.key in SKIP or block.key in RUN_OTHER:
            check_block_parses(block)


def _command_paths(parser: object, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for action in getattr(parser, "_actions", []):
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            for name, sub in choices.items():
                path = (*prefix, name)
                nested = list(_command_paths(sub, path))
                yield from nested or [path]


def test_every_cli_command_has_a_worked_example() -> None:
    paths = sorted(set(_command_paths(build_parser())))
    assert len(paths) >= 15, paths
    shown = {
        tuple(a for a in argv[1:] if not a.startswith("-"))
        for b in sh_blocks()
        for c in b.commands
        for argv in simple_commands(c)
        if is_sottovoce(argv)
    }
    missing = [" ".join(p) for p in paths if not any(s[: len(p)] == p for s in shown)]
    assert missing == [], f"commands without an example in README.md or docs/: {missing}"


def test_every_benchmark_is_listed_in_the_readme_with_its_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))
    assert len(scripts) >= 10, scripts
    missing = [s for s in scripts if f"bench/{s}" not in readme]
    assert missing == [], f"benchmarks README.md does not show how to run: {missing}"


def test_the_checks_can_fail() -> None:
    bad = Block("x.md", 1, "sh", "sottovoce room frobnicate x\n")
    with pytest.raises(pytest.fail.Exception):
        check_block_parses(bad)
    assert not runs_by_itself(Block("x.md", 1, "sh", "systemctl start sottovoce\n"))
    assert not runs_by_itself(Block("x.md", 1, "sh", "sottovoce send a b --server wss://x\n"))
    assert runs_by_itself(Block("x.md", 1, "sh", ".venv/bin/sottovoce demo   # offline\n"))
    token = "-" + "A" * 41 + "-"
    assert join_tokens(f"join token:\n{token}\nthey join with: x {token}\n") == [token, token]
    joined = Block("x.md", 1, "sh", "# c\nsottovoce server \\\n    --port 1  # p\n").commands
    assert joined == ["sottovoce server --port 1"]


# --- deploy/ agrees with the code --------------------------------------------------------

_OPTION_ENVS = {o.env for o in OPTIONS} | {CONFIG_ENV}


def test_deploy_files_agree_with_the_code() -> None:
    deploy = ROOT / "deploy"
    tomls = sorted(deploy.glob("*.toml"))
    assert len(tomls) >= 2
    for path in tomls:
        config = load_config({}, config_file=path, environ={})
        assert config.host == "0.0.0.0", path
        with path.open("rb") as fh:
            assert set(tomllib.load(fh)) == {"server"}, path
    used = set()
    for path in [*deploy.glob("systemd/*.service"), deploy / "compose.yaml"]:
        used |= set(re.findall(r"\bSOTTOVOCE_[A-Z_]+", path.read_text()))
        for exec_start in re.findall(r"^ExecStart=(.+)$", path.read_text(), re.M):
            argv = shlex.split(exec_start)
            if is_sottovoce(argv):
                check_parses(argv, str(path))
    # SOTTOVOCE_NATS_PASSWORD is the NATS server's own variable (nats-server.conf).
    unknown = used - _OPTION_ENVS - {"SOTTOVOCE_NATS_PASSWORD"}
    assert unknown == set(), f"deploy/ sets variables the server does not read: {unknown}"
    single = load_config({}, config_file=deploy / "sottovoce-single.toml", environ={})
    assert single.database is None and single.nats is None and single.tls
    assert single.log_file is not None
    rotate = (deploy / "logrotate" / "sottovoce").read_text()
    assert "copytruncate" in rotate  # the server never reopens its log file
    assert f"{single.log_file.parent}/*.log" in rotate
    backup = (deploy / "systemd" / "sottovoce-backup.service").read_text()
    assert str(single.data_dir) in backup and "sottovoce-backup" in backup
    unit = (deploy / "systemd" / "sottovoce-single.service").read_text()
    assert f"StateDirectory={single.data_dir.name}" in unit
    assert f"LogsDirectory={single.log_file.parent.name}" in unit
    assert os.access(deploy / "sottovoce-backup.sh", os.X_OK)


def _docker_ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        regex = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_image_to_what_pip_needs() -> None:
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    context = (ROOT / "deploy" / re.search(r"context:\s*(\S+)", compose)[1]).resolve()  # type: ignore[index]
    assert context == ROOT, "compose builds from another context: move the .dockerignore"
    patterns = [
        line.strip()
        for line in (context / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    files = [
        p.relative_to(ROOT).as_posix()
        for p in ROOT.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(ROOT).parts[:1]
    ]
    kept = {f for f in files if not _docker_ignored(f, patterns)}
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "LICENSE",
                   "src/sottovoce/__init__.py", "src/sottovoce/py.typed"):
        assert needed in kept, f"{needed} would be missing from the image"
    leaked = sorted(
        f for f in kept
        if f.startswith((".venv/", "tests/", "bench/", "deploy/", ".git"))
        or "__pycache__" in f or ".sqlite3" in f or f.endswith(".pem")
    )
    assert leaked == [], f"these would be copied into the image: {leaked[:10]}"
    assert _docker_ignored(".venv/bin/python", patterns)
    assert _docker_ignored("relay-data/sottovoce.sqlite3", patterns)
    assert _docker_ignored("deploy/tls/privkey.pem", patterns)


# --- running the examples ----------------------------------------------------------------


def join_tokens(text: str) -> list[str]:
    """Room join tokens in a command's output: 32 random bytes, 43 base64url characters
    (which may start or end with '-', so no ``\\b``)."""
    return re.findall(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", text)


@dataclass
class Sandbox:
    work: Path
    server: ServerProcess
    env: dict[str, str]
    outputs: list[str]
    #: The command that printed each of ``outputs``.
    commands: list[str] = field(default_factory=list)

    def substitute(self, command: str) -> str:
        out = command.replace(README_URL, self.server.url)
        out = out.replace(".venv/bin/sottovoce", "sottovoce")
        out = out.replace(".venv/bin/python", sys.executable)
        out = out.replace("/var/lib/sottovoce", str(self.server.data_dir))
        out = out.replace("/var/backups/sottovoce", str(self.work / "backups"))
        out = re.sub(r"(?<![\w/.])deploy/", f"{ROOT}/deploy/", out)
        out = re.sub(r"^sudo -u sottovoce ", "", out)
        if re.search(r"\bTOKEN\b", out):
            # Only what `room token` printed: another command's output (a key in base64)
            # can hold 43 characters that look like one.
            tokens = [t for c, o in zip(self.commands, self.outputs, strict=True)
                      if re.search(r"\broom token\b", c) for t in join_tokens(o)]
            assert tokens, f"no join token printed before `{command}`"
            out = re.sub(r"\bTOKEN\b", tokens[-1], out)
        return out

    def run(self, block: Block) -> None:
        for command in block.commands:
            argvs = simple_commands(command)
            if any(is_sottovoce(a) and long_running(a) for a in argvs):
                for argv in argvs:
                    if is_sottovoce(argv):
                        check_parses(argv, block.where())
                continue
            concrete = self.substitute(command)
            done = subprocess.run(
                ["bash", "-c", concrete], cwd=self.work, env=self.env, capture_output=True,
                text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
            )
            self.commands.append(command)
            self.outputs.append(done.stdout)
            assert done.returncode == 0, (
                f"{block.where()}: `{command}` exited {done.returncode}\n"
                f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
            )


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    work = tmp_path / "work"
    (work / "home").mkdir(parents=True)
    shim = work / "bin"
    shim.mkdir()
    (shim / "sottovoce").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sottovoce "$@"\n')
    (shim / "sottovoce").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(
        HOME=str(work / "home"),
        PATH=f"{shim}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        SOTTOVOCE_PASSPHRASE=PASSPHRASE,
    )
    # The README's "--data-dir ./relay-data --log-file ./relay-data/server.log".
    server = ServerProcess(work / "relay-data").start()
    try:
        yield Sandbox(work, server, env, [])
    finally:
        server.stop()


def test_examples_run_against_a_real_server(sandbox: Sandbox) -> None:
    ran = 0
    for block in sh_blocks():
        if block.key in RUN_OTHER or (block.key not in SKIP and runs_by_itself(block)):
            sandbox.run(block)
            ran += 1
    assert ran >= 6, f"only {ran} blocks ran"
    backups = sorted((sandbox.work / "backups").glob("sottovoce-*.sqlite3"))
    assert len(backups) == 1, "the backup example wrote no backup"
    with contextlib.closing(sqlite3.connect(backups[0])) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        accounts = {r[0] for r in db.execute("SELECT user_id FROM accounts")}
    assert {"alice", "bob"} <= accounts, "the backup does not hold the README's accounts"


def test_logrotate_copytruncate_keeps_the_server_logging(tmp_path: Path) -> None:
    """deploy/logrotate/sottovoce on a live server's log: the old lines move to .1 and the
    server's next lines start the emptied file (O_APPEND), with no hole of NUL bytes."""
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if not os.access(logrotate, os.X_OK):
        pytest.skip("logrotate is not installed")
    server = ServerProcess(tmp_path / "srv").start()
    try:
        conf = (ROOT / "deploy" / "logrotate" / "sottovoce").read_text()
        conf = conf.replace("/var/log/sottovoce/*.log", str(server.log_path))
        conf = re.sub(r"^\s*su .*$", "", conf, flags=re.M)  # su is for root-owned /var/log
        (tmp_path / "rotate.conf").write_text(conf)
        before = server.log_path.read_text()
        assert "server.started" in before
        subprocess.run(
            [logrotate, "-f", "-s", str(tmp_path / "state"), str(tmp_path / "rotate.conf")],
            check=True, capture_output=True, timeout=60,
        )
        assert (tmp_path / "srv" / "server.log.1").read_text() == before
    finally:
        server.stop()  # logs server.stopped into the emptied file
    deadline = time.monotonic() + 5
    while b"server.stopped" not in server.log_path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    after = server.log_path.read_bytes()
    assert after.startswith(b"{"), "the log did not continue at the start of the emptied file"
    assert b"\x00" not in after and b"server.stopped" in after
