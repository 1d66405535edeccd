"""What the app's session dependency gives, and the test's stand-in of the same shape for `client`.

Projects hand out their database in three shapes: a session per request (`-> AsyncIterator[AsyncSession]`),
the sessionmaker itself (`-> AsyncIterator[async_sessionmaker]`, e.g. rhoboro/async-fastapi-sqlalchemy, whose
handlers run `async with maker.begin() as session`), or the engine (`async with engine.begin() as conn`). The
dependency's declared return type says which (`AsyncIterator`/`AsyncGenerator`/`Iterator`/`Generator`,
`Annotated` and `X | None` unwrapped); an unannotated dependency gets a session, as before.

Each stand-in works on the test's connection, inside its outer transaction: a sessionmaker whose sessions
join it with savepoints, an engine whose connections are that connection with each of their transactions a
savepoint. What the app commits through them is seen by the test's `db_session` and rolled back after the
test. Under `dashtam_db(transaction=True)` the stand-ins are the real thing on the test database.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import types
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from pytest_dashtam.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, AsyncTransaction

    from pytest_dashtam.project import Dependencies

Shape = Literal["session", "sessionmaker", "engine"]
SHAPES: tuple[Shape, ...] = ("session", "sessionmaker", "engine")

# What a dependency may be declared to give around the value (a generator dependency yields it).
_WRAPPERS = (
    collections.abc.AsyncIterator,
    collections.abc.AsyncGenerator,
    collections.abc.Iterator,
    collections.abc.Generator,
)
# The names as written in an annotation that cannot be evaluated (imported under TYPE_CHECKING only).
_NAMES: dict[str, Shape] = {"async_sessionmaker": "sessionmaker", "AsyncEngine": "engine", "AsyncSession": "session"}
_NAME_PATTERN = re.compile(r"\b(" + "|".join(_NAMES) + r")\b")


def _return_annotation(dependency: Callable[..., Any]) -> object:
    """The declared return type, evaluated where it can be (else the string as written); `empty` if none."""
    try:
        return inspect.signature(dependency, eval_str=True).return_annotation
    except (NameError, SyntaxError, TypeError, AttributeError):
        pass
    except ValueError:
        return inspect.Signature.empty
    try:
        return inspect.signature(dependency).return_annotation
    except (TypeError, ValueError):
        return inspect.Signature.empty


def _unwrap(annotation: object) -> object:
    """The value type inside Annotated[...], AsyncIterator[...] and the like, and `X | None`."""
    while True:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated or (origin in _WRAPPERS and args):
            annotation = args[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation


def _classify(annotation: object) -> Shape | None:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    if isinstance(annotation, str):
        found = _NAME_PATTERN.search(annotation)
        return _NAMES[found.group(1)] if found else None
    cls = typing.get_origin(annotation) or annotation
    if not isinstance(cls, type):
        return None
    if issubclass(cls, async_sessionmaker):
        return "sessionmaker"
    if issubclass(cls, AsyncEngine):
        return "engine"
    if issubclass(cls, AsyncSession):
        return "session"
    return None


def _describe(annotation: object) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    return re.sub(r"\b(?:[a-z_][\w]*\.)+", "", repr(annotation))  # `typing.AsyncIterator[x.y.Z]` -> short names


def dependency_shape(dependency: Callable[..., Any], spec: str) -> Shape:
    """What `dependency` (named `spec` by dashtam_session_dependency) gives, by its declared return type."""
    annotation = _return_annotation(dependency)
    if annotation is inspect.Signature.empty or annotation is typing.Any:
        return "session"  # unannotated: the session it has always been given
    shape = _classify(_unwrap(annotation))
    if shape is None:
        raise ConfigError(
            f"dashtam_session_dependency={spec!r} is declared to give {_describe(annotation)}; `client` stands "
            "in for a dependency that gives an AsyncSession, an async_sessionmaker or an AsyncEngine (or an "
            "AsyncIterator of one): annotate it so, or override it yourself in dashtam_dependency_overrides"
        )
    return shape


def stand_in(shape: Shape, session: AsyncSession) -> Any:
    """The test's object of `shape`, on `session`'s connection (the test's outer transaction) or, under a
    real-commit test, on its engine."""
    from sqlalchemy.ext.asyncio import AsyncConnection, async_sessionmaker

    bind = session.bind
    if shape == "session":
        return session
    if shape == "sessionmaker":
        if isinstance(bind, AsyncConnection):
            # As db_session: the sessions' commits are savepoints, rolled back with the test's transaction.
            return async_sessionmaker(bind=bind, expire_on_commit=False, join_transaction_mode="create_savepoint")
        return async_sessionmaker(bind=bind, expire_on_commit=False)
    if isinstance(bind, AsyncConnection):
        return JoinedEngine(bind)
    return bind


def override_with(value: Any) -> Callable[[], Awaitable[Any]]:
    """A FastAPI dependency override giving `value` (no parameters: nothing more for FastAPI to resolve)."""

    async def override() -> Any:
        return value

    return override


def client_overrides(dependencies: Dependencies, session: AsyncSession, redis: Any) -> dict[Any, Callable[..., Any]]:
    """`{dependency: override}` for `client`: the session dependency's stand-in of its shape, the Redis client;
    a dependency the project did not name (None) is left alone."""
    overrides: dict[Any, Callable[..., Any]] = {}
    if dependencies.session is not None:
        overrides[dependencies.session] = override_with(stand_in(dependencies.session_shape, session))
    if dependencies.redis is not None:
        overrides[dependencies.redis] = override_with(redis)
    return overrides


# --- the engine stand-in ------------------------------------------------------------------------------


class JoinedEngine:
    """An engine whose connections are the test's connection: what an engine dependency gets under `client`.

    `connect()` and `begin()` work as AsyncEngine's do (awaited or as `async with`); each transaction of a
    connection is a savepoint inside the test's outer transaction, so a commit is seen by the test and
    rolled back after it, and closing a connection without committing rolls back what it did. `dispose()` does
    nothing (the test's engine is the plugin's). The connections share one database connection: use them one
    after another, as a request handler does. It is no `bind` for a Session: give such code a sessionmaker.
    """

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self.url = connection.engine.url
        self.dialect = connection.dialect
        self.name = connection.dialect.name
        self.driver = connection.dialect.driver

    def connect(self) -> JoinedConnection:
        return JoinedConnection(self._connection, self)

    def begin(self) -> _Begin:
        return _Begin(JoinedConnection(self._connection, self))

    async def dispose(self, close: bool = True) -> None:
        return None

    def __repr__(self) -> str:
        return f"<JoinedEngine: the test's connection to {self.url!r}>"


class _Begin:
    """`engine.begin()`: a connection in a transaction, committed at the end of the block (rolled back on error)."""

    def __init__(self, connection: JoinedConnection) -> None:
        self._connection = connection

    async def __aenter__(self) -> JoinedConnection:
        return await self._connection.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                await self._connection.end(commit=True)
        finally:
            await self._connection.close()


class JoinedConnection:
    """The test's AsyncConnection as a connection of `JoinedEngine`: its transactions are savepoints.

    Like an AsyncConnection it is in a transaction from the start (autobegin); `commit()` and `rollback()`
    end it and the next one begins. Everything else (`execute`, `scalars`, `stream`, `run_sync`, ...) is the
    test connection's own.
    """

    def __init__(self, connection: AsyncConnection, engine: JoinedEngine) -> None:
        self._connection = connection
        self.engine = engine
        self._savepoint: AsyncTransaction | None = None
        self.closed = False

    async def start(self) -> JoinedConnection:
        if self._savepoint is None:
            self._savepoint = await self._connection.begin_nested()
        return self

    def __await__(self) -> typing.Generator[Any, None, JoinedConnection]:
        return self.start().__await__()

    async def __aenter__(self) -> JoinedConnection:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        await self.close()

    async def end(self, commit: bool) -> None:
        """End this transaction (release or roll back its savepoint); the next begins with `start()`."""
        savepoint, self._savepoint = self._savepoint, None
        if savepoint is not None and savepoint.is_active:
            await (savepoint.commit() if commit else savepoint.rollback())

    async def commit(self) -> None:
        """Release this transaction's savepoint (its work stays in the test's transaction) and begin the next."""
        await self.end(commit=True)
        await self.start()

    async def rollback(self) -> None:
        """Roll back to this transaction's savepoint and begin the next."""
        await self.end(commit=False)
        await self.start()

    def begin(self) -> _Transaction:
        """The transaction in progress, as `conn.begin()` gives it (`async with`, or awaited then committed)."""
        return _Transaction(self)

    def in_transaction(self) -> bool:
        return not self.closed

    async def close(self) -> None:
        """Roll back what was not committed, as closing a connection does; the test's connection stays open."""
        if not self.closed:
            self.closed = True
            await self.end(commit=False)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._connection, name)


class _Transaction:
    def __init__(self, connection: JoinedConnection) -> None:
        self._connection = connection

    async def _started(self) -> _Transaction:
        await self._connection.start()
        return self

    def __await__(self) -> typing.Generator[Any, None, _Transaction]:
        return self._started().__await__()

    async def __aenter__(self) -> _Transaction:
        return await self._started()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        await (self.commit() if exc_type is None else self.rollback())

    @property
    def is_active(self) -> bool:
        return not self._connection.closed

    async def commit(self) -> None:
        await self._connection.commit()

    async def rollback(self) -> None:
        await self._connection.rollback()
