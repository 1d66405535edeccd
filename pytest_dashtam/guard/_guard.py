"""The connection guard: this run's stack, what it may use, and the class-level hooks that enforce it."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pytest_dashtam.errors import DashtamError
from pytest_dashtam.guard._endpoints import (
    Target,
    as_int,
    default_user,
    pg_endpoint,
    pg_endpoints,
    redis_endpoint,
    target_redis_endpoint,
)
from pytest_dashtam.guard._hooks import connect_method, dialect_class_listeners, with_subclasses, wrap_async, wrap_sync
from pytest_dashtam.guard._params import pg_params

INTERNAL_PREFIX = "pytest-dashtam"
"""The client name / application name the plugin gives its own connections (leases, bookkeeping)."""

DEFAULT_FIX = "connect through the database and Redis URLs pytest-dashtam provides for this run"


class GuardError(DashtamError):
    """A connection to a server, database or Redis index outside this run's stack was refused."""


_LOCK = threading.RLock()
_ACTIVE: ConnectionGuard | None = None
_MISSING = object()


def active_guard() -> ConnectionGuard | None:
    """The guard whose hooks are in place in this process, if any."""
    return _ACTIVE


class ConnectionGuard:
    """This run's stack, the databases and indexes it may use, and the class-level hooks that enforce them."""

    def __init__(
        self, *, postgres: Target | None, redis: Target | None, hint: str = "", no_redis: str | None = None
    ) -> None:
        self.postgres = postgres
        self.redis = redis
        self.hint = hint
        # Why no Redis server is part of the run when `redis` is None (default: the stack is not running).
        self.no_redis = no_redis or "the test stack is not running, so no Redis server is part of this run"
        self._databases: set[str] = set()
        self._indexes: set[int] = set()
        self._prefixes: tuple[str, ...] = (INTERNAL_PREFIX,)
        # Normalised once: the checks run on every new connection.
        self._pg = pg_endpoint(postgres.host, postgres.port) if postgres is not None else None
        self._rd = target_redis_endpoint(redis) if redis is not None else None
        self._patches: list[tuple[type[Any], str, object]] = []
        self._listener: Callable[..., None] | None = None
        self._dialect_had_events: bool | None = None
        self._suspended = 0

    # -- what is allowed ---------------------------------------------------------------------------------------

    def allow_database(self, name: str) -> None:
        """Let this process use ``name`` on the stack's PostgreSQL server (its test database, the template)."""
        self._databases.add(name)

    def allow_redis_index(self, index: int) -> None:
        """Let this process use Redis database ``index`` on the stack's Redis server."""
        self._indexes.add(index)

    def allow_internal_prefix(self, prefix: str) -> None:
        """Trust connections named ``prefix...`` on any database/index, but only of the stack's own servers.

        The plugin's own connections (index leases, bookkeeping) need indexes no test is given; they identify
        themselves by Redis client_name or PostgreSQL application_name. ``pytest-dashtam`` is always trusted.
        """
        if prefix and prefix not in self._prefixes:
            self._prefixes = (*self._prefixes, prefix)

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Let connections through for a while: for code that reaches other servers on purpose (the plugin's
        own test suite, a test that checks a foreign server is untouched), as pytest-django's
        `django_db_blocker.unblock()` does. Nesting is counted."""
        with _LOCK:
            self._suspended += 1
        try:
            yield
        finally:
            with _LOCK:
                self._suspended -= 1

    def _internal(self, name: str | None) -> bool:
        return name is not None and name.startswith(self._prefixes)

    # -- the checks ----------------------------------------------------------------------------------------------

    def _refuse(self, what: str, reason: str) -> GuardError:
        message = f"pytest-dashtam refused a connection to {what}: {reason}; {self.hint or DEFAULT_FIX}"
        return GuardError(message.replace("\r", " ").replace("\n", " "))  # one line, whatever the hint or a host held

    def check_postgres(
        self,
        host: str | None,
        port: int | str | None,
        database: str | None,
        *,
        user: str | None = None,
        application_name: str | None = None,
    ) -> None:
        """Raise GuardError unless every server these settings may reach is the stack's, with an allowed database.

        ``host`` and ``port`` may be libpq comma lists; missing values take libpq's defaults (PGHOST or the
        default socket, PGPORT or 5432, PGDATABASE or the user name).
        """
        endpoints = pg_endpoints(host, port)
        db = database or os.environ.get("PGDATABASE") or user or os.environ.get("PGUSER") or default_user()
        shown = ", ".join(e.shown for e in endpoints)
        what = f"PostgreSQL database {db!r} at {shown}"
        stack = self._pg
        if stack is None:
            raise self._refuse(what, "the test stack is not running, so no PostgreSQL server is part of this run")
        if any(e.key != stack.key or e.port != stack.port for e in endpoints):
            raise self._refuse(what, f"not part of this run's stack (this run uses {self._uses_pg()})")
        if db in self._databases or self._internal(application_name):
            return
        raise self._refuse(what, f"not part of this run's stack (this run uses {self._uses_pg()})")

    def _uses_pg(self) -> str:
        assert self._pg is not None
        if not self._databases:
            return f"no database yet at {self._pg.shown}"
        return f"{' or '.join(repr(d) for d in sorted(self._databases))} at {self._pg.shown}"

    def check_redis(
        self,
        host: str | None,
        port: int | None,
        index: int,
        *,
        client_name: str | None = None,
        unix_path: str | None = None,
    ) -> None:
        """Raise GuardError unless this is the stack's Redis server and an allowed index (or a plugin connection)."""
        key, number, shown = redis_endpoint(host, port, unix_path)
        what = f"Redis index {index} at {shown}"
        stack = self._rd
        if stack is None:
            raise self._refuse(what, self.no_redis)
        if key != stack[0] or number != stack[1]:
            raise self._refuse(what, f"not part of this run's stack (this run uses {self._uses_redis()})")
        if index in self._indexes or self._internal(client_name):
            return
        raise self._refuse(what, f"not part of this run's stack (this run uses {self._uses_redis()})")

    def _uses_redis(self) -> str:
        assert self._rd is not None
        indexes = sorted(self._indexes)
        if not indexes:
            return f"no index yet at {self._rd[2]}"
        word = "index" if len(indexes) == 1 else "indexes"
        return f"{word} {', '.join(map(str, indexes))} at {self._rd[2]}"

    # -- the hooks -----------------------------------------------------------------------------------------------

    def _check_dbapi_connect(self, dialect: Any, cargs: Sequence[Any], cparams: Mapping[str, Any]) -> None:
        if self._suspended or getattr(dialect, "name", None) != "postgresql":
            return
        p = pg_params(cargs, cparams)
        self.check_postgres(p.host, p.port, p.database, user=p.user, application_name=p.application_name)

    def _check_redis_connection(self, conn: Any) -> None:
        if self._suspended or type(conn).__module__.startswith("fakeredis"):  # an in-process fake: no server is reached
            return
        path = getattr(conn, "path", None)
        db = getattr(conn, "db", 0)
        index = as_int(db) if db not in (None, "") else 0
        self.check_redis(
            getattr(conn, "host", None) if not path else None,
            as_int(getattr(conn, "port", None)),
            index if index is not None else -1,
            client_name=getattr(conn, "client_name", None),
            unix_path=str(path) if path else None,
        )

    def install(self) -> None:
        """Put the hooks in place; a guard already installed (this or another) is replaced, never stacked."""
        global _ACTIVE
        with _LOCK:
            if _ACTIVE is self:
                return
            if _ACTIVE is not None:
                _ACTIVE.uninstall()
            try:
                self._install_sqlalchemy()
                self._install_redis()
            except BaseException:
                self._remove_hooks()
                raise
            _ACTIVE = self

    def uninstall(self) -> None:
        """Remove every hook this guard added and give the classes back their original attributes."""
        global _ACTIVE
        with _LOCK:
            self._remove_hooks()
            if _ACTIVE is self:
                _ACTIVE = None

    def _install_sqlalchemy(self) -> None:
        try:
            from sqlalchemy import event
            from sqlalchemy.engine import Dialect, Engine
        except ImportError:
            return

        def guard_do_connect(dialect: Any, conn_rec: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
            self._check_dbapi_connect(dialect, cargs, cparams)

        # Listening sets Dialect._has_events (what makes SQLAlchemy fire do_connect at all); remember it so
        # uninstall can give the class back as it was.
        had = Dialect.__dict__.get("_has_events")
        self._dialect_had_events = had if isinstance(had, bool) else None
        # insert=True: first among class-level listeners, so one that returns its own connection cannot skip it.
        event.listen(Engine, "do_connect", guard_do_connect, insert=True)
        self._listener = guard_do_connect

    def _install_redis(self) -> None:
        check = self._check_redis_connection
        try:
            import redis.connection as sync_connection
        except ImportError:
            pass
        else:
            for cls in with_subclasses(sync_connection.AbstractConnection):
                name = connect_method(cls)
                if name is not None:
                    self._patch(cls, name, wrap_sync(cls.__dict__[name], check))
        try:
            import redis.asyncio.connection as async_connection
        except ImportError:
            return
        for cls in with_subclasses(async_connection.AbstractConnection):
            name = connect_method(cls)
            if name is not None:
                self._patch(cls, name, wrap_async(cls.__dict__[name], check))

    def _patch(self, cls: type[Any], name: str, value: object) -> None:
        self._patches.append((cls, name, cls.__dict__.get(name, _MISSING)))
        setattr(cls, name, value)

    def _remove_hooks(self) -> None:
        while self._patches:
            cls, name, original = self._patches.pop()
            if original is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, original)
        if self._listener is not None:
            from sqlalchemy import event
            from sqlalchemy.engine import Dialect, Engine

            if event.contains(Engine, "do_connect", self._listener):
                event.remove(Engine, "do_connect", self._listener)
            self._listener = None
            if self._dialect_had_events is not None and not dialect_class_listeners(Dialect):
                Dialect._has_events = self._dialect_had_events
            self._dialect_had_events = None
