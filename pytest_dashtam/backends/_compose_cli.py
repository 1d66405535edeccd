"""The `docker` / `docker compose` command lines the compose backend runs, and how to read their output.

Everything here is plain data in, plain data out (argument lists, versions, ports, env files), so
that unit tests can check it without an engine; `run()` is the one place a process is spawned. What
`docker inspect` says of containers is read in `_compose_containers`, why `up` failed in
`_compose_failures`.
Commands are argument lists, never shell strings: project names and paths reach docker verbatim.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
        return telling_line(self.stderr or self.stdout, f"exit status {self.returncode}")


def telling_line(text: str, default: str) -> str:
    """The last line of a command's output that mentions an error, else its last line, else `default`."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line
    return lines[-1] if lines else default


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


# --------------------------------------------------------------------------- env files


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads them (comments, `export`, quotes), values as written: compose
    interpolates the files itself."""
    from dotenv import dotenv_values

    return {key: value for key, value in dotenv_values(path, interpolate=False).items() if value is not None}
