"""Refuse, before any socket opens, a connection to a PostgreSQL database or Redis index outside this run's stack.

A test that reaches a developer's database (a hard-coded URL, a settings object read before the plugin exported
its URLs, an Alembic env.py with its own idea of the target) can destroy data, and one that reaches another
run's database makes both flaky. Like pytest-django's "Database access not allowed" blocker, the guard turns
that into an immediate, one-line error that names the target, what the run uses instead and the fix.

The seams are where every connection of the supported stack is born, so the check runs once per new
connection, never per query:

* SQLAlchemy's ``do_connect`` dialect event, listened for on the ``Engine`` class: it fires for every engine,
  sync or async, created before or after ``install()``, just before the DBAPI's ``connect()``.
* redis-py's ``AbstractConnection.connect_check_health`` (sync and asyncio): ``connect()``, the pool's
  checkout, ``send_packed_command`` on a fresh connection and Sentinel's ``connect_to`` all go through it, and
  it is defined once on the abstract class, so TCP, SSL and Unix socket subclasses are covered. The check sits
  in front of it, outside redis-py's ``try`` blocks, so a refusal is never turned into a retried
  ``ConnectionError``.

A connection made with asyncpg or psycopg directly, or an engine built with its own ``creator``, does not pass
these seams and is not checked.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import ipaddress
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_dashtam.errors import DashtamError
from pytest_dashtam.urls import mask_url

__all__ = ["INTERNAL_PREFIX", "ConnectionGuard", "GuardError", "Target", "active_guard"]

INTERNAL_PREFIX = "pytest-dashtam"
"""The client name / application name the plugin gives its own connections (leases, bookkeeping)."""

DEFAULT_FIX = "connect through the database and Redis URLs pytest-dashtam provides for this run"

_PG_DEFAULT_PORT = 5432
_REDIS_DEFAULT_PORT = 6379
# libpq's compiled-in socket directory differs between builds (Debian: /var/run/postgresql, upstream: /tmp),
# so a connection that names none of them and one that names any of them are taken to mean the same server.
_DEFAULT_SOCKET_DIRS = frozenset({"/var/run/postgresql", "/run/postgresql", "/tmp"})
_DEFAULT_SOCKET_KEY = "unix:<default>"
_LOOPBACK_KEY = "loopback"
_SOCKET_FILE = re.compile(r"^(?P<dir>.*)/\.s\.PGSQL\.(?P<port>\d+)$")
_KV = re.compile(r"\s*(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)")


class GuardError(DashtamError):
    """A connection to a server, database or Redis index outside this run's stack was refused."""


@dataclass(frozen=True)
class Target:
    """One server endpoint of the stack; ``host`` may be a Unix socket path (Redis) or directory (PostgreSQL)."""

    host: str
    port: int | None


# --------------------------------------------------------------------------------------------------------------
# Host and port normalisation (no name resolution: the guard must not touch the network)


def _host_key(host: str) -> str:
    """A key under which every spelling of the same TCP host compares equal."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h in ("localhost", "localhost."):
        return _LOOPBACK_KEY
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return "name:" + h.rstrip(".")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # Connecting to the unspecified address reaches this machine too.
    if ip.is_loopback or ip.is_unspecified:
        return _LOOPBACK_KEY
    return "ip:" + ip.compressed


def _pg_host_key(host: str) -> str:
    """Like ``_host_key``, plus libpq's rules for Unix socket directories ('/...' and Linux's abstract '@...')."""
    h = host.strip()
    if not h:
        return _DEFAULT_SOCKET_KEY
    if h.startswith("/"):
        path = os.path.normpath(h)
        return _DEFAULT_SOCKET_KEY if path in _DEFAULT_SOCKET_DIRS else "unix:" + path
    if h.startswith("@"):
        return "unix:" + h
    return _host_key(h)


def _show_host(host: str) -> str:
    """The host as a message shows it: bracketed IPv6, never a password that was pasted into it."""
    h = host.strip()
    if "://" in h:
        h = mask_url(h)
    elif "@" in h and not h.startswith("@"):
        h = "***@" + h.rsplit("@", 1)[1]
    if ":" in h and not h.startswith(("[", "/", "@")) and "://" not in h:
        h = f"[{h}]"
    return h


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


@dataclass(frozen=True)
class _PgEndpoint:
    key: str
    port: int | None  # None: not a port number (libpq would fail); it matches nothing
    shown: str


def _pg_endpoint(host: str, port: str | int | None) -> _PgEndpoint:
    """One libpq host entry with its port; an empty host is libpq's default socket, an empty port 5432."""
    h = host.strip()
    match = _SOCKET_FILE.match(h)
    if match:  # a socket *file*: the directory and the port are both in the name
        h, port = match["dir"] or "/", match["port"]
    number = _PG_DEFAULT_PORT if port is None or (isinstance(port, str) and not port.strip()) else _as_int(port)
    shown_port = str(number) if number is not None else repr(port)
    if not h:
        shown = f"the default Unix socket (.s.PGSQL.{shown_port})"
    elif h.startswith(("/", "@")):
        shown = f"{h.rstrip('/') or '/'}/.s.PGSQL.{shown_port}"
    else:
        shown = f"{_show_host(h)}:{shown_port}"
    return _PgEndpoint(_pg_host_key(h), number, shown)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",")]


