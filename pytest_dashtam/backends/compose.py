"""The compose backend: PostgreSQL + Redis from the project's compose files, on a Docker engine.

It drives the `docker compose` v2 CLI (argument lists, never a shell): `up --detach --wait` on the
services' healthchecks with a deadline, host ports from `docker compose port`, `down --volumes` at
the end. The servers are then checked from the host through the published ports.

Project name. The default is the environment's fixed name (`dashtam-test`, `dashtam-dev`), not a
per-run name, on purpose: the test stack a developer brought up with `make test-up` /
`dashtam-env up test` / `--dashtam-keep` must be *found* to be attached to, and the test compose file
publishes fixed host ports (5433/6380 by default) that a second project could not bind anyway.
Clobbering is avoided by what the backend does with an existing project, not by its name:
  - healthy and not ours to reap (owner alive, kept, started by hand): attach, `started=False`, and
    never stop it;
  - still starting: wait for its healthchecks, then attach;
  - owner dead (a SIGKILLed run): taken down at start, then a fresh stack comes up;
  - anything else (a service stopped or unhealthy): refuse with a one-line error naming the command
    that clears it, rather than recreate containers someone may be looking at.
Parallel projects (the integration tests, a second checkout) pass `project_name` and ports `0`.

Owner-aware cleanup: `up` labels the containers with the owner's PID, its start time, the host and
the run id (the compose files interpolate `DASHTAM_STACK_*` into `io.dashtam.*` labels). Reaping
considers only test stacks (label `io.dashtam.env=test`) owned on this host by a dead process and not
kept; dev stacks are never reaped and never lose their volumes here (`stop()` on dev keeps them).

This module is the backend's surface and its start paths (attach, up). `_compose_engine` makes the
docker calls, `_compose_containers` reads the containers they list, `_compose_owner` decides what may
be reaped, `_compose_stack` describes a healthy project as a `Stack` (its host ports, what its servers
say), and `_compose_failures` explains a stack that would not come up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from pytest_dashtam.backends._compose_cli import (
    CommandTimeout,
    ComposeProject,
    Result,
    down_by_name,
    engine_answers,
    run,
)
from pytest_dashtam.backends._compose_containers import (
    POSTGRES_SERVICE,
    REQUIRED_SERVICES,
    Assessment,
    Container,
    assess,
)
from pytest_dashtam.backends._compose_engine import ProjectDocker, engine_problem
from pytest_dashtam.backends._compose_failures import logs_hint, up_failure_message
from pytest_dashtam.backends._compose_owner import LABEL_ENV, Owner, dead_projects, owner_state, owner_text
from pytest_dashtam.backends._compose_stack import describe
from pytest_dashtam.backends.base import BackendName, BackendOptions, EnvName, Stack, StackStatus
from pytest_dashtam.errors import BackendError
from pytest_dashtam.poll import PollTimeout, apoll, poll

__all__ = ["ComposeBackend", "docker_available"]

DEFAULT_TEST_FILES = ("docker/docker-compose.test.yml",)


def docker_available(timeout: float = 1.5) -> bool:
    """True when a Docker engine answers within `timeout` and the compose v2 plugin is installed.

    Cheap enough for `auto` backend selection on every run: a socket ping of the engine first (no
    process: a machine without Docker says no in microseconds), then two short CLI calls, no container
    work. Compose is checked too, because an engine without it would make `auto` choose a backend
    that cannot start.
    """
    if shutil.which("docker") is None or not engine_answers(min(timeout, 1.0)):
        return False
    try:
        return engine_problem(timeout) is None
    except OSError:
        return False


class ComposeBackend:
    """PostgreSQL + Redis as a Docker Compose project; see the module docstring for the policy."""

    name: BackendName = "compose"

    def __init__(
        self,
        options: BackendOptions,
        *,
        owner_pid: int | None = None,
        run_id: str | None = None,
    ) -> None:
        """`owner_pid`: the process whose death makes the stack garbage (default: this one), for a
        caller that starts the stack on behalf of a longer-lived process (e.g. an xdist controller).
        `run_id`: recorded in the labels (default: a fresh random id).
        """
        self.options = options
        self.env: EnvName = options.env
        self.project_name = options.project_name or f"{options.project_stem}-{options.env}"
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._owner_pid = owner_pid
        root = options.project_root
        files = options.compose_files
        if options.env == "dev" and tuple(files) == DEFAULT_TEST_FILES:
            files = ("docker/docker-compose.dev.yml",)
        self.compose_files = tuple((root / f).resolve() for f in files)
        self.env_file = (root / (options.env_file or f"env/.env.{options.env}")).resolve()
        self._docker = ProjectDocker(self.project_name, self.compose_files, self.env_file, root)
        self._stack: Stack | None = None
        self._started = False
        self._shares_a_runs_stack = False  # attached to a stack another run brought up (see stop)
        self.unavailable_because: str | None = None  # set by available()

    # ------------------------------------------------------------------ protocol

    def available(self) -> bool:
        """The compose files exist and a Docker engine with the compose v2 plugin answers (`docker_available`).

        A project without a compose file (most projects that never wrote one) is no compose project, whatever
        engine the machine runs: `auto` goes on to the local backend instead of failing every test on the
        missing file. `unavailable_because` says which files were missing, for the reason `auto` gives."""
        root = self.options.project_root.resolve()
        missing = [p for p in self.compose_files if not p.is_file()]
        names = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in missing]
        self.unavailable_because = f"no compose file ({', '.join(names)})" if missing else None
        return not missing and docker_available()

    def template_built(self, stack: Stack) -> None:
        """Nothing to keep: the template lives as long as the project's volume, kept or not by `keep`."""

    def start(self) -> Stack:
        """Attach to this project's healthy stack, or reap a dead owner's and bring up a fresh one."""
        if self._stack is not None:
            return self._stack  # a second call must not turn the stack this object started into "attached"
        self._check_files()
        self._check_engine()
        deadline = time.monotonic() + self.options.timeout
        try:
            lock = FileLock(self._lock_path(), timeout=self.options.timeout)
            lock.acquire()
        except Timeout:
            raise BackendError(
                f"another process has held the start lock of compose project {self.project_name} for "
                f"{self.options.timeout:.0f}s ({self._lock_path()}); wait for it or remove the lock file"
            ) from None
        try:
            self._reap_dead_owners()
            containers = self._docker.containers()
            stack = self._attach(containers, deadline) if containers else self._up(deadline)
        finally:
            lock.release()
        self._stack = stack
        return stack

    def stop(self) -> None:
        """Take down the stack a run brought up (volumes too, for test) once no run uses it any more; leave
        kept stacks and stacks brought up by hand. A bare backend (not `last_one_out`) stops what it started.

        Two runs of one project name the same compose project: the second attaches to the first's stack. Each
        run closes its leases before it stops, and the one that then finds no other run's lease connection on
        the server is the last one out and takes the stack down, whichever started it: the first run to end
        must not pull the stack from under the other's tests. (Both may find none at the same moment and
        both take it down; neither can find the other still there after both closed.)
        """
        stack, self._stack = self._stack, None
        shared = self.options.last_one_out and self._shares_a_runs_stack
        if stack is None or self.options.keep or not (self._started or shared):
            return
        self._started = self._shares_a_runs_stack = False
        if self.options.last_one_out and _other_runs_use(stack):
            return
        # Dev data lives in named volumes: never remove them from here.
        self._docker.down(volumes=self.env == "test")

    def down(self) -> None:
        """Take down this environment's stack whoever started it (`dashtam-env down`), unless a live
        run owns it: that run takes it down itself when it ends, and pulling it away would fail it.

        Test stacks lose their volumes; dev stacks keep theirs (the dev data).
        """
        self._check_engine()
        containers = self._docker.containers()
        if not containers:
            return
        owners = {Owner.from_labels(c.labels) for c in containers}
        for owner in owners:
            if owner is not None and owner_state(owner, this_pid=self._owner_pid) == "alive":
                raise BackendError(
                    f"compose project {self.project_name} belongs to a run that is still going "
                    f"(owner {owner.describe()}); let it finish (it stops its stack) or stop that process first"
                )
        self._stack = None
        self._started = False
        self._docker.down(volumes=self.env == "test")

    def logs(self, lines: int = 200) -> str:
        """The last `lines` of every service's log, prefixed by service (`dashtam-env logs`)."""
        self._check_engine()
        result = self._docker.call(self._docker.project.logs(lines))
        if not result.ok:
            raise BackendError(f"`docker compose -p {self.project_name} logs` failed ({result.first_error_line()})")
        return result.stdout + result.stderr

    def status(self) -> StackStatus:
        """Whether this project's stack runs and is healthy; its URLs and versions when it is."""
        if not docker_available():
            return StackStatus(running=False, detail="no Docker engine (with compose v2) answers")
        containers = self._docker.containers()
        if not containers:
            return StackStatus(running=False, detail=f"compose project {self.project_name} is not running")
        assessment = assess(containers, self._required)
        since = min((c.started_at for c in containers if c.started_at), default=None)
        owner = owner_text(containers, this_pid=self._owner_pid)
        detail = f"compose project {self.project_name}: {assessment.describe()}; {owner}"
        if assessment.verdict != "ready":
            return StackStatus(running=False, since=since, detail=detail)
        try:
            stack = describe(
                self._docker,
                assessment,
                self.env,
                redis=self.options.redis,
                started=False,
                timeout=min(5.0, self.options.timeout),
            )
        except BackendError as exc:
            return StackStatus(running=True, since=since, detail=f"{detail}; {exc}")
        return StackStatus(running=True, stack=stack, since=since, detail=detail)

    # ------------------------------------------------------------------ start paths

    def _attach(self, containers: list[Container], deadline: float) -> Stack:
        assessment = assess(containers, self._required)

        def settled() -> Assessment | None:
            nonlocal assessment
            if assessment.verdict == "starting":
                assessment = assess(self._docker.containers(), self._required)
            return None if assessment.verdict == "starting" else assessment

        # Still starting at the deadline: refused below like any stack that is not ready.
        with contextlib.suppress(PollTimeout):
            poll(
                settled,
                timeout=max(deadline - time.monotonic(), 0.0),
                interval=0.25,
                what=f"compose project {self.project_name} to turn healthy",
            )
        if assessment.verdict != "ready":
            owner = owner_text(containers, this_pid=self._owner_pid)
            raise BackendError(
                f"compose project {self.project_name} exists but is not usable ({assessment.describe()}; "
                f"{owner}){logs_hint(self._docker, assessment)}; take it down with "
                f"`docker compose -p {self.project_name} down -v` (or `dashtam-env down {self.env}`) and retry"
            )
        self._started = False
        # Another run's stack (its owner labels say so, and not kept): the last run out takes it down.
        postgres = assessment.containers.get(POSTGRES_SERVICE)
        started_by = Owner.from_labels(postgres.labels) if postgres is not None else None
        self._shares_a_runs_stack = started_by is not None and not started_by.keep
        return describe(
            self._docker,
            assessment,
            self.env,
            redis=self.options.redis,
            started=False,
            timeout=self._remaining(deadline),
        )

    def _up(self, deadline: float) -> Stack:
        owner = Owner.current(self.run_id, keep=self.options.keep, pid=self._owner_pid)
        env = self._docker.compose_env(owner)
        wait = self._remaining(deadline)
        try:
            try:
                with self._owner_override(owner) as override:
                    project = ComposeProject(self._docker.name, (*self._docker.files, override), self.env_file)
                    # Our own deadline a little past compose's, so compose reports the failing service.
                    result = run(project.up(wait), timeout=wait + 15.0, env=env, cwd=self._docker.root)
            except CommandTimeout as exc:
                result = Result(exc.args_run, -1, exc.stdout, exc.stderr + "\ntimeout: compose up was killed")
            if not result.ok:
                raise BackendError(
                    up_failure_message(self._docker, result, self.env, self.options.timeout, self._required)
                )
            self._started = True
            assessment = assess(self._docker.containers(), self._required)
            if assessment.verdict != "ready":
                raise BackendError(
                    f"compose project {self.project_name} came up without its servers "
                    f"({assessment.describe()}); the compose files must define {self._services_wanted()}"
                )
            return describe(
                self._docker,
                assessment,
                self.env,
                redis=self.options.redis,
                started=True,
                timeout=self._remaining(deadline),
            )
        except BaseException:
            # Whatever failed (including Ctrl-C), what this call created goes away.
            self._started = False
            self._docker.down(volumes=self.env == "test", quiet=True)
            raise

    # ------------------------------------------------------------------ checks, reaping, helpers

    @contextlib.contextmanager
    def _owner_override(self, owner: Owner) -> Iterator[Path]:
        """A compose file that gives the stack's services this run's owner labels, whatever the project's
        own files say: an ordinary compose file (the official images' way) carries none, and a stack without
        them counts as kept, so the next run would attach to a killed run's stack and leave it running for
        ever instead of taking it down. Labels merge key by key; compose reads the file at `up` only (JSON
        is YAML)."""
        defined = self._docker.call([*self._docker.project.base(), "config", "--services"])
        # Not told (an engine that cannot say): the project's files are taken to define them, as before.
        services = set(defined.stdout.split()) if defined.ok and defined.stdout.strip() else set(self._required)
        missing = [service for service in self._required if service not in services]
        if missing:  # a labels-only entry would make compose invent the service and fail on its missing image
            raise BackendError(
                f"compose project {self.project_name}: the compose files define no service "
                f"{' or '.join(repr(m) for m in missing)}; they must define {self._services_wanted()}"
            )
        labels = owner.labels(self.env)
        spec = {"services": {service: {"labels": labels} for service in self._required}}
        fd, name = tempfile.mkstemp(prefix=f"dashtam-{self.project_name}-owner-", suffix=".yml")
        path = Path(name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(spec, out)
            yield path
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    @property
    def _required(self) -> tuple[str, ...]:
        """The services the stack needs up: PostgreSQL, and Redis unless the project has none."""
        return REQUIRED_SERVICES if self.options.redis else (POSTGRES_SERVICE,)

    def _services_wanted(self) -> str:
        return f"services {' and '.join(map(repr, self._required))} with healthchecks"

    def _check_files(self) -> None:
        for path in self.compose_files:
            if not path.is_file():
                raise BackendError(
                    f"compose file {path} not found; set dashtam_compose_files (--dashtam-compose-file) "
                    "to your compose files, relative to the project root"
                )
        if not self.env_file.is_file():
            example = self.env_file.with_name(self.env_file.name + ".example")
            hint = f"copy {example.name} to {self.env_file.name}" if example.is_file() else "create it"
            raise BackendError(f"env file {self.env_file} not found; {hint} (or set --dashtam-env-file)")

    def _check_engine(self) -> None:
        problem = engine_problem(5.0)
        if problem is not None:
            raise BackendError(problem)

    def _reap_dead_owners(self) -> list[str]:
        """Take down every test stack on this engine whose recorded owner on this host is dead."""
        reaped = dead_projects(self._docker.containers(f"{LABEL_ENV}=test"), this_pid=self._owner_pid)
        for project in reaped:
            with tempfile.TemporaryDirectory(prefix="dashtam-reap-") as empty:
                # Run from an empty folder: `down -p` must not pick up a stray compose.yaml.
                self._docker.call(down_by_name(project, volumes=True), timeout=60.0, cwd=empty)
        return reaped

    def _lock_path(self) -> Path:
        return Path(tempfile.gettempdir()) / f"dashtam-compose-{self.project_name}.lock"

    def _remaining(self, deadline: float) -> float:
        return max(1.0, deadline - time.monotonic())


# How long lease connections must stay before they count as another run's: this run's own (its xdist
# workers' included) were closed just before, and the server drops a closed backend a moment later.
_LEASES_SETTLE_S = 2.0


def _other_runs_use(stack: Stack) -> bool:
    """Whether another run still holds a lease on the stack's PostgreSQL (its named lease connections, there
    for the whole of a run); a server that does not answer is used by no one."""
    import asyncpg

    from pytest_dashtam.isolation import run_async
    from pytest_dashtam.leases.owner import LEASE_NAME_PREFIX

    async def leases_stay() -> bool:
        conn = await asyncpg.connect(stack.postgres_url, timeout=5.0)
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1"

        async def none_left() -> bool | None:
            return True if int(await conn.fetchval(query, LEASE_NAME_PREFIX + "%")) == 0 else None

        try:
            await apoll(none_left, timeout=_LEASES_SETTLE_S, interval=0.05, what="other runs' leases to go")
            return False
        except PollTimeout:
            return True
        finally:
            await conn.close()

    try:
        return run_async(leases_stay)
    except Exception:
        return False
