"""The containers of a compose project as `docker inspect` describes them, and whether they make a stack.

Plain data in, plain data out, like `_compose_cli`: the backend decides from an `Assessment` whether
to attach, wait, start or refuse, and unit tests feed it inspect JSON without an engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

# The services a stack must have, by their names in the compose files.
POSTGRES_SERVICE = "postgres"
REDIS_SERVICE = "redis"
REQUIRED_SERVICES = (POSTGRES_SERVICE, REDIS_SERVICE)

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
