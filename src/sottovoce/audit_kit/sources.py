"""Where the kit looks: files, SQLite tables, PostgreSQL tables, HTTP pages, push payloads.

Every source is read as bytes and searched with one :class:`Scanner`. Files
are read raw in chunks (this covers SQLite pages, free pages, the WAL and the
shared-memory file, whatever SQLite left there); SQLite and PostgreSQL tables
are additionally read row by row so that a finding can name the table, the
column and the row. Nothing here writes to what it scans: SQLite is opened
read-only, PostgreSQL inside a read-only transaction.
"""

from __future__ import annotations

import bisect
import contextlib
import gzip
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from sottovoce.audit_kit.needles import CHUNK_BYTES, Hit, Scanner, dedupe

SQLITE_MAGIC = b"SQLite format 3\x00"
#: Files SQLite keeps beside a database.
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
#: PostgreSQL column types that cannot hold a canary (numbers, times, booleans).
_PG_SKIP_TYPES = frozenset({
    "smallint", "integer", "bigint", "real", "double precision", "numeric", "boolean",
    "date", "timestamp without time zone", "timestamp with time zone", "interval",
    "time without time zone", "time with time zone", "oid", "money",
})
#: Cells are batched per column into blobs of about this size before searching.
_CELL_BATCH_BYTES = 4 * 1024 * 1024


@dataclass(slots=True, kw_only=True)
class Scanned:
    """One source the kit read, for the "what was scanned" part of the verdict."""

    kind: str  # file | sqlite | log | postgres | push | http
    name: str
    bytes: int = 0
    detail: str = ""
    tables: dict[str, int] = field(default_factory=dict)  # table -> rows read


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """A needle found somewhere (never holds the secret, only its label and preview)."""

    label: str
    kind: str  # canary | key | control
    encoding: str
    preview: str
    source: str
    where: str


@dataclass(slots=True)
class Results:
    scanned: list[Scanned] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # a source that could not be read

    def add_hits(self, hits: Iterable[Hit], source: str, where: Callable[[Hit], str]) -> None:
        for hit in dedupe(hits):
            n = hit.needle
            self.findings.append(
                Finding(
                    label=n.label, kind=n.kind, encoding=n.encoding, preview=n.preview,
                    source=source, where=where(hit),
                )
            )


def _fmt_offset(hit: Hit) -> str:
    return f"offset {hit.offset}"


# =============================================================================
# Files and directories
# =============================================================================


def _read_chunks(path: Path) -> Iterator[bytes]:
    opener: Callable[[Path, str], Any] = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK_BYTES)
            if not chunk:
                return
            yield chunk


