"""`sottovoce audit blindness`: prove a running server never saw content or keys
(docs/threat-model.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from sottovoce.cli import render
from sottovoce.cli.options import Subparsers, command_group, subcommand
from sottovoce.cli.session import unreachable
from sottovoce.errors import UsageError

EXAMPLE = """\
  sottovoce audit blindness --server ws://127.0.0.1:8765 \\
      --data ./relay-data --logs ./relay-data/server.log --push-capture
  sottovoce audit blindness --server wss://relay.example:8765 \\
      --data postgresql://audit@db.example/sottovoce --logs /var/log/sottovoce/ --json

what it does: registers two fresh canary accounts (one with two devices) on the
server, sends random canary plaintexts through it (1:1 to an offline device, so
they are stored; 1:1 live; to and from a second device; ephemeral; a room
message, with a canary room name), then searches every byte of what you point it at for each
canary and for the canary devices' private keys (account, device, Olm identity,
one-time, fallback and ratchet keys, the MLS signature key and room epoch
secrets, the local store key, the store passphrase, a room join token): raw,
hex, HEX, base64 and base64url at every alignment.

  --data      a directory (every file under it: SQLite db, -wal, -shm, ...), a
              file (its -wal/-shm/-journal are added), or a PostgreSQL DSN (every
              table of every schema, or of the schemas in the DSN's search_path,
              row by row, read-only). Repeatable. A DSN shows live rows only: to
              include deleted rows not yet vacuumed and the WAL, also give the
              PostgreSQL data directory as --data (needs read access).
  --logs      log files or directories (.gz files are decompressed). Repeatable.
  /metrics and /healthz of the server are always fetched and searched.
  --push-capture  a canary device registers a push endpoint served by the kit
              (on --push-listen, default 127.0.0.1 with a free port); the server
              must be allowed to call it (e.g. --push-allow-private true).

verdict and exit code:
  PASS (0)        every canary arrived, every source was read, nothing was found.
  FAIL (1)        a canary or private key was found; each finding names the file
                  and byte offset (log: line), or the table, column and row. The
                  secret itself is never printed, only a short prefix.
  INCOMPLETE (1)  nothing found, but the audit could not check everything (a
                  canary did not arrive, a source could not be read, no push
                  payload arrived, or --data does not even contain the canary
                  usernames: probably the wrong database). Not a pass.
  usage errors exit 2.

The canary accounts stay registered on the server (their usernames start with
"svaudit-"); their local stores are deleted unless --keep DIR is given.
"""


def _blindness_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, metavar="URL",
                   help="the server's WebSocket URL (ws://HOST:PORT or wss://...)")
    p.add_argument("--data", action="append", default=[], metavar="PATH-or-DSN",
                   help="data directory, database file, or postgresql:// DSN (repeatable)")
    p.add_argument("--logs", action="extend", nargs="+", type=Path, default=[], metavar="PATH",
                   help="log files or directories (repeatable)")
    p.add_argument("--push-capture", action="store_true",
                   help="capture and search the server's push payloads")
    p.add_argument("--push-listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="where the push capture listens (default 127.0.0.1:0)")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep the canary clients' local stores in DIR (default: deleted)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    # Predictable canaries, for the kit's own tests (a planted canary must FAIL).
    p.add_argument("--canary-seed", type=bytes.fromhex, metavar="HEX", help=argparse.SUPPRESS)


def add_commands(sub: Subparsers) -> None:
    audit_sub = command_group(
        sub,
        "audit",
        help="audit a running server (blindness kit)",
        description="Audits of a running sottovoce server.",
        example=(
            "  sottovoce audit blindness --server ws://127.0.0.1:8765 "
            "--data ./relay-data --logs ./relay-data/server.log"
        ),
        metavar="AUDIT",
    )
    subcommand(
        audit_sub,
        "blindness",
        help="send canaries through the server, then search its data, logs and push "
        "payloads for them and for key material",
        description="The blindness kit: prove the server never holds plaintext or private keys.",
        example=EXAMPLE,
        heading="examples",
        func=run,
        options=_blindness_options,
    )


async def _probe(url: str) -> None:
    """Open and close one WebSocket to ``url`` (NotConnected, saying why, if it fails)."""
    from sottovoce.client import NotConnected
    from sottovoce.client.connection import TransportClosed, websocket_connector, ws_url

    try:
        transport = await websocket_connector(ws_url(url))
    except TransportClosed as exc:
        raise NotConnected(f"cannot reach the server: {exc}") from None
    await transport.close()


def run(args: argparse.Namespace) -> int:
    from sottovoce.audit_kit import AuditOptions, run_audit
    from sottovoce.audit_kit.kit import check_options
    from sottovoce.client import NotConnected

    opts = AuditOptions(
        server=args.server,
        data=list(args.data),
        logs=list(args.logs),
        push_capture=args.push_capture,
        push_listen=args.push_listen,
        keep=args.keep,
        canary_seed=args.canary_seed,
    )
    try:
        check_options(opts)
    except UsageError as exc:
        print(f"sottovoce audit blindness: error: {render.safe(str(exc))}", file=sys.stderr)
        return 2
    # A stopped server is a plain error here, not an INCOMPLETE report after a full scan.
    try:
        asyncio.run(_probe(args.server))
    except NotConnected as exc:
        raise unreachable(args.server, exc) from None

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"audit: {line}", file=sys.stderr, flush=True)

    report = asyncio.run(run_audit(opts, progress=progress))
    print(report.to_json_text() if args.json else report.render(), flush=True)
    return report.exit_code
