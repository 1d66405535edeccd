"""The `docker` / `docker compose` command lines the compose backend runs, and how to read their output.

Everything here is plain data in, plain data out (argument lists, parsed JSON, classified errors),
so that unit tests can check it without an engine; `run()` is the one place a process is spawned.
Commands are argument lists, never shell strings: project names and paths reach docker verbatim.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

DOCKER = "docker"
# `up --wait-timeout` appeared in compose 2.17; `--wait` alone in 2.1.
MIN_COMPOSE = (2, 17)


class CommandTimeout(Exception):
    """A docker command outlived its deadline and was killed."""

    def __init__(self, args: Sequence[str], timeout: float, stdout: str, stderr: str) -> None:
        super().__init__(f"{' '.join(args[:4])} ... did not finish within {timeout:.0f}s")
        self.args_run = list(args)
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr


@dataclass(frozen=True)
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def first_error_line(self) -> str:
        """The most telling line of stderr (or stdout), for one-line error messages."""
        lines = [line.strip() for line in (self.stderr or self.stdout).splitlines() if line.strip()]
        for line in reversed(lines):
            if "error" in line.lower():
                return line
        return lines[-1] if lines else f"exit status {self.returncode}"


def run(
    args: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Result:
    """Run one command with a deadline; kill its whole process group on timeout or Ctrl-C.

    The command gets its own session, so that a Ctrl-C meant for pytest does not also interrupt
    `docker compose` half-way through creating a stack: we stop it ourselves, then clean up.
    Raises FileNotFoundError when `docker` is not installed.
    """
    proc = subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise CommandTimeout(args, timeout, out, err) from None
    except BaseException:
        _kill_group(proc)
        with contextlib.suppress(Exception):
            proc.communicate(timeout=5)
        raise
    return Result(list(args), proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    # SIGTERM first: compose then stops creating containers; SIGKILL if it lingers.
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------- command lines


@dataclass(frozen=True)
class ComposeProject:
    """One compose project: its name, its files and the env file compose interpolates from."""

    name: str
    files: tuple[Path, ...]
    env_file: Path | None = None

    def base(self) -> list[str]:
        args = [DOCKER, "compose", "--project-name", self.name]
        for path in self.files:
            args += ["--file", str(path)]
        if self.env_file is not None:
            args += ["--env-file", str(self.env_file)]
        return args

    def up(self, wait_timeout: float) -> list[str]:
        # --wait returns once every started service is healthy (or fails when one is not);
        # --wait-timeout bounds it on the engine side as well as ours.
        seconds = max(1, math.ceil(wait_timeout))
        return [*self.base(), "up", "--detach", "--wait", "--wait-timeout", str(seconds), "--quiet-pull"]

    def down(self, *, volumes: bool) -> list[str]:
        return [*self.base(), *_down_tail(volumes)]

    def port(self, service: str, container_port: int) -> list[str]:
        return [*self.base(), "port", service, str(container_port)]

    def logs(self, tail: int, service: str | None = None) -> list[str]:
        """One service's log without prefixes (for error messages), or every service's, prefixed."""
        if service is None:
            return [*self.base(), "logs", "--no-color", "--tail", str(tail)]
        return [*self.base(), "logs", "--no-color", "--no-log-prefix", "--tail", str(tail), service]

    def config_json(self) -> list[str]:
        return [*self.base(), "config", "--format", "json"]


def down_by_name(project: str, *, volumes: bool) -> list[str]:
    """Take down a project found by its labels, without its compose files (they may be gone)."""
    return [DOCKER, "compose", "--project-name", project, *_down_tail(volumes)]


def _down_tail(volumes: bool) -> list[str]:
    """`down` for a throw-away stack (volumes removed) gives its containers 1 s to stop: a server
    caught mid-initdb ignores SIGINT (the entrypoint shell is PID 1) and would cost the full stop
    timeout for data nobody keeps. A stack whose volumes stay (dev) gets 10 s to shut down cleanly.
    """
    if volumes:
        return ["down", "--remove-orphans", "--timeout", "1", "--volumes"]
    return ["down", "--remove-orphans", "--timeout", "10"]


def engine_answers(timeout: float = 1.0) -> bool:
    """Whether a Docker engine answers `GET /_ping` on its Unix socket: no `docker` process, so `auto`
    can ask it on every run (a machine without an engine answers in microseconds)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return bool(host)  # a TCP engine was configured on purpose: let the CLI calls try it
    path = host[len("unix://") :]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


