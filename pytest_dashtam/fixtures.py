"""The fixtures: wiring only. The work lives in run.py (session) and isolation/ (per test).

Session fixtures are synchronous, so they belong to no event loop; the function-scoped async fixtures
(`db_session`, `redis_client`, `client`) run in the loop of the test that requests them (plugin.py tells
pytest-asyncio which one), so their connections are never used from another loop. The app's lifespan, which
`client` runs, is scoped like its loop: once per session for tests in the session loop, once per test for
tests in function loops (what it opens belongs to that loop).
"""

from __future__ import annotations

import types
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import pytest
import pytest_asyncio

from pytest_dashtam.config import NO_REDIS
from pytest_dashtam.errors import ConfigError, DashtamError
from pytest_dashtam.isolation import Keeper, dashtam_db_marker, test_loop_scope
from pytest_dashtam.run import DashtamRun, Prepared

if TYPE_CHECKING:
    import httpx
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from pytest_dashtam.backends.base import Stack
    from pytest_dashtam.config import PluginConfig
    from pytest_dashtam.guard import ConnectionGuard
    from pytest_dashtam.isolation import LoopEngines, LoopRedisPools, RunningLifespans, WriteTracker
    from pytest_dashtam.project import Dependencies

RUN_KEY = pytest.StashKey[DashtamRun]()
CONFIG_ERROR_KEY = pytest.StashKey[ConfigError]()
# --dashtam-keep-failed: each phase's report on the item (plugin.py), this process's keeper on the config.
PHASE_REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
KEEPER_KEY = pytest.StashKey[Keeper]()
# Any of these in a test's fixture closure means the test needs the stack.
STACK_FIXTURES = frozenset(
    {
        "dashtam_stack",
        "dashtam_settings",
        "dashtam_db_setup",
        "db_engine",
        "db_session",
        "redis_client",
        "client",
        "_dashtam_prepared",
    }
)


def _one_line(exc: BaseException) -> str:
    """A user's problem as its one-line message; anything else propagates with its traceback."""
    if isinstance(exc, DashtamError):
        return str(exc)
    raise exc


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
def dashtam_db_setup(_dashtam_run: DashtamRun) -> Prepared:
    """This worker's database, cloned from the template: override it (requesting it) to seed data once."""
    try:
        return _dashtam_run.prepare()
    except BaseException as exc:
        message = _one_line(exc)
    # Outside the except block: no chained "during handling" noise, the same one line for every test.
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def _dashtam_prepared(request: pytest.FixtureRequest, _dashtam_run: DashtamRun, dashtam_db_setup: Prepared) -> Prepared:
    # Every fixture that needs the stack goes through here, so an override of dashtam_db_setup is seen by all.
    if _dashtam_run.config.keep_failed:  # --dashtam-keep-failed: what this process's failed tests leave
        request.config.stash[KEEPER_KEY] = Keeper.for_run(_dashtam_run, dashtam_db_setup)
    return dashtam_db_setup


def _keeping(request: pytest.FixtureRequest) -> Keeper | None:
    """The keeper of --dashtam-keep-failed when this test failed (its setup or its call: plugin.py's reports)."""
    reports = request.node.stash.get(PHASE_REPORTS_KEY, {})
    return request.config.stash.get(KEEPER_KEY, None) if any(r.failed for r in reports.values()) else None


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


