"""Talk to the stack's servers through their published ports: versions, tuning, Redis databases.

A green healthcheck is the container's own view (inside its network namespace); the tests connect
through the host port, so readiness is confirmed from here, with a deadline, before `start()` returns.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import redis

from pytest_dashtam.urls import mask_url

T = TypeVar("T")

# The server-wide settings the test compose file turns off; SHOW reads back what took effect.
TUNED_SETTINGS = ("fsync", "full_page_writes", "synchronous_commit")


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


def _run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on a private event loop in a worker thread.

    start() may be called from inside a running loop (an async fixture, an async CLI); asyncio.run()
    there would raise, and borrowing the caller's loop would tie our connection to it.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="dashtam-compose-probe", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


async def _postgres_facts(url: str, deadline: float) -> PostgresFacts:
    last: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            conn = await asyncpg.connect(url, timeout=max(0.5, min(5.0, remaining)))
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            last = exc
            # "the database system is starting up" and a proxy not yet listening both pass.
            if time.monotonic() + 0.1 >= deadline:
                raise ProbeError(f"{type(last).__name__}: {last}") from None
            await asyncio.sleep(0.1)
            continue
        try:
            version = str(await conn.fetchval("SHOW server_version")).split()[0]
            settings = {name: str(await conn.fetchval(f"SHOW {name}")) for name in TUNED_SETTINGS}
            return PostgresFacts(version, settings)
        finally:
            await conn.close()


def postgres_facts(url: str, timeout: float) -> PostgresFacts:
    """Connect (retrying until `timeout`) and read the server version and the tuned settings."""
    try:
        return _run_coroutine(_postgres_facts(url, time.monotonic() + timeout))
    except ProbeError as exc:
        raise ProbeError(f"PostgreSQL at {mask_url(url)} did not answer within {timeout:.0f}s: {exc}") from None


def redis_facts(url: str, timeout: float) -> RedisFacts:
    """PING until `timeout`, then read the version and how many logical databases the server has."""
    deadline = time.monotonic() + timeout
    while True:
        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        try:
            info = client.info("server")
            try:
                databases: int | None = int(str(client.config_get("databases")["databases"]))
            except (redis.ResponseError, KeyError, ValueError):
                databases = None  # CONFIG may be renamed or disabled on a hardened server
            return RedisFacts(str(info.get("redis_version", "")), databases)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            if time.monotonic() + 0.1 >= deadline:
                raise ProbeError(f"Redis at {url} did not answer within {timeout:.0f}s: {exc}") from None
            time.sleep(0.1)
        finally:
            client.close()
