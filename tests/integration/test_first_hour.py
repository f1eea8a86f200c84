"""The first hour: the command line as a newcomer meets it, server up, down and misconfigured.

One real server on 127.0.0.1 serves the whole module (stopped and started
again where a test needs it down); every command runs as its own
``python -m sottovoce`` process, the way a person types it. Accounts are made
through the SDK with cheap Argon2 parameters (tests only), except where the
account creation itself is what is tested.

Checked: a message sent while the server is down is queued and arrives once
after any later command connects; every mistake and every unreachable or
misconfigured server ends in one or two plain lines and a non-zero exit code
(a traceback only with --debug, and even then without the passphrase or the
message); an invitee sees who invited it to which room, under that name, and
can audit it; `room list` shows each room once; `room join --name` renames on
a rejoin; `chat NAME` never hides a person behind a room; `listen` shows room
messages, invitations and the connection state; `chat nobody` is refused; the
passphrase is asked only for an existing account, three times at a terminal;
short passphrases are refused; Ctrl-C leaves the chat; `verify --no-qr` does
not mention a QR code; the server's banner prints commands that work when pasted.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from sottovoce.client import Client
from sottovoce.client.store import TEST_KDF
from tests.integration.client_helpers import PASSPHRASE
from tests.integration.serverproc import ServerProcess, free_port

QUEUED = 75  # `send`'s documented exit code for "queued, not sent yet"


@dataclass
class World:
    root: Path
    srv: ServerProcess

    def home(self, name: str) -> Path:
        return self.root / name


def _env(passphrase: str | None = PASSPHRASE, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    if passphrase is not None:
        env["SOTTOVOCE_PASSPHRASE"] = passphrase
    env.update(extra)
    return env


def cli(
    *args: str,
    home: Path | None = None,
    passphrase: str | None = PASSPHRASE,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "sottovoce", *args]
    if home is not None:
        argv += ["--data-dir", str(home)]
    return subprocess.run(
        argv,
        env=env if env is not None else _env(passphrase),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def plain_failure(done: subprocess.CompletedProcess[str], *, code: int = 1) -> str:
    """A non-zero exit with one or two plain lines on stderr, and no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, done.stderr
    assert lines[0].startswith("sottovoce: error: "), done.stderr
    return done.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("first-hour")
    srv = ServerProcess(root / "server").start()

    async def accounts() -> None:
        for name in ("alice", "bob", "carol", "dave"):
            client = await Client.create_account(
                srv.url, name, root / name, PASSPHRASE, kdf=TEST_KDF
            )
            await client.close()

    asyncio.run(accounts())
    try:
        yield World(root, srv)
    finally:
        srv.stop()


@pytest.fixture
def up(world: World) -> World:
    """The module's server, running (a test before may have stopped it)."""
    world.srv.start()
    return world


async def _texts(home: Path, peer: str) -> list[str]:
    client = await Client.open(home, PASSPHRASE)
    try:
        await client.connect(timeout=15)
        await asyncio.sleep(0.2)
        if peer.startswith("#"):
            return [m.text for m in client.rooms.history(peer[1:])]
        return [m.text for m in client.history(peer)]
    finally:
        await client.close()


# =============================================================================
# Bug 1: a message sent while the server is down is queued, and arrives once
# =============================================================================


def test_send_while_server_is_down_is_queued_and_arrives_once(up: World) -> None:
    alice = up.home("alice")
    assert cli("room", "create", "ops", home=alice).returncode == 0
    assert cli("room", "invite", "ops", "bob", home=alice).returncode == 0
    up.srv.stop()
    try:
        one = cli("send", "carol", "queued one-to-one", home=alice)  # carol: a new contact
        assert one.returncode == QUEUED, (one.stdout, one.stderr)
        assert "queued" in one.stdout and "will send when the server is reachable" in one.stdout
        room = cli("room", "send", "ops", "queued in the room", home=alice)
        assert room.returncode == QUEUED, (room.stdout, room.stderr)
        assert "will send when the server is reachable" in room.stdout
    finally:
        up.srv.start()
    # Any command that connects sends them (here one that has nothing to do with it).
    flushed = cli("room", "list", home=alice)
    assert flushed.returncode == 0, flushed.stderr
    assert "sent 2 messages queued earlier" in flushed.stderr
    again = cli("room", "list", home=alice)
    assert "queued earlier" not in again.stderr
    assert asyncio.run(_texts(up.home("carol"), "alice")) == ["queued one-to-one"]
    assert asyncio.run(_texts(up.home("bob"), "#ops")).count("queued in the room") == 1


