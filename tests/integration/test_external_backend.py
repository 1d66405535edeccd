"""The external backend against the PostgreSQL and Redis already running on this machine.

Those servers hold other people's data: the tests check that attaching changes no server-wide setting,
no foreign database and no Redis key outside what the test itself planted (and removes again).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import redis

from pytest_dashtam.backends import get_backend
from pytest_dashtam.backends.base import BackendOptions, Stack
from pytest_dashtam.backends.external import DEFAULT_TIMEOUT, ExternalBackend
from pytest_dashtam.errors import BackendError

POSTGRES_URL = os.environ.get("DASHTAM_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DASHTAM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
FOREIGN = ("test", "root", "postgres")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _backend(
    postgres_url: str | None = POSTGRES_URL, redis_url: str | None = REDIS_URL, **kw: float
) -> ExternalBackend:
    return ExternalBackend(BackendOptions(postgres_url=postgres_url, redis_url=redis_url), **kw)


def _server_state() -> dict[str, Any]:
    """Every server-wide PostgreSQL setting, the foreign databases, every Redis config value."""

    async def postgres() -> tuple[object, object]:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            settings = await conn.fetch("SELECT name, setting FROM pg_settings WHERE context <> 'user' ORDER BY name")
            databases = await conn.fetch(
                "SELECT datname, oid, shobj_description(oid, 'pg_database') AS c FROM pg_database "
                "WHERE datname = ANY($1) ORDER BY datname",
                list(FOREIGN),
            )
            return [tuple(r) for r in settings], [tuple(r) for r in databases]
        finally:
            await conn.close()

    settings, databases = asyncio.run(postgres())
    client = redis.Redis.from_url(REDIS_URL)
    try:
        config = client.config_get("*")
    finally:
        client.close()
    return {"pg_settings": settings, "pg_databases": databases, "redis_config": config}


@pytest.fixture
def planted() -> Iterator[dict[int, str]]:
    """A unique key in Redis index 0 (dev) and in index 9 of the shared server; deleted (only them) after."""
    key = f"dashtam-external-probe-{secrets.token_hex(6)}"
    clients = {index: redis.Redis.from_url(f"{REDIS_URL}/{index}") for index in (0, 9)}
    for index, client in clients.items():
        client.set(key, f"value-{index}")
    yield {index: key for index in clients}
    for client in clients.values():
        client.delete(key)
        client.close()


def _assert_planted_survive(planted: dict[int, str]) -> None:
    for index, key in planted.items():
        client = redis.Redis.from_url(f"{REDIS_URL}/{index}")
        try:
            assert client.get(key) == f"value-{index}".encode()
        finally:
            client.close()


def test_attaches_and_describes_the_servers(planted: dict[int, str]) -> None:
    before = _server_state()
    with_driver = POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://")
    backend = _backend(postgres_url=with_driver, redis_url=f"{REDIS_URL}/4")
    stack = backend.start()
    assert isinstance(stack, Stack)
    assert stack.backend == "external"
    assert stack.owns_servers is False
    assert stack.started is False
    assert dict(stack.tuning) == {}
    assert stack.postgres_url == POSTGRES_URL  # libpq form, whatever driver the user wrote
    assert stack.redis_url == REDIS_URL  # no index: the plugin chooses one per worker
    assert stack.postgres_version.split(".")[0].isdigit()
    assert stack.redis_version.split(".")[0].isdigit()
    assert stack.redis_databases is not None
    assert stack.redis_databases >= 2
    assert stack.can_create_databases is True
    assert Stack.from_json(stack.to_json()) == stack

    status = backend.status()
    assert status.running
    assert status.stack is not None
    assert status.stack.postgres_version == stack.postgres_version
    backend.stop()

    assert _server_state() == before
    _assert_planted_survive(planted)


def test_get_backend_selects_it() -> None:
    backend = get_backend("external", BackendOptions(postgres_url=POSTGRES_URL, redis_url=REDIS_URL))
    assert isinstance(backend, ExternalBackend)
    assert backend.timeout == DEFAULT_TIMEOUT  # not the owned backends' 60 s
    assert _backend(timeout=3.0).timeout == 3.0
    assert ExternalBackend(BackendOptions(postgres_url=POSTGRES_URL, redis_url=REDIS_URL, timeout=2.0)).timeout == 2.0


@pytest.mark.asyncio
async def test_start_works_inside_a_running_event_loop() -> None:
    stack = _backend().start()
    assert stack.postgres_version


def test_unreachable_postgres_is_one_masked_line_within_the_wait(planted: dict[int, str]) -> None:
    port = _free_port()
    url = f"postgresql://postgres:hunter2@127.0.0.1:{port}/postgres"
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        _backend(postgres_url=url, timeout=1.0).start()
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert 0.9 <= elapsed < 5.0  # bounded by the wait, with room for a loaded 2-core CI machine
    assert "\n" not in message
    assert "hunter2" not in message
    assert f"postgresql://postgres:***@127.0.0.1:{port}/postgres" in message
    assert "did not answer within" in message
    assert "refused" in message.lower() or "connect" in message.lower()  # the cause
    assert "--dashtam-postgres-url" in message
    _assert_planted_survive(planted)


def test_unreachable_redis_is_one_masked_line_within_the_wait() -> None:
    port = _free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        _backend(redis_url=url, timeout=1.0).start()
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert elapsed < 5.0
    assert "\n" not in message
    assert "hunter2" not in message
    assert f"redis://:***@127.0.0.1:{port}" in message
    assert "--dashtam-redis-url" in message


def test_a_server_that_comes_up_during_the_wait_is_accepted() -> None:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
    port = _free_port()
    backend = _backend(redis_url=f"redis://127.0.0.1:{port}", timeout=5.0)
    procs: list[subprocess.Popen[bytes]] = []

    def late_start() -> None:
        time.sleep(0.5)
        procs.append(
            subprocess.Popen(
                [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    thread = threading.Thread(target=late_start)
    thread.start()
    try:
        stack = backend.start()
        assert stack.redis_url == f"redis://127.0.0.1:{port}"
    finally:
        thread.join()
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def test_wrong_credentials_fail_fast_without_waiting() -> None:
    url = f"postgresql://no_such_role_{secrets.token_hex(3)}:pw@127.0.0.1:5432/postgres"
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"refused the connection: role .* does not exist"):
        _backend(postgres_url=url, timeout=5.0).start()
    assert time.monotonic() - started < 4.0  # well inside the 5 s wait: no retrying


def test_missing_urls_name_the_options() -> None:
    with pytest.raises(BackendError, match="--dashtam-postgres-url and --dashtam-redis-url"):
        _backend(postgres_url=None, redis_url=None).start()
    with pytest.raises(BackendError, match="needs --dashtam-redis-url"):
        _backend(redis_url="").start()


def test_status_of_unreachable_servers_says_why() -> None:
    port = _free_port()
    status = _backend(postgres_url=f"postgresql://postgres:hunter2@127.0.0.1:{port}/postgres", timeout=1.0).status()
    assert not status.running
    assert status.stack is None
    assert "***" in status.detail
    assert "hunter2" not in status.detail


def test_whole_external_flow_leaves_the_server_as_it_was(planted: dict[int, str]) -> None:
    """Attach, build and clone the schema with per-database tuning, drop: only our databases came and went."""
    from pathlib import Path

    from pytest_dashtam import schema

    alembic_ini = str(Path(__file__).resolve().parents[2] / "alembic.ini")
    before = _server_state()
    stack = _backend().start()
    test_db = f"dashtam_test_x{secrets.token_hex(4)}"
    clone = f"{test_db}_gw0"

    async def flow() -> dict[str, str]:
        template = await schema.ensure_template(
            stack.postgres_url,
            test_db=test_db,
            alembic_ini=alembic_ini,
            metadata=None,
            owner_tuning=stack.owns_servers,
            dev_database="dashtam",
        )
        try:
            await schema.create_test_database(
                stack.postgres_url, clone, template=template.name, per_database_tuning=not stack.owns_servers
            )
            tuning = await schema.read_tuning(schema.database_url(stack.postgres_url, clone))
            await schema.drop_test_database(stack.postgres_url, clone)
        finally:
            await schema.drop_templates(stack.postgres_url, test_db=test_db)
        return tuning

    tuning = asyncio.run(flow())
    assert tuning["synchronous_commit"] == "off"
    server_settings = dict(before["pg_settings"])
    assert tuning["fsync"] == server_settings["fsync"]  # server-wide, someone else's: untouched
    assert _server_state() == before

    async def leftovers() -> list[str]:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            rows = await conn.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", test_db)
            return [r["datname"] for r in rows]
        finally:
            await conn.close()

    assert asyncio.run(leftovers()) == []
    _assert_planted_survive(planted)
