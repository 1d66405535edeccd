"""The seed cluster: a local test cluster that built a schema template starts the next runs.

Real servers (the system PostgreSQL 15), each test with its own cache and state folders.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from pytest_dashtam.backends.base import BackendOptions, Stack
from pytest_dashtam.backends.local import LocalBackend
from pytest_dashtam.safety import ownership_comment
from pytest_dashtam.schema import SEED_TEMPLATES
from pytest_dashtam.schema.names import ROLE_TEMPLATE, ROLE_TEST

SYSTEM_PG15 = Path("/usr/lib/postgresql/15/bin")
pytestmark = pytest.mark.skipif(not SYSTEM_PG15.is_dir(), reason="needs Debian's PostgreSQL 15 binaries")


@pytest.fixture
def folders() -> Iterator[tuple[Path, Path]]:
    """(cache, state) under a folder the `postgres` user can enter when the tests run as root."""
    root = Path(tempfile.mkdtemp(prefix="dashtam-seed-"))
    root.chmod(0o755)
    yield root / "cache", root / "state"
    shutil.rmtree(root, ignore_errors=True)


def _backend(cache: Path, state: Path) -> LocalBackend:
    options = BackendOptions(
        env="test", state_dir=state, postgres_bin=str(SYSTEM_PG15), redis_bin="/usr/bin/redis-server"
    )
    return LocalBackend(options, cache_dir=cache)


def cache_of(stack: Stack) -> str:
    assert stack.local is not None
    return stack.local.cluster_cache


def _sql(stack: Stack, statement: str) -> object:
    async def go() -> object:
        conn = await asyncpg.connect(stack.postgres_url)
        try:
            return await conn.fetchval(statement)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_a_requested_seed_starts_the_next_cluster(folders: tuple[Path, Path]) -> None:
    cache, state = folders
    first = _backend(cache, state)
    stack = first.start()
    try:
        _sql(stack, "CREATE DATABASE seeded_tpl_0123")
        first.template_built(stack)
    finally:
        first.stop()
    seeds = list(cache.glob("pg-*-seed/meta.json"))
    assert len(seeds) == 1
    assert json.loads(seeds[0].read_text())["seed"] is True
    assert list(cache.glob(".building-*")) == []
    assert list(cache.glob(".trash-*")) == []

    second = _backend(cache, state)
    again = second.start()
    try:
        assert cache_of(again) == "seed"
        assert _sql(again, "SELECT count(*) FROM pg_database WHERE datname = 'seeded_tpl_0123'") == 1
        assert again.tuning["fsync"] == "off"
        # A later seed replaces the earlier one, never leaving two.
        _sql(again, "CREATE DATABASE seeded_tpl_4567")
        second.template_built(again)
    finally:
        second.stop()
    assert len(list(cache.glob("pg-*-seed/meta.json"))) == 1
    third = _backend(cache, state)
    last = third.start()
    try:
        assert _sql(last, "SELECT count(*) FROM pg_database WHERE datname LIKE 'seeded_tpl_%'") == 2
    finally:
        third.stop()


def test_no_request_no_seed(folders: tuple[Path, Path]) -> None:
    cache, state = folders
    backend = _backend(cache, state)
    stack = backend.start()
    _sql(stack, "CREATE DATABASE unseeded_0123")
    backend.stop()
    assert list(cache.glob("pg-*-seed")) == []
    again_backend = _backend(cache, state)
    again = again_backend.start()
    try:
        assert cache_of(again) == "hit"
        assert _sql(again, "SELECT count(*) FROM pg_database WHERE datname = 'unseeded_0123'") == 0
    finally:
        again_backend.stop()


def test_a_damaged_seed_falls_back_to_the_initdb_cache(folders: tuple[Path, Path]) -> None:
    cache, state = folders
    backend = _backend(cache, state)
    backend.template_built(backend.start())
    backend.stop()
    (seed,) = cache.glob("pg-*-seed")
    shutil.rmtree(seed / "data")  # meta.json left: looks usable, is not
    again_backend = _backend(cache, state)
    again = again_backend.start()
    try:
        assert cache_of(again) == "hit"
        assert _sql(again, "SELECT 1") == 1
    finally:
        again_backend.stop()


def test_the_seed_keeps_only_the_newest_templates_and_what_is_not_ours(folders: tuple[Path, Path]) -> None:
    """Without a bound the seed would carry every template ever built here, copied on every later start."""
    cache, state = folders
    first = _backend(cache, state)
    stack = first.start()
    templates = [f"proj{i}_test_tpl_{i:012x}" for i in range(SEED_TEMPLATES + 2)]  # created oldest first
    try:
        for name in templates:
            _sql(stack, f"CREATE DATABASE {name}")
            _sql(stack, f"COMMENT ON DATABASE {name} IS '{ownership_comment(ROLE_TEMPLATE, 'h')}'")
        _sql(stack, "CREATE DATABASE proj0_test_gw0")
        _sql(stack, f"COMMENT ON DATABASE proj0_test_gw0 IS '{ownership_comment(ROLE_TEST, templates[0])}'")
        _sql(stack, "CREATE DATABASE someones_data")  # unstamped: not the plugin's to drop
        first.template_built(stack)
    finally:
        first.stop()

    second = _backend(cache, state)
    again = second.start()
    try:
        assert cache_of(again) == "seed"
        names = _sql(again, "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")
        assert isinstance(names, str)
        left = set(names.split(","))
        assert {n for n in left if "_tpl_" in n} == set(templates[-SEED_TEMPLATES:])
        assert "proj0_test_gw0" not in left
        assert "someones_data" in left
    finally:
        second.stop()


def test_a_seed_carries_no_spare_wal(folders: tuple[Path, Path]) -> None:
    """The seed is copied on every later start, and a test cluster lives in memory: it keeps no more WAL than
    its small max_wal_size, however much the run wrote."""
    cache, state = folders
    first = _backend(cache, state)
    stack = first.start()
    try:
        assert (_sql(stack, "SHOW min_wal_size"), _sql(stack, "SHOW max_wal_size")) == ("2MB", "8MB")
        for i in range(6):  # each clone writes the database to the WAL: far beyond max_wal_size
            _sql(stack, f"CREATE DATABASE walfill_test_tpl_{i:012x}")
            _sql(stack, "SELECT pg_switch_wal()")
        first.template_built(stack)
    finally:
        first.stop()
    (seed,) = cache.glob("pg-*-seed")
    wal = sum(f.stat().st_size for f in (seed / "data" / "pg_wal").iterdir() if f.is_file())
    assert wal <= 9 * 1024 * 1024, f"{wal} bytes of WAL in the seed"  # max_wal_size, not PostgreSQL's 1 GB
