"""The one protocol every backend implements, and the `Stack` it hands back.

Backends do not import each other: they share only this module. A backend either owns its
servers (compose, local: it may tune them server-wide and must stop them) or attaches to servers
someone else runs (external: it may change nothing server-wide).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pytest_dashtam.errors import ConfigError
from pytest_dashtam.urls import mask_url

BackendName = Literal["compose", "local", "external"]
# What a user may ask for: a backend, or `auto` (see backends.select_backend).
BackendChoice = Literal["auto", "compose", "local", "external"]
EnvName = Literal["dev", "test"]


class UnsupportedError(ConfigError):
    """The chosen backend cannot do this by its nature (the external one stops no one's servers): the
    user's choice of backend is what to change, so it is a configuration error (CLI exit 2)."""


def _known(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` without the keys `cls` does not have: a record written by another version still loads."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


@dataclass(frozen=True)
class LocalFacts:
    """What the local backend knows of the servers it runs: processes, files, where the binaries came from."""

    run_id: str
    # The folder of everything a throw-away stack wrote; the seed request of `template_built` goes there.
    run_dir: str
    data_dir: str
    socket_dir: str
    state_file: str
    postgres_port: int
    redis_port: int
    postgres_pid: int
    redis_pid: int
    postgres_log: str
    redis_log: str
    postgres_bin: str
    # "option", "pg_config", "PATH", "system" or "embedded": which rule of the binary search found it.
    postgres_source: str
    redis_bin: str
    redis_source: str
    redis_server: str  # "redis" or "valkey"
    # The unprivileged user PostgreSQL runs as when the run is root's; None: as the run's own user.
    run_as: str | None = None
    # Where the binaries were copied from because `run_as` could not reach them.
    postgres_copied_from: str | None = None
    # "seed" (an earlier run's cluster, templates included), "hit" (the initdb cache), "miss" (initdb ran),
    # "existing cluster" (a dev cluster started again).
    cluster_cache: str = "miss"
    binary_version: str | None = None
    keep: bool = False
    ready_seconds: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LocalFacts:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class ComposeFacts:
    """What the compose backend knows of its project: its name, files, containers and recorded owner."""

    project: str
    # The services running in the project, the required postgres and redis and any others (app, callback).
    services: tuple[str, ...]
    compose_files: tuple[str, ...]
    env_file: str
    postgres_port: int
    redis_port: int
    containers: Mapping[str, str] = field(default_factory=dict)  # service -> container name
    owner_pid: int | None = None
    run_id: str | None = None
    # Started by hand or with keep: no run will take it down by itself.
    kept: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComposeFacts:
        known = _known(cls, data)
        known["services"] = tuple(known.get("services", ()))
        known["compose_files"] = tuple(known.get("compose_files", ()))
        return cls(**known)


@dataclass(frozen=True)
class Stack:
    """A running PostgreSQL + Redis pair, as the plugin and the CLI need to know it.

    `postgres_url` is an admin (superuser) connection to the server's maintenance database in
    libpq form (`postgresql://user:password@host:port/postgres`, or `...@/postgres?host=/socket/dir&port=N`
    for a Unix socket); callers add the driver (`+asyncpg`) and database name they need.
    `redis_url` is `redis://host:port` with no index: callers choose the index; empty (and `redis_version`
    too) for a stack without Redis, started for a project that has none (`has_redis`).
    """

    backend: BackendName
    env: EnvName
    postgres_url: str
    redis_url: str
    postgres_version: str
    redis_version: str
    # Server-wide settings this backend applied (e.g. {"fsync": "off"}); empty for external.
    tuning: Mapping[str, str] = field(default_factory=dict)
    # True when this backend owns the servers: it may tune them server-wide and must stop them.
    owns_servers: bool = True
    # True when this call started the servers; False when it attached to running ones.
    started: bool = True
    # Logical Redis databases the server offers (CONFIG GET databases), when known.
    redis_databases: int | None = None
    # Whether PostgreSQL's data lives in memory (tmpfs), when the backend knows.
    data_on_tmpfs: bool | None = None
    # Whether the admin role may create databases, when the backend checked (external does).
    can_create_databases: bool | None = None
    # The facts only one backend has (None for the others), for `status`, re-attaching and diagnostics.
    local: LocalFacts | None = None
    compose: ComposeFacts | None = None

    @property
    def has_redis(self) -> bool:
        return bool(self.redis_url)

    def __repr__(self) -> str:
        return (
            f"Stack(backend={self.backend!r}, env={self.env!r}, postgres_url={mask_url(self.postgres_url)!r}, "
            f"redis_url={mask_url(self.redis_url)!r}, postgres_version={self.postgres_version!r}, "
            f"redis_version={self.redis_version!r}, tuning={dict(self.tuning)!r}, "
            f"owns_servers={self.owns_servers!r}, started={self.started!r})"
        )

    __str__ = __repr__

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (the state files keep the stack in this form)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stack:
        known = _known(cls, data)
        known["tuning"] = dict(known.get("tuning") or {})
        if known.get("local") is not None:
            known["local"] = LocalFacts.from_dict(known["local"])
        if known.get("compose") is not None:
            known["compose"] = ComposeFacts.from_dict(known["compose"])
        return cls(**known)

    def to_json(self) -> str:
        """Serialise for state files and for handing the stack to xdist workers."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Stack:
        """The stack `to_json` wrote (keys of another version's Stack are ignored)."""
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class BackendOptions:
    """What any backend may need; each takes the fields it understands and ignores the rest."""

    env: EnvName = "test"
    project_root: Path = field(default_factory=Path.cwd)
    # Where state files, logs and (for dev) data live; default <project_root>/.dashtam/<env>.
    state_dir: Path | None = None
    keep: bool = False
    # False for a project without Redis: no Redis server is started, looked for or asked for.
    redis: bool = True
    # external
    postgres_url: str | None = None
    redis_url: str | None = None
    # local: explicit binaries or folders (override discovery)
    postgres_bin: str | None = None
    redis_bin: str | None = None
    # compose
    compose_files: tuple[str, ...] = ("docker/docker-compose.test.yml",)
    env_file: str | None = None
    project_name: str | None = None
    # The plugin's runs (not a bare backend): a compose stack shared by two runs of a project goes when the last
    # run out stops, whichever started it (see ComposeBackend.stop); a bare backend stops what it started.
    last_one_out: bool = False
    # The default project name is `<project_stem>-<env>`: the plugin derives the stem from the project's test
    # database (dashtam_test -> dashtam), so two projects on one engine never attach to each other's stack.
    project_stem: str = "dashtam"
    # Bounded wait for readiness (seconds).
    timeout: float = 60.0

    def resolved_state_dir(self) -> Path:
        return self.state_dir or (self.project_root / ".dashtam" / self.env)


@dataclass(frozen=True)
class StackStatus:
    """What `status()` reports: whether a stack of this backend/env runs, where and since when."""

    running: bool
    stack: Stack | None = None
    since: float | None = None  # epoch seconds
    detail: str = ""


class Backend(Protocol):
    """Start (or attach to), stop and describe one PostgreSQL + Redis stack.

    Every backend has every method: one that cannot do something by its nature (the external backend has
    no servers to take down, no logs to show) raises `UnsupportedError` with a one-line reason, so callers
    need no capability checks and the reason is said by the backend that knows it.
    """

    name: BackendName

    def available(self) -> bool:
        """Whether this backend can run here, decided cheaply and without starting anything (for `auto`)."""
        ...

    def start(self) -> Stack:
        """Bring the servers up (or attach to running ones) and return them ready to connect."""
        ...

    def stop(self) -> None:
        """Stop exactly what `start()` started; leave anything it attached to running."""
        ...

    def status(self) -> StackStatus:
        """Describe the stack of this backend and environment, without changing anything."""
        ...

    def template_built(self, stack: Stack) -> None:
        """A schema template was just built on `stack` (by any process of the run): keep what makes it
        last beyond this run where the backend can (the local backend keeps the cluster as the next runs'
        seed); nothing for servers that outlive the run anyway. Callable on a backend that did not start
        `stack` (an xdist worker builds the template the controller's backend started)."""
        ...

    def down(self) -> None:
        """Stop this environment's stack whoever started it (`dashtam-env down`): a stack left running on
        purpose (`dashtam-env up`, `--dashtam-keep`) by an earlier process. `stop()` only undoes `start()`."""
        ...

    def logs(self, lines: int = 200) -> str:
        """The last `lines` of the servers' logs (`dashtam-env logs`)."""
        ...
