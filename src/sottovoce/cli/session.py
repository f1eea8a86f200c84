"""One account session for a command: data directory, passphrase, open, connect, close.

Every client command runs its one domain call inside :func:`with_client`::

    data dir ──► holds an account? (else say so, before any passphrase)
             ──► passphrase (--passphrase-file, $SOTTOVOCE_PASSPHRASE, or a prompt:
                 three tries at a terminal) ──► Client.load
             ──► connect (fail fast, saying why) ──► work(client)
             ──► queued messages acknowledged? ──► notices ──► close

Errors leave as :class:`CliError` (a :class:`~sottovoce.errors.UsageError`)
with one or two lines that say what happened and what to do; ``main`` prints
them, and a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import platformdirs

from sottovoce.cli import render
from sottovoce.cli.options import ENV_HOME, ENV_PASSPHRASE
from sottovoce.cli.passphrase_strength import MIN_PASSPHRASE_CHARS, weak_passphrase
from sottovoce.cli.program import command_name, dir_flag
from sottovoce.errors import SottovoceError, UsageError

if TYPE_CHECKING:
    from sottovoce.client import Client

DEFAULT_SERVER = "ws://127.0.0.1:8765"
#: Passphrase prompts at a terminal before giving up.
PASSPHRASE_TRIES = 3
#: How long a command waits, before it closes, for queued messages to be acknowledged.
DRAIN_TIMEOUT_S = 10.0

T = TypeVar("T")


class CliError(UsageError):
    """A command failed for a reason the person can act on; the message says how."""

    code = "cli_error"


# =============================================================================
# Where the account lives, and its passphrase
# =============================================================================


def default_data_dir() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("sottovoce", appauthor=False)) / "client"


def data_dir(args: argparse.Namespace) -> Path:
    given: str | None = getattr(args, "data_dir", None)
    return Path(given).expanduser() if given else default_data_dir()


def require_account(root: Path) -> None:
    """Before any passphrase is asked: is there an account in ``root`` at all?"""
    from sottovoce.client.store import Store

    if not Store.exists(root):
        raise CliError(
            f"no account in {root}\n"
            "create one with: sottovoce account create NAME --data-dir DIR "
            f"(or point --data-dir / ${ENV_HOME} at an existing one)"
        )


def new_account_dir(args: argparse.Namespace, *, hint: str) -> Path:
    """The data directory a new account (or device) goes into, refused if it holds an
    account already; ``hint`` says where to put the new one instead."""
    from sottovoce.client.store import Store

    root = data_dir(args)
    if Store.exists(root):
        raise CliError(f"there is already an account in {root}\n{hint}")
    return root


def remember_secret(args: argparse.Namespace, value: str) -> None:
    """Keep ``value`` out of anything printed on failure (``--debug`` tracebacks too)."""
    if value:
        secrets: list[str] = getattr(args, "secrets", [])
        secrets.append(value)
        args.secrets = secrets


def given_passphrase(args: argparse.Namespace) -> tuple[str, str] | None:
    """The passphrase from --passphrase-file or the environment, with where it came from."""
    return passphrase_given(args, getattr(args, "passphrase_file", None),
                            "--passphrase-file", ENV_PASSPHRASE)


def passphrase_given(
    args: argparse.Namespace, path: str | None, flag: str, env_name: str
) -> tuple[str, str] | None:
    """The passphrase in the file ``path`` (given with ``flag``; one trailing newline
    dropped), else in the environment variable ``env_name``, with where it came from;
    None when neither is given. Either way it is kept out of every message."""
    if path:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read the passphrase file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CliError(f"the passphrase file {path} is not UTF-8 text") from None
        value = text.rstrip("\r\n")
        remember_secret(args, value)
        return value, f"{flag} {path}"
    env = os.environ.get(env_name)
    if env:
        remember_secret(args, env)
        return env, f"${env_name}"
    return None


def prompt_secret(args: argparse.Namespace, prompt: str) -> str:
    try:
        value = getpass.getpass(prompt)
    except EOFError:
        raise CliError("no passphrase given") from None
    remember_secret(args, value)
    return value


def no_terminal() -> CliError:
    return CliError(
        f"no passphrase: use --passphrase-file FILE or ${ENV_PASSPHRASE}, or run in a terminal"
    )


def new_passphrase(
    args: argparse.Namespace,
    username: str,
    *,
    source: Callable[[argparse.Namespace], tuple[str, str] | None] = given_passphrase,
    what: str = "Passphrase for the local store",
) -> str:
    """A new passphrase (from ``source``, else asked twice at a terminal), refused if weak."""
    given = source(args)
    if given is not None:
        why = weak_passphrase(given[0], username)
        if why is not None:
            raise CliError(f"{why} (from {given[1]})")
        return given[0]
    if not sys.stdin.isatty():
        raise no_terminal()
    for attempt in range(1, PASSPHRASE_TRIES + 1):
        first = prompt_secret(args, f"{what} ({MIN_PASSPHRASE_CHARS} or more characters): ")
        why = weak_passphrase(first, username)
        if why is None:
            if prompt_secret(args, "Repeat the passphrase: ") == first:
                return first
            why = "the passphrases differ"
        if attempt == PASSPHRASE_TRIES:
            raise CliError(why)
        print(f"{why}; try again", file=sys.stderr)
    raise CliError("no passphrase given")  # pragma: no cover - the loop returns or raises


def unlock(args: argparse.Namespace) -> Client:
    """Open the account of ``args``; from then on an error can name its server."""
    client = _load(args)
    args.server_url = client.identity.server_url
    return client


def _load(args: argparse.Namespace) -> Client:
    """The account of ``args`` (three prompts at a terminal; one try otherwise)."""
    from sottovoce.client import Client

    root = data_dir(args)
    require_account(root)
    return open_with_passphrase(args, root, lambda passphrase: Client.load(root, passphrase))[0]


def open_with_passphrase(
    args: argparse.Namespace,
    root: Path,
    opener: Callable[[str], T],
    *,
    prompt: str = "Passphrase",
    after: str = "",
) -> tuple[T, str]:
    """``opener`` of the passphrase given (one try) or typed at a terminal (three tries),
    and that passphrase. A wrong one ends in a :class:`CliError` that says where it came
    from, followed by ``after``."""
    from sottovoce.client import WrongPassphrase

    given = given_passphrase(args)
    if given is not None:
        try:
            return opener(given[0]), given[0]
        except WrongPassphrase:
            raise CliError(
                f"wrong passphrase for the account in {root} (from {given[1]}){after}"
            ) from None
    if not sys.stdin.isatty():
        raise no_terminal()
    for attempt in range(1, PASSPHRASE_TRIES + 1):
        typed = prompt_secret(args, f"{prompt} for {root}: ")
        try:
            if typed:
                return opener(typed), typed
        except WrongPassphrase:
            pass
        if attempt < PASSPHRASE_TRIES:
            print("wrong passphrase; try again", file=sys.stderr)
    raise CliError(
        f"wrong passphrase for the account in {root} ({PASSPHRASE_TRIES} tries){after}"
    )


# =============================================================================
# Connecting, and what an error means to a person
# =============================================================================


class Connect(enum.Enum):
    NO = "no"  # local store only
    TRY = "try"  # connect if the server is up; the command works offline too
    REQUIRED = "required"  # the command needs the server


def unreachable(url: str, exc: SottovoceError) -> CliError:
    reason = str(exc).removeprefix("cannot reach the server: ")
    if "certificate" in reason:
        hint = "for a self-signed certificate, point SSL_CERT_FILE at it"
    else:
        hint = (
            "is it running (sottovoce server), and is the URL right: ws:// without TLS, "
            "wss:// with TLS?"
        )
    return CliError(f"cannot reach the server at {url}: {reason}\n{hint}")


def pow_notice(bits: int) -> None:
    """Say why a name check or registration takes a while: the server asks for more
    proof of work than usual (it sees many probes from this address or about the name)."""
    from sottovoce.client.proof_of_work import SLOW_BITS

    if bits >= SLOW_BITS:
        print(f"solving the server's proof of work ({bits} bits: about 2^{bits} hashes; "
              "it asks for more while it sees many probes)...", file=sys.stderr, flush=True)


def check_name_free(server: str, name: str, *, taken_hint: str = "choose another") -> None:
    """Before a passphrase is typed: is ``server`` there, and ``name`` still free on it?
    Each "no" is one plain error; ``taken_hint`` says what to do about a taken name."""
    from sottovoce.client import NotConnected, username_available

    try:
        free = run(username_available(server, name, on_pow=pow_notice))
    except NotConnected as exc:
        raise unreachable(server, exc) from None
    if not free:
        raise CliError(f"the name '{name}' is taken on {server}: {taken_hint}")


#: Refusals whose fix is a command: what happened, then what to run.
_FIXES = {
    "auth_failed": (
        "the server does not accept this device: it was revoked, its account was deleted, "
        "or the server at this address is not the one it was made on (other data?)\n"
        "if the server lost its data, make the account again (account create, a new --data-dir)"
    ),
    "certificate_expired": (
        "this device's certificate has expired (it was not used for a long time)\n"
        "fix: sottovoce device renew (add this command's --data-dir), then try again"
    ),
    "stale_account_key": (
        "this device holds an account key that no longer rules the account (another device "
        "replaced it, or someone holding a stolen copy did)\n"
        "fix: if that was not you, sottovoce account recover --code YOUR-RECOVERY-CODE"
    ),
    "account_forked": (
        "the account key was succeeded twice (a stolen device racing you): nothing signed by "
        "an account key counts until the recovery code settles it\n"
        "fix: sottovoce account recover --code YOUR-RECOVERY-CODE"
    ),
}


def explain(exc: SottovoceError, args: argparse.Namespace) -> str:
    """The message ``main`` prints for ``exc`` (one or two lines, nothing secret)."""
    from sottovoce.client import NotConnected, ServerError
    from sottovoce.client.connection import BadServerUrl

    name = getattr(args, "user", None) or getattr(args, "name", None)
    server = getattr(args, "server_url", None) or getattr(args, "server", None)
    if isinstance(exc, BadServerUrl) and exc.problem:
        return f"{exc}: got '{exc.url}'" if exc.url else str(exc)
    if isinstance(exc, BadServerUrl):
        hint = exc.url.replace("https://", "wss://").replace("http://", "ws://")
        if "://" not in hint:
            hint = f"ws://{hint}"
        if hint.rstrip("/") in ("ws:", "wss:", "ws://", "wss://") or hint == exc.url:
            return f"{exc}, then HOST:PORT: got '{exc.url}' (e.g. {DEFAULT_SERVER})"
        return f"{exc}: got '{exc.url}'; did you mean {hint}?"
    if isinstance(exc, NotConnected) and server:
        return str(unreachable(server, exc))
    if isinstance(exc, ServerError):
        where = f" on {server}" if server else ""
        if exc.code == "unknown_user" and isinstance(name, str):
            return f"no user '{name}'{where} (check the spelling)"
        if exc.code == "username_taken" and isinstance(name, str):
            return f"the name '{name}' is taken{where}: choose another"
        if exc.code in _FIXES:
            return _FIXES[exc.code]
        said = str(exc).removeprefix(f"server error {exc.code}: ")
        return f"the server refused: {exc.code} ({said})"
    return str(exc)


def run(coro: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def with_client(
    args: argparse.Namespace,
    work: Callable[[Client], Awaitable[T]],
    *,
    connect: Connect = Connect.REQUIRED,
    notices: bool = True,
    alerts: bool = True,
) -> T:
    """Open the account, connect as asked, run ``work``, and always close.

    On the way out, messages queued earlier (offline sends) that went out on this
    connection are awaited briefly, and invitations that arrived are mentioned
    (``notices``; off for commands that show events themselves). Key-transparency
    alerts not yet acknowledged are printed to stderr, even after a failure
    (``alerts``; off for the ``kt`` commands, which show them themselves).
    """
    client = unlock(args)
    return run(_session(client, args, work, connect, notices, alerts))


async def _session(
    client: Client,
    args: argparse.Namespace,
    work: Callable[[Client], Awaitable[T]],
    connect: Connect,
    notices: bool,
    alerts: bool = True,
) -> T:
    from sottovoce.client import NotConnected
    from sottovoce.client.connection import TransportClosed

    events = client.events() if notices else None
    try:
        queued = client.pending_sends()
        if connect is not Connect.NO:
            try:
                await client.connect(timeout=getattr(args, "timeout", 15.0), fail_fast=True)
            except NotConnected as exc:
                if connect is Connect.REQUIRED:
                    raise unreachable(client.identity.server_url, exc) from None
        result = await work(client)
        if client.connected and not client.closed:
            # A device linked or revoked while this one was offline: told below (or on a
            # later run; a KT alert is stored and shown below).
            with contextlib.suppress(SottovoceError, TransportClosed, TimeoutError):
                await asyncio.wait_for(client.refresh_own_devices(again=False), 10)
        if queued and client.connected:
            left = await client.drain_outbox(DRAIN_TIMEOUT_S)
            if left < queued:
                print(render.flushed(queued - left), file=sys.stderr)
            if left:
                print(render.still_queued(left), file=sys.stderr)
        if events is not None:
            labels = {room.room_id: room.label for room in client.rooms.all()}
            hint = (command_name(), dir_flag(args))
            for line in render.notices(events.pending(), client.username, labels, *hint):
                print(line, file=sys.stderr)
        return result
    finally:
        if events is not None:
            events.close()
        if alerts and not client.closed:  # a deleted account's client closed itself
            for line in render.kt_alerts(client.kt.alerts(), command_name()):
                print(line, file=sys.stderr)
            for line in render.kt_witness_warning(client.kt.witness_policy, command_name()):
                print(line, file=sys.stderr)
        if not client.closed:
            show_device_notices(client)
        await client.close()


def show_device_notices(client: Client) -> None:
    """Print the changes of this account's devices not shown yet (a device linked or
    revoked, also while this one was offline) to stderr, once: then they are seen."""
    from sottovoce.client.device_notices import DeviceNotices
    from sottovoce.client.linking import DeviceNames

    store = client.linking().store
    notices = DeviceNotices(store, client.device_id)
    pending = notices.pending()
    if pending:
        for line in render.device_notices(pending, DeviceNames(store).all(), command_name()):
            print(line, file=sys.stderr)
        notices.mark_seen()
