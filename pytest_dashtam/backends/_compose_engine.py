"""The Docker engine as the compose backend talks to it: whether it is usable, and one project's calls.

`ProjectDocker` runs commands for one compose project from the project root, in the environment
compose must see, with a deadline that turns a hung engine into a one-line error.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_dashtam.backends._compose_cli import (
    MIN_COMPOSE,
    CommandTimeout,
    ComposeProject,
    Result,
    compose_version_args,
    engine_version_args,
    inspect_args,
    parse_compose_version,
    ps_args,
    read_env_file,
    run,
)
from pytest_dashtam.backends._compose_containers import Container, parse_inspect
from pytest_dashtam.backends._compose_owner import Owner
from pytest_dashtam.errors import BackendError

_FALLBACK = "use --dashtam-backend=local instead (what --dashtam-backend=auto picks when no Docker engine answers)"
# Short docker calls (ps, inspect, port, version) answer in tens of milliseconds; this only bounds a hang.
_QUICK = 20.0


def engine_problem(timeout: float) -> str | None:
    """Why the compose backend cannot use this machine's Docker (what to install or start), or None.

    The `docker` CLI, an engine answering `docker version` within `timeout`, and the compose v2
    plugin at MIN_COMPOSE or later. OSError (a `docker` that cannot be executed) is the caller's.
    """
    if shutil.which("docker") is None:
        return f"the compose backend needs the `docker` CLI, which is not on PATH; install Docker or {_FALLBACK}"
    try:
        engine = run(engine_version_args(), timeout=timeout)
    except CommandTimeout:
        return f"no Docker engine answered `docker version` within {timeout:.0f}s; start Docker or {_FALLBACK}"
    if not engine.ok or not engine.stdout.strip():
        return f"no Docker engine answers ({engine.first_error_line()}); start Docker or {_FALLBACK}"
    try:
        compose = run(compose_version_args(), timeout=timeout)
    except CommandTimeout:
        compose = Result([], -1, "", "`docker compose version` hung")
    version = parse_compose_version(compose.stdout) if compose.ok else None
    if version is None:
        return (
            f"the Docker Compose v2 plugin is missing (`docker compose version`: {compose.first_error_line()}); "
            f"install it (Debian/Ubuntu package docker-compose-plugin) or {_FALLBACK}"
        )
    if version < MIN_COMPOSE:
        return (
            f"Docker Compose {compose.stdout.strip()} is too old: the compose backend needs "
            f"{MIN_COMPOSE[0]}.{MIN_COMPOSE[1]}+ for `up --wait-timeout`; upgrade it or {_FALLBACK}"
        )
    return None


@dataclass(frozen=True)
class ProjectDocker:
    """One compose project's calls to the engine: its name, compose files, env file and project root."""

    name: str
    files: tuple[Path, ...]
    env_file: Path
    # The folder compose runs in: relative paths in the compose files are resolved from it.
    root: Path

    @property
    def project(self) -> ComposeProject:
        return ComposeProject(self.name, self.files, self.env_file)

    def env_file_values(self) -> dict[str, str]:
        try:
            return read_env_file(self.env_file)
        except OSError:
            return {}

    def compose_env(self, owner: Owner | None) -> dict[str, str]:
        """The environment compose runs in: the env file wins over the shell for its own keys.

        Compose lets shell variables override `--env-file`; a stray POSTGRES_PASSWORD in a
        developer's shell would then give the server a password the backend does not know.
        """
        file_values = self.env_file_values()
        env = {key: value for key, value in os.environ.items() if key not in file_values}
        env["DASHTAM_ENV_FILE"] = str(self.env_file)
        if owner is not None:
            env.update(owner.compose_env())
        return env

    def call(self, args: Sequence[str], *, timeout: float = _QUICK, cwd: str | None = None) -> Result:
        """Run a docker command for this project; one that hangs past `timeout` is a BackendError."""
        try:
            return run(args, timeout=timeout, env=self.compose_env(None), cwd=cwd or self.root)
        except CommandTimeout:
            raise BackendError(
                f"`{' '.join(args[:3])} ...` hung for {timeout:.0f}s; is the Docker engine healthy?"
            ) from None

    def containers(self, label: str | None = None) -> list[Container]:
        """Containers of this project (or carrying `label`), running or not."""
        selector = label or f"com.docker.compose.project={self.name}"
        for _attempt in range(3):
            ids = self.call(ps_args(selector))
            found = ids.stdout.split() if ids.ok else []
            if not found:
                return []
            inspected = self.call(inspect_args(found))
            # A container removed between ps and inspect fails the whole inspect: list again.
            if inspected.ok:
                return parse_inspect(inspected.stdout)
        return []

    def down(self, *, volumes: bool, quiet: bool = False) -> None:
        try:
            result = run(self.project.down(volumes=volumes), timeout=60.0, env=self.compose_env(None), cwd=self.root)
        except (CommandTimeout, OSError) as exc:
            if quiet:
                return
            raise BackendError(f"`docker compose -p {self.name} down` failed: {exc}") from None
        if not result.ok and not quiet:
            raise BackendError(
                f"`docker compose -p {self.name} down` failed ({result.first_error_line()}); run it by hand to clean up"
            )
