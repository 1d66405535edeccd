"""The fixtures: wiring only. The work lives in lifecycle.py (session) and isolation.py (per test).

Session fixtures are synchronous, so they belong to no event loop; the function-scoped async fixtures
(`db_session`, `redis_client`, `client`) run in the loop of the test that requests them (plugin.py tells
pytest-asyncio which one), so their connections are never used from another loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from pytest_dashtam.errors import ConfigError, DashtamError
from pytest_dashtam.lifecycle import DashtamRun, Prepared, import_object

if TYPE_CHECKING:
    import httpx
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from pytest_dashtam.backends.base import Stack
    from pytest_dashtam.config import PluginConfig
    from pytest_dashtam.guard import ConnectionGuard
    from pytest_dashtam.isolation import LoopEngines, LoopRedisPools, WriteTracker

RUN_KEY = pytest.StashKey[DashtamRun]()
CONFIG_ERROR_KEY = pytest.StashKey[ConfigError]()
# Function-scoped async fixtures that must run in the requesting test's event loop.
FOLLOW_TEST_LOOP = frozenset({"db_session", "redis_client", "client", "_dashtam_transaction"})
# Any of these in a test's fixture closure means the test needs the stack.
STACK_FIXTURES = frozenset(
    {"dashtam_stack", "dashtam_settings", "db_engine", "db_session", "redis_client", "client", "_dashtam_prepared"}
)


def _one_line(exc: BaseException) -> str:
    """A user's problem as its one-line message; anything else propagates with its traceback."""
    if isinstance(exc, DashtamError):
        return str(exc)
    raise exc


def dashtam_db_marker(transaction: bool = False) -> bool:
    """The `dashtam_db` marker's signature: validates its arguments, returns `transaction`."""
    if not isinstance(transaction, bool):
        raise TypeError(f"transaction must be True or False, got {transaction!r}")
    return transaction


def _transaction_requested(request: pytest.FixtureRequest) -> bool:
    marker = request.node.get_closest_marker("dashtam_db")
    if marker is None:
        return False
    try:
        return dashtam_db_marker(*marker.args, **marker.kwargs)
    except TypeError as exc:
        pytest.fail(f"@pytest.mark.dashtam_db: {exc}; use @pytest.mark.dashtam_db(transaction=True)", pytrace=False)


@pytest.fixture(scope="session")
def _dashtam_run(request: pytest.FixtureRequest) -> DashtamRun:
    run = request.config.stash.get(RUN_KEY, None)
    if run is None:
        error = request.config.stash.get(CONFIG_ERROR_KEY, None)
        if error is not None:
            pytest.fail(str(error), pytrace=False)
        pytest.fail("pytest-dashtam is not configured in this process (is the plugin loaded?)", pytrace=False)
    return run


@pytest.fixture(scope="session")
def _dashtam_prepared(_dashtam_run: DashtamRun) -> Prepared:
    try:
        return _dashtam_run.prepare()
    except BaseException as exc:
        message = _one_line(exc)
    # Outside the except block: no chained "during handling" noise, the same one line for every test.
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def dashtam_config(_dashtam_run: DashtamRun) -> PluginConfig:
    """The plugin's resolved configuration (where each value came from: `.sources`)."""
    return _dashtam_run.config


@pytest.fixture(scope="session")
def dashtam_guard(_dashtam_run: DashtamRun) -> ConnectionGuard:
    """The connection guard: `.allow_database(name)` for a scratch database a test makes on the stack."""
    if _dashtam_run.guard is None:
        pytest.fail("pytest-dashtam's connection guard is not installed in this process", pytrace=False)
    guard: ConnectionGuard = _dashtam_run.guard
    return guard


@pytest.fixture(scope="session")
def dashtam_stack(_dashtam_prepared: Prepared) -> Stack:
    """The running PostgreSQL + Redis stack: URLs (masked repr), versions, applied tuning."""
    return _dashtam_prepared.stack


@pytest.fixture(scope="session")
def dashtam_settings(_dashtam_prepared: Prepared) -> Any:
    """The app's settings for this worker (its database and Redis index), safety-checked."""
    if _dashtam_prepared.settings is None:
        pytest.fail(
            "dashtam_settings needs the project's settings class: set dashtam_settings = 'myapp.config:Settings' "
            "in [tool.pytest.ini_options] (or --dashtam-settings / DASHTAM_SETTINGS)",
            pytrace=False,
        )
    return _dashtam_prepared.settings


