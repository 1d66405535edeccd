"""What a run makes and unmakes on the servers: the capacity check, the template, the clone, the flush, the drop.

Plain functions over the stack and plain values; `DashtamRun` decides when each runs and remembers the
outcome. The destructive ones reach the servers only through schema.py and leases' checked functions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from pytest_dashtam.backends.base import Stack
from pytest_dashtam.config import PluginConfig
from pytest_dashtam.errors import ConfigError
from pytest_dashtam.isolation import CONNECTIONS_PER_WORKER, run_async
from pytest_dashtam.project import import_object
from pytest_dashtam.urls import libpq_url, mask_url


def check_capacity(stack: Stack, worker_count: int) -> None:
    """Enough connections for every worker, or a clear error before anything is made."""
    if worker_count <= 1:
        return
    needed = worker_count * CONNECTIONS_PER_WORKER
    free = run_async(lambda: free_connections(stack.postgres_url))
    if free is not None and needed > free:
        raise ConfigError(
            f"{worker_count} workers need up to {needed} PostgreSQL connections ({CONNECTIONS_PER_WORKER} each) "
            f"but the server at {mask_url(stack.postgres_url)} has {free} free; use fewer workers (-n) "
            "or raise max_connections"
        )


async def free_connections(admin_url: str) -> int | None:
    """The connections a client may still open: max_connections less the reserved ones and those in use."""
    import asyncpg

    conn = await asyncpg.connect(libpq_url(admin_url), timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS free"
        )
        return int(row["free"]) if row is not None else None
    finally:
        await conn.close()


def drop_templates(config: PluginConfig, stack: Stack) -> None:
    """--dashtam-rebuild under xdist: the workers must all build (the first) or reuse (the others) one
    new template, so the old ones go before any worker starts."""
    from pytest_dashtam import schema

    run_async(
        lambda: schema.drop_templates(
            stack.postgres_url, test_db=config.test_database, dev_database=config.dev_database
        )
    )


def build_template(
    config: PluginConfig, stack: Stack, *, rebuild: bool, allow_database: Callable[[str], None] | None
) -> Any:
    """The template of the project's schema, built or reused (schema.TemplateResult).

    `allow_database`: the run's guard lets the template through (it is part of this run's stack: the
    plugin's own checks on it pass the guard).
    """
    from pytest_dashtam import schema

    metadata = None
    if config.alembic_ini is None:
        if config.metadata is None:
            raise ConfigError(
                "no schema source: dashtam_alembic_ini is empty and dashtam_metadata is not set; name the "
                "project's alembic.ini, or its SQLAlchemy metadata (e.g. myapp.models:Base.metadata)"
            )
        metadata = import_object(config.metadata, "metadata")
    alembic_ini = str(config.alembic_ini) if config.alembic_ini else None
    name = schema.template_name(config.test_database, schema.template_hash(alembic_ini, metadata))
    if allow_database is not None:
        allow_database(name)
    return run_async(
        lambda: schema.ensure_template(
            stack.postgres_url,
            test_db=config.test_database,
            alembic_ini=alembic_ini,
            metadata=metadata,
            rebuild=rebuild,
            owner_tuning=stack.owns_servers and bool(stack.tuning),
            dev_database=config.dev_database,
        )
    )


async def clone(
    stack: Stack,
    database: str,
    *,
    template: str,
    database_url: str,
    redis_url: str | None,
    redis_index: int | None,
    owner: str,
    dev_database: str,
) -> tuple[dict[str, str], Any]:
    """(tuning, cleaner): this worker's database cloned and read, its Redis index emptied (a project without
    Redis has none), in one loop.

    The Redis flush runs while PostgreSQL copies the template, and one connection to the new database
    serves both the tuning read-back and the cleaner's catalog read (the first connections to a
    brand-new database are the expensive ones).
    """
    from pytest_dashtam import schema

    async def nothing() -> None:
        return None

    flush = asyncio.ensure_future(
        flush_redis(redis_url, redis_index, owner) if redis_url is not None and redis_index is not None else nothing()
    )
    try:
        await schema.create_test_database(
            stack.postgres_url,
            database,
            template=template,
            per_database_tuning=True,
            dev_database=dev_database,
        )
        tuning, cleaner = await read_clone(database_url)
    except BaseException:
        flush.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await flush
        raise
    await flush
    return tuning, cleaner


# What schema.read_tuning reads, in one query: the clone's own connection reads it together with the catalog.
_TUNING_SQL = (
    "SELECT current_setting('fsync') AS fsync, current_setting('full_page_writes') AS full_page_writes, "
    "current_setting('synchronous_commit') AS synchronous_commit"
)


async def read_clone(database_url: str) -> tuple[dict[str, str], Any]:
    """(the tuning in effect on the new database, its TableCleaner), on one connection to it.

    The cleaner is read here, from the fresh clone, not on the first real-commit test: it records the
    sequence positions and seeded rows that cleanup restores, and by then earlier tests' rolled-back
    inserts would have moved the sequences (nextval is not transactional).
    """
    import asyncpg

    from pytest_dashtam.isolation import TableCleaner

    conn = await asyncpg.connect(libpq_url(database_url), timeout=10)
    try:
        row = await conn.fetchrow(_TUNING_SQL)
        tuning = {key: str(value) for key, value in dict(row or {}).items()}
        return tuning, await TableCleaner.load(conn)
    finally:
        await conn.close()


async def flush_redis(redis_url: str, redis_index: int, owner: str, *, release: bool = False) -> None:
    """Start from an empty index (what conftests wrote at import time is gone before the first test);
    `release`: end with one, the stamp gone too."""
    from redis.asyncio import Redis

    from pytest_dashtam.leases import flush_owned_index

    client = Redis.from_url(redis_url, client_name=f"pytest-dashtam-{owner}")
    try:
        await flush_owned_index(client, redis_index, owner, release=release)
    finally:
        await client.aclose()


def drop_database(admin_url: str, database: str, *, dev_database: str) -> list[str]:
    """Drop a test database; a failure comes back as text (the session's end warns, never masks results)."""
    from pytest_dashtam import schema

    try:
        run_async(lambda: schema.drop_test_database(admin_url, database, dev_database=dev_database))
    except Exception as exc:
        return [f"could not drop the test database {database}: {exc}"]
    return []