def _pg_endpoints(host: str | None, port: int | str | None) -> list[_PgEndpoint]:
    """Every server libpq (or asyncpg) may try for these settings, environment defaults applied."""
    hosts = _split(host) if host else _split(os.environ.get("PGHOST", ""))
    if port is None or (isinstance(port, str) and not port.strip()):
        port = os.environ.get("PGPORT", "")
    ports: list[str | int | None] = list(_split(port)) if isinstance(port, str) else [port]
    if len(ports) == 1:
        ports = ports * len(hosts)
    elif len(ports) < len(hosts):  # libpq refuses this; check the hosts anyway
        ports = ports + [None] * (len(hosts) - len(ports))
    return [_pg_endpoint(h, p) for h, p in zip(hosts, ports, strict=False)]


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def _redis_endpoint(host: str | None, port: int | None, unix_path: str | None) -> tuple[str, int | None, str]:
    """(key, port, shown) of a Redis server; a Unix socket is identified by its path alone."""
    if unix_path:
        path = os.path.normpath(unix_path)
        return "unix:" + path, None, path
    h = host or "localhost"
    number = _REDIS_DEFAULT_PORT if port is None else port
    return _host_key(h), number, f"{_show_host(h)}:{number}"


def _target_redis_endpoint(target: Target) -> tuple[str, int | None, str]:
    if target.host.startswith("/"):
        return _redis_endpoint(None, None, target.host)
    return _redis_endpoint(target.host, target.port, None)


# --------------------------------------------------------------------------------------------------------------
# Reading the connection parameters a driver is about to use


def _parse_conninfo(dsn: str) -> dict[str, str]:
    """The keywords of a libpq conninfo string or postgres:// URI, without libpq and without the network.

    A multi-host URI ('postgresql://a:5432,b:5433/db') keeps every host, as libpq would try them all.
    """
    dsn = dsn.strip()
    out: dict[str, str] = {}
    if not re.match(r"^postgres(ql)?://", dsn):
        for key, raw in _KV.findall(dsn):
            value = raw[1:-1].replace("\\'", "'").replace("\\\\", "\\") if raw.startswith("'") else raw
            out[key] = value
        return out
    from urllib.parse import parse_qsl, unquote

    rest = dsn.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        out["user"] = unquote(userinfo.split(":", 1)[0])
    hosts: list[str] = []
    ports: list[str] = []
    for entry in netloc.split(","):
        if entry.startswith("["):
            h, _, tail = entry[1:].partition("]")
            p = tail[1:] if tail.startswith(":") else ""
        else:
            h, _, p = entry.partition(":")
        hosts.append(unquote(h))
        ports.append(p)
    if any(hosts):
        out["host"] = ",".join(hosts)
    if any(ports):
        out["port"] = ",".join(ports)
    if path:
        out["dbname"] = unquote(path)
    for key, value in parse_qsl(query):
        out["dbname" if key == "database" else key] = value
    return out