async def _transaction_impl(
    request: pytest.FixtureRequest, _dashtam_run: DashtamRun, _dashtam_engines: LoopEngines, db_engine: AsyncEngine
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
            if (keeper := _keeping(request)) is not None:  # the commits, before they go
                await keeper.keep_database(request.node.nodeid, raw)
            await _dashtam_run.cleaner.empty(raw, tracker)


@pytest.fixture(autouse=True)
def _dashtam_db_marker(request: pytest.FixtureRequest) -> None:
    # A test marked transaction=True gets its cleanup even when it only uses db_engine.
    if _transaction_requested(request):
        _in_test_loop(request, "transaction")


async def _db_session_impl(
    request: pytest.FixtureRequest, _dashtam_engines: LoopEngines
) -> AsyncIterator[AsyncSession]:
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
        try:
            if (keeper := _keeping(request)) is not None:  # the test's writes, before the rollback
                await keeper.keep_session(request.node.nodeid, isolated)
        finally:
            await isolated.close()


@pytest.fixture(scope="session")
def _dashtam_redis_pools(_dashtam_prepared: Prepared) -> Iterator[LoopRedisPools]:
    from pytest_dashtam.isolation import LoopRedisPools

    if _dashtam_prepared.redis_url is None:  # every Redis fixture needs these pools: one place says why
        pytest.fail(f"pytest-dashtam: {NO_REDIS}", pytrace=False)
    pools = LoopRedisPools(_dashtam_prepared.redis_url)
    yield pools
    pools.close()


async def _redis_client_impl(
    request: pytest.FixtureRequest,
    _dashtam_prepared: Prepared,
    _dashtam_run: DashtamRun,
    _dashtam_redis_pools: LoopRedisPools,
) -> AsyncIterator[Redis]:
    from redis.asyncio import Redis

    from pytest_dashtam.isolation import flush_test_index

    # A client per test over the loop's pool: closing it (aclose) leaves the pool's connections alone.
    client = Redis(connection_pool=await _dashtam_redis_pools.get())
    try:
        yield client
    finally:
        try:
            index = _dashtam_prepared.redis_index
            assert index is not None  # the pools exist only on a stack with Redis
            if (keeper := _keeping(request)) is not None:
                await keeper.note_redis(request.node.nodeid, client, index)
            await flush_test_index(client, index, _dashtam_run.config.dev_redis_index, _dashtam_run.owner)
        finally:
            await client.aclose()


@pytest.fixture(scope="session")
def dashtam_app(_dashtam_run: DashtamRun) -> Any:
    """The project's FastAPI app for `client` (override it to build the app your own way)."""
    from pytest_dashtam.project import load_app

    try:
        return load_app(_dashtam_run.config)
    except BaseException as exc:
        message = _one_line(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def _dashtam_dependencies(_dashtam_run: DashtamRun) -> Dependencies:
    from pytest_dashtam.project import load_dependencies

    try:
        return load_dependencies(_dashtam_run.config)
    except BaseException as exc:
        message = _one_line(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture
def dashtam_dependency_overrides(
    request: pytest.FixtureRequest, _dashtam_dependencies: Dependencies, db_session: AsyncSession
) -> dict[Any, Callable[..., Any]]:
    """What `client` overrides (session dependency, by its shape, on db_session; Redis): extend it in your conftest."""
    from pytest_dashtam.isolation import client_overrides

    # redis_client only for an app with a Redis dependency: a project without Redis has no Redis fixtures.
    redis = request.getfixturevalue("redis_client") if _dashtam_dependencies.redis is not None else None
    return client_overrides(_dashtam_dependencies, db_session, redis)


@pytest.fixture(scope="session")
def dashtam_lifespan() -> bool:
    """Whether `client` runs the app's lifespan (once per event loop scope): override it to return False."""
    return True


@pytest.fixture(scope="session")
def _dashtam_lifespans() -> RunningLifespans:
    from pytest_dashtam.isolation import RunningLifespans

    return RunningLifespans()


async def _lifespan_impl(_dashtam_lifespans: RunningLifespans) -> AsyncIterator[None]:
    from pytest_dashtam.isolation import LoopLifespans

    # The lifespans `client` starts in this loop, shut down when the loop's scope ends.
    lifespans = LoopLifespans()
    with _dashtam_lifespans.running(lifespans):
        yield
    for problem in await lifespans.shutdown():
        from pytest_dashtam.plugin import DashtamTeardownWarning

        warnings.warn(DashtamTeardownWarning(f"pytest-dashtam teardown: {problem}"), stacklevel=1)


async def _client_impl(
    _dashtam_run: DashtamRun,
    dashtam_app: Any,
    dashtam_lifespan: bool,
    dashtam_dependency_overrides: dict[Any, Callable[..., Any]],
    _dashtam_lifespans: RunningLifespans,
) -> AsyncIterator[httpx.AsyncClient]:
    import httpx

    from pytest_dashtam.isolation import LifespanError, dependency_overrides
    from pytest_dashtam.project import app_label

    lifespans, served, message = _dashtam_lifespans.current(), dashtam_app, ""
    try:
        if dashtam_lifespan and lifespans is not None:
            served = await lifespans.serve(dashtam_app, app_label(_dashtam_run.config, dashtam_app))
    except LifespanError as exc:
        message = str(exc)
    if message:  # outside the except block: one line, no "during handling" chain
        pytest.fail(message, pytrace=False)
    with dependency_overrides(dashtam_app, dashtam_dependency_overrides):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=served), base_url="http://test") as http:
            yield http


# --- the per-test async fixtures, in the requesting test's event loop ------------------------------------
#
# asyncpg connections and redis-py's asyncio connections belong to the loop that opened them, so each of these
# fixtures must run in the loop of the test that uses it, and a plugin cannot know in advance which that is
# (a test may run in a function, class, module, package or session loop). pytest-asyncio's public API fixes a
# fixture's loop when it is declared (`loop_scope=`), so each fixture is declared once per loop scope, under a
# private name, and the public fixture (synchronous, no loop of its own) requests the one of its test's loop.

LOOP_SCOPES = ("function", "class", "module", "package", "session")


def _variant_name(name: str, scope: str) -> str:
    return f"_dashtam_{name}_in_{scope}_loop"


def _in_test_loop(request: pytest.FixtureRequest, name: str) -> Any:
    node = request.node
    scope = test_loop_scope(node) if isinstance(node, pytest.Item) else "function"
    return request.getfixturevalue(_variant_name(name, scope))


def _declare_per_loop_scope(name: str, impl: Callable[..., Any], *, scoped: bool = False) -> None:
    """`impl` as a pytest-asyncio fixture once per loop scope (each its own function object: pytest-asyncio
    records the loop scope on the function); `scoped`: the fixture lives as long as its loop."""
    for scope in LOOP_SCOPES:
        variant = types.FunctionType(
            impl.__code__, impl.__globals__, impl.__name__, impl.__defaults__, impl.__closure__
        )
        variant.__annotations__ = dict(impl.__annotations__)
        variant.__qualname__ = variant.__name__ = _variant_name(name, scope)
        globals()[_variant_name(name, scope)] = pytest_asyncio.fixture(
            variant,
            scope=cast("Any", scope if scoped else "function"),
            loop_scope=cast("Any", scope),
            name=_variant_name(name, scope),
        )


for _name, _impl in (
    ("transaction", _transaction_impl),
    ("db_session", _db_session_impl),
    ("redis_client", _redis_client_impl),
    ("client", _client_impl),
):
    _declare_per_loop_scope(_name, _impl)
_declare_per_loop_scope("lifespan", _lifespan_impl, scoped=True)


@pytest.fixture
def _dashtam_transaction(request: pytest.FixtureRequest) -> WriteTracker:
    tracker: WriteTracker = _in_test_loop(request, "transaction")
    return tracker


@pytest.fixture
def db_session(request: pytest.FixtureRequest) -> AsyncSession:
    """An AsyncSession whose commits are savepoints, rolled back after the test (real with the marker)."""
    session: AsyncSession = _in_test_loop(request, "db_session")
    return session


@pytest.fixture
def redis_client(request: pytest.FixtureRequest) -> Redis:
    """A redis.asyncio client on this worker's index (str values), FLUSHDB on that index after the test."""
    client: Redis = _in_test_loop(request, "redis_client")
    return client


@pytest.fixture
def client(request: pytest.FixtureRequest) -> httpx.AsyncClient:
    """An httpx.AsyncClient on the app (its lifespan run once per loop scope), with dashtam_dependency_overrides."""
    _in_test_loop(request, "lifespan")  # first: the app's lifespan lives as long as the test's loop
    http: httpx.AsyncClient = _in_test_loop(request, "client")
    return http
