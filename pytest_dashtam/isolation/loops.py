"""Event loops: sync code running a coroutine, and one pooled resource per event loop.

asyncpg connections belong to the event loop that opened them. pytest-asyncio may run tests in a function-,
module- or session-scoped loop, so one pooled engine shared across loops fails with "attached to a different
loop". `LoopEngines` keeps one pooled engine per loop and disposes it inside that loop when the loop shuts
down (an async generator parked in the loop is closed by `loop.shutdown_asyncgens()`, which `asyncio.Runner`
and pytest-asyncio call before closing a loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pytest_dashtam.safety import check_test_name, database_name_from_url, raise_for

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")
R = TypeVar("R")

# One test holds one connection (its session and the app's requests share it); a few more for tests that
# open their own, and for real-commit tests whose session checks out per transaction.
POOL_SIZE = 5
MAX_OVERFLOW = 5
# What one worker may hold at once on the server: its pool, a db_engine connection and an admin connection.
CONNECTIONS_PER_WORKER = POOL_SIZE + MAX_OVERFLOW + 2


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code in a private event loop.

    Never `asyncio.run()` on the caller's thread: it would set and then clear the thread's current event
    loop under pytest-asyncio. When a loop is already running here, the work goes to a helper thread.
    """

    async def main() -> T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_in_fresh_loop(main())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.Runner(loop_factory=asyncio.new_event_loop).run(main())).result()


def test_loop_scope(item: Any) -> str:
    """The loop a pytest item runs in, by pytest-asyncio's documented rules: the marker's loop_scope, else
    the `asyncio_default_test_loop_scope` ini option, else a loop per test."""
    marker = item.get_closest_marker("asyncio")
    scope = (marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")) if marker is not None else None
    if not scope:
        try:
            scope = item.config.getini("asyncio_default_test_loop_scope")
        except ValueError:
            scope = None
    return str(scope or "function")


# How long the tasks of an interrupted loop get to unwind (close their connections) before it is closed.
_UNWIND_S = 5.0


def _run_in_fresh_loop(main: Coroutine[Any, Any, T]) -> T:
    """`main` in a new loop that Ctrl-C stops as Python's default handler does: KeyboardInterrupt at once.

    `asyncio.Runner` (and `asyncio.run`) turn SIGINT into a cancellation of the main task and raise
    KeyboardInterrupt only if the task ends cancelled; any code under it that takes a CancelledError for a
    timeout (a `wait_for` racing its inner future on 3.11, a driver's connect timeout) ends the task
    normally and the interrupt is lost: the run goes on after Ctrl-C, or after the watchdog's SIGINT. Here
    the interrupt propagates out of the loop, then the pending tasks are cancelled and given a bounded
    time to unwind, as `asyncio.run` did before Python 3.11.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=_UNWIND_S))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


@dataclass
class _LoopEntry(Generic[R]):
    loop: weakref.ReferenceType[asyncio.AbstractEventLoop]
    value: R
    watcher: AsyncIterator[None] | None = None
    closed: bool = False


class PerLoop(Generic[R]):
    """One `R` per event loop, made on first use in that loop and closed inside it when the loop shuts down.

    The closing is an async generator parked in the loop: `loop.shutdown_asyncgens()` (called by
    `asyncio.Runner`, hence by pytest-asyncio, before a loop closes) resumes it, so the resource is closed
    by the loop that owns its connections.
    """

    def __init__(self, create: Callable[[], R], close: Callable[[R], Awaitable[None]]) -> None:
        self._create = create
        self._close = close
        self._entries: dict[int, _LoopEntry[R]] = {}
        self.created = 0

    async def get(self) -> R:
        """The resource of the running loop."""
        loop = asyncio.get_running_loop()
        entry = self._entries.get(id(loop))
        if entry is not None and entry.loop() is loop and not entry.closed:
            return entry.value
        entry = _LoopEntry(weakref.ref(loop), self._create())
        self._entries[id(loop)] = entry
        self.created += 1
        entry.watcher = self._watch(id(loop), entry)
        await anext(entry.watcher)
        return entry.value

    async def _watch(self, key: int, entry: _LoopEntry[R]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if self._entries.get(key) is entry:
                del self._entries[key]
            if not entry.closed:
                entry.closed = True
                await self._close(entry.value)

    def values(self) -> list[R]:
        """The resources alive now."""
        return [e.value for e in self._entries.values() if not e.closed]

    def close(self) -> None:
        """Close the resources of loops still open and idle; a closed loop's connections are already gone."""
        for key, entry in list(self._entries.items()):
            loop = entry.loop()
            self._entries.pop(key, None)
            if entry.closed or entry.watcher is None:
                continue
            if loop is not None and not loop.is_closed() and not loop.is_running():
                watcher = entry.watcher
                loop.run_until_complete(watcher.aclose())  # type: ignore[attr-defined]
            entry.closed = True


class LoopEngines(PerLoop["AsyncEngine"]):
    """One pooled `AsyncEngine` on the test database per event loop."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        name = database_name_from_url(url)
        # Everything this class creates can reach DELETE: refuse a non-test database outright.
        raise_for([v for v in (check_test_name(name, ""),) if v is not None])
        self.url = url
        kwargs: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW, **engine_kwargs}

        base: list[AsyncEngine] = []

        def create() -> AsyncEngine:
            from sqlalchemy.engine import Engine
            from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

            if not base:
                base.append(create_async_engine(url, **kwargs))
                return base[0]
            # Later loops (function-scoped loops: one per test) get a fresh pool of the same kind, with its
            # connect listeners, on the dialect the first engine already initialised: that skips the
            # first-connect queries (server version, schema...), about a third of a new engine's cost.
            first = base[0].sync_engine
            return AsyncEngine(Engine(first.pool.recreate(), first.dialect, first.url))

        async def close(engine: AsyncEngine) -> None:
            await engine.dispose()

        super().__init__(create, close)

    async def engine(self) -> AsyncEngine:
        """The engine for the running loop."""
        return await self.get()

    def engines(self) -> list[AsyncEngine]:
        return self.values()


class LoopRedisPools(PerLoop["ConnectionPool"]):
    """One Redis connection pool on the test index per event loop: no connect/HELLO/SELECT per test."""

    def __init__(self, url: str) -> None:
        def create() -> ConnectionPool:
            from redis.asyncio import ConnectionPool

            return ConnectionPool.from_url(url, decode_responses=True)

        async def close(pool: ConnectionPool) -> None:
            await pool.disconnect()

        super().__init__(create, close)
