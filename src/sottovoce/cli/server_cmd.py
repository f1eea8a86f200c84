"""`sottovoce server`: the blind relay on embedded SQLite, zero set-up (docs/single-server.md).

One server per SQLite data directory: an exclusive lock on ``server.lock`` in
it is held for the life of the process, so a second server started on the
same directory refuses at once instead of sharing the database file with the
first (two writers would each believe they own the inbox sequences).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import signal
import socket
import sys
from pathlib import Path
from typing import IO, Any

from sottovoce import __version__
from sottovoce.cli.options import Subparsers, subcommand
from sottovoce.cli.program import command_name
from sottovoce.errors import UsageError
from sottovoce.file_lock import exclusive_lock
from sottovoce.server.config import CONFIG_ENV, DEFAULT_PORT, ENV_PREFIX, OPTIONS, load_config

LOCK_FILE = "server.lock"

EXAMPLE = f"""\
  sottovoce server
      listen on ws://127.0.0.1:{DEFAULT_PORT}, data in the user data directory
  sottovoce server --port 9000 --data-dir ./relay-data --retention-days 7
  sottovoce server --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem
  SOTTOVOCE_PORT=9000 sottovoce server --config /etc/sottovoce.toml
  sottovoce server --database postgresql://sottovoce@db:5432/sottovoce --residency eu-west
      PostgreSQL storage (schema migrated at start-up; see docs/operations.md)
  sottovoce server --database postgresql://… --nats nats://nats:4222 --node-id node1
      one node of several sharing PostgreSQL and NATS (see docs/deploy.md)
  sottovoce server --turn-url turn:turn.example.org:3478 --turn-secret-file turn-secret
      hand devices short-lived credentials for this coturn, for calls (see docs/calls.md)
  sottovoce server --sfu eu=wss://sfu-eu.example.org/,ch=wss://sfu-ch.example.org/ \
      --sfu-key-file sfu-key
      room calls through these Janus SFUs (the key is their VideoRoom admin_key)

configuration: defaults < TOML file (--config or ${CONFIG_ENV}; keys are the option
names, e.g. `retention_ms = 86400000`, optionally under [server]) < environment
variables ({ENV_PREFIX}<OPTION>, e.g. {ENV_PREFIX}DATA_DIR) < command-line flags.

endpoints: WebSocket ws://HOST:PORT/v3/ws; GET /healthz (JSON); GET /metrics (Prometheus).
"""


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE",
                   help=f"TOML config file (also ${CONFIG_ENV})")
    for opt in OPTIONS:
        if opt.name == "retention_ms":
            group = p.add_mutually_exclusive_group()
            group.add_argument(opt.flag, dest=opt.name, metavar=opt.metavar, default=None,
                               help=f"{opt.help}; env {opt.env}")
            group.add_argument("--retention-days", type=float, metavar="DAYS", default=None,
                               help="the same retention in days (e.g. 7)")
            continue
        if opt.switch:
            p.add_argument(opt.flag, dest=opt.name, action="store_const", const="true",
                           default=None, help=f"{opt.help}; env {opt.env}=1")
            continue
        p.add_argument(opt.flag, dest=opt.name, metavar=opt.metavar, default=None,
                       action="append" if opt.repeat else "store",
                       help=f"{opt.help}; env {opt.env}")


def add_commands(sub: Subparsers) -> None:
    subcommand(
        sub, "server",
        help="run the relay server (embedded SQLite, no set-up)",
        description="Run the sottovoce blind relay: it stores and forwards ciphertext only.",
        example=EXAMPLE, heading="examples", func=run, options=_server_options,
    )


def run(args: argparse.Namespace) -> int:
    flags: dict[str, Any] = {opt.name: getattr(args, opt.name) for opt in OPTIONS}
    for opt in OPTIONS:
        if opt.repeat and flags[opt.name] is not None:
            flags[opt.name] = " ".join(flags[opt.name])
    if args.retention_days is not None:
        flags["retention_ms"] = int(args.retention_days * 24 * 3600 * 1000)
    config = load_config(flags, config_file=args.config)
    if config.nats is not None and config.database is None:
        # Each node would have its own SQLite file: frames stored on one node would be
        # invisible to the others' replays.
        print("sottovoce server: --nats needs --database postgresql://… (one database "
              "shared by all nodes)", file=sys.stderr)
        return 2
    lock = None if config.database is not None else lock_data_dir(Path(config.data_dir))
    try:
        check_port(config.host, config.port)
        try:
            import uvloop
        except ImportError:  # pragma: no cover - Windows
            return asyncio.run(_serve(config))
        return uvloop.run(_serve(config))
    finally:
        if lock is not None:
            lock.close()


def lock_data_dir(data_dir: Path) -> IO[bytes]:
    """Hold an exclusive lock on the data directory for the life of this process."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = exclusive_lock(data_dir / LOCK_FILE)
    except OSError as exc:
        raise UsageError(f"cannot use the data directory {data_dir}: {exc.strerror}") from None
    if handle is None:
        raise UsageError(
            f"another sottovoce server is already running on the data directory {data_dir}\n"
            "stop it first, or give this one its own --data-dir"
        )
    return handle


