"""Per-test isolation: a rolled-back database session, real-commit cleanup, and the Redis flush.

Three costs shape this package (measured on this project's machines, see issue 4), one module each:

* `loops`: asyncpg connections belong to the event loop that opened them, so every pooled resource is kept
  per event loop and closed inside it.
* `sessions`: SQLAlchemy numbers savepoints per `Connection` object, so each test gets a fresh `Connection`
  (the same physical one, from the pool) to keep the statement caches from growing.
* `cleanup`: DELETE of the tables a real-commit test wrote is ~10x faster than TRUNCATE of them all.

After a failed test, `keep` copies what it left into a database of its own (`--dashtam-keep-failed`).

And what `client` needs around the app: `lifespan` runs the app's ASGI lifespan in the test's loop, `shapes`
stands in for a session dependency that gives a session, a sessionmaker or an engine.
"""

from __future__ import annotations

from pytest_dashtam.isolation.cleanup import TableCleaner, WriteTracker
from pytest_dashtam.isolation.keep import Keeper, copy_order, kept_database_name
from pytest_dashtam.isolation.lifespan import Lifespan, LifespanError, LoopLifespans, RunningLifespans
from pytest_dashtam.isolation.loops import (
    CONNECTIONS_PER_WORKER,
    MAX_OVERFLOW,
    POOL_SIZE,
    LoopEngines,
    LoopRedisPools,
    PerLoop,
    run_async,
    test_loop_scope,
)
from pytest_dashtam.isolation.sessions import (
    IsolatedSession,
    dashtam_db_marker,
    dependency_overrides,
    flush_test_index,
    open_commit_session,
    open_rollback_session,
)
from pytest_dashtam.isolation.shapes import (
    JoinedEngine,
    Shape,
    client_overrides,
    dependency_shape,
    override_with,
    stand_in,
)

__all__ = [
    "CONNECTIONS_PER_WORKER",
    "MAX_OVERFLOW",
    "POOL_SIZE",
    "IsolatedSession",
    "JoinedEngine",
    "Keeper",
    "Lifespan",
    "LifespanError",
    "LoopEngines",
    "LoopLifespans",
    "LoopRedisPools",
    "PerLoop",
    "RunningLifespans",
    "Shape",
    "TableCleaner",
    "WriteTracker",
    "client_overrides",
    "copy_order",
    "dashtam_db_marker",
    "dependency_overrides",
    "dependency_shape",
    "flush_test_index",
    "kept_database_name",
    "open_commit_session",
    "open_rollback_session",
    "override_with",
    "run_async",
    "stand_in",
    "test_loop_scope",
]
