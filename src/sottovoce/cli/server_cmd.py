"""`sottovoce server`: the blind relay on embedded SQLite, zero set-up (docs/single-server.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from pathlib import Path
from typing import Any

from sottovoce import __version__
from sottovoce.server.config import CONFIG_ENV, DEFAULT_PORT, ENV_PREFIX, OPTIONS, load_config

EXAMPLE = f"""\
examples:
  sottovoce server
      listen on ws://127.0.0.1:{DEFAULT_PORT}, data in the user data directory
  sottovoce server --port 9000 --data-dir ./relay-data --retention-days 7
  sottovoce server --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem
  SOTTOVOCE_PORT=9000 sottovoce server --config /etc/sottovoce.toml
  sottovoce server --database postgresql://sottovoce@db:5432/sottovoce --residency eu-west
      PostgreSQL storage (schema migrated at start-up; see docs/operations.md)
  sottovoce server --database postgresql://… --nats nats://nats:4222 --node-id node1
      one node of several sharing PostgreSQL and NATS (see docs/deploy.md)

configuration: defaults < TOML file (--config or ${CONFIG_ENV}; keys are the option
names, e.g. `retention_ms = 86400000`, optionally under [server]) < environment
variables ({ENV_PREFIX}<OPTION>, e.g. {ENV_PREFIX}DATA_DIR) < command-line flags.

endpoints: WebSocket ws://HOST:PORT/v3/ws; GET /healthz (JSON); GET /metrics (Prometheus).
"""


def add_commands(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "server",
        help="run the relay server (embedded SQLite, no set-up)",
        description="Run the sottovoce blind relay: it stores and forwards ciphertext only.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        p.add_argument(opt.flag, dest=opt.name, metavar=opt.metavar, default=None,
                       help=f"{opt.help}; env {opt.env}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    flags: dict[str, Any] = {opt.name: getattr(args, opt.name) for opt in OPTIONS}
    if args.retention_days is not None:
        flags["retention_ms"] = int(args.retention_days * 24 * 3600 * 1000)
    config = load_config(flags, config_file=args.config)
    if config.nats is not None and config.database is None:
        # Each node would have its own SQLite file: frames stored on one node would be
        # invisible to the others' replays.
        print("sottovoce server: --nats needs --database postgresql://… (one database "
              "shared by all nodes)", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(_serve(config))
    return uvloop.run(_serve(config))


def _storage_label(config: Any) -> str:
    if config.database is None:
        return str(config.data_dir)
    from sottovoce.server.storage.postgres import redact_dsn

    return redact_dsn(config.database)


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
    await app.start()
    url = app.url
    http = url.replace("wss://", "https://").replace("ws://", "http://")
    print(
        f"sottovoce server {__version__} listening on {url}  (WebSocket {url}/v3/ws)\n"
        f"  data:    {_storage_label(config)}\n"
        f"  health:  {http}/healthz    metrics: {http}/metrics\n"
        + (f"  node:    {app.node_id}, fan-out over NATS\n" if config.nats else "")
        + "next, in another terminal:\n"
        f"  sottovoce account create alice --server {url}\n"
        f"  sottovoce account create bob --server {url}\n"
        f"  sottovoce chat bob      # as alice; Ctrl-C here stops the server",
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
