"""The external backend: attach to a PostgreSQL and a Redis someone else runs.

CI service containers, a shared team server, the servers already running on a developer's machine. The
URLs are admin connections; the plugin creates and drops only its own stamped test databases there and
flushes only its own Redis indexes. It never changes a server-wide setting: `fsync = off` on a server that
also holds someone's dev data would put that data at risk on a crash. What the run may tune is per
database (`ALTER DATABASE ... SET synchronous_commit = off`, done by schema.create_test_database).

Like pytest-postgresql's NoopExecutor, it still waits for the servers to answer (a CI service container
may still be starting), but for a bounded time, and says which URL did not answer and why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pytest_dashtam.backends.base import BackendName, BackendOptions, Stack, StackStatus
from pytest_dashtam.errors import BackendError
from pytest_dashtam.urls import mask_url

# An external server is either there or not: waiting the owned backends' 60 s for it only delays the error.
DEFAULT_TIMEOUT = 10.0
_STATUS_TIMEOUT = 2.0
_POLL = 0.1

T = TypeVar("T")

# Errors that mean "retrying will not help": wrong password, unknown role or database.
_PERMANENT_PG_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidCatalogNameError,
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code, also when the caller is inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_as_coroutine(factory))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _as_coroutine(factory)).result()


async def _as_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


def normalise_postgres_url(url: str) -> str:
    """libpq form (`postgresql://...`), whatever driver suffix or `postgres://` alias the user wrote."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))


def normalise_redis_url(url: str) -> str:
    """The Redis URL without an index: the plugin chooses the index per worker."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
        # urlunsplit would drop the empty authority (unix:/path); keep the usual unix:///path form.
        return f"unix://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    return urlunsplit((parts.scheme, parts.netloc, "", parts.query, parts.fragment))


def _attempt_timeout(deadline: float, last: BaseException | None) -> float | None:
    """The timeout for the next attempt, or None to give up: at least one attempt with a fair timeout,
    even when the other server used up the wait."""
    remaining = deadline - time.monotonic()
    if remaining <= 0 and last is not None:
        return None
    return max(remaining, 1.0)


def _no_answer(server: str, url: str, started: float, last: BaseException | None, where: str) -> BackendError:
    cause = _first_line(last) if last is not None else "no answer"
    return BackendError(
        f"{server} at {mask_url(url)} did not answer within {time.monotonic() - started:.1f}s: {cause}; "
        f"check that the server runs and that {where}"
    )


async def _wait_postgres(url: str, deadline: float) -> dict[str, Any]:
    """Poll until PostgreSQL answers or the deadline passes; the server's version and our role's rights."""
    last: BaseException | None = None
    started = time.monotonic()
    while True:
        remaining = _attempt_timeout(deadline, last)
        if remaining is None:
            break
        try:
            conn = await asyncpg.connect(url, timeout=remaining)
        except _PERMANENT_PG_ERRORS as exc:
            raise BackendError(
                f"PostgreSQL at {mask_url(url)} refused the connection: {_first_line(exc)}; check the user, "
                "password and database in --dashtam-postgres-url / DASHTAM_POSTGRES_URL (an admin connection)"
            ) from exc
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            last = exc  # refused, not yet accepting connections, DNS not yet up in CI...
            await asyncio.sleep(min(_POLL, max(deadline - time.monotonic(), 0)))
            continue
        try:
            row = await conn.fetchrow(
                "SELECT current_setting('server_version') AS version, rolsuper, rolcreatedb "
                "FROM pg_roles WHERE rolname = current_user"
            )
            if row is None:
                version = str(await conn.fetchval("SHOW server_version"))
                return {"version": version.split()[0], "can_create_databases": None}
            return {
                "version": str(row["version"]).split()[0],
                "can_create_databases": bool(row["rolsuper"] or row["rolcreatedb"]),
            }
        finally:
            await conn.close()
    raise _no_answer(
        "PostgreSQL",
        url,
        started,
        last,
        "--dashtam-postgres-url / DASHTAM_POSTGRES_URL points at it (an admin connection)",
    )


def _wait_redis(url: str, deadline: float) -> dict[str, Any]:
    """Poll until Redis answers PING or the deadline passes; its version and how many indexes it has."""
    last: BaseException | None = None
    started = time.monotonic()
    while True:
        remaining = _attempt_timeout(deadline, last)
        if remaining is None:
            break
        client = redis.Redis.from_url(url, socket_connect_timeout=remaining, socket_timeout=remaining)
        try:
            client.ping()
            version = str(client.info("server").get("redis_version", "unknown"))
            try:
                # Managed Redis often disables CONFIG: then the count is unknown, not an error.
                databases_raw = client.config_get("databases").get("databases")
                databases = int(databases_raw) if databases_raw is not None else None
            except ResponseError:
                databases = None
            return {"version": version, "databases": databases}
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            last = exc
            time.sleep(min(_POLL, max(deadline - time.monotonic(), 0)))
        except RedisError as exc:  # wrong password, protocol error: retrying will not help
            raise BackendError(
                f"Redis at {mask_url(url)} refused the connection: {_first_line(exc)}; check the password and "
                "the URL in --dashtam-redis-url / DASHTAM_REDIS_URL"
            ) from exc
        finally:
            client.close()
    raise _no_answer("Redis", url, started, last, "--dashtam-redis-url / DASHTAM_REDIS_URL points at it")


class ExternalBackend:
    """Servers someone else runs: attach, never start, never stop, never tune server-wide."""

    name: BackendName = "external"

    def __init__(self, options: BackendOptions, *, timeout: float | None = None) -> None:
        self.options = options
        # BackendOptions.timeout defaults to the owned backends' 60 s; an external server needs far less.
        self.timeout = timeout if timeout is not None else min(options.timeout, DEFAULT_TIMEOUT)

    def _urls(self) -> tuple[str, str]:
        postgres_url, redis_url = self.options.postgres_url, self.options.redis_url
        if not postgres_url or not redis_url:
            missing = [
                flag
                for flag, value in (("--dashtam-postgres-url", postgres_url), ("--dashtam-redis-url", redis_url))
                if not value
            ]
            raise BackendError(
                f"the external backend needs {' and '.join(missing)} (or DASHTAM_POSTGRES_URL / DASHTAM_REDIS_URL); "
                "give the servers' admin URLs, or choose another --dashtam-backend"
            )
        return normalise_postgres_url(postgres_url), normalise_redis_url(redis_url)

    def _probe(self, timeout: float) -> Stack:
        postgres_url, redis_url = self._urls()
        deadline = time.monotonic() + timeout
        pg = _run(lambda: _wait_postgres(postgres_url, deadline))
        rd = _wait_redis(redis_url, deadline)
        return Stack(
            backend="external",
            env=self.options.env,
            postgres_url=postgres_url,
            redis_url=redis_url,
            postgres_version=pg["version"],
            redis_version=rd["version"],
            tuning={},
            owns_servers=False,
            started=False,
            redis_databases=rd["databases"],
            details={"can_create_databases": pg["can_create_databases"]},
        )

    def start(self) -> Stack:
        """Wait (bounded) until both servers answer and describe them; nothing is started or changed."""
        return self._probe(self.timeout)

    def stop(self) -> None:
        """Nothing to stop: the servers belong to someone else (test databases are dropped by schema)."""

    def status(self) -> StackStatus:
        """Whether both servers answer now (short wait), without changing anything."""
        try:
            stack = self._probe(min(self.timeout, _STATUS_TIMEOUT))
        except BackendError as exc:
            return StackStatus(running=False, detail=str(exc))
        return StackStatus(running=True, stack=stack, detail="external servers answer")