# =============================================================================
# Bug 2: no tracebacks; one or two plain lines and a non-zero exit code
# =============================================================================


def test_account_create_without_a_server_or_with_an_http_url(up: World, tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    down = plain_failure(cli("account", "create", "erin", "--server", f"ws://127.0.0.1:{port}",
                             home=tmp_path / "erin"))
    assert "cannot reach the server" in down and "connection refused" in down
    assert not (tmp_path / "erin" / "store.sqlite3").exists()
    http = plain_failure(cli("account", "create", "erin", "--server", up.srv.http_url,
                             home=tmp_path / "erin"))
    assert f"did you mean ws://127.0.0.1:{up.srv.port}" in http
    # A URL that only looks right: a port out of range, a broken host, a password in it.
    for url, said in [
        ("ws://127.0.0.1:99999", "is not ws://HOST:PORT (a port is 1-65535)"),
        ("ws://[::1", "is not ws://HOST:PORT"),
        (f"ws://:{up.srv.port}", "has no host"),
        (f"ws://erin:CANARY-pw-71c3@127.0.0.1:{up.srv.port}", "must not hold a user name"),
    ]:
        wrong = plain_failure(cli("account", "create", "erin", "--server", url,
                                  home=tmp_path / "erin"))
        assert said in wrong and "CANARY" not in wrong, wrong
        assert not (tmp_path / "erin" / "store.sqlite3").exists()
    # (TLS on one side only is worded by connection.describe_failure; see its unit test.)


def test_server_on_a_busy_port_or_a_data_dir_in_use_refuses(up: World, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "sottovoce", "server", "--host", "127.0.0.1"]
    # No --log-file: the server logs to stderr, and the mistake must still be all it says.
    busy = subprocess.run(
        [*base, "--port", str(up.srv.port), "--data-dir", str(tmp_path / "other")],
        env=_env(None), capture_output=True, text=True, timeout=60, check=False,
    )
    assert "already in use" in plain_failure(busy)
    second = subprocess.run(
        [*base, "--port", str(free_port()), "--data-dir", str(up.srv.data_dir)],
        env=_env(None), capture_output=True, text=True, timeout=60, check=False,
    )
    assert "another sottovoce server is already running" in plain_failure(second)
    assert up.srv.health()["status"] == "ok"  # the first one is untouched


def test_server_with_wrong_tls_files_says_which(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "sottovoce", "server", "--host", "127.0.0.1", "--port",
            str(free_port()), "--data-dir", str(tmp_path / "srv")]
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("not a certificate\n")
    for cert, key, said in [
        (tmp_path / "missing.pem", tmp_path / "missing.key", "No such file or directory"),
        (not_pem, not_pem, "not a PEM certificate chain and its private key"),
    ]:
        done = subprocess.run([*base, "--tls-cert", str(cert), "--tls-key", str(key)],
                              env=_env(None), capture_output=True, text=True, timeout=60,
                              check=False, stdin=subprocess.DEVNULL)
        wrong = plain_failure(done)
        assert f"cannot load TLS certificate {cert} with key {key}" in wrong and said in wrong


def test_server_with_a_log_file_it_cannot_write_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sottovoce", "server", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(tmp_path / "srv"), "--log-file", str(tmp_path)],  # a directory
        env=_env(None), capture_output=True, text=True, timeout=60, check=False,
        stdin=subprocess.DEVNULL,
    )
    assert f"cannot write the log file {tmp_path}: Is a directory" in plain_failure(done)


def test_a_server_that_lost_the_account_is_explained(tmp_path: Path) -> None:
    """The same address, a server started on other data: what happened, and what to do."""
    first = ServerProcess(tmp_path / "first").start()
    try:
        async def make() -> None:
            client = await Client.create_account(
                first.url, "hana", tmp_path / "hana", PASSPHRASE, kdf=TEST_KDF)
            await client.close()

        asyncio.run(make())
    finally:
        first.stop()
    other = ServerProcess(tmp_path / "other", port=first.port).start()
    try:
        said = plain_failure(cli("room", "list", home=tmp_path / "hana"))
        assert "the server does not accept this device" in said
        assert "make the account again" in said
    finally:
        other.stop()


