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
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from pytest_dashtam.backends._compose_cli import (
    MIN_COMPOSE,
    Assessment,
    CommandTimeout,
    ComposeProject,
    Container,
    Result,
    assess,
    classify_up_failure,
    compose_version_args,
    down_by_name,
    engine_answers,
    engine_version_args,
    inspect_args,
    log_tail,
    parse_compose_version,
    parse_inspect,
    parse_port_output,
    ps_args,
    read_env_file,
    run,
)
from pytest_dashtam.backends._compose_owner import LABEL_ENV, Owner, owner_state
from pytest_dashtam.backends.base import BackendName, BackendOptions, ComposeFacts, EnvName, Stack, StackStatus
from pytest_dashtam.errors import BackendError
from pytest_dashtam.poll import PollTimeout, poll

__all__ = ["ComposeBackend", "docker_available"]

POSTGRES_SERVICE = "postgres"
REDIS_SERVICE = "redis"
REQUIRED_SERVICES = (POSTGRES_SERVICE, REDIS_SERVICE)
POSTGRES_PORT = 5432
REDIS_PORT = 6379

DEFAULT_TEST_FILES = ("docker/docker-compose.test.yml",)
_FALLBACK = "use --dashtam-backend=local instead (what --dashtam-backend=auto picks when no Docker engine answers)"
# Short docker calls (ps, inspect, port, version) answer in tens of milliseconds; this only bounds a hang.
_QUICK = 20.0


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        engine = run(engine_version_args(), timeout=timeout)
        if not engine.ok or not engine.stdout.strip():
            return False
        compose = run(compose_version_args(), timeout=timeout)
    except (CommandTimeout, OSError):
        return False
    version = parse_compose_version(compose.stdout) if compose.ok else None
    return version is not None and version >= MIN_COMPOSE


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
        self.project_name = options.project_name or f"dashtam-{options.env}"
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._owner_pid = owner_pid
        root = options.project_root
        files = options.compose_files
        if options.env == "dev" and tuple(files) == DEFAULT_TEST_FILES:
            files = ("docker/docker-compose.dev.yml",)
        self.compose_files = tuple((root / f).resolve() for f in files)
        self.env_file = (root / (options.env_file or f"env/.env.{options.env}")).resolve()
        self._stack: Stack | None = None
        self._started = False

    # ------------------------------------------------------------------ protocol

    def available(self) -> bool:
        """A Docker engine with the compose v2 plugin answers (see `docker_available`)."""
        return docker_available()

    def template_built(self, stack: Stack) -> None:
        """Nothing to keep: the template lives as long as the project's volume, kept or not by `keep`."""

    def start(self) -> Stack:
        """Attach to this project's healthy stack, or reap a dead owner's and bring up a fresh one."""
        if self._stack is not None:
            return self._stack  # a second call must not turn the stack this object started into "attached"
        self._check_files()
        self._check_engine()
        deadline = time.monotonic() + self.options.timeout
        project = self._project()
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
            containers = self._containers()
            stack = self._attach(project, containers, deadline) if containers else self._up(project, deadline)
        finally:
            lock.release()
        self._stack = stack
        return stack

    def stop(self) -> None:
        """Take down what `start()` brought up (volumes too, for test); leave attached or kept stacks."""
        stack, self._stack = self._stack, None
        if stack is None or not self._started or self.options.keep:
            return
        self._started = False
        # Dev data lives in named volumes: never remove them from here.
        self._down(self._project(), volumes=self.env == "test")

    def down(self) -> None:
        """Take down this environment's stack whoever started it (`dashtam-env down`), unless a live
        run owns it: that run takes it down itself when it ends, and pulling it away would fail it.

        Test stacks lose their volumes; dev stacks keep theirs (the dev data).
        """
        self._check_engine()
        containers = self._containers()
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
        self._down(self._project(), volumes=self.env == "test")

    def logs(self, lines: int = 200) -> str:
        """The last `lines` of every service's log, prefixed by service (`dashtam-env logs`)."""
        self._check_engine()
        result = self._docker(self._project().logs(lines))
        if not result.ok:
            raise BackendError(f"`docker compose -p {self.project_name} logs` failed ({result.first_error_line()})")
        return result.stdout + result.stderr

    def status(self) -> StackStatus:
        """Whether this project's stack runs and is healthy; its URLs and versions when it is."""
        if not docker_available():
            return StackStatus(running=False, detail="no Docker engine (with compose v2) answers")
        containers = self._containers()
        if not containers:
            return StackStatus(running=False, detail=f"compose project {self.project_name} is not running")
        assessment = assess(containers, REQUIRED_SERVICES)
        since = min((c.started_at for c in containers if c.started_at), default=None)
        detail = f"compose project {self.project_name}: {assessment.describe()}; {self._owner_text(containers)}"
        if assessment.verdict != "ready":
            return StackStatus(running=False, since=since, detail=detail)
        try:
            stack = self._describe(self._project(), assessment, started=False, timeout=min(5.0, self.options.timeout))
        except BackendError as exc:
            return StackStatus(running=True, since=since, detail=f"{detail}; {exc}")
        return StackStatus(running=True, stack=stack, since=since, detail=detail)

    # ------------------------------------------------------------------ start paths

    def _attach(self, project: ComposeProject, containers: list[Container], deadline: float) -> Stack:
        assessment = assess(containers, REQUIRED_SERVICES)

        def settled() -> Assessment | None:
            nonlocal assessment
            if assessment.verdict == "starting":
                assessment = assess(self._containers(), REQUIRED_SERVICES)
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
            raise BackendError(
                f"compose project {self.project_name} exists but is not usable ({assessment.describe()}; "
                f"{self._owner_text(containers)}){self._logs_hint(project, assessment)}; take it down with "
                f"`docker compose -p {self.project_name} down -v` (or `dashtam-env down {self.env}`) and retry"
            )
        self._started = False
        return self._describe(project, assessment, started=False, timeout=self._remaining(deadline))

    def _up(self, project: ComposeProject, deadline: float) -> Stack:
        owner = Owner.current(self.run_id, keep=self.options.keep, pid=self._owner_pid)
        env = self._compose_env(owner)
        wait = self._remaining(deadline)
        try:
            try:
                # Our own deadline a little past compose's, so compose reports the failing service.
                result = run(project.up(wait), timeout=wait + 15.0, env=env, cwd=self.options.project_root)
            except CommandTimeout as exc:
                result = Result(exc.args_run, -1, exc.stdout, exc.stderr + "\ntimeout: compose up was killed")
            if not result.ok:
                raise BackendError(self._up_failure_message(project, result))
            self._started = True
            assessment = assess(self._containers(), REQUIRED_SERVICES)
            if assessment.verdict != "ready":
                raise BackendError(
                    f"compose project {self.project_name} came up without its servers "
                    f"({assessment.describe()}); the compose files must define services "
                    f"{POSTGRES_SERVICE!r} and {REDIS_SERVICE!r} with healthchecks"
                )
            return self._describe(project, assessment, started=True, timeout=self._remaining(deadline))
        except BaseException:
            # Whatever failed (including Ctrl-C), what this call created goes away.
            self._started = False
            self._down(project, volumes=self.env == "test", quiet=True)
            raise

    # ------------------------------------------------------------------ facts

    def _describe(self, project: ComposeProject, assessment: Assessment, *, started: bool, timeout: float) -> Stack:
        postgres = assessment.containers[POSTGRES_SERVICE]
        pg_host, pg_port = self._host_port(project, POSTGRES_SERVICE, POSTGRES_PORT)
        redis_host, redis_port = self._host_port(project, REDIS_SERVICE, REDIS_PORT)
        # The container's own environment is the truth about its superuser, also when attaching to
        # a stack brought up with another env file; the env file is the fallback.
        file_values = self._env_file_values()
        user = postgres.env.get("POSTGRES_USER") or file_values.get("POSTGRES_USER") or "postgres"
        password = postgres.env.get("POSTGRES_PASSWORD", file_values.get("POSTGRES_PASSWORD", ""))
        from sqlalchemy.engine import URL

        postgres_url = URL.create(
            "postgresql", username=user, password=password or None, host=pg_host, port=pg_port, database="postgres"
        ).render_as_string(hide_password=False)
        redis_url = f"redis://{_netloc(redis_host, redis_port)}"
        budget = max(timeout, 2.0)
        from pytest_dashtam.backends._compose_probe import ProbeError, postgres_facts, redis_facts

        try:
            pg = postgres_facts(postgres_url, budget)
            rd = redis_facts(redis_url, budget)
        except ProbeError as exc:
            raise BackendError(
                f"compose project {self.project_name} reports healthy but {exc}; "
                f"check `docker compose -p {self.project_name} logs`"
            ) from None
        owner = Owner.from_labels(postgres.labels)
        return Stack(
            backend="compose",
            env=self.env,
            postgres_url=postgres_url,
            redis_url=redis_url,
            postgres_version=pg.version,
            redis_version=rd.version,
            # What took effect, read back: only the durability settings that are actually off.
            tuning={name: value for name, value in pg.settings.items() if value == "off"},
            owns_servers=True,
            started=started,
            redis_databases=rd.databases,
            data_on_tmpfs=any(path.startswith("/var/lib/postgresql") for path in postgres.tmpfs),
            compose=ComposeFacts(
                project=self.project_name,
                services=tuple(sorted({c.service for c in assessment.everything if c.status == "running"})),
                compose_files=tuple(str(f) for f in self.compose_files),
                env_file=str(self.env_file),
                postgres_port=pg_port,
                redis_port=redis_port,
                containers={name: c.name for name, c in assessment.containers.items()},
                owner_pid=owner.pid if owner else None,
                run_id=owner.run_id if owner else None,
                kept=bool(owner is None or owner.keep),
            ),
        )

    def _host_port(self, project: ComposeProject, service: str, container_port: int) -> tuple[str, int]:
        result = self._docker(project.port(service, container_port))
        port = parse_port_output(result.stdout) if result.ok else None
        if port is None:
            raise BackendError(
                f"service {service} of compose project {self.project_name} publishes no host port for "
                f"{container_port} ({result.first_error_line() if not result.ok else 'not published'}); "
                f'publish it on 127.0.0.1 in the compose file, e.g. "127.0.0.1::{container_port}"'
            )
        return port

    # ------------------------------------------------------------------ engine and containers

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
        if shutil.which("docker") is None:
            raise BackendError(
                f"the compose backend needs the `docker` CLI, which is not on PATH; install Docker or {_FALLBACK}"
            )
        try:
            engine = run(engine_version_args(), timeout=5.0)
        except CommandTimeout:
            raise BackendError(
                f"no Docker engine answered `docker version` within 5s; start Docker or {_FALLBACK}"
            ) from None
        if not engine.ok or not engine.stdout.strip():
            raise BackendError(f"no Docker engine answers ({engine.first_error_line()}); start Docker or {_FALLBACK}")
        try:
            compose = run(compose_version_args(), timeout=5.0)
        except CommandTimeout:
            compose = Result([], -1, "", "`docker compose version` hung")
        version = parse_compose_version(compose.stdout) if compose.ok else None
        if version is None:
            raise BackendError(
                f"the Docker Compose v2 plugin is missing (`docker compose version`: {compose.first_error_line()}); "
                f"install it (Debian/Ubuntu package docker-compose-plugin) or {_FALLBACK}"
            )
        if version < MIN_COMPOSE:
            raise BackendError(
                f"Docker Compose {compose.stdout.strip()} is too old: the compose backend needs "
                f"{MIN_COMPOSE[0]}.{MIN_COMPOSE[1]}+ for `up --wait-timeout`; upgrade it or {_FALLBACK}"
            )

    def _containers(self, label: str | None = None) -> list[Container]:
        """Containers of this project (or carrying `label`), running or not."""
        selector = label or f"com.docker.compose.project={self.project_name}"
        for _attempt in range(3):
            ids = self._docker(ps_args(selector))
            found = ids.stdout.split() if ids.ok else []
            if not found:
                return []
            inspected = self._docker(inspect_args(found))
            # A container removed between ps and inspect fails the whole inspect: list again.
            if inspected.ok:
                return parse_inspect(inspected.stdout)
        return []

    def _reap_dead_owners(self) -> list[str]:
        """Take down every test stack on this engine whose recorded owner on this host is dead."""
        by_project: dict[str, list[Container]] = {}
        for container in self._containers(f"{LABEL_ENV}=test"):
            if container.project:
                by_project.setdefault(container.project, []).append(container)
        reaped: list[str] = []
        for project, containers in sorted(by_project.items()):
            states = {owner_state(Owner.from_labels(c.labels), this_pid=self._owner_pid) for c in containers}
            # Every container of the project must agree: one live or kept label protects it all.
            if states == {"dead"}:
                with tempfile.TemporaryDirectory(prefix="dashtam-reap-") as empty:
                    # Run from an empty folder: `down -p` must not pick up a stray compose.yaml.
                    self._docker(down_by_name(project, volumes=True), timeout=60.0, cwd=empty)
                reaped.append(project)
        return reaped

    def _down(self, project: ComposeProject, *, volumes: bool, quiet: bool = False) -> None:
        try:
            result = run(
                project.down(volumes=volumes), timeout=60.0, env=self._compose_env(None), cwd=self.options.project_root
            )
        except (CommandTimeout, OSError) as exc:
            if quiet:
                return
            raise BackendError(f"`docker compose -p {self.project_name} down` failed: {exc}") from None
        if not result.ok and not quiet:
            raise BackendError(
                f"`docker compose -p {self.project_name} down` failed ({result.first_error_line()}); "
                f"run it by hand to clean up"
            )

    def _docker(self, args: Sequence[str], *, timeout: float = _QUICK, cwd: str | None = None) -> Result:
        try:
            return run(args, timeout=timeout, env=self._compose_env(None), cwd=cwd or self.options.project_root)
        except CommandTimeout:
            raise BackendError(
                f"`{' '.join(args[:3])} ...` hung for {timeout:.0f}s; is the Docker engine healthy?"
            ) from None

    # ------------------------------------------------------------------ helpers

    def _project(self) -> ComposeProject:
        return ComposeProject(self.project_name, self.compose_files, self.env_file)

    def _env_file_values(self) -> dict[str, str]:
        try:
            return read_env_file(self.env_file)
        except OSError:
            return {}

    def _compose_env(self, owner: Owner | None) -> dict[str, str]:
        """The environment compose runs in: the env file wins over the shell for its own keys.

        Compose lets shell variables override `--env-file`; a stray POSTGRES_PASSWORD in a
        developer's shell would then give the server a password the backend does not know.
        """
        file_values = self._env_file_values()
        env = {key: value for key, value in os.environ.items() if key not in file_values}
        env["DASHTAM_ENV_FILE"] = str(self.env_file)
        if owner is not None:
            env.update(owner.compose_env())
        return env

    def _lock_path(self) -> Path:
        return Path(tempfile.gettempdir()) / f"dashtam-compose-{self.project_name}.lock"

    def _remaining(self, deadline: float) -> float:
        return max(1.0, deadline - time.monotonic())

    def _owner_text(self, containers: Sequence[Container]) -> str:
        owner = Owner.from_labels(containers[0].labels) if containers else None
        if owner is None:
            return "started without an owner (kept)"
        state = owner_state(owner, this_pid=self._owner_pid)
        return f"owner {owner.describe()}: {state}"

    def _logs_hint(self, project: ComposeProject, assessment: Assessment) -> str:
        bad = [state.split()[0] for state in assessment.states if not state.endswith(("healthy", "running"))]
        for service in bad:
            if service in assessment.containers:
                tail = self._log_tail(project, service)
                if tail:
                    return f"; {service} log: {tail}"
        return ""

    def _log_tail(self, project: ComposeProject, service: str) -> str:
        try:
            result = self._docker(project.logs(20, service))
        except BackendError:
            return ""
        return log_tail(result.stdout + result.stderr) if result.ok else ""

    def _up_failure_message(self, project: ComposeProject, result: Result) -> str:
        failure = classify_up_failure(result.stdout + "\n" + result.stderr, self.project_name)
        where = f"compose project {self.project_name}"
        if failure.kind == "port":
            service = failure.service or "a service"
            variable = f"DASHTAM_{self.env.upper()}_{(failure.service or 'POSTGRES').upper()}_PORT"
            return (
                f"{where}: port {failure.port} on {failure.host} is already taken, so {service} cannot publish "
                f"there; stop what holds it or set {variable} to a free port (0 lets Docker choose)"
            )
        if failure.kind == "image":
            image = self._image_of(project, failure.service)
            return (
                f"{where}: image {image or '(unknown)'} for service {failure.service or '?'} is missing and could "
                f"not be pulled ({failure.detail}); pull or build it, or point DASHTAM_"
                f"{(failure.service or 'POSTGRES').upper()}_IMAGE at an image this engine has"
            )
        if failure.kind in ("unhealthy", "timeout"):
            services = [failure.service] if failure.service else list(REQUIRED_SERVICES)
            assessment = assess(self._containers(), REQUIRED_SERVICES)
            tails = [f"{s} log: {t}" for s in services if (t := self._log_tail(project, s))]
            what = failure.detail if failure.kind == "unhealthy" else f"not healthy within {self.options.timeout:.0f}s"
            return f"{where}: {failure.service or 'a service'} {what} ({assessment.describe()})" + (
                f"; {'; '.join(tails)}" if tails else ""
            )
        return f"{where}: `docker compose up` failed: {failure.detail}"

    def _image_of(self, project: ComposeProject, service: str | None) -> str | None:
        if service is None:
            return None
        result = self._docker(project.config_json())
        if not result.ok:
            return None
        try:
            services: Mapping[str, Any] = json.loads(result.stdout).get("services", {})
            image = services.get(service, {}).get("image")
        except (ValueError, AttributeError):
            return None
        return str(image) if image else None