def _line_numbers(path: Path, offsets: list[int]) -> dict[int, int]:
    """1-based line number of each offset (read again: only done when something was found)."""
    wanted = sorted(set(offsets))
    out: dict[int, int] = {}
    lines, pos, i = 0, 0, 0
    for chunk in _read_chunks(path):
        end = pos + len(chunk)
        while i < len(wanted) and wanted[i] < end:
            out[wanted[i]] = lines + chunk.count(b"\n", 0, wanted[i] - pos) + 1
            i += 1
        lines += chunk.count(b"\n")
        pos = end
    return out


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Directories → every regular file under them; a database file → it and its sidecars."""
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen and p.is_file():
            seen.add(key)
            out.append(p)

    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):  # symlinks are not followed
                dirs.sort()
                for name in sorted(files):
                    candidate = Path(root) / name
                    if not candidate.is_symlink():
                        add(candidate)
        else:
            add(path)
            for suffix in SQLITE_SIDECARS:
                add(path.with_name(path.name + suffix))
    return out


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def scan_file(path: Path, scanner: Scanner, results: Results, *, kind: str = "file") -> None:
    """Raw bytes of one file (gzip-compressed logs are decompressed first)."""
    item = Scanned(kind=kind, name=str(path))

    def counted() -> Iterator[bytes]:
        for chunk in _read_chunks(path):
            item.bytes += len(chunk)
            yield chunk

    try:
        hits = list(scanner.scan_chunks(counted()))
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        results.problems.append(f"{path}: could not be read ({exc})")
        return
    results.scanned.append(item)
    if kind == "log":
        lines = _line_numbers(path, [h.offset for h in hits]) if hits else {}
        results.add_hits(hits, str(path), lambda h: f"line {lines.get(h.offset, '?')}, "
                         f"offset {h.offset}")
    else:
        results.add_hits(hits, str(path), _fmt_offset)


# =============================================================================
# Row-level scans (SQLite, PostgreSQL): per column, cells batched into one blob
# =============================================================================


class _ColumnBatch:
    """Concatenates the cells of one column; maps a hit back to its row."""

    def __init__(self, scanner: Scanner, results: Results, source: str, table: str,
                 column: str) -> None:
        self._scanner = scanner
        self._results = results
        self._source = source
        self._table = table
        self._column = column
        self._parts: list[bytes] = []
        self._starts: list[int] = []
        self._rows: list[str] = []
        self._size = 0

    def add(self, row: str, value: bytes) -> None:
        if len(value) == 0:
            return
        self._starts.append(self._size)
        self._rows.append(row)
        self._parts.append(value)
        self._size += len(value)
        if self._size >= _CELL_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._parts:
            return
        blob = b"".join(self._parts)
        ends = [s + len(p) for s, p in zip(self._starts, self._parts, strict=True)]
        kept: list[Hit] = []
        rows: dict[int, str] = {}
        for hit in self._scanner.scan(blob):
            i = bisect.bisect_right(self._starts, hit.offset) - 1
            # A match across two cells is an artefact of the concatenation.
            if hit.offset + len(hit.needle.pattern) <= ends[i]:
                kept.append(hit)
                rows[hit.offset] = f"{self._rows[i]}, byte {hit.offset - self._starts[i]}"
        self._results.add_hits(
            kept, self._source,
            lambda h: f"table {self._table}, column {self._column}, {rows[h.offset]}",
        )
        self._parts.clear()
        self._starts.clear()
        self._rows.clear()
        self._size = 0


def _cell_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bool | int | float):
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return str(value).encode("utf-8", "replace")


class _TableScan:
    """One table being read, row by row, into a batch per column; :meth:`finish`
    flushes them and records the table's row count (SQLite and PostgreSQL alike)."""

    def __init__(self, item: Scanned, scanner: Scanner, results: Results, table: str,
                 columns: list[str]) -> None:
        self._item = item
        self._table = table
        self._batches = [_ColumnBatch(scanner, results, item.name, table, c) for c in columns]
        self.rows = 0

    def add_row(self, where: str, cells: Sequence[object]) -> None:
        self.rows += 1
        for batch, value in zip(self._batches, cells, strict=True):
            raw = _cell_bytes(value)
            if raw is not None:
                self._item.bytes += len(raw)
                batch.add(where, raw)

    def finish(self) -> None:
        for batch in self._batches:
            batch.flush()
        self._item.tables[self._table] = self.rows