def _joined(value: object) -> str | None:
    """A host or port setting as libpq's comma-separated text (asyncpg takes lists)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return ",".join("" if v is None else str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class _PgParams:
    host: str | None
    port: str | None
    database: str | None
    user: str | None
    application_name: str | None


def _pg_params(cargs: Sequence[Any], cparams: Mapping[str, Any]) -> _PgParams:
    """What asyncpg (host/port/database) or psycopg (host/port/dbname, maybe a conninfo) will connect to."""
    merged: dict[str, Any] = {}
    for dsn in (cargs[0] if cargs else None, cparams.get("dsn"), cparams.get("conninfo")):
        if isinstance(dsn, str) and dsn:
            merged.update(_parse_conninfo(dsn))
    # Explicit keywords win over a conninfo, as in asyncpg and libpq; psycopg says dbname, asyncpg database.
    merged.update({("dbname" if k == "database" else k): v for k, v in cparams.items() if v is not None})
    host = merged.get("hostaddr") or merged.get("host")  # libpq dials hostaddr when it is given
    database = merged.get("dbname")
    app = merged.get("application_name")
    settings = merged.get("server_settings")
    if isinstance(settings, Mapping) and settings.get("application_name"):
        app = settings["application_name"]
    return _PgParams(
        host=_joined(host) or None,
        port=_joined(merged.get("port")) or None,
        database=str(database) if database else None,
        user=str(merged["user"]) if merged.get("user") else None,
        application_name=str(app) if app else None,
    )


# --------------------------------------------------------------------------------------------------------------
# The guard

_LOCK = threading.RLock()
_ACTIVE: ConnectionGuard | None = None
_MISSING = object()


def active_guard() -> ConnectionGuard | None:
    """The guard whose hooks are in place in this process, if any."""
    return _ACTIVE


class ConnectionGuard:
    """This run's stack, the databases and indexes it may use, and the class-level hooks that enforce them."""

    def __init__(self, *, postgres: Target | None, redis: Target | None, hint: str = "") -> None:
        self.postgres = postgres
        self.redis = redis
        self.hint = hint
        self._databases: set[str] = set()
        self._indexes: set[int] = set()
        self._prefixes: tuple[str, ...] = (INTERNAL_PREFIX,)
        # Normalised once: the checks run on every new connection.
        self._pg = _pg_endpoint(postgres.host, postgres.port) if postgres is not None else None
        self._rd = _target_redis_endpoint(redis) if redis is not None else None
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
        endpoints = _pg_endpoints(host, port)
        db = database or os.environ.get("PGDATABASE") or user or os.environ.get("PGUSER") or _default_user()
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
        key, number, shown = _redis_endpoint(host, port, unix_path)
        what = f"Redis index {index} at {shown}"
        stack = self._rd
        if stack is None:
            raise self._refuse(what, "the test stack is not running, so no Redis server is part of this run")
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
        p = _pg_params(cargs, cparams)
        self.check_postgres(p.host, p.port, p.database, user=p.user, application_name=p.application_name)

    def _check_redis_connection(self, conn: Any) -> None:
        if self._suspended or type(conn).__module__.startswith("fakeredis"):  # an in-process fake: no server is reached
            return
        path = getattr(conn, "path", None)
        db = getattr(conn, "db", 0)
        index = _as_int(db) if db not in (None, "") else 0
        self.check_redis(
            getattr(conn, "host", None) if not path else None,
            _as_int(getattr(conn, "port", None)),
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
            for cls in _with_subclasses(sync_connection.AbstractConnection):
                name = _connect_method(cls)
                if name is not None:
                    self._patch(cls, name, _wrap_sync(cls.__dict__[name], check))
        try:
            import redis.asyncio.connection as async_connection
        except ImportError:
            return
        for cls in _with_subclasses(async_connection.AbstractConnection):
            name = _connect_method(cls)
            if name is not None:
                self._patch(cls, name, _wrap_async(cls.__dict__[name], check))

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
            if self._dialect_had_events is not None and not _dialect_class_listeners(Dialect):
                Dialect._has_events = self._dialect_had_events
            self._dialect_had_events = None


def _with_subclasses(cls: type[Any]) -> Iterable[type[Any]]:
    seen: set[type[Any]] = set()
    stack = [cls]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        yield current
        stack.extend(current.__subclasses__())


def _connect_method(cls: type[Any]) -> str | None:
    """The method of ``cls`` (in its own namespace) every connect path of this redis-py version goes through.

    redis-py >= 5.3 funnels ``connect()``, pool checkout and first send through ``connect_check_health``;
    older versions do it all in ``connect``. A class that inherits the method is covered by its base.
    """
    if "connect_check_health" in cls.__dict__:
        return "connect_check_health"
    if "connect" in cls.__dict__ and not hasattr(cls, "connect_check_health"):
        return "connect"
    return None


def _wrap_sync(original: Callable[..., Any], check: Callable[[Any], None]) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_sock", None) is None:  # an open connection was checked when it opened
            check(self)
        return original(self, *args, **kwargs)

    return guarded


def _wrap_async(original: Callable[..., Any], check: Callable[[Any], None]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "is_connected", False):
            check(self)
        return await original(self, *args, **kwargs)

    return guarded


def _dialect_class_listeners(dialect_cls: type[Any]) -> bool:
    """Whether any class-level dialect event listener is left (then ``_has_events`` must stay True)."""
    try:
        from sqlalchemy.engine.events import DialectEvents

        dispatch = dialect_cls.dispatch
        for name in dir(DialectEvents):
            attr = getattr(dispatch, name, None) if not name.startswith("_") else None
            clslevel = getattr(attr, "_clslevel", None)
            if clslevel is not None and any(len(listeners) for listeners in clslevel.values()):
                return True
    except Exception:
        return True  # unknown internals: leaving the flag set only costs an empty loop per connect
    return False