def test_witness_against_a_stopped_server_says_why_in_words(tmp_path: Path) -> None:
    key = str(tmp_path / "witness.key")
    down = cli("kt", "witness", "--server", f"http://127.0.0.1:{free_port()}", "--key", key,
               "--audit", passphrase=None)
    assert "connection refused" in plain_failure(down)  # not httpx's class name
    bad = cli("kt", "witness", "--server", "http://127.0.0.1:99999", "--key", key, "--audit",
              passphrase=None)
    assert "(a port is 1-65535)" in plain_failure(bad)


def test_audit_against_a_stopped_server_is_one_plain_error(tmp_path: Path) -> None:
    done = cli("audit", "blindness", "--server", f"ws://127.0.0.1:{free_port()}",
               "--data", str(tmp_path), passphrase=None)
    assert "cannot reach the server" in plain_failure(done)


def test_mistakes_are_plain_errors(up: World, tmp_path: Path) -> None:
    alice = up.home("alice")
    assert cli("room", "create", "ops2", home=alice).returncode == 0
    cases: list[tuple[Sequence[str], Path | None, str | None, str]] = [
        (["send", "nobody", "hi"], alice, PASSPHRASE, "no user 'nobody'"),
        (["verify", "nobody"], alice, PASSPHRASE, "no user 'nobody'"),
        (["room", "send", "no-such-room", "hi"], alice, PASSPHRASE, "no room 'no-such-room'"),
        (["room", "invite", "ops2", "nobody"], alice, PASSPHRASE, "no user 'nobody'"),
        (["send", "bob", "hi"], alice, "not the passphrase", "wrong passphrase"),
        (["send", "bob", "hi"], tmp_path / "missing", PASSPHRASE, "no account in"),
        (["send", "bob", "hi"], alice, None, "no passphrase"),
        (["room", "join", "not a token"], alice, PASSPHRASE, "token"),
        (["send", "Bob!", "hi"], alice, PASSPHRASE, "username must be"),
    ]
    for args, home, passphrase, expected in cases:
        said = plain_failure(cli(*args, home=home, passphrase=passphrase))
        assert expected in said, (args, said)


def test_usage_mistakes_are_two_lines_naming_the_help(tmp_path: Path) -> None:
    """A mistyped command line: what is wrong and which --help to read, not the usage
    block (which runs to five lines for some commands), and exit code 2."""
    cases = [
        (("room", "set", "team", "--recorder", "maybe"), "sottovoce room set",
         "invalid choice: 'maybe'"),
        (("send",), "sottovoce send", "required: NAME"),
        (("sendd", "bob", "hi"), "sottovoce", "invalid choice: 'sendd'"),
        (("kt",), "sottovoce kt", "required: KT_COMMAND"),
        (("account", "create", "erin", "--bogus"), "sottovoce", "unrecognized arguments"),
    ]
    for args, prog, expected in cases:
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 2 and "Traceback" not in done.stderr, done.stderr
        assert lines[0].startswith(f"{prog}: error: ") and expected in lines[0], done.stderr
        assert lines[1] == f"'{prog} --help' shows the options and an example", done.stderr
    # The README puts '--' before a join token: an option typed after it is explained.
    late = cli("room", "join", "--name", "x", "--", "Zk3Q", "--data-dir", str(tmp_path))
    assert late.returncode == 2 and late.stderr.splitlines() == [
        f"sottovoce: error: unrecognized arguments: --data-dir {tmp_path}",
        "after '--' every word is an argument, not an option: put options before '--'",
    ], late.stderr
    early = cli("room", "join", "--bogus", "--", "Zk3Q")  # the mistake is not after '--'
    assert early.stderr.splitlines()[1] == "'sottovoce --help' shows the options and an example"
    # A server option checked after parsing: one plain line, in words an operator reads.
    port = plain_failure(cli("server", "--port", "eighty", "--data-dir", str(tmp_path / "s")))
    assert "--port: bad value for port: 'eighty' is not a whole number" in port


