"""The session lifecycle behind the fixtures: open (stack, leases, URLs, guard), prepare, finish.

`DashtamRun` does each step once per process and remembers the outcome, a failure included: every test that
needs the stack then errors with the same one-line message while other tests still run. Under xdist the
controller starts the stack before it spawns the workers and hands it to them in their environment; each
worker leases its own database and Redis index on it; the controller stops the stack after the last worker
is gone, so a crashed worker cannot keep it up and no worker waits for another.

No pytest import here: plugin.py and fixtures.py pass plain values in.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pytest_dashtam.backends.base import Backend, BackendName, BackendOptions, Stack
from pytest_dashtam.config import PluginConfig, env_value
from pytest_dashtam.errors import BackendError, ConfigError
from pytest_dashtam.isolation import CONNECTIONS_PER_WORKER, run_async
from pytest_dashtam.urls import app_database_url, host_port, mask_url, mask_urls_in

PHASES = ("start", "safety", "template", "clone", "teardown")


# --- small helpers ---------------------------------------------------------------------------------------


def import_object(spec: str, what: str) -> Any:
    """`module:attr.attr` imported; a one-line ConfigError naming the option when it does not resolve."""
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"dashtam_{what}={spec!r}: cannot import {module_name!r} ({exc}); "
            f"check the module path (the project must be importable, e.g. pip install -e .)"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"dashtam_{what}={spec!r}: {module_name!r} has no attribute {attr_path!r}; check the name"
            ) from None
    return obj


def export_env(values: Mapping[str, str]) -> dict[str, str | None]:
    """Export the test env file's variables (they win over the shell's); returns what to restore."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    return saved


