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

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pytest_dashtam.backends.base import BackendName, BackendOptions, Stack, StackStatus, UnsupportedError
from pytest_dashtam.errors import BackendError, ConfigError
from pytest_dashtam.poll import PollTimeout, apoll, first_line, poll
from pytest_dashtam.urls import libpq_url, mask_url

# An external server is either there or not: waiting the owned backends' 60 s for it only delays the error.
DEFAULT_TIMEOUT = 10.0
_STATUS_TIMEOUT = 2.0
_POLL = 0.1

# Errors that mean "retrying will not help": wrong password, unknown role or database.
_PERMANENT_PG_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidCatalogNameError,
)
# Errors that mean "not yet": refused, not yet accepting connections, DNS not yet up in CI...
_TRANSIENT_PG_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_TRANSIENT_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def normalise_redis_url(url: str) -> str:
    """The Redis URL without an index: the plugin chooses the index per worker."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
        # urlunsplit would drop the empty authority (unix:/path); keep the usual unix:///path form.
        return f"unix://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    return urlunsplit((parts.scheme, parts.netloc, "", parts.query, parts.fragment))


def _attempt_timeout(deadline: float) -> float:
    """The timeout of one connection attempt: what is left of the wait, and a fair second at least, even
    when the other server used up the wait."""
    return max(deadline - time.monotonic(), 1.0)


def _no_answer(server: str, url: str, started: float, last: BaseException | None, where: str) -> BackendError:
    cause = first_line(last).rstrip(".") if last is not None else "no answer"
    if isinstance(last, TimeoutError) and not str(last).strip():
        # asyncpg's connect timeout says nothing more: the server took the connection and never answered.
        cause = "it accepted the connection but never answered (a stopped or hung server?)"
    return BackendError(
        f"{server} at {mask_url(url)} did not answer within {time.monotonic() - started:.1f}s: {cause}; "
        f"check that the server runs and that {where}"
    )


async def _postgres_facts(url: str, deadline: float) -> dict[str, Any] | None:
    """The server's version and our role's rights, on one connection; None while it does not answer."""
    try:
        conn = await asyncpg.connect(url, timeout=_attempt_timeout(deadline))
    except _PERMANENT_PG_ERRORS as exc:
        raise BackendError(
            f"PostgreSQL at {mask_url(url)} refused the connection: {first_line(exc).rstrip('.')}; check the user, "
            "password and database in --dashtam-postgres-url / DASHTAM_POSTGRES_URL (an admin connection)"
        ) from exc
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


async def _wait_postgres(url: str, deadline: float) -> dict[str, Any]:
    """Poll until PostgreSQL answers or the deadline passes (one fair attempt at least)."""
    started = time.monotonic()
    try:
        return await apoll(
            lambda: _postgres_facts(url, deadline),
            timeout=max(deadline - started, 0.0),
            interval=_POLL,
            what=f"PostgreSQL at {mask_url(url)}",
            retry=_TRANSIENT_PG_ERRORS,
        )
    except PollTimeout as exc:
        raise _no_answer(
            "PostgreSQL",
            url,
            started,
            exc.last,
            "--dashtam-postgres-url / DASHTAM_POSTGRES_URL points at it (an admin connection)",
        ) from None


def _redis_facts(url: str, deadline: float) -> dict[str, Any]:
    """The server's version and how many indexes it has, on one connection."""
    timeout = _attempt_timeout(deadline)
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
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
    except AuthenticationError as exc:  # a ConnectionError to redis-py, but no retry will change the answer
        raise ConfigError(
            f"Redis at {mask_url(url)} refused the credentials: {first_line(exc).rstrip('.')}; check the user "
            "and password in --dashtam-redis-url / DASHTAM_REDIS_URL"
        ) from None
    except _TRANSIENT_REDIS_ERRORS:
        raise
    except RedisError as exc:  # a protocol error: retrying will not help
        raise BackendError(
            f"Redis at {mask_url(url)} refused the connection: {first_line(exc).rstrip('.')}; check the password "
            "and the URL in --dashtam-redis-url / DASHTAM_REDIS_URL"
        ) from exc
    finally:
        client.close()


