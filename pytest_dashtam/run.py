"""One process's session: open (stack, leases, URLs, guard), prepare (settings, template, clone), finish.

`DashtamRun` does each step once per process and remembers the outcome, a failure included: every test that
needs the stack then errors with the same one-line message while other tests still run. Under xdist the
controller starts the stack before it spawns the workers and hands it to them in their environment; each
worker leases its own database and Redis index on it; the controller stops the stack after the last worker
is gone, so a crashed worker cannot keep it up and no worker waits for another.

No pytest import here: plugin.py and fixtures.py pass plain values in.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

from pytest_dashtam import provision
from pytest_dashtam.backends.base import Backend, Stack
from pytest_dashtam.config import NO_REDIS, PluginConfig
from pytest_dashtam.environment import HANDOFF_ENV, Handoff, app_environment, export_env, restore_env
from pytest_dashtam.errors import BackendError
from pytest_dashtam.failed_handoff import FAILED_ENV, controller_failed, controller_failure
from pytest_dashtam.isolation import run_async
from pytest_dashtam.project import check_settings_point_at, load_settings
from pytest_dashtam.report import Timings
from pytest_dashtam.stack import MakeBackend, backend_of, choose_backend
from pytest_dashtam.urls import host_port, mask_url
from pytest_dashtam.watchdog import watching

Role = Literal["solo", "controller", "worker"]



@dataclass(frozen=True)
class Prepared:
    """What one worker got: the stack, its checked settings, its database and Redis index."""

    stack: Stack
    settings: Any
    database: str
    database_url: str  # the application's URL of this worker's database (its own driver)
    redis_url: str | None  # redis://.../N of this worker's index; None for a project without Redis
    redis_index: int | None
    template: str
    template_hash: str
    cache_hit: bool
    tuning: Mapping[str, str]
    backend_reason: str
    template_build: str = ""  # what ensure_template did: "cache hit", "cache miss: built [from <old> + N revisions]"


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
        get_backend: MakeBackend | None = None,
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
        self.cleaner: Any = None  # isolation.TableCleaner, read from the fresh clone (see provision.read_clone)
        self._finished = False
        self._outer_guard: Any = None

    @classmethod
    def for_process(cls, config: PluginConfig, environ: Mapping[str, str], numprocesses: object) -> DashtamRun:
        """This process's run: an xdist worker of the controller that handed it the stack, the controller (any
        `-n` above 0 distributes), or a run of its own."""
        failed = controller_failure(environ)
        if failed is not None:  # the controller could not open the stack: its workers must not start their own
            run = cls(config, role="worker", worker=environ["PYTEST_XDIST_WORKER"])
            run._error = BackendError(failed)
            return run
        handoff = Handoff.from_env(environ)
        if handoff is not None:
            count = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
            return cls(
                config, role="worker", worker=environ["PYTEST_XDIST_WORKER"], worker_count=count, handoff=handoff
            )
        if numprocesses and str(numprocesses) != "0":
            return cls(config, role="controller", worker_count=numprocesses if isinstance(numprocesses, int) else 2)
        return cls(config)

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
            if self.role == "controller":  # the workers, spawned later, error with the same line at once
                os.environ[FAILED_ENV] = controller_failed(str(exc) or f"{type(exc).__name__} opening the stack")
        finally:
            self._install_guard()

    def _open(self) -> None:
        config = self.config
        with self.timings.measure("start"):
            if self.handoff is not None:
                self.stack, self.backend_reason = self.handoff.stack, self.handoff.backend_reason
            else:
                self.stack = self._start_stack()
        stack = self.stack
        # A server that answered the start and then went silent is caught here too (the run's own watchdog
        # starts later): its connections are severed, and the error is the watchdog's line.
        with self.timings.measure("safety"), watching(stack, config.timeout, "the opening of the stack (leases)"):
            from pytest_dashtam.leases import Leases

            leases_redis = stack.redis_url if self.role != "controller" and stack.has_redis else None
            self.leases = Leases(stack.postgres_url, leases_redis, self.owner)
            self.leases.open()
            if self.role == "controller":
                provision.check_capacity(stack, self.worker_count)
                if config.rebuild:
                    provision.drop_templates(config, stack)
            if self.role != "controller" and stack.has_redis:
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
        return app_environment(self.config.env_values, self.stack, self.database, self.redis_index)

    def _install_guard(self) -> None:
        from pytest_dashtam.guard import ConnectionGuard, Target, active_guard

        # A pytest run inside a pytest run (pytester's in-process runs): the outer run's guard comes back after.
        self._outer_guard = active_guard()

        stack = self.stack
        postgres = redis = None
        if stack is not None and self._error is None:
            postgres = Target(*host_port(stack.postgres_url))
            redis = Target(*host_port(stack.redis_url)) if stack.has_redis else None
        self.guard = ConnectionGuard(
            postgres=postgres,
            redis=redis,
            hint="take the URLs from the environment the plugin exported (DATABASE_URL, REDIS_URL) or from the "
            "dashtam_settings fixture, not from a fixed address",
            no_redis=None if self.config.redis else NO_REDIS,
        )
        if postgres is not None:
            self.guard.allow_database(self.database)
        if redis is not None and self.redis_index is not None:
            self.guard.allow_redis_index(self.redis_index)
        self.guard.install()

    def _start_stack(self) -> Stack:
        backend, self.backend_reason = choose_backend(self.config, self._get_backend)
        self._backend = backend
        stack = backend.start()
        # Only a stack this call brought up is ours to stop (not one attached to, not an external server).
        self._started_here = stack.started
        return stack

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

    def stopped_answering(self, line: str) -> None:
        """A server stopped answering while the stack was prepared (the watchdog's `line`): that is the
        error every test that needs the stack errors with, not the driver's complaint about a cut connection."""
        if self._prepared is None:
            self._error = BackendError(line)

    def _prepare(self) -> Prepared:
        from pytest_dashtam import safety

        config = self.config
        stack = self.stack
        if stack is None or (stack.has_redis and self.redis_index is None):
            raise BackendError("the test stack was not opened in this process")
        exported = self.app_environment()
        database_url, redis_url = exported["DATABASE_URL"], exported.get("REDIS_URL")
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
                        redis=redis_url is not None,
                    )
                )
                check_settings_point_at(settings, config.settings, database_url, redis_url)
        with self.timings.measure("template"):
            template = self._template(stack)
        with self.timings.measure("clone"):
            redis_index = self.redis_index
            tuning, self.cleaner = run_async(
                lambda: provision.clone(
                    stack,
                    self.database,
                    template=template.name,
                    database_url=database_url,
                    redis_url=redis_url,
                    redis_index=redis_index,
                    owner=self.owner,
                    dev_database=self.config.dev_database,
                )
            )
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
            template_build=template.describe(),
        )

    def _template(self, stack: Stack) -> Any:
        result = provision.build_template(
            self.config,
            stack,
            rebuild=self.config.rebuild and self.role == "solo",
            allow_database=self.guard.allow_database if self.guard is not None else None,
        )
        if not result.cache_hit:
            # Tell the backend (a worker asks a backend of its own: it did not start the stack).
            (self._backend or backend_of(self.config, stack, self._get_backend)).template_built(stack)
        return result

    # --- the end ---
    def finish(self, *, servers_answer: bool = True) -> list[str]:
        """Drop this process's database, release the leases, stop what it started; problems come back as text.

        `servers_answer=False` (the watchdog saw a server stop answering): nothing is asked of the servers, so
        teardown does not wait on them; the leases die with the process and the next run reclaims the rest.
        """
        problems: list[str] = []
        if self._finished:  # the session's end, then the exit handler: once
            return problems
        self._finished = True
        # The xdist controller runs no tests, hence no watchdog of its own: one covers its teardown here.
        stack = self.stack if self.role == "controller" else None
        guarded = watching(stack, self.config.timeout, "the end of the run") if stack is not None else nullcontext()
        with self.timings.measure("teardown"), guarded:
            prepared = self._prepared
            stopping = self._started_here and self._backend is not None and not self.config.keep
            # Skipped only when the stack this process started, owns and is about to stop is thrown away with
            # its files, and the local backend will not keep the cluster as the next runs' seed (it does
            # after a run that built the template). If the stop fails, the DROP is done after all.
            discard = stopping and prepared is not None and prepared.stack.owns_servers and prepared.cache_hit
            if not servers_answer:
                problems.append("the servers stopped answering: the test database and index are left to the next run")
            if servers_answer and prepared is not None and not self.config.keep and not discard:
                problems.extend(self._drop(prepared))
            redis_url, redis_index = (prepared.redis_url, prepared.redis_index) if prepared else (None, None)
            if (
                servers_answer
                and prepared is not None
                and redis_url is not None
                and redis_index is not None
                and not self.config.keep
                and not (stopping and prepared.stack.owns_servers)
            ):
                try:
                    run_async(lambda: provision.flush_redis(redis_url, redis_index, self.owner, release=True))
                except Exception as exc:
                    problems.append(f"could not empty the Redis index {prepared.redis_index}: {exc}")
            if self.guard is not None:
                self.guard.uninstall()
                if self._outer_guard is not None:
                    self._outer_guard.install()
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
                os.environ.pop(FAILED_ENV, None)
        return problems

    def _drop(self, prepared: Prepared) -> list[str]:
        return provision.drop_database(
            prepared.stack.postgres_url, prepared.database, dev_database=self.config.dev_database
        )

    # --- reporting ---
    def describe_stack(self) -> str:
        """The header's line about the opened stack and what this process leased on it."""
        stack = self.stack
        if stack is None:
            return "no stack"
        where = (
            f"backend={stack.backend} ({self.backend_reason}): PostgreSQL {stack.postgres_version} at "
            f"{mask_url(stack.postgres_url)}, {_describe_redis(stack)}"
        )
        if self.role == "controller":
            indexes = " and their own Redis indexes" if stack.has_redis else ""
            return f"{where}; workers lease {self.database}_gwN{indexes}"
        index = f", Redis index {self.redis_index}" if stack.has_redis else ""
        return f"{where}; leased: database {self.database}{index} (owner {self.owner})"

    def report(self) -> dict[str, Any]:
        """What the header/summary prints about the running stack (JSON-able, for xdist's controller)."""
        p = self._prepared
        if p is None:
            return {"error": str(self._error), "timings": self.timings.phases} if self._error is not None else {}
        return {
            "backend": p.stack.backend,
            "backend_reason": p.backend_reason,
            "postgres": f"PostgreSQL {p.stack.postgres_version} at {mask_url(p.stack.postgres_url)}",
            "redis": _describe_redis(p.stack),
            "database": p.database,
            "redis_index": p.redis_index,
            "template": p.template,
            "cache_hit": p.cache_hit,
            "template_build": p.template_build,
            "tuning": dict(p.tuning),
            "timings": self.timings.phases,
            "notes": list(self.notes),
        }


def _describe_redis(stack: Stack) -> str:
    if not stack.has_redis:
        return "no Redis (the project uses none: dashtam_redis)"
    return f"Redis {stack.redis_version} at {mask_url(stack.redis_url)}"