def _tables_detail(item: Scanned) -> str:
    return f"{len(item.tables)} tables, {sum(item.tables.values())} rows"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def scan_sqlite_tables(path: Path, scanner: Scanner, results: Results) -> None:
    """Read every table of a SQLite database row by row (read-only)."""
    item = Scanned(kind="sqlite", name=str(path))
    wal = path.with_name(path.name + "-wal")
    # Without a WAL there is nothing beyond the main file: open it immutable, so that
    # SQLite does not even create -wal/-shm files beside it (the scan writes nothing).
    mode = "mode=ro" if wal.exists() and wal.stat().st_size > 0 else "immutable=1"
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
    except sqlite3.Error as exc:
        results.problems.append(f"{path}: tables could not be read ({exc})")
        return
    try:
        db.text_factory = bytes
        names = [
            r[0].decode() if isinstance(r[0], bytes) else r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        for table in names:
            cur = None
            quoted = _quote_ident(table)  # a name from the catalogue, quoted
            for query in (f"SELECT rowid, * FROM {quoted}",  # noqa: S608
                          f"SELECT NULL, * FROM {quoted}"):  # noqa: S608
                with contextlib.suppress(sqlite3.OperationalError):  # WITHOUT ROWID tables
                    cur = db.execute(query)
                    break
            if cur is None:
                results.problems.append(f"{path}: table {table} could not be read")
                continue
            scan = _TableScan(item, scanner, results, table, [d[0] for d in cur.description][1:])
            for row in cur:
                scan.add_row(f"rowid {row[0]}" if row[0] is not None else f"row #{scan.rows + 1}",
                             row[1:])
            scan.finish()
    except sqlite3.Error as exc:
        results.problems.append(f"{path}: tables could not be read ({exc})")
        return
    finally:
        db.close()
    item.detail = _tables_detail(item)
    results.scanned.append(item)


# =============================================================================
# PostgreSQL
# =============================================================================


def redact_dsn(dsn: str) -> str:
    """The DSN without its password (for the report)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def is_dsn(value: str) -> bool:
    return value.startswith(("postgres://", "postgresql://"))


async def scan_postgres(dsn: str, scanner: Scanner, results: Results) -> None:
    """Read every table of every non-system schema, row by row, in one read-only snapshot."""
    name = redact_dsn(dsn)
    try:
        import asyncpg
    except ImportError:
        results.problems.append(
            f"{name}: PostgreSQL not scanned: the asyncpg package is not installed "
            "(pip install asyncpg)"
        )
        return
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        results.problems.append(f"{name}: PostgreSQL not scanned: cannot connect ({exc})")
        return
    item = Scanned(kind="postgres", name=name)
    schemas = dsn_schemas(dsn)
    try:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            tables = await conn.fetch(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN "
                "('pg_catalog', 'information_schema') AND table_schema NOT LIKE 'pg_toast%' "
                "AND ($1::text[] IS NULL OR table_schema = ANY($1::text[])) "
                "ORDER BY 1, 2",
                schemas,
            )
            for schema, table in tables:
                cols = await conn.fetch(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                    schema, table,
                )
                wanted = [(c, t) for c, t in cols if t not in _PG_SKIP_TYPES]
                qualified = f"{_quote_ident(schema)}.{_quote_ident(table)}"
                label = f"{schema}.{table}"
                select = ", ".join(
                    _quote_ident(c) if t == "bytea" else f"{_quote_ident(c)}::text"
                    for c, t in wanted
                )
                # Names from the catalogue, quoted by _quote_ident.
                query = f"SELECT ctid::text{', ' + select if select else ''} FROM {qualified}"  # noqa: S608
                scan = _TableScan(item, scanner, results, label, [c for c, _ in wanted])
                try:
                    # A savepoint: a table dropped meanwhile does not end the whole scan.
                    async with conn.transaction():
                        async for row in conn.cursor(query, prefetch=1000):
                            scan.add_row(f"ctid {row[0]}", list(row)[1:])
                except asyncpg.PostgresError as exc:
                    results.problems.append(f"{name}: table {label} could not be read ({exc})")
                    continue
                scan.finish()
    except asyncpg.PostgresError as exc:
        results.problems.append(f"{name}: PostgreSQL scan failed ({exc})")
        return
    finally:
        await conn.close()
    item.detail = _tables_detail(item) + (
        f" (schemas {', '.join(schemas)}, from the DSN's search_path)" if schemas else ""
    )
    results.scanned.append(item)


def dsn_schemas(dsn: str) -> list[str] | None:
    """The schemas a DSN's ``search_path`` names (None: every non-system schema)."""
    values = parse_qs(urlsplit(dsn).query).get("search_path")
    if not values:
        return None
    names = [n.strip().strip('"') for v in values for n in v.split(",")]
    return [n for n in names if n and n != "$user"] or None


# =============================================================================
# In-memory blobs (push payloads, HTTP pages)
# =============================================================================


def scan_blob(blob: bytes, scanner: Scanner, results: Results, *, kind: str, name: str,
              detail: str = "") -> None:
    results.scanned.append(Scanned(kind=kind, name=name, bytes=len(blob), detail=detail))
    results.add_hits(scanner.scan(blob), name, _fmt_offset)
