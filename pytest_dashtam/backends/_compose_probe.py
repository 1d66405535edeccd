"""Talk to the stack's servers through their published ports: versions, tuning, Redis databases.

A green healthcheck is the container's own view (inside its network namespace); the tests connect
through the host port, so readiness is confirmed from here, with a deadline, before `start()` returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import asyncpg
import redis

from pytest_dashtam.poll import PollTimeout, apoll, first_line, poll
from pytest_dashtam.urls import mask_url

# The server-wide settings the test compose file turns off; SHOW reads back what took effect.
TUNED_SETTINGS = ("fsync", "full_page_writes", "synchronous_commit")
_INTERVAL = 0.1


class ProbeError(Exception):
    """A server did not answer through its published port before the deadline."""


@dataclass(frozen=True)
class PostgresFacts:
    version: str
    settings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RedisFacts:
    version: str
    databases: int | None


async def _postgres_once(url: str, deadline: float) -> PostgresFacts:
    conn = await asyncpg.connect(url, timeout=max(0.5, min(5.0, deadline - time.monotonic())))
    try:
        version = str(await conn.fetchval("SHOW server_version")).split()[0]
        settings = {name: str(await conn.fetchval(f"SHOW {name}")) for name in TUNED_SETTINGS}
        return PostgresFacts(version, settings)
    finally:
        await conn.close()


def postgres_facts(url: str, timeout: float) -> PostgresFacts:
    """Connect (retrying until `timeout`) and read the server version and the tuned settings."""
    from pytest_dashtam.isolation import run_async

    deadline = time.monotonic() + timeout
    try:
        # "the database system is starting up" and a proxy not yet listening both pass.
        return run_async(
            lambda: apoll(
                lambda: _postgres_once(url, deadline),
                timeout=timeout,
                interval=_INTERVAL,
                what=f"PostgreSQL at {mask_url(url)}",
                retry=(TimeoutError, OSError, asyncpg.PostgresError),
            )
        )
    except PollTimeout as exc:
        cause = f"{type(exc.last).__name__}: {first_line(exc.last)}" if exc.last is not None else "no answer"
        raise ProbeError(f"PostgreSQL at {mask_url(url)} did not answer within {timeout:.0f}s: {cause}") from None


def _redis_once(url: str) -> RedisFacts:
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        try:
            info = client.info("server")
        except (redis.AuthenticationError, redis.ResponseError) as exc:
            # An answer, and a refusal no retry changes (a password the project's Redis asks for): one line.
            raise ProbeError(f"Redis at {mask_url(url)} refused the plugin: {first_line(exc)}") from None
        try:
            databases: int | None = int(str(client.config_get("databases")["databases"]))
        except (redis.ResponseError, KeyError, ValueError):
            databases = None  # CONFIG may be renamed or disabled on a hardened server
        return RedisFacts(str(info.get("redis_version", "")), databases)
    finally:
        client.close()


def redis_facts(url: str, timeout: float) -> RedisFacts:
    """PING until `timeout`, then read the version and how many logical databases the server has."""
    try:
        return poll(
            lambda: _redis_once(url),
            timeout=timeout,
            interval=_INTERVAL,
            what=f"Redis at {mask_url(url)}",
            retry=(redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError),
        )
    except PollTimeout as exc:
        raise ProbeError(f"Redis at {mask_url(url)} did not answer within {timeout:.0f}s: {exc.last}") from None
