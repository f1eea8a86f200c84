"""A throw-away PostgreSQL schema per test (or per module) so tests are isolated and re-runnable.

    with fresh_schema() as dsn:      # postgresql://…/test?search_path=sv_t_1a2b3c
        ...                          # tables the server creates land in that schema

The server is pointed at a schema by the DSN's ``search_path`` parameter
(asyncpg passes unknown DSN parameters on as server settings). The database
comes from ``$SOTTOVOCE_TEST_DATABASE`` (default: the local ``test`` database,
trust auth). :func:`unreachable` says why PostgreSQL cannot be used, for skips.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache

BASE_DSN = os.environ.get(
    "SOTTOVOCE_TEST_DATABASE", "postgresql://postgres@127.0.0.1:5432/test"
).strip()


def _run(sql: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(BASE_DSN, timeout=3)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # In a thread of its own, so that it also works inside a running event loop
    # (async fixtures), where asyncio.run() is refused.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, go()).result()


@cache
def unreachable() -> str | None:
    """None when PostgreSQL answers at BASE_DSN, else the reason (for pytest.skip)."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed"
    try:
        _run("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL unreachable at {BASE_DSN} ({type(exc).__name__}: {exc})"
    return None


def with_schema(dsn: str, schema: str) -> str:
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}search_path={schema}"


def create_schema(prefix: str = "sv_t") -> tuple[str, str]:
    """Create an empty schema; returns (name, DSN using it)."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    _run(f"CREATE SCHEMA {name}")
    return name, with_schema(BASE_DSN, name)


def drop_schema(name: str) -> None:
    _run(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@contextmanager
def fresh_schema(prefix: str = "sv_t") -> Iterator[str]:
    name, dsn = create_schema(prefix)
    try:
        yield dsn
    finally:
        drop_schema(name)


async def _arun(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(BASE_DSN, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def acreate_schema(prefix: str = "sv_t") -> tuple[str, str]:
    """:func:`create_schema` for async fixtures (inside a running event loop)."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    await _arun(f"CREATE SCHEMA {name}")
    return name, with_schema(BASE_DSN, name)


async def adrop_schema(name: str) -> None:
    await _arun(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def dump_rows(dsn: str) -> bytes:
    """Every row of every table in the DSN's schema as text, for scans (blindness tests)."""
    import asyncpg

    async def go() -> bytes:
        conn = await asyncpg.connect(dsn, timeout=3)
        try:
            out: list[str] = []
            for (table,) in await conn.fetch(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            ):
                out += [r[0] for r in await conn.fetch(f'SELECT t::text FROM "{table}" t')]
            return "\n".join(out).encode()
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, go()).result()