def engine_version_args() -> list[str]:
    return [DOCKER, "version", "--format", "{{.Server.Version}}"]


def compose_version_args() -> list[str]:
    return [DOCKER, "compose", "version", "--short"]


def ps_args(label: str) -> list[str]:
    """IDs of every container (running or not) carrying `label` (`key` or `key=value`)."""
    return [DOCKER, "ps", "--all", "--quiet", "--no-trunc", "--filter", f"label={label}"]


def inspect_args(ids: Sequence[str]) -> list[str]:
    return [DOCKER, "inspect", "--type", "container", *ids]


def parse_compose_version(text: str) -> tuple[int, int] | None:
    match = re.search(r"v?(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_port_output(text: str) -> tuple[str, int] | None:
    """(host to connect to, port) from `docker compose port`: `127.0.0.1:5433`, `[::]:6380`, or nothing.

    A wildcard binding (0.0.0.0, ::) is reached through loopback; a specific address is used as is.
    """
    for line in text.splitlines():
        host, sep, port = line.strip().rpartition(":")
        if not (sep and port.isdigit() and int(port) > 0):
            continue
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return host, int(port)
    return None


# --------------------------------------------------------------------------- containers


Health = Literal["healthy", "starting", "unhealthy", "none"]


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    project: str
    service: str
    status: str  # created | running | restarting | exited | paused | dead
    health: Health
    started_at: float | None
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    # container port ("5432/tcp") -> [(host ip, host port), ...]
    ports: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    tmpfs: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return self.status == "running" and self.health in ("healthy", "none")


def _parse_time(text: str | None) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    # Docker prints nanoseconds; fromisoformat takes at most microseconds.
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", text)
    if not match:
        return None
    frac = (match.group(2) or ".0")[:7]
    zone = match.group(3) or "Z"
    zone = "+00:00" if zone == "Z" else zone
    try:
        return datetime.fromisoformat(f"{match.group(1)}{frac}{zone}").timestamp()
    except ValueError:
        return None


def parse_inspect(text: str) -> list[Container]:
    """Containers from `docker inspect` JSON: the few facts the backend decides on."""
    data: list[dict[str, Any]] = json.loads(text or "[]")
    found: list[Container] = []
    for item in data:
        config = item.get("Config") or {}
        labels: dict[str, str] = dict(config.get("Labels") or {})
        state = item.get("State") or {}
        health_state = (state.get("Health") or {}).get("Status")
        health: Health = health_state if health_state in ("healthy", "starting", "unhealthy") else "none"
        env: dict[str, str] = {}
        for entry in config.get("Env") or []:
            key, _, value = str(entry).partition("=")
            env[key] = value
        ports: dict[str, tuple[tuple[str, int], ...]] = {}
        for container_port, bindings in ((item.get("NetworkSettings") or {}).get("Ports") or {}).items():
            ports[container_port] = tuple(
                (b.get("HostIp") or "", int(b["HostPort"])) for b in bindings or [] if b.get("HostPort")
            )
        found.append(
            Container(
                id=str(item.get("Id", "")),
                name=str(item.get("Name", "")).lstrip("/"),
                project=labels.get("com.docker.compose.project", ""),
                service=labels.get("com.docker.compose.service", ""),
                status=str(state.get("Status", "")),
                health=health,
                started_at=_parse_time(state.get("StartedAt")),
                labels=labels,
                env=env,
                ports=ports,
                tmpfs=tuple(((item.get("HostConfig") or {}).get("Tmpfs") or {}).keys()),
            )
        )
    return found


Verdict = Literal["absent", "ready", "starting", "broken"]


@dataclass(frozen=True)
class Assessment:
    verdict: Verdict
    # One entry per required service: "postgres healthy", "redis exited", "redis missing"...
    states: tuple[str, ...] = ()
    containers: Mapping[str, Container] = field(default_factory=dict)
    # Every container of the project, the required services' and any others (app, callback...).
    everything: tuple[Container, ...] = ()

    def describe(self) -> str:
        return ", ".join(self.states) or "no containers"


def assess(containers: Sequence[Container], required: Sequence[str]) -> Assessment:
    """Is a project's stack usable: every required service running and healthy?

    `absent` means nothing of the project exists (start it); `starting` means health checks have not
    passed yet (wait); `broken` means something is missing, stopped or unhealthy (do not guess).
    """
    if not containers:
        return Assessment("absent")
    chosen: dict[str, Container] = {}
    for container in containers:
        current: Container | None = chosen.get(container.service)
        # Prefer a running container when a service has several (scaled, or a leftover).
        if current is None or (container.status == "running" and current.status != "running"):
            chosen[container.service] = container
    states: list[str] = []
    verdict: Verdict = "ready"
    for service in required:
        found = chosen.get(service)
        if found is None:
            states.append(f"{service} missing")
            verdict = "broken"
        elif found.status != "running":
            states.append(f"{service} {found.status}")
            verdict = "broken"
        elif found.health == "unhealthy":
            states.append(f"{service} unhealthy")
            verdict = "broken"
        elif found.health == "starting":
            states.append(f"{service} starting")
            if verdict == "ready":
                verdict = "starting"
        else:
            states.append(f"{service} {'healthy' if found.health == 'healthy' else 'running'}")
    return Assessment(verdict, tuple(states), chosen, tuple(containers))


# --------------------------------------------------------------------------- failures of `up`


FailureKind = Literal["port", "image", "unhealthy", "timeout", "other"]


@dataclass(frozen=True)
class UpFailure:
    kind: FailureKind
    detail: str
    service: str | None = None
    host: str | None = None
    port: int | None = None


_PORT_PATTERNS = (
    # userland proxy: "listen tcp4 127.0.0.1:5432: bind: address already in use"
    re.compile(r"listen tcp[46]? (?P<host>[\d.]+|\[[0-9a-f:]*\]):(?P<port>\d+): bind: address already in use"),
    # another container holds it: "Bind for 127.0.0.1:5433 failed: port is already allocated"
    re.compile(r"Bind for (?P<host>[\d.]+|\[[0-9a-f:]*\]):(?P<port>\d+) failed: port is already allocated"),
)
_ENDPOINT = re.compile(r"on endpoint (?P<name>[\w.-]+)")
_PULL_ERROR = re.compile(r"^\s*(?P<service>[\w.-]+) Error (?P<msg>.+)$", re.MULTILINE)
_IMAGE_WORDS = (
    "pull access denied",
    "manifest unknown",
    "failed to resolve reference",
    "no such image",
    "repository does not exist",
    "registry-1.docker.io",
    "error pulling image",
)
_UNHEALTHY = re.compile(r"container (?P<name>[\w.-]+) (?P<what>is unhealthy|exited \(\d+\))")


def service_of(container_name: str, project: str) -> str:
    """`dashtam-test-postgres-1` -> `postgres` (compose's default container naming)."""
    name = container_name.lstrip("/")
    if name.startswith(project + "-"):
        name = name[len(project) + 1 :]
    return re.sub(r"-\d+$", "", name)


def classify_up_failure(output: str, project: str) -> UpFailure:
    """Why `compose up --wait` failed, from its output: the cases users can act on."""
    for pattern in _PORT_PATTERNS:
        match = pattern.search(output)
        if match:
            endpoint = _ENDPOINT.search(output)
            service = service_of(endpoint.group("name"), project) if endpoint else None
            return UpFailure(
                "port",
                match.group(0),
                service=service,
                host=match.group("host").strip("[]"),
                port=int(match.group("port")),
            )
    pull = _PULL_ERROR.search(output)
    lowered = output.lower()
    if pull or any(word in lowered for word in _IMAGE_WORDS):
        service = pull.group("service") if pull else None
        detail = pull.group("msg").strip() if pull else _last_line(output)
        return UpFailure("image", detail, service=service)
    unhealthy = _UNHEALTHY.search(output)
    if unhealthy:
        return UpFailure(
            "unhealthy",
            unhealthy.group("what"),
            service=service_of(unhealthy.group("name"), project),
        )
    if "dependency failed to start" in lowered:
        return UpFailure("unhealthy", _last_line(output))
    if "timeout" in lowered or "deadline" in lowered:
        return UpFailure("timeout", _last_line(output))
    return UpFailure("other", _last_line(output))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line
    return lines[-1] if lines else "no output"


def log_tail(text: str, lines: int = 8, width: int = 600) -> str:
    """The last lines of a service's log folded into one line for an error message."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    folded = " | ".join(kept)
    return folded if len(folded) <= width else "..." + folded[-width:]


# --------------------------------------------------------------------------- env files


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads them (comments, `export`, quotes), values as written: compose
    interpolates the files itself."""
    from dotenv import dotenv_values

    return {key: value for key, value in dotenv_values(path, interpolate=False).items() if value is not None}