def restore_env(saved: Mapping[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def docker_answers(timeout: float = 1.0) -> bool:
    """Whether a Docker engine answers `GET /_ping` on its Unix socket (fast: no `docker` process)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return bool(host)  # a TCP engine was configured on purpose: let the compose backend try it
    path = host[len("unix://") :]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


def docker_usable() -> bool:
    """An engine answers (a fast socket ping) and the compose v2 plugin is there: an engine without
    compose would make `auto` pick a backend that cannot start, instead of falling back to local."""
    if not docker_answers():
        return False
    from pytest_dashtam.backends.compose import docker_available

    return docker_available()


def keep_template_with_cluster(stack: Stack) -> None:
    """A throw-away local cluster is new every run, so a template built in it would be built again
    next run: ask the local backend to start the next runs from this cluster, template included."""
    if stack.backend == "local" and stack.owns_servers:
        from pytest_dashtam.backends.local import request_seed

        request_seed(stack)


def select_backend(config: PluginConfig, *, docker: Callable[[], bool] = docker_usable) -> tuple[BackendName, str]:
    """(backend, why): auto = external when URLs are given, compose when Docker answers, local otherwise."""
    if config.backend != "auto":
        return config.backend, f"from {config.source('backend')}"
    if config.postgres_url and config.redis_url:
        return "external", "auto: server URLs given"
    if docker():
        return "compose", "auto: a Docker engine with compose answers"
    return "local", "auto: no server URLs, no Docker engine with compose"


def load_settings(spec: str, env_file: Path) -> Any:
    """The app's settings class instantiated as the app would: from the environment the plugin exported
    (this worker's DATABASE_URL and REDIS_URL, which pydantic-settings prefers to the env file) and the
    env file."""
    cls = import_object(spec, "settings")
    kwargs: dict[str, Any] = {}
    try:
        from pydantic_settings import BaseSettings

        if isinstance(cls, type) and issubclass(cls, BaseSettings):
            kwargs["_env_file"] = str(env_file)
    except ImportError:  # pragma: no cover - pydantic-settings is a dependency
        pass
    try:
        return cls(**kwargs)
    except Exception as exc:
        first = str(exc).strip().splitlines()
        detail = mask_urls_in(" ".join(line.strip() for line in first[:3]))
        raise ConfigError(
            f"the settings class {spec} refused the test env file {env_file}: {detail}; fix the env file"
        ) from exc


@dataclass
class Timings:
    """Seconds spent per phase (the `--dashtam-timings` report)."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - started


@dataclass(frozen=True)
class Prepared:
    """What one worker got: the stack, its checked settings, its database and Redis index."""

    stack: Stack
    settings: Any
    database: str
    database_url: str  # the application's URL of this worker's database (its own driver)
    redis_url: str  # redis://.../N of this worker's index
    redis_index: int
    template: str
    template_hash: str
    cache_hit: bool
    tuning: Mapping[str, str]
    backend_reason: str


Role = Literal["solo", "controller", "worker"]
# The controller hands its workers the stack through this variable (the workers' environment is a copy of
# the controller's at spawn time): no file holds the stack's URLs.
HANDOFF_ENV = "DASHTAM_XDIST_HANDOFF"


@dataclass(frozen=True)
class Handoff:
    """What an xdist controller tells its workers: the stack it started and the database base it leased."""

    stack: Stack
    base_database: str
    run_id: str
    controller_pid: int
    backend_reason: str

    def to_env(self) -> str:
        return json.dumps(
            {
                "stack": json.loads(self.stack.to_json()),
                "base_database": self.base_database,
                "run_id": self.run_id,
                "controller_pid": self.controller_pid,
                "backend_reason": self.backend_reason,
            }
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Handoff | None:
        """The handoff meant for this process: only a direct child of the controller that wrote it is a
        worker of that run (a pytest started from inside a test inherits the variable but is not)."""
        raw = environ.get(HANDOFF_ENV)
        if not raw or not environ.get("PYTEST_XDIST_WORKER"):
            return None
        try:
            data = json.loads(raw)
            handoff = cls(
                stack=Stack.from_json(json.dumps(data["stack"])),
                base_database=str(data["base_database"]),
                run_id=str(data["run_id"]),
                controller_pid=int(data["controller_pid"]),
                backend_reason=str(data["backend_reason"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        return handoff if handoff.controller_pid == os.getppid() else None


class DashtamRun:
    """One process's view of the session.

    `open()` runs before any conftest imports the application: it starts (or receives) the stack, leases
    this process's database name and Redis index, exports the application's URLs and installs the
    connection guard, so that import-time engines, clients and settings land on the stack. `prepare()`
    (after collection, when a test needs it) checks the application's settings, builds or reuses the
    template and clones this process's database. `finish()` drops what it made, releases the leases and
    stops what it started. A failure is remembered: every test that needs the stack errors with it.
    """

    def __init__(
        self,
        config: PluginConfig,
        *,
        role: Role = "solo",
        worker: str | None = None,
        worker_count: int = 1,
        handoff: Handoff | None = None,
        get_backend: Callable[[BackendName, BackendOptions], Backend] | None = None,
    ) -> None:
        self.config = config
        self.role: Role = role
        self.worker = worker
        self.worker_number = int(worker[2:]) if worker and worker[2:].isdigit() else 0
        self.worker_count = worker_count
        self.handoff = handoff
        self.run_id = handoff.run_id if handoff is not None else uuid.uuid4().hex[:10]
        self.owner = f"r{self.run_id}" + (f"_{worker}" if worker else "")
        self.timings = Timings()
        self._get_backend = get_backend
        self._prepared: Prepared | None = None
        self._error: BaseException | None = None
        self._backend: Backend | None = None
        self._started_here = False
        self._saved_env: dict[str, str | None] = {}
        self.stack: Stack | None = None
        self.backend_reason = ""
        self.database = ""
        self.redis_index: int | None = None
        self.leases: Any = None  # leases.Leases, held from open() to finish()
        self.guard: Any = None  # guard.ConnectionGuard, installed from open() to finish()
        self.notes: list[str] = []
        self.cleaner: Any = None  # isolation.TableCleaner, read from the fresh clone (see _read_clone)
        self._finished = False

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def prepared(self) -> Prepared | None:
        return self._prepared

    # --- before the application is imported ---
    def open(self) -> None:
        """Stack, leases, exported URLs and the guard; a failure is remembered, the guard still installed."""
        try:
            self._open()
        except BaseException as exc:
            self._error = exc
        finally:
            self._install_guard()

    def _open(self) -> None:
        config = self.config
        with self.timings.measure("start"):
            if self.handoff is not None:
                self.stack, self.backend_reason = self.handoff.stack, self.handoff.backend_reason
            else:
                name, self.backend_reason = select_backend(config)
                self.stack = self._start_stack(name)
        stack = self.stack
        with self.timings.measure("safety"):
            from pytest_dashtam.leases import Leases

            self.leases = Leases(stack.postgres_url, stack.redis_url if self.role != "controller" else None, self.owner)
            self.leases.open()
            if self.role == "controller":
                self._check_capacity(stack)
                if config.rebuild:
                    self._drop_templates(stack)
            if self.role != "controller":
                # First, so that a run that cannot have an index of its own changes nothing on the servers.
                first = config.redis_index + self.worker_number
                self.redis_index = self.leases.claim_redis_index(
                    first, databases=stack.redis_databases, skip=(config.dev_redis_index,)
                )
                if self.redis_index != first:
                    self.notes.append(f"Redis index {first} is held or not empty: using {self.redis_index}")
            if self.role != "worker":
                reclaimed = self.leases.reclaim_databases(config.test_database, dev_database=config.dev_database)
                if reclaimed:
                    self.notes.append(f"reclaimed {len(reclaimed)} database(s) of dead runs: {', '.join(reclaimed)}")
            base = config.test_database if self.handoff is None else f"{self.handoff.base_database}_{self.worker}"
            # On a server the plugin created from nothing for the tests, what the image made there (a compose
            # file's POSTGRES_DB) is the plugin's; on anyone else's server, a foreign database is never used.
            self.database = self.leases.claim_database(
                base, adopt_unstamped=stack.owns_servers, dev_database=config.dev_database
            )
            if self.database != base:
                self.notes.append(f"{base} is held by a live run or is not the plugin's: using {self.database}")
        if self.role == "controller":
            os.environ[HANDOFF_ENV] = Handoff(
                stack, self.database, self.run_id, os.getpid(), self.backend_reason
            ).to_env()
        self._saved_env.update(export_env(self.app_environment()))

    def app_environment(self) -> dict[str, str]:
        """DATABASE_URL / REDIS_URL for the application, under every spelling the env file used."""
        if self.stack is None:
            return {}
        values = self.config.env_values
        env_url = env_value(values, "DATABASE_URL")
        urls = {"database_url": app_database_url(env_url, self.stack.postgres_url, self.database)}
        if self.redis_index is not None:
            from pytest_dashtam import schema

            urls["redis_url"] = schema.redis_url_with_index(self.stack.redis_url, self.redis_index)
        exported: dict[str, str] = {}
        for lowered, url in urls.items():
            exported[lowered.upper()] = url
            exported.update({key: url for key in values if key.lower() == lowered})
        return exported

    def _install_guard(self) -> None:
        from pytest_dashtam.guard import ConnectionGuard, Target

        stack = self.stack
        postgres = redis = None
        if stack is not None and self._error is None:
            postgres = Target(*host_port(stack.postgres_url))
            redis = Target(*host_port(stack.redis_url))
        self.guard = ConnectionGuard(
            postgres=postgres,
            redis=redis,
            hint="take the URLs from the environment the plugin exported (DATABASE_URL, REDIS_URL) or from the "
            "dashtam_settings fixture, not from a fixed address",
        )
        if postgres is not None:
            self.guard.allow_database(self.database)
        if redis is not None and self.redis_index is not None:
            self.guard.allow_redis_index(self.redis_index)
        self.guard.install()

    def _make_backend(self, name: BackendName) -> Backend:
        options = backend_options(self.config)
        if self._get_backend is not None:
            return self._get_backend(name, options)
        from pytest_dashtam.backends import get_backend

        return get_backend(name, options)

    def _start_stack(self, name: BackendName) -> Stack:
        backend = self._make_backend(name)
        self._backend = backend
        stack = backend.start()
        # Only a stack this call brought up is ours to stop (not one attached to, not an external server).
        self._started_here = stack.started
        return stack

    def _drop_templates(self, stack: Stack) -> None:
        """--dashtam-rebuild under xdist: the workers must all build (the first) or reuse (the others) one
        new template, so the old ones go before any worker starts."""
        from pytest_dashtam import schema

        run_async(
            lambda: schema.drop_templates(
                stack.postgres_url, test_db=self.config.test_database, dev_database=self.config.dev_database
            )
        )

    # --- after collection ---
    def prepare(self) -> Prepared:
        """Check, build/reuse the template, clone: once; a failure is remembered and re-raised."""
        if self._prepared is not None:
            return self._prepared
        if self._error is not None:
            raise self._error
        try:
            self._prepared = self._prepare()
        except BaseException as exc:
            self._error = exc
            raise
        return self._prepared

    def _prepare(self) -> Prepared:
        from pytest_dashtam import safety

        config = self.config
        stack = self.stack
        if stack is None or self.redis_index is None:
            raise BackendError("the test stack was not opened in this process")
        exported = self.app_environment()
        database_url, redis_url = exported["DATABASE_URL"], exported["REDIS_URL"]
        settings = None
        with self.timings.measure("safety"):
            if config.settings is not None:
                settings = load_settings(config.settings, config.env_file)
                safety.raise_for(
                    safety.check_settings(
                        settings,
                        dev_database=config.dev_database,
                        dev_redis_index=config.dev_redis_index,
                        redis_databases=stack.redis_databases,
                        allowed_hosts=config.allowed_hosts,
                    )
                )
                _check_settings_point_at(settings, config.settings, database_url, redis_url)
        with self.timings.measure("template"):
            template = self._template(stack)
        with self.timings.measure("clone"):
            tuning, self.cleaner = run_async(lambda: self._clone(stack, template.name, database_url, redis_url))
        return Prepared(
            stack=stack,
            settings=settings,
            database=self.database,
            database_url=database_url,
            redis_url=redis_url,
            redis_index=self.redis_index,
            template=template.name,
            template_hash=template.hash,
            cache_hit=template.cache_hit,
            tuning=tuning,
            backend_reason=self.backend_reason,
        )

    def _template(self, stack: Stack) -> Any:
        from pytest_dashtam import schema

        config = self.config
        metadata = None
        if config.alembic_ini is None:
            if config.metadata is None:
                raise ConfigError(
                    "no schema source: dashtam_alembic_ini is empty and dashtam_metadata is not set; name the "
                    "project's alembic.ini, or its SQLAlchemy metadata (e.g. myapp.models:Base.metadata)"
                )
            metadata = import_object(config.metadata, "metadata")
        alembic_ini = str(config.alembic_ini) if config.alembic_ini else None
        # The template is part of this run's stack: the plugin's own checks on it pass the guard.
        name = schema.template_name(config.test_database, schema.template_hash(alembic_ini, metadata))
        if self.guard is not None:
            self.guard.allow_database(name)
        result = run_async(
            lambda: schema.ensure_template(
                stack.postgres_url,
                test_db=config.test_database,
                alembic_ini=alembic_ini,
                metadata=metadata,
                rebuild=config.rebuild and self.role == "solo",
                owner_tuning=stack.owns_servers and bool(stack.tuning),
                dev_database=config.dev_database,
            )
        )
        if not result.cache_hit:
            keep_template_with_cluster(stack)
        return result

    def _check_capacity(self, stack: Stack) -> None:
        """Enough connections for every worker, or a clear error before anything is made."""
        count = self.worker_count
        if count <= 1:
            return
        needed = count * CONNECTIONS_PER_WORKER
        free = run_async(lambda: _free_connections(stack.postgres_url))
        if free is not None and needed > free:
            raise ConfigError(
                f"{count} workers need up to {needed} PostgreSQL connections ({CONNECTIONS_PER_WORKER} each) "
                f"but the server at {mask_url(stack.postgres_url)} has {free} free; use fewer workers (-n) "
                "or raise max_connections"
            )

    async def _clone(self, stack: Stack, template: str, database_url: str, redis_url: str) -> tuple[Any, Any]:
        """(tuning, cleaner): this worker's database cloned and read, its Redis index emptied, in one loop.

        The Redis flush runs while PostgreSQL copies the template, and one connection to the new database
        serves both the tuning read-back and the cleaner's catalog read (the first connections to a
        brand-new database are the expensive ones).
        """
        from pytest_dashtam import schema

        flush = asyncio.ensure_future(self._flush_redis(redis_url))
        try:
            await schema.create_test_database(
                stack.postgres_url,
                self.database,
                template=template,
                per_database_tuning=True,
                dev_database=self.config.dev_database,
            )
            tuning, cleaner = await _read_clone(database_url)
        except BaseException:
            flush.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await flush
            raise
        await flush
        return tuning, cleaner

    async def _flush_redis(self, redis_url: str, *, release: bool = False) -> None:
        """Start from an empty index (what conftests wrote at import time is gone before the first test);
        `release`: end with one, the stamp gone too."""
        from redis.asyncio import Redis

        from pytest_dashtam.leases import flush_owned_index

        assert self.redis_index is not None
        client = Redis.from_url(redis_url, client_name=f"pytest-dashtam-{self.owner}")
        try:
            await flush_owned_index(client, self.redis_index, self.owner, release=release)
        finally:
            await client.aclose()

    # --- the end ---
    def finish(self) -> list[str]:
        """Drop this process's database, release the leases, stop what it started; problems come back as text."""
        problems: list[str] = []
        if self._finished:  # the session's end, then the exit handler: once
            return problems
        self._finished = True
        with self.timings.measure("teardown"):
            prepared = self._prepared
            stopping = self._started_here and self._backend is not None and not self.config.keep
            # Skipped only when the stack this process started, owns and is about to stop is thrown away with
            # its files, and the local backend will not keep the cluster as the next runs' seed (it does
            # after a run that built the template). If the stop fails, the DROP is done after all.
            discard = stopping and prepared is not None and prepared.stack.owns_servers and prepared.cache_hit
            if prepared is not None and not self.config.keep and not discard:
                problems.extend(self._drop(prepared))
            if prepared is not None and not self.config.keep and not (stopping and prepared.stack.owns_servers):
                try:
                    run_async(lambda: self._flush_redis(prepared.redis_url, release=True))
                except Exception as exc:
                    problems.append(f"could not empty the Redis index {prepared.redis_index}: {exc}")
            if self.guard is not None:
                self.guard.uninstall()
            if self.leases is not None:
                self.leases.close()
            if stopping and self._backend is not None:
                try:
                    self._backend.stop()
                except Exception as exc:
                    problems.append(f"could not stop the {self._backend.name} stack: {exc}")
                    if discard and prepared is not None:
                        problems.extend(self._drop(prepared))
            restore_env(self._saved_env)
            self._saved_env = {}
            if self.role == "controller":
                os.environ.pop(HANDOFF_ENV, None)
        return problems

    def _drop(self, prepared: Prepared) -> list[str]:
        from pytest_dashtam import schema

        try:
            run_async(
                lambda: schema.drop_test_database(
                    prepared.stack.postgres_url, prepared.database, dev_database=self.config.dev_database
                )
            )
        except Exception as exc:
            return [f"could not drop the test database {prepared.database}: {exc}"]
        return []

    # --- reporting ---
    def describe_stack(self) -> str:
        """The header's line about the opened stack and what this process leased on it."""
        stack = self.stack
        if stack is None:
            return "no stack"
        where = (
            f"backend={stack.backend} ({self.backend_reason}): PostgreSQL {stack.postgres_version} at "
            f"{mask_url(stack.postgres_url)}, Redis {stack.redis_version} at {mask_url(stack.redis_url)}"
        )
        if self.role == "controller":
            return f"{where}; workers lease {self.database}_gwN and their own Redis indexes"
        return f"{where}; leased: database {self.database}, Redis index {self.redis_index} (owner {self.owner})"

    def report(self) -> dict[str, Any]:
        """What the header/summary prints about the running stack (JSON-able, for xdist's controller)."""
        p = self._prepared
        if p is None:
            return {"error": str(self._error)} if self._error is not None else {}
        return {
            "backend": p.stack.backend,
            "backend_reason": p.backend_reason,
            "postgres": f"PostgreSQL {p.stack.postgres_version} at {mask_url(p.stack.postgres_url)}",
            "redis": f"Redis {p.stack.redis_version} at {mask_url(p.stack.redis_url)}",
            "database": p.database,
            "redis_index": p.redis_index,
            "template": p.template,
            "cache_hit": p.cache_hit,
            "tuning": dict(p.tuning),
            "timings": self.timings.phases,
            "notes": list(self.notes),
        }


def backend_options(config: PluginConfig) -> BackendOptions:
    """The backends' view of the plugin's configuration."""
    kwargs: dict[str, Any] = {}
    if config.timeout is not None:
        kwargs["timeout"] = config.timeout
    return BackendOptions(
        env="test",
        project_root=config.root,
        keep=config.keep,
        postgres_url=config.postgres_url,
        redis_url=config.redis_url,
        compose_files=config.compose_files,
        project_name=config.compose_project,
        env_file=str(config.env_file),
        postgres_bin=config.postgres_bin,
        redis_bin=config.redis_bin,
        **kwargs,
    )


def _check_settings_point_at(settings: Any, spec: str, database_url: str, redis_url: str) -> None:
    """The settings must carry the URLs the plugin exported (a validator or an env_prefix may not)."""
    from sqlalchemy.engine import make_url

    from pytest_dashtam.safety import plain_value, settings_value

    def same_database(value: object) -> bool:
        try:
            got, want = make_url(plain_value(value) or ""), make_url(database_url)
        except Exception:
            return False
        return (got.host, got.port, got.database) == (want.host, want.port, want.database)

    db_value = settings_value(settings, "DATABASE_URL")
    redis_value = settings_value(settings, "REDIS_URL")
    if db_value is not None and not same_database(db_value):
        raise ConfigError(
            f"the settings class {spec} does not read DATABASE_URL from the environment as the plugin exported it "
            f"(it has {mask_url(plain_value(db_value) or '')}, the test database is {mask_url(database_url)}): "
            "an env_prefix, an alias or a validator? the settings must take the test stack's URL"
        )
    if redis_value is not None and (plain_value(redis_value) or "").rstrip("/") != redis_url.rstrip("/"):
        raise ConfigError(
            f"the settings class {spec} does not read REDIS_URL from the environment as the plugin exported it "
            f"(it has {mask_url(plain_value(redis_value) or '')}, the test index is {mask_url(redis_url)}); "
            "the settings must take the test stack's URL"
        )


# What schema.read_tuning reads, in one query: the clone's own connection reads it together with the catalog.
_TUNING_SQL = (
    "SELECT current_setting('fsync') AS fsync, current_setting('full_page_writes') AS full_page_writes, "
    "current_setting('synchronous_commit') AS synchronous_commit"
)


async def _read_clone(database_url: str) -> tuple[dict[str, str], Any]:
    """(the tuning in effect on the new database, its TableCleaner), on one connection to it.

    The cleaner is read here, from the fresh clone, not on the first real-commit test: it records the
    sequence positions and seeded rows that cleanup restores, and by then earlier tests' rolled-back
    inserts would have moved the sequences (nextval is not transactional).
    """
    import asyncpg

    from pytest_dashtam.isolation import TableCleaner

    parts = urlsplit(database_url)
    conn = await asyncpg.connect(database_url.replace(parts.scheme + "://", "postgresql://", 1), timeout=10)
    try:
        row = await conn.fetchrow(_TUNING_SQL)
        tuning = {key: str(value) for key, value in dict(row or {}).items()}
        return tuning, await TableCleaner.load(conn)
    finally:
        await conn.close()


async def _free_connections(admin_url: str) -> int | None:
    import asyncpg

    parts = urlsplit(admin_url)
    url = admin_url.replace(parts.scheme + "://", "postgresql://", 1)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS free"
        )
        return int(row["free"]) if row is not None else None
    finally:
        await conn.close()


def describe_report(report: Mapping[str, Any]) -> list[str]:
    """The lines the terminal shows about a prepared stack (the notes too: a name or index of its own)."""
    if not report:
        return []
    if "error" in report:
        return [f"dashtam: not started: {report['error']}"]
    tuning = " ".join(f"{k}={v}" for k, v in sorted(report.get("tuning", {}).items())) or "none"
    hit = "cache hit" if report.get("cache_hit") else "cache miss: built"
    return [
        f"dashtam: backend={report['backend']} ({report['backend_reason']}): {report['postgres']}, {report['redis']}",
        f"dashtam: database {report['database']} from template {report['template']} ({hit}), "
        f"redis index {report['redis_index']}, tuning {tuning}",
        *(f"dashtam: {note}" for note in report.get("notes", ())),
    ]
