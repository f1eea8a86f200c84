"""``run_audit``: canary run, then scan every source, then the verdict.

    options ─► [push capture up] ─► run_canaries (SDK, real server)
            ─► needles: canaries + passphrase + private keys  (+ usernames as control)
            ─► scan: --data (files/dirs/SQLite tables | PostgreSQL DSN), --logs,
                     push payloads, GET /metrics and /healthz
            ─► Report (PASS / FAIL / INCOMPLETE)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sottovoce.audit_kit.canaries import CanaryRun, run_canaries
from sottovoce.audit_kit.needles import Needle, Scanner, needles_for
from sottovoce.audit_kit.push_capture import PushCapture
from sottovoce.audit_kit.report import Report
from sottovoce.audit_kit.sources import (
    Results,
    Scanned,
    expand_paths,
    is_dsn,
    is_sqlite,
    redact_dsn,
    scan_blob,
    scan_file,
    scan_postgres,
    scan_sqlite_tables,
)
from sottovoce.errors import UsageError

#: HTTP pages of the server that are scanned too.
HTTP_PAGES = ("/metrics", "/healthz")
HTTP_TIMEOUT_S = 10.0


@dataclass(slots=True, kw_only=True)
class AuditOptions:
    server: str
    data: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    push_capture: bool = False
    push_listen: str = "127.0.0.1:0"
    keep: Path | None = None
    #: Makes the canaries predictable; only for the kit's own negative-control test.
    canary_seed: bytes | None = None


def http_base(server_url: str) -> str:
    """``ws://h:p/v3/ws`` → ``http://h:p`` (``wss`` → ``https``)."""
    parts = urlsplit(server_url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise UsageError("--server must be a ws:// or wss:// URL, e.g. ws://127.0.0.1:8765")
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def check_options(opts: AuditOptions) -> None:
    """Usage errors before anything is registered on the server."""
    http_base(opts.server)
    if not opts.data and not opts.logs:
        raise UsageError("give at least one --data or --logs source to scan")
    for item in opts.data:
        if not is_dsn(item) and not Path(item).exists():
            raise UsageError(f"--data {item}: no such file or directory")
    for path in opts.logs:
        if not path.exists():
            raise UsageError(f"--logs {path}: no such file or directory")
    host, _, port = opts.push_listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError("--push-listen must be HOST:PORT (PORT 0 picks a free one)")


def build_needles(run: CanaryRun) -> list[Needle]:
    needles: list[Needle] = []
    for canary in run.canaries:
        needles += needles_for(canary.text.encode(), label=canary.label, kind="canary")
    if run.passphrase:
        needles += needles_for(
            run.passphrase.expose(), label="canary store passphrase", kind="key"
        )
    for key in run.keys:
        needles += needles_for(key.value.expose(), label=key.label, kind="key")
    for name in run.usernames:
        # Public: the server must know it. Raw only; it proves the scan reads real data.
        needles += [n for n in needles_for(name.encode(), label=name, kind="control")
                    if n.encoding == "raw"]
    return needles


async def _fetch(url: str) -> bytes:
    import httpx

    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, trust_env=False) as client:
        resp = await client.get(url)
        resp.raise_for_status()
        return resp.content


async def scan_sources(
    opts: AuditOptions, scanner: Scanner, push: PushCapture | None, results: Results
) -> dict[str, list[str]]:
    """Scan everything; returns, per --data argument, the source names it expanded to."""
    per_data: dict[str, list[str]] = {}
    logs = expand_paths(opts.logs)
    # A log inside a data directory is searched once, as a log (findings name its line).
    log_keys = {f.resolve() for f in logs}
    for item in opts.data:
        if is_dsn(item):
            await scan_postgres(item, scanner, results)
            per_data[item] = [redact_dsn(item)]
            continue
        files = expand_paths([Path(item)])
        per_data[item] = [str(f) for f in files]
        files = [f for f in files if f.resolve() not in log_keys]
        # Raw bytes first (the WAL as the server left it), then the tables read-only.
        for f in files:
            await asyncio.to_thread(scan_file, f, scanner, results)
        for f in files:
            if is_sqlite(f):
                await asyncio.to_thread(scan_sqlite_tables, f, scanner, results)
    for f in logs:
        await asyncio.to_thread(scan_file, f, scanner, results, kind="log")
    if push is not None:
        payloads = push.payloads()
        for i, push_item in enumerate(payloads, 1):
            scan_blob(push_item.raw, scanner, results, kind="push",
                      name=f"push payload #{i} ({push_item.path})")
        if not payloads:
            results.scanned.append(Scanned(kind="push", name="push capture",
                                           detail="no payload arrived"))
    base = http_base(opts.server)
    for page in HTTP_PAGES:
        url = base + page
        try:
            body = await _fetch(url)
        except Exception as exc:  # any failure is reported, not raised
            results.problems.append(f"{url}: could not be fetched ({type(exc).__name__})")
            continue
        scan_blob(body, scanner, results, kind="http", name=url)
    return per_data


async def run_audit(
    opts: AuditOptions, *, progress: Callable[[str], None] = lambda _: None
) -> Report:
    check_options(opts)
    push: PushCapture | None = None
    if opts.push_capture:
        host, _, port = opts.push_listen.rpartition(":")
        push = PushCapture(host.strip("[]"), int(port)).start()
    try:
        run = await run_canaries(
            opts.server, push=push, keep=opts.keep, seed=opts.canary_seed, progress=progress
        )
        progress("scanning")
        results = Results()
        scanner = Scanner(build_needles(run))
        per_data = await scan_sources(opts, scanner, push, results)
    finally:
        if push is not None:
            push.close()
    report = Report(
        server=opts.server,
        canaries=[c.label for c in run.canaries],
        keys=len(run.keys) + (1 if run.passphrase else 0),
        usernames=run.usernames,
        scanned=results.scanned,
        findings=[f for f in results.findings if f.kind != "control"],
        control=Counter(f.source for f in results.findings if f.kind == "control"),
        problems=[*run.blockers, *results.problems],
        notes=list(run.notes),
    )
    if opts.keep is not None:
        report.notes.append(f"canary client stores kept in {opts.keep} (they hold the canaries)")
    if not run.blockers:
        for item, names in per_data.items():
            if not any(report.control[n] for n in names):
                shown = redact_dsn(item) if is_dsn(item) else item
                report.problems.append(
                    f"--data {shown}: not even the canary usernames are in it, so it is "
                    "probably not the database of this server"
                )
    return report
