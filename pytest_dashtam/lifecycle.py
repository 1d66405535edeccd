"""The session lifecycle behind the fixtures: start or attach, safety gate, template, clone, teardown.

`DashtamRun` does each step once per process and remembers the outcome, a failure included: every test that
needs the stack then errors with the same one-line message while other tests still run. Under xdist the
workers share one stack: the first worker to take a file lock starts it (and builds the template), the
others attach to what it wrote down; the worker that started it stops it when every other worker of the
run has finished (pytest-xdist's "Making session-scoped fixtures execute only once" recipe, with a PID
list instead of a counter so that a crashed worker cannot keep the stack up forever).

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from pytest_dashtam.backends.base import Backend, BackendName, BackendOptions, Stack
from pytest_dashtam.config import PluginConfig
from pytest_dashtam.errors import BackendError, ConfigError, DashtamError
from pytest_dashtam.isolation import CONNECTIONS_PER_WORKER, run_async
from pytest_dashtam.urls import mask_url

PHASES = ("start", "safety", "template", "clone", "teardown")
# How long the worker that started the stack waits for the others before stopping it anyway.
_LAST_ONE_OUT_WAIT = 3600.0


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


def load_settings(spec: str, env_file: Path, overrides: Mapping[str, str]) -> Any:
    """The app's settings class instantiated from the env file, DATABASE_URL/REDIS_URL overridden."""
    cls = import_object(spec, "settings")
    kwargs: dict[str, Any] = dict(overrides)
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
        detail = " ".join(line.strip() for line in first[:3])
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
    database_url: str  # postgresql+asyncpg://... of this worker's database
    redis_url: str  # redis://.../N of this worker's index
    redis_index: int
    template: str
    template_hash: str
    cache_hit: bool
    tuning: Mapping[str, str]
    backend_reason: str


