"""`sottovoce kt witness`: an independent witness of a server's key-transparency log
(docs/deploy.md §Key transparency).

It keeps its own key and state file (the last checkpoint it cosigned and the log key
it follows), checks that each new checkpoint extends that one (``--audit``: replays
every new leaf and recomputes the map, and refuses a map that no leaf justifies),
and only then cosigns. With ``--listen`` it serves the log's add-checkpoint pushes
(the server runs with ``--kt-witness http://HOST:PORT=VKEY``); without it, it checks
the server's current checkpoint once, prints its cosignature line and exits.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sottovoce.cli.options import Subparsers, subcommand
from sottovoce.errors import UsageError

if TYPE_CHECKING:
    import httpx

    from sottovoce.server.kt_witness import WitnessService

EXAMPLE = """\
  sottovoce kt witness --server https://relay.example:8765 --key witness.key \\
      --listen 0.0.0.0:8780
      serve add-checkpoint for that server (run it with
      --kt-witness http://THIS-HOST:8780=VKEY, the VKEY this command prints)
  sottovoce kt witness --server https://relay.example:8765 --key witness.key --audit
      check the server's current checkpoint once (replaying every new leaf), print
      the cosignature line, exit 0; exit 1 if it does not check out

The key file is made at first use (mode 0600); its verifier key is printed at start.
The state file (default: the key file's name + .state) remembers the last checkpoint
cosigned and the log key followed (taken from the server's /kt/keys at first use
unless --log-key pins it): a log that shrinks, forks or changes key is refused.
"""


def _witness_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, metavar="URL",
                   help="the server (http(s):// or ws(s)://HOST:PORT)")
    p.add_argument("--key", required=True, type=Path, metavar="FILE",
                   help="this witness's key file (made if missing)")
    p.add_argument("--name", metavar="NAME",
                   help="the name a new key gets (default HOSTNAME/sottovoce-witness)")
    p.add_argument("--state", type=Path, metavar="FILE",
                   help="state file (default: the key file + .state)")
    p.add_argument("--log-key", metavar="VKEY",
                   help="the log's verifier key to follow (default: the server's, at first use)")
    p.add_argument("--audit", action="store_true",
                   help="replay every leaf and recompute the map before cosigning")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="serve add-checkpoint here (port 0: any free port, printed)")


def add_witness(sub: Subparsers) -> None:
    subcommand(
        sub, "witness",
        help="witness a server's key-transparency log: check each checkpoint, then cosign",
        description="Run an independent witness of a sottovoce server's key-transparency log.",
        example=EXAMPLE, heading="examples", func=run, options=_witness_options,
    )


def http_base(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/v3/ws"):
        url = url[: -len("/v3/ws")]
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if url.startswith(ws):
            return http + url[len(ws):]
    if not url.startswith(("http://", "https://")):
        raise UsageError("--server must be an http(s):// or ws(s):// URL")
    try:
        urlsplit(url).port  # noqa: B018 -- raises ValueError for a port that is not 0-65535
    except ValueError:
        raise UsageError("--server is not a URL with HOST:PORT (a port is 1-65535)") from None
    return url


def unreachable_why(exc: httpx.HTTPError) -> str:
    """Why the server could not be asked, in words (the OS's reason, not httpx's class)."""
    import httpx

    from sottovoce.connect_failure import describe_failure

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError):  # ssl.SSLError and socket.gaierror too
            return describe_failure(cause)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, (httpx.ReadError, httpx.RemoteProtocolError)):
        return "the connection closed before an answer (is it starting, or not this server?)"
    return type(exc).__name__


class LogClient:
    """The server's read-only key-transparency endpoints."""

    def __init__(self, base: str) -> None:
        import httpx

        self.base = base
        self._http = httpx.Client(timeout=10.0)

    def get(self, path: str) -> bytes:
        import httpx

        try:
            resp = self._http.get(self.base + path)
        except httpx.HTTPError as exc:
            raise UsageError(f"cannot reach the server at {self.base}: "
                             f"{unreachable_why(exc)}") from None
        if resp.status_code != 200:
            raise UsageError(f"the server answered {resp.status_code} to {path.split('?')[0]}")
        return resp.content

    def json(self, path: str) -> Any:
        try:
            return json.loads(self.get(path))
        except ValueError:
            raise UsageError(f"the server's {path.split('?')[0]} is not JSON") from None

    def log_key(self) -> str:
        key = self.json("/kt/keys").get("log_key")
        if not isinstance(key, str):
            raise UsageError("the server's /kt/keys names no log key")
        return key

    def leaves(self, start: int, count: int) -> list[bytes]:
        import base64

        found = self.json(f"/kt/leaves?start={start}&count={count}").get("leaves")
        if not isinstance(found, list):
            raise UsageError("the server's /kt/leaves is malformed")
        return [base64.b64decode(x) for x in found]

    def consistency(self, old: int, new: int) -> list[bytes]:
        import base64

        found = self.json(f"/kt/consistency?old={old}&new={new}").get("proof")
        if not isinstance(found, list):
            raise UsageError("the server's /kt/consistency is malformed")
        return [base64.b64decode(x) for x in found]


def _service(args: argparse.Namespace, client: LogClient) -> WitnessService:
    from sottovoce.kt.checkpoint import NoteKey
    from sottovoce.kt.errors import KTError
    from sottovoce.server.kt_keys import note_key
    from sottovoce.server.kt_witness import WitnessService

    name = args.name or f"{socket.gethostname()}/sottovoce-witness"
    signer = note_key(args.key, name, cosigner=True, what="witness key file")
    log_key = None
    if args.log_key:
        try:
            log_key = NoteKey.from_vkey(args.log_key)
        except KTError:
            raise UsageError("--log-key is not a verifier key (name+keyid+base64)") from None
    state = args.state or args.key.with_name(args.key.name + ".state")
    return WitnessService(
        signer, state, log_key=log_key, first_key=client.log_key,
        leaves=client.leaves if args.audit else None,
        clock_ms=lambda: time.time_ns() // 1_000_000,
    )


def run(args: argparse.Namespace) -> int:
    from sottovoce.kt.checkpoint import Checkpoint, SignedNote
    from sottovoce.kt.errors import KTError
    from sottovoce.server.kt_witness import Conflict

    client = LogClient(http_base(args.server))
    service = _service(args, client)
    print(f"witness {service.signer.public.vkey()}", flush=True)
    if args.listen:
        return _listen(service, args.listen)
    note = client.get("/kt/checkpoint")
    try:
        size = Checkpoint.parse(SignedNote.decode(note).text).size
        old = service.size
        proof = [] if args.audit or not 0 < old < size else client.consistency(old, size)
        sig = service.add_checkpoint(old, proof, note)
    except (KTError, Conflict) as exc:
        print(f"sottovoce kt witness: refused to cosign: {exc}", file=sys.stderr)
        return 1
    print(sig.line(), end="", flush=True)
    return 0


def _listen(service: WitnessService, where: str) -> int:
    from sottovoce.server.kt_witness import MAX_BODY_BYTES

    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError("--listen must be HOST:PORT")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = self.headers.get("Content-Length", "")
            if self.path != "/add-checkpoint":
                self._answer(404, b"not found\n")
                return
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                self._answer(413, b"body missing or too large\n")
                return
            status, body = service.handle(self.rfile.read(int(length)))
            if status != 200:
                print(f"refused a checkpoint ({status}): {body.decode(errors='replace').strip()}",
                      file=sys.stderr, flush=True)
            self._answer(status, body)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no request log: addresses stay out of it

    try:
        server = ThreadingHTTPServer((host, int(port)), Handler)
    except OSError as exc:
        raise UsageError(f"cannot listen on {where}: {exc.strerror}") from None
    bound = server.server_address
    print(f"listening on http://{host}:{bound[1]}/add-checkpoint", flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()
    return 0