@pytest.fixture(scope="session")
def db_engine(_dashtam_prepared: Prepared) -> Iterator[AsyncEngine]:
    """An AsyncEngine on this worker's test database, usable from any event loop (no pooling)."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    # NullPool: a pooled asyncpg connection belongs to the loop that opened it; this engine is shared by
    # tests that may each run in their own loop. db_session uses a pooled engine per loop instead.
    engine = create_async_engine(_dashtam_prepared.database_url, poolclass=NullPool)
    yield engine
    engine.sync_engine.dispose(close=False)


@pytest.fixture(scope="session")
def _dashtam_engines(_dashtam_prepared: Prepared) -> Iterator[LoopEngines]:
    from pytest_dashtam.isolation import LoopEngines

    engines = LoopEngines(_dashtam_prepared.database_url)
    yield engines
    engines.close()


@pytest_asyncio.fixture
async def _dashtam_transaction(
    _dashtam_run: DashtamRun, _dashtam_engines: LoopEngines, db_engine: AsyncEngine
) -> AsyncIterator[WriteTracker]:
    from pytest_dashtam.isolation import WriteTracker

    engine = await _dashtam_engines.engine()
    tracker = WriteTracker()
    tracker.attach([engine, db_engine])
    try:
        yield tracker
    finally:
        tracker.detach()
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            await _dashtam_run.cleaner.empty(raw, tracker)


@pytest.fixture(autouse=True)
def _dashtam_db_marker(request: pytest.FixtureRequest) -> None:
    # A test marked transaction=True gets its cleanup even when it only uses db_engine.
    if _transaction_requested(request):
        request.getfixturevalue("_dashtam_transaction")


@pytest_asyncio.fixture
async def db_session(request: pytest.FixtureRequest, _dashtam_engines: LoopEngines) -> AsyncIterator[AsyncSession]:
    """An AsyncSession whose commits are savepoints, rolled back after the test (real with the marker)."""
    from pytest_dashtam.isolation import open_commit_session, open_rollback_session

    engine = await _dashtam_engines.engine()
    if _transaction_requested(request):
        # The autouse _dashtam_db_marker has already set up _dashtam_transaction (so it is torn down after this
        # session closes); requesting it from here, inside the running loop, could not set it up.
        isolated = open_commit_session(engine)
    else:
        isolated = await open_rollback_session(engine)
    try:
        yield isolated.session
    finally:
        await isolated.close()


@pytest.fixture(scope="session")
def _dashtam_redis_pools(_dashtam_prepared: Prepared) -> Iterator[LoopRedisPools]:
    from pytest_dashtam.isolation import LoopRedisPools

    pools = LoopRedisPools(_dashtam_prepared.redis_url)
    yield pools
    pools.close()


@pytest_asyncio.fixture
async def redis_client(
    _dashtam_prepared: Prepared, _dashtam_run: DashtamRun, _dashtam_redis_pools: LoopRedisPools
) -> AsyncIterator[Redis]:
    """A redis.asyncio client on this worker's index (str values), FLUSHDB on that index after the test."""
    from redis.asyncio import Redis

    from pytest_dashtam.isolation import flush_test_index

    # A client per test over the loop's pool: closing it (aclose) leaves the pool's connections alone.
    client = Redis(connection_pool=await _dashtam_redis_pools.get())
    try:
        yield client
    finally:
        try:
            await flush_test_index(
                client, _dashtam_prepared.redis_index, _dashtam_run.config.dev_redis_index, _dashtam_run.owner
            )
        finally:
            await client.aclose()


@pytest.fixture(scope="session")
def _dashtam_app(_dashtam_run: DashtamRun) -> tuple[Any, Any, Any]:
    config = _dashtam_run.config
    try:
        if config.app is None:
            raise ConfigError(
                "the client fixture needs the project's ASGI app: set dashtam_app = 'myapp.main:app' in "
                "[tool.pytest.ini_options] (or --dashtam-app / DASHTAM_APP)"
            )
        target = import_object(config.app, "app")
        if not hasattr(target, "dependency_overrides"):
            if not callable(target):
                raise ConfigError(f"dashtam_app={config.app!r} is neither an ASGI app nor an app factory")
            target = target()  # a factory: build the app once for the session
        if not hasattr(target, "dependency_overrides"):
            raise ConfigError(
                f"dashtam_app={config.app!r} did not give a FastAPI app (no dependency_overrides); "
                "point it at the app or at a function returning it"
            )
        session_dep = (
            import_object(config.session_dependency, "session_dependency") if config.session_dependency else None
        )
        redis_dep = import_object(config.redis_dependency, "redis_dependency") if config.redis_dependency else None
    except BaseException as exc:
        message = _one_line(exc)
    else:
        return target, session_dep, redis_dep
    pytest.fail(message, pytrace=False)


@pytest_asyncio.fixture
async def client(
    _dashtam_app: tuple[Any, Any, Any], db_session: AsyncSession, redis_client: Redis
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx.AsyncClient on the app, its session and Redis dependencies overridden to the test's."""
    import httpx

    app, session_dep, redis_dep = _dashtam_app

    async def _session() -> AsyncSession:
        return db_session

    async def _redis() -> Redis:
        return redis_client

    missing = object()
    overrides = {dep: fn for dep, fn in ((session_dep, _session), (redis_dep, _redis)) if dep is not None}
    saved = {dep: app.dependency_overrides.get(dep, missing) for dep in overrides}
    app.dependency_overrides.update(overrides)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            yield http
    finally:
        for dep, value in saved.items():
            if value is missing:
                app.dependency_overrides.pop(dep, None)
            else:
                app.dependency_overrides[dep] = value