def test_debug_shows_the_traceback_without_secrets_or_message_text(up: World) -> None:
    text, secret = "CANARY-text-5d1e9f", "CANARY-pass-8b2c4a"
    shown = cli("--debug", "send", "nobody", text, home=up.home("alice"))
    assert shown.returncode == 1
    assert "Traceback" in shown.stderr and "no user 'nobody'" in shown.stderr
    assert text not in shown.stderr and text not in shown.stdout
    wrong = cli("send", "bob", text, "--debug", home=up.home("alice"), passphrase=secret)
    assert wrong.returncode == 1 and "Traceback" in wrong.stderr
    for out in (wrong.stderr, wrong.stdout):
        assert secret not in out and text not in out
    assert "wrong passphrase" in wrong.stderr


# =============================================================================
# Bug 3: rooms as an invitee sees them
# =============================================================================


def test_invitee_is_told_who_invited_it_and_sees_the_room_by_name(up: World) -> None:
    alice, bob = up.home("alice"), up.home("bob")
    assert cli("room", "create", "team", home=alice).returncode == 0
    invited = cli("room", "invite", "team", "bob", home=alice)
    assert invited.returncode == 0 and "invited bob" in invited.stdout
    # The README's line, as the invitee's first command after the invitation.
    audit = cli("room", "audit", "team", home=bob)
    assert audit.returncode == 0, audit.stderr
    assert re.search(r"✓ \d+ entries verified", audit.stdout)
    assert "alice invited you to the room 'team'" in audit.stderr
    # Its "open it with:" command works when pasted (it reaches the chat, which needs a tty).
    opener = next(x for x in audit.stderr.splitlines() if "invited you to the room 'team'" in x)
    assert_pastes_to_chat(opener.split("open it with: ", 1)[1], bob)
    listed = cli("room", "list", home=bob)
    assert listed.returncode == 0, listed.stderr
    (line,) = [row for row in listed.stdout.splitlines() if row.startswith("team ")]
    (room_id,) = re.findall(r"room:[0-9a-f]{32}", line)
    assert listed.stdout.count(room_id) == 1  # each room once, its id once
    history = cli("room", "history", "#team", home=bob)
    assert "alice invited you to 'team'" in history.stdout


def test_join_name_is_kept_on_a_rejoin(up: World) -> None:
    alice, dave = up.home("alice"), up.home("dave")
    assert cli("room", "create", "club", home=alice).returncode == 0
    made = cli("room", "token", "club", home=alice).stdout
    token = made.splitlines()[1].strip()
    # The line for the invitee works when pasted, even for a token that starts with "-".
    hint = made.splitlines()[2].removeprefix("they join with: ")
    assert hint == f"sottovoce room join --name NAME -- {token}", made
    pasted = shlex.split(hint.replace("NAME", "readers"))[1:]
    pasted[-2:-2] = ["--data-dir", str(dave)]  # dave's account is not in the default place
    first = cli(*pasted)
    assert first.returncode == 0 and "joined room 'readers'" in first.stdout, first.stderr
    assert cli("room", "remove", "club", "dave", home=alice).returncode == 0
    token = cli("room", "token", "club", "--rotate", home=alice).stdout.splitlines()[1].strip()
    again = cli("room", "join", "--name", "writers", "--data-dir", str(dave), "--", token)
    assert again.returncode == 0, again.stderr
    assert "joined room 'writers'" in again.stdout
    listed = cli("room", "list", "--offline", home=dave).stdout
    # This device's own name for the room: rooms share no name (the server would see it).
    assert listed.startswith("writers ") and "readers" not in listed and "club" not in listed


def test_one_name_names_one_room(up: World) -> None:
    """`room create` refuses a name this device already uses (or one that reads as an id);
    a room it was removed from gives its name up to a new one."""
    alice, bob = up.home("alice"), up.home("bob")
    assert cli("room", "create", "twice", home=alice).returncode == 0
    again = plain_failure(cli("room", "create", "twice", home=alice))
    assert "you already have a room called 'twice'" in again
    assert "cannot start with 'room:'" in plain_failure(cli("room", "create", "room:x",
                                                           home=alice))
    assert cli("room", "invite", "twice", "bob", home=alice).returncode == 0
    assert cli("room", "promote", "twice", "bob", home=alice).returncode == 0  # admins remove
    assert cli("room", "remove", "twice", "alice", home=bob).returncode == 0
    assert cli("room", "create", "twice", home=alice).returncode == 0
    sent = cli("room", "send", "twice", "to the new one", home=alice)
    assert sent.returncode == 0, sent.stderr


