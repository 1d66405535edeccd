"""What one test is bound to: its database session, its Redis index's flush, the app's overridden dependencies.

SQLAlchemy numbers savepoints per `Connection` object; on one long-lived connection every test's savepoints
get new names, each prepared and cached by asyncpg, and the per-test cost grows. A fresh `Connection` per
test (taken from the pool: the same physical connection) restarts the numbering.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_dashtam.errors import SafetyError
from pytest_dashtam.safety import check_redis_index, raise_for

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, AsyncTransaction


def dashtam_db_marker(transaction: bool = False) -> bool:
    """The `dashtam_db` marker's signature: validates its arguments, returns `transaction`."""
    if not isinstance(transaction, bool):
        raise TypeError(f"transaction must be True or False, got {transaction!r}")
    return transaction


@dataclass
class IsolatedSession:
    """A test's session and what has to be undone after it."""

    session: AsyncSession
    connection: AsyncConnection | None = None
    transaction: AsyncTransaction | None = None

    async def close(self) -> None:
        """Close the session and roll back everything the test did (rollback mode)."""
        try:
            await self.session.close()
        finally:
            try:
                if self.transaction is not None and self.transaction.is_active:
                    await self.transaction.rollback()
            finally:
                if self.connection is not None:
                    await self.connection.close()


async def open_rollback_session(engine: AsyncEngine) -> IsolatedSession:
    """A session inside an outer transaction: its commits become savepoints, all rolled back after the test.

    `expire_on_commit=False` because code under test often returns ORM objects after committing them, and
    an expired attribute would need a lazy load, which async SQLAlchemy cannot do implicitly.
    """
    from sqlalchemy.ext.asyncio import AsyncSession

    connection = await engine.connect()
    transaction = await connection.begin()
    session = AsyncSession(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    return IsolatedSession(session, connection, transaction)


def open_commit_session(engine: AsyncEngine) -> IsolatedSession:
    """A plain session on the engine: commits are real (the `dashtam_db(transaction=True)` marker)."""
    from sqlalchemy.ext.asyncio import AsyncSession

    return IsolatedSession(AsyncSession(bind=engine, expire_on_commit=False))


# --- Redis ---------------------------------------------------------------------------------------------


async def flush_test_index(client: Redis, index: int, dev_index: int, owner: str) -> None:
    """FLUSHDB on the test index, after checking the client really is on it, it is not the dev index, and
    no other run's stamp is on it (leases.flush_owned_index: the stamp is set again in the same step).

    Never FLUSHALL: other indexes hold other workers' and other people's data.
    """
    from pytest_dashtam.leases import flush_owned_index

    raise_for([v for v in (check_redis_index(index, dev_index),) if v is not None])
    actual = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
    if actual != index:
        raise SafetyError(
            f"refusing FLUSHDB: the Redis client is on index {actual}, the test index is {index}; "
            "do not change the client's database inside a test"
        )
    await flush_owned_index(client, index, owner)


# --- the app's dependencies -------------------------------------------------------------------------------


@contextlib.contextmanager
def dependency_overrides(app: Any, overrides: Mapping[Any, Callable[..., Any]]) -> Iterator[None]:
    """`app.dependency_overrides` with `overrides` added for a while, then exactly as it was (an override the
    user's own code had set for one of these dependencies included). Nothing to add: any ASGI app will do."""
    if not overrides:
        yield
        return
    missing = object()
    saved = {dep: app.dependency_overrides.get(dep, missing) for dep in overrides}
    app.dependency_overrides.update(overrides)
    try:
        yield
    finally:
        for dep, value in saved.items():
            if value is missing:
                app.dependency_overrides.pop(dep, None)
            else:
                app.dependency_overrides[dep] = value