def cannot_listen(host: str, port: int, exc: OSError) -> UsageError:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return UsageError(
            f"cannot listen on {where}: the port is already in use (another server?)\n"
            "stop that one, or choose another port with --port"
        )
    return UsageError(f"cannot listen on {where}: {exc.strerror or exc}")


def check_port(host: str, port: int) -> None:
    """Refuse an address we cannot listen on before the server starts, so that the
    mistake is the one thing printed (not after the start-up log lines)."""
    if port == 0:
        return
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise cannot_listen(host, port, OSError(None, str(getattr(exc, "strerror", exc)))) from None
    for family, kind, proto, _, addr in found:
        with socket.socket(family, kind, proto) as probe:
            # As asyncio's create_server binds: address reuse on, IPv6 sockets IPv6 only.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(addr)
            except OSError as exc:
                raise cannot_listen(host, port, exc) from None


def banner_commands(url: str, program: str) -> str:
    """The first commands to run, as they can be pasted (absolute program, one dir each)."""
    dirs = {name: f"~/.sottovoce-{name}" for name in ("alice", "bob")}
    return (
        f"  {program} account create alice --server {url} --data-dir {dirs['alice']}\n"
        f"  {program} account create bob --server {url} --data-dir {dirs['bob']}\n"
        f"  {program} chat bob --data-dir {dirs['alice']}      # as alice\n"
        f"  {program} chat alice --data-dir {dirs['bob']}      # as bob, in a third terminal"
    )


def _storage_label(config: Any) -> str:
    if config.database is None:
        return str(Path(config.data_dir).resolve())
    from sottovoce.server.storage.postgres import redact_dsn

    return redact_dsn(config.database)


def _kt_lines(app: Any) -> str:
    """The key-transparency keys clients pin: the log key and its fingerprint."""
    if app.kt is None:
        return ""
    log_key = app.kt.signer.public
    keys = app.kt.keys()
    colocated = keys["colocated_witness"]
    return (
        f"  kt log:  {log_key.vkey()}\n"
        f"           fingerprint {log_key.fingerprint()}\n"
        + (f"  kt witness (co-located, not independent): {colocated}\n" if colocated else "")
        + "".join(f"  kt witness: {w}\n" for w in keys["witnesses"] if w != colocated)
    )


async def _serve(config: Any) -> int:
    from sottovoce.server.app import ServerApp

    # The storage writer thread needs the GIL back quickly after each fsync;
    # the default 5 ms switch interval would add up to 5 ms to every commit.
    sys.setswitchinterval(0.001)
    # Each message allocates a few short-lived, acyclic objects (parsed JSON);
    # collecting the young generation every 700 allocations costs more than it frees.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    app = ServerApp(config)
    try:
        await app.start()
    except OSError as exc:
        with contextlib.suppress(Exception):
            await app.stop()
        raise cannot_listen(config.host, config.port, exc) from None
    url = app.url
    http = url.replace("wss://", "https://").replace("ws://", "http://")
    # A server on every interface is reached locally through the loopback address.
    local = url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    print(
        f"sottovoce server {__version__} listening on {url}  (WebSocket {url}/v3/ws)\n"
        f"  data:    {_storage_label(config)}\n"
        f"  health:  {http}/healthz    metrics: {http}/metrics\n"
        + (f"  node:    {app.node_id}, fan-out over NATS\n" if config.nats else "")
        + (f"  turn:    {', '.join(config.turn_url)}\n" if config.turn_url else "")
        + (f"  sfu:     {', '.join(e.url for e in config.sfu)}\n" if config.sfu else "")
        + _kt_lines(app)
        + "next, in another terminal (Ctrl-C here stops the server):\n"
        + banner_commands(local, command_name()),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available on Windows' event loops; Ctrl-C still raises KeyboardInterrupt there.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await app.stop()
    print("sottovoce server stopped", file=sys.stderr, flush=True)
    return 0
