"""The one protocol every backend implements, and the `Stack` it hands back.

Backends do not import each other: they share only this module. A backend either owns its
servers (compose, local: it may tune them server-wide and must stop them) or attaches to servers
someone else runs (external: it may change nothing server-wide).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pytest_dashtam.urls import mask_url

BackendName = Literal["compose", "local", "external"]
EnvName = Literal["dev", "test"]


@dataclass(frozen=True)
class Stack:
    """A running PostgreSQL + Redis pair, as the plugin and the CLI need to know it.

    `postgres_url` is an admin (superuser) connection to the server's maintenance database in
    libpq form (`postgresql://user:password@host:port/postgres`, or `...@/postgres?host=/socket/dir&port=N`
    for a Unix socket); callers add the driver (`+asyncpg`) and database name they need.
    `redis_url` is `redis://host:port` with no index: callers choose the index.
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
    # Backend-specific facts for `status` and for re-attaching (PIDs, data dir, project name...).
    details: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Stack(backend={self.backend!r}, env={self.env!r}, postgres_url={mask_url(self.postgres_url)!r}, "
            f"redis_url={mask_url(self.redis_url)!r}, postgres_version={self.postgres_version!r}, "
            f"redis_version={self.redis_version!r}, tuning={dict(self.tuning)!r}, "
            f"owns_servers={self.owns_servers!r}, started={self.started!r})"
        )

    __str__ = __repr__

    def to_json(self) -> str:
        """Serialise for state files and for handing the stack to xdist workers."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Stack:
        data = json.loads(text)
        return cls(**data)


@dataclass(frozen=True)
class BackendOptions:
    """What any backend may need; each takes the fields it understands and ignores the rest."""

    env: EnvName = "test"
    project_root: Path = field(default_factory=Path.cwd)
    # Where state files, logs and (for dev) data live; default <project_root>/.dashtam/<env>.
    state_dir: Path | None = None
    keep: bool = False
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
    """Start (or attach to), stop and describe one PostgreSQL + Redis stack."""

    name: BackendName

    def start(self) -> Stack:
        """Bring the servers up (or attach to running ones) and return them ready to connect."""
        ...

    def stop(self) -> None:
        """Stop exactly what `start()` started; leave anything it attached to running."""
        ...

    def status(self) -> StackStatus:
        """Describe the stack of this backend and environment, without changing anything."""
        ...


@runtime_checkable
class SupportsDown(Protocol):
    """A backend that can stop its environment's stack whoever started it (`dashtam-env down`).

    `stop()` only undoes what this object's `start()` did; `down()` is for a stack left running on
    purpose (`dashtam-env up`, `--dashtam-keep`) by an earlier process.
    """

    def down(self) -> None: ...


@runtime_checkable
class SupportsLogs(Protocol):
    """A backend whose servers write logs it can show (`dashtam-env logs`)."""

    def logs(self, lines: int = 200) -> str: ...