class SharedRun:
    """The files xdist workers of one run share: a lock, the stack, the template, the live workers."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def lock(self) -> Any:
        from filelock import FileLock

        return FileLock(str(self.dir / "lock"))

    def read(self, name: str) -> Any:
        path = self.dir / name
        return json.loads(path.read_text()) if path.exists() else None

    def write(self, name: str, data: Any) -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps(data, sort_keys=True))
        tmp.replace(self.dir / name)

    def join(self, worker: str) -> None:
        with self.lock():
            workers = self.read("workers.json") or {}
            workers[worker] = os.getpid()
            self.write("workers.json", workers)

    def leave(self, worker: str) -> None:
        with self.lock():
            workers = self.read("workers.json") or {}
            workers.pop(worker, None)
            self.write("workers.json", workers)

    def others_alive(self, worker: str) -> list[str]:
        with self.lock():
            workers: dict[str, int] = self.read("workers.json") or {}
        alive = []
        for name, pid in workers.items():
            if name == worker:
                continue
            try:
                os.kill(pid, 0)
            except OSError:
                continue
            alive.append(name)
        return alive


class DashtamRun:
    """One process's view of the session: prepared once on demand, finished once at session end."""

    def __init__(
        self,
        config: PluginConfig,
        *,
        worker: str | None = None,
        worker_count: int = 1,
        shared_dir: Path | None = None,
        get_backend: Callable[[BackendName, BackendOptions], Backend] | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.worker_number = int(worker[2:]) if worker and worker[2:].isdigit() else 0
        self.worker_count = worker_count
        self.shared = SharedRun(shared_dir) if shared_dir is not None else None
        self.timings = Timings()
        self._get_backend = get_backend
        self._prepared: Prepared | None = None
        self._error: BaseException | None = None
        self._backend: Backend | None = None
        self._started_here = False
        self._saved_env: dict[str, str | None] = {}
        self.notes: list[str] = []
        self.cleaner: Any = None  # isolation.TableCleaner, read from the fresh clone (see _read_clone)
        if self.shared is not None and worker is not None:
            self.shared.join(worker)

    # --- names ---
    @property
    def database(self) -> str:
        """This worker's database: `<test_db>` alone, `<test_db>_gwN` under xdist."""
        return f"{self.config.test_database}_{self.worker}" if self.worker else self.config.test_database

    @property
    def redis_index(self) -> int:
        return self.config.redis_index + self.worker_number

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def prepared(self) -> Prepared | None:
        return self._prepared

    # --- the one-time preparation ---
    def prepare(self) -> Prepared:
        """Start/attach, check, build/reuse the template, clone: once; a failure is remembered and re-raised."""
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

    def _backend_options(self) -> BackendOptions:
        kwargs: dict[str, Any] = {}
        if self.config.timeout is not None:
            kwargs["timeout"] = self.config.timeout
        return BackendOptions(
            env="test",
            project_root=self.config.root,
            keep=self.config.keep,
            postgres_url=self.config.postgres_url,
            redis_url=self.config.redis_url,
            compose_files=self.config.compose_files,
            env_file=str(self.config.env_file),
            postgres_bin=self.config.postgres_bin,
            redis_bin=self.config.redis_bin,
            **kwargs,
        )

    def _make_backend(self, name: BackendName) -> Backend:
        if self._get_backend is not None:
            return self._get_backend(name, self._backend_options())
        from pytest_dashtam.backends import get_backend

        return get_backend(name, self._backend_options())

    def _start_stack(self, name: BackendName) -> Stack:
        backend = self._make_backend(name)
        self._backend = backend
        stack = backend.start()
        # Only a stack this call brought up is ours to stop (not one attached to, not an external server).
        self._started_here = stack.started
        return stack

    def _stack(self, name: BackendName) -> Stack:
        if self.shared is None:
            return self._start_stack(name)
        with self.shared.lock():
            failed = self.shared.read("stack-error.json")
            if failed is not None:
                raise BackendError(failed["message"])
            known = self.shared.read("stack.json")
            if known is not None:
                return Stack.from_json(json.dumps(known))
            try:
                stack = self._start_stack(name)
            except DashtamError as exc:
                self.shared.write("stack-error.json", {"message": str(exc)})
                raise
            self.shared.write("stack.json", json.loads(stack.to_json()))
            return stack

    def _prepare(self) -> Prepared:
        from pytest_dashtam import safety, schema

        config = self.config
        name, reason = select_backend(config)
        with self.timings.measure("start"):
            stack = self._stack(name)
        with self.timings.measure("safety"):
            self._check_capacity(stack)
            database_url = schema.database_url(stack.postgres_url, self.database)
            redis_url = schema.redis_url_with_index(stack.redis_url, self.redis_index)
            overrides = {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
            settings = load_settings(config.settings, config.env_file, overrides)
            allowed = (*config.allowed_hosts, *cast("tuple[str, ...]", tuple(stack.details.get("allowed_hosts", ()))))
            violations = safety.check_all(
                environment=str(getattr(settings, "ENVIRONMENT", "")),
                testing=getattr(settings, "TESTING", None),
                database_url=str(getattr(settings, "DATABASE_URL", "")),
                redis_url=str(getattr(settings, "REDIS_URL", "")),
                dev_database=config.dev_database,
                dev_redis_index=config.dev_redis_index,
                redis_databases=stack.redis_databases,
                allowed_hosts=allowed,
            )
            # The admin URL is what DROP/CREATE run on: the same host rules apply to it.
            host = safety.check_host(stack.postgres_url, allowed)
            safety.raise_for([*violations, *([host] if host else [])])
            # Layer 6 again at the end of the drop path, but asked now too: a database we may not replace
            # should stop the run before a template is built for nothing.
            owned = run_async(lambda: _ownership(stack.postgres_url, self.database))
            safety.raise_for([owned] if owned else [])
            if (
                str(getattr(settings, "DATABASE_URL", "")) != database_url
                or str(getattr(settings, "REDIS_URL", "")) != redis_url
            ):
                raise ConfigError(
                    f"the settings class {config.settings} did not take DATABASE_URL/REDIS_URL as given "
                    "(a validator rewrote them?); the plugin must point them at the test stack"
                )
        with self.timings.measure("template"):
            template = self._template(stack)
        with self.timings.measure("clone"):
            tuning, self.cleaner = run_async(lambda: self._clone(stack, template.name, database_url, redis_url))
        # The app's own get_settings() (code paths the fixtures do not override) must see the same values.
        self._saved_env.update(export_env(overrides))
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
            backend_reason=reason,
        )

    def _template(self, stack: Stack) -> Any:
        from pytest_dashtam import schema

        config = self.config
        metadata = None
        if config.alembic_ini is None:
            metadata = import_object(config.metadata, "metadata")

        def build(rebuild: bool) -> schema.TemplateResult:
            result = run_async(
                lambda: schema.ensure_template(
                    stack.postgres_url,
                    test_db=config.test_database,
                    alembic_ini=str(config.alembic_ini) if config.alembic_ini else None,
                    metadata=metadata,
                    rebuild=rebuild,
                    owner_tuning=stack.owns_servers and bool(stack.tuning),
                    dev_database=config.dev_database,
                )
            )
            if not result.cache_hit:
                keep_template_with_cluster(stack)
            return result

        if self.shared is None:
            return build(config.rebuild)
        # Only the first worker of the run may rebuild: the others must reuse what it built.
        with self.shared.lock():
            first = self.shared.read("template.json")
            result = build(config.rebuild and first is None)
            if first is None:
                self.shared.write("template.json", {"name": result.name, "cache_hit": result.cache_hit})
            else:
                result = schema.TemplateResult(result.name, result.hash, bool(first["cache_hit"]), ())
        return result

    def _check_capacity(self, stack: Stack) -> None:
        """Enough connections and Redis indexes for every worker, or a clear error before anything is made."""
        count = self.worker_count
        last = self.config.redis_index + count - 1
        if stack.redis_databases is not None and last >= stack.redis_databases:
            raise ConfigError(
                f"{count} worker(s) need Redis indexes {self.config.redis_index}-{last} but the server has "
                f"{stack.redis_databases} databases (0-{stack.redis_databases - 1}); use fewer workers (-n), "
                "a lower dashtam_redis_index, or raise the server's `databases` setting"
            )
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

        One event loop instead of four, the Redis flush running while PostgreSQL copies the template, and
        one connection to the new database for both the tuning read-back and the cleaner's catalog read:
        the first connections to a brand-new database cost 5-10 ms each here (the backend builds its
        relation cache from scratch). Suite benchmark: the clone phase 46 ms -> 38 ms.
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

    async def _flush_redis(self, redis_url: str) -> None:
        """Start from an empty index: a crashed earlier run may have left keys behind."""
        from redis.asyncio import Redis

        from pytest_dashtam.isolation import flush_test_index

        client = Redis.from_url(redis_url)
        try:
            await flush_test_index(client, self.redis_index, self.config.dev_redis_index)
        finally:
            await client.aclose()

    # --- the end ---
    def finish(self) -> list[str]:
        """Drop this worker's database, stop what was started (last one out); problems come back as text."""
        problems: list[str] = []
        with self.timings.measure("teardown"):
            prepared = self._prepared
            stopping = self._started_here and self._backend is not None and not self.config.keep
            # DROP DATABASE costs 12-19 ms here; skipped only when the stack this process started, owns and
            # is about to stop is thrown away with its files (a test stack: local run folder removed,
            # compose volumes taken down), and the local backend will not keep the cluster as the next
            # runs' seed (it does after a run that built the template). External, attached and kept stacks
            # always get the DROP. If the stop fails, the DROP is done after all.
            discard = stopping and prepared is not None and prepared.stack.owns_servers and prepared.cache_hit
            if prepared is not None and not self.config.keep and not discard:
                problems.extend(self._drop(prepared))
            if self.shared is not None and self.worker is not None:
                self.shared.leave(self.worker)
            if stopping and self._backend is not None:
                if self.shared is not None and self.worker is not None:
                    self._wait_for_other_workers()
                try:
                    self._backend.stop()
                except Exception as exc:
                    problems.append(f"could not stop the {self._backend.name} stack: {exc}")
                    if discard and prepared is not None:
                        problems.extend(self._drop(prepared))
            restore_env(self._saved_env)
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

    def _wait_for_other_workers(self) -> None:
        if self.shared is None or self.worker is None:
            return
        deadline = time.monotonic() + _LAST_ONE_OUT_WAIT
        while self.shared.others_alive(self.worker) and time.monotonic() < deadline:
            time.sleep(0.1)

    # --- reporting ---
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
        }


async def _ownership(admin_url: str, database: str) -> Any:
    import asyncpg

    from pytest_dashtam.safety import check_owned_or_absent

    parts = urlsplit(admin_url)
    conn = await asyncpg.connect(admin_url.replace(parts.scheme + "://", "postgresql://", 1), timeout=10)
    try:
        return await check_owned_or_absent(conn, database)
    finally:
        await conn.close()


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
    """The lines the terminal shows about a prepared stack."""
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
    ]