def _wait_redis(url: str, deadline: float) -> dict[str, Any]:
    """Poll until Redis answers PING or the deadline passes (one fair attempt at least)."""
    started = time.monotonic()
    try:
        return poll(
            lambda: _redis_facts(url, deadline),
            timeout=max(deadline - started, 0.0),
            interval=_POLL,
            what=f"Redis at {mask_url(url)}",
            retry=_TRANSIENT_REDIS_ERRORS,
        )
    except PollTimeout as exc:
        raise _no_answer(
            "Redis", url, started, exc.last, "--dashtam-redis-url / DASHTAM_REDIS_URL points at it"
        ) from None


class ExternalBackend:
    """Servers someone else runs: attach, never start, never stop, never tune server-wide."""

    name: BackendName = "external"

    def __init__(self, options: BackendOptions, *, timeout: float | None = None) -> None:
        self.options = options
        # BackendOptions.timeout defaults to the owned backends' 60 s; an external server needs far less.
        self.timeout = timeout if timeout is not None else min(options.timeout, DEFAULT_TIMEOUT)

    def available(self) -> bool:
        """The server URLs are given (PostgreSQL's alone for a project without Redis): there is something to
        attach to (whether it answers is start's to say)."""
        return bool(self.options.postgres_url and (self.options.redis_url or not self.options.redis))

    def _urls(self) -> tuple[str, str]:
        """The admin URLs in the form the stack records; the Redis one empty for a project without Redis."""
        postgres_url, redis_url = self.options.postgres_url, self.options.redis_url
        if not postgres_url or (self.options.redis and not redis_url):
            missing = [
                flag
                for flag, value in (("--dashtam-postgres-url", postgres_url), ("--dashtam-redis-url", redis_url))
                if not value and (flag != "--dashtam-redis-url" or self.options.redis)
            ]
            raise BackendError(
                f"the external backend needs {' and '.join(missing)} (or DASHTAM_POSTGRES_URL / DASHTAM_REDIS_URL); "
                "give the servers' admin URLs, or choose another --dashtam-backend"
            )
        return libpq_url(postgres_url), normalise_redis_url(redis_url) if self.options.redis and redis_url else ""

    def _probe(self, timeout: float) -> Stack:
        postgres_url, redis_url = self._urls()
        deadline = time.monotonic() + timeout
        from pytest_dashtam.isolation import run_async

        pg = run_async(lambda: _wait_postgres(postgres_url, deadline))
        rd: dict[str, Any] = _wait_redis(redis_url, deadline) if redis_url else {"version": "", "databases": None}
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
            can_create_databases=pg["can_create_databases"],
        )

    def start(self) -> Stack:
        """Wait (bounded) until the servers answer and describe them; nothing is started or changed."""
        return self._probe(self.timeout)

    def stop(self) -> None:
        """Nothing to stop: the servers belong to someone else (test databases are dropped by schema)."""

    def template_built(self, stack: Stack) -> None:
        """Nothing to keep: the template stays on the server, which outlives the run."""

    def down(self) -> None:
        raise UnsupportedError("the external backend does not stop servers it does not own; stop them where they run")

    def logs(self, lines: int = 200) -> str:
        raise UnsupportedError("the external backend keeps no logs of its own (its servers are someone else's)")

    def status(self) -> StackStatus:
        """Whether both servers answer now (short wait), without changing anything."""
        try:
            stack = self._probe(min(self.timeout, _STATUS_TIMEOUT))
        except BackendError as exc:
            return StackStatus(running=False, detail=str(exc))
        return StackStatus(running=True, stack=stack, detail="external servers answer")