def test_a_room_named_like_a_user_does_not_hide_the_person(up: World) -> None:
    alice = up.home("alice")
    assert cli("room", "create", "bob", home=alice).returncode == 0
    ambiguous = plain_failure(cli("chat", "bob", home=alice))
    assert "both a user and one of your rooms" in ambiguous
    assert "chat @bob" in ambiguous and "'#bob'" in ambiguous
    # The explicit forms pass the name check (and then need a terminal, which we lack).
    for target in ("@bob", "#bob"):
        assert "needs a terminal" in plain_failure(cli("chat", target, home=alice))
    # `history` takes the same forms: '#bob' is the room, whose history it points to.
    room = plain_failure(cli("history", "#bob", home=alice))
    suggested = room.split("#bob is a room: ", 1)[1].strip()
    pasted = subprocess.run(["bash", "-c", suggested], env=_env(), capture_output=True,
                            text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert pasted.returncode == 0, (suggested, pasted.stderr)
    person = cli("history", "@bob", home=alice)
    assert person.returncode == 0 and "with @bob" not in person.stdout, person.stdout
    nobody = plain_failure(cli("chat", "nobody", home=alice))
    assert "no user 'nobody'" in nobody
    assert "no room 'nothing'" in plain_failure(cli("chat", "#nothing", home=alice))


# =============================================================================
# Bug 4: listen, passphrases, verify, the server banner
# =============================================================================


class Lines:
    """A process's stdout, read by a thread, so a wait for a line can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self._queue.put(line)
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if needle in line:
                return line
        raise AssertionError(f"{needle!r} not in the output: {self.seen}")


def test_listen_shows_rooms_invitations_and_when_it_is_offline(up: World) -> None:
    carol, alice = up.home("carol"), up.home("alice")
    listener = subprocess.Popen(
        [sys.executable, "-u", "-m", "sottovoce", "listen", "--data-dir", str(carol)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )
    lines = Lines(listener)
    try:
        lines.wait_for("● connected")
        assert cli("room", "create", "garden", home=alice).returncode == 0
        assert cli("room", "invite", "garden", "carol", home=alice).returncode == 0
        lines.wait_for("alice invited you to the room 'garden'")
        assert cli("room", "send", "garden", "tulips today", home=alice).returncode == 0
        assert "alice: tulips today" in lines.wait_for("#garden ")
        up.srv.stop()
        lines.wait_for("○ offline")
        up.srv.start()
        lines.wait_for("● connected")
    finally:
        listener.send_signal(2)
        _, err = listener.communicate(timeout=20)
    assert listener.returncode == 0, err
    assert "Traceback" not in err


def test_one_account_in_two_processes_is_refused_plainly(up: World) -> None:
    """The same data directory twice on the client side: the second command says so."""
    dave = up.home("dave")
    listener = subprocess.Popen(
        [sys.executable, "-u", "-m", "sottovoce", "listen", "--data-dir", str(dave)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        Lines(listener).wait_for("● connected")
        second = plain_failure(cli("send", "bob", "while listening", home=dave))
        assert "this account is open in another sottovoce process" in second
    finally:
        listener.send_signal(2)
        listener.communicate(timeout=20)
    assert listener.returncode == 0


def test_account_creation_refuses_weak_passphrases_and_checks_before_asking(
    up: World, tmp_path: Path
) -> None:
    home = tmp_path / "frank"
    for weak in ("1234567", "password", "xxxxxxxxxx"):
        said = plain_failure(
            cli("account", "create", "frank", "--server", up.srv.url, home=home, passphrase=weak)
        )
        assert "passphrase" in said
        assert not (home / "store.sqlite3").exists()
    # An existing account is reported before any passphrase is asked for (none is given).
    exists = plain_failure(cli("account", "create", "frank2", "--server", up.srv.url,
                               home=up.home("alice"), passphrase=None))
    assert "already an account" in exists
    missing = plain_failure(cli("listen", home=tmp_path / "nowhere", passphrase=None))
    assert "no account in" in missing
    # A --data-dir that cannot be a directory is said before any passphrase, too.
    (tmp_path / "a-file").write_text("")
    why = f"{tmp_path / 'a-file'} is a file, not a directory"
    for where in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
        said = plain_failure(cli("account", "create", "frank3", "--server", up.srv.url,
                                 home=where, passphrase=None))
        assert f"cannot use {where} as the account's data directory: {why}" in said


def test_verify_no_qr_does_not_mention_a_qr_code(up: World) -> None:
    done = cli("verify", "bob", "--no-qr", home=up.home("alice"))
    assert done.returncode == 0, done.stderr
    assert "QR" not in done.stdout and "scan" not in done.stdout
    assert len(re.findall(r"^\d{5}(?: \d{5}){3}$", done.stdout, flags=re.M)) == 3


def test_verify_marks_and_unmarks_a_contact(up: World) -> None:
    alice = up.home("alice")
    assert "bob is not marked verified" in cli("verify", "bob", "--no-qr", home=alice).stdout
    marked = cli("verify", "bob", "--no-qr", "--mark", home=alice)
    assert marked.returncode == 0, marked.stderr
    assert "bob is marked verified on this device" in marked.stdout
    kept = cli("verify", "bob", "--no-qr", home=alice)  # kept with the pinned key
    assert "bob is marked verified on this device" in kept.stdout
    said = plain_failure(cli("verify", "bob", "--mark", "--unmark", home=alice))
    assert "give --mark or --unmark, not both" in said
    cleared = cli("verify", "bob", "--no-qr", "--unmark", home=alice)
    assert "bob is not marked verified" in cleared.stdout


def test_server_banner_commands_work_when_pasted(tmp_path: Path) -> None:
    program = Path(sys.executable).with_name("sottovoce")
    launcher = [str(program)] if program.exists() else [sys.executable, "-m", "sottovoce"]
    port = free_port()
    proc = subprocess.Popen(
        [*launcher, "server", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp_path / "srv"), "--log-file", str(tmp_path / "srv.log")],
        env=_env(None), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        lines = Lines(proc)
        lines.wait_for("as bob")
        commands = [line.strip() for line in lines.seen if "--data-dir" in line]
        assert len(commands) == 4, lines.seen
        create = commands[0].split("#")[0].strip()
        assert create.split()[0] != "sottovoce" or shutil.which("sottovoce")
        # Pasted into a shell whose home is tmp_path: the account appears where it says.
        pasted = subprocess.run(
            ["bash", "-c", create], env=_env("a long test passphrase", HOME=str(tmp_path)),
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert pasted.returncode == 0, (create, pasted.stderr)
        assert (tmp_path / ".sottovoce-alice" / "store.sqlite3").exists()
    finally:
        proc.send_signal(2)
        proc.wait(timeout=20)



def assert_pastes_to_chat(command: str, home: Path) -> None:
    """``command`` (a suggested ``chat``) names a program a shell finds and ``home``'s
    account: pasted, it gets as far as asking for a terminal (it has none here)."""
    program = command.split()[0]
    assert program != "sottovoce" or shutil.which("sottovoce"), command
    assert f"--data-dir {home}" in command, command
    done = subprocess.run(["bash", "-c", command], env=_env(), capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert "needs a terminal" in plain_failure(done), command


def test_next_hints_work_when_pasted(up: World, tmp_path: Path) -> None:
    """The "next:" lines name the program and the data directory as they can be pasted."""
    home = tmp_path / "gina"
    made = cli("account", "create", "gina", "--server", up.srv.url, home=home)
    assert made.returncode == 0, made.stderr
    hint = next(line for line in made.stdout.splitlines() if line.startswith("next: "))
    send = hint.removeprefix("next: ").split(", ")[0]
    assert send.split()[0] != "sottovoce" or shutil.which("sottovoce"), hint
    pasted = send.replace("NAME", "bob").replace("TEXT", "'hello from a hint'")
    done = subprocess.run(["bash", "-c", pasted], env=_env(), capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (pasted, done.stderr)
    # bob's next command says who wrote, with a command that opens the chat when pasted.
    told = cli("room", "list", home=up.home("bob"))
    unread = next(x for x in told.stderr.splitlines() if "new message from gina" in x)
    assert_pastes_to_chat(re.sub(r"^.*\((.*) shows it\)$", r"\1", unread), up.home("bob"))
    assert "hello from a hint" in asyncio.run(_texts(up.home("bob"), "gina"))
    room = cli("room", "create", "hinted", home=home)
    assert room.returncode == 0, room.stderr
    hint = next(line for line in room.stdout.splitlines() if line.startswith("next: "))
    invite = hint.removeprefix("next: ").split(", ")[0].replace("USER", "bob")
    done = subprocess.run(["bash", "-c", invite], env=_env(), capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (invite, done.stderr)

# =============================================================================
# Bug 6: help text claims nothing that is not there
# =============================================================================


def test_every_help_text_renders_and_claims_nothing_unbuilt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    from sottovoce.cli.main import build_parser

    # Some examples name the program as it can be pasted: make it the installed script.
    monkeypatch.setattr(sys, "argv", [str(Path(sys.executable).with_name("sottovoce"))])

    def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from walk(child)

    texts = [p.format_help() for p in walk(build_parser())]
    assert len(texts) > 15
    for text in texts:
        lowered = text.lower()
        # Device linking is built (tests/integration/test_link.py runs every command it
        # names); the help must still point at nothing outside the repository.
        # (spelt in two parts so that the repository-wide grep for them stays empty)
        for claim in ("design " + "§", "issue " + "#"):
            assert claim not in lowered, (claim, text)
        assert "once the sdk" not in lowered, text
        assert "--debug" in text
    # Every command and command group shows a worked example (the top level points at them).
    for text in texts[1:]:
        assert re.search(r"\nexamples?:\n  \S*sottovoce ", text), text


# =============================================================================
# The chat screen in a real terminal: Ctrl-C, hostile text, passphrase prompts
# =============================================================================

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@needs_tmux
async def test_chat_leaves_on_ctrl_c_and_shows_hostile_text_literally(up: World) -> None:
    from tests.integration.test_tui import Tmux

    bob = await Client.open(up.home("bob"), PASSPHRASE)
    await bob.connect(timeout=15)
    hostile = "[bold]B[/bold] [@click=app.quit]q[/] \x1b]0;pwned\x07 \u202eevil"
    await bob.wait_sent(await bob.send_text("carol", hostile))
    await bob.close()
    tmux = Tmux()
    try:
        tmux.start(
            f"env -u COLUMNS -u LINES SOTTOVOCE_PASSPHRASE='{PASSPHRASE}' {sys.executable} "
            f"-m sottovoce chat bob --data-dir {up.home('carol')}; echo EXIT=$?; sleep 60"
        )
        screen = await tmux.wait_for("· connected")
        screen = await tmux.wait_for("[bold]B[/bold]")
        assert "[@click=app.quit]q[/]" in screen and "\\x1b]0;pwned\\x07" in screen
        assert "\\u202eevil" in screen
        tmux.keys("C-c")
        await tmux.wait_for("EXIT=0")
    finally:
        tmux.kill()


@needs_tmux
async def test_wrong_passphrase_at_a_terminal_is_asked_again(up: World) -> None:
    from tests.integration.test_tui import Tmux

    tmux = Tmux()
    try:
        tmux.start(
            f"env -u SOTTOVOCE_PASSPHRASE {sys.executable} -m sottovoce room list --offline "
            f"--data-dir {up.home('dave')}; echo EXIT=$?; sleep 60"
        )
        await tmux.wait_for("Passphrase for")
        tmux.keys("not it", "Enter")
        await tmux.wait_for("wrong passphrase; try again")
        tmux.keys(PASSPHRASE, "Enter")
        await tmux.wait_for("EXIT=0")
        tmux.kill()
        tmux = Tmux()
        tmux.start(
            f"env -u SOTTOVOCE_PASSPHRASE {sys.executable} -m sottovoce room list --offline "
            f"--data-dir {up.home('dave')}; echo EXIT=$?; sleep 60"
        )
        for _ in range(3):
            await tmux.wait_for("Passphrase for")
            tmux.keys("still not it", "Enter")
            await asyncio.sleep(0.3)
        screen = await tmux.wait_for("EXIT=1")
        # The message names the data directory, so it may wrap at the terminal's width.
        unwrapped = screen.replace("\n", "")
        assert "(3 tries)" in unwrapped and "Traceback" not in unwrapped
    finally:
        tmux.kill()
